"""Reading a training checkpoint as the converters need it: its configuration and one full state dict.

Checkpoint layouts register here as (name, detect, load) where load(ckpt_dir) returns the full,
unsharded GPTModel state dict of a tensor-parallel size 1 model (megatron's names and fused-projection
layouts, see weights.py). Only the single-process layout exists today (model.safetensors, written by
tapa_scale/train/checkpoint.py); the sharded multi-rank layout plugs in as one more entry whose load
gathers the tensor-parallel shards (concatenating column-parallel rows per query group and
row-parallel columns) and the pipeline stages (renumbering decoder.layers.*) into that form.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException
from safetensors.torch import load_file

from ..config import Config, ConfigError
from ..model.config import ModelConfig, validate_model
from ..train.checkpoint import resolve_checkpoint


@dataclass(frozen=True)
class Layout:
    name: str
    detect: Callable[[Path], bool]
    load: Callable[[Path], dict[str, torch.Tensor]]


def _load_single(ckpt: Path) -> dict[str, torch.Tensor]:
    return load_file(str(ckpt / "model.safetensors"))


LAYOUTS: list[Layout] = [
    Layout("single-process", lambda c: (c / "model.safetensors").is_file(), _load_single),
]


def read_config(ckpt: Path) -> Config:
    """The checkpoint's resolved config.yaml, typed by the schema (unknown keys rejected) and with a
    valid model section; process-count checks are skipped (this process is not the training job)."""
    path = Path(ckpt) / "config.yaml"
    if not path.is_file():
        raise ConfigError(f"{path}: not found; a checkpoint directory holds the run's config.yaml")
    try:
        cfg: Config = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(Config), OmegaConf.load(path)))
    except OmegaConfBaseException as e:
        raise ConfigError(f"{path}: {str(e).splitlines()[0]}") from None
    problems = validate_model(cfg.model)
    if problems:
        raise ConfigError(f"{path}: " + "; ".join(problems))
    return cfg


def full_state_dict(ckpt: Path) -> dict[str, torch.Tensor]:
    """The full unsharded state dict of a checkpoint, whatever layout wrote it."""
    for layout in LAYOUTS:
        if layout.detect(ckpt):
            return layout.load(ckpt)
    raise FileNotFoundError(f"{ckpt}: no model weights in a known layout "
                            f"({', '.join(l.name for l in LAYOUTS)})")


def open_checkpoint(path: str | Path) -> tuple[Path, Config, dict[str, torch.Tensor]]:
    """`--checkpoint DIR` (run dir or checkpoint dir) -> (checkpoint dir, config, full state dict)."""
    ckpt = resolve_checkpoint(path)
    cfg = read_config(ckpt)
    return ckpt, cfg, full_state_dict(ckpt)


def effective_original_length(model: ModelConfig, seq_len: int) -> int:
    """YaRN's original length as training used it: model.rope.original_length, 0 meaning data.seq_len."""
    return model.rope.original_length or seq_len
