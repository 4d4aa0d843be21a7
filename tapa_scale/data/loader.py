"""The packed, resumable, data-parallel batch loader over prepared MDS shards of one or more sources.

Sharding rule: global batch ``b`` holds global samples ``[c_b, c_b + B*D)`` where ``c_b`` is the
global sample cursor at its start; rank ``r`` of ``D`` takes ``c_b + r, c_b + r + D, …`` (``B`` of
them). Which source and which of its packed samples a global sample is comes from ``mixture.py``
(a function of seed, weights and the global index). The loader's state is the cursor
(``samples_seen``), so resuming — with the same or another ``D`` or micro batch size — continues at
exactly the next unseen global sample on every rank.

Shards are read with mosaicml-streaming's MDS shard reader (``reader_from_json``), not with
``StreamingDataset``: our cursor replaces streaming's own sampling/resumption state, and the shard
reader creates no shared memory or lock files (``StreamingDataset`` does, under /dev/shm and /tmp).
Remote sources fetch their shards through streaming's ``Stream`` (``remote.py``), ahead of use.
"""
from __future__ import annotations

import hashlib
import json
from typing import Iterator

import numpy as np
import torch

from .balance import StepBalancer
from .errors import DataError
from .mixture import BLOCK, Concat, Mixture
from .packing import PackedIndex, sample_fields
from .remote import Fetch, LocalShards, RemoteShards

STATE_VERSION = 1


class MixedIndex:
    """Tokens of global sample ``g`` over all sources; the shards that reading it needs."""

    def __init__(self, parts: list[PackedIndex], stores: list, plan):
        self.parts, self.stores, self.plan = parts, stores, plan
        self.remote = any(isinstance(st, RemoteShards) for st in stores)

    def window(self, g: int) -> np.ndarray:
        s, j = self.plan.locate(g)
        return self.parts[s].window(j)

    def cost(self, g: int) -> int:
        """Attention cost of global sample ``g`` (sum of squared document lengths), from metadata."""
        s, j = self.plan.locate(g)
        return self.parts[s].attention_cost(j)

    def shards(self, g: int) -> list[tuple[int, int]]:
        """``(source, shard)`` pairs sample ``g`` reads."""
        s, j = self.plan.locate(g)
        return [(s, shard) for shard in
                dict.fromkeys(self.stores[s].shard_of(c) for c in self.parts[s].chunks(j))]

    def close(self) -> None:
        """Stop the fetch threads (a fetch in flight finishes first)."""
        for store in self.stores:
            if isinstance(store, RemoteShards):
                store.close()

    def plan_ahead(self, samples: list[list[int]]) -> None:
        """Pin the shards of ``samples`` (the current batch first, then the next ones) and fetch
        those not cached in the background, in order of use."""
        wanted: dict[int, dict[int, None]] = {s: {} for s in range(len(self.stores))}
        for batch in samples:
            for g in batch:
                for s, shard in self.shards(g):
                    wanted[s][shard] = None
        for s, shards in wanted.items():
            self.stores[s].pin(shards)
            self.stores[s].prefetch(shards)


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
        index = self.loader._index()  # built per process: readers, caches and fetch threads
        try:
            yield from self._batches(index, worker, n_workers)
        finally:
            index.close()

    def _batches(self, index: MixedIndex, worker: int, n_workers: int):
        loader = self.loader
        b = worker
        while self.n_batches is None or b < self.n_batches:
            if index.remote:  # this batch's shards and those of the next `prefetch` batches
                ahead = [b + k * n_workers for k in range(loader.prefetch + 1)]
                index.plan_ahead([loader.batch_samples(self.start + a * loader.global_batch, index)
                                  for a in ahead if self.n_batches is None or a < self.n_batches])
            yield loader._make_batch(index, self.start + b * loader.global_batch)
            b += n_workers


class PackedLoader:
    """Iterate to get dicts of int64 tensors ``(B, L)``: input_ids, labels, position_ids,
    segment_ids. "train" is endless, mixed by weight and reshuffled per epoch of each source;
    "val" is one fixed pass over the sources' val splits in order."""

    def __init__(self, sources: list, split: str, seq_len: int, micro_batch_size: int, *,
                 dp_rank: int, dp_size: int, seed: int, shuffle: bool, num_workers: int,
                 fetch: Fetch | None = None, verify_checksums: bool = True,
                 cache_limit_bytes: int = 0, prefetch: int = 2, balance_step: int = 0):
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        if not 0 <= dp_rank < dp_size or micro_batch_size < 1:
            raise ValueError(f"need 0 <= dp_rank < dp_size and micro_batch_size >= 1, got "
                             f"dp_rank={dp_rank} dp_size={dp_size} micro_batch={micro_batch_size}")
        self.sources, self.split = sources, split
        self.seq_len, self.micro_batch_size = seq_len, micro_batch_size
        self.dp_rank, self.dp_size, self.seed = dp_rank, dp_size, seed
        self.shuffle = shuffle and split == "train"
        self.num_workers, self.prefetch = num_workers, prefetch
        self.fetch, self.verify, self.cache_limit = fetch or Fetch(), verify_checksums, cache_limit_bytes
        eos = {int(src.manifest["tokenizer"]["eos_id"]) for src in sources}
        if len(eos) != 1:
            raise DataError(f"sources {[src.name for src in sources]} have end-of-document ids "
                            f"{sorted(eos)}; expected one tokenizer for all")
        self.eos_id = eos.pop()
        self.samples = [np.load(src.root / split / "samples.npy", allow_pickle=False)
                        for src in sources]
        self._cursor = 0
        # Training only: each optimizer step's `balance_step` samples balanced by attention cost
        # over its micro-batches and ranks (balance.py); 0 = plain sharding.
        self.balance_step = balance_step if split == "train" else 0
        self.balancer = (StepBalancer(balance_step, micro_batch_size, dp_size)
                         if self.balance_step else None)
        probe = self._index(read=False)
        per_source = [part.samples_per_epoch for part in probe.parts]
        self.samples_per_epoch = sum(per_source)
        if split == "val":
            self.plan = Concat(per_source)
        else:
            self.plan = Mixture([src.weight for src in sources], seed)
        for src, n, q in zip(sources, per_source, getattr(self.plan, "quota", per_source)):
            if q and n == 0:
                raise DataError(f"{src.root / split}: no packed sample of {seq_len + 1} tokens; "
                                "expected a longer split for this data.seq_len")
        if len(sources) == 1 and self.samples_per_epoch < self.global_batch:
            root = sources[0].root
            raise DataError(f"{root / split}: only {self.samples_per_epoch} packed samples of "
                            f"{seq_len + 1} tokens; expected at least one global batch of "
                            f"{self.global_batch} (micro batch x dp size)")
        if split == "val" and self.samples_per_epoch < self.global_batch:
            raise DataError(f"val splits of {[src.name for src in sources]}: only "
                            f"{self.samples_per_epoch} packed samples; expected at least one "
                            f"global batch of {self.global_batch} (micro batch x dp size)")

    @property
    def global_batch(self) -> int:
        return self.micro_batch_size * self.dp_size

    @property
    def samples_seen(self) -> int:
        """Global samples (all ranks together) consumed from this loader."""
        return self._cursor

    def __len__(self) -> int:
        """Batches per epoch (the whole of a "val" pass; for a mixture, all sources' epochs)."""
        return self.samples_per_epoch // self.global_batch

    def _store(self, src):
        if not src.uri:
            return LocalShards(src.root, self.split)
        return RemoteShards(src.uri, src.root, self.split, self.fetch, verify=self.verify,
                            limit_bytes=self.cache_limit)

    def _index(self, read: bool = True) -> MixedIndex:
        """Built per process (readers, caches and fetch threads are not shared)."""
        parts, stores = [], []
        for s, src in enumerate(self.sources):
            store = self._store(src) if read else None
            seed = (self.seed,) if len(self.sources) == 1 else (self.seed, s)
            parts.append(PackedIndex(self.samples[s], self.seq_len, self.eos_id,
                                     shuffle=self.shuffle, seed=seed,
                                     read_chunk=store if read else (lambda i: None),
                                     min_doc_tokens=src.min_doc_tokens,
                                     max_doc_tokens=src.max_doc_tokens))
            stores.append(store)
        return MixedIndex(parts, stores, getattr(self, "plan", None))

    def batch_samples(self, cursor: int, index: MixedIndex | None = None) -> list[int]:
        """The global samples of this rank's batch starting at global cursor ``cursor`` (balanced:
        its bin of the step's samples, which needs the ``index`` for their costs)."""
        if self.balancer is not None:
            return self.balancer.samples((index or self._index(read=False)).cost, cursor, self.dp_rank)
        return [cursor + self.dp_rank + j * self.dp_size for j in range(self.micro_batch_size)]

    def _make_batch(self, index: MixedIndex, cursor: int) -> dict[str, np.ndarray]:
        rows = [sample_fields(index.window(g), self.eos_id) for g in self.batch_samples(cursor, index)]
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

    def _identity(self) -> tuple[str, list[dict]]:
        """The dataset id resume checks (one source: its fingerprint, as before mixtures) and the
        sources with the share each gets (block quotas: what decides the sample sequence)."""
        shares = [int(q) for q in getattr(self.plan, "quota", [1] * len(self.sources))]
        listed = [{"name": src.name, "fingerprint": src.manifest["fingerprint"], "quota": q,
                   "doc_tokens": [src.min_doc_tokens, src.max_doc_tokens]}
                  for src, q in zip(self.sources, shares)]
        if len(self.sources) == 1 and listed[0]["doc_tokens"] == [0, 0]:
            return self.sources[0].manifest["fingerprint"], listed
        key = json.dumps([[x["fingerprint"], x["quota"]] + ([x["doc_tokens"]] if x["doc_tokens"] != [0, 0]
                                                            else []) for x in listed])
        return "mix-" + hashlib.sha256(key.encode()).hexdigest()[:16], listed

    def source_tokens(self) -> dict[str, int]:
        """Tokens handed out so far from each source (all ranks), by source name (``name#i`` for a
        name listed more than once)."""
        counts = self.plan.counts(self._cursor)
        names = [src.name or "embedded" for src in self.sources]
        keys = [n if names.count(n) == 1 else f"{n}#{i}" for i, n in enumerate(names)]
        return {key: int(n) * self.seq_len for key, n in zip(keys, counts)}

    def state_dict(self) -> dict:
        dataset, listed = self._identity()
        counts = self.plan.counts(self._cursor)
        for entry, n in zip(listed, counts):
            entry.update(samples=int(n), tokens=int(n) * self.seq_len)
        return {"version": STATE_VERSION, "split": self.split, "samples_seen": self._cursor,
                "seq_len": self.seq_len, "seed": self.seed, "shuffle": self.shuffle,
                "dataset": dataset, "sources": listed}

    def load_state_dict(self, state: dict) -> None:
        """Resume at ``state["samples_seen"]``; any dp size or micro batch size may be used now."""
        mine = self.state_dict()
        saved = state.get("sources") or []
        mixed = [str(d).startswith("mix-") for d in (state.get("dataset"), mine["dataset"])]
        if state.get("dataset") != mine["dataset"] and any(mixed):
            def show(listed):
                return ", ".join(f"{x['name'] or 'embedded'} ({x['fingerprint']}) "
                                 f"{x['quota']}/{BLOCK}"
                                 + (" docs {}..{} tokens".format(*x["doc_tokens"])
                                    if x.get("doc_tokens", [0, 0]) != [0, 0] else "")
                                 for x in listed)
            raise DataError(f"loader state was saved for sources [{show(saved)}], this run has "
                            f"[{show(mine['sources'])}] (dataset, share of each block of {BLOCK} "
                            "samples): sources and weights cannot change within a stage; start a "
                            "new stage from its checkpoint with train.init_from")
        for key in ("version", "split", "seq_len", "seed", "shuffle", "dataset"):
            if state.get(key) != mine[key]:
                raise DataError(f"loader state has {key}={state.get(key)!r}, expected "
                                f"{mine[key]!r}: it was saved for another dataset or settings")
        if self.balance_step and int(state["samples_seen"]) % self.balance_step:
            raise DataError(f"loader state is at global sample {state['samples_seen']}, not a multiple of "
                            f"the {self.balance_step} samples of a step that data.balance_attention "
                            "balances; resume with the train.global_batch_size it was saved with")
        self._cursor = int(state["samples_seen"])
