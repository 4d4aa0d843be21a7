"""The training loop: `train(cfg)` builds everything, resumes from the newest complete checkpoint and
runs optimizer steps, logging, validation, checkpoints and fault handling. Builders live in setup.py,
one optimizer step and validation in step.py, saving and resuming in resume.py, fault handling in
faults.py; the step loop below fits one screen.

Start-up order matters for exact resume: build, load model/optimizer/data state, open the metrics and
the batch iterator, and restore the RNG states as the very last thing before the first step.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from ..config import Config, to_yaml
from ..ops import last_attention_impl
from ..parallel import destroy_groups, init_groups
from ..parallel.groups import wants_cuda
from ..parallel.trace import CollectiveTrace, flight_recorder_env
from ..parallel.reshard import load_full_state_dict
from . import checkpoint as ckpt
from . import faults, resume
from .accounting import Accounting, ManualGC, StepClock
from .saver import Saver, chunks_of
from .metrics import MetricsLogger
from .optim import lr_at, set_lr
from .setup import build_run
from .step import evaluate, train_step


class OutOfMemory(RuntimeError):
    """A step did not fit in memory (reported in one line, exit status 2)."""


class NonFiniteStop(RuntimeError):
    """train.on_nonfinite=stop, or more than train.max_bad_steps non-finite steps in a row."""


def train(cfg: Config) -> dict:
    """Train (or resume) the run described by cfg; returns the last logged record."""
    if wants_cuda(cfg.train.device):
        flight_recorder_env(cfg.run.dir)  # read when the NCCL process group is created
    groups = init_groups(cfg.parallel, cfg.train.device)
    try:
        return _train(cfg, build_run(cfg, groups))
    finally:
        destroy_groups()


def _start(cfg: Config, run) -> tuple[dict, Path | None, bool]:
    """Resume state (or a fresh one, with train.init_from weights). RNG is restored later, last."""
    run_dir = Path(cfg.run.dir)
    if run.groups.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(to_yaml(cfg))
    state, chosen, same_layout = resume.resume(run, cfg)
    if chosen is None and cfg.train.init_from:  # this run's own checkpoints take precedence
        source = ckpt.resolve_checkpoint(cfg.train.init_from)
        if cfg.train.init_optimizer:  # weights and AdamW state, resharded into this layout (collective)
            resume.restore_optimizer_from(run, source)
        else:  # any checkpoint layout gives the full weights; each rank cuts its tensor/pipeline piece
            full = ckpt.full_state_dict(source)
            for chunk in chunks_of(run):
                load_full_state_dict(chunk, full)
    return state, chosen, same_layout


def _train(cfg: Config, run) -> dict:
    t = cfg.train
    state, chosen, same_layout = _start(cfg, run)
    logger = MetricsLogger(Path(cfg.run.dir), total_steps=t.steps, start_step=state["step"],
                           enabled=run.groups.is_main, tensorboard=cfg.run.tensorboard, progress=cfg.run.progress)
    guard = faults.NonFiniteGuard(run.optimizer, run.device, run.chunks)
    preempt = faults.Preemption(t.save_on_signal, run.device)
    trace = CollectiveTrace().install() if (t.watchdog_s or t.hang_timeout_s) else None
    watchdog = faults.Watchdog(t.watchdog_s, run.groups.rank, t.hang_timeout_s, trace)
    saver = Saver(run, cfg, hook=faults.kill_hook(t.fault_kill_in_save) if t.fault_kill_in_save else None)
    current = {"step": 0}
    faults.poison_at(chunks_of(run),
                     lambda: t.fault_nan_at and current["step"] == t.fault_nan_at)
    batches, record, bad = iter(run.train_loader), {}, 0
    clock, accounting, collector = StepClock(), Accounting(run), ManualGC(t.gc_every)
    clock.time_calls(run.chunks[0].config, "finalize_model_grads_func", "grad_sync")
    if run.groups.is_main:
        (Path(cfg.run.dir) / "accounting.json").write_text(json.dumps(accounting.describe(), indent=1) + "\n")
    steps_timed = 0  # steps since the last record
    if chosen is not None and same_layout:
        resume.restore_rng(chosen, run.groups.rank)  # the very last step of start-up
    watchdog.beat(state["step"])
    finished = False
    try:
        for step in range(state["step"] + 1, t.steps + 1):
            current["step"] = step
            set_lr(run.optimizer, lr := lr_at(step - 1, t))
            if t.fault_stall_at == step:
                faults.stall(t.fault_stall_s, run.groups.rank, t.fault_stall_rank)
            try:
                if t.fault_oom_at == step:
                    raise torch.OutOfMemoryError(f"fault injection: out of memory in step {step}")
                loss, grad_norm = train_step(run, batches, clock)
            except (torch.OutOfMemoryError, RuntimeError) as e:
                if isinstance(e, torch.OutOfMemoryError) or "can't allocate memory" in str(e):
                    raise _out_of_memory(run, cfg, step) from e
                raise
            steps_timed += 1
            state.update(step=step, tokens=state["tokens"] + accounting.tokens_per_step)
            with clock.phase("checkpoint"):
                saver.poll()
            bad = _handle_nonfinite(run, cfg, guard, bad, state, step, saver)
            last = step == t.steps
            if step % t.log_every == 0 or last or guard.skipped_last or (t.eval_every and step % t.eval_every == 0):
                record = {"step": step, "loss": loss, "lr": lr, "grad_norm": grad_norm, "tokens": state["tokens"],
                          **accounting.record(clock, steps_timed), "skipped_steps": state["skipped_steps"],
                          "attention_impl": last_attention_impl()}  # what ran, after any fallback
                if len(run.train_loader.sources) > 1:  # a mixture: tokens taken from each source
                    record["source_tokens"] = run.train_loader.source_tokens()
                if last or (t.eval_every and step % t.eval_every == 0):
                    record["val_loss"], record["val_loss_by_position"] = evaluate(run, t.eval_batches)
                logger.log(record)
                clock.reset()  # validation and logging above are not step time
                steps_timed = 0
            stop = preempt.requested()
            if stop or (last and t.final_checkpoint) or (t.checkpoint_every and step % t.checkpoint_every == 0):
                with clock.phase("checkpoint"):
                    saver.save(state)
            collector.step(step)
            watchdog.beat(step)
            if t.fault_crash_at == step:
                faults.crash(step, run.groups.rank)
            if stop:
                saver.wait()
                if run.groups.is_main:
                    ckpt.warn(f"signal {preempt.signum or 'on another rank'}: checkpoint of step {step} "
                              f"written; exiting")
                break
        finished = True
    except NonFiniteStop:
        finished = True  # every rank stops after the same step: a save in flight may complete
        raise
    finally:
        saver.close(abort=not finished)
        collector.close()
        watchdog.close()
        if trace is not None:
            trace.uninstall()
        preempt.close()
        logger.close()
    return record


def _out_of_memory(run, cfg: Config, step: int) -> "OutOfMemory":
    """One line with what decides a step's memory, and what to change."""
    p, used = cfg.parallel, ""
    if run.device.type == "cuda":
        total = torch.cuda.get_device_properties(run.device).total_memory
        used = f" (peak {torch.cuda.max_memory_allocated(run.device) / 1e9:.1f} of {total / 1e9:.1f} GB)"
    return OutOfMemory(f"{cfg.run.dir}: step {step}: out of memory{used} at data.seq_len={cfg.data.seq_len}, "
                       f"train.micro_batch_size={cfg.train.micro_batch_size}, parallel.tp={p.tp} pp={p.pp} "
                       f"cp={p.cp} recompute={p.recompute}: set parallel.recompute=full, a larger parallel.cp or "
                       f"a smaller train.micro_batch_size (tools/scaling_study.py plan prices each)")


def _handle_nonfinite(run, cfg: Config, guard, bad: int, state: dict, step: int, saver) -> int:
    """Apply train.on_nonfinite after a step whose update was skipped; returns consecutive bad steps."""
    if not guard.skipped_last:
        return 0
    t, bad = cfg.train, bad + 1
    state["skipped_steps"] = state.get("skipped_steps", 0) + 1
    if run.groups.is_main:
        ckpt.warn(f"step {step}: non-finite loss or gradient; update skipped ({bad} in a row, "
                  f"{state['skipped_steps']} in total; train.on_nonfinite={t.on_nonfinite})")
    if t.on_nonfinite == "stop":
        raise NonFiniteStop(f"step {step}: non-finite loss or gradient and train.on_nonfinite=stop")
    if bad > t.max_bad_steps:
        raise NonFiniteStop(f"step {step}: {bad} consecutive non-finite steps (train.max_bad_steps={t.max_bad_steps})")
    if t.on_nonfinite == "rollback":
        saver.wait()  # a save in flight is the newest checkpoint once published
        restored = resume.rollback(run, cfg)
        if run.groups.is_main:
            ckpt.warn(f"step {step}: rolled back model and optimizer to {restored}" if restored
                      else f"step {step}: no checkpoint to roll back to; update skipped")
    return bad
