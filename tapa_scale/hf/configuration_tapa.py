"""Hugging Face configuration of a tapa_scale language model (`model_type` "tapa_lm").

This file is copied beside exported weights and loaded with `trust_remote_code=True`, so it imports
only transformers. It serves the encodings with no Llama counterpart (TAPA, ALiBi, NoPE; the RoPE family
exports as plain Llama checkpoints). Architecture fields use Llama's names (hidden_size,
intermediate_size, num_key_value_heads, rms_norm_eps) so tools that read those keys work.
"""
from transformers import PretrainedConfig

POSITION_ENCODINGS = ("tapa", "nope", "alibi")
TAPA_PHASES = ("quadratic", "linear")


class TapaLMConfig(PretrainedConfig):
    """Decoder-only transformer: pre-norm RMSNorm, SwiGLU MLP, grouped-query attention, no biases.

    position_encoding: tapa | nope | alibi.
    tapa_alpha, tapa_theta, tapa_phase: TAPA's distance exponent, amplitude share of the head dim
        and phase form (quadratic = the method, linear = the paper's ablation).
    tapa_rope_heads, tapa_rope_window, tapa_rope_theta: local-RoPE heads beside TAPA's: the first
        tapa_rope_heads query heads score by RoPE (base tapa_rope_theta) over keys fewer than
        tapa_rope_window positions behind the query (0 heads: plain TAPA).
    max_position_embeddings: the training sequence length (informative: no encoding here has a
        hard limit, and TAPA is meant to run beyond it).
    """

    model_type = "tapa_lm"
    keys_to_ignore_at_inference = ["past_key_values"]

    def __init__(self, vocab_size=8192, hidden_size=128, intermediate_size=384, num_hidden_layers=4,
                 num_attention_heads=4, num_key_value_heads=None, rms_norm_eps=1e-5,
                 max_position_embeddings=2048, initializer_range=0.02, tie_word_embeddings=True,
                 position_encoding="tapa", tapa_alpha=0.1, tapa_theta=0.5, tapa_phase="quadratic",
                 tapa_rope_heads=0, tapa_rope_window=0, tapa_rope_theta=10000.0,
                 use_cache=True, bos_token_id=None, eos_token_id=None,
                 pad_token_id=None, **kwargs):
        if position_encoding not in POSITION_ENCODINGS:
            raise ValueError(f"position_encoding={position_encoding!r}: expected one of {POSITION_ENCODINGS}")
        if tapa_phase not in TAPA_PHASES:
            raise ValueError(f"tapa_phase={tapa_phase!r}: expected one of {TAPA_PHASES}")
        if hidden_size % num_attention_heads:
            raise ValueError(f"hidden_size={hidden_size} is not divisible by num_attention_heads="
                             f"{num_attention_heads}")
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_key_value_heads or num_attention_heads
        self.head_dim = hidden_size // num_attention_heads
        self.rms_norm_eps = rms_norm_eps
        self.max_position_embeddings = max_position_embeddings
        self.initializer_range = initializer_range
        self.position_encoding = position_encoding
        self.tapa_alpha = tapa_alpha
        self.tapa_theta = tapa_theta
        self.tapa_phase = tapa_phase
        self.tapa_rope_heads = tapa_rope_heads
        self.tapa_rope_window = tapa_rope_window
        self.tapa_rope_theta = tapa_rope_theta
        self.use_cache = use_cache
        super().__init__(tie_word_embeddings=tie_word_embeddings, bos_token_id=bos_token_id,
                         eos_token_id=eos_token_id, pad_token_id=pad_token_id, **kwargs)
