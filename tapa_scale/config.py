"""The run configuration: one schema (nested dataclasses, one per section), three ways in.

    defaults (the dataclasses)  <-  YAML file(s)  <-  key=value overrides

A YAML file may list `includes:` (paths relative to it) that are merged before its own keys, so
configs/tiny.yaml can pull the model size from configs/model/tiny.yaml. OmegaConf's structured merge
rejects unknown keys and wrong types; the section validators reject values out of range. Either way
the user gets one `ConfigError` line naming the file or override, the key, the value and what is
allowed -- before any process group or long work starts.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .data.config import DataConfig, validate_data
from .model.config import ModelConfig, validate_model
from .parallel.config import ParallelConfig, validate_parallel
from .train.config import RunConfig, TrainConfig, validate_train


class ConfigError(ValueError):
    """A configuration problem, stated in one line."""


@dataclass
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)


def _read_yaml(path: Path, seen: tuple = ()) -> list[tuple[str, dict]]:
    """[(source, mapping)] for a file and, first, everything it includes."""
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    if path.resolve() in seen:
        raise ConfigError(f"{path}: includes itself (through {' -> '.join(str(s) for s in seen)})")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {' '.join(str(e).split())}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections (run, model, data, train, parallel)")
    out = []
    for inc in data.pop("includes", None) or []:
        out += _read_yaml(path.parent / inc, seen + (path.resolve(),))
    return out + [(str(path), data)]


def _merge(base, source: str, mapping):
    try:
        return OmegaConf.merge(base, mapping)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or "?"
        if "not in" in str(e) or "Key" in type(e).__name__:
            raise ConfigError(f"{source}: unknown key '{key}'") from None
        reason = str(e).splitlines()[0]
        raise ConfigError(f"{source}: bad value for '{key}': {reason}") from None


def load_config(path: str | None = None, overrides: Sequence[str] = (), *, world_size: int | None = None,
                check_paths: bool = True) -> Config:
    """Build, type-check and validate the configuration; raises ConfigError (one line)."""
    cfg = OmegaConf.structured(Config)
    sources = _read_yaml(Path(path)) if path else []
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key=value (e.g. train.steps=100)")
        key, value = item.split("=", 1)
        sources.append((f"override {item!r}", OmegaConf.from_dotlist([f"{key.strip()}={value}"])))
    for source, mapping in sources:
        cfg = _merge(cfg, source, mapping)
    config: Config = OmegaConf.to_object(cfg)
    if world_size is None:
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
    problems = validate(config, world_size=world_size, check_paths=check_paths)
    if problems:
        where = f"{path}: " if path else ""
        raise ConfigError(where + "; ".join(problems))
    return config


def validate(cfg: Config, *, world_size: int = 1, check_paths: bool = True) -> list[str]:
    errs = validate_model(cfg.model) + validate_train(cfg.train)
    d = cfg.data
    if d.seq_len <= 0:
        errs.append(f"data.seq_len={d.seq_len}: must be > 0")
    if d.num_workers < 0:
        errs.append(f"data.num_workers={d.num_workers}: must be >= 0")
    errs += validate_data(d)
    if check_paths:
        from .data.remote import is_remote
        locations = [("data.path", d.path)] + [(f"data.sources[{i}].path", s.path)
                                               for i, s in enumerate(d.sources)]
        for key, value in locations + [("data.tokenizer", d.tokenizer)]:
            if value and not (key != "data.tokenizer" and is_remote(value)) and not Path(value).is_dir():
                errs.append(f"{key}={value!r}: directory not found")
        if cfg.train.init_from and not Path(cfg.train.init_from).exists():
            errs.append(f"train.init_from={cfg.train.init_from!r}: no such checkpoint or run directory")
    if not errs and cfg.model.tapa.rope_heads and (cfg.parallel.tp > 1 or cfg.parallel.cp > 1):
        errs.append(f"model.tapa.rope_heads={cfg.model.tapa.rope_heads}: local-RoPE heads run without tensor or "
                    f"context parallelism for now (parallel.tp={cfg.parallel.tp}, parallel.cp={cfg.parallel.cp})")
    if not errs:
        errs += validate_parallel(cfg.parallel, num_heads=cfg.model.num_heads, kv_heads=cfg.model.kv_heads,
                                  num_layers=cfg.model.num_layers, seq_len=d.seq_len, world_size=world_size,
                                  num_microbatches=_microbatches(cfg, world_size),
                                  eval_batches=cfg.train.eval_batches, device=cfg.train.device)
    if not errs:
        dp = world_size // (cfg.parallel.tp * cfg.parallel.pp * cfg.parallel.cp)
        gbs, mbs = cfg.train.global_batch_size, cfg.train.micro_batch_size
        if gbs and gbs % (mbs * dp):
            errs.append(f"train.global_batch_size={gbs} must be a multiple of train.micro_batch_size "
                        f"({mbs}) x data-parallel size ({dp})")
    return errs


def _microbatches(cfg: Config, world_size: int):
    """Micro-batches per optimizer step on each data-parallel rank, or None if the sizes do not fit
    (reported by the batch-size rule)."""
    p, t = cfg.parallel, cfg.train
    mp = p.tp * p.pp * p.cp
    if world_size % mp:
        return None
    dp = world_size // mp
    gbs = t.global_batch_size or t.micro_batch_size * dp
    return gbs // (t.micro_batch_size * dp) if gbs % (t.micro_batch_size * dp) == 0 else None


def to_yaml(cfg: Config) -> str:
    """The resolved configuration, as written into every run directory and checkpoint."""
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))
