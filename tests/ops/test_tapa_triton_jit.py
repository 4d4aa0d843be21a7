"""The small @triton.jit helpers of the fused TAPA kernel (tapa_scale/ops/tapa_triton_jit.py), each run
alone by a tiny test kernel: range reduction and cos/sin twins, pow, int32 relative ids, the keep mask,
block skipping against a brute-force truth. On CPU in the Triton interpreter; on a GPU the same tests
compiled, plus the inline-asm fast twins. Also the shared set-up of the kernel tests (interpreter
switch, the parametrize/gpu_only shims that let tests/ops/test_tapa_triton.py run without pytest) and
`numerics()`, the measured accuracy table of docs/kernel.md.
"""
from __future__ import annotations

import importlib
import math
import os
import sys
from pathlib import Path

import torch

GPU = torch.cuda.is_available()
if not GPU:  # must precede the first @triton.jit of the kernel modules (tests/conftest.py does it too)
    os.environ["TRITON_INTERPRET"] = "1"
ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import triton  # noqa: E402
import triton.language as tl  # noqa: E402

try:
    import pytest
except ImportError:  # the GPU machine may lack pytest: test_tapa_triton.main() runs the tests
    pytest = None


def _kernel_modules():
    """Import the kernel modules; if an earlier import compiled them for the GPU path on a CPU-only
    machine (TRITON_INTERPRET unset at the time), reload them as interpreted functions."""
    names = ["tapa_scale.ops.tapa_triton_jit", "tapa_scale.ops.tapa_triton_fwd",
             "tapa_scale.ops.tapa_triton_bwd", "tapa_scale.ops.tapa_triton"]
    mods = [importlib.import_module(n) for n in names]
    if not GPU and type(mods[1]._tapa_fwd_kernel).__name__ != "InterpretedFunction":
        mods = [importlib.reload(m) for m in mods]
    return mods


J, _FWD, _BWD, TT = _kernel_modules()

DEVICE = torch.device("cuda" if GPU else "cpu")


def parametrize(names: str, cases: list):
    """pytest.mark.parametrize when pytest is there; otherwise remember the cases for the runner."""
    def wrap(fn):
        fn._cases = (names, cases)
        return pytest.mark.parametrize(names, cases)(fn) if pytest else fn
    return wrap


def gpu_only(fn):
    fn._gpu_only = True
    if pytest:
        return pytest.mark.skipif(not GPU, reason="needs a CUDA GPU (bf16 / inline asm / long sequences)")(fn)
    return fn


# ----------------------------------------------------------------------------------------------------
# helper kernels, one tiny test kernel each
# ----------------------------------------------------------------------------------------------------
@triton.jit
def _trig_kernel(T, C, S, R, n, FAST: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < n
    t = tl.load(T + offs, mask=ok)
    tl.store(C + offs, J.tapa_cos(t, FAST), mask=ok)
    tl.store(S + offs, J.tapa_sin(t, FAST), mask=ok)
    tl.store(R + offs, J.reduce_turns(t, FAST), mask=ok)


def trig_errors(limit: float, fast: bool, n: int = 1 << 14, seed=0):
    """Max |cos - cos64|, |sin - sin64| over angles uniform in [-limit, limit] rad, handed to the kernel as
    fp32 turns t (the error is against cos(2*pi*t) in fp64 of that same fp32 t), and max |reduced angle|."""
    g = torch.Generator().manual_seed(seed)
    t = ((torch.rand(n, generator=g, dtype=torch.float64) * 2 - 1) * limit / (2 * math.pi)).float().to(DEVICE)
    c, s, r = (torch.empty_like(t) for _ in range(3))
    _trig_kernel[(triton.cdiv(n, 1024),)](t, c, s, r, n, FAST=fast, BLOCK=1024)
    x = 2 * math.pi * t.double()
    return ((c.double() - torch.cos(x)).abs().max().item(), (s.double() - torch.sin(x)).abs().max().item(),
            r.abs().max().item())


@parametrize("limit", [math.pi, 1e4, 4e5, 2e7])
def test_reduced_cos_sin_accurate_at_large_arguments(limit):
    """Would catch a range reduction that loses digits for large phase angles (big |q_P.k_P|, far tokens)."""
    ce, se, rmax = trig_errors(limit, fast=False)
    assert rmax <= math.pi * (1 + 1e-6)
    assert ce <= 3e-7 and se <= 3e-7, (ce, se)


@triton.jit
def _pow_kernel(Dist, Y, n, alpha, log2_scale, FAST: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < n
    tl.store(Y + offs, J.scaled_pow(tl.load(Dist + offs, mask=ok, other=0.0), alpha, log2_scale, FAST), mask=ok)


def pow_ulps(dist, alpha, fast):
    """scale * dist**alpha from the kernel helper, and its relative error in fp32 ulps (2^-23) vs fp64."""
    y = torch.empty_like(dist)
    sc = 2 * math.pi / math.sqrt(32)
    _pow_kernel[(triton.cdiv(dist.numel(), 1024),)](dist, y, dist.numel(), alpha, math.log2(sc), FAST=fast,
                                                    BLOCK=1024)
    want = sc * dist.double() ** alpha
    return y, ((y.double() - want).abs() / want.clamp_min(1e-300) / 2**-23)


@parametrize("alpha", [0.1, 0.5])
def test_scaled_pow(alpha, fast=False):
    """Would catch pow(0, alpha) != 0, a missing scale, or a wrong exponent. exp2(alpha*log2 d) rounds
    alpha*log2 d (up to 8.5 at alpha = 0.5) to fp32: a few ulps of the result, documented in kernel.md."""
    dist = torch.tensor([0, 1, 2, 3, 7, 100, 4095, 65536, 131071, 131072], dtype=torch.float32, device=DEVICE)
    y, ulps = pow_ulps(dist, alpha, fast)
    assert y[0].item() == 0.0
    assert ulps[1:].max().item() <= 16, ulps


@triton.jit
def _rel_kernel(Ids, Out, base, n, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    tl.store(Out + offs, J.rel_ids(J.load_ids(Ids, offs, offs < n, True), base), mask=offs < n)


def test_rel_ids_clamps_in_order():
    """Would catch an int32 wrap-around turning a far-away position into a near (or earlier) one."""
    ids = torch.tensor([5, 6, 2**40, -2**40, 2**31 + 10, 7 - 2**31], device=DEVICE)
    out = torch.zeros(6, dtype=torch.int32, device=DEVICE)
    _rel_kernel[(1,)](ids, out, 5, 6, BLOCK=8)
    assert out.tolist() == [0, 1, 2**31 - 1, 1 - 2**31, 2**31 - 1, 2 - 2**31]


@triton.jit
def _keep_kernel(QP, KP, QS, KS, Out, nq, nk, CAUSAL: tl.constexpr, HAS_SEG: tl.constexpr, BLOCK: tl.constexpr):
    m = tl.arange(0, BLOCK)
    n = tl.arange(0, BLOCK)
    qp = J.load_ids(QP, m, m < nq, True)
    kp = J.load_ids(KP, n, n < nk, True)
    qs = J.load_ids(QS, m, m < nq, HAS_SEG)
    ks = J.load_ids(KS, n, n < nk, HAS_SEG)
    keep = J.keep_mask(qp[:, None], kp[None, :], qs[:, None], ks[None, :], (m < nq)[:, None] & (n < nk)[None, :],
                       CAUSAL, HAS_SEG)
    tl.store(Out + m[:, None] * BLOCK + n[None, :], keep.to(tl.int32))


@parametrize("causal,segments", [(True, False), (True, True), (False, True)])
def test_keep_mask(causal, segments):
    """Would catch an inverted causal comparison or a segment test against the wrong side."""
    qp = torch.tensor([5, 6, 7, 40, 41, 0, 1], device=DEVICE)
    kp = torch.tensor([0, 5, 6, 8, 40, 2, 41, 3, 1], device=DEVICE)
    qs = torch.tensor([0, 0, 0, 1, 1, 2, 2], device=DEVICE)
    ks = torch.tensor([0, 0, 0, 0, 1, 2, 1, 2, 2], device=DEVICE)
    out = torch.zeros(16, 16, dtype=torch.int32, device=DEVICE)
    _keep_kernel[(1,)](qp, kp, qs, ks, out, 7, 9, CAUSAL=causal, HAS_SEG=segments, BLOCK=16)
    want = torch.ones(7, 9, dtype=torch.bool, device=DEVICE)
    if causal:
        want &= kp[None, :] <= qp[:, None]
    if segments:
        want &= qs[:, None] == ks[None, :]
    assert torch.equal(out[:7, :9].bool(), want) and out[7:].sum() == 0 and out[:, 9:].sum() == 0


@triton.jit
def _visit_kernel(SP, SS, OP, OS, Out, n_self, n_other, SELF_BLOCK: tl.constexpr, BLOCK: tl.constexpr,
                  SELF_IS_Q: tl.constexpr, CAUSAL: tl.constexpr, HAS_SEG: tl.constexpr):
    i = tl.program_id(0)
    offs = i * SELF_BLOCK + tl.arange(0, SELF_BLOCK)
    ok = offs < n_self
    pmin, pmax = J.id_bounds(J.load_ids(SP, offs, ok, True), ok)
    smin, smax = J.id_bounds(J.load_ids(SS, offs, ok, HAS_SEG), ok)
    lo, flo, fhi, hi = J.visit_range(pmin, pmax, smin, smax, OP, OS, n_other, BLOCK, 2, SELF_IS_Q, CAUSAL,
                                     True, HAS_SEG)
    tl.store(Out + i * 4 + tl.arange(0, 4), tl.where(tl.arange(0, 4) == 0, lo, tl.where(
        tl.arange(0, 4) == 1, flo, tl.where(tl.arange(0, 4) == 2, fhi, hi))))


def _visit_truth(sp, ss, op, os_, sb, ob, self_is_q, causal, seg):
    """Brute force per self block: (set of other blocks with a kept pair, set of blocks fully kept)."""
    res = []
    for i in range(0, len(sp), sb):
        a, sa = sp[i:i + sb], ss[i:i + sb]
        need, full = set(), set()
        for j in range(0, len(op), ob):
            b, sbb = op[j:j + ob], os_[j:j + ob]
            qp, kp, qs, ks = (a, b, sa, sbb) if self_is_q else (b, a, sbb, sa)
            keep = torch.ones(len(qp), len(kp), dtype=torch.bool)
            if causal:
                keep &= kp[None, :] <= qp[:, None]
            if seg:
                keep &= qs[:, None] == ks[None, :]
            if keep.any():
                need.add(j // ob)
            if keep.all() and len(b) == ob:
                full.add(j // ob)
        res.append((need, full))
    return res


VISIT_LAYOUTS = {  # name: (self positions, self segments, other positions, other segments, monotone)
    "causal_self": (list(range(70)), [0] * 70, list(range(70)), [0] * 70, True),
    # a query block whose last position (48) is a key block's first: catches < for <=
    "cp_chunk": ([33 + i for i in range(31)], [0] * 31, list(range(100)), [0] * 100, True),
    # a query block whose first position (31) is a key block's last: the block needs no mask
    "cp_chunk_b": ([31 + i for i in range(31)], [0] * 31, list(range(100)), [0] * 100, True),
    # positions restart per document: not monotone, so a block straddling a document start may be
    # visited (masked) without a kept pair; correctness is what the test asks there
    "packed_docs": ([i % 30 for i in range(90)], [i // 30 for i in range(90)],
                    [i % 30 for i in range(90)], [i // 30 for i in range(90)], False),
    "shuffled": ([(i * 37) % 64 for i in range(64)], [0] * 64, [(i * 11) % 64 for i in range(64)], [0] * 64, False),
}


@parametrize("layout", list(VISIT_LAYOUTS))
def test_visit_range_exact_for_monotone_positions(layout):
    """Would catch skipping a block that holds a kept pair (wrong output) or, for monotone positions,
    visiting blocks that are all masked / masking blocks that need no mask (lost speed)."""
    *ids, monotone = VISIT_LAYOUTS[layout]
    sp, ss, op, os_ = (torch.tensor(x, dtype=torch.int64) for x in ids)
    causal, seg = True, layout == "packed_docs"
    for self_is_q, (sb, ob) in ((True, (16, 16)), (False, (16, 32))):
        n_self = len(sp)
        out = torch.zeros(triton.cdiv(n_self, sb) * 4, dtype=torch.int32, device=DEVICE)
        args = [t.to(DEVICE) for t in (sp, ss, op, os_)]
        _visit_kernel[(triton.cdiv(n_self, sb),)](*args, out, n_self, len(op), SELF_BLOCK=sb, BLOCK=ob,
                                                 SELF_IS_Q=self_is_q, CAUSAL=causal, HAS_SEG=seg)
        got = out.view(-1, 4).tolist()
        for (lo, flo, fhi, hi), (need, full) in zip(got, _visit_truth(sp, ss, op, os_, sb, ob, self_is_q, causal, seg)):
            assert need <= set(range(lo, hi)), (layout, lo, hi, need)
            assert set(range(flo, fhi)) <= full and lo <= flo <= fhi <= hi
            if monotone:
                assert set(range(lo, hi)) == need and set(range(flo, fhi)) == full, (layout, lo, flo, fhi, hi)


@gpu_only
@parametrize("limit", [math.pi, 100 * math.pi, 1e4, 4e5, 2e7])
def test_gpu_fast_cos_sin_accuracy(limit):
    """PTX cos.approx / sin.approx after the reduction: within 2^-19 absolute at any angle up to 2e7."""
    ce, se, _ = trig_errors(limit, fast=True, n=1 << 20)
    assert ce <= 2 ** -19 and se <= 2 ** -19, (ce, se)


@gpu_only
def test_gpu_fast_pow():
    for alpha in (0.1, 0.5):
        test_scaled_pow(alpha, fast=True)


def numerics() -> dict:
    """Measured accuracy of the helpers: max |cos/sin error| vs fp64 per angle range, and the pow error
    in ulps per alpha over every integer distance up to 128k, for each twin this device can run."""
    twins = [False, True] if GPU else [False]
    limits = [math.pi, 100 * math.pi, 1e3, 1e4, 1e5, 4e5, 1e6, 2e7, 5e7]
    dist = torch.arange(1, 131073, dtype=torch.float32, device=DEVICE)
    table = {}
    for fast in twins:
        name = "fast_ptx_approx" if fast else ("libdevice" if GPU else "interpreter_numpy")
        trig = {f"{lim:.6g}": dict(zip(("cos_abs_err", "sin_abs_err", "max_abs_reduced"), trig_errors(lim, fast)))
                for lim in limits}
        pw = {str(a): dict(max_ulps=pow_ulps(dist, a, fast)[1].max().item()) for a in (0.05, 0.1, 0.25, 0.5, 0.9)}
        table[name] = dict(trig=trig, pow=pw)
    return table
