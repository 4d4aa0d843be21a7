"""Backward kernels of the fused TAPA attention: preprocess, dK/dV, dQ.

With S = a*c (natural-log logits), a = q_A.k_A/sqrt(d_amp), c = cos(psi), s = sin(psi),
psi = w*phi_raw and w = 2*pi*|m-n|^alpha/sqrt(d_phase), P = exp(S - lse), dP = dO.V^T,
delta = rowsum(O*dO) (minus dlse when the LSE itself receives a gradient) and dS = P*(dP - delta):

    dV   = P^T dO
    dq_A = (dS*c) k_A / sqrt(d_amp)           dk_A = (dS*c)^T q_A / sqrt(d_amp)
    G    = -dS*a*s*w      (the kernels carry w in turns, w/(2*pi), and the sign and 2*pi go to the epilogues)
    quadratic: dq_P = G k_P,  dk_P = G^T q_P
    linear:    dq_P = rowsum(G) in every phase column, dk_P = colsum(G) likewise

Two kernels, no atomics: dK/dV loops over query blocks (and over the query heads of a GQA group, so
repeated K/V is never materialised and dK/dV need no cross-program reduction); dQ loops over key blocks.
Why not one kernel with atomic dQ adds: it would need an fp32 dQ buffer (2 GiB at 128k tokens x 32 heads
x 128 dims), be non-deterministic, and pay L2 atomic traffic of one (BM, D) fp32 tile per visited tile.
The price is recomputing P (pow, cos, sin, exp2) in both kernels; docs/kernel.md says how to measure
whether that dominates on a given GPU.

Works from any O and LSE that belong to q (the merged output of ring attention included): rows with
lse = -inf (no kept key anywhere) get P = 0 and zero gradients.
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from .tapa_triton_args import Configs, Problem
from .tapa_triton_fwd import SCAN_BLOCKS, check_grid, strides3
from .tapa_triton_jit import (LOG2E, TWO_PI, distance, keep_mask, load_ids, load_split, masked_load,
                              own_block, phase_turns, rel_float, rel_ids, stage_range, tapa_cos, tapa_sin)

DELTA_BLOCK = 64  # rows per program of the preprocess kernel


@triton.jit
def _bwd_preprocess_kernel(O, DO, DLSE, DELTA, s_ob, s_oh, s_on, s_db, s_dh, s_dn, Hq, Nq,
                           HEAD_DIM: tl.constexpr, BLOCK: tl.constexpr, HAS_DLSE: tl.constexpr):
    """delta = rowsum(O * dO) in fp32 (- dlse), (B, Hq, Nq) contiguous."""
    pid_bh = tl.program_id(1)
    b = (pid_bh // Hq).to(tl.int64)
    h = (pid_bh % Hq).to(tl.int64)
    rows = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = rows < Nq
    cols = tl.arange(0, HEAD_DIM)
    o = tl.load(O + b * s_ob + h * s_oh + rows[:, None] * s_on + cols[None, :], mask=ok[:, None], other=0.0)
    do = tl.load(DO + b * s_db + h * s_dh + rows[:, None] * s_dn + cols[None, :], mask=ok[:, None], other=0.0)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    flat = pid_bh.to(tl.int64) * Nq + rows
    if HAS_DLSE:
        delta -= tl.load(DLSE + flat, mask=ok, other=0.0)
    tl.store(DELTA + flat, delta, mask=ok)


@triton.jit
def _recompute(a, phi, dist, lse, alpha, amp_scale, phase_log2_scale, FAST: tl.constexpr):
    """From the raw dot products of a tile: (c, g_scale, P) with c = cos(psi), P = exp(a*c - lse) and
    g_scale = a_raw*sin(psi)*w/(2*pi), where a_raw = q_A.k_A unscaled: dS times it is
    -G/(2*pi*amp_scale). w is taken in turns here, and the sign, 2*pi and the amplitude scale go to the
    kernels' epilogues, once per output element instead of once per tile element. Everything else
    about the angle dies here, which keeps the backward's register footprint small. lse = -inf (row
    kept no key) gives P = 0, not exp(+inf)."""
    turns, w_turns = phase_turns(phi, dist, alpha, phase_log2_scale, FAST)
    c = tapa_cos(turns, FAST)
    g_scale = (a * tapa_sin(turns, FAST)) * w_turns
    lse2 = tl.where(lse == float("-inf"), float("inf"), lse * LOG2E)
    return c, g_scale, tl.exp2((a * c) * (amp_scale * LOG2E) - lse2)


@triton.jit
def _dkdv_tiles(dk_amp, dk_ph, dv, k_amp, k_ph, k_sum, v, k_pos, k_seg,
                q_ptr, do_ptr, lse_ptr, delta_ptr, qpos_ptr, qseg_ptr, s_qn, s_don, pos_base, seg_base,
                start, stop, Nq,
                alpha, amp_scale, phase_log2_scale,
                BLOCK_M: tl.constexpr, HEAD_DIM: tl.constexpr, D_AMP: tl.constexpr,
                D_PHASE: tl.constexpr, PA: tl.constexpr, PP: tl.constexpr, CAUSAL: tl.constexpr,
                LINEAR: tl.constexpr, HAS_QPOS: tl.constexpr, HAS_SEG: tl.constexpr,
                FAST: tl.constexpr, PREC: tl.constexpr, MASKED: tl.constexpr):
    """Accumulate one key block's dK/dV over query blocks [start, stop) of one query head.

    Tiles are transposed, (BN keys, BM queries), so every product lands in the key-row accumulators.
    k_pos / k_seg are int32 relative to pos_base / seg_base (rel_ids); queries are made relative alike.
    """
    cols_a = tl.arange(0, PA)
    cols_p = tl.arange(0, PP)
    cols_v = tl.arange(0, HEAD_DIM)
    for start_m in range(start, stop, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        q_ok = offs_m < Nq
        q_col = q_ptr + offs_m[None, :] * s_qn
        q_amp = masked_load(q_col + cols_a[:, None], q_ok[None, :], cols_a[:, None] < D_AMP,
                            MASKED, PA != D_AMP)                                   # (PA, BM)
        q_ph = masked_load(q_col + D_AMP + cols_p[:, None], q_ok[None, :], cols_p[:, None] < D_PHASE,
                           MASKED, PP != D_PHASE)                                  # (PP, BM)
        a = tl.dot(k_amp, q_amp, input_precision=PREC)                             # (BN, BM)
        if LINEAR:
            phi = k_sum[:, None] + tl.sum(q_ph.to(tl.float32), 0)[None, :]
        else:
            phi = tl.dot(k_ph, q_ph, input_precision=PREC)
        q_ids = load_ids(qpos_ptr, offs_m, q_ok, HAS_QPOS, MASKED)
        dist = distance(rel_float(q_ids, pos_base)[None, :], k_pos.to(tl.float32)[:, None], CAUSAL, MASKED)
        c, g_scale, p = _recompute(a, phi, dist, masked_load(lse_ptr + offs_m, q_ok, q_ok, MASKED, False)[None, :],
                                   alpha, amp_scale, phase_log2_scale, FAST)
        if MASKED:
            q_pos = rel_ids(q_ids, pos_base)
            q_seg = rel_ids(load_ids(qseg_ptr, offs_m, q_ok, HAS_SEG), seg_base)
            keep = keep_mask(q_pos[None, :], k_pos[:, None], q_seg[None, :], k_seg[:, None],
                             q_ok[None, :], CAUSAL, HAS_SEG)
            p = tl.where(keep, p, 0.0)
        do = masked_load(do_ptr + offs_m[:, None] * s_don + cols_v[None, :], q_ok[:, None], q_ok[:, None],
                         MASKED, False)                                            # (BM, D)
        dv = tl.dot(p.to(do.dtype), do, dv, input_precision=PREC)
        dp = tl.dot(v, tl.trans(do), input_precision=PREC)                         # (BN, BM)
        delta = masked_load(delta_ptr + offs_m, q_ok, q_ok, MASKED, False)
        ds = p * (dp - delta[None, :])
        dk_amp = tl.dot((ds * c).to(q_amp.dtype), tl.trans(q_amp), dk_amp, input_precision=PREC)
        g = ds * g_scale
        if LINEAR:
            dk_ph += tl.sum(g, 1)[:, None]
        else:
            dk_ph = tl.dot(g.to(q_ph.dtype), tl.trans(q_ph), dk_ph, input_precision=PREC)
    return dk_amp, dk_ph, dv


@triton.jit(do_not_specialize=["Nq", "Nk"])
def _tapa_bwd_dkdv_kernel(
    Q, K, V, DO, LSE, DELTA, DK, DV, QPOS, s_qpos, KPOS, s_kpos, QSEG, s_qseg, KSEG, s_kseg,
    s_qb, s_qh, s_qn, s_kb, s_kh, s_kn, s_vb, s_vh, s_vn, s_dob, s_doh, s_don,
    s_dkb, s_dkh, s_dkn, s_dvb, s_dvh, s_dvn,
    Hq, Hkv, GROUP, Nq, Nk, alpha, amp_scale, phase_log2_scale,
    HEAD_DIM: tl.constexpr, D_AMP: tl.constexpr, D_PHASE: tl.constexpr, PA: tl.constexpr,
    PP: tl.constexpr, CAUSAL: tl.constexpr, LINEAR: tl.constexpr, FAST: tl.constexpr,
    HAS_QPOS: tl.constexpr, HAS_KPOS: tl.constexpr, HAS_SEG: tl.constexpr, PREC: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, SCAN: tl.constexpr,
):
    # program ids -> this key block of kv head hk; the query heads hk*GROUP ... read it (GQA)
    pid_n = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // Hkv).to(tl.int64)
    hk = (pid_bh % Hkv).to(tl.int64)
    qpos_ptr = QPOS + b * s_qpos
    qseg_ptr = QSEG + b * s_qseg
    offs_n, k_ok, k_pos, k_seg, pos_base, seg_base, lo, full_lo, full_hi, hi = own_block(
        pid_n * BLOCK_N, Nk, KPOS + b * s_kpos, KSEG + b * s_kseg, qpos_ptr, qseg_ptr, Nq,
        BLOCK_N, BLOCK_M, SCAN, False, CAUSAL, HAS_KPOS, HAS_QPOS, HAS_SEG)
    k_amp, k_ph = load_split(K + b * s_kb + hk * s_kh + offs_n[:, None] * s_kn, k_ok, D_AMP, D_PHASE, PA, PP)
    k_sum = tl.sum(k_ph.to(tl.float32), 1)
    cols_a = tl.arange(0, PA)
    cols_p = tl.arange(0, PP)
    cols_v = tl.arange(0, HEAD_DIM)
    v = tl.load(V + b * s_vb + hk * s_vh + offs_n[:, None] * s_vn + cols_v[None, :], mask=k_ok[:, None],
                other=0.0)

    dk_amp = tl.zeros([BLOCK_N, PA], dtype=tl.float32)
    dk_ph = tl.zeros([BLOCK_N, PP], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    for g in range(GROUP):
        h = hk * GROUP + g
        q_ptr = Q + b * s_qb + h * s_qh
        do_ptr = DO + b * s_dob + h * s_doh
        lse_ptr = LSE + (b * Hq + h) * Nq
        delta_ptr = DELTA + (b * Hq + h) * Nq
        for stage in tl.static_range(3):
            start, stop = stage_range(stage, lo, full_lo, full_hi, hi)
            dk_amp, dk_ph, dv = _dkdv_tiles(
                dk_amp, dk_ph, dv, k_amp, k_ph, k_sum, v, k_pos, k_seg,
                q_ptr, do_ptr, lse_ptr, delta_ptr, qpos_ptr, qseg_ptr, s_qn, s_don, pos_base, seg_base,
                start * BLOCK_M, stop * BLOCK_M, Nq, alpha, amp_scale, phase_log2_scale,
                BLOCK_M, HEAD_DIM, D_AMP, D_PHASE, PA, PP, CAUSAL, LINEAR, HAS_QPOS, HAS_SEG, FAST, PREC,
                stage != 1)

    dk_row = DK + b * s_dkb + hk * s_dkh + offs_n[:, None] * s_dkn
    tl.store(dk_row + cols_a[None, :], (dk_amp * amp_scale).to(DK.dtype.element_ty),
             mask=k_ok[:, None] & (cols_a[None, :] < D_AMP))
    tl.store(dk_row + D_AMP + cols_p[None, :], (dk_ph * (-TWO_PI * amp_scale)).to(DK.dtype.element_ty),
             mask=k_ok[:, None] & (cols_p[None, :] < D_PHASE))
    tl.store(DV + b * s_dvb + hk * s_dvh + offs_n[:, None] * s_dvn + cols_v[None, :],
             dv.to(DV.dtype.element_ty), mask=k_ok[:, None])


@triton.jit
def _dq_tiles(dq_amp, dq_ph, q_amp, q_ph, q_sum, do, lse, delta, q_pos, q_seg,
              k_ptr, v_ptr, kpos_ptr, kseg_ptr, s_kn, s_vn, pos_base, seg_base, start, stop, Nk,
              alpha, amp_scale, phase_log2_scale,
              BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr, D_AMP: tl.constexpr,
              D_PHASE: tl.constexpr, PA: tl.constexpr, PP: tl.constexpr, CAUSAL: tl.constexpr,
              LINEAR: tl.constexpr, HAS_KPOS: tl.constexpr, HAS_SEG: tl.constexpr,
              FAST: tl.constexpr, PREC: tl.constexpr, MASKED: tl.constexpr):
    """Accumulate one query block's dQ over key blocks [start, stop)."""
    cols_a = tl.arange(0, PA)
    cols_p = tl.arange(0, PP)
    cols_v = tl.arange(0, HEAD_DIM)
    for start_n in range(start, stop, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        k_ok = offs_n < Nk
        k_col = k_ptr + offs_n[None, :] * s_kn
        k_amp = masked_load(k_col + cols_a[:, None], k_ok[None, :], cols_a[:, None] < D_AMP,
                            MASKED, PA != D_AMP)                                   # (PA, BN)
        k_ph = masked_load(k_col + D_AMP + cols_p[:, None], k_ok[None, :], cols_p[:, None] < D_PHASE,
                           MASKED, PP != D_PHASE)                                  # (PP, BN)
        a = tl.dot(q_amp, k_amp, input_precision=PREC)                             # (BM, BN)
        if LINEAR:
            phi = q_sum[:, None] + tl.sum(k_ph.to(tl.float32), 0)[None, :]
        else:
            phi = tl.dot(q_ph, k_ph, input_precision=PREC)
        k_ids = load_ids(kpos_ptr, offs_n, k_ok, HAS_KPOS, MASKED)
        dist = distance(q_pos.to(tl.float32)[:, None], rel_float(k_ids, pos_base)[None, :], CAUSAL, MASKED)
        c, g_scale, p = _recompute(a, phi, dist, lse[:, None], alpha, amp_scale, phase_log2_scale, FAST)
        if MASKED:
            k_pos = rel_ids(k_ids, pos_base)
            k_seg = rel_ids(load_ids(kseg_ptr, offs_n, k_ok, HAS_SEG), seg_base)
            keep = keep_mask(q_pos[:, None], k_pos[None, :], q_seg[:, None], k_seg[None, :],
                             k_ok[None, :], CAUSAL, HAS_SEG)
            p = tl.where(keep, p, 0.0)
        v = masked_load(v_ptr + offs_n[None, :] * s_vn + cols_v[:, None], k_ok[None, :], k_ok[None, :],
                        MASKED, False)                                             # (D, BN)
        dp = tl.dot(do, v, input_precision=PREC)                                   # (BM, BN)
        ds = p * (dp - delta[:, None])
        dq_amp = tl.dot((ds * c).to(k_amp.dtype), tl.trans(k_amp), dq_amp, input_precision=PREC)
        g = ds * g_scale
        if LINEAR:
            dq_ph += tl.sum(g, 1)[:, None]
        else:
            dq_ph = tl.dot(g.to(k_ph.dtype), tl.trans(k_ph), dq_ph, input_precision=PREC)
    return dq_amp, dq_ph


@triton.jit(do_not_specialize=["Nq", "Nk"])
def _tapa_bwd_dq_kernel(
    Q, K, V, DO, LSE, DELTA, DQ, QPOS, s_qpos, KPOS, s_kpos, QSEG, s_qseg, KSEG, s_kseg,
    s_qb, s_qh, s_qn, s_kb, s_kh, s_kn, s_vb, s_vh, s_vn, s_dob, s_doh, s_don, s_dqb, s_dqh, s_dqn,
    Hq, GROUP, Nq, Nk, alpha, amp_scale, phase_log2_scale,
    HEAD_DIM: tl.constexpr, D_AMP: tl.constexpr, D_PHASE: tl.constexpr, PA: tl.constexpr,
    PP: tl.constexpr, CAUSAL: tl.constexpr, LINEAR: tl.constexpr, FAST: tl.constexpr,
    HAS_QPOS: tl.constexpr, HAS_KPOS: tl.constexpr, HAS_SEG: tl.constexpr, PREC: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, SCAN: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // Hq).to(tl.int64)
    h = (pid_bh % Hq).to(tl.int64)
    hk = h // GROUP
    kpos_ptr = KPOS + b * s_kpos
    kseg_ptr = KSEG + b * s_kseg
    offs_m, q_ok, q_pos, q_seg, pos_base, seg_base, lo, full_lo, full_hi, hi = own_block(
        pid_m * BLOCK_M, Nq, QPOS + b * s_qpos, QSEG + b * s_qseg, kpos_ptr, kseg_ptr, Nk,
        BLOCK_M, BLOCK_N, SCAN, True, CAUSAL, HAS_QPOS, HAS_KPOS, HAS_SEG)
    q_amp, q_ph = load_split(Q + b * s_qb + h * s_qh + offs_m[:, None] * s_qn, q_ok, D_AMP, D_PHASE, PA, PP)
    q_sum = tl.sum(q_ph.to(tl.float32), 1)
    cols_a = tl.arange(0, PA)
    cols_p = tl.arange(0, PP)
    cols_v = tl.arange(0, HEAD_DIM)
    do = tl.load(DO + b * s_dob + h * s_doh + offs_m[:, None] * s_don + cols_v[None, :],
                 mask=q_ok[:, None], other=0.0)
    flat = pid_bh.to(tl.int64) * Nq + offs_m
    lse = tl.load(LSE + flat, mask=q_ok, other=float("-inf"))
    delta = tl.load(DELTA + flat, mask=q_ok, other=0.0)

    dq_amp = tl.zeros([BLOCK_M, PA], dtype=tl.float32)
    dq_ph = tl.zeros([BLOCK_M, PP], dtype=tl.float32)
    k_ptr = K + b * s_kb + hk * s_kh
    v_ptr = V + b * s_vb + hk * s_vh
    for stage in tl.static_range(3):
        start, stop = stage_range(stage, lo, full_lo, full_hi, hi)
        dq_amp, dq_ph = _dq_tiles(
            dq_amp, dq_ph, q_amp, q_ph, q_sum, do, lse, delta, q_pos, q_seg,
            k_ptr, v_ptr, kpos_ptr, kseg_ptr, s_kn, s_vn, pos_base, seg_base, start * BLOCK_N, stop * BLOCK_N,
            Nk, alpha, amp_scale, phase_log2_scale,
            BLOCK_N, HEAD_DIM, D_AMP, D_PHASE, PA, PP, CAUSAL, LINEAR, HAS_KPOS, HAS_SEG, FAST, PREC,
            stage != 1)

    dq_row = DQ + b * s_dqb + h * s_dqh + offs_m[:, None] * s_dqn
    tl.store(dq_row + cols_a[None, :], (dq_amp * amp_scale).to(DQ.dtype.element_ty),
             mask=q_ok[:, None] & (cols_a[None, :] < D_AMP))
    tl.store(dq_row + D_AMP + cols_p[None, :], (dq_ph * (-TWO_PI * amp_scale)).to(DQ.dtype.element_ty),
             mask=q_ok[:, None] & (cols_p[None, :] < D_PHASE))


def _delta(out, dout, dlse, Hq):
    B, _, Nq, D = out.shape
    delta = torch.empty((B, Hq, Nq), dtype=torch.float32, device=out.device)
    _bwd_preprocess_kernel[(triton.cdiv(Nq, DELTA_BLOCK), B * Hq)](
        out, dout, delta if dlse is None else dlse, delta, *strides3(out), *strides3(dout), Hq, Nq,
        HEAD_DIM=D, BLOCK=DELTA_BLOCK, HAS_DLSE=dlse is not None)
    return delta


def backward(p: Problem, out: torch.Tensor, lse: torch.Tensor, dout: torch.Tensor, cfgs: Configs,
             dlse: Optional[torch.Tensor] = None):
    """-> (dq, dk, dv) in the dtypes of q, k, v. out/lse may come from outside (merged ring output)."""
    B, Hq, Hkv, Nq, Nk, D = p.shape
    empty = torch.zeros if Nq == 0 or Nk == 0 else torch.empty  # kernels write every row otherwise
    dq = empty((B, Hq, Nq, D), dtype=p.q.dtype, device=p.q.device)
    dk = empty((B, Hkv, Nk, D), dtype=p.k.dtype, device=p.k.device)
    dv = empty((B, Hkv, Nk, D), dtype=p.v.dtype, device=p.v.device)
    if Nq == 0 or Nk == 0 or B * Hq == 0:
        return dq, dk, dv
    check_grid(B * Hq)
    out = out if out.stride(-1) == 1 else out.contiguous()
    dout = dout if dout.stride(-1) == 1 else dout.contiguous()
    lse = lse.float().contiguous()
    if dlse is not None:
        dlse = dlse.float().contiguous()
    delta = _delta(out, dout, dlse, Hq)
    common = (*p.ids_args(), *strides3(p.q), *strides3(p.k), *strides3(p.v), *strides3(dout))
    consts = dict(**p.scales(), **p.constexprs(), SCAN=SCAN_BLOCKS)
    c = cfgs.dkdv
    _tapa_bwd_dkdv_kernel[(triton.cdiv(Nk, c.block_n), B * Hkv)](
        p.q, p.k, p.v, dout, lse, delta, dk, dv, *common, *strides3(dk), *strides3(dv),
        Hq, Hkv, Hq // Hkv, Nq, Nk, **consts, BLOCK_M=c.block_m, BLOCK_N=c.block_n,
        num_warps=c.num_warps, num_stages=c.num_stages)
    c = cfgs.dq
    _tapa_bwd_dq_kernel[(triton.cdiv(Nq, c.block_m), B * Hq)](
        p.q, p.k, p.v, dout, lse, delta, dq, *common, *strides3(dq),
        Hq, Hq // Hkv, Nq, Nk, **consts, BLOCK_M=c.block_m, BLOCK_N=c.block_n,
        num_warps=c.num_warps, num_stages=c.num_stages)
    return dq, dk, dv
