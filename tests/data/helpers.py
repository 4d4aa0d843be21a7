"""Small helpers shared by the data tests."""
from __future__ import annotations

import json
from pathlib import Path

from tapa_scale.data.corpus import corpus_file, read_jsonl_gz


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
