"""The `parallel` section of the configuration: how one model is split over processes."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ParallelConfig:
    tp: int = 1                     # tensor parallel size
    pp: int = 1                     # pipeline parallel size
    cp: int = 1                     # context parallel size (sequence split for attention)
    sequence_parallel: bool = False  # Megatron sequence parallelism (needs tp > 1)
    cp_comm: str = "allgather"      # context parallel K/V exchange: allgather | ring
    backend: str = "auto"           # torch.distributed backend: auto (nccl on GPU, gloo on CPU) | gloo | nccl


def validate_parallel(p: ParallelConfig, *, num_heads: int, kv_heads: int, num_layers: int,
                      seq_len: int, world_size: int) -> list[str]:
    """Layout problems, each naming the keys and values involved."""
    errs = []
    for key in ("tp", "pp", "cp"):
        if getattr(p, key) < 1:
            errs.append(f"parallel.{key}={getattr(p, key)}: must be >= 1")
    if errs:
        return errs
    if num_heads % p.tp or kv_heads % p.tp:
        errs.append(f"parallel.tp={p.tp} must divide model.num_heads={num_heads} and the "
                    f"key/value heads ({kv_heads})")
    if num_layers % p.pp:
        errs.append(f"parallel.pp={p.pp} must divide model.num_layers={num_layers}")
    if seq_len % (2 * p.cp) and p.cp > 1:
        errs.append(f"data.seq_len={seq_len} must be divisible by 2*parallel.cp={2 * p.cp}")
    if world_size % (p.tp * p.pp * p.cp):
        errs.append(f"world size {world_size} is not divisible by parallel.tp*pp*cp={p.tp * p.pp * p.cp}")
    if p.sequence_parallel and p.tp == 1:
        errs.append("parallel.sequence_parallel=true needs parallel.tp > 1")
    if p.cp_comm not in ("allgather", "ring"):
        errs.append(f"parallel.cp_comm={p.cp_comm!r}: expected allgather or ring")
    if p.backend not in ("auto", "gloo", "nccl"):
        errs.append(f"parallel.backend={p.backend!r}: expected auto, gloo or nccl")
    return errs
