"""Faults: an injected NaN is skipped with the optimizer untouched (or stops the run), a stalled step
is reported by the watchdog with rank, step and stacks, SIGTERM checkpoints and exits cleanly.

Would catch: a NaN step that still moves weights or AdamW moments, a skip that is not counted, a hang
with no report, a preemption signal that loses the work since the last checkpoint."""
import signal
import time

from tapa_scale.train.checkpoint import full_state_dict, latest_checkpoint
from tapa_scale.train.sharded import read_full_tensors
from tests.checkpoint.harness import finish, logged_steps, records, start, train


def test_nan_step_is_skipped_and_optimizer_untouched(tmp_path):
    run = tmp_path / "nan"
    out = train(1, f"run.dir={run}", "train.steps=3", "train.checkpoint_every=1", "train.fault_nan_at=3",
                "train.on_nonfinite=skip")
    assert "step 3: non-finite loss or gradient; update skipped" in out
    recs = records(run)
    assert recs[2]["loss"] != recs[2]["loss"] and recs[2]["skipped_steps"] == 1  # NaN, counted
    before, after = run / "checkpoints" / "step_00000002", run / "checkpoints" / "step_00000003"
    a, b = read_full_tensors(before / "dist"), read_full_tensors(after / "dist")
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)  # weights and moments
    assert not (before / "model.safetensors").exists()  # one format: full weights are gathered from dist/
    assert full_state_dict(before).keys() == full_state_dict(after).keys()


def test_nan_stops_the_run_under_stop_policy(tmp_path):
    out = train(1, f"run.dir={tmp_path / 'stop'}", "train.steps=3", "train.fault_nan_at=2",
                "train.on_nonfinite=stop", "train.final_checkpoint=false", expect=2)
    assert "error: step 2: non-finite loss or gradient and train.on_nonfinite=stop" in out
    assert "Traceback" not in out


def test_watchdog_reports_stall_and_sigterm_saves_then_exits(tmp_path):
    run = tmp_path / "stall"
    proc = start(1, f"run.dir={run}", "train.steps=200", "train.watchdog_s=1", "train.fault_stall_at=2",
                 "train.fault_stall_s=4")
    deadline = time.monotonic() + 180
    while 3 not in logged_steps(run) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out = finish(proc, timeout=120)
    assert "watchdog: rank 0 stalled in step 2" in out and "in stall" in out  # the stack shows where
    last = latest_checkpoint(run)
    assert last is not None and int(last.name[5:]) == logged_steps(run)[-1] < 200
    assert "checkpoint of step" in out and "exiting" in out


def test_a_rank_that_stops_taking_part_is_reported_and_the_job_ends(tmp_path):
    # rank 1 sleeps through step 2; rank 0 waits for it in a collective. Both report where they are
    # and the job ends long before the 120 s stall would.
    start_time = time.monotonic()
    out = train(2, f"run.dir={tmp_path / 'hang'}", "train.steps=5", "train.hang_timeout_s=4",
                "train.fault_stall_at=2", "train.fault_stall_rank=1", "train.fault_stall_s=120",
                "train.final_checkpoint=false", expect=1, timeout=100)  # torchrun: a rank failed
    assert time.monotonic() - start_time < 90
    lines = {line.split(" stuck")[0]: line for line in out.splitlines() if line.startswith("hang: rank")}
    assert set(lines) == {"hang: rank 0", "hang: rank 1"}, out[-4000:]
    waiting, sleeper = lines["hang: rank 0"], lines["hang: rank 1"]
    assert "in step 2" in waiting and "in step 2" in sleeper
    # rank 0 waits for rank 1 in the gradient reduction over the two ranks
    assert "in torch.distributed _coalescing_manager, called from start_grad_sync (megatron/" in waiting
    assert "all_reduce over 2 ranks of a float32 tensor" in waiting
    assert "not in torch.distributed; the last collective call, " in sleeper
    assert "in stall" in out  # rank 1's stack shows where it is
