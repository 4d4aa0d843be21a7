"""The `model` section of the configuration: architecture sizes and the positional encoding."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from ..ops.attention import ENCODINGS, IMPLS, ROTARY, PositionalEncoding
from ..ops.tapa_reference import PHASES, tapa_amp_dims


@dataclass
class TapaConfig:
    alpha: float = 0.1          # distance exponent in |m-n|^alpha (paper default)
    theta: float = 0.5          # share of each head's dims used for the amplitude
    phase: str = "quadratic"    # quadratic (the method) | linear (the paper's ablation)
    rope_heads: int = 0         # local-RoPE heads: the first rope_heads query heads score by RoPE ...
    rope_window: int = 0        # ... over the last rope_window positions only (docs/model.md); 0 heads = off


@dataclass
class RopeConfig:
    """The RoPE family's parameters, named after transformers' `rope_theta` / `rope_scaling` keys."""
    base: float = 10000.0       # rope_theta (rope, pi, yarn, llama3)
    scale: float = 1.0          # factor (pi, yarn, llama3): context extension factor
    original_length: int = 0    # original_max_position_embeddings (yarn, llama3); 0 = data.seq_len
    beta_fast: float = 32.0     # yarn ramp bounds, in turns over original_length
    beta_slow: float = 1.0
    attention_factor: float = 0.0  # yarn: factor on cos and sin; 0 = 0.1 ln(scale) + 1
    low_freq_factor: float = 1.0   # llama3: wavelengths above original_length / low_freq_factor are scaled
    high_freq_factor: float = 4.0  # llama3: wavelengths below original_length / high_freq_factor are kept


@dataclass
class ModelConfig:
    num_layers: int = 4
    hidden_size: int = 128
    num_heads: int = 4
    num_kv_heads: int = 0       # grouped-query attention; 0 = num_heads (plain multi-head)
    ffn_hidden_size: int = 0    # SwiGLU width; 0 = 8/3 * hidden_size rounded up to a multiple of 64
    vocab_size: int = 0         # 0 = the tokenizer's vocabulary size
    tie_embeddings: bool = True
    norm_eps: float = 1e-5
    init_std: float = 0.02
    pos_encoding: str = "tapa"  # tapa | rope | pi | yarn | llama3 | nope | alibi
    attention_impl: str = "auto"  # auto | reference | triton (TAPA only)
    tapa: TapaConfig = field(default_factory=TapaConfig)
    rope: RopeConfig = field(default_factory=RopeConfig)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def kv_heads(self) -> int:
        return self.num_kv_heads or self.num_heads

    @property
    def ffn_size(self) -> int:
        return self.ffn_hidden_size or -(-(8 * self.hidden_size // 3) // 64) * 64

    def encoding(self, seq_len: int = 0) -> PositionalEncoding:
        r, t = self.rope, self.tapa
        return PositionalEncoding(kind=self.pos_encoding, alpha=t.alpha, theta=t.theta, phase=t.phase,
                                  rope_base=r.base, scale=r.scale,
                                  original_length=r.original_length or seq_len,
                                  beta_fast=r.beta_fast, beta_slow=r.beta_slow,
                                  attention_factor=r.attention_factor, low_freq_factor=r.low_freq_factor,
                                  high_freq_factor=r.high_freq_factor, rope_heads=t.rope_heads,
                                  rope_window=t.rope_window)


# Model keys that choose how the same function is computed, not which function: a run may resume
# with another value (docs/checkpoints.md). Every other model key, init_std included (it records how
# the saved weights were made), must stay.
IMPLEMENTATION_KEYS = ("attention_impl",)


def model_identity(m: ModelConfig, seq_len: int) -> dict:
    """The model keys that define the function, flattened to dotted names, with defaults resolved
    (0 = derived sizes, the original length 0 = seq_len): two configs describe the same model
    exactly when these are equal."""
    flat = {}
    for key, value in asdict(m).items():
        if isinstance(value, dict):
            flat.update({f"{key}.{k}": v for k, v in value.items()})
        elif key not in IMPLEMENTATION_KEYS:
            flat[key] = value
    flat.update({"num_kv_heads": m.kv_heads, "ffn_hidden_size": m.ffn_size,
                 "rope.original_length": m.rope.original_length or seq_len})
    return flat


def validate_model(m: ModelConfig) -> list[str]:
    """Problems with the model section, each naming its key, value and what is allowed."""
    errs = []
    for key in ("num_layers", "hidden_size", "num_heads"):
        if getattr(m, key) <= 0:
            errs.append(f"model.{key}={getattr(m, key)}: must be > 0")
    if errs:
        return errs
    if m.hidden_size % m.num_heads:
        errs.append(f"model.hidden_size={m.hidden_size} is not divisible by model.num_heads={m.num_heads}")
    if m.num_kv_heads < 0 or m.num_heads % m.kv_heads:
        errs.append(f"model.num_kv_heads={m.num_kv_heads} must divide model.num_heads={m.num_heads} (0 = num_heads)")
    if m.pos_encoding not in ENCODINGS:
        errs.append(f"model.pos_encoding={m.pos_encoding!r}: expected one of {', '.join(ENCODINGS)}")
    if m.attention_impl not in IMPLS:
        errs.append(f"model.attention_impl={m.attention_impl!r}: expected one of {', '.join(IMPLS)}")
    if not 0.0 < m.tapa.theta < 1.0:
        errs.append(f"model.tapa.theta={m.tapa.theta}: must lie strictly between 0 and 1")
    elif m.hidden_size % m.num_heads == 0:
        d_amp = tapa_amp_dims(m.head_dim, m.tapa.theta)
        if m.pos_encoding == "tapa" and not 0 < d_amp < m.head_dim:
            errs.append(f"model.tapa.theta={m.tapa.theta} leaves no amplitude or phase dims of head_dim={m.head_dim} "
                        f"(d_amp = floor(theta*head_dim + 1/2) = {d_amp}; both parts need at least one dim)")
    if not m.tapa.alpha > 0.0:
        errs.append(f"model.tapa.alpha={m.tapa.alpha}: must be > 0")
    if m.tapa.phase not in PHASES:
        errs.append(f"model.tapa.phase={m.tapa.phase!r}: expected one of {', '.join(PHASES)}")
    t = m.tapa
    if t.rope_heads or t.rope_window:
        group = m.num_heads // m.kv_heads if m.num_heads % m.kv_heads == 0 else 1
        if m.pos_encoding != "tapa":
            errs.append(f"model.tapa.rope_heads={t.rope_heads}: local-RoPE heads are a TAPA option; "
                        f"model.pos_encoding={m.pos_encoding} (set rope_heads=0)")
        elif not 0 < t.rope_heads < m.num_heads or t.rope_heads % group or t.rope_window < 1 or m.head_dim % 2:
            errs.append(f"model.tapa.rope_heads={t.rope_heads}, rope_window={t.rope_window}: expected 0 < rope_heads "
                        f"< num_heads={m.num_heads}, a multiple of the {group} query heads per key/value head, "
                        f"rope_window >= 1 and an even head dim ({m.head_dim})")
    if m.pos_encoding in ROTARY and m.head_dim % 2:
        errs.append(f"model.pos_encoding={m.pos_encoding} needs an even head dim, got {m.head_dim}")
    if not m.rope.base > 1.0:
        errs.append(f"model.rope.base={m.rope.base}: must be > 1")
    if not m.rope.scale >= 1.0:
        errs.append(f"model.rope.scale={m.rope.scale}: must be >= 1")
    if not m.rope.beta_fast > m.rope.beta_slow > 0:
        errs.append(f"model.rope.beta_fast={m.rope.beta_fast}, beta_slow={m.rope.beta_slow}: "
                    f"expected beta_fast > beta_slow > 0")
    if m.rope.attention_factor < 0:
        errs.append(f"model.rope.attention_factor={m.rope.attention_factor}: must be >= 0 (0 = derived)")
    if not m.rope.high_freq_factor > m.rope.low_freq_factor > 0:
        errs.append(f"model.rope.low_freq_factor={m.rope.low_freq_factor}, high_freq_factor="
                    f"{m.rope.high_freq_factor}: expected high_freq_factor > low_freq_factor > 0")
    return errs


# A key every config.yaml has carried since YaRN follows transformers' definition (a ramp linear in the
# pair index); a yarn model whose saved config lacks it was trained with the earlier ramp (linear in
# turns over the original length), whose frequencies differ.
YARN_DEFINITION_KEY = "attention_factor"


def saved_rope_rule_problem(raw: dict) -> str:
    """Why a saved config (the raw mapping of a checkpoint's config.yaml) cannot be loaded as the model
    it names, or "": a YaRN model trained under the earlier frequency rule would compute another
    function under today's, and no exact conversion exists."""
    model = (raw or {}).get("model") or {}
    if model.get("pos_encoding") == "yarn" and YARN_DEFINITION_KEY not in (model.get("rope") or {}):
        return ("model.pos_encoding=yarn was written with the earlier YaRN rule (ramp linear in turns over "
                "the original length); today's is transformers' (ramp linear in the pair index), so these "
                "weights are not the same model under it: retrain, or fine-tune from them under today's "
                "rule with train.init_from (docs/hf.md, YaRN)")
    return ""
