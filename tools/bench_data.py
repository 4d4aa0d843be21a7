#!/usr/bin/env python
"""Measure data-pipeline throughput against what training consumes.

    python tools/bench_data.py --json runs/bench_data.json
    python tools/bench_data.py --train my.jsonl --seq-len 8192 --batches 50 --no-s3

Defaults use the embedded corpus (data/corpus/train.jsonl.gz). Timed: shard preparation with 1 and 2
encoding processes; the loader from local disk and, unless --no-s3, from an S3-compatible server on
127.0.0.1 (moto, a test dependency) with a cold cache (every shard downloaded while the batches are
read) and a warm one, each with 0 and 2 worker processes. The need: tokens/s one H100 trains at, for
the 125m and 1b models at --need-seq-len, from a published MFU figure; each loader row reports its
multiple of the larger need (the loader runs once per GPU, so per-GPU need is the bar).
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

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tapa_scale.data import DataConfig, build_loader  # noqa: E402
from tapa_scale.data.config import SourceConfig  # noqa: E402
from tapa_scale.data.corpus import corpus_file, read_jsonl_gz  # noqa: E402
from tapa_scale.data.prepare import prepare_dataset  # noqa: E402
from tapa_scale.model.config import ModelConfig  # noqa: E402
from tapa_scale.scaling import model_flops  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
H100_BF16_DENSE = 989e12  # FLOP/s, H100 SXM dense bf16 (NVIDIA datasheet)
# llm-foundry's benchmark table (scripts/train/benchmarking/README.md, H100 80GB BF16): its 1B model
# at 8192 tokens on 8 GPUs, 37.73% MFU. The same figure is used for 125m (small models reach less,
# so this overstates its need).
PUBLISHED_MFU = 0.3773


def text_megabytes(paths: list[str]) -> float:
    """UTF-8 size of the documents (not of the compressed files), in MB."""
    total = 0
    for path in paths:
        if path.endswith(".jsonl.gz"):
            total += sum(len(d["text"].encode()) for d in read_jsonl_gz(Path(path)))
        else:
            total += Path(path).stat().st_size
    return total / 1e6


def training_need(model: str, seq_len: int, vocab: int) -> dict:
    """Tokens/s one H100 consumes training ``configs/model/<model>.yaml`` at PUBLISHED_MFU. The FLOPs
    per token are counted non-causal (scaling/flops.py), the convention of the published figure:
    llm-foundry's 6 x parameters + 12 x layers x hidden x length, the same up to the norm weights."""
    m = ModelConfig(**yaml.safe_load((ROOT / "configs" / "model" / f"{model}.yaml").read_text())["model"])
    flops = model_flops(m, seq_len, vocab, causal=False).train
    return {"model": model, "seq_len": seq_len, "vocab": vocab, "flops_per_token": flops,
            "mfu": PUBLISHED_MFU, "tokens_per_s": round(PUBLISHED_MFU * H100_BF16_DENSE / flops)}


def bench_prepare(train: list[str], val: list[str], workers: int, out: Path, shard_bytes: int) -> dict:
    start = time.perf_counter()
    manifest = prepare_dataset(train, out, val=val, workers=workers, shard_bytes=shard_bytes,
                               progress=False)
    seconds = time.perf_counter() - start
    megabytes = text_megabytes(train + val)
    tokens = sum(s["tokens"] for s in manifest["splits"].values())
    return {"workers": workers, "seconds": round(seconds, 3), "text_MB": round(megabytes, 2),
            "MB_per_s": round(megabytes / seconds, 3), "tokens": tokens}


def bench_loader(cfg: DataConfig, micro: int, batches: int, label: str) -> dict:
    start = time.perf_counter()
    it = iter(build_loader(cfg, "train", micro))
    next(it)  # start-up (manifest, index, worker processes, first reads) is reported separately
    first = time.perf_counter() - start
    start = time.perf_counter()
    n = sum(1 for _ in itertools.islice(it, batches))
    seconds = time.perf_counter() - start
    del it  # stops the workers now
    return {"source": label, "num_workers": cfg.num_workers, "seq_len": cfg.seq_len,
            "micro_batch": micro, "batches": n, "first_batch_s": round(first, 3),
            "seconds": round(seconds, 3), "tokens_per_s": round(n * micro * cfg.seq_len / seconds)}


def bench_s3(root: Path, tmp: Path, args) -> list[dict]:
    """Upload ``root`` to a moto server on 127.0.0.1 and read it back: cold cache, then warm."""
    import boto3

    from tapa_scale.data.local_s3 import environment, moto_server, s3_env
    from tapa_scale.data.remote import Fetch, upload_dataset

    rows = []
    with moto_server() as url, environment(s3_env(url)):
        boto3.client("s3", endpoint_url=url).create_bucket(Bucket="bench")
        upload_dataset(root, "s3://bench/data", Fetch(attempts=1))
        for workers in (0, 2):
            cache = tmp / f"cache{workers}"
            cfg = DataConfig(sources=[SourceConfig(path="s3://bench/data", cache_dir=str(cache))],
                             seq_len=args.seq_len, num_workers=workers, prefetch=args.prefetch)
            for label in ("s3 cold cache", "s3 warm cache"):
                rows.append(bench_loader(cfg, args.micro_batch, args.batches, label))
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", nargs="+", default=[str(corpus_file("train"))])
    parser.add_argument("--val", nargs="*", default=[str(corpus_file("val"))])
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--micro-batch", type=int, default=8)
    parser.add_argument("--batches", type=int, default=300)
    parser.add_argument("--shard-bytes", type=int, default=1 << 20,
                        help="shard size of the benchmark's dataset (small, so that reading from S3 "
                             "fetches many shards; prepare_data.py defaults to 64 MiB)")
    parser.add_argument("--prefetch", type=int, default=2)
    parser.add_argument("--no-s3", action="store_true", help="skip the S3 measurements")
    parser.add_argument("--need-seq-len", type=int, default=8192)
    parser.add_argument("--vocab", type=int, default=32768,
                        help="vocabulary of the models whose need is computed")
    parser.add_argument("--json", type=Path, help="write the results here as JSON")
    args = parser.parse_args(argv)
    need = [training_need(m, args.need_seq_len, args.vocab) for m in ("125m", "1b")]
    results = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                           "python": platform.python_version(),
                           "load_average": [round(x, 2) for x in os.getloadavg()]},
               "need_per_h100": need, "prepare": [], "loader": []}
    with tempfile.TemporaryDirectory(prefix="bench_data_") as tmp:
        tmp = Path(tmp)
        for workers in (1, 2):
            results["prepare"].append(bench_prepare(args.train, args.val, workers,
                                                    tmp / f"prep{workers}", args.shard_bytes))
        for workers in (0, 2):
            cfg = DataConfig(path=str(tmp / "prep1"), seq_len=args.seq_len, num_workers=workers)
            results["loader"].append(bench_loader(cfg, args.micro_batch, args.batches, "local disk"))
        if not args.no_s3:
            results["loader"] += bench_s3(tmp / "prep1", tmp, args)
    bar = max(n["tokens_per_s"] for n in need)
    for row in results["loader"]:
        row["x_need"] = round(row["tokens_per_s"] / bar, 1)
    print(json.dumps(results, indent=1))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
