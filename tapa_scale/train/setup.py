"""Builders for a training run: device and precision, data, model, optimizer. One function per part."""
from __future__ import annotations

import contextlib
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..config import Config, ConfigError
from ..data import build_loader, ensure_sources, load_tokenizer
from ..parallel import Groups, validate_parallel
from ..parallel.parallelize import build_chunks, parallelize, trainable_params, unwrap
from .optim import build_optimizer
from .resume import resolve_original_length


@dataclass
class Run:
    """Everything the loop touches."""
    cfg: Config
    groups: Groups
    device: torch.device
    dtype: torch.dtype
    model: torch.nn.Module    # this rank's model (unwrapped; a ModuleList of chunks under interleaving)
    chunks: list              # the DDP-wrapped model chunks the pipeline schedule runs
    optimizer: torch.optim.Optimizer
    train_loader: object
    val_loader: object        # callable -> a fresh iterator over the (finite, fixed) validation batches
    accumulation: int         # micro-batches per optimizer step on each data-parallel rank
    global_batch: int         # sequences per optimizer step over all ranks
    document_masking: bool
    tokenizer_dir: Path
    vocab_size: int = 0       # the model's vocabulary (model FLOPs)

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


def build_data(cfg: Config, groups: Groups, global_batch: int):
    """Prepare/validate the dataset (before any model is built) and return (train, val factory, tokenizer).

    Samples are split over data-parallel ranks only: the tensor, pipeline and context parallel ranks of
    one replica read the same samples (context parallel ranks then take their shard of each sequence)."""
    sources = ensure_sources(cfg.data)  # validated once; remote metadata fetched once
    tokenizer = load_tokenizer(cfg.data.tokenizer)
    mbs = cfg.train.micro_batch_size
    train = build_loader(cfg.data, "train", mbs, dp_rank=groups.dp_rank, dp_size=groups.dp_size, seed=cfg.train.seed,
                         sources=sources, step_samples=global_batch)
    def val():
        return iter(build_loader(cfg.data, "val", mbs, dp_rank=groups.dp_rank, dp_size=groups.dp_size,
                                 seed=cfg.train.seed, sources=sources))
    return train, val, tokenizer


def check_layout(cfg: Config, groups: Groups, accumulation: int) -> None:
    """Layout rules that need the data-parallel size (known once the world exists)."""
    m, p = cfg.model, cfg.parallel
    problems = validate_parallel(p, num_heads=m.num_heads, kv_heads=m.kv_heads, num_layers=m.num_layers,
                                 seq_len=cfg.data.seq_len, world_size=groups.world_size,
                                 num_microbatches=accumulation, eval_batches=cfg.train.eval_batches,
                                 device=groups.device.type)
    if problems:
        raise ConfigError("; ".join(problems))


def build_optimizer_for(cfg: Config, chunks: list):
    """AdamW over this rank's parameters; megatron's distributed optimizer (GPU only) when asked for."""
    t = cfg.train
    if not cfg.parallel.distributed_optimizer:
        return build_optimizer(trainable_params(chunks), t)
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
    ocfg = OptimizerConfig(optimizer="adam", lr=t.lr, weight_decay=t.weight_decay, adam_beta1=t.beta1,
                           adam_beta2=t.beta2, adam_eps=t.eps, clip_grad=t.grad_clip,
                           use_distributed_optimizer=True)
    return get_megatron_optimizer(ocfg, chunks)


def build_run(cfg: Config, groups: Groups) -> Run:
    t = cfg.train
    if t.threads:
        torch.set_num_threads(t.threads)
    global_batch = t.global_batch_size or t.micro_batch_size * groups.dp_size
    accumulation = global_batch // (t.micro_batch_size * groups.dp_size)
    check_layout(cfg, groups, accumulation)
    resolve_original_length(cfg, groups.is_main)  # before the model is built and config.yaml is written
    train_loader, val_loader, tokenizer = build_data(cfg, groups, global_batch)
    vocab = cfg.model.vocab_size or len(tokenizer)
    if vocab % groups.tp:  # megatron splits the embedding and output rows evenly over tensor-parallel ranks
        raise ConfigError(f"vocabulary size {vocab} (model.vocab_size, 0 = the tokenizer's) must be divisible "
                          f"by parallel.tp={groups.tp}")
    dtype = pick_dtype(t.precision, groups.device)
    seed_everything(t.seed)  # identical initial weights on every data-parallel rank
    chunks = build_chunks(cfg.model, cfg.parallel, groups, vocab_size=vocab, seq_len=cfg.data.seq_len, seed=t.seed)
    wrapped = parallelize(chunks, groups, cfg.parallel)
    model = chunks[0] if len(chunks) == 1 else torch.nn.ModuleList(chunks)
    return Run(cfg=cfg, groups=groups, device=groups.device, dtype=dtype, model=unwrap(model), chunks=wrapped,
               optimizer=build_optimizer_for(cfg, wrapped), train_loader=train_loader, val_loader=val_loader,
               accumulation=accumulation, global_batch=global_batch, document_masking=t.document_masking,
               tokenizer_dir=Path(tokenizer.name_or_path), vocab_size=vocab)
