"""TAPA attention in plain PyTorch: the one readable statement of the score that every other
implementation (the fused Triton kernel, context parallelism, the Hugging Face export) is tested against.

Token-Aware Phase Attention (Wang et al., arXiv 2509.12635, eq. 12). Each head vector of size D is split
into an amplitude part (the first d_amp = floor(theta*D + 1/2) dims, see tapa_split) and a phase part
(the other d_phase dims):

    score(m, n) = (q_A . k_A / sqrt(d_amp)) * cos(2*pi * |pos_q(m) - pos_k(n)|^alpha * phi(q, k))

    phi = q_P . k_P / sqrt(d_phase)                 phase="quadratic" (the paper's method)
    phi = (sum(q_P) + sum(k_P)) / sqrt(d_phase)     phase="linear"    (the paper's ablation)

followed by a softmax over the kept keys (causal: pos_k <= pos_q; same segment id when segments are
given) and the weighted sum of V, which keeps the full head dim. There is no other softmax scale and no
rotary embedding. Positions are global token positions, so a shard of a sequence (context parallelism)
or a packed document (positions restarting at 0) is scored exactly.

Shapes: q (B, Hq, Nq, D); k, v (B, Hkv, Nk, D) with Hq a multiple of Hkv (grouped-query attention).
Dtypes: float16, bfloat16, float32, float64 inputs; scores in float32 (float64 for float64 inputs).
Memory: chunked over queries (see chunked.py), O(B * H * chunk * Nk) in forward and backward.
"""
from __future__ import annotations

import math
from functools import partial
from typing import Optional

import torch

from .chunked import chunked_attention

PHASES = ("quadratic", "linear")


def tapa_amp_dims(head_dim: int, theta: float) -> int:
    """Amplitude dims of a head: floor(theta * head_dim + 1/2), theta*D rounded half up.

    Halves round up (theta*D = 2.5 -> 3, 1.5 -> 2), unlike Python's round(), which sends them to the
    even neighbour (2.5 -> 2, 1.5 -> 2), so that the split would grow unevenly with D. Every
    implementation (kernel, Hugging Face export, config check) uses this rule; docs/tapa.md states it.
    """
    return math.floor(theta * head_dim + 0.5)


def tapa_split(head_dim: int, theta: float) -> tuple[int, int]:
    """(d_amp, d_phase): tapa_amp_dims amplitude dims, the rest phase dims; both must be non-empty."""
    if not 0.0 < theta < 1.0:
        raise ValueError(f"theta must lie in (0, 1), got {theta}")
    d_amp = tapa_amp_dims(head_dim, theta)
    d_phase = head_dim - d_amp
    if d_amp <= 0 or d_phase <= 0:
        raise ValueError(f"theta={theta} with head_dim={head_dim} gives {d_amp} amplitude and {d_phase} "
                         f"phase dims; both parts need at least one dim (d_amp = floor(theta*D + 1/2))")
    return d_amp, d_phase


def check_tapa_args(alpha: float, theta: float, phase: str, head_dim: int) -> tuple[int, int]:
    """Validate the TAPA hyper-parameters once, for every implementation; returns tapa_split."""
    if not alpha > 0.0 or not math.isfinite(alpha):
        raise ValueError(f"alpha must be a finite number > 0, got {alpha}")
    if phase not in PHASES:
        raise ValueError(f"phase must be one of {PHASES}, got {phase!r}")
    return tapa_split(head_dim, theta)


def tapa_scores(q, k, q_pos, k_pos, *, alpha: float, theta: float, phase: str) -> torch.Tensor:
    """TAPA logits for a query chunk.

    q (B, Hkv, G, C, D), k (B, Hkv, Nk, D); q_pos (Bp, C), k_pos (Bp, Nk) int64 -> (B, Hkv, G, C, Nk).
    """
    d_amp, d_phase = tapa_split(q.shape[-1], theta)
    q_amp, q_ph = q[..., :d_amp], q[..., d_amp:]
    k_amp, k_ph = k[:, :, None, ..., :d_amp], k[:, :, None, ..., d_amp:]
    amplitude = (q_amp @ k_amp.transpose(-1, -2)) / math.sqrt(d_amp)
    if phase == "quadratic":
        phi = (q_ph @ k_ph.transpose(-1, -2)) / math.sqrt(d_phase)
    else:
        phi = (q_ph.sum(-1)[..., :, None] + k_ph.sum(-1)[..., None, :]) / math.sqrt(d_phase)
    distance = (q_pos[:, :, None] - k_pos[:, None, :]).abs().to(q.dtype)  # (Bp, C, Nk)
    # pow(0, alpha) = 0 for alpha > 0: a token's phase with itself is 0 and its score is pure amplitude.
    angle = (2 * math.pi) * distance.pow(alpha)[:, None, None] * phi
    return amplitude * torch.cos(angle)


def tapa_attention_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    alpha: float = 0.1,
    theta: float = 0.5,
    phase: str = "quadratic",
    causal: bool = True,
    q_positions: Optional[torch.Tensor] = None,
    k_positions: Optional[torch.Tensor] = None,
    q_segment_ids: Optional[torch.Tensor] = None,
    k_segment_ids: Optional[torch.Tensor] = None,
    return_lse: bool = False,
    chunk_size: int = 256,
):
    """TAPA attention, pure PyTorch. Returns out (B, Hq, Nq, D) in q's dtype, and with return_lse
    also lse (B, Hq, Nq) float32 in natural log. A query that keeps no key gets out 0 and lse -inf.
    Positions and segment ids are (N,) or (B, N) integer tensors; positions default to arange."""
    check_tapa_args(alpha, theta, phase, q.shape[-1])
    score_fn = partial(tapa_scores, alpha=float(alpha), theta=float(theta), phase=phase)
    return chunked_attention(
        q, k, v, score_fn, causal=causal, q_positions=q_positions, k_positions=k_positions,
        q_segment_ids=q_segment_ids, k_segment_ids=k_segment_ids, return_lse=return_lse,
        chunk_size=chunk_size,
    )
