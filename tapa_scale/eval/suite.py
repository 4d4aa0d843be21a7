"""One evaluation run over several tasks: perplexity by window length, passkey, the RULER-style tasks,
loss by position; the sections of one model's JSON (run.py writes them, with a CSV per task).

JSON: "ppl", "nll", "tokens", "stride" (perplexity, per window length); "passkey": {L: {depth: acc,
"<depth>_ci": [lo, hi]}}; "ruler": {task: {L: acc, "<L>_ci": [lo, hi]}, "effective_length": {task: L},
"threshold": t}; "position_loss": {L: [mean loss per bucket]} with "position_buckets" and
"prefix_loss": {k: loss}; "meta": {model, encoding, train_length, seed, samples_sha256, trials, device,
ranks, tokens: {task: n}, seconds: {task: s}}. Tasks not asked for are absent keys.

Under torchrun every rank scores a share of the windows and samples (sharding.py) and ends with the
whole result; rank 0 writes it.
"""
from __future__ import annotations

import time
from typing import Optional, Sequence

from .retrieval import LastLogitsFn, build_samples, samples_sha256, score_samples, summarize
from .sharding import map_shared, world
from .synthetic import RULER_TASKS, TASKS

TASK_GROUPS = {"ppl": ["ppl"], "passkey": ["passkey"], "ruler": list(RULER_TASKS), "position": ["position"]}
TEXT_TASKS = ("ppl", "position")  # scored on tokenised documents; the others on generated samples


def expand_tasks(spec: str) -> list[str]:
    """'ppl,passkey,ruler' (groups) or individual task names -> task names, in order, no repeats."""
    out: list = []
    for name in [t for t in spec.split(",") if t]:
        if name not in TASK_GROUPS and name not in TASKS:
            raise ValueError(f"--tasks: unknown task {name!r} (expected ppl, passkey, ruler, position or one of "
                             f"{', '.join(RULER_TASKS)})")
        out += [t for t in TASK_GROUPS.get(name, [name]) if t not in out]
    if not out:
        raise ValueError("--tasks: no task given")
    return out


def run_suite(*, tasks: Sequence[str], lengths: Sequence[int], loss_fn=None, logits_fn: Optional[LastLogitsFn] = None,
              encode=None, texts: Sequence[str] = (), ppl_texts=None, depths: Sequence[float] = (0.0, 0.5, 1.0),
              trials: int = 20, seed: int = 0, stride: Optional[int] = None, batch_size: int = 8,
              threshold: float = 0.85, position_windows: int = 16, generate_fn=None) -> dict:
    """Every requested task's section and the meta timings; retrieval samples are built (and bad input
    refused) before anything is scored. ppl_texts: tokenised documents for ppl and position."""
    from .long_context import evaluate_lengths

    retrieval = [t for t in tasks if t not in TEXT_TASKS]
    samples = build_samples(retrieval, encode, lengths, depths=depths, trials=trials, seed=seed,
                            texts=texts) if retrieval else []
    if "position" in tasks:
        passage, other, prefixes = _prefix_texts(ppl_texts, lengths)
    result: dict = {}
    seconds: dict = {}
    tokens: dict = {}
    if "ppl" in tasks:
        start = time.perf_counter()
        result.update(evaluate_lengths(loss_fn, ppl_texts, lengths, stride, batch_size))
        seconds["ppl"] = round(time.perf_counter() - start, 2)
        tokens["ppl"] = sum(result["tokens"].values())
    if "position" in tasks:
        from .position import position_loss, prefix_loss

        start = time.perf_counter()
        result.update(position_loss(loss_fn, ppl_texts, lengths, position_windows, batch_size=batch_size))
        result.update(prefix_loss(loss_fn, passage, other, prefixes))
        seconds["position"] = round(time.perf_counter() - start, 2)
        tokens["position"] = sum(int(L) * n for L, n in result["position_windows"].items()) + sum(
            k + len(passage) for k in prefixes)
    scores: list = []
    for task in retrieval:
        start = time.perf_counter()
        mine = [s for s in samples if s.task == task]
        scores += map_shared(lambda part: score_samples(logits_fn, part, batch_size, generate_fn), mine)
        seconds[task] = round(time.perf_counter() - start, 2)
        tokens[task] = sum(len(s.prompt) + len(s.answer) for s in mine)
    if samples:
        result.update(summarize(samples, scores, threshold))
    result["meta"] = {"seed": seed, "trials": trials, "tasks": list(tasks), "lengths": list(lengths),
                      "depths": list(depths), "samples": len(samples), "ranks": world()[1],
                      "samples_sha256": samples_sha256(samples) if samples else None, "tokens": tokens,
                      "seconds": seconds}
    return result


def _prefix_texts(texts, lengths: Sequence[int]):
    """The passage (from the middle of the first text), the other text its prefixes come from (the
    second), and the prefix lengths: 0 and L - P for each length L."""
    if not texts or len(texts) < 2:
        raise ValueError("position: needs at least two tokenised documents (the passage and its prefixes)")
    P = max(2, min(256, min(lengths) // 2))
    first = texts[0]
    if len(first) < P:
        raise ValueError(f"position: the first document has {len(first)} tokens, fewer than the passage's {P}")
    mid = (len(first) - P) // 2
    return first[mid:mid + P], texts[1], sorted({0, *(max(0, L - P) for L in lengths)})
