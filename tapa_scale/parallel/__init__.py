"""Parallelism applied from outside the model: configuration and process groups, the model chunks of
this rank wrapped in megatron DDP, context parallelism for TAPA and the RoPE family, and the
megatron-core compatibility module for CPU (gloo). See docs/parallel.md."""
from .config import ParallelConfig, validate_parallel
from .context_parallel import ContextParallel, shard_sequence
from .groups import Groups, destroy_groups, init_groups
from .parallelize import build_chunks, parallelize

__all__ = ["ParallelConfig", "validate_parallel", "Groups", "init_groups", "destroy_groups", "ContextParallel",
           "shard_sequence", "build_chunks", "parallelize"]
