"""Writing training checkpoints, synchronously or while training goes on (collective: every rank calls
these at the same step).

    saver = Saver(run, cfg)
    saver.save(state)        # after an optimizer step; returns once this rank may train on
    saver.poll()             # once per step: publishes an asynchronous save whose writers all finished
    saver.close()            # waits for (and publishes) a save still in flight

A save plans this rank's shards through megatron-core's dist_checkpointing (`save_sharded`, which
returns megatron's AsyncRequest), writes the small files (RNG states; on rank 0 state.json, config and
tokenizer) and then either runs the request at once (`train.async_save=false`) or hands it to
megatron's AsyncCallsQueue (`true`): a forked writer process works on a copy-on-write snapshot of the
tensors, so the optimizer may update them in place while it writes. Either way the checkpoint is
published the same way, after every rank's writer finished: megatron writes its metadata, then rank 0
hashes the files into the manifest, writes COMPLETE and renames `step_XXXXXXXX.tmp` into place
(checkpoint.publish). At most one save is in flight: a new one first waits for the previous one.

Writer processes die with the training process that started them (Linux PR_SET_PDEATHSIG), so a
killed run leaves no writer behind that could still be writing into a directory the restarted run uses.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch.distributed as dist

from ..config import to_yaml
from ..parallel.parallelize import sync_params, unwrap
from . import checkpoint as ckpt
from . import zero_state
from .child_processes import die_with_parent
from .sharded import DIST, RNG, optimizer_step_count, save_rng, save_sharded

_writer_fork = False  # true while this process forks checkpoint writers
_forking_pid = 0     # the pid of the process that forked, as the child sees it


def _before_fork() -> None:
    global _forking_pid
    _forking_pid = os.getpid()


def _after_fork_in_child() -> None:
    if _writer_fork:  # the flag is copied into the child: its own writer forks inherit it too
        die_with_parent(_forking_pid)


os.register_at_fork(before=_before_fork, after_in_child=_after_fork_in_child)


@contextlib.contextmanager
def _forking_writers():
    global _writer_fork
    _writer_fork = True
    try:
        yield
    finally:
        _writer_fork = False


def _results_queue_dies_with_us() -> None:
    """megatron's writers report through a queue served by a spawned Manager process, created on the first
    save and kept for the life of the process. Start that Manager ourselves, with die_with_parent as its
    initializer, before the library would."""
    from megatron.core.dist_checkpointing.strategies import filesystem_async as fa

    if not hasattr(fa, "_results_queue"):
        ckpt.warn("checkpoint: this megatron-core has no filesystem_async._results_queue; its writer Manager "
                  "may outlive a killed run")
    elif fa._results_queue is None:
        import multiprocessing as mp
        from multiprocessing.managers import SyncManager

        manager = SyncManager(ctx=mp.get_context("spawn"))
        manager.start(initializer=die_with_parent, initargs=(os.getpid(),))
        fa._results_queue = manager.Queue()


def _then_hash(write, tmp: Path, rank: int):
    """megatron's write function followed, in the same process (the forked writer when asynchronous),
    by hashing the files it wrote, so that publishing does not read them again on the training thread.
    Its positional arguments are (rank, write buckets, results queue); a bucket starts with its path."""
    def write_and_hash(*args, **kwargs):
        write(*args, **kwargs)
        ckpt.record_hashes(tmp, rank, [Path(bucket[0]) for bucket in args[1]])
    return write_and_hash


def _barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def layout_of(run) -> dict:
    g = run.groups
    return {"world_size": g.world_size, "tp": g.tp, "pp": g.pp, "cp": g.cp, "dp": g.dp_size, "vpp": g.vpp,
            "optimizer": "distributed" if zero_state.is_distributed(run.optimizer) else "torch"}


def chunks_of(run) -> list:
    """This rank's model chunks without their DDP wrappers."""
    return [unwrap(c) for c in run.chunks]


def next_batch_fingerprint(loader, samples: int) -> dict:
    """sha256 over the tokens of the next `samples` global samples the loader hands out (all ranks).

    Global sample g is what `PackedLoader` gives data-parallel rank g % dp; so this does not depend on
    the data-parallel size, and a resume can check it before its first step."""
    index, start = loader._index(), loader.samples_seen
    h = hashlib.sha256()
    for g in range(start, start + samples):
        h.update(np.int64(g).tobytes())
        h.update(np.ascontiguousarray(index.window(g), dtype=np.int64).tobytes())
    return {"first_sample": start, "samples": samples, "sha256": h.hexdigest()}


class Saver:
    """Writes the checkpoints of one run; `train.async_save` picks the asynchronous writer."""

    def __init__(self, run, cfg, hook=None):
        from megatron.core.dist_checkpointing.strategies.async_utils import AsyncCallsQueue

        self.run, self.cfg, self.hook = run, cfg, hook
        self.queue = AsyncCallsQueue() if cfg.train.async_save else None
        self.blocking_s = 0.0   # how long the last save() kept this rank from training
        self.published: Optional[Path] = None

    def save(self, state: dict) -> None:
        """Checkpoint `state["step"]` (and, synchronously, publish it before returning)."""
        self.wait()
        _results_queue_dies_with_us()  # once per process, before megatron would start its own
        start = time.perf_counter()
        run, cfg, step, main = self.run, self.cfg, state["step"], self.run.groups.is_main
        run_dir = Path(cfg.run.dir)
        tmp = ckpt.tmp_dir(run_dir, step)
        if main:
            ckpt.begin_save(run_dir, step)
        _barrier()
        sync_params(run.chunks, cfg.parallel)  # weights the optimizer left for the next forward to gather
        request = save_sharded(tmp / DIST, chunks_of(run), run.optimizer)
        if request.async_fn is not None:  # nothing to write on this rank (no main replicas): None
            request = request._replace(async_fn=_then_hash(request.async_fn, tmp, run.groups.rank))
        save_rng(tmp / RNG, run.groups.rank)
        if main:
            full = {**state, "layout": layout_of(run), "data": run.train_loader.state_dict(),
                    "optimizer_steps": optimizer_step_count(run.optimizer),
                    "next_batch": next_batch_fingerprint(run.train_loader, run.global_batch)}
            ckpt.write_common(tmp, state=full, config_yaml=to_yaml(cfg), tokenizer_dir=run.tokenizer_dir)
        request.add_finalize_fn(lambda: self._publish(tmp))
        with _forking_writers():  # a synchronous save forks its bucket writers too
            if self.queue is None:
                request.execute_sync()
            else:
                self.queue.schedule_async_request(request)
        self.blocking_s = time.perf_counter() - start
        if main and self.queue is not None:
            ckpt.warn(f"checkpoint: step {step} is being written in the background (training paused "
                      f"{self.blocking_s:.2f} s)")

    def _publish(self, tmp: Path) -> None:
        """Every rank's shards are on disk: rank 0 verifies by hashing, marks, renames, prunes."""
        _barrier()
        if self.run.groups.is_main:
            if self.hook:
                self.hook("shards")
            self.published = ckpt.publish(tmp, hook=self.hook)
            if self.queue is not None:
                ckpt.warn(f"checkpoint: {self.published.name} published")
            ckpt.prune(Path(self.cfg.run.dir), self.cfg.train.keep_checkpoints, protect=self.published)
        _barrier()

    def poll(self) -> None:
        """Publish an asynchronous save if the writers of every rank are done (one all-reduce)."""
        if self.queue is not None and self.queue.get_num_unfinalized_calls():
            self.queue.maybe_finalize_async_calls(blocking=False)

    def wait(self) -> None:
        """Block until a save in flight is written and published."""
        if self.queue is not None and self.queue.get_num_unfinalized_calls():
            self.queue.maybe_finalize_async_calls(blocking=True)

    def close(self, abort: bool = False) -> None:
        """End of the run: wait for the save in flight; after an error, kill its writer instead (the
        `.tmp` directory stays unpublished and the next start reports it)."""
        if self.queue is None:
            return
        if abort:
            for call in self.queue.async_calls:
                call.async_caller.close(abort=True)
            self.queue.async_calls.clear()
        else:
            self.wait()
