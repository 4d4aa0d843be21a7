"""Parallelism applied from outside the model: configuration and process groups."""
from .config import ParallelConfig, validate_parallel
from .groups import Groups, destroy_groups, init_groups

__all__ = ["ParallelConfig", "validate_parallel", "Groups", "init_groups", "destroy_groups"]
