"""Published throughput figures to set the cost model's GPU predictions beside.

llm-foundry's benchmark table (scripts/train/benchmarking/README.md, "H100 80GB BF16"): MPT models on
8 H100s with FSDP full sharding, flash attention and ALiBi, MFU counted with attention over the full
square (our ``mfu_noncausal``). MPT's MLP is 4d GELU; the shapes below give the SwiGLU width of
equal FLOPs (8d/3), so the model FLOPs match. The prediction is for this code on that model and
batch, data-parallel over the 8 GPUs with the optimizer state sharded (the nearest layout we have to
FSDP): a different code base, so agreement is a plausibility check, not a validation.
"""
from __future__ import annotations

from dataclasses import replace

from .layout import Layout, Shape
from .plan import predict

ANCHORS = (
    # name, layers, hidden, heads, vocab, seq_len, micro batch, global batch, recompute, published MFU, tokens/s/GPU
    ("llm-foundry mpt-1b 8k", 24, 2048, 16, 50368, 8192, 3, 96, "none", 0.3773, 29157),
    ("llm-foundry mpt-1b 32k", 24, 2048, 16, 50368, 32768, 1, 32, "none", 0.3354, 12025),
    ("llm-foundry mpt-7b 8k", 32, 4096, 32, 50432, 8192, 8, 128, "full", 0.3714, 6935),
    ("llm-foundry mpt-7b 32k", 32, 4096, 32, 50432, 32768, 2, 32, "full", 0.3094, 3318),
)


def anchor_setups():
    """(name, Shape, Layout, published MFU, published tokens/s per GPU) of each anchor on 8 GPUs."""
    for name, layers, d, heads, vocab, seq, mb, gb, recompute, mfu, tps in ANCHORS:
        shape = Shape(num_layers=layers, hidden_size=d, num_heads=heads, kv_heads=heads, head_dim=d // heads,
                      ffn_size=round(8 * d / 3), vocab_size=vocab, seq_len=seq, tie_embeddings=True,
                      encoding="alibi")
        lay = Layout(dp=8, micro_batch=mb, global_batch=gb, distributed_optimizer=True, recompute=recompute)
        yield name, shape, lay, mfu, tps


def anchor_predictions(hw) -> list[dict]:
    """The prediction beside each published figure. Where this code cannot hold the published
    micro-batch, the nearest setup that fits: a smaller micro-batch, then full recomputation."""
    rows = []
    for name, shape, lay, mfu, tps in anchor_setups():
        p = published = predict(shape, lay, hw)
        for mb, rc in [(b, lay.recompute) for b in (lay.micro_batch // 2, 1) if b >= 1] + [(1, "full")]:
            if p.memory.fits:
                break
            p = predict(shape, replace(lay, micro_batch=mb, recompute=rc), hw)
        rows.append({"anchor": name, "published_layout_fits": published.memory.fits, "published_mfu_noncausal": mfu,
                     "published_tokens_per_s_per_gpu": tps, "predicted_mfu_noncausal": round(p.mfu_noncausal, 4),
                     "predicted_tokens_per_s_per_gpu": round(p.tokens_per_s / p.layout.world, 1),
                     "predicted_memory_gb": round(p.memory.total / 1e9, 2), "fits": p.memory.fits,
                     "bottleneck": p.bottleneck, "layout": p.layout.describe()})
    return rows
