"""The chunked TAPA reference against the formula written out naively (N x N) in this file.

Would catch: a wrong amplitude/phase split or scale, distances taken from local instead of global
positions, a broken causal or segment mask, a GQA head mapping error, a chunking seam, lost gradients.
"""
import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from tapa_scale.ops import tapa_attention, tapa_split


def naive_tapa(q, k, v, alpha, theta, phase, causal, q_pos, k_pos, q_seg=None, k_seg=None):
    """The score of docs/tapa.md, written the obvious way in float64 with repeated K/V."""
    q, k, v = q.double(), k.double(), v.double()
    D = q.shape[-1]
    da = math.floor(theta * D + 0.5)  # docs/tapa.md: theta*D rounded half up
    dp = D - da
    rep = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
    amp = q[..., :da] @ k[..., :da].transpose(-1, -2) / math.sqrt(da)
    if phase == "quadratic":
        phi = q[..., da:] @ k[..., da:].transpose(-1, -2) / math.sqrt(dp)
    else:
        phi = (q[..., da:].sum(-1)[..., None] + k[..., da:].sum(-1)[..., None, :]) / math.sqrt(dp)
    dist = (q_pos[:, None] - k_pos[None, :]).abs().double()
    s = amp * torch.cos(2 * math.pi * dist ** alpha * phi)
    keep = torch.ones_like(dist, dtype=torch.bool)
    if causal:
        keep &= k_pos[None, :] <= q_pos[:, None]
    if q_seg is not None:
        keep &= q_seg[:, None] == k_seg[None, :]
    s = s.masked_fill(~keep, float("-inf"))
    lse = torch.logsumexp(s, -1)
    p = torch.nan_to_num(torch.exp(s - lse[..., None]), nan=0.0)
    return p @ v, lse


def make(B, Hq, Hkv, Nq, Nk, D, dtype=torch.float64, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    q = (torch.randn(B, Hq, Nq, D, generator=g) * scale).to(dtype).requires_grad_()
    k = (torch.randn(B, Hkv, Nk, D, generator=g) * scale).to(dtype).requires_grad_()
    v = torch.randn(B, Hkv, Nk, D, generator=g).to(dtype).requires_grad_()
    return q, k, v


def grads(out, inputs, seed=1):
    dout = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=out.dtype)
    return torch.autograd.grad(out, inputs, dout)


CASES = [  # (Hq, Hkv, Nq, Nk, q_offset, theta, alpha, phase, causal)
    (2, 2, 37, 37, 0, 0.5, 0.1, "quadratic", True),
    (4, 2, 37, 37, 0, 0.25, 0.05, "quadratic", True),
    (4, 1, 19, 53, 34, 0.75, 0.5, "quadratic", True),   # a later chunk of queries against all keys
    (2, 2, 33, 33, 0, 0.5, 0.1, "linear", True),
    (4, 2, 21, 40, 7, 0.25, 0.5, "linear", False),
    (2, 1, 29, 29, 100, 0.75, 0.05, "linear", True),
]


@pytest.mark.parametrize("Hq,Hkv,Nq,Nk,off,theta,alpha,phase,causal", CASES)
def test_matches_naive_formula_forward_and_gradients(Hq, Hkv, Nq, Nk, off, theta, alpha, phase, causal):
    q, k, v = make(2, Hq, Hkv, Nq, Nk, 16)
    k_pos = torch.arange(Nk) + 3
    q_pos = torch.arange(Nq) + 3 + off
    out, lse = tapa_attention(q, k, v, alpha=alpha, theta=theta, phase=phase, causal=causal,
                              q_positions=q_pos, k_positions=k_pos, return_lse=True, impl="reference")
    ref, ref_lse = naive_tapa(q, k, v, alpha, theta, phase, causal, q_pos, k_pos)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(lse, ref_lse.float(), rtol=1e-6, atol=1e-6)
    for a, b in zip(grads(out, (q, k, v)), grads(ref, (q, k, v))):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


def test_chunk_seams_do_not_matter():
    q, k, v = make(1, 2, 2, 70, 70, 8)
    full = tapa_attention(q, k, v, impl="reference")
    from tapa_scale.ops import tapa_attention_reference
    small = tapa_attention_reference(q, k, v, chunk_size=9)
    torch.testing.assert_close(full, small, rtol=1e-12, atol=1e-12)


def test_segments_and_fully_masked_rows():
    q, k, v = make(1, 2, 1, 12, 12, 8)
    seg = torch.tensor([0] * 5 + [1] * 7)
    pos = torch.cat([torch.arange(5), torch.arange(7)])  # positions restart in each document
    out, lse = tapa_attention(q, k, v, q_positions=pos, k_positions=pos, q_segment_ids=seg,
                              k_segment_ids=seg, return_lse=True, impl="reference")
    ref, ref_lse = naive_tapa(q, k, v, 0.1, 0.5, "quadratic", True, pos, pos, seg, seg)
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(lse, ref_lse.float())
    # keys entirely in the future of every query: output 0, lse -inf, gradients finite
    late = torch.arange(12) + 50
    out, lse = tapa_attention(q, k, v, k_positions=late, return_lse=True, impl="reference")
    assert torch.all(out == 0) and torch.all(lse == float("-inf"))
    assert all(torch.isfinite(g).all() for g in grads(out, (q, k, v)))


def test_batched_positions():
    q, k, v = make(2, 2, 2, 10, 10, 8)
    pos = torch.stack([torch.arange(10), torch.arange(10) * 3 + 5])
    out = tapa_attention(q, k, v, q_positions=pos, k_positions=pos, impl="reference")
    for b in range(2):
        ref, _ = naive_tapa(q[b:b + 1], k[b:b + 1], v[b:b + 1], 0.1, 0.5, "quadratic", True, pos[b], pos[b])
        torch.testing.assert_close(out[b:b + 1], ref)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_low_precision_inputs_compute_in_float32(dtype):
    """On the same (rounded) inputs, the output differs from float64 math by the output's rounding
    (one eps of the dtype) plus float32 compute error (1e-5) -- not by low-precision scores."""
    q, k, v = (t.to(dtype) for t in make(1, 2, 2, 40, 40, 16, dtype=torch.float64))
    ref, _ = naive_tapa(q, k, v, 0.1, 0.5, "quadratic", True, torch.arange(40), torch.arange(40))
    out = tapa_attention(q, k, v, impl="reference")
    assert out.dtype == dtype
    # elementwise: rtol = one eps, twice the <= eps/2 relative rounding of each output entry to dtype;
    # atol = 1e-5 for float32 compute over 40 keys (measured <= 2e-6)
    torch.testing.assert_close(out.double(), ref, rtol=torch.finfo(dtype).eps, atol=1e-5)
    out.float().sum().backward()


def test_bad_arguments_are_named():
    q, k, v = make(1, 2, 2, 4, 4, 8)
    with pytest.raises(ValueError, match="theta"):
        tapa_attention(q, k, v, theta=1.0)
    with pytest.raises(ValueError, match="alpha"):
        tapa_attention(q, k, v, alpha=0.0)
    with pytest.raises(ValueError, match="phase"):
        tapa_attention(q, k, v, phase="cubic")
    with pytest.raises(ValueError, match="multiple"):
        tapa_attention(q, k[:, :1].expand(1, 3, 4, 8), v[:, :1].expand(1, 3, 4, 8))
    with pytest.raises(ValueError, match="q_positions"):
        tapa_attention(q, k, v, q_positions=torch.arange(5))
    assert tapa_split(32, 0.25) == (8, 24)


def test_long_sequence_memory_is_bounded_by_one_chunk():
    """N=16384 forward+backward in a fresh process: peak RSS grows by < 1 GiB, while a single
    16384 x 16384 float32 score matrix alone is 1 GiB (and naive autograd keeps several).
    glibc's mmap threshold is pinned so freed chunk buffers go back to the OS at once: otherwise its
    adaptive threshold keeps them in the heap and RSS measures the allocator, not live tensors."""
    script = textwrap.dedent("""
        import resource, torch
        from tapa_scale.ops import tapa_attention
        torch.manual_seed(0)
        N, D = 16384, 16
        q, k, v = (torch.randn(1, 1, N, D, requires_grad=True) for _ in range(3))
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        out = tapa_attention(q, k, v, impl="reference")
        out.square().sum().backward()
        assert torch.isfinite(q.grad).all() and torch.isfinite(k.grad).all()
        print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) * 1024)
    """)
    env = dict(os.environ, OMP_NUM_THREADS="2", MALLOC_MMAP_THRESHOLD_="65536")
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr
    grown = int(res.stdout.strip().splitlines()[-1])
    assert grown < 1 << 30, f"peak memory grew by {grown / 2**20:.0f} MiB"
