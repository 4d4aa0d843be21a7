"""The FlexAttention path of the dot-product encodings equals the chunked PyTorch attention.

On CUDA `attention(..., impl="auto")` sends packed documents, explicit positions and ALiBi through
FlexAttention (compiled); here the same function runs FlexAttention's unfused reference on CPU, so the
block mask, the ALiBi score modification, GQA and the scale are checked against an independent path:
the chunked attention with its own masking. Would catch a mask that lets a query see another document
or a later position, slopes applied per key/value head instead of per query head, a lost YaRN logit
factor, a fully masked row that is not 0.
"""
import importlib
import warnings

import pytest
import torch

from tapa_scale.ops import PositionalEncoding, attention
from tapa_scale.ops.attention import last_attention_impl

# the module (tapa_scale.ops re-exports its function under the same name), for its dispatch predicate
attention_module = importlib.import_module("tapa_scale.ops.attention")

TOL = dict(rtol=1e-5, atol=1e-6)  # float32, two summation orders


def _inputs(B=2, Hq=4, Hkv=2, N=48, D=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, h, N, D, generator=g) for h in (Hq, Hkv, Hkv))


def _packed(B, N, seed=1):
    """Per-row documents of random lengths with restarting positions."""
    g = torch.Generator().manual_seed(seed)
    segs, pos = [], []
    for _ in range(B):
        cuts = sorted(torch.randperm(N - 1, generator=g)[:3].add(1).tolist())
        lengths = [b - a for a, b in zip([0] + cuts, cuts + [N])]
        segs.append(torch.cat([torch.full((n,), i) for i, n in enumerate(lengths)]))
        pos.append(torch.cat([torch.arange(n) for n in lengths]))
    return torch.stack(pos), torch.stack(segs)


def _flex(monkeypatch, q, k, v, enc, **kwargs):
    """attention() itself (rotation, scale, slopes) with its FlexAttention branch taken, as on CUDA."""
    monkeypatch.setattr(attention_module, "_flex_applies", lambda q, impl, masks: not masks["return_lse"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "called without torch.compile": the unfused reference, on purpose
        out = attention(q, k, v, enc, **kwargs)
    assert last_attention_impl() == "flex"
    monkeypatch.undo()
    return out


@pytest.mark.parametrize("enc", [PositionalEncoding("rope"), PositionalEncoding("yarn", scale=4.0, original_length=8),
                                 PositionalEncoding("llama3", scale=8.0, original_length=8),
                                 PositionalEncoding("alibi", num_heads=8), PositionalEncoding("nope")],
                         ids=lambda e: e.kind)
def test_packed_documents_equal_the_chunked_attention(enc, monkeypatch):
    q, k, v = _inputs()
    pos, seg = _packed(2, 48)
    masks = dict(q_positions=pos, k_positions=pos, q_segment_ids=seg, k_segment_ids=seg)
    offset = 4 if enc.kind == "alibi" else 0  # a tensor-parallel rank holding global heads 4..7 of 8
    want = attention(q, k, v, enc, impl="reference", head_offset=offset, **masks)
    torch.testing.assert_close(_flex(monkeypatch, q, k, v, enc, head_offset=offset, **masks), want, **TOL)


def test_query_shard_rows_without_keys_and_non_causal(monkeypatch):
    """A context-parallel style query shard at global positions, a query whose document has no key
    (output 0, as the chunked attention gives), and the non-causal case."""
    q, k, v = _inputs(B=1, N=32)
    enc = PositionalEncoding("rope")
    q_pos, k_pos = torch.arange(16, 32), torch.arange(32)
    q_seg = torch.cat([torch.zeros(12, dtype=torch.long), torch.full((4,), 9)])  # document 9: no keys
    k_seg = torch.zeros(32, dtype=torch.long)
    masks = dict(q_positions=q_pos, k_positions=k_pos, q_segment_ids=q_seg, k_segment_ids=k_seg)
    want = attention(q[:, :, 16:], k, v, enc, impl="reference", **masks)
    got = _flex(monkeypatch, q[:, :, 16:], k, v, enc, **masks)
    torch.testing.assert_close(got, want, **TOL)
    assert torch.all(got[:, :, 12:] == 0)
    want = attention(q, k, v, PositionalEncoding("nope"), causal=False, impl="reference")
    torch.testing.assert_close(_flex(monkeypatch, q, k, v, PositionalEncoding("nope"), causal=False), want, **TOL)
