"""Sliding-window perplexity: every token of a long text is scored exactly once, with as much preceding
context as the window allows.

Windows start every `stride` tokens; a window scores only the tokens the previous window did not
(the first window scores all of its tokens), so with stride = window / 2 every token after the first
window sees at least window / 2 tokens of context. This is the protocol the paper evaluates PG19 with
(window 1k...64k, stride 256) and what tools/eval_long_context.py runs. Windows start as training
samples do, with the text's own tokens: no BOS token is added.

The windows of all texts are split over the ranks of a torchrun launch (sharding.py); each window's
NLL sum comes back in window order and the total is a math.fsum of them, so the result does not depend
on the number of ranks.
"""
from __future__ import annotations

import math
from typing import Callable, Iterable, Sequence

import torch

from .sharding import map_shared

# loss_fn(input_ids (b, w), labels (b, w)) -> per-token negative log-likelihood (b, w), natural log
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def window_spans(n_positions: int, window: int, stride: int) -> list[tuple[int, int, int]]:
    """[(begin, end, scored)] over positions [0, n_positions): the window covers [begin, end) and
    scores its last `scored` positions; together the scored parts tile [0, n_positions) once."""
    if window <= 0 or not 0 < stride <= window:
        raise ValueError(f"need window > 0 and 0 < stride <= window, got window={window}, stride={stride}")
    spans, prev_end, begin = [], 0, 0
    while prev_end < n_positions:
        end = min(begin + window, n_positions)
        spans.append((begin, end, end - prev_end))
        prev_end, begin = end, begin + stride
    return spans


@torch.no_grad()
def window_nll(loss_fn: LossFn, texts: Sequence[torch.Tensor], windows: Sequence[tuple],
               batch_size: int = 8) -> list[float]:
    """NLL sum of each window (text index, begin, end, scored) over its scored positions, in order;
    position t of a text predicts token t + 1. Windows of equal length are batched together."""
    out: list = [None] * len(windows)
    by_length: dict = {}
    for i, (_, b, e, _) in enumerate(windows):
        by_length.setdefault(e - b, []).append(i)
    for length, idx in by_length.items():
        for start in range(0, len(idx), batch_size):
            part = [windows[i] for i in idx[start:start + batch_size]]
            x = torch.stack([texts[t][b:e] for t, b, e, _ in part])
            y = torch.stack([texts[t][b + 1:e + 1] for t, b, e, _ in part])
            nll = loss_fn(x, y).double()
            for j, (row, (_, _, _, scored)) in enumerate(zip(nll, part)):
                out[idx[start + j]] = row[length - scored:].sum().item()
    return out


def sliding_window_nll(loss_fn: LossFn, ids: torch.Tensor, window: int, stride: int,
                       batch_size: int = 8) -> tuple[float, int]:
    """(sum of NLL, number of scored tokens) of one tokenised text `ids` (N,)."""
    r = perplexity(loss_fn, [ids], window, stride, batch_size)
    return r["nll"] * r["tokens"], r["tokens"]


def perplexity(loss_fn: LossFn, texts: Iterable[torch.Tensor], window: int, stride: int,
               batch_size: int = 8) -> dict:
    """Token-weighted perplexity over several tokenised texts, each scored on its own."""
    texts = list(texts)
    windows = [(t, b, e, scored) for t, ids in enumerate(texts)
               for b, e, scored in window_spans(len(ids) - 1, window, stride)]
    sums = map_shared(lambda mine: window_nll(loss_fn, texts, mine, batch_size), windows)
    total, count = math.fsum(sums), sum(w[3] for w in windows)
    return {"ppl": math.exp(total / count), "nll": total / count, "tokens": count}
