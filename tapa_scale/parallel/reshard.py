"""Cutting a full (single-process) state dict into one rank's tensor/pipeline-parallel pieces.

megatron marks every split weight with `tensor_model_parallel`, `partition_dim` and `partition_stride`;
a stride s > 1 (the SwiGLU fc1, whose rows are [gate; up]) means each of the s parts is split over the
tensor-parallel ranks separately and a rank holds its piece of every part. Pipeline stages number
their layers locally (`decoder.layers.0` is the stage's first); `layer_number` is the global one.
With tied embeddings the last stage's `output_layer.weight` is a copy of the word embeddings.

Used to start any layout from the weights of a single-process run (and by the parity tests, which
also cut full gradients with it).
"""
from __future__ import annotations

import re
from typing import Mapping

import torch

_LAYER = re.compile(r"^decoder\.layers\.(\d+)\.")


def tp_slice(full: torch.Tensor, dim: int, stride: int, rank: int, size: int) -> torch.Tensor:
    """Rank `rank`'s piece of `full` split over `size` ranks along `dim`, part by part when stride > 1."""
    parts = full.chunk(stride, dim=dim)
    return torch.cat([part.chunk(size, dim=dim)[rank] for part in parts], dim=dim)


def global_name(name: str, model: torch.nn.Module) -> str:
    """The single-process name of a local parameter of this (pipeline stage's) model."""
    match = _LAYER.match(name)
    if match:
        layer = model.decoder.layers[int(match.group(1))]
        return f"decoder.layers.{layer.layer_number - 1}." + name[match.end():]
    if name == "output_layer.weight" and getattr(model, "share_embeddings_and_output_weights", False):
        return "embedding.word_embeddings.weight"
    return name


def local_tensors(full: Mapping[str, torch.Tensor], model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """{local parameter name: its values cut from `full`} for every parameter of `model` (unwrapped)."""
    from megatron.core import parallel_state as mpu

    rank, size = mpu.get_tensor_model_parallel_rank(), mpu.get_tensor_model_parallel_world_size()
    out = {}
    for name, param in model.named_parameters():
        source = global_name(name, model)
        if source not in full:
            raise KeyError(f"{name} (full name {source}) is missing from the full state dict")
        t = full[source]
        if getattr(param, "tensor_model_parallel", False):
            t = tp_slice(t, param.partition_dim, getattr(param, "partition_stride", 1), rank, size)
        if t.shape != param.shape:
            raise ValueError(f"{name}: cut {tuple(t.shape)} from {source} {tuple(full[source].shape)}, "
                             f"but the parameter is {tuple(param.shape)}")
        out[name] = t
    return out


@torch.no_grad()
def load_full_state_dict(model: torch.nn.Module, full: Mapping[str, torch.Tensor]) -> None:
    """Copy a single-process state dict into this rank's part of the model (before DDP wraps it)."""
    params = dict(model.named_parameters())
    for name, t in local_tensors(full, model).items():
        params[name].copy_(t)
