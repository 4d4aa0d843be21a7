"""Exact resume after crashes: kill -9 at a random step, rerun the same command, and again (this time
killed in the middle of a save); every logged loss equals the uninterrupted run's, bit for bit.

Would catch: a resume that restarts or skips data, forgets RNG or optimizer state, a checkpoint
published before every rank finished, a half-written checkpoint taken for a complete one."""
import random

import pytest

from tests.checkpoint.harness import assert_same_losses, kill_after, start, train

STEPS = 6


@pytest.mark.parametrize("nproc,layout", [(1, []), (2, [])], ids=["single", "dp2"])
def test_kill_resume_twice_is_bit_identical(tmp_path, nproc, layout):
    common = [f"train.steps={STEPS}", "train.checkpoint_every=2", *layout]
    reference, crashed = tmp_path / "reference", tmp_path / "crashed"
    train(nproc, f"run.dir={reference}", *common)
    kill_at = random.Random(nproc).choice([3, 4])  # a step after the first checkpoint, before the second/third
    proc = start(nproc, f"run.dir={crashed}", *common)
    kill_after(proc, crashed, kill_at)
    # second crash: rank 0 dies while publishing the next checkpoint (shards written, manifest hashed)
    out = train(nproc, f"run.dir={crashed}", *common, "train.fault_kill_in_save=manifest", expect=-9 if nproc == 1 else 1)
    assert "fault injection: killing rank during checkpoint save" in out
    out = train(nproc, f"run.dir={crashed}", *common)
    assert "ignoring partial checkpoint" in out and ".tmp" in out
    assert_same_losses(reference, crashed)
