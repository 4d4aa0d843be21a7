"""Balancing the micro-batches of one optimizer step by attention cost.

With document masking, a packed sample's attention costs about the sum of its documents' squared
lengths: a sample that is one 8k document costs ~64x one made of 64 short ones. Plain sharding
(rank ``r`` takes every ``D``-th sample) leaves whichever rank drew the long documents to hold up
the others at every gradient reduction. Balancing keeps the step's samples — global samples
``[c, c + S)`` for a step of ``S`` starting at cursor ``c`` — and only changes which micro-batch of
which rank each one goes to, so the step's gradient (the mean over all its tokens) and resume by
global cursor are unchanged.

The assignment is longest-processing-time first with a fixed capacity: samples by decreasing cost
(ties: lower global index first) each go to the least loaded micro-batch (ties: lower bin) that has
room. It depends only on the step's samples and layout, so every rank computes the same one.
"""
from __future__ import annotations

import heapq


def balance_bins(samples: list[int], costs: list[int], n_bins: int, capacity: int) -> list[list[int]]:
    """Split ``samples`` (``n_bins * capacity`` of them) into ``n_bins`` bins of ``capacity`` each,
    keeping the largest bin cost low; each bin's samples in increasing order."""
    if len(samples) != n_bins * capacity or len(costs) != len(samples):
        raise ValueError(f"need {n_bins} x {capacity} samples with a cost each, got {len(samples)} "
                         f"samples and {len(costs)} costs")
    heap = [(0, b) for b in range(n_bins)]  # (load, bin) of bins with room
    bins: list[list[int]] = [[] for _ in range(n_bins)]
    for cost, g in sorted(zip(costs, samples), key=lambda x: (-x[0], x[1])):
        load, b = heapq.heappop(heap)
        bins[b].append(g)
        if len(bins[b]) < capacity:
            heapq.heappush(heap, (load + cost, b))
    return [sorted(b) for b in bins]


class StepBalancer:
    """Which global samples rank ``r`` of ``D`` reads for the micro-batch at a global cursor, when
    each optimizer step's ``step_samples`` are balanced over its ``step_samples / (B * D)``
    micro-batches per rank. Bin ``a * D + r`` is micro-batch ``a`` of rank ``r``."""

    def __init__(self, step_samples: int, micro_batch_size: int, dp_size: int):
        per_micro = micro_batch_size * dp_size
        if step_samples < per_micro or step_samples % per_micro:
            raise ValueError(f"a step of {step_samples} samples is not a whole number of micro-batches "
                             f"of {micro_batch_size} x {dp_size} ranks")
        self.step, self.micro, self.dp, self.per_micro = step_samples, micro_batch_size, dp_size, per_micro
        self._cached: tuple[int, list[list[int]]] | None = None

    def samples(self, cost, cursor: int, dp_rank: int) -> list[int]:
        """``cost(g)``: attention cost of global sample ``g``."""
        start = cursor - cursor % self.step
        if self._cached is None or self._cached[0] != start:
            members = list(range(start, start + self.step))
            bins = balance_bins(members, [cost(g) for g in members], self.step // self.micro, self.micro)
            self._cached = (start, bins)
        a = (cursor - start) // self.per_micro
        return self._cached[1][a * self.dp + dp_rank]
