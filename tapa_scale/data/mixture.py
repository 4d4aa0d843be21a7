"""Which source, and which of its samples, a global sample index maps to.

Training (``Mixture``): the global index is cut into blocks of ``BLOCK`` samples. Every block holds
exactly ``quota[s]`` samples of source ``s`` (the weights' shares of ``BLOCK``, rounded by largest
remainder), in an order drawn from ``(seed, block number)``. Global sample ``g`` in block
``t = g // BLOCK`` at offset ``o`` is sample ``t * quota[s] + (number of earlier s in the block)`` of
source ``s``, where ``s`` is the source at offset ``o``. That is a function of (seed, quotas, g)
alone: one block's order is computed (O(BLOCK), cached), then every lookup in it is O(1), whatever
``g``. A source's own index runs over its epochs (``PackedIndex``), so a small source starts its
next, reshuffled epoch while the others continue.

Validation (``Concat``): the val splits one after the other, in source order, never shuffled.
"""
from __future__ import annotations

import numpy as np

BLOCK = 4096  # samples per mixing block; a weight below 1/BLOCK of the total cannot be honoured
_MIX_TAG = 0x6D6978  # seeds the block orders apart from the per-source document shuffles


def quotas(weights: list[float], block: int = BLOCK) -> np.ndarray:
    """Samples of each source per block: ``block * w / sum(w)`` rounded by largest remainder
    (ties to the earlier source), so they add up to ``block``."""
    w = np.asarray(weights, dtype=np.float64)
    exact = block * w / w.sum()
    out = np.floor(exact).astype(np.int64)
    short = block - int(out.sum())
    order = sorted(range(len(w)), key=lambda s: (-(exact[s] - out[s]), s))
    for s in order[:short]:
        out[s] += 1
    return out


class Mixture:
    """Global sample ``g`` -> (source, index into that source's endless sample sequence)."""

    def __init__(self, weights: list[float], seed: int, block: int = BLOCK):
        self.quota, self.block, self.seed = quotas(weights, block), block, seed
        self._cached: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def _layout(self, t: int) -> tuple[np.ndarray, np.ndarray]:
        """(source at each offset, rank among that source's samples in the block) of block ``t``."""
        if t not in self._cached:
            src = np.repeat(np.arange(len(self.quota)), self.quota)
            if len(self.quota) > 1:
                src = np.random.default_rng([self.seed, _MIX_TAG, t]).permutation(src)
            rank = np.empty(self.block, dtype=np.int64)
            for s in range(len(self.quota)):
                rank[src == s] = np.arange(self.quota[s])
            if len(self._cached) >= 4:
                self._cached.pop(next(iter(self._cached)))
            self._cached[t] = (src, rank)
        return self._cached[t]

    def locate(self, g: int) -> tuple[int, int]:
        t, o = divmod(int(g), self.block)
        src, rank = self._layout(t)
        s = int(src[o])
        return s, t * int(self.quota[s]) + int(rank[o])

    def counts(self, cursor: int) -> np.ndarray:
        """Samples of each source among global samples ``[0, cursor)``."""
        t, o = divmod(int(cursor), self.block)
        src, _ = self._layout(t)
        return t * self.quota + np.bincount(src[:o], minlength=len(self.quota))


class Concat:
    """Global sample ``g`` of a fixed pass: the sources' samples one after the other."""

    def __init__(self, lengths: list[int]):
        self.start = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)

    def locate(self, g: int) -> tuple[int, int]:
        k = int(g) % int(self.start[-1])
        s = int(np.searchsorted(self.start, k, side="right")) - 1
        return s, k - int(self.start[s])

    def counts(self, cursor: int) -> np.ndarray:
        e, k = divmod(int(cursor), int(self.start[-1]))
        return e * np.diff(self.start) + np.clip(k - self.start[:-1], 0, np.diff(self.start))
