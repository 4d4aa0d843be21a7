"""Rank script for test_context_parallel.py: context-parallel attention (allgather and ring) against
`attention` on the whole sequence, forward and gradients, float64, for TAPA and RoPE, with and without
packed documents; with 2 ranks also the fused TAPA kernel (Triton interpreter, float32), whose ring
backward takes the merged output and LSE. Every rank checks its own shard; any mismatch raises."""
import itertools
import os
import sys

os.environ.setdefault("TRITON_INTERPRET", "1")  # before anything imports triton: the kernel runs on CPU
from datetime import timedelta
from functools import partial

import torch
import torch.distributed as dist

from tapa_scale.ops.attention import PositionalEncoding, attention
from tapa_scale.parallel.context_parallel import ContextParallel, shard_sequence

# Inputs are float64. allgather does the same math as one process on reordered keys: a few float64 ulps
# (measured <= 6e-15). ring merges blocks by their LSE, which `attention` returns in float32 whatever the
# input dtype: merge weights exp(lse_i - lse) then carry ~|lse| * 2^-24 ~ 3e-7 relative error, which
# TAPA's phase gradients amplify (measured <= 2.1e-6 on these shapes); 1e-5 leaves 5x room and still
# catches any real mistake (a wrong position or a lost block changes results at the 1e-2 level).
TOL = {"allgather": dict(rtol=1e-9, atol=1e-9), "ring": dict(rtol=1e-5, atol=1e-5)}
# The kernel in float32 against the float64 reference: float32 rounding of scores and sums over <= 64
# keys, which TAPA's phase derivative (2*pi*|m-n|^alpha) amplifies in dq/dk: measured <= 2e-6 for out,
# <= 2e-5 for dq/dk on these shapes, the same with and without the ring; 1e-4 leaves 5x.
KERNEL_TOL = dict(rtol=1e-4, atol=1e-4)


def packed_layout(batch: int, n: int, gen):
    """Per-row document ids (3-4 documents of random lengths) and positions restarting at 0 in each."""
    seg = torch.zeros(batch, n, dtype=torch.int64)
    for b in range(batch):
        cuts = sorted(torch.randperm(n - 1, generator=gen)[:3 - b % 2].add(1).tolist())
        for c in cuts:
            seg[b, c:] += 1
    starts = torch.zeros_like(seg)
    for b in range(batch):
        for i in range(1, n):
            starts[b, i] = starts[b, i - 1] if seg[b, i] == seg[b, i - 1] else i
    return torch.arange(n)[None] - starts, seg


def check(kind: str, packed: bool, comm: str, group, kernel: bool = False) -> None:
    cp, rank = dist.get_world_size(group), dist.get_rank(group)
    gen = torch.Generator().manual_seed(1234)
    B, Hq, Hkv, N, D = 2, 4, 2, 16 * cp, 16
    q, k, v = (torch.randn(B, h, N, D, generator=gen, dtype=torch.float64) for h in (Hq, Hkv, Hkv))
    weight = torch.randn(B, Hq, N, D, generator=gen, dtype=torch.float64)
    pos, seg = packed_layout(B, N, gen) if packed else (None, None)
    encoding = PositionalEncoding(kind=kind)
    attend = partial(attention, encoding=encoding, impl="reference")

    full = [t.clone().requires_grad_() for t in (q, k, v)]
    ref = attend(*full, q_positions=pos, k_positions=pos, q_segment_ids=seg, k_segment_ids=seg)
    (ref * weight).sum().backward()

    backward = None
    if kernel:  # float32 through the fused kernel; the ring uses its merged-LSE backward entry
        from tapa_scale.ops.tapa_triton import tapa_attention_triton_backward
        q, k, v, weight = (t.float() for t in (q, k, v, weight))
        attend = partial(attention, encoding=encoding, impl="triton")
        backward = partial(tapa_attention_triton_backward, alpha=encoding.alpha, theta=encoding.theta,
                           phase=encoding.phase)
    local = [shard_sequence(t, cp, rank, dim=2).detach().requires_grad_() for t in (q, k, v)]
    hook = ContextParallel(group, comm)
    out = hook(*local, attend,
               None if pos is None else shard_sequence(pos, cp, rank),
               None if seg is None else shard_sequence(seg, cp, rank), attend_backward=backward)
    (out * shard_sequence(weight, cp, rank, dim=2)).sum().backward()

    what = f"{kind} packed={packed} comm={comm} kernel={kernel} cp={cp} rank={rank}"
    tol = KERNEL_TOL if kernel else TOL[comm]
    torch.testing.assert_close(out.double(), shard_sequence(ref.detach(), cp, rank, dim=2), **tol, msg=f"out {what}")
    for name, mine, theirs in zip("qkv", local, full):
        torch.testing.assert_close(mine.grad.double(), shard_sequence(theirs.grad, cp, rank, dim=2), **tol,
                                   msg=f"d{name} {what}")
    assert torch.isfinite(out).all()


def kernel_available() -> bool:
    try:
        import tapa_scale.ops.tapa_triton  # noqa: F401  (needs triton)
    except ImportError:
        return False
    return True


def main() -> int:
    dist.init_process_group("gloo", timeout=timedelta(seconds=120))
    group = dist.new_group(list(range(dist.get_world_size())))
    for kind, packed, comm in itertools.product(("tapa", "rope"), (False, True), ("allgather", "ring")):
        check(kind, packed, comm, group)
    if dist.get_world_size() == 2 and kernel_available():
        for comm in ("allgather", "ring"):
            check("tapa", True, comm, group, kernel=True)
        if dist.get_rank() == 0:
            print("kernel checked")
    dist.barrier()
    if dist.get_rank() == 0:
        print("cp attention OK")
    dist.barrier()  # no rank tears down gloo while another still finishes (abort at exit)
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
