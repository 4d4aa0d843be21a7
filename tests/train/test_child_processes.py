"""Checkpoint writer processes die with the trainer that started them (train/child_processes.py).

Would catch: a writer forked in the instant its trainer dies, which gets its death signal set after the
trainer is gone (the signal never comes) and so keeps writing into a run directory that a restarted run
is about to use."""
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from tapa_scale.train.child_processes import die_with_parent

REPO = Path(__file__).resolve().parents[2]


def test_a_child_of_a_living_parent_carries_on():
    pid = os.fork()
    if pid == 0:
        die_with_parent(os.getppid())
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_a_child_whose_parent_died_before_the_request_exits(tmp_path):
    # A parent forks a child and exits at once; the child asks for the death signal only after that.
    survived = tmp_path / "survived"
    script = textwrap.dedent(f"""
        import os, sys, time
        from tapa_scale.train.child_processes import die_with_parent
        parent = os.getpid()
        pid = os.fork()
        if pid:
            print(pid, flush=True)
            os._exit(0)
        while os.getppid() == parent:
            time.sleep(0.01)
        die_with_parent(parent)
        open({str(survived)!r}, "w").close()
    """)
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=60,
                         env=dict(os.environ, PYTHONPATH=str(REPO)))
    child = int(out.stdout.split()[0])
    deadline = time.monotonic() + 30
    while Path(f"/proc/{child}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not Path(f"/proc/{child}").exists(), "the orphaned child is still running"
    assert not survived.exists(), "the orphaned child carried on after its parent had died"
