"""Parameter names and layouts: our megatron-core GPTModel state dict <-> the Hugging Face export.

The export uses Llama's parameter names (model.layers.i.self_attn.q_proj, mlp.gate_proj, ...), so a
Llama checkpoint maps onto our model by the same table. The only reshuffles are megatron's fused
projections (see megatron/core/transformer/attention.py, SelfAttention.get_query_key_value_tensors,
and megatron/core/transformer/mlp.py):

    linear_qkv.weight  (ng * (G + 2) * D, hidden): rows grouped per key/value group g as
                       [q heads g*G .. g*G+G-1 (G*D rows), k head g (D rows), v head g (D rows)]
    linear_fc1.weight  (2 * ffn, hidden): [gate; up], the MLP computes silu(gate) * up

Both directions work on full, unsharded tensors of a tensor-parallel size 1 model. Query head h uses
key/value head h // G in both models, so grouped-query attention needs no reordering of heads.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Shape:
    """The sizes the name table and the fused-projection reshapes need."""
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    hidden_size: int
    tie_embeddings: bool


# per-layer names that are a plain rename: megatron suffix -> HF suffix
_LAYER_RENAMES = {
    "input_layernorm.weight": "input_layernorm.weight",
    "pre_mlp_layernorm.weight": "post_attention_layernorm.weight",
    "self_attention.linear_proj.weight": "self_attn.o_proj.weight",
    "mlp.linear_fc2.weight": "mlp.down_proj.weight",
}
_TOP_RENAMES = {
    "embedding.word_embeddings.weight": "model.embed_tokens.weight",
    "decoder.final_layernorm.weight": "model.norm.weight",
    "output_layer.weight": "lm_head.weight",
}


def split_qkv(qkv: torch.Tensor, s: Shape) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """megatron linear_qkv (ng*(G+2)*D, hidden) -> q (Hq*D, hidden), k, v (ng*D, hidden)."""
    g = s.num_heads // s.num_kv_heads
    grouped = qkv.view(s.num_kv_heads, g + 2, s.head_dim, qkv.shape[-1])  # (ng, G+2, D, hidden)
    q = grouped[:, :g].reshape(s.num_heads * s.head_dim, -1)
    k = grouped[:, g].reshape(s.num_kv_heads * s.head_dim, -1)
    v = grouped[:, g + 1].reshape(s.num_kv_heads * s.head_dim, -1)
    return q.contiguous(), k.contiguous(), v.contiguous()


def merge_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, s: Shape) -> torch.Tensor:
    """Inverse of split_qkv."""
    g = s.num_heads // s.num_kv_heads
    hidden = q.shape[-1]
    grouped = torch.cat([q.view(s.num_kv_heads, g, s.head_dim, hidden),
                         k.view(s.num_kv_heads, 1, s.head_dim, hidden),
                         v.view(s.num_kv_heads, 1, s.head_dim, hidden)], dim=1)  # (ng, G+2, D, hidden)
    return grouped.reshape(-1, hidden).contiguous()


def megatron_to_hf(sd: dict[str, torch.Tensor], s: Shape) -> dict[str, torch.Tensor]:
    """Our full state dict -> HF names. Tied models carry no lm_head.weight (transformers ties it)."""
    sd = dict(sd)
    out = {}
    for i in range(s.num_layers):
        src, dst = f"decoder.layers.{i}.", f"model.layers.{i}."
        for a, b in _LAYER_RENAMES.items():
            out[dst + b] = sd.pop(src + a)
        q, k, v = split_qkv(sd.pop(src + "self_attention.linear_qkv.weight"), s)
        out.update({dst + "self_attn.q_proj.weight": q, dst + "self_attn.k_proj.weight": k,
                    dst + "self_attn.v_proj.weight": v})
        gate, up = sd.pop(src + "mlp.linear_fc1.weight").chunk(2, dim=0)
        out.update({dst + "mlp.gate_proj.weight": gate.contiguous(), dst + "mlp.up_proj.weight": up.contiguous()})
    for a, b in _TOP_RENAMES.items():
        if a in sd:
            out[b] = sd.pop(a)
    leftover = [k for k in sd if not k.endswith("_extra_state")]
    if leftover:
        raise ValueError(f"checkpoint has parameters the export does not know: {leftover[:5]}")
    if s.tie_embeddings:
        out.pop("lm_head.weight", None)
    elif "lm_head.weight" not in out:
        raise ValueError("untied checkpoint (model.tie_embeddings=false) has no output_layer.weight")
    return out


def hf_to_megatron(sd: dict[str, torch.Tensor], s: Shape) -> dict[str, torch.Tensor]:
    """HF names (ours or Llama's) -> our full state dict; rotary buffers are ignored."""
    sd = {k: v for k, v in sd.items() if not k.endswith("rotary_emb.inv_freq")}
    out = {}
    for i in range(s.num_layers):
        src, dst = f"model.layers.{i}.", f"decoder.layers.{i}."
        for a, b in _LAYER_RENAMES.items():
            out[dst + a] = _take(sd, src + b)
        q, k, v = (_take(sd, f"{src}self_attn.{p}_proj.weight") for p in "qkv")
        out[dst + "self_attention.linear_qkv.weight"] = merge_qkv(q, k, v, s)
        gate, up = _take(sd, src + "mlp.gate_proj.weight"), _take(sd, src + "mlp.up_proj.weight")
        out[dst + "mlp.linear_fc1.weight"] = torch.cat([gate, up], dim=0).contiguous()
    for a, b in _TOP_RENAMES.items():
        if b == "lm_head.weight":
            continue
        out[a] = _take(sd, b)
    head = sd.pop("lm_head.weight", None)
    if not s.tie_embeddings:
        if head is None:
            raise ValueError("untied model (tie_word_embeddings=false) has no lm_head.weight")
        out["output_layer.weight"] = head
    if sd:
        raise ValueError(f"parameters with no counterpart in our model: {sorted(sd)[:5]}")
    return out


def _take(sd: dict, key: str) -> torch.Tensor:
    if key not in sd:
        raise ValueError(f"missing parameter {key!r}")
    return sd.pop(key)
