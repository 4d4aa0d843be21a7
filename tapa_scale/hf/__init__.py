"""Hugging Face conversion both ways, and the modeling code that travels with an export.

    export_to_hf(checkpoint, out, max_shard_size="2GB", dtype="auto")   our checkpoint -> HF directory
    import_from_hf(hf_dir, out, overrides=())                           HF (ours or Llama) -> checkpoint
    load_hf_logits(hf_dir, device, dtype)                               an export as logits(input_ids)
    load_hf_loss_fn(hf_dir, device, dtype)                              an export as per-token NLL (eval)

configuration_tapa.py and modeling_tapa.py are copied beside exported weights and import only torch
and transformers; docs/hf.md describes the format and the commands. Importing this package does not
import megatron: the converters are loaded on first use.
"""
from __future__ import annotations


def export_to_hf(*args, **kwargs):
    from .export import export_to_hf as fn
    return fn(*args, **kwargs)


def import_from_hf(*args, **kwargs):
    from .import_hf import import_from_hf as fn
    return fn(*args, **kwargs)


def load_hf_logits(*args, **kwargs):
    from .runtime import load_hf_logits as fn
    return fn(*args, **kwargs)


def load_hf_loss_fn(*args, **kwargs):
    from .runtime import load_hf_loss_fn as fn
    return fn(*args, **kwargs)


__all__ = ["export_to_hf", "import_from_hf", "load_hf_logits", "load_hf_loss_fn"]
