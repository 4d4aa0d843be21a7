"""Data section of the run configuration."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class SourceConfig:
    """One dataset of a mixture: a prepared directory or a remote URI holding one."""
    # A directory made by tools/prepare_data.py, or a URI of a copy of one in object storage
    # (s3://bucket/prefix, gs://, oci://, azure://, ... : the schemes mosaicml-streaming downloads).
    path: str = ""
    # Local cache of a remote source ("" = <data.cache_dir>/remote/<hash of the URI>); unused for
    # a local directory, which is read in place.
    cache_dir: str = ""
    weight: float = 1.0  # share of the training samples: weight / sum of weights
    # Long-context stages: documents of this source shorter than min_doc_tokens are skipped, longer
    # than max_doc_tokens (0 = no limit) cut into pieces of that length, each its own document.
    min_doc_tokens: int = 0
    max_doc_tokens: int = 0


@dataclass
class DataConfig:
    seq_len: int = 128  # tokens per training sample
    # Directory made by tools/prepare_data.py (train/, val/, manifest.json) or a URI of one; "" =
    # the embedded corpus, prepared on first use into cache_dir. Shorthand for one source.
    path: str = ""
    # Several datasets mixed by weight (exclusive with path); see docs/data.md, "Remote sources".
    sources: list[SourceConfig] = field(default_factory=list)
    tokenizer: str = ""  # directory with tokenizer.json; "" = the embedded data/tokenizer
    # Where the embedded corpus is prepared and remote sources are cached by default. A relative
    # path is taken from the current working directory (run from the repository root and it lands
    # in <repo>/.cache/data).
    cache_dir: str = ".cache/data"
    num_workers: int = 0  # loader worker processes (0 = read in the training process)
    shuffle: bool = True  # shuffle training documents each epoch (val is never shuffled)
    verify_checksums: bool = True  # hash every shard against index.json (sizes are always checked)
    # Give every micro-batch of an optimizer step about the same attention cost (sum of squared
    # document lengths) by choosing which rank and micro-batch reads each of the step's samples;
    # the step's samples, and so its gradient and exact resume, are unchanged.
    balance_attention: bool = False
    prepare_workers: int = 1  # encoding processes when the embedded corpus is prepared
    # Remote sources: batches whose shards are fetched ahead of use, per loader process.
    prefetch: int = 2
    # Remote sources: shard bytes each source's cache may hold (0 = no limit); least recently
    # used shards not needed by the current or prefetched batches are evicted first.
    cache_limit_mb: float = 0.0
    download_attempts: int = 3  # attempts per remote file before the run stops
    download_backoff: float = 1.0  # seconds before the 2nd attempt, doubling after each failure
    download_timeout: float = 60.0  # seconds one remote file may take


def validate_data(d: DataConfig) -> list[str]:
    """Problems of the sources and fetch settings, one phrase each naming the key and value."""
    from .mixture import BLOCK, quotas
    from .remote import location_problem

    errs = []
    if d.path and d.sources:
        errs.append(f"data.path={d.path!r} and data.sources are both set; expected one of them "
                    "(data.path is the one-source shorthand)")
    keys = [("data.path", d.path)] if not d.sources else [
        (f"data.sources[{i}].path", s.path) for i, s in enumerate(d.sources)]
    errs += [p for key, value in keys if (p := location_problem(key, value))]
    weights = [s.weight for s in d.sources]
    for i, w in enumerate(weights):
        if not (w >= 0 and w < float("inf")):
            errs.append(f"data.sources[{i}].weight={w!r}: expected a finite weight >= 0")
    if weights and not errs:
        if sum(weights) <= 0:
            errs.append(f"data.sources weights {weights}: expected a positive sum")
        else:
            for i, (w, q) in enumerate(zip(weights, quotas(weights))):
                if w > 0 and q == 0:
                    errs.append(f"data.sources[{i}].weight={w!r}: below 1/{BLOCK} of the total "
                                f"{sum(weights)!r}, too small to be sampled; expected a larger share")
    for i, s in enumerate(d.sources):
        for key in ("min_doc_tokens", "max_doc_tokens"):
            if getattr(s, key) < 0:
                errs.append(f"data.sources[{i}].{key}={getattr(s, key)}: must be >= 0")
    for key in ("prefetch", "download_attempts"):
        if getattr(d, key) < (0 if key == "prefetch" else 1):
            errs.append(f"data.{key}={getattr(d, key)}: must be >= {0 if key == 'prefetch' else 1}")
    for key in ("cache_limit_mb", "download_backoff"):
        if getattr(d, key) < 0:
            errs.append(f"data.{key}={getattr(d, key)}: must be >= 0")
    if d.download_timeout <= 0:
        errs.append(f"data.download_timeout={d.download_timeout}: must be > 0")
    return errs
