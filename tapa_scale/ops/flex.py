"""A fused path for the dot-product encodings (RoPE family, NoPE, ALiBi) with packed documents or explicit
positions: torch's FlexAttention (torch.nn.attention.flex_attention).

SDPA's flash/cuDNN kernels take only a plain causal mask, so packed documents (segment ids) or shuffled
positions would otherwise fall back to the chunked PyTorch attention (tapa_scale/ops/chunked.py), and a
GPU comparison would pit the fused TAPA kernel against a slow baseline. FlexAttention compiles the same
masking into one kernel: a block mask of "same document and key position <= query position" (the
chunked attention's rule, so a row that keeps no key gives 0), with ALiBi's -slope_h * |m - n| as a score
modification. q and k arrive already rotated. On CUDA the function is compiled once per process
(torch.compile); elsewhere FlexAttention runs its unfused reference, which is what the CPU tests use.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Optional

import torch


@lru_cache(maxsize=None)
def _compiled_flex():
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


def _flex(q: torch.Tensor):
    from torch.nn.attention.flex_attention import flex_attention

    return _compiled_flex() if q.is_cuda else flex_attention


def flex_dot_product_attention(q, k, v, *, scale: float, slopes: Optional[torch.Tensor], causal: bool,
                               q_pos: torch.Tensor, k_pos: torch.Tensor, q_seg: Optional[torch.Tensor],
                               k_seg: Optional[torch.Tensor]) -> torch.Tensor:
    """q (B, Hq, Nq, D), k/v (B, Hkv, Nk, D); positions and segment ids as int64 (Bp, N) rows with
    Bp in {1, B} (chunked.as_position_rows); slopes (Hq,) for ALiBi or None. Returns (B, Hq, Nq, D)."""
    from torch.nn.attention.flex_attention import create_block_mask

    B, Hq, Nq, _ = q.shape
    Nk = k.shape[2]
    bp = max(q_pos.shape[0], k_pos.shape[0], 1 if q_seg is None else q_seg.shape[0])
    row = (lambda t, b: t[0]) if bp == 1 else (lambda t, b: t[b])

    def keep(b, h, qi, ki):
        ok = row(k_pos, b)[ki] <= row(q_pos, b)[qi] if causal else qi >= 0
        if q_seg is not None:
            ok = ok & (row(q_seg, b)[qi] == row(k_seg, b)[ki])
        return ok

    mask = create_block_mask(keep, None if bp == 1 else B, None, Nq, Nk, device=q.device)
    score_mod = None
    if slopes is not None:
        slopes = slopes.to(device=q.device, dtype=torch.float32)

        def score_mod(score, b, h, qi, ki):
            return score - slopes[h] * (row(q_pos, b)[qi] - row(k_pos, b)[ki]).abs()
    return _flex(q)(q, k, v, score_mod=score_mod, block_mask=mask, scale=scale, enable_gqa=Hq != k.shape[1])
