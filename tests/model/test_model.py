"""The megatron-core decoder with our attention slot.

Would catch: a wrong [s, b, h, d] <-> (B, H, N, D) permutation, positions or document ids not reaching
attention, grouped-query heads mis-mapped, an encoding that does not build, a wrong RMSNorm."""
import pytest
import torch

from tapa_scale.model import CoreAttention, ModelConfig, TokenLayout, build_model, transformer_config
from tapa_scale.model.norm import RMSNorm
from tapa_scale.ops import ENCODINGS, PositionalEncoding, attention


def tiny(enc="tapa", **kw):
    cfg = ModelConfig(num_layers=2, hidden_size=64, num_heads=4, num_kv_heads=2, ffn_hidden_size=128,
                      pos_encoding=enc, **kw)
    torch.manual_seed(0)
    return build_model(cfg, vocab_size=97, seq_len=32, config=transformer_config(cfg)), cfg


def test_core_attention_layout(process_group):
    cfg = ModelConfig(num_layers=1, hidden_size=64, num_heads=4)
    enc = PositionalEncoding("tapa")
    mod = CoreAttention(transformer_config(cfg), 1, None, "self", encoding=enc)
    q, k, v = torch.randn(9, 2, 4, 16), torch.randn(9, 2, 2, 16), torch.randn(9, 2, 2, 16)  # [s, b, h, d]
    out = mod(q, k, v, None)
    want = attention(*(t.permute(1, 2, 0, 3) for t in (q, k, v)), enc)  # (B, H, N, D)
    torch.testing.assert_close(out, want.permute(2, 0, 1, 3).reshape(9, 2, 64))


@pytest.mark.parametrize("enc", ENCODINGS)
def test_every_encoding_builds_and_trains_a_step(process_group, enc):
    model, _ = tiny(enc)
    ids = torch.randint(0, 97, (2, 32))
    loss = model(ids, None, None, labels=ids.roll(-1, 1)).mean()
    assert torch.isfinite(loss) and abs(loss.item() - torch.log(torch.tensor(97.0)).item()) < 1.0
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("enc", ["tapa", "rope"])
def test_packed_documents_are_scored_as_if_alone(process_group, enc):
    """Two documents packed in one row with restarting positions and segment ids give, for the second
    document, exactly the per-token loss of that document run on its own."""
    model, _ = tiny(enc)
    model.eval()
    a, b = torch.randint(0, 97, (1, 10)), torch.randint(0, 97, (1, 14))
    packed = torch.cat([a, b], 1)
    layout = TokenLayout(positions=torch.cat([torch.arange(10), torch.arange(14)])[None],
                         segment_ids=torch.tensor([0] * 10 + [1] * 14)[None])
    with torch.no_grad():
        both = model(packed, None, None, labels=packed, packed_seq_params=layout)
        alone = model(b, None, None, labels=b)
        unmasked = model(packed, None, None, labels=packed)
    torch.testing.assert_close(both[:, 10:], alone, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(unmasked[:, 10:], alone, atol=1e-3), "masking must matter"


def test_tied_and_untied_embeddings(process_group):
    tied, _ = tiny(tie_embeddings=True)
    untied, _ = tiny(tie_embeddings=False)
    n_tied = sum(p.numel() for p in tied.parameters())
    n_untied = sum(p.numel() for p in untied.parameters())
    assert n_untied - n_tied == 97 * 64


def test_rmsnorm_formula():
    cfg = transformer_config(ModelConfig(num_layers=1, hidden_size=8, num_heads=2))
    norm = RMSNorm(cfg, 8, eps=1e-6)
    norm.weight.data = torch.arange(1.0, 9.0)
    x = torch.randn(3, 8)
    want = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * norm.weight
    torch.testing.assert_close(norm(x), want)
    assert norm.weight.sequence_parallel is False
