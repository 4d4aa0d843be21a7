"""Entry points the trainer calls: ``ensure_dataset`` and ``build_loader``."""
from __future__ import annotations

import fcntl
import json
import os
from contextlib import contextmanager
from pathlib import Path

from .config import DataConfig
from .corpus import corpus_file
from .errors import DataError
from .loader import PackedLoader
from .prepare import prepare_dataset
from .tokenizer import resolve_tokenizer, tokenizer_sha256
from .validate import validate_dataset


@contextmanager
def _locked(path: Path):
    """An exclusive advisory lock on ``path`` (kept in the cache dir; the kernel drops it if the
    holder dies, so a killed run never leaves a stale lock)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def embedded_dataset_dir(cfg: DataConfig) -> Path:
    """Where the embedded corpus is prepared for this tokenizer (one dir per tokenizer hash)."""
    return Path(cfg.cache_dir) / f"embedded-{tokenizer_sha256(cfg.tokenizer)[:12]}"


def ensure_dataset(cfg: DataConfig) -> Path:
    """The validated prepared-dataset directory for ``cfg``.

    ``cfg.path == ""`` prepares the embedded corpus into ``cfg.cache_dir`` on first use; concurrent
    callers (e.g. all ranks of a job) serialise on a file lock and later ones find it ready.
    Raises :class:`DataError` for a missing/damaged dataset or a tokenizer that does not match it.
    """
    tok_file = resolve_tokenizer(cfg.tokenizer)
    if cfg.path:
        root = Path(cfg.path)
    else:
        root = embedded_dataset_dir(cfg)
        with _locked(Path(cfg.cache_dir) / "prepare.lock"):
            prepare_dataset([corpus_file("train")], root, val=[corpus_file("val")],
                            tokenizer=tok_file, workers=cfg.prepare_workers)
    validate_dataset(root, tok_file, verify_checksums=cfg.verify_checksums)
    return root


def build_loader(cfg: DataConfig, split: str, micro_batch_size: int, *, dp_rank: int = 0,
                 dp_size: int = 1, seed: int = 0) -> PackedLoader:
    """A :class:`PackedLoader` over ``split`` ("train" or "val") for data-parallel rank
    ``dp_rank`` of ``dp_size``; see ``loader.py`` for the sharding and resume rules."""
    if split not in ("train", "val"):
        raise DataError(f"split {split!r} is not prepared; expected 'train' or 'val'")
    root = ensure_dataset(cfg)
    manifest = json.loads((root / "manifest.json").read_text())
    return PackedLoader(root, manifest, split, cfg.seq_len, micro_batch_size, dp_rank=dp_rank,
                        dp_size=dp_size, seed=seed, shuffle=cfg.shuffle,
                        num_workers=cfg.num_workers)
