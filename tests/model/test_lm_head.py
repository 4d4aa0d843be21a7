"""The chunked output layer and loss (model/lm_head.py) against the loss written out directly: the
whole sequence's logits and torch's cross entropy.

Would catch: pieces stitched in the wrong order, a piece's labels shifted against its hidden states,
a recomputed piece giving other gradients, last_logits reading the wrong positions."""
import pytest
import torch
import torch.nn.functional as F

from tapa_scale.model import lm_head

from .test_model import tiny


def direct_loss(model, ids, labels):
    """Per-token loss (b, s): full logits from the model without labels, then torch's cross entropy."""
    logits = model(ids, None, None)  # (b, s, V)
    return F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), reduction="none").view(labels.shape)


@pytest.mark.parametrize("tie", [True, False])
def test_chunked_loss_and_gradients_equal_the_whole_sequence(process_group, monkeypatch, tie):
    model, _ = tiny("tapa", tie_embeddings=tie)
    ids = torch.randint(0, 97, (2, 32), generator=torch.Generator().manual_seed(1))
    labels = ids.roll(-1, 1)
    want = direct_loss(model, ids, labels)
    (want.sum() / 7).backward()
    want_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()

    # 2 rows x 5 positions per piece: 32 positions in 7 pieces, the last one short
    monkeypatch.setattr(lm_head, "LOSS_CHUNK_TOKENS", 10)
    calls = []
    real = model.output_layer.forward
    monkeypatch.setattr(model.output_layer, "forward", lambda x, **kw: calls.append(x.shape[0]) or real(x, **kw))
    got = model(ids, None, None, labels=labels)
    assert calls == [5] * 6 + [2], calls  # the loss really was computed piece by piece
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    (got.sum() / 7).backward()
    assert len(calls) == 14  # each piece's logits recomputed once in backward instead of kept
    for p, g in zip(model.parameters(), want_grads):
        torch.testing.assert_close(p.grad, g, rtol=1e-5, atol=1e-6)


def test_last_logits_are_the_last_positions_of_the_full_logits(process_group):
    model, _ = tiny("rope")
    model.eval()
    ids = torch.randint(0, 97, (3, 20), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        full = model(ids, None, None)
        last = model.last_logits(ids, 4)
    assert last.shape == (3, 4, 97)
    torch.testing.assert_close(last, full[:, -4:], rtol=1e-5, atol=1e-5)
