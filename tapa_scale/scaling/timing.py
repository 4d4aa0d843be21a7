"""Wall-clock timing of one operator, finished on its device (the calibration's clock)."""
from __future__ import annotations

import statistics
import time

import torch


def sync_of(device: str):
    return torch.cuda.synchronize if device == "cuda" else (lambda: None)


def per_call(fn, sync, calls: int = 1) -> float:
    """Seconds per call of ``calls`` back-to-back calls of fn (finished on the device)."""
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    sync()
    return (time.perf_counter() - start) / calls


def typical_seconds(fn, sync, reps: int, target_s: float = 1e-3) -> float:
    """Median over ``reps`` of the seconds per call of fn, after two warm-up calls; each repetition
    loops enough calls to last about ``target_s``. The median, not the minimum: the cost model
    predicts a run's median step, and on a shared host the best repetition is rarely what a step
    gets (the minimum underpredicted this machine's steps by a median 32 %, docs/scaling.md)."""
    per_call(fn, sync)
    inner = min(1000, max(1, int(target_s / max(per_call(fn, sync), 1e-9))))
    return statistics.median(per_call(fn, sync, inner) for _ in range(reps))
