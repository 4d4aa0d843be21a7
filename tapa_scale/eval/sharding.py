"""Evaluation work split over the processes of a torchrun launch: each rank scores every world-th item
and the results are gathered in item order, so every rank ends with the list one process would have
made. Nothing is summed across ranks in floating point: totals are taken afterwards with math.fsum
(correctly rounded, so independent of the order), which makes the reduction exact.

Without an initialised process group (a plain `python` run) the world is this one process.
"""
from __future__ import annotations

from typing import Callable, Sequence, TypeVar

import torch.distributed as dist

T = TypeVar("T")


def world() -> tuple[int, int]:
    """(rank, world size) of the default process group, (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def map_shared(fn: Callable[[Sequence[T]], list], items: Sequence[T]) -> list:
    """fn(this rank's items) on every rank, the per-item results gathered back into items' order."""
    rank, size = world()
    mine = fn(list(items[rank::size]))
    if len(mine) != len(items[rank::size]):
        raise ValueError(f"map_shared: {len(mine)} results for {len(items[rank::size])} items")
    if size == 1:
        return mine
    parts: list = [None] * size
    dist.all_gather_object(parts, mine)
    out: list = [None] * len(items)
    for r, part in enumerate(parts):
        out[r::size] = part
    return out
