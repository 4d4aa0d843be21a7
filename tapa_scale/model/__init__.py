"""The transformer: configuration, megatron-core layer specs, our norm and core-attention slot."""
import warnings

# megatron-core announces at import that optional CUDA extensions (Transformer Engine, Apex) are absent;
# we use its local implementations on purpose, so the notice is noise.
warnings.filterwarnings("ignore", message=r".*(Transformer Engine|Apex).*not installed.*")
warnings.filterwarnings("ignore", message=r".*Apex is not installed.*")

from .config import ModelConfig, RopeConfig, TapaConfig, validate_model
from .core_attention import CoreAttention, TokenLayout
from .gpt import build_model, layer_spec, transformer_config

__all__ = ["ModelConfig", "RopeConfig", "TapaConfig", "validate_model", "CoreAttention", "TokenLayout",
           "build_model", "layer_spec", "transformer_config"]
