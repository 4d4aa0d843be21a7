"""Checkpoints: what must resume, written by every rank, verified and published atomically, found by
resume (falling back past broken ones), pruned to the last N.

Layout of one training checkpoint, `<run.dir>/checkpoints/step_00000100/`:
    dist/                 model and AdamW moments through megatron-core dist_checkpointing (torch_dist);
                          every rank writes its own shards (sharded.py)
    rng/rank_00000.*      per-rank RNG: torch/CUDA/megatron-tracker states (safetensors), numpy/python (JSON)
    state.json            step, tokens, optimizer steps, skipped steps, data-loader state, the fingerprint
                          of the next batch's samples, the layout that wrote it
    config.yaml           the resolved configuration
    tokenizer/            the tokenizer files of the run
    manifest.json         every file above with its size and sha256
    COMPLETE              written last
The rename is the publication: discovery lists `step_*` directories that hold COMPLETE (no separate
`latest` pointer that could disagree with the directories).

A save writes into `step_XXXXXXXX.tmp/`. Only after every rank finished (a barrier) does rank 0 hash
the files into manifest.json, write COMPLETE and rename the directory into place.
A crash at any point before the rename leaves a `.tmp` directory that resume reports and ignores.
On resume, rank 0 checks the newest complete checkpoint against its manifest (file list, sizes,
sha256); a checkpoint that fails is named in one line and the previous one is tried.

A weights-only checkpoint (imports from Hugging Face, tests) is the same directory without dist/ and
rng/: model.safetensors, config.yaml, tokenizer/, COMPLETE. `full_state_dict` reads either (a training
checkpoint's full weights are gathered from dist/, whatever layout wrote it).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Optional

import torch
from safetensors.torch import load_file, save_file

from .sharded import DIST, iter_files, read_full_tensors

MARKER = "COMPLETE"
MANIFEST = "manifest.json"
HASHES = ".hashes"  # writers' records of their own files, merged into the manifest when publishing
FORMAT_VERSION = 2
_STEP_DIR = re.compile(r"^step_(\d{8})$")


class CorruptCheckpoint(RuntimeError):
    """A checkpoint directory that fails verification; the message names it and why, in one line."""


def checkpoint_dir(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"step_{step:08d}"


def tmp_dir(run_dir: Path, step: int) -> Path:
    """Where checkpoint `step` is written until it is published (renamed to checkpoint_dir)."""
    return checkpoint_dir(run_dir, step).with_name(f"step_{step:08d}.tmp")


def complete_checkpoints(run_dir: Path) -> list[Path]:
    """Published checkpoints of a run, oldest first (a COMPLETE marker; contents not yet verified)."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if _STEP_DIR.match(p.name) and (p / MARKER).exists())


def partial_checkpoints(run_dir: Path) -> list[Path]:
    """Saves that never finished: `.tmp` directories, or step directories without COMPLETE."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("step_")
                  and (p.name.endswith(".tmp") or not (p / MARKER).exists()))


def latest_checkpoint(run_dir: Path) -> Optional[Path]:
    """The newest complete checkpoint of a run directory, or None."""
    done = complete_checkpoints(run_dir)
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


def step_of(ckpt: Path) -> int:
    return int(_STEP_DIR.match(Path(ckpt).name).group(1))


# ---------------------------------------------------------------- manifest and verification

def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def record_hashes(ckpt: Path, rank: int, paths: list[Path]) -> None:
    """Sizes and sha256 of files a writer just wrote into checkpoint `ckpt`, kept in `.hashes/` until
    publication: the writers hash their own shards (in parallel, off the training thread) and
    write_manifest only hashes what no writer recorded."""
    records = {}
    for path in paths:
        try:
            records[str(Path(path).relative_to(ckpt))] = {"size": path.stat().st_size, "sha256": _sha256(path)}
        except OSError:  # a failed write: finalisation reports it, nothing is published
            continue
    (ckpt / HASHES).mkdir(exist_ok=True)
    (ckpt / HASHES / f"rank_{rank:05d}.json").write_text(json.dumps(records))


def write_manifest(ckpt: Path) -> dict:
    """Record every file of `ckpt` (relative path -> size, sha256) in manifest.json; the writers' records
    in `.hashes/` are used for the files they name (when the size still matches), then removed."""
    known = {}
    if (ckpt / HASHES).is_dir():
        for part in sorted((ckpt / HASHES).glob("rank_*.json")):
            known.update(json.loads(part.read_text()))
        shutil.rmtree(ckpt / HASHES)
    files = {}
    for p in iter_files(ckpt):
        if p.name in (MANIFEST, MARKER):
            continue
        name, size = str(p.relative_to(ckpt)), p.stat().st_size
        files[name] = known[name] if name in known and known[name]["size"] == size else \
            {"size": size, "sha256": _sha256(p)}
    manifest = {"format": FORMAT_VERSION, "files": files}
    (ckpt / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True))
    return manifest


def verify(ckpt: Path, checksums: bool = True) -> None:
    """Raise CorruptCheckpoint (one line naming `ckpt`) unless its files match manifest.json."""
    ckpt = Path(ckpt)
    if not (ckpt / MARKER).exists():
        raise CorruptCheckpoint(f"{ckpt}: partial checkpoint (no {MARKER} marker)")
    try:
        manifest = json.loads((ckpt / MANIFEST).read_text())
    except (OSError, ValueError) as e:
        raise CorruptCheckpoint(f"{ckpt}: {MANIFEST} unreadable ({type(e).__name__})") from None
    listed = manifest["files"]
    present = {str(p.relative_to(ckpt)) for p in iter_files(ckpt)} - {MANIFEST, MARKER}
    if missing := sorted(set(listed) - present):
        raise CorruptCheckpoint(f"{ckpt}: missing {len(missing)} file(s), e.g. {missing[0]}")
    if extra := sorted(present - set(listed)):
        raise CorruptCheckpoint(f"{ckpt}: {len(extra)} file(s) not in the manifest, e.g. {extra[0]}")
    for name, meta in listed.items():
        path = ckpt / name
        if path.stat().st_size != meta["size"]:
            raise CorruptCheckpoint(f"{ckpt}: {name} has {path.stat().st_size} bytes, manifest says {meta['size']}")
        if checksums and _sha256(path) != meta["sha256"]:
            raise CorruptCheckpoint(f"{ckpt}: {name} fails its sha256 checksum")
    if (ckpt / DIST).is_dir():
        from .sharded import UnsafeCheckpoint, check_metadata_pickle
        try:
            check_metadata_pickle(ckpt / DIST)
        except UnsafeCheckpoint as e:
            raise CorruptCheckpoint(str(e)) from None


def select_checkpoint(run_dir: Path, resume_from: int = -1, checksums: bool = True,
                      report=print) -> Optional[Path]:
    """The checkpoint to resume from: step `resume_from` if >= 0, else the newest one that verifies.

    Partial saves and checkpoints that fail verification are reported in one line each and skipped.
    An explicit `resume_from` that is missing or broken is an error: the user asked for that one."""
    for partial in partial_checkpoints(run_dir):
        report(f"checkpoint: ignoring partial checkpoint {partial} (a save that did not finish)")
    if resume_from >= 0:
        chosen = checkpoint_dir(run_dir, resume_from)
        if not chosen.exists():
            raise CorruptCheckpoint(f"train.resume_from={resume_from}: {chosen} does not exist")
        verify(chosen, checksums)
        return chosen
    for ckpt in reversed(complete_checkpoints(run_dir)):
        try:
            verify(ckpt, checksums)
            return ckpt
        except CorruptCheckpoint as e:
            report(f"checkpoint: {e}; falling back to the previous complete checkpoint")
    return None


# ---------------------------------------------------------------- publish and retention

def begin_save(run_dir: Path, step: int) -> Path:
    """The temporary directory of checkpoint `step` (rank 0 creates it empty; others wait on a barrier)."""
    tmp = tmp_dir(run_dir, step)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def publish(tmp: Path, *, hook=None) -> Path:
    """Hash, mark and rename a fully written checkpoint into place. Rank 0 only.

    `hook(stage)` lets the crash tests stop here (see faults.test_hook)."""
    final = tmp.with_name(tmp.name[: -len(".tmp")])
    write_manifest(tmp)
    if hook:
        hook("manifest")
    (tmp / MARKER).write_text(f"step {step_of(final)}\n")
    _fsync_dir(tmp)
    if final.exists():  # a stale copy of the same step (e.g. after resume_from an older one)
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync_dir(final.parent)
    return final


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:  # not supported on every filesystem; the rename order still holds
        pass


def prune(run_dir: Path, keep: int, protect: Optional[Path] = None) -> list[Path]:
    """Delete complete checkpoints beyond the newest `keep` (0 = keep all), never `protect`."""
    if keep <= 0:
        return []
    done = complete_checkpoints(run_dir)
    gone = [p for p in done[:-keep] if protect is None or p.resolve() != Path(protect).resolve()]
    for p in gone:
        shutil.rmtree(p, ignore_errors=True)
    return gone


def remove_partials(run_dir: Path) -> None:
    for p in partial_checkpoints(run_dir):
        shutil.rmtree(p, ignore_errors=True)


# ---------------------------------------------------------------- files beside the shards

def write_common(tmp: Path, *, state: dict, config_yaml: str, tokenizer_dir: Optional[Path],
                 weights: Optional[dict] = None) -> None:
    """Rank 0's part: state.json, config.yaml, tokenizer/; model.safetensors for weights-only checkpoints."""
    (tmp / "state.json").write_text(json.dumps({"format": FORMAT_VERSION, **state}, indent=1))
    (tmp / "config.yaml").write_text(config_yaml)
    if tokenizer_dir is not None:
        shutil.copytree(tokenizer_dir, tmp / "tokenizer")
    if weights is not None:
        save_file(weights, str(tmp / "model.safetensors"))


def full_weights(model) -> dict:
    """A single-process model's tensors as saved in model.safetensors (None entries dropped)."""
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()
            if isinstance(v, torch.Tensor)}


def read_state(ckpt: Path) -> dict:
    return json.loads((Path(ckpt) / "state.json").read_text())


def save_checkpoint(run_dir: Path, step: int, *, model, optimizer=None, state: dict, config_yaml: str,
                    tokenizer_dir: Optional[Path] = None) -> Path:
    """Write a weights-only checkpoint of a single-process model (imports from Hugging Face, tests).

    `optimizer` is accepted and not stored: a weights-only checkpoint starts runs (train.init_from),
    it is not resumed."""
    tmp = begin_save(run_dir, step)
    write_common(tmp, state=state, config_yaml=config_yaml, tokenizer_dir=tokenizer_dir, weights=full_weights(model))
    return publish(tmp)


def load_model_weights(ckpt: Path, model) -> None:
    """Load a checkpoint's full weights into a single-process `model` (strict: every key must match)."""
    model.load_state_dict(full_state_dict(ckpt), strict=True)


def full_state_dict(ckpt: Path) -> dict[str, torch.Tensor]:
    """The full, unsharded single-process state dict of a checkpoint of either layout.

    Sharded checkpoints store decoder layers stacked (`decoder.layers.<name>` with the global layer
    index on axis 0) and tensor-parallel pieces at their global offsets, which is the single-process
    layout once the stack is split again; tied output weights are stored once, as the embedding."""
    ckpt = Path(ckpt)
    if (ckpt / "model.safetensors").is_file():
        return load_file(str(ckpt / "model.safetensors"))
    if not (ckpt / DIST).is_dir():
        raise FileNotFoundError(f"{ckpt}: neither model.safetensors nor {DIST}/ (a sharded checkpoint)")
    out = {}
    for key, value in read_full_tensors(ckpt / DIST, weights_only=True).items():
        if key.startswith("decoder.layers."):
            rest = key[len("decoder.layers."):]
            for i in range(value.shape[0]):
                out[f"decoder.layers.{i}.{rest}"] = value[i].clone()
        else:
            out[key] = value
    return out


def warn(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
