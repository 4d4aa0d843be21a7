"""Generation with the export: the KV cache, left padding, positions and the fused-kernel path, for the
encodings with positions that our exported modeling code serves (TAPA, ALiBi; RoPE-family exports are transformers'
own LlamaForCausalLM, whose generation is transformers' to test).

Structural checks (cache vs full forward, padded vs unpadded) run in float64, where the two computations
agree to ~1e-15 and any wrong position or mask shows at once. In float32 TAPA's phase cos(2*pi*d^alpha*phi)
amplifies the ~1e-7 differences between a one-token and a many-token matmul (1e-5..1e-4 relative logit
differences at these random weights, ALiBi ~1e-6), so float32 is checked where it matters to users:
greedy tokens.
"""
from __future__ import annotations

import sys

import pytest
import torch

from tapa_scale.hf.export import export_to_hf
from tests.hf.conftest import load_export, make_checkpoint, rel_err

ENCODINGS = {
    "tapa": dict(pos_encoding="tapa", num_kv_heads=2),
    "alibi": dict(pos_encoding="alibi", tie_embeddings=False),
}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("generation")
    out = {}
    for i, (name, model) in enumerate(ENCODINGS.items()):
        ckpt = make_checkpoint(root / name, seed=10 + i, **dict(model))
        out[name] = load_export(export_to_hf(ckpt, root / f"{name}-hf"))
    return out


def incremental_logits(model, ids: torch.Tensor, prefill: int, mask=None) -> torch.Tensor:
    """Logits of ids fed as a prefill of `prefill` tokens, then one token at a time through the cache."""
    out = model(ids[:, :prefill], attention_mask=None if mask is None else mask[:, :prefill], use_cache=True)
    steps, cache = [out.logits], out.past_key_values
    for t in range(prefill, ids.shape[1]):
        m = None if mask is None else mask[:, : t + 1]
        out = model(ids[:, t:t + 1], attention_mask=m, past_key_values=cache, use_cache=True)
        steps.append(out.logits)
        cache = out.past_key_values
    return torch.cat(steps, dim=1)


def left_padded(seqs: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    n = max(len(s) for s in seqs)
    ids = torch.zeros(len(seqs), n, dtype=torch.long)
    mask = torch.zeros(len(seqs), n, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, n - len(s):], mask[i, n - len(s):] = s, 1
    return ids, mask


@pytest.mark.parametrize("name", list(ENCODINGS))
@torch.no_grad()
def test_cache_gives_the_full_forward_logits(models, name):
    """Catches cached keys losing their positions (TAPA/ALiBi distances) or the causal mask
    being offset by the cache length."""
    model = models[name].double()
    torch.manual_seed(1)
    ids = torch.randint(1, 8192, (2, 40))
    full = model(ids).logits
    assert rel_err(incremental_logits(model, ids, prefill=17), full) < 1e-12
    models[name].float()


@pytest.mark.parametrize("name", list(ENCODINGS))
@torch.no_grad()
def test_left_padding_gives_the_unpadded_logits(models, name):
    """Catches positions counted from the padded start instead of the first real token, and pads leaking
    into attention; also through the cache (padded prefill, then decoding)."""
    model = models[name].double()
    torch.manual_seed(2)
    seqs = [torch.randint(1, 8192, (n,)) for n in (23, 31, 9)]
    ids, mask = left_padded(seqs)
    batched = model(ids, attention_mask=mask).logits
    cached = incremental_logits(model, ids, prefill=25, mask=mask)
    for i, s in enumerate(seqs):
        alone = model(s[None]).logits[0]
        assert rel_err(batched[i, -len(s):], alone) < 1e-12
        assert rel_err(cached[i, -len(s):], alone) < 1e-12
    models[name].float()


@pytest.mark.parametrize("name", ["tapa", "alibi"])
def test_greedy_generation_same_with_and_without_cache(models, name):
    model = models[name]
    torch.manual_seed(3)
    prompt = torch.randint(1, 8192, (1, 12))
    with_cache = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=16,
                                do_sample=False, use_cache=True)
    without = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=16,
                             do_sample=False, use_cache=False)
    assert with_cache.shape[1] == 28
    assert torch.equal(with_cache, without)


def test_batched_left_padded_generation_matches_single(models):
    model = models["tapa"]
    torch.manual_seed(4)
    seqs = [torch.randint(1, 8192, (n,)) for n in (7, 15)]
    ids, mask = left_padded(seqs)
    batch = model.generate(ids, attention_mask=mask, max_new_tokens=10, do_sample=False)
    for i, s in enumerate(seqs):
        alone = model.generate(s[None], attention_mask=torch.ones(1, len(s), dtype=torch.long),
                               max_new_tokens=10, do_sample=False)
        assert torch.equal(batch[i, ids.shape[1]:], alone[0, len(s):])


@pytest.mark.parametrize("name", list(ENCODINGS))
@torch.no_grad()
def test_shifting_all_positions_changes_nothing(models, name):
    """Every encoding here depends on positions only through m - n: explicit position_ids offset by
    1000 must give the same logits (and do reach the attention)."""
    model = models[name].double()
    torch.manual_seed(5)
    ids = torch.randint(1, 8192, (1, 30))
    base = model(ids).logits
    shifted = model(ids, position_ids=torch.arange(30)[None] + 1000).logits
    assert rel_err(shifted, base) < 1e-10
    spread = model(ids, position_ids=torch.arange(30)[None] * 3).logits
    assert rel_err(spread, base) > 1e-6
    models[name].float()


@torch.no_grad()
def test_fused_path_plumbing(models, monkeypatch):
    """The fast path (tapa_scale.ops.tapa_attention, used for TAPA on CUDA) gets the same positions and
    padding: forced on for CPU tensors, where that op runs its reference, it must match the plain path
    with left padding and a cache. The GPU kernel itself is tested in tests/ops."""
    model = models["tapa"].double()
    module = sys.modules[type(model).__module__]
    assert module._fused_tapa_attention is not None  # tapa_scale is importable in this process
    torch.manual_seed(6)
    ids, mask = left_padded([torch.randint(1, 8192, (n,)) for n in (19, 26)])
    plain = incremental_logits(model, ids, prefill=20, mask=mask)
    calls = []
    real = module._fused_tapa_attention
    monkeypatch.setattr(module, "FAST_PATH_DEVICES", ("cpu",))
    monkeypatch.setattr(module, "_fused_tapa_attention", lambda *a, **k: calls.append(1) or real(*a, **k))
    fused = incremental_logits(model, ids, prefill=20, mask=mask)
    assert calls, "the fused path was not taken"
    real_rows = mask.bool()
    assert rel_err(fused[real_rows], plain[real_rows]) < 1e-12
    models["tapa"].float()
