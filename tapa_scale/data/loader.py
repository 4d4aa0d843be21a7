"""The packed, resumable, data-parallel batch loader over prepared MDS shards.

Sharding rule: global batch ``b`` holds global samples ``[c_b, c_b + B*D)`` where ``c_b`` is the
global sample cursor at its start; rank ``r`` of ``D`` takes ``c_b + r, c_b + r + D, …`` (``B`` of
them). The loader's state is that cursor (``samples_seen``), so resuming — with the same or another
``D`` or micro batch size — continues at exactly the next unseen global sample on every rank.

Shards are read with mosaicml-streaming's MDS shard reader (``reader_from_json``), not with
``StreamingDataset``: our cursor replaces streaming's own sampling/resumption state, and the shard
reader creates no shared memory or lock files (``StreamingDataset`` does, under /dev/shm and /tmp).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from .errors import DataError
from .packing import PackedIndex, sample_fields

STATE_VERSION = 1


class ShardReader:
    """Random access to the MDS samples (token arrays) of one split directory."""

    def __init__(self, root: Path, split: str):
        from streaming.base.format import reader_from_json

        index = json.loads((root / split / "index.json").read_text())
        self.readers = [reader_from_json(str(root), split, shard) for shard in index["shards"]]
        self.first = np.concatenate([[0], np.cumsum([r.samples for r in self.readers])])

    def __call__(self, idx: int) -> np.ndarray:
        shard = int(np.searchsorted(self.first, idx, side="right")) - 1
        return np.asarray(self.readers[shard].get_item(idx - int(self.first[shard]))["tokens"])


def _as_is(batch):
    return batch


class _Batches(torch.utils.data.IterableDataset):
    """Batches ``first, first+1, …`` (``last`` exclusive, None = forever) of one rank.

    Under a DataLoader with W workers, worker w makes batches ``first + w + j*W``; the DataLoader
    returns worker outputs round-robin, i.e. in batch order.
    """

    def __init__(self, loader: "PackedLoader", start_cursor: int, n_batches: int | None):
        self.loader, self.start, self.n_batches = loader, start_cursor, n_batches

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        info = torch.utils.data.get_worker_info()
        worker, n_workers = (info.id, info.num_workers) if info else (0, 1)
        index = self.loader._index()  # built per process: readers and caches are not shared
        b = worker
        while self.n_batches is None or b < self.n_batches:
            yield self.loader._make_batch(index, self.start + b * self.loader.global_batch)
            b += n_workers


class PackedLoader:
    """Iterate to get dicts of int64 tensors ``(B, L)``: input_ids, labels, position_ids,
    segment_ids. "train" is endless and reshuffled per epoch; "val" is one fixed pass."""

    def __init__(self, root: Path, manifest: dict, split: str, seq_len: int,
                 micro_batch_size: int, *, dp_rank: int, dp_size: int, seed: int,
                 shuffle: bool, num_workers: int):
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        if not 0 <= dp_rank < dp_size or micro_batch_size < 1:
            raise ValueError(f"need 0 <= dp_rank < dp_size and micro_batch_size >= 1, got "
                             f"dp_rank={dp_rank} dp_size={dp_size} micro_batch={micro_batch_size}")
        self.root, self.manifest, self.split = root, manifest, split
        self.seq_len, self.micro_batch_size = seq_len, micro_batch_size
        self.dp_rank, self.dp_size, self.seed = dp_rank, dp_size, seed
        self.shuffle = shuffle and split == "train"
        self.num_workers = num_workers
        self.eos_id = int(manifest["tokenizer"]["eos_id"])
        self.samples = np.load(root / split / "samples.npy", allow_pickle=False)
        self._cursor = 0
        probe = self._index(read=False)
        self.samples_per_epoch = probe.samples_per_epoch
        if self.samples_per_epoch < self.global_batch:
            raise DataError(f"{root / split}: only {self.samples_per_epoch} packed samples of "
                            f"{seq_len + 1} tokens; expected at least one global batch of "
                            f"{self.global_batch} (micro batch x dp size)")

    @property
    def global_batch(self) -> int:
        return self.micro_batch_size * self.dp_size

    @property
    def samples_seen(self) -> int:
        """Global samples (all ranks together) consumed from this loader."""
        return self._cursor

    def __len__(self) -> int:
        """Batches per epoch (the whole of a "val" pass)."""
        return self.samples_per_epoch // self.global_batch

    def _index(self, read: bool = True) -> PackedIndex:
        reader = ShardReader(self.root, self.split) if read else (lambda i: None)
        return PackedIndex(self.samples, self.seq_len, self.eos_id, shuffle=self.shuffle,
                           seed=self.seed, read_chunk=reader)

    def _make_batch(self, index: PackedIndex, cursor: int) -> dict[str, np.ndarray]:
        rows = [sample_fields(index.window(cursor + self.dp_rank + j * self.dp_size), self.eos_id)
                for j in range(self.micro_batch_size)]
        return {key: np.stack([r[key] for r in rows]) for key in rows[0]}

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        if self.split == "val":  # the same batches on every pass
            self._cursor = 0
            batches = _Batches(self, 0, len(self))
        else:
            batches = _Batches(self, self._cursor, None)
        if self.num_workers > 0:
            # Workers hand back numpy arrays (plain pickles through a pipe). Torch tensors would
            # travel as shared memory plus a file descriptor sent over a socket that each worker
            # creates under /tmp/pymp-*; a worker stopped at exit or killed leaves those behind.
            source = torch.utils.data.DataLoader(batches, batch_size=None, collate_fn=_as_is,
                                                 num_workers=self.num_workers)
        else:
            source = batches
        for batch in source:
            self._cursor += self.global_batch  # counted when handed out, not when prefetched
            yield {key: torch.from_numpy(value) for key, value in batch.items()}

    def state_dict(self) -> dict:
        return {"version": STATE_VERSION, "split": self.split, "samples_seen": self._cursor,
                "seq_len": self.seq_len, "seed": self.seed, "shuffle": self.shuffle,
                "dataset": self.manifest["fingerprint"]}

    def load_state_dict(self, state: dict) -> None:
        """Resume at ``state["samples_seen"]``; any dp size or micro batch size may be used now."""
        mine = self.state_dict()
        for key in ("version", "split", "seq_len", "seed", "shuffle", "dataset"):
            if state.get(key) != mine[key]:
                raise DataError(f"loader state has {key}={state.get(key)!r}, expected "
                                f"{mine[key]!r}: it was saved for another dataset or settings")
        self._cursor = int(state["samples_seen"])
