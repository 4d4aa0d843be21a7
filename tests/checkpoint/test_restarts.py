"""Recovering without a person: torchrun's restart reruns a crashed two-process run, which resumes by
itself from its newest checkpoint and ends with the losses of a run that never crashed, bit for bit;
train.on_nonfinite=rollback puts the model and the optimizer back to the newest checkpoint after a NaN
step while the step count and the data position move on (TP=2, and DP=2 with the distributed optimizer).

Would catch: a restarted attempt that starts from scratch or from a wrong checkpoint, or that trips
over what the crashed attempt left behind (such as its gloo addresses in torchrun's store); a rollback
that restores only the weights (or only one rank's shards), leaves the poisoned step's update in place,
or replays or skips batches."""
import math

import pytest

from tapa_scale.train import checkpoint as ckpt
from tapa_scale.train.sharded import read_full_tensors
from tests.checkpoint.harness import (LAYOUTS, RUN, STEPS, assert_same_losses, checkpoint_state, printed_steps,
                                      records, train)


def test_torchrun_restart_resumes_by_itself(tmp_path, uninterrupted):
    run = tmp_path / "restarted"
    nproc, overrides = LAYOUTS["dp2"]
    reference = uninterrupted("dp2")
    out = train(nproc, f"run.dir={run}", *RUN, *overrides, "train.fault_crash_at=3",
                launcher=("--max-restarts", "1"))
    assert "fault injection: rank 0 crashing after step 3" in out
    # the first attempt printed steps 1-3 and died; the second started right after checkpoint 2
    assert printed_steps(out) == [1, 2, 3, *range(3, STEPS + 1)], printed_steps(out)
    assert_same_losses(reference, run)


@pytest.mark.parametrize("layout", ["tp2", "dp2-zero"])
def test_rollback_restores_the_newest_checkpoint_and_moves_on(tmp_path, uninterrupted, layout):
    run, nan_at = tmp_path / "rollback", 4
    nproc, overrides = LAYOUTS[layout]
    out = train(nproc, f"run.dir={run}", "train.steps=5", "train.checkpoint_every=2", "train.global_batch_size=4",
                *overrides, f"train.fault_nan_at={nan_at}", "train.on_nonfinite=rollback")
    assert f"step {nan_at}: rolled back model and optimizer to" in out and "step_00000002" in out
    recs = records(run)
    assert [r["step"] for r in recs] == [1, 2, 3, 4, 5]
    assert math.isnan(recs[3]["loss"]) and not math.isnan(recs[4]["loss"]) and recs[4]["skipped_steps"] == 1

    # checkpoint 4 is written right after the rollback: weights and AdamW moments (every tensor-parallel
    # shard or distributed-optimizer slice, gathered) are those of checkpoint 2, not of step 3
    c2, c3, c4 = (ckpt.checkpoint_dir(run, s) for s in (2, 3, 4))
    assert not c3.exists()
    a, b = read_full_tensors(c2 / "dist"), read_full_tensors(c4 / "dist")
    assert a.keys() == b.keys() and any(k.startswith("optim.") for k in a)
    assert all(torch_equal(a[k], b[k]) for k in a)
    after = read_full_tensors(ckpt.checkpoint_dir(run, 5) / "dist")  # step 5 trains on from there
    assert not all(torch_equal(a[k], after[k]) for k in a)

    # the step count, tokens and data position moved on as in a run without a fault
    s2, s4 = checkpoint_state(c2), checkpoint_state(c4)
    steady = checkpoint_state(ckpt.checkpoint_dir(uninterrupted(layout), 4))
    assert s4["step"] == 4 and s4["skipped_steps"] == 1
    assert (s4["tokens"], s4["data"], s4["next_batch"]) == (steady["tokens"], steady["data"], steady["next_batch"])
    assert s4.get("optimizer_steps") == s2.get("optimizer_steps")


def torch_equal(x, y) -> bool:
    return x.shape == y.shape and bool((x == y).all())
