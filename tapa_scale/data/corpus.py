"""The embedded public-domain corpus: which Debian packages feed it, how it is split, where it lives.

``tools/build_corpus.py`` downloads the packages named in ``SOURCES`` and calls
:func:`collect_documents` / :func:`split_documents` / :func:`write_corpus`; the result is committed
under ``data/corpus/{train,val,eval}.jsonl.gz`` (one JSON object per line:
``{"id", "source", "text"}``) with ``data/MANIFEST.json``. :func:`eval_documents` hands the held-out
long documents to evaluation code as plain ``.txt`` files.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from . import sources

REPO_ROOT = Path(__file__).resolve().parents[2]
DATA_DIR = REPO_ROOT / "data"
CORPUS_DIR = DATA_DIR / "corpus"
SPLITS = ("train", "val", "eval")
VAL_CHARS = 1_000_000  # validation split size target, in characters


@dataclass(frozen=True)
class Source:
    package: str
    version: str
    license: str
    title: str
    read: Callable[[Path], list[sources.Doc]]  # extracted package root -> documents


def _sword(module: str, name: str):
    def read(root: Path) -> list[sources.Doc]:
        hits = sorted(root.glob(f"usr/share/sword/modules/*/*/{module}"))
        return sources.read_sword(hits[0], name)
    return read


def _austen(root: Path) -> list[sources.Doc]:
    prefix = root / "usr/lib/R/site-library/janeaustenr/data/Rdata"
    novels = sources.read_r_lazyload(prefix)
    return [(f"austen/{name}", sources.tidy(sources.unwrap("\n".join(x or "" for x in lines))))
            for name, lines in sorted(novels.items())]


def _devil(root: Path) -> list[sources.Doc]:
    base = root / "usr/share/dictd"
    groups: dict[str, list[str]] = {}
    for word, text in sources.read_dictd(base / "devil.index", base / "devil.dict.dz"):
        groups.setdefault(word[:1].upper(), []).append(sources.tidy(text))
    return [(f"devil/{letter}", "\n\n".join(entries)) for letter, entries in sorted(groups.items())]


def _jargon(root: Path) -> list[sources.Doc]:
    raw = gzip.decompress((root / "usr/share/doc/jargon-text/jargon.txt.gz").read_bytes())
    text = sources.tidy(raw.decode("utf-8"))
    text = text[text.index("Glossary\n\n0"):] if "Glossary\n\n0" in text else text  # skip the TOC
    parts = sources.split_paragraphs(text, 60_000)
    return [(f"jargon/part-{i:02d}", part) for i, part in enumerate(parts)]


def _cfi(root: Path) -> list[sources.Doc]:
    pages = ["preface.htm"] + [f"ch{i}web.htm" for i in range(1, 18)]
    docs = []
    for page in pages:
        raw = (root / "usr/share/doc/cfi-en/html" / page).read_bytes()
        docs.append((f"cfi/{page.split('.')[0]}", sources.html_to_text(raw.decode("cp1252"))))
    return docs


SOURCES = [
    Source("sword-comm-tdavid", "2.1-1", "Public Domain", "C. H. Spurgeon, The Treasury of David",
           _sword("tdavid", "tdavid")),
    Source("sword-comm-mhcc", "2.0-1", "Public Domain",
           "Matthew Henry's Concise Commentary on the Whole Bible", _sword("mhcc", "mhcc")),
    Source("sword-text-web", "426.0-1", "Public Domain", "World English Bible with Deuterocanon",
           _sword("engWEB2015eb", "web")),
    Source("r-cran-janeaustenr", "1.0.0-1", "Public Domain (texts; package MIT)",
           "Jane Austen's six completed novels", _austen),
    Source("dict-devil", "1.0-13.1", "Public Domain", "Ambrose Bierce, The Devil's Dictionary",
           _devil),
    Source("jargon-text", "4.4.7-4.1", "Public Domain", "The Jargon File 4.4.7", _jargon),
    Source("cfi-en", "3.0-10.2", "Public Domain",
           "Linus Walleij, Copyright Does Not Exist (English translation)", _cfi),
]

# Sources whose longest document is held out for long-context evaluation (besides all of Austen).
LONGEST_HELD_OUT = ("sword-comm-tdavid", "sword-comm-mhcc", "sword-text-web")
EVAL_SOURCES = ("r-cran-janeaustenr",)


def collect_documents(extracted: dict[str, Path]) -> list[dict]:
    """Documents of every source, as ``{"id", "source", "text"}``, empty ones dropped."""
    docs = []
    for source in SOURCES:
        for doc_id, text in source.read(extracted[source.package]):
            if text.strip():
                docs.append({"id": doc_id, "source": source.package, "text": text})
    return docs


def _stable_key(doc_id: str) -> str:
    return hashlib.sha256(doc_id.encode()).hexdigest()


def split_documents(docs: list[dict], val_chars: int = VAL_CHARS) -> dict[str, list[dict]]:
    """Split by document: Austen + each big source's longest document -> eval; ~val_chars -> val.

    Validation documents are taken in the order of a hash of their id (a fixed pseudo-random
    order), skipping very long ones so validation sees many documents.
    """
    held = {d["id"] for d in docs if d["source"] in EVAL_SOURCES}
    for package in LONGEST_HELD_OUT:
        mine = [d for d in docs if d["source"] == package]
        held.add(max(mine, key=lambda d: len(d["text"]))["id"])
    rest = [d for d in docs if d["id"] not in held]
    val_ids, total = set(), 0
    for doc in sorted(rest, key=lambda d: _stable_key(d["id"])):
        if total >= val_chars:
            break
        if len(doc["text"]) <= val_chars // 5:
            val_ids.add(doc["id"])
            total += len(doc["text"])
    return {
        "train": [d for d in rest if d["id"] not in val_ids],
        "val": [d for d in rest if d["id"] in val_ids],
        "eval": [d for d in docs if d["id"] in held],
    }


def write_jsonl_gz(path: Path, records: list[dict]) -> None:
    """Byte-reproducible gzip JSONL (fixed mtime, no stored file name)."""
    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb", compresslevel=9, mtime=0, filename="") as gz:
        for record in records:
            gz.write((json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8"))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buffer.getvalue())


def read_jsonl_gz(path: Path) -> Iterator[dict]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)


def corpus_file(split: str, corpus_dir: Path = CORPUS_DIR) -> Path:
    if split not in SPLITS:
        raise ValueError(f"unknown corpus split {split!r}; expected one of {SPLITS}")
    return corpus_dir / f"{split}.jsonl.gz"


def write_corpus(splits: dict[str, list[dict]], corpus_dir: Path = CORPUS_DIR) -> dict:
    """Write the three split files; return per-document rows for the manifest."""
    rows = []
    for split in SPLITS:
        write_jsonl_gz(corpus_file(split, corpus_dir), splits[split])
        for doc in splits[split]:
            rows.append({"id": doc["id"], "source": doc["source"], "split": split,
                         "chars": len(doc["text"]),
                         "sha256": hashlib.sha256(doc["text"].encode()).hexdigest()})
    return {"documents": rows}


def _safe_name(doc_id: str) -> str:
    return doc_id.replace("/", "__") + ".txt"


def eval_documents(cache_dir: str | os.PathLike | None = None) -> list[Path]:
    """The held-out long documents as UTF-8 ``.txt`` files (sorted paths, stable content).

    They are decompressed from ``data/corpus/eval.jsonl.gz`` into ``<cache_dir>/eval_docs/`` on
    first use; ``cache_dir`` defaults to ``DataConfig().cache_dir`` (relative to the working dir).
    """
    from .config import DataConfig

    out = Path(cache_dir if cache_dir is not None else DataConfig().cache_dir) / "eval_docs"
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for doc in read_jsonl_gz(corpus_file("eval")):
        path = out / _safe_name(doc["id"])
        data = doc["text"].encode("utf-8")
        if not path.exists() or path.stat().st_size != len(data) or path.read_bytes() != data:
            tmp = path.with_suffix(f".tmp{os.getpid()}")  # atomic: readers never see half a file
            tmp.write_bytes(data)
            os.replace(tmp, path)
        paths.append(path)
    return sorted(paths)
