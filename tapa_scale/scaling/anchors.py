"""Published throughput figures to set the cost model's GPU predictions beside.

llm-foundry's benchmark table (scripts/train/benchmarking/README.md, "H100 80GB BF16"): MPT models on
8 H100s with FSDP full sharding, flash attention and ALiBi, MFU counted with attention over the full
square (our ``mfu_noncausal``). MPT's MLP is 4d GELU; the shapes below give the SwiGLU width of
equal FLOPs (8d/3), so the model FLOPs match. The prediction is for this code on that model and
batch, data-parallel over the 8 GPUs with the optimizer state sharded (the nearest layout we have to
FSDP): a different code base, so agreement is a plausibility check, not a validation.
"""
from __future__ import annotations

from .layout import Layout, Shape

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
