"""parallel.recompute=full (megatron's full activation recomputation, one layer at a time) and
=selective (the core attention only): the same loss and gradients, bit for bit, as keeping the
activations, with fewer saved tensors.

Would catch: a recomputed forward that differs from the first (another RNG draw, positions or document
ids not passed again: the gradients would differ), or a recompute that does not recompute (the saved
bytes would not drop)."""
import pytest
import torch

from tapa_scale.model import ModelConfig, TokenLayout, build_model, transformer_config


def saved_bytes_loss_and_grads(cfg, recompute: str, ids, labels, layout):
    torch.manual_seed(0)  # the same weights for both
    model = build_model(cfg, vocab_size=97, seq_len=64, config=transformer_config(cfg, recompute=recompute))
    saved = []

    def pack(t):
        saved.append(t.numel() * t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model(ids, None, None, labels=labels, packed_seq_params=layout).mean()
    loss.backward()
    return sum(saved), loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("enc", ["tapa", "rope"])
def test_full_recompute_gives_the_same_gradients_with_fewer_saved_activations(process_group, enc):
    cfg = ModelConfig(num_layers=4, hidden_size=64, num_heads=4, num_kv_heads=2, ffn_hidden_size=256,
                      pos_encoding=enc)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 97, (2, 64), generator=g)
    docs = torch.tensor([[0] * 40 + [1] * 24, [0] * 64])  # two documents in the first row
    positions = torch.cat([torch.arange(40), torch.arange(24)]).expand(2, -1).clone()
    positions[1] = torch.arange(64)
    layout = TokenLayout(positions=positions, segment_ids=docs)
    kept, loss_a, grads_a = saved_bytes_loss_and_grads(cfg, "none", ids, ids.roll(-1, 1), layout)
    rebuilt, loss_b, grads_b = saved_bytes_loss_and_grads(cfg, "full", ids, ids.roll(-1, 1), layout)
    assert torch.equal(loss_a, loss_b)
    for name in grads_a:
        assert torch.equal(grads_a[name], grads_b[name]), name
    # kept: per layer the norms, q/k/v, attention, the SwiGLU's three [s, b, ffn] tensors ...; rebuilt:
    # each layer's input [s, b, h] and the loss head's inputs
    assert rebuilt < 0.35 * kept, (rebuilt, kept)
    # selective: the core attention keeps only its inputs; at 64 tokens (one query chunk) the reference
    # attention would keep its whole score block per head, which is what it no longer saves
    attn_only, loss_c, grads_c = saved_bytes_loss_and_grads(cfg, "selective", ids, ids.roll(-1, 1), layout)
    assert torch.equal(loss_a, loss_c) and all(torch.equal(grads_a[n], grads_c[n]) for n in grads_a)
    scores = 4 * 2 * 4 * 64 * 64 * (20 if enc == "tapa" else 8)  # layers x batch x heads x pairs x bytes/pair
    assert kept - attn_only >= 0.9 * scores and attn_only > rebuilt, (kept, attn_only, rebuilt, scores)
