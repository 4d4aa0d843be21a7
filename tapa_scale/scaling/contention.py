"""How much slower one CPU process computes while the node's other processes compute too.

On a GPU node every device has its own compute and memory; on a CPU node the processes of a run share
the caches and the memory bus, so an operator timed alone is faster than the same operator in a
training step of several processes. `measure_node_slowdown` times a mix of a training step's
operators (the projections and loss GEMMs of a small model, forward + backward attention, allocating
elementwise operators) in one process alone, then in ``processes`` processes started together (the
slowest of them counts), and returns the ratio: the cost model multiplies its compute parts by it
when a layout runs more than one process per node (`Hardware.node_slowdown`; 1 on GPUs).

A shared host's speed drifts (this 2-core machine's steps varied by 40 % within half an hour): the
mix's seconds alone are the profile's `host_mix_s`, and the sweep times the mix again beside every
run, so that an error can be read with the host's drift taken out (sweep.compare).
"""
from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from .timing import typical_seconds


def mix_seconds(reps: int = 5) -> float:
    """Median seconds over ``reps`` of one pass of the operator mix, on one thread."""
    from ..ops.attention import PositionalEncoding, attention

    x, w, out = torch.randn(2048, 128), torch.randn(128, 768), torch.randn(768, 128)
    logits_w = torch.randn(128, 8192)
    q, k, v = (torch.randn(8, 4, 256, 32, requires_grad=True) for _ in range(3))
    a, b = torch.randn(1 << 20), torch.randn(1 << 20)
    encoding = PositionalEncoding(kind="tapa")

    def once():
        (x @ w) @ out
        x @ logits_w
        attention(q, k, v, encoding, impl="reference").sum().backward()
        for _ in range(8):
            a * b + a

    return typical_seconds(once, lambda: None, reps)


def _worker(rank: int, start_at: float, reps: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    while time.time() < start_at:  # every process begins together
        time.sleep(0.001)
    (Path(out_dir) / f"{rank}.json").write_text(json.dumps(mix_seconds(reps)))


def _run(processes: int, reps: int) -> list[float]:
    with tempfile.TemporaryDirectory() as tmp:
        torch.multiprocessing.spawn(_worker, args=(time.time() + 3.0, reps, tmp), nprocs=processes, join=True)
        return [json.loads((Path(tmp) / f"{r}.json").read_text()) for r in range(processes)]


def measure_node_slowdown(processes: int, reps: int = 7, rounds: int = 3) -> tuple[float, float]:
    """(seconds of the mix in the slowest of ``processes`` processes at once (a step waits for its
    slowest rank) over its seconds alone (>= 1), the seconds alone), each the median of ``rounds``
    alternating rounds. The seconds alone are the profile's host speed (`Hardware.host_mix_s`)."""
    alone, together = [], []
    for _ in range(rounds):  # alternated, so that a slow spell of the host weighs on both
        alone.append(_run(1, reps)[0])
        if processes > 1:
            together.append(max(_run(processes, reps)))
    if processes < 2:
        return 1.0, statistics.median(alone)
    return max(1.0, statistics.median(together) / statistics.median(alone)), statistics.median(alone)
