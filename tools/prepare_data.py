#!/usr/bin/env python
"""Tokenize text into MDS shards for training (see docs/data.md for the format).

    python tools/prepare_data.py --train corpus/train/ --val corpus/val.jsonl --out data_out
    python tools/prepare_data.py --train docs.parquet --field content --out data_out --workers 4
    python tools/prepare_data.py --train corpus/ --out s3://bucket/datasets/web --stage /scratch/web

Inputs: .txt (one document per file), .jsonl (one document per line, in --field), .parquet
(a string column --field), each optionally .gz; directories are searched recursively.
Without --val, every round(1/--val-fraction)-th training document is held out for validation.
Writes OUT/train, OUT/val (MDS shards + index.json) and OUT/manifest.json; rerunning on unchanged
inputs does nothing. With a URI for --out (s3://, gs://, ...) the dataset is prepared in --stage
(default .cache/data/upload/<hash of the URI>) and uploaded, manifest.json last; credentials and
S3_ENDPOINT_URL come from the environment, as for training.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tapa_scale.data.errors import DataError  # noqa: E402
from tapa_scale.data.prepare import (DEFAULT_CHUNK_TOKENS, DEFAULT_SHARD_BYTES,  # noqa: E402
                                     entropy_summary, prepare_dataset)
from tapa_scale.data.remote import Fetch, is_remote, location_problem, upload_dataset  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", nargs="+", required=True, help="training input files/dirs")
    parser.add_argument("--val", nargs="*", default=[], help="validation input files/dirs")
    parser.add_argument("--out", required=True, help="output directory or URI (s3://bucket/prefix)")
    parser.add_argument("--stage", default="", help="local directory to prepare a URI --out in")
    parser.add_argument("--tokenizer", default="", help="tokenizer dir ('' = data/tokenizer)")
    parser.add_argument("--field", default="text", help="JSON field / parquet column of the text")
    parser.add_argument("--workers", type=int, default=1, help="encoding processes")
    parser.add_argument("--val-fraction", type=float, default=0.01)
    parser.add_argument("--max-chunk-tokens", type=int, default=DEFAULT_CHUNK_TOKENS,
                        help="longest MDS sample; longer documents are stored as several")
    parser.add_argument("--shard-bytes", type=int, default=DEFAULT_SHARD_BYTES,
                        help="MDS shard size limit (the unit a remote source is fetched in)")
    args = parser.parse_args(argv)
    remote = is_remote(args.out)
    try:
        problem = location_problem("--out", args.out)
        if problem:
            raise DataError(problem)
        out = args.out
        if remote:
            digest = hashlib.sha256(args.out.encode()).hexdigest()[:12]
            out = args.stage or str(Path(".cache/data/upload") / digest)
        manifest = prepare_dataset(args.train, out, val=args.val, tokenizer=args.tokenizer,
                                   field=args.field, workers=args.workers,
                                   val_fraction=args.val_fraction,
                                   max_chunk_tokens=args.max_chunk_tokens,
                                   shard_bytes=args.shard_bytes)
        if remote:
            upload_dataset(Path(out), args.out, Fetch())
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    summary = {split: {k: v for k, v in info.items() if k != "samples_sha256"}
               for split, info in manifest["splits"].items()}
    print(json.dumps(summary, indent=1))
    print(entropy_summary(manifest))
    return 0


if __name__ == "__main__":
    sys.exit(main())
