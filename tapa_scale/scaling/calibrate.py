"""Measure the machine at hand and return a calibrated hardware profile (tapa_scale.scaling.hardware).

    python -m tapa_scale.scaling.calibrate --out FILE [--quick] [--threads N] [--processes N]
                                           [--device cpu|cuda] [--dtype fp32|bf16] [--name NAME]

Each figure is taken in the compute dtype with torch's thread count ``threads`` in every measuring
process; a timing is the median over a few repetitions after a warm-up, a repetition looping calls
for about a millisecond so that the clock resolves it (`timing.typical_seconds`).

- peak_flops: CPU `peaks.cpu_peak`, measured afresh with nothing else running (and cached: the figure
  the training loop's MFU divides by); CUDA the datasheet dense bf16
  peak (`peaks.gpu_peak`), or the best GEMM rate for a model the table does not know.
- gemm.table: [m, n, k, 2mnk / seconds] of ``a @ b``, a (m, k), b (k, n), over a log2 grid. A shape
  above the FLOP cap is not timed but given the rate of the largest timed shape with its n and k (the
  largest timed shape if none), as efficiency saturates with size: the table is the full grid.
  gemm.efficiency = best timed rate / peak_flops.
- memory_bandwidth = 3 x tensor bytes / seconds of ``torch.add(a, b, out=c)`` on float32 tensors;
  memory_table: the same for ``a + b``, which allocates its output as eager code does, at tensors of
  16 KiB .. 64 MiB; op_overhead_s: median seconds of ``torch.add`` on 1-element tensors (eager
  dispatch, or launch).
- attention.<impl>/<family>: forward + ``out.sum().backward()`` of causal `ops.attention.attention`
  under PositionalEncoding "tapa" (family tapa) or "rope" (family dot), at the batch B, heads H (query
  and key/value) and lengths N of `ATTENTION` (CPU: head dim 64, B x H = 4 and 32; CUDA: head dim 128,
  B x H = 4, 32 and 128); each gives [N, B H, seconds / (B H N (N + 1) / 2)], the cost of one
  (query, key) pair. On CUDA only the kernels a GPU run uses: the Triton TAPA kernel and SDPA.
- runtime_bytes: CPU: `trainer_runtime`, the real trainer on a negligible model (`PROBE_MODEL`) for
  two steps, its peak resident set less the tensors the cost model counts for it (quick mode: the
  import probe below); CUDA: a fresh interpreter imports torch, megatron.core and
  tapa_scale.train.loop, joins a one-process group and runs one NCCL all_reduce: device bytes in use
  (total - free) less those in use before it started.
- node_slowdown (CPU, not in quick mode): an operator mix timed in ``processes`` processes at once
  over alone (scaling/contention.py); 1 on CUDA.
- links.intra: all_reduce, all_gather, reduce_scatter and send_recv over ``processes`` ranks on
  messages of 2^12 .. 2^24 bytes, fitted to latency + bandwidth (scaling/links.py). links.inter copies
  links.intra: inter-node links are not measured.

Collectives need at least two processes: ``processes=1`` (a single GPU) is refused unless
``links_from`` names a profile whose links are copied unmeasured. Quick mode (small grids and
messages; on CPU the runtime probe runs alongside the rest) is a smoke test, not a calibration.
"""
from __future__ import annotations

import argparse
import datetime
import itertools
import os
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist

from . import peaks
from .hardware import Hardware, Link, load_hardware
from .contention import measure_node_slowdown
from .links import measure_links
from .timing import typical_seconds, per_call, sync_of

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
DEVICES = ("cpu", "cuda")
# (m values, n values, k values, cap on 2mnk per timed product)
GEMM_GRID = {"cpu": ((128, 512, 2048, 8192), (64, 256, 1024, 4096, 8192), (64, 256, 1024, 4096, 8192), 8e9),
             "cuda": ((128, 512, 2048, 8192), (64, 256, 1024, 4096), (64, 256, 1024, 4096), 1e13)}
QUICK_GEMM_GRID = ((128, 512), (64, 256), (64, 256), 2e7)
# attention: head dim, then (batch, heads, lengths) rows; long lengths at few rows only (time)
ATTENTION = {"cpu": (64, ((1, 4, (128, 256, 512, 1024, 2048)), (8, 4, (128, 256, 512)))),
             "cuda": (128, ((1, 4, (1024, 4096, 16384)), (1, 32, (1024, 2048, 4096, 8192, 16384)),
                            (4, 32, (1024, 4096, 8192))))}
QUICK_ATTENTION = (64, ((1, 4, (64, 128)), (4, 4, (64,))))
MEMORY_SIZES, QUICK_MEMORY_SIZES = tuple(4 ** i for i in range(6, 13)), (4 ** 6, 4 ** 8)  # elements
PROBE_MODEL = ["model.num_layers=1", "model.hidden_size=64", "model.num_heads=1", "model.num_kv_heads=1",
               "model.ffn_hidden_size=64", "data.seq_len=16", "train.micro_batch_size=1",
               "train.global_batch_size=1", "train.eval_batches=1", "train.warmup_steps=1", "data.num_workers=0"]
LINK_SIZES, QUICK_LINK_SIZES = tuple(2 ** i for i in range(12, 25)), tuple(2 ** i for i in range(12, 17))
REPO = Path(__file__).resolve().parents[2]


def measure_gemm(device: str, dtype: torch.dtype, grid, reps: int) -> tuple[list, float, int]:
    """(full-grid table [[m, n, k, flop_per_s], ...], best timed rate, shapes timed)."""
    ms, ns, ks, cap = grid
    sync, timed = sync_of(device), {}
    for m, n, k in itertools.product(ms, ns, ks):
        if 2 * m * n * k <= cap:
            a, b = torch.randn(m, k, device=device).to(dtype), torch.randn(k, n, device=device).to(dtype)
            timed[(m, n, k)] = 2 * m * n * k / typical_seconds(lambda: a @ b, sync, reps)
    if not timed:
        raise ValueError(f"no GEMM shape of the grid fits the cap of {cap:g} FLOPs")
    largest = max(timed, key=lambda s: s[0] * s[1] * s[2])
    stand_in = {(n, k): max([s for s in timed if s[1:] == (n, k)] or [largest]) for n in ns for k in ks}
    table = [[m, n, k, timed.get((m, n, k)) or timed[stand_in[n, k]]] for m, n, k in itertools.product(ms, ns, ks)]
    return table, max(timed.values()), len(timed)


def measure_memory(device: str, numel: int, reps: int, calls: int, sizes) -> tuple[float, float, list]:
    """(bytes/s of an elementwise add into a given output, median seconds of one tiny add, the table
    [[tensor bytes, bytes/s], ...] of ``a + b`` allocating its output at each of ``sizes`` elements)."""
    sync = sync_of(device)
    a, b, c = (torch.rand(numel, device=device) for _ in range(3))
    bandwidth = 3 * numel * a.element_size() / typical_seconds(lambda: torch.add(a, b, out=c), sync, reps)
    table = []
    for n in sizes:
        x, y = torch.rand(n, device=device), torch.rand(n, device=device)
        table.append([4 * n, 12 * n / typical_seconds(lambda: x + y, sync, reps)])
    x, y = torch.ones(1, device=device), torch.ones(1, device=device)
    block = 100 if device == "cuda" else 1  # on CUDA: launch cost, not a synchronisation per call
    per_call(lambda: torch.add(x, y), sync, block)
    overhead = statistics.median(per_call(lambda: torch.add(x, y), sync, block) for _ in range(calls // block))
    return bandwidth, overhead, table


def measure_attention(device: str, dtype: torch.dtype, shapes, reps: int, log) -> dict:
    """{"<impl>/<family>": {head_dim, points: [[N, B x H, seconds per pair], ...]}} over ``shapes``
    = (head dim, ((B, H, lengths), ...))."""
    from ..ops.attention import PositionalEncoding, attention, triton_unavailable_reason

    head_dim, rows = shapes
    entries, sync = {}, sync_of(device)
    # (entry impl, family, impl=); on CUDA the kernels a GPU run uses (the reference is not measured there)
    cases = [] if device == "cuda" else [("reference", "tapa", "reference"), ("reference", "dot", "reference")]
    if device == "cuda":
        reason = triton_unavailable_reason(torch.empty(1, 4, 64, head_dim, device=device, dtype=dtype))
        cases += [("triton", "tapa", "triton")] if reason is None else []
        cases.append(("sdpa", "dot", "auto"))  # "auto" is torch SDPA for plain dot-product attention on CUDA
        if reason:
            log(f"attention: triton/tapa not measured: {reason}")
    for impl, family, impl_arg in cases:
        encoding = PositionalEncoding(kind="tapa" if family == "tapa" else "rope")
        points = []
        for batch, heads, lengths in rows:
            for n in lengths:
                q, k, v = (torch.randn(batch, heads, n, head_dim, device=device, dtype=dtype, requires_grad=True)
                           for _ in range(3))

                def step():
                    q.grad = k.grad = v.grad = None
                    attention(q, k, v, encoding, impl=impl_arg).sum().backward()

                points.append([n, batch * heads, typical_seconds(step, sync, reps) / (batch * heads * n * (n + 1) / 2)])
        entries[f"{impl}/{family}"] = {"head_dim": head_dim, "points": points}
        log(f"attention {impl}/{family}: " + ", ".join(f"N={n} BH={bh} {s:.3g} s/pair" for n, bh, s in points))
    return entries


def trainer_runtime(threads: int) -> float:
    """Bytes a CPU training process holds beyond the tensors the cost model counts: the peak resident
    set of the real trainer (sweep.measure, live-bytes heap) on a model of negligible size, less the
    model's prediction for that run."""
    from ..config import load_config
    from .layout import layout_of, shape_of
    from .memory import memory
    from .sweep import LIVE_BYTES_ENV, RunSpec, measure

    spec = RunSpec(name="runtime_probe", config=str(REPO / "configs" / "tiny.yaml"),
                   overrides=[*PROBE_MODEL, f"train.threads={threads}", f"data.cache_dir={REPO / '.cache' / 'data'}"])
    with tempfile.TemporaryDirectory() as tmp:
        m = measure(spec, Path(tmp), steps=2, log_every=1, timeout_s=600, common=[], env=LIVE_BYTES_ENV,
                    log=lambda *_: None)
    if "error" in m:
        raise RuntimeError(f"runtime probe (a training run of {' '.join(PROBE_MODEL)}) failed: {m['error']}")
    cfg = load_config(spec.config, spec.overrides)
    counted = Hardware(name="probe", peak_flops=1.0, memory_bytes=1.0, memory_bandwidth=1.0, device="cpu",
                       compute_dtype="fp32")
    tensors = memory(shape_of(cfg.model, cfg.data.seq_len, m["vocab_size"]), layout_of(cfg, 1), counted).total
    return m["peak_memory_gb"] * 1e9 - tensors


def _runtime_probe(device: str, threads: int) -> None:
    """Run in a fresh interpreter: print the bytes the imported runtime holds (see the module doc)."""
    torch.set_num_threads(threads)
    import megatron.core  # noqa: F401
    import tapa_scale.train.loop  # noqa: F401

    cuda = device == "cuda"
    if cuda:
        torch.cuda.set_device(0)
    dist.init_process_group("nccl" if cuda else "gloo", store=dist.HashStore(), rank=0, world_size=1)
    if cuda:
        dist.all_reduce(torch.ones(1, device="cuda"))
        torch.cuda.synchronize()
    used = _device_bytes_used() if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    dist.destroy_process_group()
    print(used)


def _start_runtime_probe(device: str, threads: int) -> subprocess.Popen:
    code = f"from tapa_scale.scaling.calibrate import _runtime_probe; _runtime_probe({device!r}, {threads})"
    env = dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", PYTHONWARNINGS="ignore")
    return subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def _finish_runtime_probe(probe: subprocess.Popen) -> float:
    out, err = probe.communicate(timeout=600)
    if probe.returncode != 0:
        tail = (err.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"runtime memory probe exited with {probe.returncode}: {tail}")
    return float(out.split()[-1])


def _device_bytes_used() -> float:
    free, total = torch.cuda.mem_get_info()
    return float(total - free)


def _check(device: str, dtype: str, threads: int, processes: int, links_from: str) -> None:
    if device not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {tuple(DTYPES)}, got {dtype!r}")
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    if processes < 1 or (processes == 1 and not links_from):
        raise ValueError(f"processes={processes}: measuring collectives needs at least 2 processes "
                         f"(or 1 with links_from, a profile whose links are copied)")
    if device == "cuda" and processes > torch.cuda.device_count():  # 0 without CUDA
        raise ValueError(f"processes={processes} exceeds the {torch.cuda.device_count()} visible CUDA devices")


def _machine(device: str, threads: int) -> tuple[str, float, int]:
    """(CPU or GPU model, memory bytes, processes per node)."""
    if device == "cuda":
        return torch.cuda.get_device_name(), float(torch.cuda.get_device_properties(0).total_memory), \
            torch.cuda.device_count()
    ram = float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    return peaks._cpu_name(), ram, max(1, os.cpu_count() // threads)


def calibrate(*, device: str = "cpu", dtype: str = "fp32", threads: int = 1, processes: int = 2,
              quick: bool = False, name: str = "", links_from: str = "", log=print) -> Hardware:
    """Measure this machine (see the module docstring) and return its calibrated profile."""
    _check(device, dtype, threads, processes, links_from)
    copied = load_hardware(links_from).links if processes == 1 else None  # a bad name fails before measuring
    compute, cuda, reps = DTYPES[dtype], device == "cuda", 3 if quick else 5
    model, memory, per_node = _machine(device, threads)
    before, threads_before = _device_bytes_used() if cuda else 0.0, torch.get_num_threads()
    # the import probe is the runtime on CUDA and in quick mode; a full CPU calibration runs the trainer
    probe = _start_runtime_probe(device, threads) if cuda or quick else None
    try:
        torch.set_num_threads(threads)
        if cuda:  # alone: CUDA counts the device bytes in use
            probe.wait()
        peak = peaks.gpu_peak(model) if cuda else peaks.cpu_peak(compute, refresh=not quick)
        how = "datasheet dense bf16" if cuda else f"measured {dtype} matmul"
        table, best, timed = measure_gemm(device, compute, QUICK_GEMM_GRID if quick else GEMM_GRID[device], reps)
        if peak is None:
            peak, how = best, "best measured GEMM, the model is not in the datasheet table"
        log(f"calibrate: peak {peak:.4g} FLOP/s ({how}); GEMM {timed} of {len(table)} shapes timed, "
            f"best {best:.4g} FLOP/s = {best / peak:.3f} of peak")
        bandwidth, overhead, memory_table = measure_memory(device, 2 ** 20 if quick else 2 ** 24, reps,
                                                           200 if quick else 2000,
                                                           QUICK_MEMORY_SIZES if quick else MEMORY_SIZES)
        log(f"calibrate: memory bandwidth {bandwidth:.4g} B/s, op overhead {overhead:.3g} s")
        attention = measure_attention(device, compute if cuda else torch.float32,
                                      QUICK_ATTENTION if quick else ATTENTION[device], reps,
                                      lambda line: log(f"calibrate: {line}"))
        links = copied["intra"] if copied else measure_links(device, processes,
                                                             QUICK_LINK_SIZES if quick else LINK_SIZES, 3 if quick else 20)
        log("calibrate: links " + ", ".join(f"{k} {v.latency_s:.3g} s + {v.bandwidth:.4g} B/s"
                                            for k, v in links.items()))
        slowdown, mix = (1.0, 0.0) if cuda or quick else measure_node_slowdown(min(processes, per_node))
        log(f"calibrate: node slowdown {slowdown:.3f} with {min(processes, per_node)} processes computing at once, "
            f"operator mix {mix:.3f} s alone")
        runtime = trainer_runtime(threads) if probe is None else _finish_runtime_probe(probe) - before
        log(f"calibrate: runtime {runtime / 2 ** 20:.0f} MiB")
    finally:
        torch.set_num_threads(threads_before)
        if probe is not None and probe.poll() is None:
            probe.kill()
            probe.wait()
    source = (f"calibrated{' (quick mode)' if quick else ''} on {datetime.date.today().isoformat()} on {model} "
              f"with torch {torch.__version__}, {dtype}, {threads} thread(s) per process and {processes} processes "
              f"({'nccl' if cuda else 'gloo'}): peak ({how}), GEMM grid, elementwise bandwidth, op overhead, "
              f"attention forward+backward, runtime memory" + (f" were measured; links were not measured and copy "
                                                                  f"{links_from}'s" if copied else
                                                                  " and intra-node collectives were measured; "
                                                                  "inter-node links were not measured and copy the "
                                                                  "intra-node ones"))
    return Hardware(name=name or (model.lower().replace(" ", "_") if cuda else f"cpu_t{threads}"),
                    peak_flops=float(peak), memory_bytes=memory, memory_bandwidth=bandwidth, calibrated=True,
                    source=source, device=device, compute_dtype=dtype, runtime_bytes=float(runtime),
                    op_overhead_s=overhead, processes_per_node=per_node, gemm_efficiency=best / peak,
                    gemm_table=table, attention=attention, memory_table=memory_table, node_slowdown=slowdown,
                    host_mix_s=mix,
                    links=copied or {"intra": links, "inter": {k: Link(v.latency_s, v.bandwidth)
                                                               for k, v in links.items()}})


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tapa_scale.scaling.calibrate", description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="profile JSON to write")
    parser.add_argument("--quick", action="store_true", help="small grids: a smoke test, not a calibration")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--processes", type=int, default=2, help="ranks that time the collectives (>= 2)")
    parser.add_argument("--device", choices=DEVICES, default="cpu")
    parser.add_argument("--dtype", choices=tuple(DTYPES), default="fp32")
    parser.add_argument("--name", default="", help="profile name (default cpu_t<threads> or the GPU model)")
    parser.add_argument("--links-from", default="", help="with --processes 1: copy the links of this profile")
    args = parser.parse_args(argv)
    try:
        profile = calibrate(device=args.device, dtype=args.dtype, threads=args.threads, processes=args.processes,
                            quick=args.quick, name=args.name, links_from=args.links_from)
    except ValueError as e:
        print(f"calibrate: error: {e}", file=sys.stderr)
        return 2
    profile.save(args.out)
    print(f"calibrate: wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
