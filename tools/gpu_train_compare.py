#!/usr/bin/env python
"""Train a few steps of one model per encoding, side by side, and report tokens/s, MFU, peak memory
and the step-time breakdown from each run's metrics.jsonl (the first steps, compilation and warm-up,
are left out of the means).

    python tools/gpu_train_compare.py --seq-len 8192 --json train_8k.json            # 125m, TAPA vs RoPE
    python tools/gpu_train_compare.py --config configs/tiny.yaml --seq-len 128 --steps 4 key=value ...

On a GPU TAPA runs the fused kernel (attention_impl auto) and RoPE runs SDPA, each in bf16.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from statistics import mean

ROOT = Path(__file__).resolve().parents[1]
KEYS = ("tokens_per_s_per_device", "model_tflops_per_s", "mfu", "mfu_noncausal", "step_time_s",
        "time_data_s", "time_forward_backward_s", "time_grad_sync_s", "time_optimizer_s", "time_other_s")


def train(encoding: str, args, run_dir: Path) -> dict:
    cmd = [sys.executable, "-m", "tapa_scale.train", "--config", args.config, f"run.dir={run_dir}",
           f"model.pos_encoding={encoding}", f"data.seq_len={args.seq_len}", f"train.steps={args.steps}",
           "train.micro_batch_size=1", "train.global_batch_size=1", "train.warmup_steps=1", "train.log_every=1",
           "train.eval_every=0", "train.checkpoint_every=0", "train.final_checkpoint=false",
           "run.tensorboard=false", "run.progress=false", *args.overrides]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=args.timeout)
    if proc.returncode:
        return {"encoding": encoding, "error": (proc.stderr or proc.stdout)[-2000:]}
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    timed = records[args.skip:] or records[-1:]
    out = {"encoding": encoding, "seq_len": args.seq_len, "steps_averaged": len(timed),
           "attention_impl": timed[-1]["attention_impl"],
           "peak_memory_gb": max(r["peak_memory_gb"] for r in records)}
    out.update({k: mean(r[k] for r in timed) for k in KEYS if all(k in r for r in timed)})
    out["accounting"] = json.loads((run_dir / "accounting.json").read_text())
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/125m.yaml")
    parser.add_argument("--encodings", default="tapa,rope")
    parser.add_argument("--seq-len", type=int, default=8192)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--skip", type=int, default=2, help="first steps left out of the means")
    parser.add_argument("--timeout", type=float, default=600, help="seconds per encoding")
    parser.add_argument("--json", type=Path)
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_intermixed_args(argv)
    results = []
    with tempfile.TemporaryDirectory(prefix="train_compare_") as tmp:
        for enc in args.encodings.split(","):
            row = train(enc, args, Path(tmp) / enc)
            results.append(row)
            if "error" in row:
                print(f"train {enc} L={args.seq_len}: failed\n{row['error']}", flush=True)
                continue
            print(f"train {enc} L={args.seq_len} ({row['attention_impl']}): "
                  f"{row['tokens_per_s_per_device']:,.0f} tok/s/device, MFU {100 * row.get('mfu', float('nan')):.1f}% "
                  f"(non-causal {100 * row.get('mfu_noncausal', float('nan')):.1f}%), "
                  f"peak {row['peak_memory_gb']:.1f} GB", flush=True)
            if args.json:  # rewritten after each encoding: a run cut short keeps what it measured
                args.json.parent.mkdir(parents=True, exist_ok=True)
                args.json.write_text(json.dumps({"config": args.config, "results": results}, indent=1) + "\n")


if __name__ == "__main__":
    main()
