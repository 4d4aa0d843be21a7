"""Hugging Face directory -> our checkpoint (`tools/convert_from_hf.py`).

Accepted: our own export (model_type "tapa_lm") and Llama-architecture checkpoints (model_type "llama":
RMSNorm, SwiGLU, no biases, RoPE in the rotate-half layout that tapa_scale/ops/rope.py uses, so q/k rows
map over unchanged; `rope_scaling` none, "linear", "yarn" or "llama3", mapped by rope_scaling.py), which
is also what our RoPE-family exports are. Weights must be safetensors.

The result is a weights-only checkpoint directory in the single-process layout of
tapa_scale/train/checkpoint.py: model.safetensors, config.yaml (a complete run config whose model section
describes the imported model), tokenizer/ and COMPLETE. It has no optimizer, RNG or data-loader state:
it starts a new run (fresh optimizer and schedule, step 0), e.g. a context-extension stage, rather than
resuming an old one. `overrides` (key=value) edit the config, e.g. model.pos_encoding=yarn
model.rope.scale=8 to extend the context of a RoPE model (docs/hf.md).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Sequence

import torch
from safetensors.torch import load_file, save_file

from ..config import Config, ConfigError, load_config, to_yaml
from ..data.tokenizer import TOKENIZER_DIR, tokenizer_sha256
from ..model.config import ModelConfig, RopeConfig, TapaConfig
from ..train.checkpoint import MARKER
from .configuration_tapa import TapaLMConfig
from .export import TOKENIZER_FILES
from .rope_scaling import from_llama_rope
from .weights import Shape, hf_to_megatron


def read_hf_state_dict(hf_dir: Path) -> dict[str, torch.Tensor]:
    """All tensors of model.safetensors or of the shards its index names."""
    single, index = hf_dir / "model.safetensors", hf_dir / "model.safetensors.index.json"
    if single.is_file():
        return load_file(str(single))
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        sd = {}
        for name in files:
            sd.update(load_file(str(hf_dir / name)))
        return sd
    raise FileNotFoundError(f"{hf_dir}: no model.safetensors or model.safetensors.index.json "
                            f"(only safetensors weights are read; re-save with safe_serialization=True)")


def model_from_tapa(raw: dict) -> tuple[ModelConfig, int]:
    """(model section, training sequence length) of our own export's config.json (keys it omits take
    TapaLMConfig's defaults, as they do when transformers loads it). Exports made before the RoPE family
    became plain Llama checkpoints carry rope/pi (read here; their rules have not changed) or yarn
    (refused: the earlier YaRN rule is not today's)."""
    kind = raw.get("position_encoding", "tapa")
    if kind == "yarn":
        raise ValueError("position_encoding=yarn: this tapa_lm export was made with the earlier YaRN rule "
                         "(ramp linear in turns), not transformers' that tapa_scale now uses; its logits "
                         "cannot be reproduced (docs/hf.md, YaRN)")
    rope = RopeConfig()
    if kind in ("rope", "pi"):
        rope = RopeConfig(base=float(raw.get("rope_theta", 10000.0)), scale=float(raw.get("rope_scale", 1.0)))
        raw = {k: v for k, v in raw.items() if not k.startswith("rope_")} | {"position_encoding": "nope"}
    c = TapaLMConfig.from_dict(raw)
    model = ModelConfig(
        num_layers=c.num_hidden_layers, hidden_size=c.hidden_size, num_heads=c.num_attention_heads,
        num_kv_heads=c.num_key_value_heads, ffn_hidden_size=c.intermediate_size, vocab_size=c.vocab_size,
        tie_embeddings=c.tie_word_embeddings, norm_eps=c.rms_norm_eps, init_std=c.initializer_range,
        pos_encoding=kind, tapa=TapaConfig(alpha=c.tapa_alpha, theta=c.tapa_theta, phase=c.tapa_phase,
                                           rope_heads=c.tapa_rope_heads, rope_window=c.tapa_rope_window),
        rope=RopeConfig(base=float(c.tapa_rope_theta)) if c.tapa_rope_heads else rope)
    return model, c.max_position_embeddings


def model_from_llama(c: dict) -> tuple[ModelConfig, int]:
    """(model section, training sequence length) of a LlamaConfig; refuses what our model cannot express,
    naming each config key."""
    heads = c["num_attention_heads"]
    problems = []
    if c.get("hidden_act", "silu") != "silu":
        problems.append(f"hidden_act={c['hidden_act']!r} (ours is SwiGLU with silu)")
    for key in ("attention_bias", "mlp_bias"):
        if c.get(key):
            problems.append(f"{key}=true (our model has no biases)")
    if c.get("head_dim") not in (None, c["hidden_size"] // heads):
        problems.append(f"head_dim={c['head_dim']} != hidden_size/num_attention_heads")
    kind, rope, rope_problems = from_llama_rope(c)
    problems += rope_problems
    if problems:
        raise ValueError("Llama checkpoint not expressible as our model: " + "; ".join(problems))
    model = ModelConfig(
        num_layers=c["num_hidden_layers"], hidden_size=c["hidden_size"], num_heads=heads,
        num_kv_heads=c.get("num_key_value_heads") or heads, ffn_hidden_size=c["intermediate_size"],
        vocab_size=c["vocab_size"], tie_embeddings=bool(c.get("tie_word_embeddings", False)),
        norm_eps=c.get("rms_norm_eps", 1e-6), init_std=c.get("initializer_range", 0.02),
        pos_encoding=kind, rope=rope)
    return model, c.get("max_position_embeddings", 2048)


READERS = {"tapa_lm": model_from_tapa, "llama": model_from_llama}


def run_config(model: ModelConfig, seq_len: int, tokenizer_setting: str, overrides: Sequence[str],
               scratch: Path) -> Config:
    """A complete run config for the imported model, with overrides applied and validated."""
    cfg = Config(model=model)
    cfg.data.seq_len = seq_len
    cfg.data.tokenizer = tokenizer_setting
    base = scratch / "config.yaml"
    base.write_text(to_yaml(cfg))
    return load_config(str(base), list(overrides), world_size=1, check_paths=False)


def copy_tokenizer(hf_dir: Path, dest: Path) -> bool:
    """Copy the HF directory's tokenizer files into dest; False when it has no tokenizer.json."""
    if not (hf_dir / "tokenizer.json").is_file():
        return False
    dest.mkdir(parents=True)
    for name in TOKENIZER_FILES:
        if (hf_dir / name).is_file():
            shutil.copy2(hf_dir / name, dest / name)
    return True


def import_from_hf(hf_dir: str | Path, out: str | Path, *, overrides: Sequence[str] = (),
                   overwrite: bool = False) -> Path:
    """Write the weights-only checkpoint directory `out` for an HF directory; returns `out`."""
    hf_dir, out = Path(hf_dir), Path(out)
    config_path = hf_dir / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path}: not found (expected a Hugging Face model directory)")
    hf_cfg = json.loads(config_path.read_text())
    kind = hf_cfg.get("model_type")
    if kind not in READERS:
        raise ValueError(f"{config_path}: model_type {kind!r} is not supported (expected {', '.join(READERS)})")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out}: exists and is not empty (pass --overwrite to replace it)")
    model, seq_len = READERS[kind](hf_cfg)
    shape = Shape(num_layers=model.num_layers, num_heads=model.num_heads, num_kv_heads=model.kv_heads,
                  head_dim=model.head_dim, hidden_size=model.hidden_size, tie_embeddings=model.tie_embeddings)
    sd = hf_to_megatron(read_hf_state_dict(hf_dir), shape)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    has_tok = copy_tokenizer(hf_dir, tmp / "tokenizer")
    # The embedded tokenizer stays "" so the config matches runs made with it; another one is named by
    # its final absolute path (the run needs it to tokenize its data).
    same = has_tok and tokenizer_sha256(tmp / "tokenizer") == tokenizer_sha256(TOKENIZER_DIR)
    tok_setting = "" if same or not has_tok else str((out / "tokenizer").resolve())
    try:
        cfg = run_config(model, seq_len, tok_setting, overrides, tmp)
    except ConfigError:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp / "model.safetensors"))
    (tmp / "config.yaml").write_text(to_yaml(cfg))
    (tmp / MARKER).write_text(f"converted from {hf_dir.resolve()} ({kind}); weights only, no optimizer state\n")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out
