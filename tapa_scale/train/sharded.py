"""The sharded part of a checkpoint: model and optimizer tensors through megatron-core's
dist_checkpointing (torch_dist backend), and the per-rank RNG states beside it.

Every rank passes the ShardedTensors of its own model chunks (megatron's `sharded_state_dict()`: global
names, decoder layers stacked along a leading axis with their global index, tensor-parallel slices with
their offsets) and the AdamW moments of the same parameters, sharded exactly like the parameter they
belong to. The library writes each shard once (main replicas only) and, on load, reads whatever part
this rank now owns: that is what makes tensor/pipeline/data-parallel resharding work.

Traps, each handled here:
- megatron's local linears add `_extra_state` ShardedObjects (value None). dist_checkpointing stores
  objects as pickles and reads them back with `torch.load(weights_only=False)`: we drop every object
  and refuse one that carries data, so nothing but tensors goes through the library.
- torch.distributed.checkpoint reads its `.metadata` file with plain `pickle.load`. Before any load,
  `check_metadata_pickle` replays that pickle through an unpickler that only admits the metadata
  classes of torch.distributed.checkpoint, torch.Size/dtypes and builtins; anything else is refused.
- A plain torch optimizer's state is created lazily by its first step. On load we create it (zeros of
  the parameter's shape) so that the library has tensors to read into; `step` is one count for all
  parameters (AdamW steps them together) and lives in state.json.
- megatron's distributed optimizer holds flat slices of the moments: zero_state.py writes them as
  slices of the same global tensors (its own format, `sharded_state_dict`, is not used).
"""
from __future__ import annotations

import io
import json
import pickle
import random
from pathlib import Path
from typing import Iterable

import numpy as np
import torch

from . import zero_state

DIST = "dist"          # the dist_checkpointing directory inside a checkpoint
RNG = "rng"            # per-rank RNG states: rng/rank_00000.safetensors + rank_00000.json
MOMENTS = zero_state.MOMENTS

# Globals the .metadata pickle of torch.distributed.checkpoint may name (module, qualified name).
_METADATA_MODULES = ("torch.distributed.checkpoint.metadata", "torch.distributed.checkpoint.filesystem",
                     "torch.distributed.checkpoint.planner", "torch.distributed.checkpoint.storage")
_METADATA_GLOBALS = {("torch", "Size"), ("collections", "OrderedDict"), ("torch", "device"),
                     ("builtins", "set"), ("builtins", "frozenset"), ("pathlib", "PosixPath"),
                     ("torch.serialization", "_get_layout")}
_TORCH_DTYPES = {name for name in dir(torch) if isinstance(getattr(torch, name, None), torch.dtype)}
_TORCH_LAYOUTS = {"strided", "sparse_coo", "sparse_csr", "contiguous_format", "channels_last",
                  "preserve_format", "channels_last_3d"}


class UnsafeCheckpoint(RuntimeError):
    """A checkpoint file would need unpickling of something other than plain data."""


class _MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        allowed = ((module, name) in _METADATA_GLOBALS or module in _METADATA_MODULES
                   or (module == "torch" and (name in _TORCH_DTYPES or name in _TORCH_LAYOUTS))
                   or (module == "enum" and name == "Enum")
                   or (module == "megatron.core.dist_checkpointing.strategies.torch" and name == "MCoreSavePlan"))
        if not allowed:
            raise UnsafeCheckpoint(f"refusing to unpickle {module}.{name}")
        return super().find_class(module, name)

    def persistent_load(self, pid):
        raise UnsafeCheckpoint(f"refusing a persistent id in checkpoint metadata: {pid!r}")


def check_metadata_pickle(dist_dir: Path) -> None:
    """Raise UnsafeCheckpoint unless `<dist_dir>/.metadata` holds only checkpoint-metadata classes."""
    path = Path(dist_dir) / ".metadata"
    try:
        _MetadataUnpickler(io.BytesIO(path.read_bytes())).load()
    except UnsafeCheckpoint as e:
        raise UnsafeCheckpoint(f"{path}: {e}") from None
    except Exception as e:  # truncated or garbled: the caller treats it as a corrupt checkpoint
        raise UnsafeCheckpoint(f"{path}: unreadable metadata ({type(e).__name__}: {e})") from None
    common = Path(dist_dir) / "common.pt"
    if common.exists():  # megatron reads it with torch.load's default; make weights_only explicit
        torch.load(common, map_location="cpu", weights_only=True)


# ---------------------------------------------------------------- sharded state dicts

def _tensors_only(sharded: dict, prefix: str) -> dict:
    """Drop ShardedObjects (pickled by the library); refuse one that carries data. Keys get `prefix`."""
    from megatron.core.dist_checkpointing.mapping import ShardedObject

    out = {}
    for key, value in sharded.items():
        if isinstance(value, ShardedObject):
            if value.data is not None and not (isinstance(value.data, io.BytesIO) and not value.data.getvalue()):
                raise UnsafeCheckpoint(f"{key}: a ShardedObject with data would be pickled; not supported")
            continue
        out[prefix + key] = value
    return out


def model_sharded_state_dict(chunks: list) -> dict:
    """ShardedTensors (and factories) of this rank's model chunks, keyed `model{i}.<local name>`."""
    out = {}
    for i, chunk in enumerate(chunks):
        out.update(_tensors_only(chunk.sharded_state_dict(), f"model{i}."))
    return out


def optimizer_params(optimizer) -> list:
    return [p for group in optimizer.param_groups for p in group["params"]]


def optimizer_sharded_state_dict(optimizer, model_sharded: dict, *, create: bool) -> dict:
    """AdamW moments as ShardedTensors sharded like their parameters, keyed `optim.<moment>.<param key>`.

    create=True makes zero moments for parameters that have no state yet (before a load)."""
    from megatron.core.dist_checkpointing.optimizer import make_sharded_optimizer_tensor

    by_param = {id(sh.data): sh for sh in model_sharded.values()}
    out = {}
    for i, p in enumerate(optimizer_params(optimizer)):
        if id(p) not in by_param:
            raise KeyError(f"optimizer parameter {i} {tuple(p.shape)} is not in the model's sharded state dict")
        state = optimizer.state[p]
        if create and not state:
            state.update({m: torch.zeros_like(p, memory_format=torch.preserve_format) for m in MOMENTS})
        for m in MOMENTS:
            if m not in state:
                raise KeyError(f"optimizer state of parameter {i} has no {m}; save after the first step")
            out[f"optim.{m}.{i}"] = make_sharded_optimizer_tensor(by_param[id(p)], state[m], prefix=f"optim.{m}")
    return out


def optimizer_steps(optimizer) -> int:
    """AdamW's step count (one for all parameters; they are stepped together)."""
    steps = {int(optimizer.state[p]["step"]) for p in optimizer_params(optimizer) if "step" in optimizer.state[p]}
    if len(steps) > 1:
        raise ValueError(f"optimizer parameters have different step counts {sorted(steps)}")
    return steps.pop() if steps else 0


def full_sharded_state_dict(chunks: list, optimizer, *, create: bool) -> dict:
    model = model_sharded_state_dict(chunks)
    if zero_state.is_distributed(optimizer):  # each rank its slices of the same global moments
        return {**model, **zero_state.sharded_moments(optimizer, model, create=create)}
    return {**model, **optimizer_sharded_state_dict(optimizer, model, create=create)}


def optimizer_step_count(optimizer) -> int:
    """AdamW's step count, for either optimizer."""
    return zero_state.step_count(optimizer) if zero_state.is_distributed(optimizer) else optimizer_steps(optimizer)


def save_sharded(dist_dir: Path, chunks: list, optimizer):
    """Plan the write of this rank's model and optimizer shards (collective: all ranks call it).

    Returns megatron's AsyncRequest: `.execute_sync()` writes now; an AsyncCallsQueue writes it from a
    forked process (saver.py). Nothing is on disk under `dist_dir` but common.pt until then."""
    from megatron.core import dist_checkpointing

    dist_dir.mkdir(parents=True, exist_ok=True)
    return dist_checkpointing.save(full_sharded_state_dict(chunks, optimizer, create=False), str(dist_dir),
                                   async_sharded_save=True)


@torch.no_grad()
def load_sharded(dist_dir: Path, chunks: list, optimizer, optimizer_step_count: int) -> None:
    """Read this rank's part of model and optimizer from `dist_dir` (collective)."""
    from megatron.core import dist_checkpointing

    check_metadata_pickle(dist_dir)
    request = full_sharded_state_dict(chunks, optimizer, create=True)
    loaded = dist_checkpointing.load(request, str(dist_dir), strict="raise_all")
    for i, chunk in enumerate(chunks):
        prefix = f"model{i}."
        mine = {k[len(prefix):]: v for k, v in loaded.items() if k.startswith(prefix)}
        missing, unexpected = chunk.load_state_dict(mine, strict=False)
        missing = [k for k in missing if not k.endswith("_extra_state")]
        if missing or unexpected:
            raise KeyError(f"model chunk {i}: missing {missing[:3]} unexpected {unexpected[:3]}")
    if zero_state.is_distributed(optimizer):
        zero_state.load_moments(optimizer, {k: v for k, v in request.items() if k.startswith("optim.")}, loaded,
                                optimizer_step_count)
        return
    for i, p in enumerate(optimizer_params(optimizer)):
        state = optimizer.state[p]
        for m in MOMENTS:
            state[m].copy_(loaded[f"optim.{m}.{i}"])
        # AdamW keeps `step` as a float32 scalar tensor (capturable=False): the same type as a fresh run
        state["step"] = torch.tensor(float(optimizer_step_count), dtype=torch.float32)


def is_optimizer_key(key: str) -> bool:
    """A dist checkpoint key of optimizer state: our AdamW moments (`optim.`) or megatron's optimizers'
    (`optimizer.`), as opposed to model weights."""
    return key.startswith(("optim.", "optimizer."))


def read_full_tensors(dist_dir: Path, *, weights_only: bool = False) -> dict[str, torch.Tensor]:
    """Every tensor of a dist checkpoint as one full (unsharded) tensor, read in this process alone;
    with weights_only, the model's tensors only (the optimizer state is not read at all).

    Keys are the checkpoint's global keys (decoder layers stacked on axis 0; `optim.` for moments)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    check_metadata_pickle(dist_dir)
    reader = dcp.FileSystemReader(str(dist_dir))
    meta = reader.read_metadata()
    wanted = {k: torch.empty(m.size, dtype=m.properties.dtype)
              for k, m in meta.state_dict_metadata.items()
              if isinstance(m, TensorStorageMetadata) and not (weights_only and is_optimizer_key(k))}
    dcp.load(wanted, storage_reader=reader, no_dist=True)
    return wanted


# ---------------------------------------------------------------- per-rank RNG

def _tracker():
    try:
        from megatron.core.tensor_parallel import get_cuda_rng_tracker
        return get_cuda_rng_tracker()
    except Exception:  # megatron not importable or no tracker: nothing to save
        return None


def save_rng(rng_dir: Path, rank: int) -> None:
    """torch (CPU and CUDA), megatron's model-parallel tracker, numpy and python states of this rank."""
    from safetensors.torch import save_file

    rng_dir.mkdir(parents=True, exist_ok=True)
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        tensors["cuda"] = torch.cuda.get_rng_state()
    tracker = _tracker()
    for name, state in (tracker.get_states() if tracker is not None else {}).items():
        tensors[f"tracker.{name}"] = state.cpu()
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(rng_dir / f"rank_{rank:05d}.safetensors"))
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, py_gauss = random.getstate()
    (rng_dir / f"rank_{rank:05d}.json").write_text(json.dumps(
        {"numpy": [kind, keys.tolist(), pos, has_gauss, gauss], "python": [version, list(internal), py_gauss]}))


def load_rng(rng_dir: Path, rank: int) -> None:
    """Restore what save_rng wrote for `rank`. Call it as the very last step of start-up."""
    from safetensors.torch import load_file

    tensors = load_file(str(rng_dir / f"rank_{rank:05d}.safetensors"))
    states = json.loads((rng_dir / f"rank_{rank:05d}.json").read_text())
    torch.set_rng_state(tensors["torch"])
    if "cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["cuda"])
    tracker_states = {k[len("tracker."):]: v for k, v in tensors.items() if k.startswith("tracker.")}
    tracker = _tracker()
    if tracker_states and tracker is not None:  # generator states are CPU byte tensors, CUDA ones too
        tracker.set_states(tracker_states)
    kind, keys, pos, has_gauss, gauss = states["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, gauss))
    version, internal, py_gauss = states["python"]
    random.setstate((version, tuple(internal), py_gauss))


def iter_files(root: Path) -> Iterable[Path]:
    return sorted(p for p in Path(root).rglob("*") if p.is_file())
