"""Reading raw text inputs for shard preparation: .txt, .jsonl and .parquet (optionally gzipped).

A ``.txt``/``.txt.gz`` file is one document; a ``.jsonl``/``.jsonl.gz`` file has one document per
line in a named field; a ``.parquet`` file has one document per row of a named string column.
Directories are expanded to the supported files below them, in sorted order.
"""
from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path
from typing import Iterator

from .errors import DataError

SUFFIXES = (".txt", ".txt.gz", ".jsonl", ".jsonl.gz", ".parquet")


def _kind(path: Path) -> str | None:
    name = path.name.lower()
    for suffix in SUFFIXES:
        if name.endswith(suffix):
            return suffix.replace(".gz", "")
    return None


def expand_inputs(paths: list[str | Path]) -> list[Path]:
    """Input files named by ``paths`` (files or directories), checked to exist and be readable."""
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise DataError(f"{path}: input does not exist; expected a file or directory of "
                            f"{', '.join(SUFFIXES)} files")
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and _kind(p))
            if not found:
                raise DataError(f"{path}: directory has no input files; expected files ending "
                                f"in {', '.join(SUFFIXES)}")
            files.extend(found)
        elif _kind(path) is None:
            raise DataError(f"{path}: unsupported input type; expected one of {', '.join(SUFFIXES)}")
        else:
            files.append(path)
    return files


def describe(path: Path) -> dict:
    """Identity of an input file for the manifest (size and content hash)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return {"path": str(path), "bytes": path.stat().st_size, "sha256": digest.hexdigest()}


def _open_text(path: Path):
    if path.name.lower().endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8")


def iter_documents(path: Path, field: str = "text") -> Iterator[str]:
    """Documents of one input file; malformed content raises DataError naming file and line."""
    kind = _kind(path)
    try:
        if kind == ".txt":
            with _open_text(path) as f:
                yield f.read()
        elif kind == ".jsonl":
            yield from _iter_jsonl(path, field)
        elif kind == ".parquet":
            yield from _iter_parquet(path, field)
    except (UnicodeDecodeError, OSError, EOFError) as exc:
        raise DataError(f"{path}: cannot read as UTF-8 {kind} ({exc})") from exc


def _iter_jsonl(path: Path, field: str) -> Iterator[str]:
    with _open_text(path) as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{number}: invalid JSON ({exc.msg}); expected one "
                                "JSON object per line") from exc
            value = record.get(field) if isinstance(record, dict) else None
            if not isinstance(value, str):
                raise DataError(f"{path}:{number}: no string field {field!r}; expected objects "
                                f"like {{\"{field}\": \"...\"}} (choose the field with --field)")
            yield value


def _iter_parquet(path: Path, field: str) -> Iterator[str]:
    import pyarrow.parquet as pq

    try:
        table = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises several types for a bad file
        raise DataError(f"{path}: not a readable parquet file ({exc})") from exc
    if field not in table.schema_arrow.names:
        raise DataError(f"{path}: no column {field!r}; columns are {table.schema_arrow.names}")
    for batch in table.iter_batches(columns=[field], batch_size=1024):
        for value in batch.column(0).to_pylist():
            if value is not None:
                yield value
