"""The `parallel` section of the configuration: how one model is split over processes.

world size = tp * pp * cp * dp: tensor parallel (heads and MLP columns), pipeline parallel (layers,
optionally `vpp` interleaved chunks per stage), context parallel (the sequence, for attention) and data
parallel (the rest). `validate_parallel` states every layout problem before any process group starts.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass
class ParallelConfig:
    tp: int = 1                     # tensor parallel size
    pp: int = 1                     # pipeline parallel size
    cp: int = 1                     # context parallel size (sequence split for attention)
    vpp: int = 1                    # model chunks per pipeline stage; > 1 = interleaved 1F1B schedule
    sequence_parallel: bool = False  # Megatron sequence parallelism (needs tp > 1)
    cp_comm: str = "allgather"      # context parallel K/V exchange: allgather | ring
    distributed_optimizer: bool = False  # megatron's distributed optimizer: AdamW state sharded over data x context ranks
    overlap_grad_reduce: bool = False    # megatron DDP: reduce gradient buckets during backward (CUDA only)
    overlap_param_gather: bool = False   # distributed optimizer: all-gather updated weights during the next forward (CUDA only)
    recompute: str = "none"         # none | selective (the core attention rebuilt in backward) | full (every layer's)
    backend: str = "auto"           # torch.distributed backend: auto (nccl on GPU, gloo on CPU) | gloo | nccl


def validate_parallel(p: ParallelConfig, *, num_heads: int, kv_heads: int, num_layers: int,
                      seq_len: int, world_size: int, num_microbatches: Optional[int] = None,
                      eval_batches: Optional[int] = None, device: str = "auto") -> list[str]:
    """Layout problems, each naming the keys and values involved (empty list = fine).

    num_microbatches (micro-batches per optimizer step on each data-parallel rank) and eval_batches
    (validation micro-batches per data-parallel rank), when known, are checked against the interleaved
    schedule. `device` ("auto" | "cpu" | "cuda"): every layout runs on both (the distributed optimizer on
    CPU through parallel/cpu_compat.py); megatron's overlap options need CUDA streams and are refused on
    the CPU.
    """
    errs = [f"parallel.{key}={getattr(p, key)}: must be >= 1"
            for key in ("tp", "pp", "cp", "vpp") if getattr(p, key) < 1]
    if errs:
        return errs
    if num_heads % p.tp or kv_heads % p.tp:
        errs.append(f"parallel.tp={p.tp} must divide model.num_heads={num_heads} and the "
                    f"key/value heads (query groups, {kv_heads})")
    if num_layers % (p.pp * p.vpp):
        vpp = f" x parallel.vpp={p.vpp}" if p.vpp > 1 else ""
        errs.append(f"parallel.pp={p.pp}{vpp} must divide model.num_layers={num_layers}")
    if p.vpp > 1 and p.pp == 1:
        errs.append(f"parallel.vpp={p.vpp} (interleaved pipeline) needs parallel.pp > 1")
    if p.vpp > 1 and num_microbatches is not None and num_microbatches % p.pp:
        errs.append(f"parallel.vpp={p.vpp}: the interleaved schedule needs a multiple of parallel.pp={p.pp} "
                    f"micro-batches per step on each data-parallel rank, got {num_microbatches} "
                    f"(train.global_batch_size / (train.micro_batch_size x data-parallel size))")
    if p.vpp > 1 and eval_batches is not None and eval_batches % p.pp:
        errs.append(f"train.eval_batches={eval_batches}: the interleaved schedule (parallel.vpp={p.vpp}) "
                    f"validates a multiple of parallel.pp={p.pp} micro-batches per data-parallel rank")
    if p.cp > 1 and seq_len % (2 * p.cp):
        errs.append(f"data.seq_len={seq_len} must be divisible by 2*parallel.cp={2 * p.cp} "
                    f"(load-balanced context parallel chunks)")
    if world_size % (p.tp * p.pp * p.cp):
        errs.append(f"world size {world_size} is not divisible by parallel.tp*pp*cp={p.tp * p.pp * p.cp}")
    if p.sequence_parallel and p.tp == 1:
        errs.append("parallel.sequence_parallel=true needs parallel.tp > 1")
    if p.sequence_parallel and (seq_len // p.cp) % p.tp:
        errs.append(f"parallel.sequence_parallel=true: data.seq_len/parallel.cp={seq_len // p.cp} must "
                    f"be divisible by parallel.tp={p.tp}")
    if p.cp_comm not in ("allgather", "ring"):
        errs.append(f"parallel.cp_comm={p.cp_comm!r}: expected allgather or ring")
    if p.overlap_param_gather and not (p.distributed_optimizer and p.overlap_grad_reduce):
        errs.append("parallel.overlap_param_gather=true needs parallel.distributed_optimizer=true and "
                    "parallel.overlap_grad_reduce=true (megatron gathers the weights its optimizer shards)")
    overlap = [k for k in ("overlap_grad_reduce", "overlap_param_gather") if getattr(p, k)]
    if overlap and device == "cpu":
        errs.append(f"parallel.{overlap[0]}=true: megatron overlaps communication on CUDA streams; not "
                    f"available on the CPU (set it false there)")
    if p.recompute not in ("none", "selective", "full"):
        errs.append(f"parallel.recompute={p.recompute!r}: expected none, selective or full")
    if p.backend not in ("auto", "gloo", "nccl"):
        errs.append(f"parallel.backend={p.backend!r}: expected auto, gloo or nccl")
    return errs
