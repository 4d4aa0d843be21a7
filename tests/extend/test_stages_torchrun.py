"""Staged extension under torchrun: the CI stages file on two processes, the short stage data parallel
(DP 2) and the long one context parallel (CP 2, restored from the DP 2 checkpoint with its optimizer
state), killed with SIGKILL inside the long stage and rerun.

Would catch: a restore that cannot reshard the AdamW state from DP 2 into CP 2, a resumed CP stage
whose losses drift from the uninterrupted run's, a killed torchrun stage that restarts from the restore
instead of its own checkpoint or loses steps."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

from tests.extend.test_stages import CI, SMALL, records
from tests.helpers import ROOT, run_cli

CP2 = "long:parallel.cp=2"  # the short stage runs DP 2 on the two processes, the long one CP 2


def test_a_torchrun_extension_that_changes_cp_resumes_bit_identically_after_kill_9(tmp_path):
    ref, crashed = tmp_path / "ref", tmp_path / "crashed"
    run_cli("tools/extend_context.py", "--stages", str(CI), "--nproc", "2", f"run.dir={ref}", *SMALL, CP2,
            timeout=900)
    # the crashed run starts where the reference finished its short stage: that stage's directory and a
    # stages.json with it done and the long stage pending
    crashed.mkdir()
    shutil.copytree(ref / "short", crashed / "short")
    table = json.loads((ref / "stages.json").read_text())
    table["stages"][1].update(status="pending", checkpoint=None, tokens=0, cumulative_tokens=0)
    (crashed / "stages.json").write_text(json.dumps(table))
    cmd = [sys.executable, "tools/extend_context.py", "--stages", str(CI), "--nproc", "2", f"run.dir={crashed}",
           *SMALL, CP2]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metrics = crashed / "long" / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and not (metrics.exists() and metrics.read_text().count("\n") >= 3):
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the launcher and both ranks
    proc.wait()
    assert metrics.read_text().count("\n") < 4, "the stage finished before it was killed"
    run_cli(*cmd[1:], timeout=900)
    for stage in ("short", "long"):
        a, b = records(ref, stage), records(crashed, stage)
        assert [r["step"] for r in b] == list(range(1, 5)), stage
        assert [(r["loss"], r["lr"]) for r in a] == [(r["loss"], r["lr"]) for r in b], stage
    saved = (crashed / "long" / "config.yaml").read_text()
    assert "cp: 2" in saved and "init_optimizer: true" in saved
    from tapa_scale.train.checkpoint import latest_checkpoint, read_state

    short, long = (read_state(latest_checkpoint(crashed / s))["layout"] for s in ("short", "long"))
    assert (short["dp"], short["cp"], long["dp"], long["cp"]) == (2, 1, 1, 2), (short, long)
