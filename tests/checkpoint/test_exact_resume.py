"""Exact resume after crashes: kill -9 a run at a seeded step and rerun the same command; every logged
loss (and lr, tokens, the final validation loss) equals the uninterrupted run's in the same layout, bit
for bit. One process, and two processes under torchrun for DP=2, TP=2, PP=2 and CP=2. In one process and
DP=2 the resumed run is crashed a second time, rank 0 killed in the middle of publishing a checkpoint,
and rerun again (a resume of a resume, past a half-published save); the model-parallel layouts resume
once (their sharded state is the same code path a second time). The kill steps are drawn by
random.Random(crc32 of the layout name): the same in every run of the suite (a failure reproduces),
different between layouts; a failure's story line names them.

Would catch: a resume that restarts or skips data, forgets RNG or optimizer state, or quietly starts
from scratch (each rerun must print its first step right after the newest checkpoint); a checkpoint
published before every rank finished, a half-written checkpoint taken for a complete one; state that
only one tensor-, pipeline- or context-parallel rank restores."""
import random
import zlib

import pytest

from tapa_scale.train.checkpoint import checkpoint_dir as ckpt_dir

from tests.checkpoint.harness import (LAYOUTS, RUN, STEPS, assert_same_losses, checkpoint_steps, kill_after,
                                      logged_steps, printed_steps, start, train)

KILLED_IN_SAVE = {"single", "dp2"}  # crashed a second time, in a save; the others resume once
RESUMED = ("single", "dp2", "tp2", "pp2", "cp2", "dp2-zero", "dp2-tp2-zero")


def newest(run_dir) -> int:
    steps = checkpoint_steps(run_dir)
    return steps[-1] if steps else 0


@pytest.mark.parametrize("layout", RESUMED)
def test_killed_runs_resume_bit_identically(tmp_path, uninterrupted, layout):
    nproc, overrides = LAYOUTS[layout]
    reference = uninterrupted(layout)
    crashed = tmp_path / "crashed"
    args = [f"run.dir={crashed}", *RUN, *overrides]
    rng = random.Random(zlib.crc32(layout.encode()))  # fixed per layout: not PYTHONHASHSEED- or time-dependent
    first_kill = rng.randint(3, 5)  # after the first checkpoint (step 2)
    kill_after(start(nproc, *args), crashed, first_kill)
    resumed_from = newest(crashed)
    story = f"{layout}: killed after step {first_kill}, newest checkpoint {resumed_from}"
    assert resumed_from >= 2 and logged_steps(crashed)[-1] < STEPS, story

    if layout in KILLED_IN_SAVE:
        # rank 0 dies while publishing the next checkpoint (every shard written, manifest hashed)
        out = train(nproc, *args, "train.fault_kill_in_save=manifest", expect=-9 if nproc == 1 else 1)
        assert "fault injection: killing rank during checkpoint save" in out, story
        assert printed_steps(out)[0] == resumed_from + 1, (story, printed_steps(out))
        assert newest(crashed) == resumed_from, story  # the half-published save is not a checkpoint
        story += f"; killed in the save of step {resumed_from + 2}"
    resumed_again = newest(crashed)
    story += f", newest checkpoint {resumed_again}"

    out = train(nproc, *args)
    assert printed_steps(out) == list(range(resumed_again + 1, STEPS + 1)), (story, printed_steps(out))
    assert f"checkpoint: resuming from {ckpt_dir(crashed, resumed_again)} (step {resumed_again}," in out, story
    if layout in KILLED_IN_SAVE:
        assert "ignoring partial checkpoint" in out and ".tmp" in out, story
    assert_same_losses(reference, crashed)
