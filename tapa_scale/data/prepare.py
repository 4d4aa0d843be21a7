"""Tokenize text inputs into MDS shards (mosaicml-streaming) plus a manifest.

Output layout::

    OUT/manifest.json            tokenizer hash, inputs (size + sha256), per-split counts, entropy
    OUT/{train,val}/index.json   MDS index (shard sizes and sha1 hashes)
    OUT/{train,val}/shard.*.mds  one sample per document, or per chunk of <= max_chunk_tokens
    OUT/{train,val}/samples.npy  int64 (n_samples, 2): document index, token count of each sample

Token ids are ``uint16`` when the vocabulary fits, else ``uint32``. The ``<|endoftext|>`` separator
is not stored; the loader inserts it after every document. Rerunning with unchanged inputs,
tokenizer and options is a no-op (the manifest's ``request`` is compared, the shards validated).
"""
from __future__ import annotations

import hashlib
import json
import math
import multiprocessing as mp
import os
import shutil
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from .errors import DataError
from .inputs import describe, expand_inputs, iter_documents
from .tokenizer import EOS, resolve_tokenizer, tokenizer_sha256

FORMAT = "tapa_scale.mds.v1"
SPLIT_NAMES = ("train", "val")
DEFAULT_CHUNK_TOKENS = 1 << 20
DEFAULT_SHARD_BYTES = 1 << 26  # MDS shard size limit: the unit a remote source is fetched in
_BATCH_CHARS = 1 << 20  # characters per encoding task: large enough to amortise IPC

_worker_tok = None  # the tokenizer of an encoding worker process


def _init_worker(tokenizer_file: str) -> None:
    global _worker_tok
    from tokenizers import Tokenizer
    _worker_tok = Tokenizer.from_file(tokenizer_file)


def _encode(batch: list[str]) -> list[np.ndarray]:
    # One encode() per document, not encode_batch(): the batch call starts the tokenizers thread
    # pool, after which every fork (our pool, DataLoader workers) prints a warning and disables it.
    # Parallelism comes from the process pool instead.
    dtype = np.uint16 if _worker_tok.get_vocab_size() < 65536 else np.uint32
    return [np.asarray(_worker_tok.encode(doc).ids, dtype=dtype) for doc in batch]


def _batches(docs: Iterable[str]) -> Iterator[list[str]]:
    batch, size = [], 0
    for doc in docs:
        batch.append(doc)
        size += len(doc)
        if size >= _BATCH_CHARS:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def _encoded(docs: Iterable[str], tokenizer_file: Path, workers: int) -> Iterator[np.ndarray]:
    """Token arrays of ``docs`` in input order (imap keeps order, so output is worker-independent)."""
    if workers <= 1:
        _init_worker(str(tokenizer_file))
        for batch in _batches(docs):
            yield from _encode(batch)
        return
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    with ctx.Pool(workers, initializer=_init_worker, initargs=(str(tokenizer_file),)) as pool:
        for arrays in pool.imap(_encode, _batches(docs), chunksize=1):
            yield from arrays


class _SplitWriter:
    """Writes one split: MDS samples, the (doc, length) table and unigram counts."""

    def __init__(self, out: Path, dtype: str, vocab: int, max_chunk: int, shard_bytes: int):
        from streaming import MDSWriter

        self.dir, self.max_chunk = out, max_chunk
        self.writer = MDSWriter(out=str(out), columns={"tokens": f"ndarray:{dtype}"},
                                compression=None, hashes=["sha1"], size_limit=shard_bytes)
        self.rows: list[tuple[int, int]] = []
        self.counts = np.zeros(vocab, dtype=np.int64)
        self.documents = 0

    def add(self, ids: np.ndarray) -> None:
        if ids.size == 0:
            return  # an empty document adds nothing but a stray separator
        for start in range(0, ids.size, self.max_chunk):
            chunk = ids[start:start + self.max_chunk]
            self.writer.write({"tokens": chunk})
            self.rows.append((self.documents, int(chunk.size)))
        self.counts += np.bincount(ids, minlength=self.counts.size)
        self.documents += 1

    def finish(self, eos_id: int) -> dict:
        self.writer.finish()
        samples = np.asarray(self.rows, dtype=np.int64).reshape(-1, 2)
        np.save(self.dir / "samples.npy", samples, allow_pickle=False)
        self.counts[eos_id] += self.documents  # the loader's stream has one EOS per document
        p = self.counts[self.counts > 0] / max(1, self.counts.sum())
        return {"documents": self.documents, "samples": len(self.rows),
                "tokens": int(samples[:, 1].sum()),
                "unigram_entropy_nats": float(-(p * np.log(p)).sum()),
                "samples_sha256": hashlib.sha256((self.dir / "samples.npy").read_bytes()).hexdigest()}


def _request(inputs: dict[str, list[Path]], tok_file: Path, field: str, val_fraction: float,
             max_chunk: int, shard_bytes: int) -> dict:
    request = {"format": FORMAT, "tokenizer_sha256": tokenizer_sha256(tok_file), "field": field,
               "val_fraction": val_fraction, "max_chunk_tokens": max_chunk,
               "inputs": {s: [describe(p) for p in inputs[s]] for s in inputs}}
    if shard_bytes != DEFAULT_SHARD_BYTES:  # recorded only when set: earlier datasets keep their
        request["shard_bytes"] = shard_bytes  # request, hence their fingerprint
    return request


def _up_to_date(out: Path, request: dict, tok_file: Path) -> dict | None:
    from .validate import validate_dataset

    manifest_file = out / "manifest.json"
    if not manifest_file.is_file():
        return None
    try:
        manifest = json.loads(manifest_file.read_text())
        if manifest.get("request") != request:
            return None
        return validate_dataset(out, tok_file, verify_checksums=True)
    except (DataError, json.JSONDecodeError):
        return None  # damaged output: rebuild it


def _check_out_dir(out: Path) -> None:
    """Only ever replace our own output: refuse a non-empty directory that is not a dataset."""
    if out.exists() and any(out.iterdir()) and not (out / "manifest.json").exists():
        raise DataError(f"{out}: output directory is not empty and has no manifest.json; "
                        "expected an empty directory or one made by prepare_data")


def _progress(enabled: bool):
    from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn,
                               TimeRemainingColumn, TransferSpeedColumn)
    # disable=True prints nothing at all (a hidden task would still emit a blank line)
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), DownloadColumn(),
                    TransferSpeedColumn(), TimeRemainingColumn(), disable=not enabled)


def prepare_dataset(train: list[str | Path], out: str | Path, *, val: list[str | Path] = (),
                    tokenizer: str | Path = "", field: str = "text", workers: int = 1,
                    val_fraction: float = 0.01, max_chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
                    shard_bytes: int = DEFAULT_SHARD_BYTES, progress: bool = True) -> dict:
    """Tokenize ``train`` (and ``val``) inputs into ``out``; returns the manifest.

    Without ``val`` inputs, training documents 1, n+1, 2n+1, ... (n = round(1/val_fraction))
    go to val instead.
    """
    out = Path(out)
    tok_file = resolve_tokenizer(tokenizer)
    inputs = {"train": expand_inputs(list(train)), "val": expand_inputs(list(val))}
    request = _request(inputs, tok_file, field, val_fraction if not val else 0.0, max_chunk_tokens,
                       shard_bytes)
    existing = _up_to_date(out, request, tok_file)
    if existing is not None:
        return existing
    _check_out_dir(out)
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        splits = _write_splits(inputs, tmp, tok_file, field, workers, request, progress)
        manifest = _manifest(request, tok_file, splits)
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
        _replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return manifest


def _documents(files: list[Path], field: str, advance) -> Iterator[str]:
    for path in files:
        yield from iter_documents(path, field)
        advance(path.stat().st_size)


def _write_splits(inputs, tmp: Path, tok_file: Path, field: str, workers: int, request: dict,
                  progress: bool) -> dict:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tok_file))
    vocab, eos = tok.get_vocab_size(), tok.token_to_id(EOS)
    if eos is None:
        raise DataError(f"{tok_file}: tokenizer has no {EOS} token; expected it as end-of-document")
    dtype = "uint16" if vocab < 65536 else "uint32"
    shard_bytes = request.get("shard_bytes", DEFAULT_SHARD_BYTES)
    writers = {s: _SplitWriter(tmp / s, dtype, vocab, request["max_chunk_tokens"], shard_bytes)
               for s in SPLIT_NAMES}
    every = round(1 / request["val_fraction"]) if request["val_fraction"] > 0 else 0
    total = sum(f["bytes"] for s in SPLIT_NAMES for f in request["inputs"][s])
    with _progress(progress) as bar:
        task = bar.add_task("tokenizing", total=total)
        for split in SPLIT_NAMES:
            docs = _documents(inputs[split], field, lambda n: bar.advance(task, n))
            seen = 0
            for ids in _encoded(docs, tok_file, workers):
                target = split
                if split == "train" and ids.size and every:
                    # documents 1, n+1, 2n+1, ... go to val: never empty if there is any input
                    target = "val" if seen % every == 0 else "train"
                    seen += 1
                writers[target].add(ids)
    stats = {s: w.finish(eos) for s, w in writers.items()}
    for split, info in stats.items():
        if info["documents"] == 0:
            files = ", ".join(str(p) for p in inputs[split] or inputs["train"]) or "(none)"
            raise DataError(f"{files}: no non-empty documents for the {split} split; expected "
                            f"at least one (field {field!r})")
    return {"dtype": dtype, "vocab_size": vocab, "eos_id": eos, "splits": stats}


def _manifest(request: dict, tok_file: Path, splits: dict) -> dict:
    return {"format": FORMAT, "request": request,
            "tokenizer": {"file": str(tok_file), "sha256": request["tokenizer_sha256"],
                          "vocab_size": splits["vocab_size"], "eos_id": splits["eos_id"]},
            "dtype": splits["dtype"], "splits": splits["splits"],
            "unigram_entropy_nats": splits["splits"]["train"]["unigram_entropy_nats"],
            "fingerprint": hashlib.sha256(json.dumps(
                [request, splits], sort_keys=True).encode()).hexdigest()[:16]}


def _replace(tmp: Path, out: Path) -> None:
    """Swap the finished output in; an older output of ours is removed only after success."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "manifest.json").unlink(missing_ok=True)  # marks the old output invalid first
    for split in SPLIT_NAMES:
        shutil.rmtree(out / split, ignore_errors=True)
        os.replace(tmp / split, out / split)
    os.replace(tmp / "manifest.json", out / "manifest.json")  # written last: output complete


def entropy_summary(manifest: dict) -> str:
    """One-line summary for logs: entropy in nats/token and as perplexity."""
    h = manifest["unigram_entropy_nats"]
    return f"train unigram entropy {h:.3f} nats/token (perplexity {math.exp(h):.1f})"
