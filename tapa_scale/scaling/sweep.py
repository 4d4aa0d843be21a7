"""Run a list of layouts for a few steps each and set what they measured beside what the cost model
predicts for them.

A sweep file (YAML) lists runs; each is an ordinary training run (`python -m tapa_scale.train`)
started by a launcher, by default `torchrun --standalone --nproc-per-node N` (on a cluster, e.g.
`--launcher "srun --ntasks {nproc} python -m torch.distributed.run ..."`), in its own process group
with a timeout, its run directory removed afterwards unless kept:

    steps: 8                  # optimizer steps per run
    log_every: 2              # the first record (start-up, first steps) is not counted
    timeout_s: 900
    set: [train.threads=1, ...]              # overrides for every run
    runs:
      - {name: tiny_dp2, config: configs/tiny.yaml, nproc: 2, set: [parallel.distributed_optimizer=true]}

Measured: the median `step_time_s` of the records after the first, its parts, and `peak_memory_gb`
of rank 0 (metrics.jsonl is rank 0's). On CPU that peak is the resident set, which glibc's heap keeps
above the live tensors (freed blocks stay mapped and fragment from step to step); with
``memory_pass: true`` each run is repeated for 3 steps with every allocation of 128 KiB or more mapped
on its own (``MALLOC_MMAP_THRESHOLD_``), so that the resident set follows the live bytes as a GPU's
``max_memory_allocated`` does: that pass gives ``peak_memory_gb`` and the timed pass's figure stays as
``peak_rss_default_heap_gb`` (its step times are not used: page faults slow it). With
``host_probe: true`` a fixed operator mix is timed before and after each run (``host_mix_s``), and
the comparison adds ``step_error_host_adjusted``: the prediction scaled by the host's speed then over
its speed at calibration (a shared CPU host drifts; contention.py). Predicted: `plan.predict` of the run's layout on the hardware
profile; the memory of rank 0 (the first pipeline stage), which is the rank measured.
"""
from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from .layout import Layout, Shape
from .memory import memory
from .plan import predict

DEFAULT_LAUNCHER = f"{sys.executable} -m torch.distributed.run --standalone --nproc-per-node {{nproc}}"
LIVE_BYTES_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072"}  # glibc: allocations >= 128 KiB mapped one by one


@dataclass
class RunSpec:
    name: str
    config: str
    nproc: int = 1
    overrides: list = field(default_factory=list)
    counted: bool = True  # 1-2 processes with one thread each on this machine; 4 oversubscribe 2 cores


def run_overrides(run_dir, steps: int, log_every: int) -> list[str]:
    """What every sweep run sets last: its directory and length, no checkpoints or mid-run validation."""
    return [f"run.dir={run_dir}", f"train.steps={steps}", f"train.log_every={log_every}",
            "train.final_checkpoint=false", "train.checkpoint_every=0", "train.eval_every=0",
            "run.tensorboard=false", "run.progress=false"]


def command(spec: RunSpec, run_dir: Path, steps: int, log_every: int, common: list, launcher: str) -> list[str]:
    args = shlex.split(launcher.format(nproc=spec.nproc)) + ["-m", "tapa_scale.train", "--config", spec.config]
    return args + list(common) + list(spec.overrides) + run_overrides(run_dir, steps, log_every)


def measure(spec: RunSpec, out: Path, *, steps: int, log_every: int, timeout_s: float, common: list,
            launcher: str = DEFAULT_LAUNCHER, keep: bool = False, log=print, env: dict | None = None,
            memory_pass: bool = False, host_probe: bool = False) -> dict:
    """Run one layout; its measured step time and rank 0's peak memory, or why it has none.
    ``env``: extra environment of the run; ``memory_pass``: the memory from a second, live-bytes run;
    ``host_probe``: the host's speed just before and after the run (`host_mix_s`, contention.py)."""
    before = _host_mix() if host_probe else None
    result = _measure(spec, out, steps=steps, log_every=log_every, timeout_s=timeout_s, common=common,
                      launcher=launcher, keep=keep, log=log, env=env or {})
    if before is not None:
        result["host_mix_s"] = (before + _host_mix()) / 2
    if memory_pass and "error" not in result:
        live = _measure(spec, out / "live_bytes", steps=min(3, steps), log_every=1, timeout_s=timeout_s,
                        common=common, launcher=launcher, keep=keep, log=log, env={**(env or {}), **LIVE_BYTES_ENV})
        if "error" in live:
            return {**result, "error": f"memory pass: {live['error']}"}
        result.update(peak_rss_default_heap_gb=result["peak_memory_gb"], peak_memory_gb=live["peak_memory_gb"])
    return result


def _host_mix() -> float:
    import torch

    from .contention import mix_seconds
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return mix_seconds()
    finally:
        torch.set_num_threads(threads)


def _measure(spec: RunSpec, out: Path, *, steps: int, log_every: int, timeout_s: float, common: list,
             launcher: str, keep: bool, log, env: dict) -> dict:
    run_dir = out / spec.name
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    cmd = command(spec, run_dir, steps, log_every, common, launcher)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **env}
    start = time.perf_counter()
    with open(run_dir / "output.log", "w") as sink:
        proc = subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            rc = "timeout"
    wall = time.perf_counter() - start
    result = {"name": spec.name, "nproc": spec.nproc, "counted": spec.counted, "wall_s": round(wall, 1)}
    records = _records(run_dir / "metrics.jsonl")
    steady = records[1:]
    if rc != 0 or not steady:
        tail = (run_dir / "output.log").read_text()[-600:] if (run_dir / "output.log").exists() else ""
        log(f"{spec.name}: no measurement (exit {rc}); last output:\n{tail}")
        result["error"] = f"exit {rc}"
    else:
        times = [r["step_time_s"] for r in steady]
        parts = {k.removeprefix("time_").removesuffix("_s"): statistics.median(r[k] for r in steady)
                 for k in steady[0] if k.startswith("time_")}
        accounting = json.loads((run_dir / "accounting.json").read_text())
        result.update(step_time_s=statistics.median(times), step_time_spread=[min(times), max(times)],
                      peak_memory_gb=max(r["peak_memory_gb"] for r in records), parts=parts,
                      vocab_size=accounting.get("vocab_size"))
        log(f"{spec.name}: {result['step_time_s']:.3f} s/step, {result['peak_memory_gb']:.3f} GB (rank 0), {wall:.0f} s")
    if not keep:
        for item in run_dir.iterdir():
            if item.name not in ("metrics.jsonl", "output.log", "accounting.json", "config.yaml"):
                shutil.rmtree(item, ignore_errors=True) if item.is_dir() else item.unlink()
    return result


def _records(path: Path) -> list[dict]:
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if "step_time_s" in r]


def compare(measured: dict, shape: Shape, lay: Layout, hw) -> dict:
    """The prediction for a measured run and the relative errors (predicted / measured - 1)."""
    pred = predict(shape, lay, hw)
    rank0 = memory(shape, lay, hw, stage=0)
    if hw.device == "cuda":  # max_memory_allocated counts tensors, not the CUDA context and communicators
        rank0.runtime = 0.0
    row = {**measured, "layout": lay.describe(), "predicted_step_time_s": pred.time.total,
           "predicted_parts": pred.time.parts, "predicted_memory_gb": rank0.total / 1e9,
           "predicted_memory": rank0.to_json()}
    if "step_time_s" in measured:
        row["step_error"] = pred.time.total / measured["step_time_s"] - 1
        if measured.get("host_mix_s") and hw.host_mix_s > 0:  # the host's speed then over at calibration
            row["host_slowdown"] = measured["host_mix_s"] / hw.host_mix_s
            row["step_error_host_adjusted"] = pred.time.total * row["host_slowdown"] / measured["step_time_s"] - 1
        row["memory_error"] = rank0.total / 1e9 / measured["peak_memory_gb"] - 1
    return row


def summary(rows: list[dict]) -> dict:
    """Median absolute errors over the counted runs and whether the model orders them as measured."""
    done = [r for r in rows if r.get("counted") and "step_error" in r]
    if not done:
        return {"counted": 0}
    by_measured = [r["name"] for r in sorted(done, key=lambda r: r["step_time_s"])]
    by_predicted = [r["name"] for r in sorted(done, key=lambda r: r["predicted_step_time_s"])]
    return {"counted": len(done),
            "median_abs_step_error": statistics.median(abs(r["step_error"]) for r in done),
            "median_abs_memory_error": statistics.median(abs(r["memory_error"]) for r in done),
            **({"median_abs_step_error_host_adjusted": statistics.median(abs(r["step_error_host_adjusted"])
                                                                         for r in done)}
               if all("step_error_host_adjusted" in r for r in done) else {}),
            "kendall_tau": _kendall([by_measured.index(n) for n in by_predicted]),
            "ranking_matches": by_measured == by_predicted,
            "by_measured_time": by_measured, "by_predicted_time": by_predicted}


def _kendall(order: list[int]) -> float:
    """Kendall's tau between a permutation and the identity."""
    n = len(order)
    if n < 2:
        return 1.0
    pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
    concordant = sum(1 if order[i] < order[j] else -1 for i, j in pairs)
    return concordant / len(pairs)


def figures(rows: list[dict], out: Path) -> list[Path]:
    """Predicted against measured (step time, memory) and tokens/s per process count."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [r for r in rows if "step_time_s" in r]
    paths = []
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    for ax, (meas, pred, unit) in zip(axes, (("step_time_s", "predicted_step_time_s", "step time (s)"),
                                             ("peak_memory_gb", "predicted_memory_gb", "peak memory, rank 0 (GB)"))):
        for r in done:
            ax.scatter(r[meas], r[pred], marker="o" if r["counted"] else "x", color="C0" if r["counted"] else "C3")
            ax.annotate(r["name"], (r[meas], r[pred]), fontsize=6, xytext=(3, 3), textcoords="offset points")
        lo = min([r[meas] for r in done] + [r[pred] for r in done] or [0.01])
        hi = max([r[meas] for r in done] + [r[pred] for r in done] or [1])
        ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
        ax.set_xscale("log"), ax.set_yscale("log")
        ax.set_xlabel(f"measured {unit}"), ax.set_ylabel(f"predicted {unit}")
    axes[0].set_title("o counted, x oversubscribed (not counted)", fontsize=8)
    fig.tight_layout()
    paths.append(out / "predicted_vs_measured.png")
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)

    # strong scaling: a model, length and global batch on more processes; weak: the batch per process
    # fixed. A line joins the fastest layout at each process count; every layout is a point.
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    for ax, (title, per) in zip(axes, (("strong scaling (global batch fixed)", 1), ("weak scaling (batch per process fixed)", 0))):
        groups = {}
        for r in done:
            if r.get("tokens_per_step"):
                size = r["tokens_per_step"] if per else r["tokens_per_step"] / r["nproc"]
                groups.setdefault((r["config"], r.get("seq_len"), size), []).append(r)
        shown = [(k, g) for k, g in sorted(groups.items(), key=str) if len({r["nproc"] for r in g}) > 1]
        for i, ((config, seq_len, _), members) in enumerate(shown):
            counts = sorted({r["nproc"] for r in members})
            for key, style, what in (("step_time_s", "o-", "measured"), ("predicted_step_time_s", "x--", "predicted")):
                rate = lambda r: r["tokens_per_step"] / r[key]  # noqa: E731
                ax.scatter([r["nproc"] for r in members], [rate(r) for r in members], marker=style[0],
                           color=f"C{i % 10}", alpha=0.35, s=14)
                ax.plot(counts, [max(rate(r) for r in members if r["nproc"] == n) for n in counts], style,
                        color=f"C{i % 10}", label=f"{Path(config).stem} @ {seq_len}, {what} (fastest layout)")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("processes"), ax.set_ylabel("tokens/s")
        if shown:
            ax.set_yscale("log")
            ax.legend(fontsize=6)
        else:
            ax.text(0.5, 0.5, "no runs of this kind in the sweep", ha="center", va="center", transform=ax.transAxes)
    fig.tight_layout()
    paths.append(out / "scaling.png")
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)
    return paths
