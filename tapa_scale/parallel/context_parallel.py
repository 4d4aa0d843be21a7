"""Context parallelism for TAPA and the RoPE family: the sequence is split over the CP group and each
rank attends with its local queries to the keys of the whole sequence, at their true global positions.

Load balancing: the sequence of N tokens is cut into 2*cp chunks and rank r holds chunks r and
2*cp-1-r, so under a causal mask every rank scores the same number of (query, key) pairs.
`shard_indices` is that rule; the training step applies it to the batch (tokens, labels, positions,
document ids) and `ContextParallel` receives the local queries, keys and values of each layer.

Two ways to meet the other ranks' keys (`parallel.cp_comm`):
- "allgather": gather K/V (and positions / document ids) of the whole sequence once per layer, then one
  `attend` call; the backward reduce-scatters dK/dV to their owners. Simple; K/V of the whole
  sequence are held per layer.
- "ring": K/V blocks travel around the ring (rank r sends to r+1) while the current block is scored;
  partial results are merged by their log-sum-exp,
      lse = log sum_i exp(lse_i),   out = sum_i exp(lse_i - lse) * out_i,
  a row with no kept key in block i having out_i = 0, lse_i = -inf (weight 0). The backward walks
  the ring again, recomputes each block and backpropagates the merged output's gradient through it;
  each block's dK/dV travels with the block and arrives home after cp hops.

The attention math (tapa_scale.ops.attention) never sees ranks: it gets local queries, some keys,
and the global positions and document ids of both.
Shapes: q (B, Hq, n, D), k/v (B, Hkv, n, D) with n = N / cp local tokens; positions and document ids
(n,) or (B, n) integers, or None (positions: this rank's shard of arange(N); no documents).
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.distributed as dist

COMMS = ("allgather", "ring")


def shard_indices(seq_len: int, cp: int, rank: int, device=None) -> torch.Tensor:
    """Token indices (int64, ascending) that rank `rank` of `cp` holds: chunks rank and 2*cp-1-rank."""
    if seq_len % (2 * cp):
        raise ValueError(f"sequence length {seq_len} must be divisible by 2*cp={2 * cp}")
    c = seq_len // (2 * cp)
    first = torch.arange(rank * c, (rank + 1) * c, device=device)
    second = torch.arange((2 * cp - 1 - rank) * c, (2 * cp - rank) * c, device=device)
    return torch.cat([first, second])


def shard_sequence(x: torch.Tensor, cp: int, rank: int, dim: int = 1) -> torch.Tensor:
    """This rank's load-balanced shard of `x` along its sequence dim (a batch tensor: dim 1)."""
    if cp == 1:
        return x
    return x.index_select(dim, shard_indices(x.shape[dim], cp, rank, x.device))


def natural_order(blocks: torch.Tensor, dim: int) -> torch.Tensor:
    """Per-rank shards stacked on dim 0, (cp, ..., n, ...) -> the whole sequence (..., cp*n, ...);
    `dim` is the sequence dim of one shard. Rank j's shard is [chunk j, chunk 2*cp-1-j]; the result
    lists chunks 0 .. 2*cp-1 in order."""
    halves = [b.chunk(2, dim=dim) for b in blocks.unbind(0)]
    return torch.cat([h[0] for h in halves] + [h[1] for h in reversed(halves)], dim=dim)


def _backend(group) -> str:
    return dist.get_backend(group)


def _all_gather(x: torch.Tensor, group) -> torch.Tensor:
    """(cp, *x.shape): every rank's x, in rank order."""
    x = x.contiguous()
    out = x.new_empty((dist.get_world_size(group),) + tuple(x.shape))
    if _backend(group) == "nccl":
        dist.all_gather_into_tensor(out, x, group=group)
    else:
        dist.all_gather(list(out.unbind(0)), x, group=group)
    return out


def _reduce_scatter(x: torch.Tensor, group) -> torch.Tensor:
    """x (cp, *shape) summed over ranks; this rank's slice (shape)."""
    x = x.contiguous()
    if _backend(group) == "nccl":
        out = x.new_empty(x.shape[1:])
        dist.reduce_scatter_tensor(out, x, group=group)
        return out
    x = x.clone()  # the incoming gradient belongs to autograd: reduce a copy
    dist.all_reduce(x, group=group)  # gloo has no reduce-scatter: sum everywhere, keep our slice
    return x[dist.get_rank(group)]


class _AllGatherBlocks(torch.autograd.Function):
    """Forward: stack every rank's tensor, (cp, *shape). Backward: reduce-scatter the gradient."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return _all_gather(x, group)

    @staticmethod
    def backward(ctx, grad):
        return _reduce_scatter(grad, ctx.group), None


def _metadata(ids: Optional[torch.Tensor], group) -> Optional[torch.Tensor]:
    """Gather integer per-token ids (n,) or (B, n) of every rank: (cp, Bp, n), or None."""
    if ids is None:
        return None
    return _all_gather(ids if ids.dim() == 2 else ids[None], group)


def _positions(positions, n: int, cp: int, rank: int, group, device):
    """(local query positions, per-rank key positions (cp, Bp, n))."""
    if positions is None:
        blocks = torch.stack([shard_indices(n * cp, cp, j, device) for j in range(cp)])[:, None]
        return blocks[rank, 0], blocks
    return positions, _metadata(positions, group)


class ContextParallel:
    """The core-attention hook: context_parallel(q, k, v, attend, positions, segment_ids) -> out.

    `group` is the context-parallel process group; `comm` "allgather" or "ring". attend(q, k, v, **masks)
    is attention with the model's positional encoding (see tapa_scale.ops.attention.attention).
    attend_backward(q, k, v, out, lse, dout, **masks) -> (dq, dk, dv), optional, is a kernel backward
    that takes the output and LSE merged over all key blocks (the fused TAPA kernel has one); the ring
    then uses it instead of recomputing each block through autograd."""

    def __init__(self, group, comm: str = "allgather"):
        if comm not in COMMS:
            raise ValueError(f"context parallel comm must be one of {COMMS}, got {comm!r}")
        self.group, self.comm = group, comm

    def __call__(self, q, k, v, attend: Callable, positions=None, segment_ids=None,
                 attend_backward: Optional[Callable] = None):
        cp, rank = dist.get_world_size(self.group), dist.get_rank(self.group)
        n = q.shape[2]
        q_pos, k_pos = _positions(positions, n, cp, rank, self.group, q.device)
        k_seg = _metadata(segment_ids, self.group)
        if self.comm == "ring":
            out, _ = ring_attention(q, k, v, attend, q_pos, k_pos, segment_ids, k_seg, self.group,
                                    attend_backward=attend_backward)
            return out
        # (cp, 2, B, Hkv, n, D) in rank order -> (2, B, Hkv, N, D) in sequence order
        kv = natural_order(_AllGatherBlocks.apply(torch.stack([k, v]), self.group), dim=3)
        return attend(q, kv[0], kv[1], q_positions=q_pos, k_positions=natural_order(k_pos, dim=1),
                      q_segment_ids=segment_ids,
                      k_segment_ids=None if k_seg is None else natural_order(k_seg, dim=1))


def merge_partials(out_a, lse_a, out_b, lse_b):
    """Merge two partial attention results over disjoint key sets by their log-sum-exp.

    out (B, H, N, D) float32, lse (B, H, N) float32; a row with no kept key in a part has out 0 and
    lse -inf there, and gets weight 0 (a row with none in either part stays out 0, lse -inf)."""
    lse = torch.logaddexp(lse_a, lse_b)
    safe = torch.where(torch.isfinite(lse), lse, torch.zeros_like(lse))
    return (out_a * torch.exp(lse_a - safe)[..., None] + out_b * torch.exp(lse_b - safe)[..., None]), lse


def _exchange(send: torch.Tensor, group, tag: int):
    """Post send-to-next / receive-from-previous around the ring; returns (receive buffer, requests)."""
    cp, rank = dist.get_world_size(group), dist.get_rank(group)
    recv = torch.empty_like(send)
    ops = [dist.P2POp(dist.isend, send, dist.get_global_rank(group, (rank + 1) % cp), group, tag),
           dist.P2POp(dist.irecv, recv, dist.get_global_rank(group, (rank - 1) % cp), group, tag)]
    return recv, dist.batch_isend_irecv(ops)


def _wait(reqs) -> None:
    for req in reqs:
        req.wait()


def _block_masks(meta, j: int):
    q_pos, k_pos, q_seg, k_seg = meta
    return dict(q_positions=q_pos, k_positions=k_pos[j], q_segment_ids=q_seg,
                k_segment_ids=None if k_seg is None else k_seg[j])


def _block_grads(attend, q, k, v, masks, out, lse, dout, attend_backward=None):
    """Gradients of one key block's share of the merged output: (dq, dk, dv) in out's dtype.

    The block's (out_i, lse_i) enter the merged output as out = sum_i w_i out_i, w_i = exp(lse_i - lse),
    so dL/dout_i = w_i dout and dL/dlse_i = w_i <dout, out_i - out>; both are backpropagated through a
    recomputation of the block. A kernel backward given the merged out/lse computes the same directly."""
    if attend_backward is not None:
        grads = attend_backward(q, k, v, out.to(q.dtype), lse, dout.to(q.dtype), **masks)
        return [g.to(out.dtype) for g in grads]
    with torch.enable_grad():
        q_, k_, v_ = (t.detach().requires_grad_() for t in (q, k, v))
        o, l = attend(q_, k_, v_, return_lse=True, **masks)
        w = torch.exp(l.detach() - torch.where(torch.isfinite(lse), lse, torch.zeros_like(lse)))
        d_o = (w[..., None] * dout).to(o.dtype)
        d_l = (w * (dout * (o.detach().to(out.dtype) - out)).sum(-1)).to(l.dtype)
        grads = torch.autograd.grad((o, l), (q_, k_, v_), (d_o, d_l), allow_unused=True)
    return [torch.zeros_like(t, dtype=out.dtype) if g is None else g.to(out.dtype) for g, t in zip(grads, (q, k, v))]


class _RingAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, attend, meta, group, attend_backward):
        cp, rank = dist.get_world_size(group), dist.get_rank(group)
        acc = torch.float64 if q.dtype == torch.float64 else torch.float32  # merge precision
        kv, out, lse = torch.stack([k, v]).contiguous(), None, None
        for step in range(cp):
            reqs = []
            if step < cp - 1:  # start moving the next block before scoring this one
                nxt, reqs = _exchange(kv, group, tag=0)
            o, l = attend(q, kv[0], kv[1], return_lse=True, **_block_masks(meta, (rank - step) % cp))
            out, lse = (o.to(acc), l) if out is None else merge_partials(out, lse, o.to(acc), l)
            if reqs:
                _wait(reqs)
                kv = nxt
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.attend, ctx.meta, ctx.group, ctx.attend_backward = attend, meta, group, attend_backward
        ctx.mark_non_differentiable(lse)
        return out.to(q.dtype), lse

    @staticmethod
    def backward(ctx, dout, _dlse):
        q, k, v, out, lse = ctx.saved_tensors
        group = ctx.group
        cp, rank = dist.get_world_size(group), dist.get_rank(group)
        dout = dout.to(out.dtype)
        kv = torch.stack([k, v]).contiguous()
        dkv = torch.zeros_like(kv, dtype=out.dtype)
        dq = torch.zeros_like(q, dtype=out.dtype)
        for step in range(cp):
            reqs = []
            if step < cp - 1:
                nxt, reqs = _exchange(kv, group, tag=0)
            dq_i, dk_i, dv_i = _block_grads(ctx.attend, q, kv[0], kv[1], _block_masks(ctx.meta, (rank - step) % cp),
                                            out, lse, dout, ctx.attend_backward)
            dq += dq_i
            dkv += torch.stack([dk_i, dv_i])
            # the block's accumulated dK/dV travels with it; after cp hops it is back with its owner
            dkv_next, dreqs = _exchange(dkv, group, tag=1) if cp > 1 else (dkv, [])
            _wait(reqs + dreqs)
            dkv = dkv_next
            if reqs:
                kv = nxt
        return dq.to(q.dtype), dkv[0].to(k.dtype), dkv[1].to(v.dtype), None, None, None, None


def ring_attention(q, k, v, attend: Callable, q_positions, k_positions, q_segment_ids, k_segment_ids, group,
                   attend_backward: Optional[Callable] = None):
    """Ring context-parallel attention -> (out (B, Hq, n, D) in q's dtype, lse (B, Hq, n) float32).

    q_positions / q_segment_ids: this rank's, (n,) or (Bp, n); k_positions / k_segment_ids: every rank's,
    (cp, Bp, n) in rank order (k_segment_ids None without documents). Differentiable in q, k, v; see
    ContextParallel for attend_backward."""
    meta = (q_positions, k_positions, q_segment_ids, k_segment_ids)
    return _RingAttention.apply(q, k, v, attend, meta, group, attend_backward)
