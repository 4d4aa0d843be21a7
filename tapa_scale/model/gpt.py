"""The decoder: a LLaMA-style transformer (RMSNorm, SwiGLU, grouped-query attention, optionally tied
embeddings) assembled from megatron-core layer specs, with the positional encoding in one slot.

Read top to bottom: norm and attention slot -> layer spec -> megatron TransformerConfig -> model.
Parallelism (tensor/sequence/pipeline/context) is not decided here: it arrives through the
TransformerConfig sizes and `pg_collection` chosen by tapa_scale.parallel.

Initial weights (`init_seed`): each random part of the model (the embedding, every decoder layer by its
global index, an untied output layer) is drawn from a CPU generator seeded by (init_seed, its name), so
the weights do not depend on which pipeline stage, virtual stage or tensor rank builds them.
"""
from __future__ import annotations

import contextlib
import hashlib
from typing import Optional

import torch
import torch.nn.functional as F
from megatron.core.fusions.fused_bias_dropout import get_bias_dropout_add
from megatron.core.tensor_parallel.layers import ColumnParallelLinear, RowParallelLinear
from megatron.core.transformer.attention import SelfAttention, SelfAttentionSubmodules
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.identity_op import IdentityOp
from megatron.core.transformer.mlp import MLP, MLPSubmodules
from megatron.core.transformer.spec_utils import ModuleSpec
from megatron.core.transformer.transformer_block import TransformerBlockSubmodules
from megatron.core.transformer.transformer_config import TransformerConfig
from megatron.core.transformer.transformer_layer import (TransformerLayer, TransformerLayerSubmodules,
                                                         get_transformer_layer_offset)

from .config import ModelConfig
from .core_attention import CoreAttention
from .lm_head import GPT
from .norm import RMSNorm


def part_seed(init_seed: int, name: str) -> int:
    """The generator seed of one part of the model: a stable 63-bit hash of (init_seed, name)."""
    digest = hashlib.blake2b(f"{init_seed}/{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


@contextlib.contextmanager
def drawing(init_seed: Optional[int], name: str):
    """Weights initialised inside come from the CPU generator seeded by (init_seed, name); the global CPU
    generator is left as it was (megatron's CPU initialisation draws from it). None: draw from the global
    generator as it stands."""
    if init_seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(part_seed(init_seed, name))
        yield


class SeededLayer(TransformerLayer):
    """megatron's TransformerLayer, its weights drawn from the stream of its global layer index."""

    def __init__(self, config, submodules, layer_number: int = 1, hidden_dropout=None, pg_collection=None,
                 vp_stage=None, init_seed: Optional[int] = None):
        from megatron.core.process_groups_config import ProcessGroupCollection
        from megatron.core.utils import get_pg_rank

        # the same global index megatron gives the layer (super() sets self.layer_number from it)
        pp_group = (pg_collection or ProcessGroupCollection.use_mpu_process_groups()).pp
        index = layer_number - 1 + get_transformer_layer_offset(config, vp_stage, get_pg_rank(pp_group))
        with drawing(init_seed, f"decoder.layers.{index}"):
            super().__init__(config, submodules, layer_number=layer_number, hidden_dropout=hidden_dropout,
                             pg_collection=pg_collection, vp_stage=vp_stage)


def layer_spec(cfg: ModelConfig, seq_len: int, context_parallel=None,
               init_seed: Optional[int] = None) -> ModuleSpec:
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
    layer = TransformerLayerSubmodules(
        input_layernorm=RMSNorm, self_attention=attention, self_attn_bda=get_bias_dropout_add,
        pre_mlp_layernorm=RMSNorm, mlp=mlp, mlp_bda=get_bias_dropout_add)
    return ModuleSpec(module=SeededLayer, params={"init_seed": init_seed}, submodules=layer)


def transformer_config(cfg: ModelConfig, *, dtype: torch.dtype = torch.float32, tp: int = 1, pp: int = 1,
                       cp: int = 1, sequence_parallel: bool = False, cpu_init: bool = True,
                       recompute: str = "none") -> TransformerConfig:
    """megatron's TransformerConfig for our architecture; fusions that need CUDA extensions stay off.

    recompute="full": megatron's full activation recomputation, one layer at a time (each layer keeps
    only its input and runs its forward again in backward); "selective": megatron's selective
    recomputation of the core attention (it keeps q, k, v and runs the attention again in backward)."""
    rebuild = {"full": dict(recompute_granularity="full", recompute_method="uniform", recompute_num_layers=1),
               "selective": dict(recompute_granularity="selective", recompute_modules=["core_attn"]),
               "none": {}}[recompute]
    return TransformerConfig(**rebuild,
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
                context_parallel=None, vp_stage: Optional[int] = None,
                init_seed: Optional[int] = None) -> GPT:
    """The decoder (or this pipeline stage of it). forward(input_ids [b, s], position_ids=None,
    attention_mask=None, labels [b, s], packed_seq_params=TokenLayout) -> per-token loss [b, s]
    (logits [b, s, vocab] without labels), the loss chunked over the sequence (lm_head.py).

    init_seed: weights as a function of (init_seed, the model) alone, the same slices in every layout
    (see the module docstring); None draws everything in build order from the global CPU generator."""
    block = TransformerBlockSubmodules(
        layer_specs=[layer_spec(cfg, seq_len, context_parallel, init_seed)] * _layers_here(config, vp_stage),
        layer_norm=RMSNorm)
    with drawing(init_seed, "embedding"):  # the first draw inside GPTModel; layers draw from their own
        model = GPT(
            config=config, transformer_layer_spec=block, vocab_size=vocab_size,
            max_sequence_length=seq_len, pre_process=pre_process, post_process=post_process,
            share_embeddings_and_output_weights=cfg.tie_embeddings, position_embedding_type="none",
            pg_collection=pg_collection, vp_stage=vp_stage)
    if init_seed is not None:
        _redraw_output_layer(model, init_seed)
    return model


def _redraw_output_layer(model: GPT, init_seed: int) -> None:
    """An untied output layer, drawn again from its own stream: GPTModel drew it after whatever this
    stage built before it (the embedding on a first stage, nothing on a later one). A tied one is the
    embedding (a last stage's copy is set from the first stage's) and is left alone."""
    from megatron.core.tensor_parallel.layers import _initialize_affine_weight_cpu
    from megatron.core.utils import get_pg_rank, get_pg_size

    weight = getattr(getattr(model, "output_layer", None), "weight", None)
    if weight is None or model.share_embeddings_and_output_weights:
        return
    tp = model.pg_collection.tp
    with drawing(init_seed, "output_layer"):
        _initialize_affine_weight_cpu(
            weight, model.vocab_size, model.config.hidden_size, weight.shape[0], 0, model.config.init_method,
            params_dtype=model.config.params_dtype, rank=get_pg_rank(tp), world_size=get_pg_size(tp),
            skip_set_tensor_parallel_attributes=True)


def _layers_here(config: TransformerConfig, vp_stage: Optional[int]) -> int:
    from megatron.core.transformer.transformer_block import get_num_layers_to_build
    return get_num_layers_to_build(config, vp_stage=vp_stage)
