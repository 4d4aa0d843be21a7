"""Builders for a training run: device and precision, data, model, optimizer. One function per part."""
from __future__ import annotations

import contextlib
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..config import Config
from ..data import build_loader, ensure_dataset, load_tokenizer
from ..model import build_model, transformer_config
from ..parallel import Groups
from .optim import build_optimizer


@dataclass
class Run:
    """Everything the loop touches."""
    cfg: Config
    groups: Groups
    device: torch.device
    dtype: torch.dtype
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    train_loader: object
    val_loader: object        # callable -> a fresh iterator over the (finite, fixed) validation batches
    accumulation: int         # micro-batches per optimizer step on each data-parallel rank
    global_batch: int         # sequences per optimizer step over all ranks
    document_masking: bool
    tokenizer_dir: Path

    def autocast(self):
        if self.dtype == torch.bfloat16:
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def pick_dtype(precision: str, device: torch.device) -> torch.dtype:
    if precision == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"fp32": torch.float32, "bf16": torch.bfloat16}[precision]


def build_data(cfg: Config, groups: Groups):
    """Prepare/validate the dataset (before any model is built) and return (train, val factory, tokenizer)."""
    ensure_dataset(cfg.data)
    tokenizer = load_tokenizer(cfg.data.tokenizer)
    mbs = cfg.train.micro_batch_size
    train = build_loader(cfg.data, "train", mbs, dp_rank=groups.dp_rank, dp_size=groups.dp_size, seed=cfg.train.seed)
    def val():
        return iter(build_loader(cfg.data, "val", mbs, dp_rank=groups.dp_rank, dp_size=groups.dp_size,
                                 seed=cfg.train.seed))
    return train, val, tokenizer


def build_run(cfg: Config, groups: Groups) -> Run:
    t = cfg.train
    if t.threads:
        torch.set_num_threads(t.threads)
    train_loader, val_loader, tokenizer = build_data(cfg, groups)
    vocab = cfg.model.vocab_size or len(tokenizer)
    dtype = pick_dtype(t.precision, groups.device)
    seed_everything(t.seed)  # identical initial weights on every data-parallel rank
    tconf = transformer_config(cfg.model, tp=groups.tp, pp=groups.pp, cp=groups.cp,
                               sequence_parallel=cfg.parallel.sequence_parallel)
    model = build_model(cfg.model, vocab_size=vocab, seq_len=cfg.data.seq_len, config=tconf).to(groups.device)
    optimizer = build_optimizer(model.parameters(), t)
    global_batch = t.global_batch_size or t.micro_batch_size * groups.dp_size
    accumulation = global_batch // (t.micro_batch_size * groups.dp_size)
    return Run(cfg=cfg, groups=groups, device=groups.device, dtype=dtype, model=model, optimizer=optimizer,
               train_loader=train_loader, val_loader=val_loader, accumulation=accumulation,
               global_batch=global_batch, document_masking=t.document_masking,
               tokenizer_dir=Path(tokenizer.name_or_path))
