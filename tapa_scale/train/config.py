"""The `run` and `train` sections of the configuration."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class RunConfig:
    dir: str = "runs/default"   # metrics.jsonl, TensorBoard events, checkpoints/ and the resolved config
    tensorboard: bool = True
    progress: bool = True       # rich progress bar on rank 0


@dataclass
class TrainConfig:
    steps: int = 1000
    seed: int = 0
    micro_batch_size: int = 16      # sequences per forward pass on each data-parallel rank
    global_batch_size: int = 0      # sequences per optimizer step; 0 = micro_batch_size * data-parallel size
    lr: float = 1e-3                # peak learning rate
    min_lr_ratio: float = 0.1       # cosine decays to lr * min_lr_ratio (paper: 0.1)
    warmup_steps: int = 100         # linear warm-up
    beta1: float = 0.9              # AdamW betas and eps as in the paper
    beta2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 0.0       # paper: none
    grad_clip: float = 1.0          # max global gradient norm; 0 = off
    init_from: str = ""             # checkpoint or run dir whose weights start a new run (fresh optimizer, step 0)
    init_optimizer: bool = False    # with init_from: also its AdamW moments and their step counts
    document_masking: bool = False  # attend only within each packed document (positions restart at 0)
    log_every: int = 10
    eval_every: int = 0             # validation loss every N steps; 0 = only at the end
    eval_batches: int = 16
    checkpoint_every: int = 0       # 0 = no periodic checkpoints
    final_checkpoint: bool = True   # checkpoint after the last step
    precision: str = "auto"         # auto (fp32 on CPU, bf16 on GPU) | fp32 | bf16
    device: str = "auto"            # auto | cpu | cuda
    threads: int = 0                # CPU threads for torch; 0 = torch's default
    keep_checkpoints: int = 0       # keep the newest N complete checkpoints; 0 = keep all
    async_save: bool = False        # write checkpoints from a forked process while training goes on
    resume_from: int = -1           # resume from checkpoint step N (>= 0) instead of the newest complete one
    verify_checksums: bool = True   # check the sha256 of every checkpoint file before resuming from it
    save_on_signal: bool = True     # SIGTERM / SIGUSR1: checkpoint after the current step, then exit 0
    on_nonfinite: str = "skip"      # non-finite loss or grad norm: skip (optimizer untouched) | stop | rollback
    max_bad_steps: int = 5          # this many consecutive non-finite steps stop the run
    gc_every: int = 100             # Python garbage collection every N steps on all ranks; 0 = automatic
    peak_tflops: float = 0.0        # device peak for MFU; 0 = datasheet table (GPU) or measured (CPU)
    watchdog_s: float = 0.0         # report (rank, step, collective, all Python stacks) when a step takes longer; 0 = off
    hang_timeout_s: float = 0.0     # a step longer than this is a hang: report as above, then end the job; 0 = off
    # Fault injection for the tests (docs/checkpoints.md); 0 / "" = off. Never set in real runs.
    fault_nan_at: int = 0           # poison the activations (loss and gradients become NaN) at this step
    fault_stall_at: int = 0         # sleep fault_stall_s seconds inside this step
    fault_stall_s: float = 0.0
    fault_stall_rank: int = -1      # the rank that stalls (-1 = every rank)
    fault_kill_in_save: str = ""    # SIGKILL rank 0 during the next save: "shards" (after the shards) | "manifest"
    fault_crash_at: int = 0         # rank 0 exits with status 1 after this step, on a first attempt only
    fault_oom_at: int = 0           # this step raises torch's out-of-memory error (every rank)
                                    # (torchrun's TORCHELASTIC_RESTART_COUNT unset or 0)


def validate_train(t: TrainConfig) -> list[str]:
    errs = []
    for key in ("steps", "micro_batch_size", "log_every", "eval_batches"):
        if getattr(t, key) <= 0:
            errs.append(f"train.{key}={getattr(t, key)}: must be > 0")
    for key in ("global_batch_size", "warmup_steps", "eval_every", "checkpoint_every", "threads",
                "weight_decay", "grad_clip", "gc_every", "peak_tflops"):
        if getattr(t, key) < 0:
            errs.append(f"train.{key}={getattr(t, key)}: must be >= 0")
    if not t.lr > 0:
        errs.append(f"train.lr={t.lr}: must be > 0")
    if not 0 <= t.min_lr_ratio <= 1:
        errs.append(f"train.min_lr_ratio={t.min_lr_ratio}: must lie in [0, 1]")
    if not (0 <= t.beta1 < 1 and 0 <= t.beta2 < 1):
        errs.append(f"train.beta1/beta2=({t.beta1}, {t.beta2}): each must lie in [0, 1)")
    if t.precision not in ("auto", "fp32", "bf16"):
        errs.append(f"train.precision={t.precision!r}: expected auto, fp32 or bf16")
    for key in ("keep_checkpoints", "max_bad_steps", "fault_nan_at", "fault_stall_at", "fault_crash_at",
                "fault_oom_at"):
        if getattr(t, key) < 0:
            errs.append(f"train.{key}={getattr(t, key)}: must be >= 0")
    if t.watchdog_s < 0 or t.fault_stall_s < 0 or t.hang_timeout_s < 0:
        errs.append(f"train.watchdog_s={t.watchdog_s} / hang_timeout_s={t.hang_timeout_s} / "
                    f"fault_stall_s={t.fault_stall_s}: must be >= 0")
    if t.init_optimizer and not t.init_from:
        errs.append("train.init_optimizer=true: needs train.init_from (the checkpoint whose optimizer state to carry)")
    if t.resume_from < -1:
        errs.append(f"train.resume_from={t.resume_from}: a checkpoint step (>= 0) or -1 for the newest")
    if t.on_nonfinite not in ("skip", "stop", "rollback"):
        errs.append(f"train.on_nonfinite={t.on_nonfinite!r}: expected skip, stop or rollback")
    if t.fault_kill_in_save not in ("", "shards", "manifest"):
        errs.append(f"train.fault_kill_in_save={t.fault_kill_in_save!r}: expected '', shards or manifest")
    if t.device not in ("auto", "cpu", "cuda"):
        errs.append(f"train.device={t.device!r}: expected auto, cpu or cuda")
    return errs
