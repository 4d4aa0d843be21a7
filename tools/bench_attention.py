"""Attention throughput on one GPU: fused TAPA (Triton) against the TAPA reference and RoPE + torch SDPA.

    python tools/bench_attention.py --json bench.json                  # the default grid below
    python tools/bench_attention.py --lengths 16384 --sweep --json sweep.json   # tile configurations
    python tools/bench_attention.py --ptxas [--sweep] --json ptxas.json   # no GPU: compile, count registers

Cells: N in --lengths with batch B = max(1, tokens // N), --heads heads of --head-dim, causal, bf16.
Methods: tapa_triton (the fused kernel, fast cos), tapa_triton_accurate_cos (libdevice cos/sin),
tapa_reference (pure PyTorch, only up to --ref-max-len), sdpa_flash and sdpa_cudnn (RoPE applied to q and
k with cached cos/sin tables, then torch SDPA with that backend; `attn_ms` also times SDPA alone), and
with packed documents (--docs per row, positions restarting in each): tapa_triton_docs (the kernel with
segment ids) against rope_flex_docs (tapa_scale.ops.attention with RoPE, which on CUDA runs the compiled
FlexAttention block mask: what a RoPE baseline trains with under train.document_masking).
FLOPs (causal): forward 2*B*H*N^2*D, the causal half of the dense 4*B*H*N^2*D; forward+backward 3.5x
that (the backward's five N^2*D matmuls against the forward's two). Every method is credited the same
FLOPs, so TFLOP/s compare wall time; TAPA's extra elementwise work (pow, cos, sin) is not counted.
Peak memory is torch's max_memory_allocated during the timed calls. Out-of-memory is recorded per cell.
Imports only torch, triton and tapa_scale.ops. Needs a CUDA GPU.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

DEVICE, DTYPE = "cuda", torch.bfloat16
METHODS = ("tapa_triton", "tapa_triton_accurate_cos", "tapa_reference", "sdpa_flash", "sdpa_cudnn",
           "tapa_triton_docs", "rope_flex_docs")
DOCS = 4  # documents per row for the *_docs methods (main() may change it)
# Candidate tile configurations (block_m, block_n, num_warps, num_stages) for --sweep: few, so that
# compiling all of them fits a short GPU run.
SWEEP = {
    "fwd": [(128, 64, 8, 3), (128, 64, 8, 2), (128, 128, 8, 2), (64, 64, 4, 3)],
    "dkdv": [(32, 128, 8, 2), (32, 128, 8, 1), (16, 128, 8, 2), (32, 64, 4, 2)],
    "dq": [(128, 64, 8, 2), (128, 64, 8, 3), (128, 32, 8, 2), (64, 64, 4, 2)],
}


def causal_flops(B, H, N, D, mode):
    fwd = 2.0 * B * H * N * N * D
    return fwd if mode == "fwd" else 3.5 * fwd


def rope_tables(N, D, device):
    """cos/sin (N, D) in the bench dtype for rotate-half RoPE (base 1e4), built once like a model's cache."""
    from tapa_scale.ops.rope import rope_inv_freq
    angles = torch.arange(N, device=device, dtype=torch.float64)[:, None] * rope_inv_freq(D, 1e4).to(device)
    angles = torch.cat([angles, angles], -1)
    return angles.cos().to(DTYPE), angles.sin().to(DTYPE)


def rotate(x, cos, sin):
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-x2, x1), -1) * sin


def make_fn(method, q, k, v, configs=None):
    """A zero-argument callable computing the method's attention output (autograd-enabled inputs)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from tapa_scale.ops.tapa_reference import tapa_attention_reference
    from tapa_scale.ops.tapa_triton import tapa_attention_triton

    if method.endswith("_docs"):
        from tapa_scale.ops import PositionalEncoding, attention
        N = q.shape[2]
        seg = (torch.arange(N, device=q.device) * DOCS) // N
        pos = torch.arange(N, device=q.device) - torch.searchsorted(seg, seg)  # restarts in each document
        docs = dict(q_positions=pos, k_positions=pos, q_segment_ids=seg, k_segment_ids=seg)
        if method == "tapa_triton_docs":
            return lambda: tapa_attention_triton(q, k, v, causal=True, configs=configs, **docs)
        return lambda: attention(q, k, v, PositionalEncoding("rope"), **docs)
    if method.startswith("tapa_triton"):
        return lambda: tapa_attention_triton(q, k, v, causal=True, configs=configs)
    if method == "tapa_reference":
        return lambda: tapa_attention_reference(q, k, v, causal=True)
    backend = SDPBackend.FLASH_ATTENTION if method == "sdpa_flash" else SDPBackend.CUDNN_ATTENTION
    cos, sin = rope_tables(q.shape[2], q.shape[3], q.device)

    def sdpa(rope=True):
        qq, kk = (rotate(q, cos, sin), rotate(k, cos, sin)) if rope else (q, k)
        with sdpa_kernel([backend]):
            return torch.nn.functional.scaled_dot_product_attention(qq, kk, v, is_causal=True)
    return sdpa


def time_ms(step, min_time=0.3, max_reps=20):
    """Median milliseconds of step() over >= 2 reps (until min_time seconds or max_reps)."""
    times, total = [], 0.0
    while len(times) < 2 or (total < min_time and len(times) < max_reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        step()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
        total += times[-1] / 1e3
    return sorted(times)[len(times) // 2]


def steps_of(fn, mode, inputs):
    dout = None

    def step():
        nonlocal dout
        if mode == "fwd":
            with torch.no_grad():
                fn()
            return
        out = fn()
        dout = torch.randn_like(out) if dout is None else dout
        out.backward(dout)
        for t in inputs:
            t.grad = None
    return step


def run_cell(method, N, B, H, D, mode, configs=None):
    """One measurement -> dict (status ok / oom / error)."""
    row = dict(method=method, N=N, B=B, H=H, D=D, mode=mode)
    env_before = os.environ.get("TAPA_TRITON_COS")
    try:
        if method == "tapa_triton_accurate_cos":
            os.environ["TAPA_TRITON_COS"] = "accurate"
        g = torch.Generator(device=DEVICE).manual_seed(0)
        inputs = [torch.randn(B, H, N, D, device=DEVICE, dtype=DTYPE, generator=g).requires_grad_()
                  for _ in range(3)]
        fn = make_fn(method, *inputs, configs=configs)
        step = steps_of(fn, mode, inputs)
        t0 = time.time()
        step()  # compile / autotune / allocator warm-up
        torch.cuda.synchronize()
        row["first_call_s"] = round(time.time() - t0, 2)
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        ms = time_ms(step)
        row.update(status="ok", ms=round(ms, 3), tflops=round(causal_flops(B, H, N, D, mode) / ms / 1e9, 1),
                   peak_gib=round(torch.cuda.max_memory_allocated() / 2**30, 2),
                   extra_gib=round((torch.cuda.max_memory_allocated() - base) / 2**30, 2))
        if method.startswith("sdpa"):
            ms_attn = time_ms(steps_of(lambda: fn(rope=False), mode, inputs))
            row.update(attn_ms=round(ms_attn, 3),
                       attn_tflops=round(causal_flops(B, H, N, D, mode) / ms_attn / 1e9, 1))
    except torch.cuda.OutOfMemoryError:
        row.update(status="oom")
    except Exception as e:  # noqa: BLE001 - a backend missing on this GPU must not end the run
        row.update(status="error", error=f"{type(e).__name__}: {str(e).splitlines()[0][:300]}")
    finally:
        if env_before is None:
            os.environ.pop("TAPA_TRITON_COS", None)
        else:
            os.environ["TAPA_TRITON_COS"] = env_before
        inputs = fn = step = None
        gc.collect()
        torch.cuda.empty_cache()
    return row


def print_row(r):
    val = (f"{r['ms']:10.2f} ms {r['tflops']:7.1f} TFLOP/s {r['peak_gib']:7.2f} GiB"
           + (f"   (SDPA alone {r['attn_tflops']:.1f})" if "attn_tflops" in r else "")
           if r["status"] == "ok" else r["status"] + " " + r.get("error", ""))
    print(f"N={r['N']:>6} B={r['B']:>3} {r['mode']:7s} {r['method']:26s} {val}", flush=True)


def ratios(rows):
    """tapa_triton speed relative to each SDPA backend (with RoPE, and SDPA alone), and tapa_triton_docs
    relative to rope_flex_docs, per N and mode."""
    ok = {(r["method"], r["N"], r["mode"]): r for r in rows if r["status"] == "ok"}
    out = []
    for (m, N, mode), r in ok.items():
        b = ok.get(("rope_flex_docs", N, mode))
        if m == "tapa_triton_docs" and b:
            out.append(dict(N=N, mode=mode, vs="rope_flex_docs", speed_ratio=round(b["ms"] / r["ms"], 3)))
        if m != "tapa_triton":
            continue
        for base in ("sdpa_flash", "sdpa_cudnn"):
            b = ok.get((base, N, mode))
            if b:
                out.append(dict(N=N, mode=mode, vs=base, speed_ratio=round(b["ms"] / r["ms"], 3),
                                speed_ratio_vs_attn_only=round(b["attn_ms"] / r["ms"], 3)))
    return out


def grid(args, deadline):
    rows = []
    for N in args.lengths:
        B = max(1, args.tokens // N)
        for mode in args.modes:
            for method in args.methods:
                if method == "tapa_reference" and N > args.ref_max_len:
                    continue
                if time.time() > deadline:
                    rows.append(dict(method=method, N=N, B=B, mode=mode, status="skipped (time budget)"))
                    continue
                rows.append(run_cell(method, N, B, args.heads, args.head_dim, mode))
                print_row(rows[-1])
    return rows


def sweep(args, deadline):
    """Vary one kernel's tile configuration at a time (the others at their defaults) at the first length."""
    from tapa_scale.ops.tapa_triton import Configs, KernelConfig
    from tapa_scale.ops.tapa_triton_args import default_configs

    N = args.lengths[0]
    B = max(1, args.tokens // N)
    default = default_configs(torch.device(DEVICE), DTYPE)
    rows, best = [], {}
    for kernel, candidates in SWEEP.items():
        mode = "fwd" if kernel == "fwd" else "fwd_bwd"
        for cand in candidates:
            if time.time() > deadline:
                break
            cfg = Configs(**{**default.__dict__, kernel: KernelConfig(*cand)})
            r = run_cell("tapa_triton", N, B, args.heads, args.head_dim, mode, configs=cfg)
            r.update(kernel=kernel, config=list(cand))
            rows.append(r)
            print(f"{kernel:5s} {cand}", end=" ")
            print_row(r)
            if r["status"] == "ok" and (kernel not in best or r["ms"] < best[kernel][1]):
                best[kernel] = (list(cand), r["ms"])
    return dict(N=N, B=B, rows=rows, best={k: v[0] for k, v in best.items()},
                default={k: list(getattr(default, k).__dict__.values()) for k in SWEEP})


LOOP_VARIANTS = ("bf16_d128", "bf16_d128_ids")  # hot loops read: as the benchmark calls it; as the model does


def _compile_variant(name: str, arch: int) -> list:
    """Every kernel of one compile-time variant, offline (a process-pool task: picklable arguments)."""
    from tapa_scale.ops.tapa_triton_offline import VARIANTS, compile_kernels

    return compile_kernels(VARIANTS[name], arch=arch, loops=name in LOOP_VARIANTS)


def ptxas_report(args):
    """No GPU needed: compile offline for sm_<arch>a (tapa_triton_offline) and report registers, spill bytes
    and shared memory: with --sweep, each tile candidate at --head-dim (bf16) with its hot loop's
    instruction mix; else the default tiles of every compile-time variant, with the hot loops of the
    bf16 D = 128 ones and the ceiling they imply."""
    import triton

    from tapa_scale.ops.tapa_triton import KernelConfig
    from tapa_scale.ops.tapa_triton_offline import VARIANTS, Variant, hot_loop, model_ceiling

    result = dict(arch=args.arch, triton=triton.__version__)
    if args.sweep:
        variant, rows = Variant(head_dim=args.head_dim), []
        for kernel, candidates in SWEEP.items():
            for cand in candidates:
                rows.append(hot_loop(kernel, variant, KernelConfig(*cand), args.arch))
                print({k: v for k, v in rows[-1].items() if k != "ops"}, flush=True)
        return dict(result, head_dim=args.head_dim, rows=rows)
    result.update(variants={}, hot_loop={}, model_ceiling={})
    names = list(VARIANTS)
    if args.jobs > 1:  # compiling is CPU-bound and single-threaded per process: variants side by side
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            compiled = dict(zip(names, pool.map(_compile_variant, names, [args.arch] * len(names))))
    else:
        compiled = {name: _compile_variant(name, args.arch) for name in names}
    for name in names:
        v, rows = VARIANTS[name], compiled[name]
        result["variants"][name] = rows
        for r in rows:
            print(name, {k: x for k, x in r.items() if k != "ops"}, flush=True)
        if name in LOOP_VARIANTS:
            loops = result["hot_loop"][name] = {r["kernel"]: r for r in rows if "clocks" in r}
            result["model_ceiling"][name] = model_ceiling(loops, v.head_dim)
            print(f"{name} model ceiling (fraction of dense tensor peak):", result["model_ceiling"][name])
    return result


def main(argv=None) -> int:
    global DOCS
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lengths", default="2048,8192,16384,32768,65536,131072", help="comma-separated N")
    p.add_argument("--heads", type=int, default=32)
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--tokens", type=int, default=16384, help="tokens per cell: batch = max(1, tokens // N)")
    p.add_argument("--modes", default="fwd,fwd_bwd", help="comma-separated: fwd, fwd_bwd")
    p.add_argument("--methods", default="tapa_triton,tapa_reference,sdpa_flash,sdpa_cudnn,tapa_triton_docs,"
                   "rope_flex_docs",
                   help=f"comma-separated subset of {','.join(METHODS)}")
    p.add_argument("--docs", type=int, default=DOCS, help="documents per row for the *_docs methods")
    p.add_argument("--ref-max-len", type=int, default=8192, help="run tapa_reference only up to this N")
    p.add_argument("--sweep", action="store_true", help="time the tile configurations at the first length")
    p.add_argument("--ptxas", action="store_true",
                   help="no GPU needed: compile offline (every variant's default tiles, or with --sweep the "
                        "tile candidates), report registers, spills and shared memory")
    p.add_argument("--arch", type=int, default=90, help="compute capability for --ptxas (90 = H100/H200)")
    p.add_argument("--jobs", type=int, default=1, help="--ptxas: variants compiled in this many processes")
    p.add_argument("--max-seconds", type=float, default=1e9, help="skip remaining cells after this long")
    p.add_argument("--json", help="write results here")
    args = p.parse_args(argv)
    try:
        args.lengths = [int(x) for x in args.lengths.split(",") if x]
        args.modes = [m for m in args.modes.split(",") if m]
        args.methods = [m for m in args.methods.split(",") if m]
        bad = [m for m in args.modes if m not in ("fwd", "fwd_bwd")] + [m for m in args.methods if m not in METHODS]
        if bad:
            raise ValueError(f"unknown mode/method {bad}")
        if args.docs < 1:
            raise ValueError(f"--docs {args.docs}: expected >= 1")
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.ptxas:
        if os.environ.get("TRITON_INTERPRET") == "1":
            print("error: --ptxas compiles kernels; unset TRITON_INTERPRET", file=sys.stderr)
            return 2
        result = ptxas_report(args)
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=1))
        return 0
    if not torch.cuda.is_available():
        print("bench_attention needs a CUDA GPU (none is visible); nothing was measured.", file=sys.stderr)
        return 2
    import triton
    DOCS = args.docs
    deadline = time.time() + args.max_seconds
    result = dict(device=torch.cuda.get_device_name(), torch=torch.__version__, triton=triton.__version__,
                  args={k: v for k, v in vars(args).items()})
    if args.sweep:
        result["sweep"] = sweep(args, deadline)
        print("best:", result["sweep"]["best"])
    else:
        result["results"] = grid(args, deadline)
        result["ratios"] = ratios(result["results"])
        for r in result["ratios"]:
            alone = f" (vs SDPA alone {r['speed_ratio_vs_attn_only']:.2f}x)" if "speed_ratio_vs_attn_only" in r else ""
            print(f"N={r['N']:>6} {r['mode']:7s} tapa_triton / {r['vs']}: {r['speed_ratio']:.2f}x{alone}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
