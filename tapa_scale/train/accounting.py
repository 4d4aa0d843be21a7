"""Throughput accounting for every run: where each step's time goes, model FLOPs, MFU and memory.

`StepClock` splits the wall-clock time of the steps between two log records into parts that add up
to it: ``data`` (drawing and preparing micro-batches), ``forward_backward`` (the pipeline schedule
less the parts below), ``grad_sync`` (the exposed gradient reduction over data x context parallel
ranks and the loss reduction; tensor, context and pipeline parallel traffic inside forward and
backward stays in ``forward_backward``), ``optimizer`` (norm, clipping, the update), ``checkpoint``
(the part of a save that blocks training, reported with the record after it) and ``other`` (the
rest: learning rate, fault handling). Validation and logging, which follow the reading of the
clock and precede its reset, are not step time. A phase nested in
another counts only in itself, so no time is counted twice.

`Accounting` turns an interval into the metrics keys (docs/operations.md): tokens/s per device,
model TFLOP/s and MFU by the formula in scaling/flops.py against the device's peak, and the peak
memory. `ManualGC` runs Python's garbage collector at the same steps on every rank, so that no rank
pauses for a collection while the others wait for it in a collective.
"""
from __future__ import annotations

import gc
import resource
import time
from contextlib import contextmanager

import torch

from ..scaling import device_peak, model_flops

PARTS = ("data", "forward_backward", "grad_sync", "optimizer", "checkpoint", "other")


class StepClock:
    def __init__(self):
        self._stack: list[list] = []  # [part, time spent in nested phases]
        self.reset()

    def reset(self) -> None:
        self.totals = dict.fromkeys(PARTS, 0.0)
        self.mark = time.perf_counter()

    @contextmanager
    def phase(self, part: str):
        start = time.perf_counter()
        self._stack.append([part, 0.0])
        try:
            yield
        finally:
            elapsed = time.perf_counter() - start
            _, nested = self._stack.pop()
            self.totals[part] += elapsed - nested
            if self._stack:
                self._stack[-1][1] += elapsed

    def time_calls(self, owner, name: str, part: str) -> None:
        """Count every call of ``owner.<name>`` (a hook another library calls) as ``part``."""
        inner = getattr(owner, name)

        def timed(*args, **kwargs):
            with self.phase(part):
                return inner(*args, **kwargs)
        setattr(owner, name, timed)

    def read(self, steps: int) -> dict:
        """Seconds per step of each part since the last reset, and the step time they add up to."""
        total = time.perf_counter() - self.mark
        parts = dict(self.totals)
        parts["other"] = total - sum(v for k, v in parts.items() if k != "other")
        out = {f"time_{k}_s": v / steps for k, v in parts.items()}
        out["step_time_s"] = total / steps
        return out


class Accounting:
    def __init__(self, run):
        cfg = run.cfg
        self.world = run.groups.world_size
        self.vocab_size = run.vocab_size
        self.tokens_per_step = run.global_batch * cfg.data.seq_len
        self.flops = model_flops(cfg.model, cfg.data.seq_len, run.vocab_size, causal=True)
        self.noncausal = model_flops(cfg.model, cfg.data.seq_len, run.vocab_size, causal=False)
        self.device = run.device
        self.peak, self.peak_source = device_peak(run.device, run.dtype, cfg.train.peak_tflops)

    def record(self, clock: StepClock, steps: int) -> dict:
        times = clock.read(steps)
        per_device = self.tokens_per_step / times["step_time_s"] / self.world
        achieved = self.flops.train * per_device
        out = {"tokens_per_s": per_device * self.world, "tokens_per_s_per_device": per_device,
               "model_tflops_per_s": achieved / 1e12,
               "tapa_elementwise_tflops_per_s": 3 * self.flops.tapa_elementwise * per_device / 1e12,
               "peak_memory_gb": peak_memory_gb(self.device), **times}
        if self.peak:
            out["mfu"] = achieved / self.peak
            out["mfu_noncausal"] = self.noncausal.train * per_device / self.peak
        return out

    def describe(self) -> dict:
        """The constants behind the record, written once to the run directory."""
        return {"model_flops_per_token": self.flops.train, "model_flops_per_token_noncausal": self.noncausal.train,
                "forward_flops_per_token": {"dense": self.flops.dense, "attention": self.flops.attention,
                                            "output": self.flops.output,
                                            "tapa_elementwise": self.flops.tapa_elementwise},
                "peak_flops_per_s": self.peak, "peak_source": self.peak_source, "devices": self.world,
                "vocab_size": self.vocab_size}


def peak_memory_gb(device: torch.device) -> float:
    """CUDA: the most memory torch's allocator held for tensors; CPU: the process's peak resident set."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1e9
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9  # Linux reports KiB


class ManualGC:
    """Automatic collection off for the loop; a full collection every ``every`` steps (0 = leave
    Python's automatic collector on)."""

    def __init__(self, every: int):
        self.every = every
        self.was_enabled = gc.isenabled()
        if every:
            gc.disable()

    def step(self, step: int) -> None:
        if self.every and step % self.every == 0:
            gc.collect()

    def close(self) -> None:
        if self.every and self.was_enabled:
            gc.enable()
