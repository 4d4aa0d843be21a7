#!/usr/bin/env python
"""Measure what checkpoints cost: synchronous save, asynchronous save (what blocks training: the save
call, and the later poll that publishes it; and the time until it is published), load, and size on disk,
for one or more training configs.

    python tools/bench_checkpoint.py --json runs/bench_checkpoint.json
    python tools/bench_checkpoint.py --configs configs/125m.yaml --repeats 3 data.seq_len=256

Each config is built as a training run in this process (one rank, the machine's device) and takes one
optimizer step so that the AdamW moments exist; then every save goes through the training loop's own
`Saver` into a temporary run directory (deleted at the end) and every load through `resume.resume`.
The sequence length and micro-batch are overridden to small values by default (`data.seq_len=128
train.micro_batch_size=1`): they do not change what is saved, only how long the one step takes.
Times are medians over --repeats, after one untimed warm-up save; MB/s is the checkpoint's size on disk over the time.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from tapa_scale.config import ConfigError, load_config  # noqa: E402
from tapa_scale.parallel import destroy_groups, init_groups  # noqa: E402
from tapa_scale.train import resume  # noqa: E402
from tapa_scale.train.checkpoint import latest_checkpoint, remove_partials  # noqa: E402
from tapa_scale.train.saver import Saver  # noqa: E402
from tapa_scale.train.setup import build_run  # noqa: E402
from tapa_scale.train.step import train_step  # noqa: E402

SMALL_STEP = ["data.seq_len=128", "train.micro_batch_size=1", "train.global_batch_size=0"]


def disk_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def poll_until_published(saver) -> float:
    """Poll as the training loop does after every step; returns how long the poll that published took
    (megatron's finalization, rank 0 hashing the files into the manifest, the rename): training time."""
    while True:
        start = time.perf_counter()
        saver.poll()
        spent = time.perf_counter() - start
        if not saver.queue.get_num_unfinalized_calls():
            return spent
        time.sleep(0.01)


def bench_config(path: str, overrides: list[str], repeats: int, root: Path) -> dict:
    run_dir = root / Path(path).stem
    cfg = load_config(path, [*SMALL_STEP, *overrides, f"run.dir={run_dir}", "train.keep_checkpoints=1",
                             "run.tensorboard=false", "run.progress=false"])
    groups = init_groups(cfg.parallel, cfg.train.device)
    try:
        run = build_run(cfg, groups)
        batches = iter(run.train_loader)
        train_step(run, batches)  # creates the AdamW moments that a checkpoint holds
        params = sum(p.numel() for p in run.model.parameters())
        state = {"step": 1, "tokens": run.global_batch * cfg.data.seq_len, "skipped_steps": 0}
        Saver(run, cfg).save(state)  # warm-up: the first save also starts the writers' Manager process
        sync, blocking, publish_poll, published, load = [], [], [], [], []
        for i in range(repeats):
            state["step"] = 2 * i + 2
            cfg.train.async_save = False
            t0 = time.perf_counter()
            Saver(run, cfg).save(state)
            sync.append(time.perf_counter() - t0)
            state["step"] = 2 * i + 3
            cfg.train.async_save = True
            saver = Saver(run, cfg)
            t0 = time.perf_counter()
            saver.save(state)
            blocking.append(saver.blocking_s)
            publish_poll.append(poll_until_published(saver))
            published.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            loaded, chosen, _ = resume.resume(run, cfg, report=lambda line: None)
            load.append(time.perf_counter() - t0)
            assert loaded["step"] == state["step"], (loaded, state)
        size = disk_bytes(latest_checkpoint(run_dir))
        remove_partials(run_dir)
    finally:
        destroy_groups()
    med = statistics.median
    mb = size / 1e6
    return {"config": path, "overrides": [*SMALL_STEP, *overrides], "parameters": params, "size_mb": round(mb, 2),
            "sync_save_s": round(med(sync), 3), "sync_save_mb_per_s": round(mb / med(sync), 1),
            "async_blocking_s": round(med(blocking), 3), "async_publish_poll_s": round(med(publish_poll), 3),
            "async_published_s": round(med(published), 3),
            "async_training_blocked_s": round(med(blocking) + med(publish_poll), 3),
            "async_training_blocked_fraction_of_sync": round((med(blocking) + med(publish_poll)) / med(sync), 4),
            "load_s": round(med(load), 3), "load_mb_per_s": round(mb / med(load), 1),
            "repeats": repeats, "runs": {"sync_save_s": sync, "async_blocking_s": blocking,
                                          "async_publish_poll_s": publish_poll, "async_published_s": published,
                                          "load_s": load}}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--configs", default="configs/tiny.yaml,configs/125m.yaml", help="comma-separated config files")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", help="write the results here as well as to stdout")
    ap.add_argument("--dir", help="scratch directory for the checkpoints (default: a temporary one)")
    ap.add_argument("overrides", nargs="*", help="key=value applied to every config")
    args = ap.parse_args(argv)
    if args.repeats < 1:
        ap.error(f"--repeats={args.repeats}: must be >= 1")
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-ckpt-", dir=args.dir) as root:
        for path in args.configs.split(","):
            try:
                results.append(bench_config(path, args.overrides, args.repeats, Path(root)))
            except ConfigError as e:
                print(f"error: {e}", file=sys.stderr)
                return 2
            print(json.dumps(results[-1]), flush=True)
    report = {"machine": {"platform": platform.platform(), "cpus": torch.get_num_threads(),
                          "device": "cuda" if torch.cuda.is_available() else "cpu", "torch": torch.__version__},
              "results": results}
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
