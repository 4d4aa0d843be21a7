"""One evaluation run over several tasks: perplexity by window length, passkey, the RULER-style tasks;
one JSON and a CSV per task beside it (tools/eval_long_context.py).

JSON: "ppl", "nll", "tokens", "stride" (perplexity, per window length); "passkey": {L: {depth: acc,
"<depth>_ci": [lo, hi]}}; "ruler": {task: {L: acc, "<L>_ci": [lo, hi]}, "effective_length": {task: L},
"threshold": t}; "meta": {model, encoding, train_length, seed, samples_sha256, trials, seconds: {task: s}}.
Tasks not asked for are absent keys.
"""
from __future__ import annotations

import csv
import time
from pathlib import Path
from typing import Optional, Sequence

from .retrieval import LastLogitsFn, build_samples, samples_sha256, score_samples, summarize
from .synthetic import RULER_TASKS, TASKS

TASK_GROUPS = {"ppl": ["ppl"], "passkey": ["passkey"], "ruler": list(RULER_TASKS)}


def expand_tasks(spec: str) -> list[str]:
    """'ppl,passkey,ruler' (groups) or individual task names -> task names, in order, no repeats."""
    out: list = []
    for name in [t for t in spec.split(",") if t]:
        if name not in TASK_GROUPS and name not in TASKS:
            raise ValueError(f"--tasks: unknown task {name!r} (expected ppl, passkey, ruler or one of "
                             f"{', '.join(RULER_TASKS)})")
        out += [t for t in TASK_GROUPS.get(name, [name]) if t not in out]
    if not out:
        raise ValueError("--tasks: no task given")
    return out


def run_suite(*, tasks: Sequence[str], lengths: Sequence[int], loss_fn=None, logits_fn: Optional[LastLogitsFn] = None,
              encode=None, texts: Sequence[str] = (), ppl_texts=None, depths: Sequence[float] = (0.0, 0.5, 1.0),
              trials: int = 20, seed: int = 0, stride: Optional[int] = None, batch_size: int = 8,
              threshold: float = 0.85) -> dict:
    """Every requested task's section and the meta timings; retrieval samples are built (and bad input
    refused) before anything is scored."""
    from .long_context import evaluate_lengths

    retrieval = [t for t in tasks if t != "ppl"]
    samples = build_samples(retrieval, encode, lengths, depths=depths, trials=trials, seed=seed,
                            texts=texts) if retrieval else []
    result: dict = {}
    seconds: dict = {}
    if "ppl" in tasks:
        start = time.perf_counter()
        result.update(evaluate_lengths(loss_fn, ppl_texts, lengths, stride, batch_size))
        seconds["ppl"] = round(time.perf_counter() - start, 2)
    if samples:
        start = time.perf_counter()
        scores = score_samples(logits_fn, samples, batch_size)
        result.update(summarize(samples, scores, threshold))
        seconds["retrieval"] = round(time.perf_counter() - start, 2)
    result["meta"] = {"seed": seed, "trials": trials, "tasks": list(tasks), "lengths": list(lengths),
                      "depths": list(depths), "samples": len(samples),
                      "samples_sha256": samples_sha256(samples) if samples else None, "seconds": seconds}
    return result


def write_csvs(result: dict, json_path: Path) -> list[Path]:
    """<stem>.ppl.csv, <stem>.passkey.csv, <stem>.ruler.csv beside the JSON, for the sections present."""
    written = []

    def write(name, header, rows):
        path = json_path.with_name(f"{json_path.stem}.{name}.csv")
        with path.open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(header)
            w.writerows(rows)
        written.append(path)

    if "ppl" in result:
        write("ppl", ["length", "ppl", "nll", "tokens", "stride"],
              [[L, result["ppl"][L], result["nll"][L], result["tokens"][L], result["stride"][L]] for L in result["ppl"]])
    if "passkey" in result:
        write("passkey", ["length", "depth", "accuracy", "ci_low", "ci_high"],
              [[L, d, acc, *row[f"{d}_ci"]] for L, row in result["passkey"].items()
               for d, acc in row.items() if not d.endswith("_ci")])
    if "ruler" in result:
        r = result["ruler"]
        write("ruler", ["task", "length", "accuracy", "ci_low", "ci_high", "effective_length"],
              [[t, L, acc, *row[f"{L}_ci"], r["effective_length"][t]] for t, row in r.items()
               if t in RULER_TASKS for L, acc in row.items() if not L.endswith("_ci")])
    return written
