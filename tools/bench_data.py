#!/usr/bin/env python
"""Measure data-pipeline throughput: shard preparation (MB/s of text) and loader tokens/s.

    python tools/bench_data.py --json runs/bench_data.json
    python tools/bench_data.py --train my.jsonl --seq-len 2048 --batches 200

Defaults use the embedded corpus (data/corpus/train.jsonl.gz). Preparation is timed with 1 and
2 encoding processes (into a temporary directory); the loader with 0 and 2 worker processes.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tapa_scale.data import DataConfig, build_loader  # noqa: E402
from tapa_scale.data.corpus import corpus_file, read_jsonl_gz  # noqa: E402
from tapa_scale.data.prepare import prepare_dataset  # noqa: E402


def text_megabytes(paths: list[str]) -> float:
    """UTF-8 size of the documents (not of the compressed files), in MB."""
    total = 0
    for path in paths:
        if path.endswith(".jsonl.gz"):
            total += sum(len(d["text"].encode()) for d in read_jsonl_gz(Path(path)))
        else:
            total += Path(path).stat().st_size
    return total / 1e6


def bench_prepare(train: list[str], val: list[str], workers: int, out: Path) -> dict:
    start = time.perf_counter()
    manifest = prepare_dataset(train, out, val=val, workers=workers, progress=False)
    seconds = time.perf_counter() - start
    megabytes = text_megabytes(train + val)
    tokens = sum(s["tokens"] for s in manifest["splits"].values())
    return {"workers": workers, "seconds": round(seconds, 3), "text_MB": round(megabytes, 2),
            "MB_per_s": round(megabytes / seconds, 3), "tokens": tokens}


def bench_loader(root: Path, workers: int, seq_len: int, micro: int, batches: int) -> dict:
    cfg = DataConfig(path=str(root), seq_len=seq_len, num_workers=workers)
    loader = build_loader(cfg, "train", micro)
    it = iter(loader)
    next(it)  # start-up (worker processes, first reads) is not throughput
    start = time.perf_counter()
    for _ in itertools.islice(it, batches):
        pass
    seconds = time.perf_counter() - start
    del it  # stops the workers now
    return {"num_workers": workers, "seq_len": seq_len, "micro_batch": micro, "batches": batches,
            "seconds": round(seconds, 3),
            "tokens_per_s": round(batches * micro * seq_len / seconds)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", nargs="+", default=[str(corpus_file("train"))])
    parser.add_argument("--val", nargs="*", default=[str(corpus_file("val"))])
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--micro-batch", type=int, default=8)
    parser.add_argument("--batches", type=int, default=300)
    parser.add_argument("--json", type=Path, help="write the results here as JSON")
    args = parser.parse_args(argv)
    results = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                           "python": platform.python_version()},
               "prepare": [], "loader": []}
    with tempfile.TemporaryDirectory(prefix="bench_data_") as tmp:
        for workers in (1, 2):
            out = Path(tmp) / f"prep{workers}"
            results["prepare"].append(bench_prepare(args.train, args.val, workers, out))
        for workers in (0, 2):
            results["loader"].append(bench_loader(Path(tmp) / "prep1", workers, args.seq_len,
                                                  args.micro_batch, args.batches))
    print(json.dumps(results, indent=1))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
