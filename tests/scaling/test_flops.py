"""Model FLOPs per token (scaling/flops.py) against torch's own count of the matrix products that
the built model runs (torch.utils.flop_counter), for each kind of attention score."""
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from tapa_scale.model import ModelConfig, build_model, transformer_config
from tapa_scale.scaling import model_flops

VOCAB, SEQ, BATCH = 96, 48, 2  # SEQ below the reference attention's query chunk: every score is computed


@pytest.mark.parametrize("encoding, phase, impl", [("tapa", "quadratic", "reference"),
                                                   ("tapa", "linear", "reference"),
                                                   ("rope", "quadratic", "auto"),
                                                   ("nope", "quadratic", "auto")])
def test_forward_flops_match_torchs_count_of_the_models_matmuls(process_group, encoding, phase, impl):
    cfg = ModelConfig(num_layers=2, hidden_size=64, num_heads=4, num_kv_heads=2, ffn_hidden_size=96,
                      pos_encoding=encoding, attention_impl=impl)
    cfg.tapa.phase, cfg.tapa.theta = phase, 0.375  # 24 amplitude and 40 phase dims: an uneven split
    torch.manual_seed(0)
    net = build_model(cfg, vocab_size=VOCAB, seq_len=SEQ, config=transformer_config(cfg)).eval()
    ids = torch.randint(0, VOCAB, (BATCH, SEQ))
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        net(ids, None, None)  # logits, no loss
    # torch counts every score of the (masked) square: our non-causal convention
    expected = model_flops(cfg, SEQ, VOCAB, causal=False)
    assert counter.get_total_flops() == pytest.approx(expected.forward * BATCH * SEQ, rel=1e-9)


def test_causal_counts_the_triangle_and_tapa_elementwise_stays_out():
    cfg = ModelConfig(num_layers=3, hidden_size=64, num_heads=4, num_kv_heads=1, pos_encoding="tapa")
    full, causal = model_flops(cfg, 1024, 100, causal=False), model_flops(cfg, 1024, 100)
    # the kept (query, key) pairs of a causal sequence: s (s + 1) / 2, direct count
    pairs = sum(q + 1 for q in range(1024))
    assert causal.attention / full.attention == pytest.approx(pairs / 1024 ** 2)
    assert causal.dense == full.dense and causal.output == full.output
    assert causal.tapa_elementwise > 0
    assert causal.train == 3 * (causal.dense + causal.attention + causal.output)
    rope = ModelConfig(num_layers=3, hidden_size=64, num_heads=4, num_kv_heads=1, pos_encoding="rope")
    assert model_flops(rope, 1024, 100).train == causal.train  # TAPA's dot products span the head
