"""TAPA with local-RoPE heads (model.tapa.rope_heads / rope_window; ops.attention.tapa_with_local_rope)
against direct statements: the local heads as dense softmax attention over RoPE-rotated q and k written
with complex numbers and a banded causal mask, the other heads as TAPA's reference on those heads alone.

Would catch: the heads split at the wrong place under grouped-query attention, a window off by one or
measured in indices instead of positions, local heads that leak TAPA's score or the other way round,
positions of a packed document not reaching the rotation."""
import math

import pytest
import torch

from tapa_scale.ops.attention import PositionalEncoding, attention
from tapa_scale.ops.tapa_reference import tapa_attention_reference


def rotated(x, pos, base):
    """x (B, H, N, D) turned by pos * base^(-2i/D) as complex numbers z_i = x_i + j x_{i + D/2}."""
    d = x.shape[-1]
    z = torch.complex(x[..., : d // 2].double(), x[..., d // 2:].double())
    angle = pos.double()[:, None, :, None] * base ** (-torch.arange(0, d, 2).double() / d)
    z = z * torch.polar(torch.ones_like(angle), angle)
    return torch.cat((z.real, z.imag), -1)


def dense_local(q, k, v, pos, window, base, segments=None):
    g = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(g, 1).double(), v.repeat_interleave(g, 1).double()
    s = rotated(q, pos, base) @ rotated(k, pos, base).transpose(-1, -2) / math.sqrt(q.shape[-1])
    gap = pos[:, :, None] - pos[:, None, :]
    keep = (gap >= 0) & (gap < window)
    if segments is not None:
        keep &= segments[:, :, None] == segments[:, None, :]
    return torch.softmax(s.masked_fill(~keep[:, None], float("-inf")), -1) @ v


@pytest.mark.parametrize("packed", [False, True])
def test_local_heads_and_tapa_heads_match_their_direct_statements(packed):
    torch.manual_seed(0)
    B, Hq, Hkv, N, D, h, window = 2, 6, 3, 70, 16, 2, 9
    q, k, v = (torch.randn(B, H, N, D, dtype=torch.float64) for H in (Hq, Hkv, Hkv))
    pos = torch.arange(N).expand(B, N)
    seg = None
    if packed:  # two documents per row, positions restarting at each
        cut = torch.tensor([30, 45])
        seg = (torch.arange(N)[None] >= cut[:, None]).long()
        pos = torch.where(seg.bool(), torch.arange(N)[None] - cut[:, None], torch.arange(N)[None])
    enc = PositionalEncoding("tapa", alpha=0.3, theta=0.5, rope_base=500.0, rope_heads=h, rope_window=window)
    out = attention(q, k, v, enc, q_positions=pos, k_positions=pos, q_segment_ids=seg, k_segment_ids=seg,
                    impl="reference")
    want_local = dense_local(q[:, :h], k[:, :1], v[:, :1], pos, window, 500.0, seg)
    want_tapa = tapa_attention_reference(q[:, h:], k[:, 1:], v[:, 1:], alpha=0.3, theta=0.5, q_positions=pos,
                                         k_positions=pos, q_segment_ids=seg, k_segment_ids=seg)
    assert torch.allclose(out[:, :h], want_local, atol=1e-10)
    assert torch.allclose(out[:, h:], want_tapa, atol=1e-12)
    narrower = attention(q, k, v, PositionalEncoding("tapa", alpha=0.3, rope_base=500.0, rope_heads=h,
                                                     rope_window=window - 1), q_positions=pos, k_positions=pos,
                         q_segment_ids=seg, k_segment_ids=seg)
    assert (narrower[:, :h] - out[:, :h]).abs().max() > 1e-3  # the window's last key counts


def test_a_window_beyond_the_sequence_is_plain_rope_and_gradients_flow():
    torch.manual_seed(1)
    q, k, v = (torch.randn(1, 4, 40, 8, requires_grad=True) for _ in range(3))
    enc = PositionalEncoding("tapa", rope_heads=2, rope_window=1000)
    out = attention(q, k, v, enc)
    rope = attention(q[:, :2], k[:, :2], v[:, :2], PositionalEncoding("rope"))
    assert torch.allclose(out[:, :2], rope, atol=1e-6)
    out.square().sum().backward()
    assert all(t.grad is not None and torch.isfinite(t.grad).all() and t.grad.abs().sum() > 0 for t in (q, k, v))


def test_a_split_across_key_value_groups_is_refused():
    q, k = torch.randn(1, 4, 8, 8), torch.randn(1, 2, 8, 8)
    with pytest.raises(ValueError, match="rope_heads=1.*multiple of 2"):
        attention(q, k, k, PositionalEncoding("tapa", rope_heads=1, rope_window=4))
