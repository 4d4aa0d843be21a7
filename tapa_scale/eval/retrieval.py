"""Scoring retrieval samples (synthetic.py) by teacher forcing, and the statistics reported for them.

A sample is correct when, fed prompt + answer in one forward pass, the model's greedy choice at every
answer position is the answer's token: the same verdict greedy decoding would reach on those tokens,
without sampling and in one pass (`generate_fn` decodes instead, to show that). A tie (two tokens with the same largest logit) counts as correct only
when the answer's token is the first of them, as torch.argmax picks. The answer's log-likelihood is
reported beside it.

Accuracies carry a 95% Wilson score interval (correct for small trial counts, never outside [0, 1]) under
the parallel key "<key>_ci": [low, high].
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import torch

from .synthetic import Sample

# logits_fn(input_ids (b, n)) -> logits (b, k, V) of the LAST k positions, for the k it is given
LastLogitsFn = Callable[[torch.Tensor, int], torch.Tensor]


@torch.no_grad()
def score_samples(logits_fn: LastLogitsFn, samples: Sequence[Sample], batch_size: int = 8,
                  generate_fn=None) -> list[dict]:
    """[{"correct": bool, "loglik": float}] per sample, in order. Samples of equal total length and
    answer length are batched together; the result does not depend on batch_size. With generate_fn
    (prompts (b, n), k) -> decoded tokens (b, k), "correct" is whether decoding produced the answer."""
    out: list = [None] * len(samples)
    groups: dict = {}
    for i, s in enumerate(samples):
        groups.setdefault((len(s.prompt) + len(s.answer), len(s.answer)), []).append(i)
    for (_, k), idx in groups.items():
        for start in range(0, len(idx), batch_size):
            part = idx[start:start + batch_size]
            ids = torch.tensor([samples[i].prompt + samples[i].answer for i in part], dtype=torch.long)
            # position t predicts token t+1: the answer's k tokens are predicted by the k positions before
            logits = logits_fn(ids[:, :-1], k).float()
            if logits.shape[:2] != (len(part), k):
                raise ValueError(f"logits_fn returned shape {tuple(logits.shape)}, expected ({len(part)}, {k}, V)")
            target = ids[:, -k:]
            logp = torch.log_softmax(logits, -1).gather(-1, target[..., None])[..., 0]
            if generate_fn is None:
                correct = (logits.argmax(-1) == target).all(-1)
            else:
                correct = (generate_fn(ids[:, :-k], k) == target).all(-1)
            for j, i in enumerate(part):
                out[i] = {"correct": bool(correct[j]), "loglik": float(logp[j].sum())}
    return out


def wilson_interval(correct: int, total: int, z: float = 1.959964) -> list:
    """95% Wilson score interval [low, high] of a proportion correct / total."""
    if total <= 0:
        raise ValueError("wilson_interval: no trials")
    p = correct / total
    denom = 1 + z * z / total
    centre = (p + z * z / (2 * total)) / denom
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / denom
    return [round(max(0.0, centre - half), 6), round(min(1.0, centre + half), 6)]


def accuracy(results: Sequence[dict]) -> tuple[float, list]:
    n = sum(r["correct"] for r in results)
    return n / len(results), wilson_interval(n, len(results))


def effective_length(by_length: dict, threshold: float) -> int:
    """RULER's effective length: the longest length L such that L and every shorter length scored reach
    `threshold` (0 when the shortest does not). by_length maps str(L) -> accuracy."""
    best = 0
    for length in sorted(by_length, key=int):
        if by_length[length] < threshold:
            break
        best = int(length)
    return best


def build_samples(tasks: Sequence[str], encode, lengths: Sequence[int], *, depths: Sequence[float], trials: int,
                  seed: int, texts: Sequence[str]) -> list[Sample]:
    """Every sample of a run, in a fixed order (task, length, depth, trial); bad input is refused before
    any is scored."""
    from .synthetic import DEPTH_TASKS, TASKS, haystack_tokens, make_sample, vocabulary

    bad = [t for t in tasks if t not in TASKS]
    if bad:
        raise ValueError(f"unknown task(s) {bad}: expected {', '.join(TASKS)}")
    if any(not 0.0 <= d <= 1.0 for d in depths):
        raise ValueError(f"depths {list(depths)}: each must lie in [0, 1]")
    if trials < 1:
        raise ValueError(f"trials {trials}: expected >= 1")
    words = vocabulary(texts)
    needle_tasks = [t for t in tasks if t.startswith("niah")]
    haystack = haystack_tokens(encode, texts, 4 * max(lengths)) if needle_tasks else []
    samples = []
    for task in tasks:
        for length in lengths:
            for depth in (depths if task in DEPTH_TASKS else [None]):
                samples += [make_sample(task, encode, length, seed=seed, trial=t, depth=depth,
                                        haystack=haystack, words=words) for t in range(trials)]
    return samples


def samples_sha256(samples: Sequence[Sample]) -> str:
    import hashlib

    h = hashlib.sha256()
    for s in samples:
        h.update(repr((s.task, s.length, s.depth, s.trial, s.prompt, s.answer)).encode())
    return h.hexdigest()


def summarize(samples: Sequence[Sample], results: Sequence[dict], threshold: float = 0.85) -> dict:
    """The JSON sections: "passkey": {L: {depth: acc, "<depth>_ci": [lo, hi]}}; "ruler": {task: {L: acc,
    "<L>_ci": [lo, hi]}, "effective_length": {task: L}} (depths written with %g)."""
    cells: dict = {}
    for s, r in zip(samples, results):
        cells.setdefault((s.task, s.length, s.depth), []).append(r)
    out: dict = {}
    for (task, length, depth), rs in cells.items():
        acc, ci = accuracy(rs)
        if task == "passkey":
            row = out.setdefault("passkey", {}).setdefault(str(length), {})
            row[f"{depth:g}"], row[f"{depth:g}_ci"] = acc, ci
        else:  # a needle task's cell pools its depths
            pooled = [x for (t, L, _), xs in cells.items() if t == task and L == length for x in xs]
            acc, ci = accuracy(pooled)
            row = out.setdefault("ruler", {}).setdefault(task, {})
            row[str(length)], row[f"{length}_ci"] = acc, ci
    if "ruler" in out:
        out["ruler"]["effective_length"] = {
            task: effective_length({k: v for k, v in row.items() if not k.endswith("_ci")}, threshold)
            for task, row in out["ruler"].items()}
        out["ruler"]["threshold"] = threshold
    return out
