"""The fused TAPA kernel (tapa_scale/ops/tapa_triton*.py) against the chunked reference.

On CPU everything runs in the Triton interpreter (fp32 / fp16, small shapes, 32-wide tiles so short
sequences span several blocks); on a GPU the same tests run compiled, plus GPU-only ones (bf16, longer
sequences, the inline-asm fast cos). Without pytest (the GPU machine may lack it) run
`python -m tests.ops.test_tapa_triton [--gpu-only] [--json FILE] [--shard K/N]`; tools/gpu_checks.sh
does, in parallel shards so that kernel compilation uses several CPU cores.

Tolerances: every entry of out, lse, dq, dk, dv must satisfy |kernel - exact| <= atol + rtol * |exact|
(torch.testing.assert_close), exact = the reference in fp64 on the same (rounded) inputs, with
rtol = R * eps(dtype) and atol = R * eps(dtype) * rms(exact): an absolute term at the tensor's typical
size, not its largest entry, so an error confined to small entries fails. R per output (`TOL_UNITS`):
- fp32: twice the fp32 reference's own largest error (plain PyTorch, same dtype, measured over the cases
  here: out/dv <= 191, dq/dk <= 542 eps units; the kernel: <= 269 and <= 423). The phase derivative
  multiplies rounding by 2*pi*d^alpha*|a|, so dq/dk (alpha = 0.5 most) need more than out/dv.
- fp16 / bf16: the reference computes in fp32 and rounds once (<= 0.42 units measured); the kernel also
  rounds p and dS to the input dtype for its tensor-core products, each term by <= eps/2, which sums to
  ~eps * rms: measured <= 0.76 (out), 1.36 (dv), 2.93 (dq/dk) units at fp16; R is about twice that.
  bf16 (GPU-only cases) takes the same R: these errors scale with eps(dtype).
- lse is fp32 in every dtype: 5 fp32 units (fp32 reference <= 2, kernel <= 2.0 measured).
"""
from __future__ import annotations

import json
import sys
import time
import traceback
import zlib
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling module, however this one is run
import test_tapa_triton_jit as jit_tests  # noqa: E402  (sets TRITON_INTERPRET on CPU before triton loads)
from test_tapa_triton_jit import DEVICE, GPU, TT, gpu_only, parametrize  # noqa: E402

import triton  # noqa: E402

from tapa_scale.ops.tapa_reference import tapa_attention_reference as reference  # noqa: E402


# ----------------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------------
def make(B, Hq, Hkv, Nq, Nk, D, seed=0, phase_scale=1.0, theta=0.5):
    """q, k, v, dout, dlse in fp32 on DEVICE; phase_scale multiplies the phase dims of q and k."""
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, h, n, D, generator=g) for h, n in ((Hq, Nq), (Hkv, Nk), (Hkv, Nk)))
    d_amp = round(theta * D)
    q[..., d_amp:] *= phase_scale
    k[..., d_amp:] *= phase_scale
    dout = torch.randn(B, Hq, Nq, D, generator=g)
    dlse = torch.randn(B, Hq, Nq, generator=g)
    return [t.to(DEVICE) for t in (q, k, v, dout, dlse)]


def run(fn, tensors, dtype, use_dlse=True, **kw):
    """[out, lse, dq, dk, dv] of fn on the inputs cast to dtype (dlse enters unless use_dlse=False)."""
    q, k, v, dout, dlse = tensors
    qq, kk, vv = (t.to(dtype).requires_grad_() for t in (q, k, v))
    out, lse = fn(qq, kk, vv, return_lse=True, **kw)
    if use_dlse:
        grads = torch.autograd.grad((out, lse), (qq, kk, vv), (dout.to(dtype), dlse.float()))
    else:
        grads = torch.autograd.grad(out, (qq, kk, vv), dout.to(dtype))
    return [out, lse, *grads]


def err(a, b) -> float:
    """max |a - b| in fp64; -inf entries must coincide (a row with no key)."""
    a, b = a.detach().double(), b.detach().double()
    inf_a, inf_b = torch.isinf(a), torch.isinf(b)
    assert torch.equal(inf_a, inf_b) and torch.equal(a[inf_a], b[inf_b]), "-inf pattern differs"
    assert not torch.isnan(a).any(), "NaN in kernel result"
    d = (a - b)[~inf_a]
    return d.abs().max().item() if d.numel() else 0.0


def rms(t) -> float:
    """Root mean square of the finite entries (the typical size that sets atol)."""
    t = t.detach().double()
    t = t[torch.isfinite(t)]
    return t.pow(2).mean().sqrt().item() if t.numel() else 0.0


NAMES = ("out", "lse", "dq", "dk", "dv")
# R of the module docstring, in units of eps(dtype) (lse: of eps(fp32), it is fp32 in every dtype)
TOL_UNITS = {"fp32": dict(out=400, lse=5, dq=1100, dk=1100, dv=400),
             "lowp": dict(out=1.5, lse=5, dq=6, dk=6, dv=3)}


def assert_near(got, exact, dtype, names=NAMES):
    """Elementwise |got - exact| <= R * eps * (rms(exact) + |exact|) per tensor; -inf entries and their
    places must coincide (rows with no key), NaN fails."""
    units = TOL_UNITS["fp32" if dtype == torch.float32 else "lowp"]
    for name, a, e in zip(names, got, exact):
        eps = torch.finfo(torch.float32 if name == "lse" else dtype).eps
        rtol = units[name] * eps
        torch.testing.assert_close(a.detach().double(), e.detach().double(), rtol=rtol, atol=rtol * rms(e),
                                   msg=lambda m, name=name: f"{name} ({dtype}): {m}")


def check_fp32(tensors, use_dlse=True, **kw):
    """[out, lse, dq, dk, dv] of the kernel in fp32, checked against the fp64 reference."""
    got = run(TT.tapa_attention_triton, tensors, torch.float32, use_dlse, **kw)
    assert_near(got, run(reference, tensors, torch.float64, use_dlse, **kw), torch.float32)
    return got


def check_lowp(tensors, dtype, use_dlse=True, **kw):
    """The kernel in fp16 / bf16 against the fp64 reference on the same rounded inputs."""
    rounded = [t.to(dtype).float() if i < 4 else t for i, t in enumerate(tensors)]
    got = run(TT.tapa_attention_triton, rounded, dtype, use_dlse, **kw)
    assert_near(got, run(reference, rounded, torch.float64, use_dlse, **kw), dtype)
    return got


# ----------------------------------------------------------------------------------------------------
# attention against the reference
# ----------------------------------------------------------------------------------------------------
def _packed(B, N):
    """(positions, segment ids), both (B, N): b + 2 documents of uneven length, positions restart at 0."""
    seg = torch.stack([torch.arange(N) * (b + 2) // N for b in range(B)])
    first = torch.stack([torch.searchsorted(row, row) for row in seg])  # index where each document starts
    return (torch.arange(N) - first).to(DEVICE), seg.to(DEVICE)


# (B, Hq, Hkv, Nq, Nk, D, theta, phase, causal, alpha, layout)
FP32_CASES = {
    "mha_tail_100": (1, 2, 2, 100, 100, 64, 0.5, "quadratic", True, 0.1, "default"),
    "gqa_offset37_linear": (2, 4, 2, 130, 130, 32, 0.25, "linear", True, 0.1, "offset37"),
    "cp_chunk_mqa": (1, 4, 1, 17, 130, 64, 0.5, "quadratic", True, 0.1, "cp_chunk"),
    "single_token": (2, 2, 1, 1, 1, 16, 0.5, "quadratic", True, 0.1, "default"),
    "segments_noncausal": (2, 2, 2, 100, 100, 32, 0.25, "quadratic", False, 0.1, "packed"),
    "packed_causal_theta25_gqa": (1, 4, 2, 130, 130, 64, 0.25, "quadratic", True, 0.1, "packed"),
    "noncausal_rect_linear_a05": (1, 2, 1, 64, 100, 32, 0.5, "linear", False, 0.5, "default"),
    "shuffled_positions": (1, 2, 1, 64, 64, 32, 0.5, "quadratic", True, 0.1, "shuffled"),
}


def case_kwargs(case):
    B, Hq, Hkv, Nq, Nk, D, theta, phase, causal, alpha, layout = case
    kw = dict(theta=theta, phase=phase, causal=causal, alpha=alpha)
    if layout == "offset37":
        kw.update(q_positions=torch.arange(Nq, device=DEVICE) + 37, k_positions=torch.arange(Nk, device=DEVICE) + 37)
    elif layout == "cp_chunk":  # the last Nq queries of a sequence against all of its keys
        kw.update(q_positions=torch.arange(Nq, device=DEVICE) + Nk - Nq)
    elif layout == "packed":
        pos, seg = _packed(B, Nq)
        kw.update(q_positions=pos, k_positions=pos, q_segment_ids=seg, k_segment_ids=seg)
    elif layout == "shuffled":
        perm = torch.randperm(Nq, generator=torch.Generator().manual_seed(3)).to(DEVICE)
        kw.update(q_positions=perm, k_positions=perm.flip(0))
    return kw


@parametrize("name", list(FP32_CASES))
def test_fp32_matches_reference(name):
    """Forward, lse and dq/dk/dv (dout and dlse both nonzero) in fp32: tails, offsets, GQA, theta,
    phases, causal or not, segments, arbitrary positions."""
    case = FP32_CASES[name]
    check_fp32(make(*case[:6], seed=zlib.crc32(name.encode()) % 1000, theta=case[6]), **case_kwargs(case))


@parametrize("name", ["mha_tail_100", "gqa_offset37_linear", "packed_causal_theta25_gqa"])
def test_fp16_within_twice_reference_error(name):
    case = FP32_CASES[name]
    check_lowp(make(*case[:6], seed=1, theta=case[6]), torch.float16, **case_kwargs(case))


def rms_err(a, b) -> float:
    a, b = a.detach().double(), b.detach().double()
    keep = torch.isfinite(b)
    return (a - b)[keep].pow(2).mean().sqrt().item()


def check_large_angles(B, Hq, Hkv, Nq, Nk, D, seed=5):
    """|q_P.k_P| / sqrt(d_phase) up to thousands and distances up to 128k (alpha = 0.1): phase angles up
    to ~5e4-7e4 rad, where the fp32 angle itself carries ~ulp(6e4) = 0.004 of rounding in any
    implementation, so both the kernel and the fp32 reference are noisy against fp64. Bound: the
    kernel's RMS error at most 2.5x the fp32 reference's (measured 0.7-1.9x over 16 samples: the
    kernel's exp2(alpha*log2 d) is ~1.6 ulp where torch.pow is ~1.2). RMS, because the max error of such
    noise swings by 3x between samples. Would catch a cos that is not range-reduced or reduced with too
    few bits (errors of order 1, ratios in the hundreds)."""
    tensors = make(B, Hq, Hkv, Nq, Nk, D, seed=seed, phase_scale=30.0 * (32 / D) ** 0.25)
    kw = dict(alpha=0.1, q_positions=torch.arange(Nq, device=DEVICE) + 131072 - Nq,
              k_positions=torch.arange(Nk, device=DEVICE) * (131072 // Nk))
    got = run(TT.tapa_attention_triton, tensors, torch.float32, **kw)
    ref32 = run(reference, tensors, torch.float32, **kw)
    exact = run(reference, tensors, torch.float64, **kw)
    for name, a, r, e in zip(NAMES, got, ref32, exact):
        err(a, e)  # same -inf pattern, no NaN
        assert rms_err(a, e) <= 2.5 * rms_err(r, e) + 1e-6 * rms(e), (name, rms_err(a, e), rms_err(r, e))


def test_large_phase_arguments_fp32():
    check_large_angles(1, 2, 1, 16, 48, 32)


def test_fully_masked_rows_zero_out_and_minus_inf_lse():
    """Queries with no key of their segment, or before every key: out 0, lse -inf, zero and finite
    gradients (context parallelism merges such rows by lse)."""
    B, H, Nq, Nk, D = 1, 2, 40, 70, 32
    tensors = make(B, H, H, Nq, Nk, D, seed=7)
    q_seg = torch.tensor([0] * 10 + [5] * 10 + [1] * 20, device=DEVICE)   # id 5 has no keys
    k_seg = torch.tensor([0] * 35 + [1] * 35, device=DEVICE)
    q_pos = torch.cat([torch.arange(10), torch.arange(10), torch.arange(20) - 30]).to(DEVICE)  # last 20 < keys
    k_pos = torch.cat([torch.arange(35), torch.arange(35) - 5]).to(DEVICE)
    kw = dict(q_positions=q_pos, k_positions=k_pos, q_segment_ids=q_seg, k_segment_ids=k_seg)
    out, lse, dq, dk, dv = check_fp32(tensors, use_dlse=False, **kw)
    dead = (q_seg == 5) | (q_pos < -5)
    assert dead.sum() > 10 and torch.isinf(lse[..., dead]).all() and (out[..., dead, :] == 0).all()
    assert (dq[..., dead, :] == 0).all() and torch.isfinite(dk).all()


def test_external_forward_backward_and_ring_merge():
    """tapa_attention_triton_forward / _backward, the entries context parallelism calls, against the fp64
    reference: (a) on the whole sequence; (b) as ring attention: two key blocks run separately with global
    positions, merged by lse, and each block's backward given the merged out/lse. Would catch a backward
    that needs its own forward's out/lse, a wrong lse (the merge weights), dq not summed over blocks."""
    B, Hq, Hkv, N, D = 1, 4, 2, 100, 32
    q, k, v, dout, _ = make(B, Hq, Hkv, N, N, D, seed=11)
    kw = dict(theta=0.5, phase="quadratic", causal=True)
    exact = run(reference, (q, k, v, dout, None), torch.float64, use_dlse=False, **kw)
    out, lse = TT.tapa_attention_triton_forward(q, k, v, **kw)
    assert_near([out, lse, *TT.tapa_attention_triton_backward(q, k, v, out, lse, dout, **kw)], exact, torch.float32)
    # ring: keys [0, 60) and [60, 100) as two blocks with global positions, merged by lse
    cut = 60
    qpos = torch.arange(N, device=DEVICE)
    parts = [(slice(0, cut), torch.arange(cut, device=DEVICE)), (slice(cut, N), torch.arange(cut, N, device=DEVICE))]
    outs, lses = zip(*[TT.tapa_attention_triton_forward(q, k[:, :, s], v[:, :, s], q_positions=qpos, k_positions=kp,
                                                          **kw) for s, kp in parts])
    lse_m = torch.logaddexp(*lses)
    w = [torch.exp(l - torch.where(torch.isinf(lse_m), 0.0, lse_m))[..., None] for l in lses]
    out_m = (w[0] * outs[0] + w[1] * outs[1]).to(q.dtype)
    dq = torch.zeros_like(q)
    dks, dvs = [], []
    for s, kp in parts:
        gq, gk, gv = TT.tapa_attention_triton_backward(q, k[:, :, s], v[:, :, s], out_m, lse_m, dout,
                                                       q_positions=qpos, k_positions=kp, **kw)
        dq += gq
        dks.append(gk)
        dvs.append(gv)
    assert_near([out_m, lse_m, dq, torch.cat(dks, 2), torch.cat(dvs, 2)], exact, torch.float32)


def test_strided_inputs_megatron_layout():
    """q, k, v as (B, H, N, D) views of megatron's [s, b, h, d] buffers (non-contiguous), GQA: would
    catch a kernel that assumes contiguous (B, H, N, D) strides."""
    N, B, Hq, Hkv, D = 40, 2, 4, 2, 32
    base = make(B, Hq, Hkv, N, N, D, seed=13)
    q, k, v = (t.permute(2, 0, 1, 3).contiguous().permute(1, 2, 0, 3) for t in base[:3])  # [s, b, h, d] storage
    assert not q.is_contiguous()
    check_fp32([q, k, v, *base[3:]])


def test_refuses_unsupported_inputs_with_clear_errors():
    q = torch.zeros(1, 1, 4, 48, device=DEVICE)
    for args, kw, msg in [
        ((q, q, q), {}, "head_dim 48"),
        ((q[..., :32].double(),) * 3, {}, "dtype torch.float64"),
        ((q[..., :32],) * 3, dict(q_segment_ids=torch.zeros(4, dtype=torch.long)), "given together"),
        ((q[..., :32],) * 3, dict(theta=1.0), "theta"),
        ((q[..., :32],) * 3, dict(phase="cubic"), "phase"),
    ]:
        try:
            TT.tapa_attention_triton(*args, **kw)
        except ValueError as e:
            assert msg in str(e), (msg, str(e))
        else:
            raise AssertionError(f"no ValueError for {msg}")


# ----------------------------------------------------------------------------------------------------
# GPU only: bf16, default (large) tiles, longer sequences, the inline-asm fast path
# ----------------------------------------------------------------------------------------------------
GPU_CASES = {  # (B, Hq, Hkv, Nq, Nk, D, theta, phase, causal, alpha, layout)
    "bf16_gqa_d128_1000": (2, 8, 2, 1000, 1000, 128, 0.5, "quadratic", True, 0.1, "default"),
    "bf16_cp_chunk_d128": (1, 4, 4, 384, 2000, 128, 0.5, "quadratic", True, 0.1, "cp_chunk"),
    "bf16_packed_d64_linear": (2, 4, 1, 1500, 1500, 64, 0.5, "linear", True, 0.1, "packed"),
    "bf16_theta25_noncausal": (1, 4, 2, 700, 900, 128, 0.25, "quadratic", False, 0.5, "default"),
}


@gpu_only
@parametrize("name", list(GPU_CASES))
def test_gpu_bf16_within_twice_reference_error(name):
    case = GPU_CASES[name]
    check_lowp(make(*case[:6], seed=2, theta=case[6]), torch.bfloat16, **case_kwargs(case))


@gpu_only
def test_gpu_fp16_d128():
    case = GPU_CASES["bf16_gqa_d128_1000"]
    check_lowp(make(*case[:6], seed=3), torch.float16, **case_kwargs(case))


@gpu_only
def test_gpu_large_phase_arguments_fast_path():
    """The large-angle rule of test_large_phase_arguments_fp32 with the GPU fast path (cos.approx after
    the reduction, lg2/ex2.approx pow), D = 64, longer sequences."""
    check_large_angles(1, 4, 2, 256, 512, 64)


@gpu_only
def test_gpu_bf16_large_phase_scale():
    """bf16 with |q_P.k_P| ~ 6x unit-variance inputs and distances up to 128k: the 2x-reference rule."""
    tensors = make(1, 4, 2, 256, 512, 128, seed=9, phase_scale=2.5)
    kw = dict(alpha=0.1, q_positions=torch.arange(256, device=DEVICE) + 131072 - 256,
              k_positions=torch.arange(512, device=DEVICE) * 250)
    check_lowp(tensors, torch.bfloat16, **kw)


# ----------------------------------------------------------------------------------------------------
# runner without pytest (GPU machines): python -m tests.ops.test_tapa_triton [--gpu-only] [--json FILE]
# ----------------------------------------------------------------------------------------------------
def _calls(gpu_only_tests: bool):
    """(test id, function, kwargs) of every test here and in the helper module, parametrized cases expanded."""
    tests = [(n, f) for mod in (jit_tests, sys.modules[__name__]) for n, f in vars(mod).items()]
    for name, fn in tests:
        if not name.startswith("test_") or not callable(fn):
            continue
        if gpu_only_tests and not getattr(fn, "_gpu_only", False):
            continue
        if getattr(fn, "_gpu_only", False) and not GPU:
            continue
        names, cases = getattr(fn, "_cases", (None, [None]))
        for case in cases:
            if names is None:
                yield name, fn, {}
            else:
                keys = [k.strip() for k in names.split(",")]
                vals = case if len(keys) > 1 else (case,)
                yield f"{name}[{'-'.join(map(str, vals))}]", fn, dict(zip(keys, vals))


def main(argv=None) -> int:
    import argparse
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gpu-only", action="store_true", help="only the GPU-only tests")
    ap.add_argument("--json", help="write per-test results here")
    ap.add_argument("--numerics", help="measure cos/sin/pow helper accuracy, write it here, run no tests")
    ap.add_argument("--shard", default="0/1", help="K/N: run every N-th test from the K-th (parallel compiles)")
    args = ap.parse_args(argv)
    shard, n_shards = (int(x) for x in args.shard.split("/"))
    if args.numerics:
        table = jit_tests.numerics()
        Path(args.numerics).write_text(json.dumps(table, indent=1))
        print(json.dumps(table, indent=1))
        return 0
    results, failed = [], 0
    for i, (test_id, fn, kwargs) in enumerate(_calls(args.gpu_only)):
        if i % n_shards != shard:
            continue
        t0 = time.time()
        try:
            fn(**kwargs)
            status, detail = "passed", ""
        except Exception as e:  # noqa: BLE001 - report every failure, keep going
            status, detail = "failed", "".join(traceback.format_exception_only(type(e), e)).strip()
            failed += 1
            traceback.print_exc()
        results.append(dict(test=test_id, status=status, seconds=round(time.time() - t0, 2), detail=detail))
        print(f"{status:6s} {results[-1]['seconds']:7.2f}s {test_id} {detail}", flush=True)
    print(f"{len(results) - failed} passed, {failed} failed")
    if args.json:
        Path(args.json).write_text(json.dumps(dict(device=str(torch.cuda.get_device_name() if GPU else "cpu"),
                                                   torch=torch.__version__, triton=triton.__version__,
                                                   results=results), indent=1))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
