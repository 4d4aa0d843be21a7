"""Softmax attention chunked over queries: the shared machinery of every reference attention.

`chunked_attention` takes a score function (TAPA's, or a dot product with an optional bias) and does
what all of them share: grouped-query layout, causal masking by global positions, per-document
(segment) masking, a float32 softmax with its log-sum-exp, and the weighted sum of V. It walks the
queries in chunks and recomputes each chunk in backward (activation checkpointing), so neither the
forward nor the backward pass ever holds more than one (B, H, chunk, Nk) block of scores.

Layout: q (B, Hq, Nq, D), k and v (B, Hkv, Nk, D), Hq a multiple of Hkv. Inside, queries are viewed
as (B, Hkv, G, Nq, D) with G = Hq // Hkv so repeated K/V is never materialised.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
from torch.utils.checkpoint import checkpoint

# score_fn(q, k, q_pos, k_pos) -> scores
#   q (B, Hkv, G, C, D) and k (B, Hkv, Nk, D) in the compute dtype;
#   q_pos (Bp, C) and k_pos (Bp, Nk) int64 with Bp in {1, B};
#   returns scores (B, Hkv, G, C, Nk) in the compute dtype (softmax logits, natural-log units).
ScoreFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def as_position_rows(ids: Optional[torch.Tensor], batch: int, n: int, device, name: str) -> torch.Tensor:
    """Positions or segment ids given as (N,) or (B, N) -> int64 (Bp, N) with Bp in {1, B}; None -> arange."""
    if ids is None:
        return torch.arange(n, device=device, dtype=torch.int64)[None]
    if ids.dtype.is_floating_point or ids.dtype == torch.bool:
        raise ValueError(f"{name} must be an integer tensor, got {ids.dtype}")
    if ids.dim() == 1:
        ids = ids[None]
    if ids.dim() != 2 or ids.shape[-1] != n or ids.shape[0] not in (1, batch):
        raise ValueError(f"{name} must have shape ({n},) or ({batch}, {n}), got {tuple(ids.shape)}")
    return ids.to(device=device, dtype=torch.int64)


def _sorted_prefix_len(k_pos: torch.Tensor, q_max: torch.Tensor) -> int:
    """Number of leading keys with position <= q_max, for one shared non-decreasing key-position row."""
    return int(torch.searchsorted(k_pos[0], q_max, right=True))


def _chunk(q, k, v, q_pos, k_pos, q_seg, k_seg, score_fn: ScoreFn, causal: bool):
    """One query chunk: q (B, Hkv, G, C, D) -> out (B, Hkv, G, C, D) fp, lse (B, Hkv, G, C) fp."""
    scores = score_fn(q, k, q_pos, k_pos)  # (B, Hkv, G, C, Nk)
    keep = None
    if causal:
        keep = k_pos[:, None, :] <= q_pos[:, :, None]  # (Bp, C, Nk)
    if q_seg is not None:
        same = k_seg[:, None, :] == q_seg[:, :, None]
        keep = same if keep is None else keep & same
    if keep is not None:
        scores = scores.masked_fill(~keep[:, None, None], float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)  # (B, Hkv, G, C); -inf where a row keeps no key
    # A row without keys gets weights exp(-inf - 0) = 0, hence output 0 (context parallelism relies on it).
    probs = torch.exp(scores - torch.where(torch.isfinite(lse), lse, 0.0)[..., None])
    return probs @ v[:, :, None], lse


def chunked_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    score_fn: ScoreFn,
    *,
    causal: bool = True,
    q_positions: Optional[torch.Tensor] = None,
    k_positions: Optional[torch.Tensor] = None,
    q_segment_ids: Optional[torch.Tensor] = None,
    k_segment_ids: Optional[torch.Tensor] = None,
    return_lse: bool = False,
    chunk_size: int = 256,
):
    """Softmax attention with an arbitrary score function, chunked over queries.

    Returns out (B, Hq, Nq, D) in q's dtype, and with return_lse also lse (B, Hq, Nq) float32
    (natural log; -inf for a query that keeps no key, whose output is 0). Scores, softmax and the
    weighted sum run in float32 (float64 when the inputs are float64).
    """
    check_qkv(q, k, v)
    B, Hq, Nq, D = q.shape
    Hkv, Nk = k.shape[1], k.shape[2]
    G = Hq // Hkv
    compute = torch.float64 if q.dtype == torch.float64 else torch.float32
    q_pos = as_position_rows(q_positions, B, Nq, q.device, "q_positions")
    k_pos = as_position_rows(k_positions, B, Nk, q.device, "k_positions")
    q_seg = k_seg = None
    if (q_segment_ids is None) != (k_segment_ids is None):
        raise ValueError("q_segment_ids and k_segment_ids must be given together")
    if q_segment_ids is not None:
        q_seg = as_position_rows(q_segment_ids, B, Nq, q.device, "q_segment_ids")
        k_seg = as_position_rows(k_segment_ids, B, Nk, q.device, "k_segment_ids")
    # With one shared, sorted key-position row, causal chunks only need the keys up to their last query.
    prefix = causal and k_pos.shape[0] == 1 and bool((k_pos[0, 1:] >= k_pos[0, :-1]).all())

    qg = q.to(compute).view(B, Hkv, G, Nq, D)  # (B, Hkv, G, Nq, D)
    kc, vc = k.to(compute), v.to(compute)
    outs, lses = [], []
    for start in range(0, Nq, chunk_size):
        stop = min(start + chunk_size, Nq)
        qp = q_pos[:, start:stop]
        qs = None if q_seg is None else q_seg[:, start:stop]
        n_keys = _sorted_prefix_len(k_pos, qp.max()) if prefix else Nk
        args = (qg[:, :, :, start:stop], kc[:, :, :n_keys], vc[:, :, :n_keys], qp, k_pos[:, :n_keys],
                qs, None if k_seg is None else k_seg[:, :n_keys], score_fn, causal)
        # A single chunk holds the same scores whether checkpointed or not: recomputing it would be waste.
        if Nq > chunk_size and torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad):
            o, lse = checkpoint(_chunk, *args, use_reentrant=False)
        else:
            o, lse = _chunk(*args)
        outs.append(o)
        lses.append(lse)
    out = torch.cat(outs, dim=3).reshape(B, Hq, Nq, D).to(q.dtype)
    if not return_lse:
        return out
    return out, torch.cat(lses, dim=3).reshape(B, Hq, Nq).float()


def check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    """Shapes and dtypes every attention implementation accepts; one clear error otherwise."""
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(f"q, k, v must be (B, H, N, D); got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if k.shape != v.shape:
        raise ValueError(f"k and v must have the same shape, got {tuple(k.shape)} and {tuple(v.shape)}")
    if q.shape[0] != k.shape[0] or q.shape[3] != k.shape[3]:
        raise ValueError(f"q {tuple(q.shape)} and k {tuple(k.shape)} must share batch and head dim")
    if q.shape[1] % k.shape[1] != 0:
        raise ValueError(f"query heads ({q.shape[1]}) must be a multiple of key/value heads ({k.shape[1]})")
    allowed = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.dtype not in allowed:
            raise ValueError(f"{name} has dtype {t.dtype}; expected one of float16, bfloat16, float32, float64")
