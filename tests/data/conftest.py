"""Shared fixtures for the data tests: small prepared datasets built from embedded documents."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from tapa_scale.data.corpus import corpus_file, read_jsonl_gz
from tapa_scale.data.prepare import prepare_dataset


def small_docs(n: int = 10, chars: int = 6000) -> list[str]:
    """The first ``n`` validation documents of the embedded corpus, cut to ``chars`` characters."""
    docs = []
    for record in read_jsonl_gz(corpus_file("val")):
        docs.append(record["text"][:chars])
        if len(docs) == n:
            break
    return docs


def write_jsonl(path: Path, texts: list[str], field: str = "text") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({field: t}) + "\n" for t in texts))
    return path


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    """A prepared dataset: 10 train documents (~16k tokens), 3 val documents."""
    base = tmp_path_factory.mktemp("tiny")
    docs = small_docs(13)
    train = write_jsonl(base / "in" / "train.jsonl", docs[:10])
    val = write_jsonl(base / "in" / "val.jsonl", docs[10:])
    out = base / "prepared"
    prepare_dataset([train], out, val=[val], progress=False)
    return out


@pytest.fixture(scope="session")
def embedded_cache(tmp_path_factory) -> Path:
    """A cache dir shared by the tests that prepare the whole embedded corpus."""
    return tmp_path_factory.mktemp("embedded_cache")
