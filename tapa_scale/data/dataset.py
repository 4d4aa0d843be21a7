"""Entry points the trainer calls: ``ensure_dataset`` and ``build_loader``."""
from __future__ import annotations

import fcntl
import hashlib
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .config import DataConfig, SourceConfig, validate_data
from .corpus import corpus_file
from .errors import DataError
from .loader import PackedLoader
from .prepare import prepare_dataset
from .remote import Fetch, is_remote, mirror_metadata
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


@dataclass
class Source:
    """One resolved dataset of the run: where its metadata is on local disk and how to get shards."""
    name: str        # the configured path or URI ("" = the embedded corpus)
    root: Path       # local directory with manifest.json, train/, val/ (a cache mirror if remote)
    uri: str         # "" for a local directory
    weight: float
    manifest: dict
    min_doc_tokens: int = 0
    max_doc_tokens: int = 0


def source_configs(cfg: DataConfig) -> list[tuple[str, SourceConfig]]:
    """``(config key, source)`` pairs: ``data.sources``, else ``data.path`` as the only source."""
    if cfg.sources:
        return [(f"data.sources[{i}]", s) for i, s in enumerate(cfg.sources)]
    return [("data", SourceConfig(path=cfg.path))]


def remote_cache_dir(cfg: DataConfig, source: SourceConfig) -> Path:
    if source.cache_dir:
        return Path(source.cache_dir)
    return Path(cfg.cache_dir) / "remote" / hashlib.sha256(source.path.encode()).hexdigest()[:12]


def fetch_settings(cfg: DataConfig) -> Fetch:
    return Fetch(attempts=cfg.download_attempts, backoff=cfg.download_backoff,
                 timeout=cfg.download_timeout)


def ensure_sources(cfg: DataConfig) -> list[Source]:
    """Every source of ``cfg``, validated (a remote one with its metadata mirrored), in order.
    Raises :class:`DataError` (one line) for a bad location, an unreachable or damaged dataset, or
    a tokenizer that differs from the run's -- before any training work."""
    problems = validate_data(cfg)
    if problems:
        raise DataError("; ".join(problems))
    tok_file = resolve_tokenizer(cfg.tokenizer)
    out = []
    for key, sc in source_configs(cfg):
        if not sc.path:
            root = embedded_dataset_dir(cfg)
            with _locked(Path(cfg.cache_dir) / "prepare.lock"):
                prepare_dataset([corpus_file("train")], root, val=[corpus_file("val")],
                                tokenizer=tok_file, workers=cfg.prepare_workers)
            manifest = validate_dataset(root, tok_file, verify_checksums=cfg.verify_checksums)
        elif is_remote(sc.path):
            root = mirror_metadata(sc.path, remote_cache_dir(cfg, sc), fetch_settings(cfg))
            try:
                manifest = validate_dataset(root, tok_file, cfg.verify_checksums, shards=False)
            except DataError as exc:
                raise DataError(f"{key}.path={sc.path!r}: {exc}") from None
        else:
            root = Path(sc.path)
            manifest = validate_dataset(root, tok_file, verify_checksums=cfg.verify_checksums)
        out.append(Source(sc.path, root, sc.path.rstrip("/") if is_remote(sc.path) else "",
                          float(sc.weight), manifest, sc.min_doc_tokens, sc.max_doc_tokens))
    return out


def ensure_dataset(cfg: DataConfig) -> Path:
    """The validated local directory of the first source (see :func:`ensure_sources`).

    ``cfg.path == ""`` prepares the embedded corpus into ``cfg.cache_dir`` on first use; concurrent
    callers (e.g. all ranks of a job) serialise on a file lock and later ones find it ready.
    """
    return ensure_sources(cfg)[0].root


def build_loader(cfg: DataConfig, split: str, micro_batch_size: int, *, dp_rank: int = 0,
                 dp_size: int = 1, seed: int = 0, sources: list[Source] | None = None,
                 step_samples: int = 0) -> PackedLoader:
    """A :class:`PackedLoader` over ``split`` ("train" or "val") of every source, for
    data-parallel rank ``dp_rank`` of ``dp_size``; see ``loader.py`` for the sharding, mixing and
    resume rules. ``sources`` from :func:`ensure_sources` skips resolving them again (no second
    validation or manifest fetch, e.g. for every evaluation). ``step_samples``: global samples per
    optimizer step, which ``cfg.balance_attention`` balances over micro-batches and ranks."""
    if split not in ("train", "val"):
        raise DataError(f"split {split!r} is not prepared; expected 'train' or 'val'")
    sources = sources if sources is not None else ensure_sources(cfg)
    return PackedLoader(sources, split, cfg.seq_len, micro_batch_size, dp_rank=dp_rank,
                        dp_size=dp_size, seed=seed, shuffle=cfg.shuffle,
                        num_workers=cfg.num_workers, fetch=fetch_settings(cfg),
                        verify_checksums=cfg.verify_checksums,
                        cache_limit_bytes=int(cfg.cache_limit_mb * (1 << 20)),
                        prefetch=cfg.prefetch,
                        balance_step=step_samples if cfg.balance_attention else 0)
