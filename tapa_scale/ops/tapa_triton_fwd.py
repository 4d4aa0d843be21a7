"""Forward kernel of the fused TAPA attention: writes O and the fp32 log-sum-exp.

One program per (query block, batch * query head). It loads its queries once, decides from per-block
position/segment bounds which key blocks can hold a kept pair (tapa_triton_jit.visit_range), and walks
them in three stages: masked blocks before the unmasked run, the unmasked run (no mask work at all:
for causal self-attention that is everything left of the diagonal), masked blocks after it (the
diagonal band and the key tail). Fully masked blocks are never loaded.

Per tile: two tl.dot of width d_amp (amplitude) and d_phase (phase; a row-sum for the linear phase),
the phase |m-n|^alpha*phi in turns, cos of 2*pi times it, and an exp2-based online softmax (log2(e)
folded into the amplitude scale). Accumulation is fp32; P is cast to V's dtype for the P.V product, as in
FlashAttention.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .tapa_triton_args import KernelConfig, Problem
from .tapa_triton_jit import (LN2, LOG2E, distance, keep_mask, load_ids, load_split, masked_load,
                              own_block, phase_turns, rel_float, rel_ids, stage_range, tapa_cos)

SCAN_BLOCKS = 16  # key blocks whose position bounds one visit_range step reads


@triton.jit
def _fwd_tiles(acc, m_i, l_i, q_amp, q_ph, q_sum, q_pos, q_seg,
               k_ptr, v_ptr, kpos_ptr, kseg_ptr, s_kn, s_vn, pos_base, seg_base, start, stop, Nk,
               alpha, amp_scale_log2, phase_log2_scale,
               BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr, D_AMP: tl.constexpr,
               D_PHASE: tl.constexpr, PA: tl.constexpr, PP: tl.constexpr, CAUSAL: tl.constexpr,
               LINEAR: tl.constexpr, HAS_KPOS: tl.constexpr, HAS_SEG: tl.constexpr,
               FAST: tl.constexpr, PREC: tl.constexpr, MASKED: tl.constexpr):
    """Online-softmax update over key blocks [start, stop). MASKED adds tail/causal/segment masks.

    q_pos / q_seg are int32 relative to pos_base / seg_base (rel_ids); keys are made relative alike."""
    cols_a = tl.arange(0, PA)
    cols_p = tl.arange(0, PP)
    cols_v = tl.arange(0, HEAD_DIM)
    for start_n in range(start, stop, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        k_ok = offs_n < Nk
        # Keys as columns, (PA, BN) and (PP, BN), so each tl.dot yields the (BM, BN) tile directly.
        k_row = k_ptr + offs_n[None, :] * s_kn
        k_amp = masked_load(k_row + cols_a[:, None], k_ok[None, :], cols_a[:, None] < D_AMP,
                            MASKED, PA != D_AMP)
        k_ph = masked_load(k_row + D_AMP + cols_p[:, None], k_ok[None, :], cols_p[:, None] < D_PHASE,
                           MASKED, PP != D_PHASE)
        a = tl.dot(q_amp, k_amp, input_precision=PREC)
        if LINEAR:
            phi = q_sum[:, None] + tl.sum(k_ph.to(tl.float32), 0)[None, :]
        else:
            phi = tl.dot(q_ph, k_ph, input_precision=PREC)
        k_ids = load_ids(kpos_ptr, offs_n, k_ok, HAS_KPOS, MASKED)
        dist = distance(q_pos.to(tl.float32)[:, None], rel_float(k_ids, pos_base)[None, :], CAUSAL, MASKED)
        turns, _ = phase_turns(phi, dist, alpha, phase_log2_scale, FAST)
        # (BM, BN) logits before their scale: the scale (amp_scale_log2 > 0, log2 units) commutes with the
        # row max and fuses with the shift into one multiply-add per element
        x = a * tapa_cos(turns, FAST)
        if MASKED:
            k_pos = rel_ids(k_ids, pos_base)
            k_seg = rel_ids(load_ids(kseg_ptr, offs_n, k_ok, HAS_SEG), seg_base)
            keep = keep_mask(q_pos[:, None], k_pos[None, :], q_seg[:, None], k_seg[None, :],
                             k_ok[None, :], CAUSAL, HAS_SEG)
            x = tl.where(keep, x, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(x, 1) * amp_scale_log2)
        # A row with nothing kept yet has m_new = -inf: shift by 0 so p = 0 and no inf - inf appears.
        m_shift = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.exp2(x * amp_scale_log2 - m_shift[:, None])
        corr = tl.exp2(m_i - m_shift)
        l_i = l_i * corr + tl.sum(p, 1)
        v = masked_load(v_ptr + offs_n[:, None] * s_vn + cols_v[None, :], k_ok[:, None], k_ok[:, None],
                        MASKED, False)
        acc = tl.dot(p.to(v.dtype), v, acc * corr[:, None], input_precision=PREC)
        m_i = m_new
    return acc, m_i, l_i


@triton.jit(do_not_specialize=["Nq", "Nk"])
def _tapa_fwd_kernel(
    Q, K, V, O, LSE, QPOS, s_qpos, KPOS, s_kpos, QSEG, s_qseg, KSEG, s_kseg,
    s_qb, s_qh, s_qn, s_kb, s_kh, s_kn, s_vb, s_vh, s_vn, s_ob, s_oh, s_on,
    Hq, GROUP, Nq, Nk, alpha, amp_scale, phase_log2_scale,
    HEAD_DIM: tl.constexpr, D_AMP: tl.constexpr, D_PHASE: tl.constexpr, PA: tl.constexpr,
    PP: tl.constexpr, CAUSAL: tl.constexpr, LINEAR: tl.constexpr, FAST: tl.constexpr,
    HAS_QPOS: tl.constexpr, HAS_KPOS: tl.constexpr, HAS_SEG: tl.constexpr, PREC: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, SCAN: tl.constexpr,
):
    # program ids -> this block's rows, its query head h and the shared kv head h // GROUP (GQA)
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // Hq).to(tl.int64)
    h = (pid_bh % Hq).to(tl.int64)
    hk = h // GROUP
    kpos_ptr = KPOS + b * s_kpos
    kseg_ptr = KSEG + b * s_kseg
    # this block's rows, their positions relative to its first one (distances exact in fp32 for spans
    # below 2**24), and which key blocks to visit, from its position / segment bounds
    offs_m, q_ok, q_pos, q_seg, pos_base, seg_base, lo, full_lo, full_hi, hi = own_block(
        pid_m * BLOCK_M, Nq, QPOS + b * s_qpos, QSEG + b * s_qseg, kpos_ptr, kseg_ptr, Nk,
        BLOCK_M, BLOCK_N, SCAN, True, CAUSAL, HAS_QPOS, HAS_KPOS, HAS_SEG)
    # queries, loaded once: amplitude (BM, PA) and phase (BM, PP) parts, padded columns are zero
    q_amp, q_ph = load_split(Q + b * s_qb + h * s_qh + offs_m[:, None] * s_qn, q_ok, D_AMP, D_PHASE, PA, PP)
    q_sum = tl.sum(q_ph.to(tl.float32), 1)  # linear phase only; cheap, once per program

    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    k_ptr = K + b * s_kb + hk * s_kh
    v_ptr = V + b * s_vb + hk * s_vh
    amp_scale_log2 = amp_scale * LOG2E
    for stage in tl.static_range(3):
        start, stop = stage_range(stage, lo, full_lo, full_hi, hi)
        acc, m_i, l_i = _fwd_tiles(
            acc, m_i, l_i, q_amp, q_ph, q_sum, q_pos, q_seg, k_ptr, v_ptr, kpos_ptr, kseg_ptr,
            s_kn, s_vn, pos_base, seg_base, start * BLOCK_N, stop * BLOCK_N, Nk, alpha, amp_scale_log2,
            phase_log2_scale, BLOCK_N, HEAD_DIM, D_AMP, D_PHASE, PA, PP, CAUSAL, LINEAR, HAS_KPOS,
            HAS_SEG, FAST, PREC, stage != 1)

    # epilogue: a row that kept no key has l = 0 -> out 0, lse -inf (context parallelism merges on it)
    has_key = l_i > 0.0
    l_safe = tl.where(has_key, l_i, 1.0)
    out = acc / l_safe[:, None]
    lse = tl.where(has_key, (m_i + tl.log2(l_safe)) * LN2, float("-inf"))
    cols_v = tl.arange(0, HEAD_DIM)
    o_ptrs = O + b * s_ob + h * s_oh + offs_m[:, None] * s_on + cols_v[None, :]
    tl.store(o_ptrs, out.to(O.dtype.element_ty), mask=q_ok[:, None])
    tl.store(LSE + pid_bh.to(tl.int64) * Nq + offs_m, lse, mask=q_ok)


def strides3(t: torch.Tensor):
    """(batch, head, token) strides of a (B, H, N, D) tensor whose last dim is contiguous."""
    return t.stride(0), t.stride(1), t.stride(2)


def check_grid(n_rows: int) -> None:
    if n_rows > 65535:
        raise ValueError(f"batch * heads = {n_rows} exceeds the CUDA grid limit 65535; split the batch")


def forward(p: Problem, cfg: KernelConfig):
    """Launch the forward kernel: -> out (B, Hq, Nq, D) in q's dtype, lse (B, Hq, Nq) fp32 (natural log)."""
    B, Hq, Hkv, Nq, Nk, D = p.shape
    out = torch.empty((B, Hq, Nq, D), dtype=p.q.dtype, device=p.q.device)
    lse = torch.empty((B, Hq, Nq), dtype=torch.float32, device=p.q.device)
    if Nq == 0 or B * Hq == 0:
        return out, lse
    check_grid(B * Hq)
    grid = (triton.cdiv(Nq, cfg.block_m), B * Hq)
    _tapa_fwd_kernel[grid](
        p.q, p.k, p.v, out, lse, *p.ids_args(),
        *strides3(p.q), *strides3(p.k), *strides3(p.v), *strides3(out),
        Hq, Hq // Hkv, Nq, Nk, **p.scales(), **p.constexprs(),
        BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, SCAN=SCAN_BLOCKS,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    return out, lse
