"""Data: embedded corpus, tokenizer, MDS shard preparation, remote sources, mixtures and the packed,
resumable loader.

Public API::

    DataConfig                                   # the data section of the run config
    load_tokenizer(path="")                      # transformers.PreTrainedTokenizerFast
    ensure_dataset(cfg) -> Path                  # prepared + validated dataset directory
    ensure_sources(cfg) -> list[Source]          # every source (local, remote mirror), validated
    build_loader(cfg, split, micro_batch_size, *, dp_rank=0, dp_size=1, seed=0, sources=None)
    eval_documents() -> list[Path]               # held-out long documents as .txt files
    DataError                                    # every bad-data error

See docs/data.md for the corpus, the shard format and the resume rules.
"""
from .config import DataConfig, SourceConfig
from .corpus import eval_documents
from .dataset import Source, build_loader, ensure_dataset, ensure_sources
from .errors import DataError
from .loader import PackedLoader
from .tokenizer import EOS, load_tokenizer

__all__ = ["DataConfig", "DataError", "EOS", "PackedLoader", "Source", "SourceConfig", "build_loader",
           "ensure_dataset", "ensure_sources", "eval_documents", "load_tokenizer"]
