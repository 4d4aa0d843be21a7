"""Asynchronous checkpoint writing (train.async_save): the same checkpoints as a synchronous save, exact
resume after crashes while a save is in flight, and no writer process outliving a killed run.

Would catch: a forked writer that sees tensors the optimizer already updated (a checkpoint from the
wrong step), a save published before every writer finished, a background save lost at the end of the
run, megatron's writer Manager (or a writer) left running after kill -9, still able to write into a
directory that the restarted run uses."""
import os
import signal
import time
from pathlib import Path

import pytest
import torch

from tapa_scale.train.checkpoint import complete_checkpoints
from tapa_scale.train.sharded import read_full_tensors
from tests.checkpoint.harness import (LAYOUTS, RUN, STEPS, _reap, assert_same_losses, kill_after, logged_steps,
                                      start, train)

ASYNC = [*RUN, "train.async_save=true"]


def same_checkpoints(reference: Path, run: Path) -> None:
    """Every published checkpoint holds the same tensors, written from the step it names."""
    a, b = complete_checkpoints(reference), complete_checkpoints(run)
    assert [p.name for p in a] == [p.name for p in b] == [f"step_{s:08d}" for s in range(2, STEPS + 1, 2)]
    for x, y in zip(a, b):
        tx, ty = read_full_tensors(x / "dist"), read_full_tensors(y / "dist")
        assert tx.keys() == ty.keys() and all(torch.equal(tx[k], ty[k]) for k in tx), x.name


def test_async_checkpoints_equal_sync_ones_and_resume_exactly(tmp_path, uninterrupted):
    crashed = tmp_path / "async"
    kill_after(start(1, f"run.dir={crashed}", *ASYNC), crashed, 3)  # step 2's save may be in flight
    out = train(1, f"run.dir={crashed}", *ASYNC, "train.fault_kill_in_save=manifest", expect=-9)
    assert "being written in the background" in out and "fault injection" in out
    out = train(1, f"run.dir={crashed}", *ASYNC)
    assert "ignoring partial checkpoint" in out
    assert_same_losses(uninterrupted("single"), crashed)
    same_checkpoints(uninterrupted("single"), crashed)


def test_async_save_with_tensor_parallel_ranks(tmp_path, uninterrupted):
    """Two ranks, each forking its writer; publication waits for both."""
    run = tmp_path / "tp2"
    out = train(2, f"run.dir={run}", *ASYNC, *LAYOUTS["tp2"][1])
    assert out.count("published") == STEPS // 2
    assert_same_losses(uninterrupted("tp2"), run)
    same_checkpoints(uninterrupted("tp2"), run)


def _session(sid: int) -> list[str]:
    """Command lines of the processes in session `sid` (the run's; orphans keep their session)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[3]) == sid:
                    found.append((entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()[:120])
            except (OSError, IndexError, ValueError):
                continue
    return found


@pytest.mark.parametrize("async_save", ["false", "true"])
def test_killed_run_leaves_no_writer_behind(tmp_path, async_save):
    run = tmp_path / "run"
    proc = start(1, f"run.dir={run}", "train.steps=500", "train.checkpoint_every=1", f"train.async_save={async_save}")
    try:
        deadline = time.monotonic() + 180
        while 3 not in logged_steps(run) and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.02)
        assert 3 in logged_steps(run), "run did not reach step 3"
        assert len(_session(proc.pid)) > 1  # the writer Manager is running beside the trainer
        os.kill(proc.pid, signal.SIGKILL)  # the trainer only: its helpers must go by themselves
        proc.wait()
        deadline = time.monotonic() + 10
        while _session(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _session(proc.pid) == []
    finally:
        _reap(proc)
