"""The decoder: a LLaMA-style transformer (RMSNorm, SwiGLU, grouped-query attention, optionally tied
embeddings) assembled from megatron-core layer specs, with the positional encoding in one slot.

Read top to bottom: norm and attention slot -> layer spec -> megatron TransformerConfig -> model.
Parallelism (tensor/sequence/pipeline/context) is not decided here: it arrives through the
TransformerConfig sizes and `pg_collection` chosen by tapa_scale.parallel.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from megatron.core.fusions.fused_bias_dropout import get_bias_dropout_add
from megatron.core.models.gpt import GPTModel
from megatron.core.tensor_parallel.layers import ColumnParallelLinear, RowParallelLinear
from megatron.core.transformer.attention import SelfAttention, SelfAttentionSubmodules
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.identity_op import IdentityOp
from megatron.core.transformer.mlp import MLP, MLPSubmodules
from megatron.core.transformer.spec_utils import ModuleSpec
from megatron.core.transformer.transformer_block import TransformerBlockSubmodules
from megatron.core.transformer.transformer_config import TransformerConfig
from megatron.core.transformer.transformer_layer import TransformerLayer, TransformerLayerSubmodules

from .config import ModelConfig
from .core_attention import CoreAttention
from .norm import RMSNorm


def layer_spec(cfg: ModelConfig, seq_len: int, context_parallel=None) -> ModuleSpec:
    """One pre-norm decoder layer: x + Attn(RMSNorm(x)), then x + SwiGLU(RMSNorm(x))."""
    core_attention = ModuleSpec(module=CoreAttention, params={
        "encoding": cfg.encoding(seq_len), "impl": cfg.attention_impl,
        "context_parallel": context_parallel})
    attention = ModuleSpec(
        module=SelfAttention,
        params={"attn_mask_type": AttnMaskType.causal},
        submodules=SelfAttentionSubmodules(
            linear_qkv=ColumnParallelLinear, core_attention=core_attention,
            linear_proj=RowParallelLinear, q_layernorm=IdentityOp, k_layernorm=IdentityOp))
    mlp = ModuleSpec(module=MLP, submodules=MLPSubmodules(
        linear_fc1=ColumnParallelLinear, linear_fc2=RowParallelLinear))
    return ModuleSpec(module=TransformerLayer, submodules=TransformerLayerSubmodules(
        input_layernorm=RMSNorm, self_attention=attention, self_attn_bda=get_bias_dropout_add,
        pre_mlp_layernorm=RMSNorm, mlp=mlp, mlp_bda=get_bias_dropout_add))


def transformer_config(cfg: ModelConfig, *, dtype: torch.dtype = torch.float32, tp: int = 1, pp: int = 1,
                       cp: int = 1, sequence_parallel: bool = False, cpu_init: bool = True) -> TransformerConfig:
    """megatron's TransformerConfig for our architecture; fusions that need CUDA extensions stay off."""
    return TransformerConfig(
        num_layers=cfg.num_layers, hidden_size=cfg.hidden_size, num_attention_heads=cfg.num_heads,
        num_query_groups=cfg.kv_heads, kv_channels=cfg.head_dim, ffn_hidden_size=cfg.ffn_size,
        gated_linear_unit=True, activation_func=F.silu, add_bias_linear=False,
        normalization="RMSNorm", layernorm_epsilon=cfg.norm_eps, hidden_dropout=0.0, attention_dropout=0.0,
        init_method_std=cfg.init_std, params_dtype=dtype, bf16=dtype == torch.bfloat16,
        pipeline_dtype=dtype, use_cpu_initialization=cpu_init,
        tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp, context_parallel_size=cp,
        sequence_parallel=sequence_parallel, bias_dropout_fusion=False, apply_rope_fusion=False,
        masked_softmax_fusion=False, gradient_accumulation_fusion=False, persist_layer_norm=False,
        cross_entropy_loss_fusion=False,
    )


def build_model(cfg: ModelConfig, *, vocab_size: int, seq_len: int, config: TransformerConfig,
                pre_process: bool = True, post_process: bool = True, pg_collection=None,
                context_parallel=None, vp_stage: Optional[int] = None) -> GPTModel:
    """The decoder (or this pipeline stage of it). forward(input_ids [b, s], position_ids=None,
    attention_mask=None, labels [b, s], packed_seq_params=TokenLayout) -> per-token loss [b, s]
    (logits [b, s, vocab] without labels)."""
    block = TransformerBlockSubmodules(
        layer_specs=[layer_spec(cfg, seq_len, context_parallel)] * _layers_here(config, vp_stage),
        layer_norm=RMSNorm)
    return GPTModel(
        config=config, transformer_layer_spec=block, vocab_size=vocab_size,
        max_sequence_length=seq_len, pre_process=pre_process, post_process=post_process,
        share_embeddings_and_output_weights=cfg.tie_embeddings, position_embedding_type="none",
        pg_collection=pg_collection, vp_stage=vp_stage)


def _layers_here(config: TransformerConfig, vp_stage: Optional[int]) -> int:
    from megatron.core.transformer.transformer_block import get_num_layers_to_build
    return get_num_layers_to_build(config, vp_stage=vp_stage)
