"""Reading a training checkpoint as the converters need it: its configuration and one full state dict.

The full, unsharded GPTModel state dict of a tensor-parallel size 1 model (megatron's names and
fused-projection layouts, see weights.py) comes from tapa_scale/train/checkpoint.py `full_state_dict`,
which reads every checkpoint layout: weights-only (model.safetensors) and sharded multi-rank (dist/,
gathered across tensor-parallel ranks and pipeline stages).
"""
from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ..config import Config, ConfigError
from ..model.config import saved_rope_rule_problem, validate_model
from ..train.checkpoint import full_state_dict, resolve_checkpoint


def read_config(ckpt: Path) -> Config:
    """The checkpoint's resolved config.yaml, typed by the schema (unknown keys rejected) and with a
    valid model section; process-count checks are skipped (this process is not the training job)."""
    path = Path(ckpt) / "config.yaml"
    if not path.is_file():
        raise ConfigError(f"{path}: not found; a checkpoint directory holds the run's config.yaml")
    try:
        raw = OmegaConf.load(path)
        problem = saved_rope_rule_problem(OmegaConf.to_container(raw))
        if problem:
            raise ConfigError(f"{path}: {problem}")
        cfg: Config = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(Config), raw))
    except OmegaConfBaseException as e:
        raise ConfigError(f"{path}: {str(e).splitlines()[0]}") from None
    problems = validate_model(cfg.model)
    if problems:
        raise ConfigError(f"{path}: " + "; ".join(problems))
    return cfg


def open_checkpoint(path: str | Path) -> tuple[Path, Config, dict[str, torch.Tensor]]:
    """`--checkpoint DIR` (run dir or checkpoint dir) -> (checkpoint dir, config, full state dict)."""
    ckpt = resolve_checkpoint(path)
    cfg = read_config(ckpt)
    return ckpt, cfg, full_state_dict(ckpt)
