"""Loss by position: where in a window a model's predictions get worse.

position_loss: long held-out documents cut into non-overlapping windows of L tokens, each starting
with the document's own tokens as a training sample does (no BOS); the mean per-token loss in each
position bucket (train.metrics.position_buckets, the bucketing training logs use). A positional
encoding that breaks beyond some distance shows as loss rising in the later buckets.

prefix_loss: one fixed passage (P tokens of one document) preceded by k tokens of another, for
increasing k; the mean loss of the passage's tokens 2..P (the same tokens, predicted from inside the
passage) at each k. With a sound encoding it stays flat or falls as k grows; one that breaks far out
rises once the passage sits beyond the distances it learnt.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

from ..train.metrics import loss_by_position, position_buckets
from .perplexity import LossFn
from .sharding import map_shared


def position_windows(texts: Sequence[torch.Tensor], length: int, windows: int) -> list[tuple[int, int]]:
    """(text index, start) of `windows` non-overlapping windows of length + 1 tokens (inputs and their
    next tokens), spread evenly over every window the texts hold."""
    every = [(t, s) for t, ids in enumerate(texts) for s in range(0, len(ids) - length, length)]
    if not every:
        raise ValueError(f"position: no text holds {length + 1} tokens (longest: {max(map(len, texts))})")
    n = min(windows, len(every))
    return [every[(i * len(every)) // n] for i in range(n)]


@torch.no_grad()
def position_loss(loss_fn: LossFn, texts: Sequence[torch.Tensor], lengths: Sequence[int], windows: int = 16,
                  buckets: int = 16, batch_size: int = 8) -> dict:
    """{"position_loss": {L: [mean per bucket]}, "position_buckets": {L: [[start, end], ...]},
    "position_windows": {L: windows scored}}."""
    out: dict = {"position_loss": {}, "position_buckets": {}, "position_windows": {}}
    for length in lengths:
        spans = position_windows(texts, length, windows)
        edges = position_buckets(length, buckets)

        def score(mine):
            rows = []
            for i in range(0, len(mine), batch_size):
                part = mine[i:i + batch_size]
                x = torch.stack([texts[t][s:s + length] for t, s in part])
                y = torch.stack([texts[t][s + 1:s + length + 1] for t, s in part])
                nll = loss_fn(x, y)
                rows += [loss_by_position(nll[j:j + 1], edges) for j in range(len(part))]
            return rows

        per_window = map_shared(score, spans)
        out["position_loss"][str(length)] = [
            math.fsum(w[b][0] for w in per_window) / sum(w[b][1] for w in per_window) for b in range(len(edges))]
        out["position_buckets"][str(length)] = [list(e) for e in edges]
        out["position_windows"][str(length)] = len(spans)
    return out


@torch.no_grad()
def prefix_loss(loss_fn: LossFn, passage: torch.Tensor, other: torch.Tensor, prefixes: Sequence[int]) -> dict:
    """{"prefix_loss": {k: mean loss of passage tokens 2..P after k tokens of `other`},
    "prefix_passage_tokens": P}."""
    if max(prefixes) > len(other):
        raise ValueError(f"position: a prefix of {max(prefixes)} tokens needs a longer text ({len(other)} tokens)")
    P = len(passage)

    def score(mine):
        out = []
        for k in mine:
            ids = torch.cat([other[len(other) - k:], passage])[None]
            nll = loss_fn(ids[:, :-1], ids[:, 1:])[0, k:k + P - 1].double()
            out.append(nll.mean().item())
        return out

    ks = sorted(set(prefixes))
    return {"prefix_loss": {str(k): v for k, v in zip(ks, map_shared(score, ks))}, "prefix_passage_tokens": P}
