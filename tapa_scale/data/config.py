"""Data section of the run configuration."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class DataConfig:
    seq_len: int = 128  # tokens per training sample
    # Directory made by tools/prepare_data.py (train/, val/, manifest.json); "" = the embedded
    # corpus, prepared on first use into cache_dir.
    path: str = ""
    tokenizer: str = ""  # directory with tokenizer.json; "" = the embedded data/tokenizer
    # Where the embedded corpus is prepared. A relative path is taken from the current working
    # directory (run from the repository root and it lands in <repo>/.cache/data).
    cache_dir: str = ".cache/data"
    num_workers: int = 0  # loader worker processes (0 = read in the training process)
    shuffle: bool = True  # shuffle training documents each epoch (val is never shuffled)
    verify_checksums: bool = True  # hash every shard against index.json (sizes are always checked)
    prepare_workers: int = 1  # encoding processes when the embedded corpus is prepared
