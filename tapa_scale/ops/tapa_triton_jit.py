"""Small @triton.jit building blocks shared by the fused TAPA kernels (forward and backward).

Each helper is run alone by a tiny test kernel under TRITON_INTERPRET=1 (tests/ops/test_tapa_triton.py),
so a wrong helper fails on its own rather than inside an attention diff. Kernels that use them live in
tapa_triton_fwd.py and tapa_triton_bwd.py; the math they implement is tapa_reference.py's.

Switches are constexpr flags. FAST selects the GPU fast path (PTX `cos.approx` / `sin.approx` /
`lg2.approx` / `ex2.approx` / `cvt.rni` through inline asm); FAST=False is the interpreter-safe twin
(tl.cos, tl.sin, tl.log2, tl.exp2, tl.floor: libdevice on a GPU). The phase is carried in turns
(1 turn = 2*pi rad) and both twins reduce it to an angle in [-pi, pi] the same way, so the
interpreter tests exercise the range reduction the GPU fast path relies on.
"""
from __future__ import annotations

import math

import triton
import triton.language as tl

LOG2E: tl.constexpr = tl.constexpr(1.4426950408889634)
LN2: tl.constexpr = tl.constexpr(0.6931471805599453)
TWO_PI: tl.constexpr = tl.constexpr(2.0 * math.pi)
# Sentinels for min/max over masked position/segment ids (int64).
ID_BIG: tl.constexpr = tl.constexpr(2**62)


# ----------------------------------------------------------------------------------------------------
# transcendental twins
# ----------------------------------------------------------------------------------------------------
@triton.jit
def _rint_approx(x):
    return tl.inline_asm_elementwise("cvt.rni.f32.f32 $0, $1;", "=r,r", [x],
                                     dtype=tl.float32, is_pure=True, pack=1)


@triton.jit
def reduce_turns(t, FAST: tl.constexpr):
    """A phase t in turns (1 turn = 2*pi rad) as an angle in [-pi, pi] rad: 2*pi * (t - round(t)).

    t - round(t) is exact in fp32 (Sterbenz) for |t| < 2**22 turns (2.6e7 rad), so the one rounding is
    the final product with 2*pi: at most ulp(pi)/2 = 1.2e-7 rad. Working in turns costs a round and a
    subtraction, where a Cody-Waite reduction of radians needs four multiply-adds. FAST rounds half to
    even (cvt.rni), the interpreter-safe twin rounds half up (floor(t + 0.5), also exact): either
    remainder lies in [-0.5, 0.5]."""
    if FAST:
        k = _rint_approx(t)
    else:
        k = tl.floor(t + 0.5)
    return (t - k) * TWO_PI


@triton.jit
def _cos_approx(x):
    return tl.inline_asm_elementwise("cos.approx.ftz.f32 $0, $1;", "=r,r", [x],
                                     dtype=tl.float32, is_pure=True, pack=1)


@triton.jit
def _sin_approx(x):
    return tl.inline_asm_elementwise("sin.approx.ftz.f32 $0, $1;", "=r,r", [x],
                                     dtype=tl.float32, is_pure=True, pack=1)


@triton.jit
def _log2_approx(x):
    return tl.inline_asm_elementwise("lg2.approx.ftz.f32 $0, $1;", "=r,r", [x],
                                     dtype=tl.float32, is_pure=True, pack=1)


@triton.jit
def _exp2_approx(x):
    return tl.inline_asm_elementwise("ex2.approx.ftz.f32 $0, $1;", "=r,r", [x],
                                     dtype=tl.float32, is_pure=True, pack=1)


@triton.jit
def tapa_cos(t, FAST: tl.constexpr):
    """cos(2*pi*t) for a phase t in turns, |t| < 2**22 (see reduce_turns)."""
    r = reduce_turns(t, FAST)
    if FAST:
        # cos.approx.f32 is accurate to ~2^-20.5 absolute only on a bounded range: reduce first.
        y = _cos_approx(r)
    else:
        y = tl.cos(r)
    return y


@triton.jit
def tapa_sin(t, FAST: tl.constexpr):
    """sin(2*pi*t), same reduction and twins as tapa_cos (the backward needs both)."""
    r = reduce_turns(t, FAST)
    if FAST:
        y = _sin_approx(r)
    else:
        y = tl.sin(r)
    return y


@triton.jit
def scaled_pow(dist, alpha, log2_scale, FAST: tl.constexpr):
    """scale * dist**alpha for dist >= 0 (0 at dist == 0, alpha > 0); log2_scale = log2(scale).

    Written as exp2(alpha*log2(dist) + log2_scale): no `**` on tensors in Triton, and the constant
    1/sqrt(d_phase) of the phase folds into the exponent for free.
    """
    if FAST:
        # lg2.approx(+0) = -inf and ex2.approx(-inf) = +0 (PTX ISA): dist = 0 gives 0 with no select,
        # which saves a compare and two selects per tile element
        y = _exp2_approx(alpha * _log2_approx(dist) + log2_scale)
    else:
        pos = dist > 0.0
        safe = tl.where(pos, dist, 1.0)  # keeps log2(0) = -inf (and numpy's warning) out of the tile
        y = tl.where(pos, tl.exp2(alpha * tl.log2(safe) + log2_scale), 0.0)
    return y


# ----------------------------------------------------------------------------------------------------
# ids, masks, tiles
# ----------------------------------------------------------------------------------------------------
@triton.jit
def load_ids(ptr, offs, valid, HAS: tl.constexpr, MASK: tl.constexpr = True):
    """Positions / segment ids at offs as int64; without a tensor (HAS=False) the ids are offs (arange).
    MASK=False: every offs is known to be in range (the tile loops' unmasked stage)."""
    if HAS and MASK:
        ids = tl.load(ptr + offs, mask=valid, other=0).to(tl.int64)
    elif HAS:
        ids = tl.load(ptr + offs).to(tl.int64)
    else:
        ids = offs.to(tl.int64)
    return ids


@triton.jit
def rel_ids(ids, base):
    """int64 ids - base as int32 (clamped, which keeps their order): per-tile masks and distances then
    work on 32-bit values, halving the registers of the broadcast (BM, BN) comparisons. Exact while a
    block's own positions span less than 2**31."""
    d = tl.minimum(tl.maximum(ids - base, -2147483647), 2147483647)
    return d.to(tl.int32)


@triton.jit
def rel_float(ids, base):
    """int64 ids - base as fp32, for distances in the tile loops: exact below 2**24 and without
    rel_ids' clamping, which costs four 64-bit compare/select pairs per id (the masks keep rel_ids)."""
    return (ids - base).to(tl.float32)


@triton.jit
def distance(q_pos, k_pos, CAUSAL: tl.constexpr, MASKED: tl.constexpr):
    """|q_pos - k_pos| in fp32 (broadcast). A causal tile visited without masks has every k_pos <= q_pos
    (visit_range), so there the abs, one instruction per element, is left out."""
    d = q_pos - k_pos
    if MASKED or not CAUSAL:
        d = tl.abs(d)
    return d


@triton.jit
def id_bounds(ids, valid):
    """(min, max) of ids over valid entries along the last axis (sentinels where nothing is valid)."""
    lo = tl.min(tl.where(valid, ids, ID_BIG), axis=len(ids.shape) - 1)
    hi = tl.max(tl.where(valid, ids, -ID_BIG), axis=len(ids.shape) - 1)
    return lo, hi


@triton.jit
def keep_mask(q_pos, k_pos, q_seg, k_seg, valid, CAUSAL: tl.constexpr, HAS_SEG: tl.constexpr):
    """Which (query, key) pairs the softmax keeps: valid (in range) & causal & same segment.

    Inputs broadcast to the tile's shape; q_seg / k_seg are ignored without segments."""
    keep = valid
    if CAUSAL:
        keep = keep & (k_pos <= q_pos)
    if HAS_SEG:
        keep = keep & (q_seg == k_seg)
    return keep


@triton.jit
def masked_load(ptrs, mask_a, mask_b, USE_A: tl.constexpr, USE_B: tl.constexpr):
    """tl.load with only the masks a stage needs (constexpr), zero where masked."""
    if USE_A and USE_B:
        x = tl.load(ptrs, mask=mask_a & mask_b, other=0.0)
    elif USE_A:
        x = tl.load(ptrs, mask=mask_a, other=0.0)
    elif USE_B:
        x = tl.load(ptrs, mask=mask_b, other=0.0)
    else:
        x = tl.load(ptrs)
    return x


@triton.jit
def phase_turns(phi, dist, alpha, phase_log2_scale, FAST: tl.constexpr):
    """(t, w): the phase in turns t = w * phi_raw (phi_raw = q_P.k_P unscaled), w = dist**alpha/sqrt(d_phase)
    (phase_log2_scale = log2(1/sqrt(d_phase))); the angle of the score's cos (docs/tapa.md) is 2*pi*t."""
    w = scaled_pow(dist, alpha, phase_log2_scale, FAST)
    return phi * w, w


# ----------------------------------------------------------------------------------------------------
# block skipping from per-block position / segment bounds
# ----------------------------------------------------------------------------------------------------
@triton.jit
def visit_range(self_pmin, self_pmax, self_smin, self_smax, pos_ptr, seg_ptr, n_other,
                BLOCK: tl.constexpr, SCAN: tl.constexpr, SELF_IS_Q: tl.constexpr,
                CAUSAL: tl.constexpr, HAS_POS: tl.constexpr, HAS_SEG: tl.constexpr):
    """Which blocks of the other side (keys for a query block, queries for a key block) to visit.

    Returns block indices (lo, full_lo, full_hi, hi): visit [lo, hi) and skip the rest, because
    every pair there is masked (causal: all other positions on the wrong side; segments: disjoint id
    ranges). Blocks in [full_lo, full_hi) need no mask at all (complete, causally fully visible, one
    shared segment), the others in [lo, hi) are visited with masks. Decided from per-block min/max of
    positions and segment ids, so the skipping is exact for monotone positions and the masking is
    correct for any positions. When the unmasked blocks are not contiguous, full_lo = full_hi = hi.
    """
    n_blocks = tl.cdiv(n_other, BLOCK)
    if CAUSAL or HAS_SEG:
        lo = n_blocks
        hi = n_blocks * 0
        full_lo = n_blocks
        full_hi = n_blocks * 0
        n_full = n_blocks * 0
        for c in range(0, n_blocks, SCAN):
            jb = c + tl.arange(0, SCAN)                                     # (SCAN,) block ids
            offs = jb[:, None] * BLOCK + tl.arange(0, BLOCK)[None, :]       # (SCAN, BLOCK)
            valid = offs < n_other
            need = jb < n_blocks
            full = need & ((jb + 1) * BLOCK <= n_other)
            if CAUSAL:
                pmin, pmax = id_bounds(load_ids(pos_ptr, offs, valid, HAS_POS), valid)
                if SELF_IS_Q:   # self = query block: keys at or before some of its queries
                    need = need & (pmin <= self_pmax)
                    full = full & (pmax <= self_pmin)
                else:           # self = key block: queries at or after some of its keys
                    need = need & (pmax >= self_pmin)
                    full = full & (pmin >= self_pmax)
            if HAS_SEG:
                smin, smax = id_bounds(load_ids(seg_ptr, offs, valid, True), valid)
                need = need & (smin <= self_smax) & (smax >= self_smin)
                full = full & (smin == smax) & (self_smin == self_smax) & (smin == self_smin)
            full = full & need
            lo = tl.minimum(lo, tl.min(tl.where(need, jb, n_blocks)))
            hi = tl.maximum(hi, tl.max(tl.where(need, jb + 1, 0)))
            full_lo = tl.minimum(full_lo, tl.min(tl.where(full, jb, n_blocks)))
            full_hi = tl.maximum(full_hi, tl.max(tl.where(full, jb + 1, 0)))
            n_full += tl.sum(full.to(tl.int32))
        one_run = (n_full > 0) & (n_full == full_hi - full_lo)
        full_lo = tl.where(one_run, full_lo, hi)
        full_hi = tl.where(one_run, full_hi, hi)
    else:
        lo = n_blocks * 0
        hi = n_blocks
        full_lo = n_blocks * 0
        full_hi = n_other // BLOCK
    return lo, full_lo, full_hi, hi


# ----------------------------------------------------------------------------------------------------
# a program's own block (the prologue shared by the three attention kernels)
# ----------------------------------------------------------------------------------------------------
@triton.jit
def own_block(start, n, pos_ptr, seg_ptr, other_pos_ptr, other_seg_ptr, n_other,
              BLOCK: tl.constexpr, OTHER_BLOCK: tl.constexpr, SCAN: tl.constexpr, SELF_IS_Q: tl.constexpr,
              CAUSAL: tl.constexpr, HAS_POS: tl.constexpr, HAS_OTHER_POS: tl.constexpr,
              HAS_SEG: tl.constexpr):
    """This program's rows [start, start + BLOCK) of one side (queries or keys) and which blocks of the
    other side it visits.

    Returns (offs, ok, pos, seg, pos_base, seg_base, lo, full_lo, full_hi, hi): pos / seg as int32
    relative to pos_base / seg_base (rel_ids; the tile loops make the other side relative alike), and
    visit_range's block indices."""
    offs = start + tl.arange(0, BLOCK)
    ok = offs < n
    pos = load_ids(pos_ptr, offs, ok, HAS_POS)
    seg = load_ids(seg_ptr, offs, ok, HAS_SEG)
    pmin, pmax = id_bounds(pos, ok)
    smin, smax = id_bounds(seg, ok)
    lo, full_lo, full_hi, hi = visit_range(pmin, pmax, smin, smax, other_pos_ptr, other_seg_ptr, n_other,
                                           OTHER_BLOCK, SCAN, SELF_IS_Q, CAUSAL, HAS_OTHER_POS, HAS_SEG)
    return offs, ok, rel_ids(pos, pmin), rel_ids(seg, smin), pmin, smin, lo, full_lo, full_hi, hi


@triton.jit
def load_split(rows, ok, D_AMP: tl.constexpr, D_PHASE: tl.constexpr, PA: tl.constexpr, PP: tl.constexpr):
    """Amplitude (R, PA) and phase (R, PP) parts of R head vectors; rows: (R, 1) pointers to their first
    element, ok: (R,). Padding columns (PA > D_AMP, PP > D_PHASE) and rows not ok are zero."""
    cols_a = tl.arange(0, PA)
    cols_p = tl.arange(0, PP)
    amp = masked_load(rows + cols_a[None, :], ok[:, None], cols_a[None, :] < D_AMP, True, PA != D_AMP)
    ph = masked_load(rows + D_AMP + cols_p[None, :], ok[:, None], cols_p[None, :] < D_PHASE, True,
                     PP != D_PHASE)
    return amp, ph


@triton.jit
def stage_range(stage: tl.constexpr, lo, full_lo, full_hi, hi):
    """Blocks [start, stop) of a loop stage: 0 the masked blocks before the unmasked run, 1 the run
    itself (no mask work), 2 the masked blocks after it."""
    if stage == 0:
        start, stop = lo, full_lo
    elif stage == 1:
        start, stop = full_lo, full_hi
    else:
        start, stop = full_hi, hi
    return start, stop
