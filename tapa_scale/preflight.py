"""Preflight: check every rank of a job before training starts, and measure its collectives.

    torchrun --nproc-per-node 8 -m tapa_scale.preflight --config configs/125m.yaml [key=value ...]
    python tools/preflight.py --config ... [--json OUT] [--size-mb N] [--expect-busbw GBPS]

Run by `launch/torchrun.sh` and `launch/deepspeed.sh` before training with the same arguments
(`PREFLIGHT=0` turns it off). Every rank gathers its facts — package versions, devices, free disk
where the run writes checkpoints, whether the run's data can be opened — and rank 0 compares them:
a rank whose versions differ from rank 0's, a node with fewer GPUs than ranks, too little disk for
one checkpoint, or data a rank cannot open stop the job with one line naming the rank (exit 2).
Then all-reduce, all-gather and point-to-point bandwidth are measured across the whole job (gloo on
CPU, NCCL on GPUs) in nccl-tests' bus-bandwidth convention, with a warning when all-reduce falls
below the expected figure. docs/operations.md, "Preflight".
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import sys
import time
from datetime import timedelta
from importlib import metadata
from pathlib import Path

import torch
import torch.distributed as dist

from .parallel.groups import wants_cuda

PACKAGES = ("torch", "megatron-core", "mosaicml-streaming", "triton", "transformers", "tapa-scale")
BYTES_PER_PARAM_IN_CHECKPOINT = 12  # fp32 weights and two fp32 AdamW moments
# Expected all-reduce bus bandwidth (GB/s) when none is given: deliberately low bars that a healthy
# H100/H200 node (NVLink: ~350-480 in nccl-tests) or InfiniBand fabric (~40-50 per 400 Gb/s NIC)
# clears; CPU (gloo) has none.
EXPECTED_BUSBW = {"cuda-one-node": 100.0, "cuda-multi-node": 10.0}


class PreflightError(RuntimeError):
    """A check failed; the message is one line naming the rank."""


def versions() -> dict:
    out = {"python": sys.version.split()[0]}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    out["cuda"] = torch.version.cuda
    return out


def _existing(path: Path) -> Path:
    path = path.resolve()
    while not path.exists():
        path = path.parent
    return path


def checkpoint_bytes(cfg) -> int:
    """Bytes of one checkpoint of cfg's model: its parameters (from the FLOP count's matrix shapes)
    at BYTES_PER_PARAM_IN_CHECKPOINT."""
    from .data import load_tokenizer
    from .scaling import model_flops

    vocab = cfg.model.vocab_size or len(load_tokenizer(cfg.data.tokenizer))
    f = model_flops(cfg.model, cfg.data.seq_len, vocab)
    params = (f.dense + f.output) / 2 + (0 if cfg.model.tie_embeddings else vocab * cfg.model.hidden_size)
    return int(params * BYTES_PER_PARAM_IN_CHECKPOINT)


def local_facts(cfg, device: torch.device, fault_version: str = "") -> dict:
    """What this rank knows about itself; problems are strings, never raised here."""
    from .data import DataError, ensure_sources

    facts = {"rank": dist.get_rank(), "host": socket.gethostname(), "versions": versions(),
             "gpus": torch.cuda.device_count() if device.type == "cuda" else 0,
             "local_world_size": int(os.environ.get("LOCAL_WORLD_SIZE", "1")), "problems": []}
    if fault_version:  # tests: this rank pretends to have another version of a package
        rank, _, pin = fault_version.partition(":")
        if int(rank) == facts["rank"]:
            name, _, value = pin.partition("=")
            facts["versions"][name] = value
    where = _existing(Path(cfg.run.dir))
    facts["disk"] = {"path": str(where), "free_bytes": shutil.disk_usage(where).free}
    try:
        sources = ensure_sources(cfg.data)
        facts["data"] = [s.name for s in sources]
    except (DataError, OSError) as exc:
        facts["problems"].append(f"cannot open the data ({exc})")
    return facts


def compare(all_facts: list[dict], cfg, device: torch.device) -> tuple[list[str], list[str]]:
    """(refusals, warnings) over every rank's facts, each one line naming the rank."""
    refusals, warnings = [], []
    first = all_facts[0]
    for f in all_facts:
        who = f"rank {f['rank']} ({f['host']})"
        refusals += [f"{who}: {p}" for p in f["problems"]]
        for name, value in f["versions"].items():
            if value != first["versions"][name]:
                refusals.append(f"{who} has {name} {value} where rank 0 ({first['host']}) has "
                                f"{first['versions'][name]}; expected the same versions on every rank")
        if device.type == "cuda" and f["gpus"] < f["local_world_size"]:
            refusals.append(f"{who} sees {f['gpus']} GPUs for {f['local_world_size']} ranks on its node; "
                            "expected one GPU per rank")
    need = checkpoint_bytes(cfg)
    t = cfg.train
    kept = t.keep_checkpoints or max(1, t.steps // t.checkpoint_every if t.checkpoint_every else 1)
    first_on_disk: dict = {}  # ranks sharing a filesystem path are reported once, by the first
    for f in all_facts:
        first_on_disk.setdefault(f["disk"]["path"], f)
    for path, f in first_on_disk.items():
        free = f["disk"]["free_bytes"]
        who = f"rank {f['rank']} ({f['host']})"
        if free < 1.1 * need:
            refusals.append(f"{who}: {free / 1e9:.1f} GB free at {path}, one checkpoint of run.dir needs "
                            f"about {need / 1e9:.1f} GB; expected more free disk")
        elif free < (kept + 1) * need:
            warnings.append(f"{who}: {free / 1e9:.1f} GB free at {path} holds fewer than the {kept + 1} "
                            f"checkpoints of {need / 1e9:.1f} GB this run may keep at once")
    return refusals, warnings


def _timed(fn, device: torch.device, iters: int) -> float:
    """Seconds per call of fn, the slowest rank's."""
    for _ in range(2):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    dist.barrier()
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    took = torch.tensor([(time.perf_counter() - start) / iters], dtype=torch.float64, device=device)
    dist.all_reduce(took, op=dist.ReduceOp.MAX)
    return took.item()


def bandwidth(device: torch.device, size_bytes: int, iters: int) -> dict:
    """All-reduce, all-gather and point-to-point bandwidth over the whole job, GB/s. busbw follows
    nccl-tests: all-reduce algbw x 2(n-1)/n, all-gather algbw x (n-1)/n (algbw = bytes / time,
    all-gather's bytes being the gathered output)."""
    n, rank = dist.get_world_size(), dist.get_rank()
    if n == 1:
        return {}
    x = torch.ones(size_bytes // 4, dtype=torch.float32, device=device)
    t = _timed(lambda: dist.all_reduce(x), device, iters)
    out = {"size_bytes": x.numel() * 4,
           "all_reduce": {"seconds": t, "algbw_gbps": x.numel() * 4 / t / 1e9,
                          "busbw_gbps": x.numel() * 4 / t / 1e9 * 2 * (n - 1) / n}}
    part = x[: x.numel() // n]
    parts = [torch.empty_like(part) for _ in range(n)]
    t = _timed(lambda: dist.all_gather(parts, part), device, iters)
    total = part.numel() * 4 * n
    out["all_gather"] = {"seconds": t, "algbw_gbps": total / t / 1e9, "busbw_gbps": total / t / 1e9 * (n - 1) / n}
    peer = rank ^ 1  # pairs (0, 1), (2, 3), ...; with an odd world the last rank sits out

    def exchange():
        if peer >= n:
            return
        if rank % 2 == 0:
            dist.send(x, peer)
            dist.recv(x, peer)
        else:
            dist.recv(x, peer)
            dist.send(x, peer)
    t = _timed(exchange, device, iters)
    out["p2p"] = {"seconds": t, "gbps": 2 * x.numel() * 4 / t / 1e9}  # one message each way per call
    return out


def expected_busbw(device: torch.device, given: float) -> float:
    if given:
        return given
    if device.type != "cuda":
        return 0.0
    nodes = dist.get_world_size() // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return EXPECTED_BUSBW["cuda-multi-node" if nodes > 1 else "cuda-one-node"]


def run_preflight(cfg, *, size_mb: float = 0.0, iters: int = 5, expect_busbw: float = 0.0,
                  fault_version: str = "") -> dict:
    """All checks on this rank; returns the report on every rank, raises PreflightError on refusal."""
    use_cuda = wants_cuda(cfg.train.device)
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0"))) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    facts = local_facts(cfg, device, fault_version)
    gathered: list = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, facts)
    refusals, warnings = compare(gathered, cfg, device)
    if refusals:
        raise PreflightError("; ".join(refusals))
    size = int((size_mb or (256 if use_cuda else 8)) * 2 ** 20)
    bw = bandwidth(device, size, iters)
    want = expected_busbw(device, expect_busbw)
    if bw and want and bw["all_reduce"]["busbw_gbps"] < want:
        warnings.append(f"all-reduce bus bandwidth {bw['all_reduce']['busbw_gbps']:.1f} GB/s over "
                        f"{dist.get_world_size()} ranks is below the expected {want:g} GB/s "
                        "(--expect-busbw); check the interconnect (NCCL_DEBUG=INFO)")
    return {"world_size": dist.get_world_size(), "device": str(device), "backend": dist.get_backend(),
            "ranks": gathered, "bandwidth": bw, "expected_busbw_gbps": want, "warnings": warnings}


def main(argv=None) -> int:
    from .config import ConfigError, load_config

    parser = argparse.ArgumentParser(prog="preflight", description="Check every rank before training.")
    parser.add_argument("--config", help="the training config (YAML)")
    parser.add_argument("--json", type=Path, help="rank 0 writes the report here")
    parser.add_argument("--size-mb", type=float, default=0.0, help="message size (default 256 GPU, 8 CPU)")
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--expect-busbw", type=float, default=0.0, help="GB/s all-reduce should reach")
    parser.add_argument("--fault-version", default="", help=argparse.SUPPRESS)  # tests: RANK:PACKAGE=VERSION
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_intermixed_args(argv)  # overrides may come before or after the flags
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as e:
        sys.stderr.write(f"preflight: {e}\n")
        return 2
    if "WORLD_SIZE" in os.environ:
        dist.init_process_group("nccl" if wants_cuda(cfg.train.device) else "gloo", timeout=timedelta(seconds=300))
    else:
        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    rank = dist.get_rank()
    try:
        report = run_preflight(cfg, size_mb=args.size_mb, iters=args.iters, expect_busbw=args.expect_busbw,
                               fault_version=args.fault_version)
    except PreflightError as e:
        if rank == 0:
            sys.stderr.write(f"preflight: {e}\n")
        return 2
    finally:
        dist.destroy_process_group()
    if rank == 0:
        _print(report)
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(report, indent=1) + "\n")
    return 0


def _print(report: dict) -> None:
    first = report["ranks"][0]
    hosts = sorted({f["host"] for f in report["ranks"]})
    print(f"preflight: {report['world_size']} ranks on {len(hosts)} node(s), {report['device']} "
          f"({report['backend']}); versions equal: " +
          ", ".join(f"{k} {v}" for k, v in first["versions"].items() if v), flush=True)
    bw = report["bandwidth"]
    if bw:
        print(f"preflight: {bw['size_bytes'] / 2 ** 20:.0f} MiB messages: all-reduce "
              f"{bw['all_reduce']['busbw_gbps']:.2f} GB/s bus, all-gather {bw['all_gather']['busbw_gbps']:.2f} "
              f"GB/s bus, point-to-point {bw['p2p']['gbps']:.2f} GB/s", flush=True)
    for w in report["warnings"]:
        print(f"preflight warning: {w}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
