"""Attention math: the TAPA reference, the fused Triton kernel and the RoPE-family baselines.

Public entries:
    tapa_attention(q, k, v, *, alpha, theta, phase, causal, q_positions, k_positions,
                   q_segment_ids, k_segment_ids, return_lse, impl)   -- TAPA (docs/tapa.md)
    attention(q, k, v, encoding, ...)                                -- any PositionalEncoding
    last_attention_impl()       -- what the latest call in this process ran (triton/reference/sdpa)
This package imports only torch (and triton, lazily, for impl="triton").
"""
from .attention import ENCODINGS, PositionalEncoding, attention, last_attention_impl, tapa_attention
from .tapa_reference import tapa_attention_reference, tapa_split

__all__ = ["ENCODINGS", "PositionalEncoding", "attention", "last_attention_impl", "tapa_attention",
           "tapa_attention_reference", "tapa_split"]
