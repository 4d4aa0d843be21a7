"""Parallelism applied to the model from outside: which part of the model this rank builds, the
context-parallel attention hook, megatron DDP around each model chunk, and the gradient helpers
(global norm, clipping) that must know which gradients are replicated where.

    chunks = build_chunks(model_cfg, parallel_cfg, groups, vocab_size=..., seq_len=...)
    wrapped = parallelize(chunks, groups, parallel_cfg)   # DDP per chunk, hooks set on the config

One chunk per rank without an interleaved pipeline; `vpp` chunks (virtual stages) with it. The model
code (tapa_scale.model) never calls torch.distributed: sizes arrive through megatron's
TransformerConfig, the CP group through the core-attention hook.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.distributed as dist

from .config import ParallelConfig
from .context_parallel import ContextParallel
from .groups import Groups


def build_chunks(model_cfg, pcfg: ParallelConfig, groups: Groups, *, vocab_size: int, seq_len: int,
                 dtype: torch.dtype = torch.float32, seed: int = 0) -> list[torch.nn.Module]:
    """This rank's model chunks (GPTModel, on groups.device), first virtual stage first.

    Weights are a function of `seed` and the model alone, the same in every layout: each part (the
    embedding, each decoder layer by its global index, an untied output layer) is drawn on the CPU from
    a generator seeded by (seed, its name) (tapa_scale.model.gpt.drawing), tensor-parallel ranks
    taking slices of the same full matrices (megatron's use_cpu_initialization). A stage draws only its
    own layers. The global RNG is left as it was."""
    from megatron.core import parallel_state as mpu

    from ..model import build_model, transformer_config

    if vocab_size % groups.tp:
        raise ValueError(f"vocabulary size {vocab_size} must be divisible by parallel.tp={groups.tp} "
                         f"(set model.vocab_size to a multiple)")
    config = transformer_config(model_cfg, dtype=dtype, tp=groups.tp, pp=groups.pp, cp=groups.cp,
                                sequence_parallel=pcfg.sequence_parallel, recompute=pcfg.recompute)
    if pcfg.vpp > 1:  # megatron reads the virtual stage count from the config when counting layers
        config.virtual_pipeline_model_parallel_size = pcfg.vpp
    hook = ContextParallel(groups.cp_group, pcfg.cp_comm) if groups.cp > 1 else None
    chunks = []
    for vp in range(pcfg.vpp):
        stage = vp if pcfg.vpp > 1 else None
        chunks.append(build_model(
            model_cfg, vocab_size=vocab_size, seq_len=seq_len, config=config,
            pre_process=mpu.is_pipeline_first_stage(ignore_virtual=False, vp_stage=stage),
            post_process=mpu.is_pipeline_last_stage(ignore_virtual=False, vp_stage=stage),
            context_parallel=hook, vp_stage=stage, init_seed=seed).to(groups.device))
    _seed_rng_tracker(seed)
    return chunks


def _seed_rng_tracker(seed: int) -> None:
    """megatron's model-parallel RNG streams (dropout inside tensor-parallel regions; the sequence-parallel
    embedding enters one on every forward). Seeding them must not move the global CPU generator, which
    on CPU stands in for the CUDA one: the state is restored around the call."""
    from megatron.core import tensor_parallel

    state = torch.get_rng_state()
    tensor_parallel.model_parallel_cuda_manual_seed(seed)
    torch.set_rng_state(state)


def parallelize(chunks: Sequence[torch.nn.Module], groups: Groups, pcfg: ParallelConfig) -> list:
    """Wrap each chunk in megatron's DistributedDataParallel and set the schedule hooks on the config.

    Gradients accumulate over micro-batches in DDP's fp32 buffer (param.main_grad) and are averaged over
    the data x context parallel ranks once per step by `finalize_model_grads`, which also sums the
    sequence-parallel norm weights over tensor-parallel ranks and the tied embedding over the first
    and last pipeline stages."""
    from megatron.core.distributed import (DistributedDataParallel, DistributedDataParallelConfig,
                                           finalize_model_grads)

    ddp_config = DistributedDataParallelConfig(grad_reduce_in_fp32=True, overlap_grad_reduce=pcfg.overlap_grad_reduce,
                                               overlap_param_gather=pcfg.overlap_param_gather,
                                               align_param_gather=pcfg.overlap_param_gather,
                                               use_distributed_optimizer=pcfg.distributed_optimizer)
    wrapped = []
    for i, chunk in enumerate(chunks):
        # megatron buckets the first chunk only: later chunks finish their backward first (interleaving)
        ddp = DistributedDataParallel(config=chunk.config, ddp_config=ddp_config, module=chunk,
                                      disable_bucketing=i > 0)
        ddp.broadcast_params()  # replicas start equal whatever RNG draws preceded the build
        wrapped.append(ddp)
    config = chunks[0].config
    one = len(wrapped) == 1
    config.no_sync_func = wrapped[0].no_sync if one else [w.no_sync for w in wrapped]
    if pcfg.overlap_grad_reduce:  # the schedule starts each chunk's reduction after its last backward
        config.grad_sync_func = wrapped[0].start_grad_sync if one else [w.start_grad_sync for w in wrapped]
    if pcfg.overlap_param_gather:  # ... and each chunk's weight all-gather before its first forward
        config.param_sync_func = wrapped[0].start_param_sync if one else [w.start_param_sync for w in wrapped]
    config.finalize_model_grads_func = finalize_model_grads
    return wrapped


def sync_params(chunks, pcfg: ParallelConfig) -> None:
    """With parallel.overlap_param_gather the optimizer step leaves the weights' all-gather to the next
    forward; before anything reads the weights outside a forward (a checkpoint), finish it now."""
    if pcfg.overlap_param_gather:
        for chunk in chunks:
            chunk.start_param_sync(force_sync=True)


def unwrap(chunk):
    """The GPTModel inside a DDP wrapper (or the module itself)."""
    return getattr(chunk, "module", chunk)


def trainable_params(chunks) -> list[torch.nn.Parameter]:
    return [p for c in chunks for p in c.parameters() if p.requires_grad]


def grad_norm(params: Sequence[torch.nn.Parameter], groups: Groups) -> torch.Tensor:
    """Global L2 norm of the gradients of the whole model (float32 scalar), the same on every rank.

    After DDP's reduction, data- and context-parallel replicas hold the same gradients, so only the
    tensor x pipeline (model-parallel) ranks hold different parts. Each gradient is counted once:
    megatron marks tensor-parallel slices (`tensor_model_parallel`) and the last stage's copy of tied
    embeddings (`shared`); a replicated weight (norms) is counted on tensor-parallel rank 0 only."""
    from megatron.core.tensor_parallel import param_is_not_tensor_parallel_duplicate
    from megatron.core.transformer.module import param_is_not_shared

    grads = [p.grad for p in params if p.grad is not None and param_is_not_shared(p)
             and param_is_not_tensor_parallel_duplicate(p)]
    device = params[0].device if params else groups.device
    local = torch.nn.utils.get_total_norm(grads) if grads else torch.zeros((), device=device)
    group = groups.model_parallel_group
    if group is None or dist.get_world_size(group) == 1:
        return local.float()
    squared = local.float().pow(2)
    dist.all_reduce(squared, group=group)
    return squared.sqrt()


def clip_grads(params: Sequence[torch.nn.Parameter], max_norm: float, total_norm: torch.Tensor) -> None:
    """Scale gradients so that their global norm is at most max_norm (0 = no clipping)."""
    if max_norm > 0:
        torch.nn.utils.clip_grads_with_norm_([p for p in params if p.grad is not None], max_norm, total_norm)
