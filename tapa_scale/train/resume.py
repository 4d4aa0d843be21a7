"""Resuming a whole run (collective: every rank calls these at the same step); saving is saver.py.

    state, chosen, same_layout = resume(run, cfg, report)   # {"step": 0, "tokens": 0, ...} when fresh

What may change between save and resume (docs/checkpoints.md): the parallel layout (tp, pp, cp, dp,
vpp, sequence_parallel — megatron reshards the tensors; the data cursor is a global sample count),
the number of steps, logging/eval/checkpoint cadence, implementation-only model keys
(model.attention_impl). What may not: the rest of the model section (compared resolved), the dataset,
data.seq_len, the seed, the optimizer kind (torch AdamW vs megatron's distributed optimizer): those are
refused in one line before training starts. RNG states are restored only into the same layout (same
world size and tp/pp/cp): after a layout change every rank keeps its freshly seeded generators.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch.distributed as dist
import yaml

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ..config import Config, ConfigError
from ..model.config import model_identity, saved_rope_rule_problem
from . import checkpoint as ckpt
from .saver import chunks_of as _chunks, layout_of, next_batch_fingerprint
from .sharded import DIST, RNG, load_rng, load_sharded


def _broadcast(value):
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)  # over the wire only; nothing read from a file is unpickled
    return box[0]


def _typed(raw: dict, where: Path) -> Config:
    """A saved config.yaml's mapping as the schema types it (keys added since it was written get defaults)."""
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(Config), raw))
    except OmegaConfBaseException as e:
        raise ConfigError(f"{where}/config.yaml: {str(e).splitlines()[0]}") from None


def check_compatible(saved_cfg_yaml: str, cfg, where: Path) -> None:
    """Refuse, in one line, a resume that changes what cannot be resharded or continued. Model keys
    are compared resolved (0 = derived sizes, YaRN's original length); implementation-only keys
    (model.attention_impl) may change."""
    raw = yaml.safe_load(saved_cfg_yaml)
    problem = saved_rope_rule_problem(raw)
    if problem:
        raise ConfigError(f"{where}: {problem}")
    saved = _typed(raw, where)
    now = model_identity(cfg.model, cfg.data.seq_len)
    pairs = [(f"model.{k}", v, now.get(k)) for k, v in model_identity(saved.model, saved.data.seq_len).items()]
    pairs += [("data.seq_len", saved.data.seq_len, cfg.data.seq_len), ("train.seed", saved.train.seed, cfg.train.seed)]
    for key, old, new in pairs:
        if old != new:
            raise ConfigError(f"{where}: cannot resume with {key}={new!r}; the checkpoint "
                              f"was written with {old!r} (see docs/checkpoints.md, resume rules)")


def resolve_original_length(cfg, is_main: bool) -> None:
    """Fix the original length of YaRN and llama3 scaling (model.rope.original_length, 0 = unset) once, before the model is
    built: the value of the checkpoint this run continues (its own, else train.init_from's), else
    this first run's data.seq_len. Without it a later stage at a longer data.seq_len would silently
    move the frequencies. Collective; the resolved value goes into config.yaml of run and checkpoints."""
    rope = cfg.model.rope
    if rope.original_length:
        return
    length, error = None, None
    if is_main:
        try:
            length = cfg.data.seq_len
            source = _continued_checkpoint(cfg)
            if source is not None and (source / "config.yaml").is_file():
                saved = _typed(yaml.safe_load((source / "config.yaml").read_text()), source)
                length = saved.model.rope.original_length or saved.data.seq_len
        except ConfigError as e:  # every rank raises the same line instead of waiting in the broadcast
            error = str(e)
    length, error = _broadcast((length, error))
    if error:
        raise ConfigError(error)
    rope.original_length = length


def _continued_checkpoint(cfg) -> Optional[Path]:
    run_dir, t = Path(cfg.run.dir), cfg.train
    if t.resume_from >= 0 and (ckpt.checkpoint_dir(run_dir, t.resume_from) / ckpt.MARKER).exists():
        return ckpt.checkpoint_dir(run_dir, t.resume_from)
    own = ckpt.latest_checkpoint(run_dir)
    if own is not None or not t.init_from:
        return own
    try:
        return ckpt.resolve_checkpoint(t.init_from)
    except FileNotFoundError:
        return None  # start-up names the missing checkpoint when it loads it


def restore_optimizer_from(run, source: Path) -> None:
    """Weights, AdamW moments and their step counts from another run's checkpoint (train.init_from with
    train.init_optimizer): the extension stage's restore. The step counter, schedule, data cursor and
    RNG of this run start fresh. Collective; either optimizer reads the moments of either (they are
    stored as the same global tensors)."""
    if not (source / DIST).is_dir():
        raise ConfigError(f"train.init_optimizer=true: {source} is a weights-only checkpoint (no optimizer state)")
    state = ckpt.read_state(source)
    load_sharded(source / DIST, _chunks(run), run.optimizer, state.get("optimizer_steps") or 0)


def resume(run, cfg, report=ckpt.warn) -> tuple[dict, Optional[Path], bool]:
    """Load the checkpoint to resume from (collective). Returns (state, checkpoint, restore_rng):
    the caller restores RNG last (`restore_rng`) once everything else of start-up is done."""
    t, run_dir = cfg.train, Path(cfg.run.dir)
    chosen, error = None, None
    if run.groups.is_main:
        try:
            chosen = ckpt.select_checkpoint(run_dir, t.resume_from, t.verify_checksums, report)
            if chosen is not None and not (chosen / DIST).is_dir():
                raise ConfigError(f"{chosen}: a weights-only checkpoint cannot be resumed; "
                                  f"start from it with train.init_from")
            if chosen is not None:
                check_compatible((chosen / "config.yaml").read_text(), cfg, chosen)
        except (ConfigError, ckpt.CorruptCheckpoint) as e:
            error = str(e)
    chosen, error = _broadcast((str(chosen) if chosen else None, error))
    if error:
        raise ConfigError(error)
    if chosen is None:
        return {"step": 0, "tokens": 0, "skipped_steps": 0}, None, False
    chosen = Path(chosen)
    state = ckpt.read_state(chosen)
    load_sharded(chosen / DIST, _chunks(run), run.optimizer, state.get("optimizer_steps") or 0)
    run.train_loader.load_state_dict(state["data"])
    check_fingerprint(run, state, chosen)
    now = layout_of(run)
    ranks = {k: v for k, v in now.items() if k != "optimizer"}
    same = {k: v for k, v in state["layout"].items() if k != "optimizer"} == ranks  # RNG is per rank
    if run.groups.is_main:
        report(f"checkpoint: resuming from {chosen} (step {state['step']}, {state['tokens']:,} tokens)")
        if not same:
            report(f"checkpoint: {chosen.name} was written by layout {state['layout']}; resharded into "
                   f"{now}; RNG states start fresh")
        if state["layout"].get("optimizer") != now["optimizer"]:
            report(f"checkpoint: AdamW moments of the {state['layout'].get('optimizer')} optimizer loaded into "
                   f"the {now['optimizer']} one (parallel.distributed_optimizer)")
    keep = {k: state[k] for k in ("step", "tokens")}
    keep["skipped_steps"] = state.get("skipped_steps", 0)
    return keep, chosen, same


def check_fingerprint(run, state: dict, chosen: Path) -> None:
    """The samples this resume will train on next must be those the checkpoint said come next.
    Collective: rank 0 compares, every rank raises the same refusal (none waits in a collective)."""
    saved, error = state.get("next_batch"), None
    if saved is not None and run.groups.is_main:
        now = next_batch_fingerprint(run.train_loader, saved["samples"])
        if now != saved:
            error = (f"{chosen}: the next batch's samples differ from the checkpoint's fingerprint "
                     f"(saved {saved['sha256'][:12]} at sample {saved['first_sample']}, now "
                     f"{now['sha256'][:12]} at {now['first_sample']}): the dataset changed")
    error = _broadcast(error)
    if error:
        raise ConfigError(error)


def restore_rng(chosen: Path, rank: int) -> None:
    load_rng(chosen / RNG, rank)


def rollback(run, cfg, report=ckpt.warn) -> Optional[Path]:
    """train.on_nonfinite=rollback: model and optimizer from the newest complete checkpoint; the step
    count and the data position move on (the batches since then are not replayed)."""
    run_dir, chosen = Path(cfg.run.dir), None
    if run.groups.is_main:
        chosen = ckpt.select_checkpoint(run_dir, -1, cfg.train.verify_checksums, report)
    chosen = _broadcast(str(chosen) if chosen else None)
    if chosen is None:
        return None
    state = ckpt.read_state(Path(chosen))
    load_sharded(Path(chosen) / DIST, _chunks(run), run.optimizer, state.get("optimizer_steps") or 0)
    return Path(chosen)
