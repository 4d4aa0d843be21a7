"""Checkpoints of a single-process run: what must resume, written atomically, found by resume.

Layout of one checkpoint, `<run.dir>/checkpoints/step_00000100/`:
    model.safetensors   weights (safetensors: nothing is unpickled on load)
    optimizer.pt        optimizer state dict, read back with torch.load(weights_only=True)
    rng.pt              torch CPU (and CUDA) generator states, likewise
    state.json          step, tokens, data-loader state, python/numpy RNG states
    config.yaml         the resolved configuration
    tokenizer/          the tokenizer files the run used
    COMPLETE            written last: a checkpoint without it is ignored
Everything is written into `step_XXXXXXXX.tmp/` and renamed into place at the end, so a crash during a
save leaves the previous checkpoint as the latest complete one.
"""
from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from safetensors.torch import load_file, save_file

MARKER = "COMPLETE"


def checkpoint_dir(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"step_{step:08d}"


def latest_checkpoint(run_dir: Path) -> Optional[Path]:
    """The newest complete checkpoint of a run directory, or None."""
    root = Path(run_dir) / "checkpoints"
    done = sorted(p for p in root.glob("step_*") if p.is_dir() and (p / MARKER).exists()) if root.is_dir() else []
    return done[-1] if done else None


def resolve_checkpoint(path: str | Path) -> Path:
    """`--checkpoint DIR`: a checkpoint directory, or a run directory meaning its latest complete one."""
    path = Path(path)
    if (path / MARKER).exists():
        return path
    if path.is_dir() and (found := latest_checkpoint(path)) is not None:
        return found
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    raise FileNotFoundError(f"{path}: neither a complete checkpoint (no {MARKER} file) nor a run "
                            f"directory with a complete checkpoint under checkpoints/")


def rng_state() -> tuple[dict, dict]:
    """(tensors for rng.pt, JSON-able python/numpy states)."""
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors["cuda"] = torch.cuda.get_rng_state()
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, py_gauss = random.getstate()
    return tensors, {"numpy": [kind, keys.tolist(), pos, has_gauss, gauss],
                     "python": [version, list(internal), py_gauss]}


def set_rng_state(tensors: dict, states: dict) -> None:
    torch.set_rng_state(tensors["torch"])
    if "cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["cuda"])
    kind, keys, pos, has_gauss, gauss = states["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, gauss))
    version, internal, py_gauss = states["python"]
    random.setstate((version, tuple(internal), py_gauss))


def save_checkpoint(run_dir: Path, step: int, *, model, optimizer, state: dict, config_yaml: str,
                    tokenizer_dir: Optional[Path] = None) -> Path:
    """Write checkpoint `step` atomically; returns its directory."""
    final = checkpoint_dir(run_dir, step)
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items() if v is not None}
    save_file(weights, str(tmp / "model.safetensors"))
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    rng_tensors, rng_json = rng_state()
    torch.save(rng_tensors, tmp / "rng.pt")
    (tmp / "state.json").write_text(json.dumps({**state, "rng": rng_json}))
    (tmp / "config.yaml").write_text(config_yaml)
    if tokenizer_dir is not None:
        shutil.copytree(tokenizer_dir, tmp / "tokenizer")
    (tmp / MARKER).write_text(f"step {step}\n")
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    return final


def load_model_weights(ckpt: Path, model) -> None:
    """Load model.safetensors into `model` (strict: every key must match)."""
    model.load_state_dict(load_file(str(Path(ckpt) / "model.safetensors")), strict=True)


def load_checkpoint(ckpt: Path, *, model, optimizer) -> dict:
    """Restore model, optimizer and RNG states; returns state.json (step, tokens, data state)."""
    ckpt = Path(ckpt)
    load_model_weights(ckpt, model)
    optimizer.load_state_dict(torch.load(ckpt / "optimizer.pt", weights_only=True))
    state = json.loads((ckpt / "state.json").read_text())
    set_rng_state(torch.load(ckpt / "rng.pt", weights_only=True), state.pop("rng"))
    return state
