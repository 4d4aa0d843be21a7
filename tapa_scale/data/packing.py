"""Deterministic packing of documents into fixed-length samples, addressed by a global index.

Epoch ``e`` of a split is one token stream: the documents in a fixed order (a permutation seeded
by ``(seed, e)`` when shuffling, else file order), each followed by ``<|endoftext|>``. Packed
sample ``k`` of the epoch is the window ``stream[k*L : k*L + L + 1]`` (consecutive windows share
one token, so every token is a label exactly once); the tail shorter than a window is dropped.
The global sample index ``g`` runs over epochs: ``g = e * samples_per_epoch + k``.

Because a sample depends only on ``g``, any split of the global index among ranks/workers and any
resume point (a global sample cursor) reproduces exactly the same samples.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Callable

import numpy as np

ChunkReader = Callable[[int], np.ndarray]  # MDS sample index -> token ids


class PackedIndex:
    """Maps global packed-sample indices to token windows of a prepared split."""

    def __init__(self, samples: np.ndarray, seq_len: int, eos_id: int, *, shuffle: bool,
                 seed: int | tuple[int, ...], read_chunk: ChunkReader,
                 cache_tokens: int = 1 << 22, min_doc_tokens: int = 0, max_doc_tokens: int = 0):
        if seq_len < 1:
            raise ValueError(f"seq_len must be >= 1, got {seq_len}")
        doc_of_chunk, chunk_len = samples[:, 0], samples[:, 1]
        n_source_docs = int(doc_of_chunk[-1]) + 1 if len(samples) else 0
        # chunks of a document are consecutive MDS samples: first chunk and token offsets per chunk
        self.doc_first_chunk = np.searchsorted(doc_of_chunk, np.arange(n_source_docs + 1))
        self.chunk_start = np.concatenate([[0], np.cumsum(chunk_len)])  # over all chunks
        doc_tokens = np.diff(self.chunk_start[self.doc_first_chunk])
        # The packed "documents" are pieces of the prepared ones: those shorter than min_doc_tokens
        # are left out, longer than max_doc_tokens (> 0) cut into pieces of that many tokens (the
        # last one shorter), each piece its own document. Without limits, piece i is document i.
        kept = np.flatnonzero(doc_tokens >= min_doc_tokens)
        per_doc = (-(-doc_tokens[kept] // max_doc_tokens) if max_doc_tokens > 0
                   else np.ones(len(kept), dtype=np.int64))
        self.piece_doc = np.repeat(kept, per_doc)
        first_piece = np.repeat(np.cumsum(per_doc) - per_doc, per_doc)
        self.piece_start = (np.arange(len(self.piece_doc)) - first_piece) * max(max_doc_tokens, 0)
        piece_tokens = doc_tokens[self.piece_doc] - self.piece_start
        if max_doc_tokens > 0:
            piece_tokens = np.minimum(piece_tokens, max_doc_tokens)
        self.n_docs = len(self.piece_doc)
        self.doc_len = piece_tokens + 1  # + the end-of-document token
        self.seq_len, self.eos_id, self.shuffle = seq_len, eos_id, shuffle
        self.seed_words = tuple(seed) if isinstance(seed, tuple) else (seed,)
        self.samples_per_epoch = max(0, int(self.doc_len.sum()) - 1) // seq_len
        self._read_chunk, self._cache, self._cache_budget = read_chunk, OrderedDict(), cache_tokens
        self._epoch, self._order, self._offsets = -1, None, None

    def _layout(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """Document order and stream offsets of ``epoch`` (cached: consecutive reads share it)."""
        if epoch != self._epoch:
            if self.shuffle:
                order = np.random.default_rng([*self.seed_words, epoch]).permutation(self.n_docs)
            else:
                order = np.arange(self.n_docs)
            self._order = order
            self._offsets = np.concatenate([[0], np.cumsum(self.doc_len[order])])
            self._epoch = epoch
        return self._order, self._offsets

    def _pieces(self, g: int) -> list[tuple[int, int, int]]:
        """``(doc, lo, hi)``: the token ranges of documents (EOS at index doc_len - 1) that make up
        global packed sample ``g``, in order."""
        if self.samples_per_epoch == 0:
            raise ValueError("split has fewer than seq_len + 1 tokens; no sample can be packed")
        epoch, k = divmod(int(g), self.samples_per_epoch)
        order, offsets = self._layout(epoch)
        start, end = k * self.seq_len, k * self.seq_len + self.seq_len + 1
        i = int(np.searchsorted(offsets, start, side="right")) - 1
        pieces = []
        while start < end:
            doc = int(order[i])
            lo = start - int(offsets[i])
            hi = min(int(self.doc_len[doc]), end - int(offsets[i]))
            pieces.append((doc, lo, hi))
            start += hi - lo
            i += 1
        return pieces

    def window(self, g: int) -> np.ndarray:
        """Tokens ``(L + 1,)`` int64 of global packed sample ``g``."""
        parts = [self._doc_tokens(doc, lo, hi) for doc, lo, hi in self._pieces(g)]
        return np.concatenate(parts).astype(np.int64)

    def attention_cost(self, g: int) -> int:
        """Sum of squared document lengths among the ``L`` inputs of sample ``g`` (what attention
        with document masking costs), from the layout alone: no token is read."""
        lengths = [hi - lo for _, lo, hi in self._pieces(g)]
        lengths[-1] -= 1  # the window's last token is a label only
        return sum(n * n for n in lengths)

    def chunks(self, g: int) -> list[int]:
        """The MDS samples (chunks) that :meth:`window` reads for ``g``, without reading them:
        what a prefetcher needs to know to fetch their shards ahead of use."""
        out = []
        for doc, lo, hi in self._pieces(g):
            n = int(self.doc_len[doc]) - 1
            if lo >= min(hi, n):
                continue  # only the document's EOS
            out.extend(range(self._chunk_at(doc, lo), self._chunk_at(doc, min(hi, n) - 1) + 1))
        return out

    def _chunk_at(self, piece: int, pos: int) -> int:
        """The chunk holding token ``pos`` of document piece ``piece``."""
        doc = int(self.piece_doc[piece])
        first, last = self.doc_first_chunk[doc], self.doc_first_chunk[doc + 1]
        base = self.chunk_start[first] + self.piece_start[piece]
        return int(first + np.searchsorted(self.chunk_start[first:last + 1], base + pos,
                                           side="right") - 1)

    def _doc_tokens(self, doc: int, lo: int, hi: int) -> np.ndarray:
        """Tokens [lo, hi) of a document (piece) followed by its EOS (index doc_len - 1)."""
        n = int(self.doc_len[doc]) - 1
        out = []
        if lo < n:
            base = self.chunk_start[self.doc_first_chunk[self.piece_doc[doc]]] + self.piece_start[doc]
            c = self._chunk_at(doc, lo)
            pos = lo
            while pos < min(hi, n):
                chunk = self._chunk(c)
                c_lo = pos - (self.chunk_start[c] - base)
                take = chunk[c_lo:c_lo + min(hi, n) - pos]
                out.append(take)
                pos += len(take)
                c += 1
        if hi > n:
            out.append(np.array([self.eos_id], dtype=np.int64))
        return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)

    def _chunk(self, c: int) -> np.ndarray:
        """An MDS sample's tokens, through a small LRU cache (neighbouring windows share chunks)."""
        if c in self._cache:
            self._cache.move_to_end(c)
            return self._cache[c]
        tokens = self._read_chunk(int(c))
        self._cache[c] = tokens
        held = sum(len(v) for v in self._cache.values())
        while held > self._cache_budget and len(self._cache) > 1:
            _, old = self._cache.popitem(last=False)
            held -= len(old)
        return tokens


def sample_fields(window: np.ndarray, eos_id: int) -> dict[str, np.ndarray]:
    """input_ids, labels, position_ids, segment_ids (each ``(L,)`` int64) of one window.

    A document starts at the sample's first token and after every EOS in the inputs; positions
    count from 0 at each start and segment ids number the documents of the sample from 0.
    """
    inputs, labels = window[:-1], window[1:]
    n = len(inputs)
    starts = np.zeros(n, dtype=bool)
    starts[0] = True
    starts[1:] = inputs[:-1] == eos_id
    idx = np.arange(n)
    last_start = np.maximum.accumulate(np.where(starts, idx, 0))
    return {"input_ids": inputs, "labels": labels, "position_ids": idx - last_start,
            "segment_ids": np.cumsum(starts) - 1}
