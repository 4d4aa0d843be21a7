"""The transformer: configuration, megatron-core layer specs, our norm and core-attention slot."""
from .config import ModelConfig, RopeConfig, TapaConfig, validate_model
from .core_attention import CoreAttention, TokenLayout
from .gpt import build_model, layer_spec, transformer_config

__all__ = ["ModelConfig", "RopeConfig", "TapaConfig", "validate_model", "CoreAttention", "TokenLayout",
           "build_model", "layer_spec", "transformer_config"]
