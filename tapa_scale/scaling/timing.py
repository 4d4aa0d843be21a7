"""Wall-clock timing of one operator, finished on its device (the calibration's clock)."""
from __future__ import annotations

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


def best_seconds(fn, sync, reps: int, target_s: float = 1e-3) -> float:
    """Minimum over ``reps`` of the seconds per call of fn, after two warm-up calls; each repetition
    loops enough calls to last about ``target_s``."""
    per_call(fn, sync)
    inner = min(1000, max(1, int(target_s / max(per_call(fn, sync), 1e-9))))
    return min(per_call(fn, sync, inner) for _ in range(reps))
