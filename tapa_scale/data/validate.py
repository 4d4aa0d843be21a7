"""Checks that a prepared dataset directory is complete and matches its tokenizer.

Run before training starts, so bad data fails with one :class:`DataError` naming the file and what
was expected instead of an obscure error (or silent garbage) in the middle of a run.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from .errors import DataError
from .tokenizer import tokenizer_sha256

SPLITS = ("train", "val")


def _load_json(path: Path, what: str) -> dict:
    if not path.is_file():
        raise DataError(f"{path}: missing {what}; expected the file written by "
                        "tools/prepare_data.py (rerun it to rebuild the dataset)")
    try:
        obj = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: {what} is not valid JSON ({exc})") from exc
    if not isinstance(obj, dict):
        raise DataError(f"{path}: {what} is not a JSON object")
    return obj


def _sha(path: Path, algo: str) -> str:
    digest = hashlib.new(algo)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _check_shards(split_dir: Path, verify_checksums: bool, local: bool = True) -> int:
    """Every shard in index.json exists with the listed size (and hash); returns sample count.
    ``local=False`` (a remote source's cache) only counts: its shards are checked when fetched."""
    index = _load_json(split_dir / "index.json", "MDS index")
    total = 0
    for shard in index.get("shards", []):
        if not local:
            total += int(shard["samples"])
            continue
        raw = shard["raw_data"]
        path = split_dir / raw["basename"]
        if not path.is_file():
            raise DataError(f"{path}: missing shard; expected {raw['bytes']} bytes as listed in "
                            f"{split_dir / 'index.json'}")
        size = path.stat().st_size
        if size != raw["bytes"]:
            raise DataError(f"{path}: shard is {size} bytes, expected {raw['bytes']} bytes as "
                            f"listed in {split_dir / 'index.json'} (truncated or overwritten)")
        for algo, expected in (raw.get("hashes") or {}).items():
            if verify_checksums and _sha(path, algo) != expected:
                raise DataError(f"{path}: shard {algo} checksum mismatch; expected {expected} as "
                                f"listed in {split_dir / 'index.json'} (corrupted)")
        total += int(shard["samples"])
    return total


def _check_samples(split_dir: Path, info: dict, n_samples: int) -> None:
    path = split_dir / "samples.npy"
    if not path.is_file():
        raise DataError(f"{path}: missing sample table; expected the samples.npy of prepare_data")
    if hashlib.sha256(path.read_bytes()).hexdigest() != info["samples_sha256"]:
        raise DataError(f"{path}: sample table does not match manifest.json (sha256 differs)")
    table = np.load(path, allow_pickle=False)
    if table.shape != (n_samples, 2) or n_samples != info["samples"]:
        raise DataError(f"{path}: {table.shape[0]} samples, but index.json lists {n_samples} and "
                        f"manifest.json {info['samples']}")


def validate_dataset(path: str | Path, tokenizer_file: str | Path,
                     verify_checksums: bool = True, shards: bool = True) -> dict:
    """Return the manifest of the prepared dataset at ``path`` after checking it; or DataError.
    ``shards=False`` checks the metadata only (a remote source's mirror, whose shards are
    fetched and verified on use)."""
    root = Path(path)
    if not root.is_dir():
        raise DataError(f"{root}: dataset directory does not exist; expected a directory made by "
                        "tools/prepare_data.py (with train/, val/, manifest.json)")
    manifest = _load_json(root / "manifest.json", "dataset manifest")
    if manifest.get("format") != "tapa_scale.mds.v1":
        raise DataError(f"{root / 'manifest.json'}: format {manifest.get('format')!r}, "
                        "expected 'tapa_scale.mds.v1'")
    expected = manifest["tokenizer"]["sha256"]
    actual = tokenizer_sha256(tokenizer_file)
    if actual != expected:
        raise DataError(f"{tokenizer_file}: tokenizer sha256 {actual[:16]}… does not match "
                        f"{expected[:16]}… recorded in {root / 'manifest.json'}; expected the "
                        "tokenizer the dataset was prepared with")
    for split in SPLITS:
        split_dir = root / split
        if not split_dir.is_dir():
            raise DataError(f"{split_dir}: missing split directory; expected train/ and val/")
        n = _check_shards(split_dir, verify_checksums, local=shards)
        _check_samples(split_dir, manifest["splits"][split], n)
    return manifest
