"""Resharding on load: a checkpoint written in one parallel layout is resumed in another (TP 2->1 and
1->2, PP 2->1, DP 2->1 and 1->2; with megatron's distributed optimizer DP 2->1, 1->2 and 4->2 and TP
2->1, into and out of torch's AdamW; the same global batch of 4 sequences), and the run continues
with the losses of the run that kept its layout, on the same samples; what cannot be resharded (the
model's shape, the sequence length) or a data position that does not match the checkpoint's
fingerprint of its next batch is refused in one line before training starts.

Would catch: tensor-parallel shards glued back at wrong offsets (the SwiGLU [gate; up] rows, the
grouped QKV rows), pipeline stages' layers renumbered wrongly, optimizer moments not following their
parameters (or a distributed optimizer's flat slice written at the wrong place of its parameter), a data cursor counted per rank instead of globally (samples repeated or skipped after a
data-parallel change), a resume that loads a model of another shape or trains on other samples."""
import json
import shutil

import pytest

from tapa_scale.train import checkpoint as ckpt
from tests.checkpoint.harness import (LAYOUTS, RUN, STEPS, checkpoint_state, checkpoint_steps, data_parallel_size,
                                      printed_steps, records, train)

# fp32 sums in another order (2 ranks, or accumulated micro-batches) and 4 AdamW steps on top: the
# runs differ by < 1e-6 relative (measured: 5e-7 after TP 1<->2, 6e-8 after DP 2<->1, 0 after PP 2->1);
# a wrong shard, or another batch, moves the loss by far more (consecutive losses after step 4 differ
# by 1e-2 to 3e-2 relative).
RTOL = 1e-5
RESUME_AT = 4  # resume from the checkpoint of step 4 of 8

CASES = [("tp2", "single"), ("single", "tp2"), ("pp2", "single"), ("dp2", "single"), ("single", "dp2"),
         # the distributed optimizer's moment slices: DP 2 -> 1 into torch's AdamW, torch's into DP=2
         # slices, DP 4 -> 2 and TP 2 -> 1 sharded on both sides
         ("dp2-zero", "single"), ("single", "dp2-zero"), ("dp4-zero", "dp2-zero"), ("dp2-tp2-zero", "dp2-zero")]


def copy_until(source, target, step):
    """A copy of a finished run as it was right after checkpoint `step` (later checkpoints removed)."""
    shutil.copytree(source, target)
    for later in (s for s in checkpoint_steps(target) if s > step):
        shutil.rmtree(ckpt.checkpoint_dir(target, later))
    return target


def close(a, b):
    return abs(a - b) <= RTOL * abs(a)


@pytest.mark.parametrize("saved,resumed", CASES, ids=[f"{a}-to-{b}" for a, b in CASES])
def test_resume_in_another_layout_continues_on_the_same_samples(tmp_path, uninterrupted, saved, resumed):
    reference = uninterrupted(saved)
    run = copy_until(reference, tmp_path / "run", RESUME_AT)
    nproc, overrides = LAYOUTS[resumed]
    out = train(nproc, f"run.dir={run}", *RUN, *overrides)
    assert "resharded into" in out
    assert printed_steps(out) == list(range(RESUME_AT + 1, STEPS + 1)), printed_steps(out)

    a, b = records(reference), records(run)
    assert [r["step"] for r in b] == list(range(1, STEPS + 1))
    assert [(r["tokens"], r["lr"]) for r in a] == [(r["tokens"], r["lr"]) for r in b]
    for x, y in zip(a[RESUME_AT:], b[RESUME_AT:]):
        assert close(x["loss"], y["loss"]), (saved, resumed, x, y)
    # validation reads the first eval_batches micro-batches of each data-parallel rank: after a DP change
    # compare with the run that kept the new layout (DP does not change the initial weights; PP does)
    dp_changed = data_parallel_size(saved) != data_parallel_size(resumed)
    same_eval = records(uninterrupted(resumed) if dp_changed else reference)[-1]
    assert close(same_eval["val_loss"], b[-1]["val_loss"]), (same_eval, b[-1])

    # every checkpoint after the resume stands at the same global sample, with the same next batch, as
    # the run that kept its layout: no sample repeated or skipped
    for step in range(RESUME_AT + 2, STEPS + 1, 2):
        x = checkpoint_state(ckpt.checkpoint_dir(reference, step))
        y = checkpoint_state(ckpt.checkpoint_dir(run, step))
        assert (x["step"], x["tokens"], x["data"], x["next_batch"]) == \
            (y["step"], y["tokens"], y["data"], y["next_batch"]), (step, x, y)
        assert y["layout"]["world_size"] == nproc and y["layout"] != x["layout"]
        assert x["data"]["samples_seen"] == 4 * step  # a global cursor: 4 sequences per step


def moved_cursor(run):
    """Edit the checkpoint's data cursor one global batch ahead (and re-hash its manifest, so that only
    the next-batch fingerprint can tell): as if the loader state were saved wrongly."""
    last = ckpt.checkpoint_dir(run, RESUME_AT)
    state = checkpoint_state(last)
    state["data"]["samples_seen"] += 4
    (last / "state.json").write_text(json.dumps(state, indent=1))
    ckpt.write_manifest(last)
    return "the next batch's samples differ from the checkpoint's fingerprint"


# (layout, overrides, message): the moved cursor runs in two processes, where only rank 0 compares the
# fingerprint; every rank must refuse by itself (none left waiting in a collective for a peer that quit):
# each prints the refusal. torchrun looks at its workers every 10 s, so that on a loaded machine it does
# not stop the slower rank before that rank has had its say (stopping it after that is harmless).
REFUSED = {
    "hidden_size": ("single", ["model.hidden_size=32"], "cannot resume with model.hidden_size=32"),
    "seq_len": ("single", ["data.seq_len=16"], "cannot resume with data.seq_len=16"),
    "moved_cursor": ("dp2", [], None),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_what_cannot_continue_is_refused_in_one_line(tmp_path, uninterrupted, case):
    layout, overrides, message = REFUSED[case]
    run = copy_until(uninterrupted(layout), tmp_path / "run", RESUME_AT)
    if case == "moved_cursor":
        message = moved_cursor(run)
    before = (run / "metrics.jsonl").read_text()
    nproc, layout_overrides = LAYOUTS[layout]
    launcher = ("--monitor-interval", "10") if nproc > 1 else ()
    out = train(nproc, f"run.dir={run}", *RUN, *layout_overrides, *overrides, launcher=launcher,
                expect=2 if nproc == 1 else 1)  # torchrun's own exit status is 1 when a worker fails
    errors = [line for line in out.splitlines() if line.startswith("error:")]
    assert len(errors) == nproc and len(set(errors)) == 1 and message in errors[0], out[-3000:]
    assert str(ckpt.checkpoint_dir(run, RESUME_AT)) in errors[0]  # names the checkpoint
    assert printed_steps(out) == []  # refused before the first step
    assert out.count("Traceback") == nproc - 1  # none from a rank (torchrun reports the failure with one)
    assert (run / "metrics.jsonl").read_text() == before
