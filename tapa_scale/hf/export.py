"""Training checkpoint -> Hugging Face directory (`tools/convert_to_hf.py`).

A RoPE-family model (rope, pi, yarn, llama3) is a standard Llama checkpoint: config.json is a
LlamaConfig (model_type "llama", rope_theta, rope_scaling as rope_scaling.py maps them) and it loads with
AutoModelForCausalLM.from_pretrained(dir), no remote code. TAPA, ALiBi and NoPE have no Llama
counterpart; their directory holds:
    config.json                         TapaLMConfig (model_type "tapa_lm", auto_map for the Auto classes)
    configuration_tapa.py, modeling_tapa.py   the code, copied from this package (torch + transformers only)
Both hold:
    model.safetensors | model-0000k-of-0000n.safetensors + model.safetensors.index.json   (by size)
    generation_config.json              bos/eos/pad token ids
    tokenizer.json, tokenizer_config.json, special_tokens_map.json   the run's tokenizer (pad = eos)
and load with AutoModelForCausalLM.from_pretrained(dir[, trust_remote_code=True]) and
AutoTokenizer.from_pretrained(dir) where tapa_scale is not installed.
"""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

from ..config import Config
from ..ops.attention import ROTARY
from .configuration_tapa import TapaLMConfig
from .rope_scaling import to_llama_rope
from .source import open_checkpoint
from .weights import Shape, megatron_to_hf

HERE = Path(__file__).resolve().parent
CODE_FILES = ("configuration_tapa.py", "modeling_tapa.py")
AUTO_MAP = {"AutoConfig": "configuration_tapa.TapaLMConfig",
            "AutoModelForCausalLM": "modeling_tapa.TapaLMForCausalLM"}
DTYPES = {"auto": None, "fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def parse_size(text: str | int) -> int:
    """'500MB', '2GB', '1.5GiB' or a byte count -> bytes."""
    if isinstance(text, int):
        return text
    m = re.fullmatch(r"\s*([\d.]+)\s*([KMGT]?i?B?)\s*", str(text), re.IGNORECASE)
    if not m:
        raise ValueError(f"max shard size {text!r}: expected a byte count or e.g. 500MB, 2GB, 1GiB")
    unit = m.group(2).upper().rstrip("B")
    base = 1024 if unit.endswith("I") else 1000
    return int(float(m.group(1)) * base ** " KMGT".index(unit[:1] or " "))


def shape_of(cfg: Config) -> Shape:
    m = cfg.model
    return Shape(num_layers=m.num_layers, num_heads=m.num_heads, num_kv_heads=m.kv_heads,
                 head_dim=m.head_dim, hidden_size=m.hidden_size, tie_embeddings=m.tie_embeddings)


def hf_config(cfg: Config, vocab_size: int, token_ids: dict, dtype: torch.dtype):
    """The export's config.json from our resolved run config: a LlamaConfig for the RoPE family, else
    a TapaLMConfig."""
    m, t = cfg.model, cfg.model.tapa
    common = dict(vocab_size=vocab_size, hidden_size=m.hidden_size, intermediate_size=m.ffn_size,
                  num_hidden_layers=m.num_layers, num_attention_heads=m.num_heads,
                  num_key_value_heads=m.kv_heads, rms_norm_eps=m.norm_eps, initializer_range=m.init_std,
                  tie_word_embeddings=m.tie_embeddings, **token_ids)
    if m.pos_encoding in ROTARY:
        from transformers import LlamaConfig

        config = LlamaConfig(**common, head_dim=m.head_dim, hidden_act="silu", attention_bias=False,
                             mlp_bias=False, **to_llama_rope(m.pos_encoding, m.rope, cfg.data.seq_len))
        config.architectures = ["LlamaForCausalLM"]
    else:
        config = TapaLMConfig(**common, max_position_embeddings=cfg.data.seq_len,
                              position_encoding=m.pos_encoding, tapa_alpha=t.alpha, tapa_theta=t.theta,
                              tapa_phase=t.phase, tapa_rope_heads=t.rope_heads, tapa_rope_window=t.rope_window,
                              tapa_rope_theta=m.rope.base)
        config.architectures = ["TapaLMForCausalLM"]
        config.auto_map = dict(AUTO_MAP)
    # transformers >= 4.56 names the field `dtype` (setting `torch_dtype` there warns)
    setattr(config, "dtype" if hasattr(config, "dtype") else "torch_dtype", str(dtype).removeprefix("torch."))
    return config


def write_shards(sd: dict[str, torch.Tensor], out: Path, max_bytes: int) -> list[str]:
    """Greedy shards in parameter order; one file is model.safetensors, several get an index."""
    shards, current, size = [], {}, 0
    for name, tensor in sd.items():
        nbytes = tensor.numel() * tensor.element_size()
        if current and size + nbytes > max_bytes:
            shards.append(current)
            current, size = {}, 0
        current[name], size = tensor.contiguous(), size + nbytes
    shards.append(current)
    if len(shards) == 1:
        save_file(shards[0], str(out / "model.safetensors"), metadata={"format": "pt"})
        return ["model.safetensors"]
    names, weight_map = [], {}
    for i, shard in enumerate(shards, 1):
        name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(out / name), metadata={"format": "pt"})
        names.append(name)
        weight_map.update({k: name for k in shard})
    total = sum(t.numel() * t.element_size() for t in sd.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    return names


def copy_tokenizer(src: Path, out: Path) -> dict:
    """Copy the run's tokenizer; pad = eos so batched generation and lm-eval can pad. -> token ids."""
    if not (src / "tokenizer.json").is_file():
        raise FileNotFoundError(f"{src}/tokenizer.json: the checkpoint carries no tokenizer")
    for name in TOKENIZER_FILES:
        if (src / name).is_file():
            shutil.copy2(src / name, out / name)
    tok_cfg_path = out / "tokenizer_config.json"
    tok_cfg = json.loads(tok_cfg_path.read_text()) if tok_cfg_path.is_file() else {
        "tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": False}
    vocab = json.loads((src / "tokenizer.json").read_text())
    ids = {t["content"]: t["id"] for t in vocab.get("added_tokens", [])}
    ids.update(vocab["model"].get("vocab", {}))
    eos = tok_cfg.get("eos_token")
    if eos is not None and tok_cfg.get("pad_token") is None:
        tok_cfg["pad_token"] = eos
    tok_cfg_path.write_text(json.dumps(tok_cfg, indent=2) + "\n")
    token = {k: tok_cfg.get(k.removesuffix("_id")) for k in ("bos_token_id", "eos_token_id", "pad_token_id")}
    token = {k: v.get("content") if isinstance(v, dict) else v for k, v in token.items()}  # AddedToken form
    return {k: ids.get(v) if isinstance(v, str) else None for k, v in token.items()}


def export_to_hf(checkpoint: str | Path, out: str | Path, *, max_shard_size: str | int = "2GB",
                 dtype: str = "auto", overwrite: bool = False) -> Path:
    """Write the Hugging Face directory `out` for a checkpoint (a run dir means its latest one).

    The directory is built beside `out` and renamed into place at the end: a failed export leaves no
    half-written directory, and an existing non-empty `out` is kept unless overwrite=True.
    """
    out = Path(out)
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r}: expected one of {', '.join(DTYPES)}")
    max_bytes = parse_size(max_shard_size)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out}: exists and is not empty (pass --overwrite to replace it)")
    ckpt, cfg, sd = open_checkpoint(checkpoint)
    hf_sd = megatron_to_hf(sd, shape_of(cfg))
    target = DTYPES[dtype] or next(iter(hf_sd.values())).dtype
    hf_sd = {k: v.to(target) for k, v in hf_sd.items()}
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    token_ids = copy_tokenizer(ckpt / "tokenizer", tmp)
    vocab_size = hf_sd["model.embed_tokens.weight"].shape[0]
    config = hf_config(cfg, vocab_size, token_ids, target)
    config.to_json_file(str(tmp / "config.json"))
    write_generation_config(tmp, token_ids)
    if cfg.model.pos_encoding not in ROTARY:
        for name in CODE_FILES:
            shutil.copy2(HERE / name, tmp / name)
    write_shards(hf_sd, tmp, max_bytes)
    (tmp / "README.md").write_text(_readme(ckpt, cfg))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def write_generation_config(out: Path, token_ids: dict) -> None:
    from transformers import GenerationConfig

    GenerationConfig(**{k: v for k, v in token_ids.items() if v is not None}).save_pretrained(str(out))


def _readme(ckpt: Path, cfg: Config) -> str:
    m = cfg.model
    remote = "" if m.pos_encoding in ROTARY else ", trust_remote_code=True"
    return (f"# tapa_scale export\n\nConverted from `{ckpt}`: {m.num_layers} layers, hidden {m.hidden_size}, "
            f"{m.num_heads} heads ({m.kv_heads} key/value), positional encoding `{m.pos_encoding}`, "
            f"trained at sequence length {cfg.data.seq_len}.\n\n```python\n"
            "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
            f"model = AutoModelForCausalLM.from_pretrained(DIR{remote})\n"
            "tokenizer = AutoTokenizer.from_pretrained(DIR)\n```\n")
