"""Collectives timed on the machine at hand and fitted to the cost model's ring formula.

`measure_links` spawns ``processes`` ranks (one thread each; gloo on CPU, nccl on CUDA) that time
each collective on float32 messages as parallel/context_parallel.py issues them (gloo: all_gather
into a list of views, reduce_scatter as an all_reduce of a copy of the input); a barrier precedes
each timed call, the slowest rank's time counts (the median over repetitions), send_recv is half a round trip between ranks 0 and
1. `fit_latency_bandwidth` fits the ring model of `Hardware.collective_time`,
    send_recv t = lat + bytes / bw,  all_reduce t = 2(r-1) lat + 2(r-1)/r bytes / bw,
    all_gather, reduce_scatter t = (r-1) lat + (r-1)/r bytes / bw,
by least squares weighted by 1 / t.
"""
from __future__ import annotations

import datetime
import itertools
import json
import socket
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from .hardware import COLLECTIVES, Link
from .timing import per_call, sync_of


def _coefficients(kind: str, ranks: int) -> tuple[float, float]:
    """(a, c) of the ring model t = a * latency + c * bytes / bandwidth (Hardware.collective_time)."""
    if kind == "send_recv":
        return 1.0, 1.0
    steps = 2 * (ranks - 1) if kind == "all_reduce" else ranks - 1
    return float(steps), steps / ranks


def fit_latency_bandwidth(kind: str, ranks: int, points: list[tuple[float, float]]) -> Link:
    """Latency (>= 0) and bus bandwidth of ``kind`` over ``ranks`` from (nbytes, seconds) points.

    Least squares of (model - seconds)^2 / seconds: between absolute errors (the large messages alone
    set both terms) and relative ones (the many latency-bound small messages pull the bandwidth off
    the large ones). A negative latency is refitted at 0; where time does not grow with size the
    bandwidth is the bound that the largest message gives."""
    if kind not in COLLECTIVES:
        raise ValueError(f"collective must be one of {COLLECTIVES}, got {kind!r}")
    if ranks < 2:
        raise ValueError(f"a collective needs ranks >= 2, got {ranks}")
    pts = [(float(b), float(t)) for b, t in points if b > 0 and t > 0]
    if len({b for b, _ in pts}) < 2:
        raise ValueError(f"{kind}: fitting latency and bandwidth needs positive times at >= 2 distinct sizes, "
                         f"got {points!r}")
    a, c = _coefficients(kind, ranks)
    nbytes, seconds = np.array([p[0] for p in pts]), np.array([p[1] for p in pts])
    weight = seconds ** -0.5
    design, target = np.stack([np.full_like(nbytes, a), c * nbytes], axis=1) * weight[:, None], seconds * weight
    scale = np.linalg.norm(design, axis=0)  # columns of one size: the solve is well conditioned
    latency, inverse_bw = (float(x) for x in np.linalg.lstsq(design / scale, target, rcond=None)[0] / scale)
    if latency < 0:
        column = design[:, 1]
        latency, inverse_bw = 0.0, float(column @ target / (column @ column))
    if inverse_bw <= 0:
        largest = int(np.argmax(nbytes))
        inverse_bw = seconds[largest] / (c * nbytes[largest])
        latency = max(0.0, float(np.mean((seconds - c * nbytes * inverse_bw) / a)))
    return Link(latency_s=latency, bandwidth=1.0 / inverse_bw)


def _collective(kind: str, nbytes: int, rank: int, world: int, device: torch.device, nccl: bool):
    """(a call issuing the collective on about ``nbytes``, the bytes it moves per rank)."""
    per = max(1, nbytes // 4 // world)
    if kind == "all_reduce":
        x = torch.ones(per * world, device=device)
        return (lambda: dist.all_reduce(x)), x.numel() * 4
    if kind == "all_gather":
        x, out = torch.ones(per, device=device), torch.empty(world, per, device=device)
        if nccl:
            return (lambda: dist.all_gather_into_tensor(out, x)), out.numel() * 4
        return (lambda: dist.all_gather(list(out.unbind(0)), x)), out.numel() * 4
    if kind == "reduce_scatter":
        x = torch.ones(world, per, device=device)
        if nccl:
            out = torch.empty(per, device=device)
            return (lambda: dist.reduce_scatter_tensor(out, x)), x.numel() * 4
        return (lambda: dist.all_reduce(x.clone())), x.numel() * 4  # gloo has no reduce-scatter
    x = torch.ones(max(1, nbytes // 4), device=device)

    def round_trip():
        if rank == 0:
            dist.send(x, 1)
            dist.recv(x, 1)
        elif rank == 1:
            dist.recv(x, 0)
            dist.send(x, 0)
    return round_trip, x.numel() * 4


def _link_worker(rank: int, world: int, port: int, device: str, sizes, reps: int, out_path: str) -> None:
    torch.set_num_threads(1)
    nccl = device == "cuda"
    if nccl:
        torch.cuda.set_device(rank)
    where = torch.device("cuda", rank) if nccl else torch.device("cpu")
    dist.init_process_group("nccl" if nccl else "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world, timeout=datetime.timedelta(minutes=5), device_id=where if nccl else None)
    sync = sync_of(device)
    seconds = torch.zeros(len(COLLECTIVES), len(sizes), reps, dtype=torch.float64)
    moved = {}
    for (i, kind), (j, nbytes) in itertools.product(enumerate(COLLECTIVES), enumerate(sizes)):
        call, moved[kind, j] = _collective(kind, nbytes, rank, world, where, nccl)
        per_call(call, sync)  # warm-up
        for r in range(reps):
            dist.barrier()
            sync()
            seconds[i, j, r] = per_call(call, sync) / (2 if kind == "send_recv" else 1)
    slowest = seconds.to(where)
    dist.all_reduce(slowest, op=dist.ReduceOp.MAX)
    if rank == 0:
        best = slowest.cpu().median(dim=2).values
        Path(out_path).write_text(json.dumps({kind: [[moved[kind, j], float(best[i, j])] for j in range(len(sizes))]
                                              for i, kind in enumerate(COLLECTIVES)}))
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def measure_links(device: str, processes: int, sizes, reps: int) -> dict:
    """{collective: Link} fitted from the timings of ``processes`` spawned ranks."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "links.json"
        torch.multiprocessing.spawn(_link_worker, args=(processes, _free_port(), device, tuple(sizes), reps, str(out)),
                                    nprocs=processes, join=True)
        points = json.loads(out.read_text())
    return {kind: fit_latency_bandwidth(kind, processes, points[kind]) for kind in COLLECTIVES}
