"""The model being evaluated, whatever it came from: one of our checkpoints (or run directories) or a
Hugging Face export / Llama directory, on CPU or a GPU, in float32 or bfloat16.

Both kinds come out as the same three functions, so every task scores them through one code path:
    loss_fn(input_ids (b, n), labels (b, n)) -> per-token NLL (b, n), float32 on CPU
    logits_fn(input_ids (b, n), k)           -> logits (b, k, V) of the last k positions, float32 on CPU
    generate_fn(prompts (b, n), k)           -> k greedily decoded tokens (b, k) (HF only: generate()
                                                with its KV cache)
Memory is linear in the length: our model computes its loss in pieces (model/lm_head.py), an export's
hidden states go through its output layer LOSS_CHUNK_TOKENS at a time, and retrieval asks for the last
k positions' logits only. Our checkpoints run in bfloat16 the way they trained (float32 weights under
autocast); an export is loaded in the dtype asked for.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F

from ..model.lm_head import LOSS_CHUNK_TOKENS

DTYPES = ("fp32", "bf16")


@dataclass
class Evaluated:
    name: str
    loss_fn: Callable
    logits_fn: Callable
    tokenizer: object
    info: dict                      # checkpoint or hf, pos_encoding, train_length (the JSON's top-level keys)
    generate_fn: Optional[Callable] = None
    meta: dict = field(default_factory=dict)


def kind_of(path: str | Path) -> str:
    """'checkpoint' for one of our checkpoint or run directories, 'hf' for an export (config.json)."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such directory (expected a checkpoint, run directory or export)")
    if (path / "config.json").is_file() and not (path / "config.yaml").is_file():
        return "hf"
    return "checkpoint"


def resolve_device(device: str) -> torch.device:
    import os

    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"--device {device!r}: expected cpu, cuda or auto")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is visible")
    if device == "cpu" or (device == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))


def open_model(path: str | Path, kind: Optional[str] = None, *, device: str = "cpu", dtype: str = "fp32",
               overrides: Sequence[str] = (), name: Optional[str] = None) -> Evaluated:
    """The model at `path` ready to score; our checkpoints need tapa_scale.parallel.init_groups first."""
    if dtype not in DTYPES:
        raise ValueError(f"--dtype {dtype!r}: expected one of {', '.join(DTYPES)}")
    kind = kind or kind_of(path)
    dev = resolve_device(device)
    if kind == "hf":
        if overrides:
            raise ValueError("key=value overrides edit our checkpoint's model; they do not apply to an export")
        return _open_hf(path, dev, dtype, name)
    return _open_checkpoint(path, dev, dtype, overrides, name)


def _open_checkpoint(path, dev, dtype, overrides, name) -> Evaluated:
    from .loading import load_checkpoint_model

    model, cfg, tokenizer = load_checkpoint_model(path, device=dev, overrides=overrides)
    autocast = (lambda: torch.autocast(dev.type, dtype=torch.bfloat16)) if dtype == "bf16" else contextlib.nullcontext

    @torch.no_grad()
    def loss_fn(input_ids, labels):
        with autocast():
            return model(input_ids.to(dev), None, None, labels=labels.to(dev)).float().cpu()

    @torch.no_grad()
    def logits_fn(input_ids, k):
        with autocast():
            return model.last_logits(input_ids.to(dev), k).float().cpu()

    info = {"checkpoint": str(path), "pos_encoding": cfg.model.pos_encoding, "train_length": cfg.data.seq_len}
    return Evaluated(name or Path(path).name, loss_fn, logits_fn, tokenizer, info,
                     meta={"device": str(dev), "dtype": dtype, "overrides": list(overrides)})


def _open_hf(path, dev, dtype, name) -> Evaluated:
    from transformers import AutoTokenizer

    from ..hf.rope_scaling import from_llama_rope
    from ..hf.runtime import load_hf_model

    model = load_hf_model(path, dev, dtype)
    body, head = model.get_decoder(), model.get_output_embeddings()

    def hidden_of(input_ids):  # (b, n, h): the final normed hidden states, before the output layer
        out = body(input_ids=input_ids.to(dev), use_cache=False)
        return out[0] if isinstance(out, tuple) else out.last_hidden_state

    @torch.no_grad()
    def loss_fn(input_ids, labels):
        hidden = hidden_of(input_ids)
        labels = labels.to(dev)
        step = max(1, LOSS_CHUNK_TOKENS // hidden.shape[0])
        pieces = [F.cross_entropy(head(hidden[:, i:i + step]).float().transpose(1, 2), labels[:, i:i + step],
                                  reduction="none") for i in range(0, hidden.shape[1], step)]
        return torch.cat(pieces, 1).cpu()

    @torch.no_grad()
    def logits_fn(input_ids, k):
        hidden = hidden_of(input_ids)
        return head(hidden[:, -k:]).float().cpu()

    @torch.no_grad()
    def generate_fn(prompts, k):
        ids = prompts.to(dev)
        # greedy, cached; a row that emits EOS early stops (padded with -1 here), as a decoder would
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=k, do_sample=False,
                             num_beams=1, use_cache=True, pad_token_id=model.config.eos_token_id or 0)
        new = out[:, ids.shape[1]:].cpu()
        return F.pad(new, (0, k - new.shape[1]), value=-1)

    config = model.config  # ours (TAPA, ALiBi, NoPE) or a Llama (the RoPE family)
    kind = getattr(config, "position_encoding", None) or from_llama_rope(config.to_dict())[0]
    info = {"hf": str(path), "pos_encoding": kind, "train_length": config.max_position_embeddings}
    return Evaluated(name or Path(path).name, loss_fn, logits_fn, AutoTokenizer.from_pretrained(str(path)), info,
                     generate_fn=generate_fn, meta={"device": str(dev), "dtype": dtype})
