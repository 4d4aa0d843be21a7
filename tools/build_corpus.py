#!/usr/bin/env python
"""Rebuild the embedded corpus (data/corpus, data/MANIFEST.json) and tokenizer (data/tokenizer).

    python tools/build_corpus.py all            # corpus, then tokenizer
    python tools/build_corpus.py corpus         # needs apt-get (Debian) and dpkg-deb
    python tools/build_corpus.py tokenizer --vocab-size 8192

The corpus step downloads the pinned Debian packages listed in tapa_scale/data/corpus.py with
``apt-get download`` and unpacks them with ``dpkg-deb -x`` into a temporary directory (nothing is
installed). Both steps are deterministic: rerunning them reproduces the committed files.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tapa_scale.data import corpus  # noqa: E402
from tapa_scale.data.tokenizer import TOKENIZER_DIR, train_tokenizer  # noqa: E402


def fetch_packages(workdir: Path) -> tuple[dict[str, Path], list[dict]]:
    """Download and unpack every source package; return extracted roots and package records."""
    roots, records = {}, []
    for source in corpus.SOURCES:
        spec = f"{source.package}={source.version}"
        subprocess.run(["apt-get", "download", "-q", spec], cwd=workdir, check=True)
        deb = next(workdir.glob(f"{source.package}_*.deb"))
        root = workdir / source.package
        subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
        roots[source.package] = root
        records.append({"package": source.package, "version": source.version,
                        "deb": deb.name, "deb_sha256": hashlib.sha256(deb.read_bytes()).hexdigest(),
                        "title": source.title, "license": source.license})
    return roots, records


def build_corpus() -> None:
    with tempfile.TemporaryDirectory(prefix="tapa_corpus_") as tmp:
        os.chmod(tmp, 0o777)  # apt-get download runs as the _apt user when it can
        roots, packages = fetch_packages(Path(tmp))
        docs = corpus.collect_documents(roots)
    splits = corpus.split_documents(docs)
    rows = corpus.write_corpus(splits)["documents"]
    totals = {s: {"documents": len(splits[s]), "chars": sum(len(d["text"]) for d in splits[s]),
                  "file": f"corpus/{s}.jsonl.gz",
                  "file_bytes": corpus.corpus_file(s).stat().st_size} for s in corpus.SPLITS}
    for package in packages:
        package["documents"] = {s: sum(1 for r in rows if r["source"] == package["package"]
                                       and r["split"] == s) for s in corpus.SPLITS}
    manifest = {
        "description": "Embedded public-domain English corpus for tapa_scale (see docs/data.md)",
        "built_by": "tools/build_corpus.py corpus",
        "split_rule": "eval = all Austen novels + the longest document of tdavid, mhcc and web; "
                      f"val = documents in sha256(id) order up to {corpus.VAL_CHARS} chars "
                      f"(each <= {corpus.VAL_CHARS // 5} chars); train = the rest",
        "format": "one JSON object per line {id, source, text}, gzip, UTF-8 NFC",
        "splits": totals, "packages": packages, "documents": rows,
    }
    (corpus.DATA_DIR / "MANIFEST.json").write_text(json.dumps(manifest, indent=1) + "\n")
    for split, info in totals.items():
        print(f"{split:>5}: {info['documents']:4d} documents, {info['chars']:>10,} chars, "
              f"{info['file_bytes']:>9,} bytes")


def build_tokenizer(vocab_size: int, out: Path) -> None:
    texts = (d["text"] for d in corpus.read_jsonl_gz(corpus.corpus_file("train")))
    path = train_tokenizer(texts, vocab_size, out)
    print(f"{path}: sha256 {hashlib.sha256(path.read_bytes()).hexdigest()}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("step", choices=["all", "corpus", "tokenizer"])
    parser.add_argument("--vocab-size", type=int, default=8192)
    parser.add_argument("--tokenizer-out", type=Path, default=TOKENIZER_DIR)
    args = parser.parse_args(argv)
    if args.step in ("all", "corpus"):
        build_corpus()
    if args.step in ("all", "tokenizer"):
        build_tokenizer(args.vocab_size, args.tokenizer_out)


if __name__ == "__main__":
    main()
