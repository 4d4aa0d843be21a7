"""The positional-encoding slot of the transformer: megatron-core's `core_attention` submodule.

megatron's SelfAttention projects q, k, v and calls this module; here they meet TAPA or a RoPE-family
score (tapa_scale.ops.attention). No rotary embedding is applied by megatron (the model is built with
position_embedding_type="none"): every positional encoding lives behind this one slot.

Per-batch token metadata (global positions, document ids of packed sequences) travels through
megatron's `packed_seq_params` argument as a `TokenLayout`, the channel megatron itself uses for
sequence metadata; its qkv_format stays "sbhd" so megatron treats the batch as unpacked.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional

import torch
from megatron.core.packed_seq_params import PackedSeqParams
from megatron.core.transformer.module import MegatronModule

from ..ops.attention import PositionalEncoding, attention, resolve_impl


@dataclass
class TokenLayout(PackedSeqParams):
    """Global positions (B, N) or (N,) and optional document ids (B, N) of the tokens in a batch."""
    positions: Optional[torch.Tensor] = None
    segment_ids: Optional[torch.Tensor] = None

    def __post_init__(self):
        self.qkv_format = "sbhd"


class CoreAttention(MegatronModule):
    """Attention on already-projected heads. Called by megatron as
    forward(query [sq, b, hq, d], key/value [sk, b, hkv, d], attention_mask, *, attn_mask_type,
    attention_bias, packed_seq_params) -> [sq, b, hq * d]. The causal mask comes from positions."""

    def __init__(self, config, layer_number, attn_mask_type, attention_type, attention_dropout=None,
                 softmax_scale=None, cp_comm_type=None, pg_collection=None, *,
                 encoding: PositionalEncoding, impl: str = "auto", context_parallel=None):
        super().__init__(config=config)
        # this rank holds query heads head_offset .. head_offset + H/tp - 1 of the model's H; ALiBi
        # slopes are those of the global heads (the tp group comes from megatron's pg_collection)
        tp = pg_collection.tp if pg_collection is not None else None
        tp_rank, tp_size = (tp.rank(), tp.size()) if tp is not None else (0, 1)
        self.encoding = replace(encoding, num_heads=config.num_attention_heads)
        self.head_offset = tp_rank * (config.num_attention_heads // tp_size)
        self.impl = impl
        # context_parallel(q, k, v, attend, positions, segment_ids, attend_backward) -> out: set by
        # tapa_scale.parallel when parallel.cp > 1; the attention math itself never sees ranks.
        self.context_parallel = context_parallel

    def attend(self, q, k, v, **masks):
        return attention(q, k, v, self.encoding, impl=self.impl, head_offset=self.head_offset, **masks)

    def attend_backward(self, q, k, v, out, lse, dout, **masks):
        """Gradients of one key block given the ring's merged out/lse: the fused kernel's backward entry."""
        from ..ops.tapa_triton import tapa_attention_triton_backward

        e = self.encoding
        return tapa_attention_triton_backward(q, k, v, out, lse, dout, alpha=e.alpha, theta=e.theta,
                                              phase=e.phase, **masks)

    def forward(self, query, key, value, attention_mask=None, attn_mask_type=None,
                attention_bias=None, packed_seq_params=None):
        positions = segments = None
        if isinstance(packed_seq_params, TokenLayout):
            positions, segments = packed_seq_params.positions, packed_seq_params.segment_ids
        # [s, b, h, d] -> (B, H, N, D)
        q, k, v = (t.permute(1, 2, 0, 3) for t in (query, key, value))
        if self.context_parallel is not None:
            kernel = self.encoding.kind == "tapa" and resolve_impl(self.impl, q) == "triton"
            out = self.context_parallel(q, k, v, self.attend, positions, segments,
                                        attend_backward=self.attend_backward if kernel else None)
        else:
            out = self.attend(q, k, v, q_positions=positions, k_positions=positions,
                              q_segment_ids=segments, k_segment_ids=segments)
        # (B, H, N, D) -> [s, b, h * d]
        b, h, n, d = out.shape
        return out.permute(2, 0, 1, 3).reshape(n, b, h * d)
