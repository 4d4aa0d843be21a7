"""Sliding-window perplexity: every token of a long text is scored exactly once, with as much preceding
context as the window allows.

Windows start every `stride` tokens; a window scores only the tokens the previous window did not
(the first window scores all of its tokens), so with stride = window / 2 every token after the first
window sees at least window / 2 tokens of context. This is the protocol the paper evaluates PG19 with
(window 1k...64k, stride 256) and what tools/eval_long_context.py runs.
"""
from __future__ import annotations

import math
from typing import Callable, Iterable

import torch

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
def sliding_window_nll(loss_fn: LossFn, ids: torch.Tensor, window: int, stride: int,
                       batch_size: int = 8) -> tuple[float, int]:
    """(sum of NLL, number of scored tokens) of one tokenised text `ids` (N,): position t predicts t+1."""
    inputs, labels = ids[:-1], ids[1:]
    spans = window_spans(len(inputs), window, stride)
    total, count = 0.0, 0
    # Windows of the same length are batched together; only the last one or two may be shorter.
    by_length: dict[int, list] = {}
    for span in spans:
        by_length.setdefault(span[1] - span[0], []).append(span)
    for length, group in by_length.items():
        for i in range(0, len(group), batch_size):
            part = group[i:i + batch_size]
            x = torch.stack([inputs[b:e] for b, e, _ in part])
            y = torch.stack([labels[b:e] for b, e, _ in part])
            nll = loss_fn(x, y).double()
            for row, (_, _, scored) in zip(nll, part):
                total += row[length - scored:].sum().item()
                count += scored
    return total, count


def perplexity(loss_fn: LossFn, texts: Iterable[torch.Tensor], window: int, stride: int,
               batch_size: int = 8) -> dict:
    """Token-weighted perplexity over several tokenised texts, each scored on its own."""
    total, count = 0.0, 0
    for ids in texts:
        t, c = sliding_window_nll(loss_fn, ids, window, stride, batch_size)
        total, count = total + t, count + c
    return {"ppl": math.exp(total / count), "nll": total / count, "tokens": count}
