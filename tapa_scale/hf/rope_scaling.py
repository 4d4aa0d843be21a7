"""Our RoPE-family settings <-> a Llama config's `rope_theta` / `rope_scaling`, both directions.

model.pos_encoding   rope_scaling (transformers' rope_type and keys)
    rope             none ("default")
    pi               {"rope_type": "linear", "factor": scale}
    yarn             {"rope_type": "yarn", "factor": scale, "original_max_position_embeddings",
                      "beta_fast", "beta_slow"[, "attention_factor"]}
    llama3           {"rope_type": "llama3", "factor": scale, "original_max_position_embeddings",
                      "low_freq_factor", "high_freq_factor"}

The frequencies themselves are computed by tapa_scale/ops/rope.py, equal to transformers' for each
rope_type (tests/hf/test_llama.py). "dynamic" (NTK scaling that changes with the length of each
input, an inference-time rule) and "longrope" are not supported: a model trained with fixed
frequencies is not the same function under them.
"""
from __future__ import annotations

from ..model.config import RopeConfig

KINDS = {"default": "rope", "linear": "pi", "yarn": "yarn", "llama3": "llama3"}
# rope_scaling keys each rope_type may carry, beyond rope_type/type and factor
_KEYS = {"default": set(), "linear": set(),
         "yarn": {"original_max_position_embeddings", "beta_fast", "beta_slow", "attention_factor",
                  "mscale", "mscale_all_dim", "truncate"},
         "llama3": {"original_max_position_embeddings", "low_freq_factor", "high_freq_factor"}}


def to_llama_rope(pos_encoding: str, rope: RopeConfig, seq_len: int) -> dict:
    """rope_theta, rope_scaling and max_position_embeddings for a Llama config.json of our model
    (rope.original_length already resolved; 0 falls back to seq_len). YaRN's max_position_embeddings is
    the extended length (original x factor), as transformers expects; the others keep seq_len."""
    original = rope.original_length or seq_len
    out = {"rope_theta": float(rope.base), "rope_scaling": None, "max_position_embeddings": seq_len}
    if pos_encoding == "pi":
        out["rope_scaling"] = {"rope_type": "linear", "factor": float(rope.scale)}
    elif pos_encoding == "yarn":
        out["rope_scaling"] = {"rope_type": "yarn", "factor": float(rope.scale),
                               "original_max_position_embeddings": original,
                               "beta_fast": float(rope.beta_fast), "beta_slow": float(rope.beta_slow)}
        if rope.attention_factor:
            out["rope_scaling"]["attention_factor"] = float(rope.attention_factor)
        out["max_position_embeddings"] = max(seq_len, int(round(original * rope.scale)))
    elif pos_encoding == "llama3":
        out["rope_scaling"] = {"rope_type": "llama3", "factor": float(rope.scale),
                               "original_max_position_embeddings": original,
                               "low_freq_factor": float(rope.low_freq_factor),
                               "high_freq_factor": float(rope.high_freq_factor)}
    elif pos_encoding != "rope":
        raise ValueError(f"model.pos_encoding={pos_encoding!r} has no Llama rope_scaling")
    return out


def from_llama_rope(config: dict) -> tuple[str, RopeConfig, list[str]]:
    """(model.pos_encoding, rope section, problems) of a Llama config.json's rope settings; each problem
    names the config key and what is supported."""
    scaling = config.get("rope_scaling") or {}
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    base = float(config.get("rope_theta", 10000.0))
    if kind not in KINDS:
        return "rope", RopeConfig(base=base), [
            f"rope_scaling.rope_type={kind!r} (supported: {', '.join(KINDS)}; dynamic and longrope change "
            f"the frequencies with the input length)"]
    problems = [f"rope_scaling.{key}={scaling[key]!r} (not read for rope_type {kind!r})"
                for key in sorted(set(scaling) - _KEYS[kind] - {"rope_type", "type", "factor"})]
    if config.get("partial_rotary_factor", 1.0) != 1.0:
        problems.append(f"partial_rotary_factor={config['partial_rotary_factor']} (every dim rotates here)")
    if kind == "yarn":
        if scaling.get("mscale") or scaling.get("mscale_all_dim"):
            problems.append(f"rope_scaling.mscale={scaling.get('mscale')!r}, mscale_all_dim="
                            f"{scaling.get('mscale_all_dim')!r} (only attention_factor or the default "
                            f"0.1 ln(factor) + 1)")
        if scaling.get("truncate", True) is not True:
            problems.append("rope_scaling.truncate=false (the ramp bounds are floored and ceiled here)")
    rope = RopeConfig(base=base, scale=float(scaling.get("factor", 1.0)))
    if kind in ("yarn", "llama3"):
        # transformers falls back to max_position_embeddings for YaRN; llama3 requires the key
        original = scaling.get("original_max_position_embeddings")
        if original is None and kind == "yarn":
            original = config.get("max_position_embeddings")
        if not original:
            problems.append(f"rope_scaling.original_max_position_embeddings missing ({kind} needs it)")
        rope.original_length = int(original or 0)
    if kind == "yarn":
        rope.beta_fast = float(scaling.get("beta_fast") or 32.0)
        rope.beta_slow = float(scaling.get("beta_slow") or 1.0)
        rope.attention_factor = float(scaling.get("attention_factor") or 0.0)
    if kind == "llama3":
        rope.low_freq_factor = float(scaling.get("low_freq_factor", 1.0))
        rope.high_freq_factor = float(scaling.get("high_freq_factor", 4.0))
    return KINDS[kind], rope, problems
