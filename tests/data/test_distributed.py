"""Per-rank disjointness and exact resume with torchrun + gloo, compared with one process."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

from tests.data.test_resume import reference

SCRIPT = Path(__file__).with_name("dist_loader_script.py")
REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(nproc, *args, timeout=180):
    env = dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
               OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), str(SCRIPT),
           *map(str, args)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def test_torchrun_two_ranks_then_resume_on_one_and_two(tiny_dataset, tmp_path):
    # 2 ranks x micro 2: 3 batches, then a fresh loader resumes for 3 more (phase 2)
    torchrun(2, tiny_dataset, tmp_path / "two.json", 3, 2)
    two = json.loads((tmp_path / "two.json").read_text())
    assert two["state"]["samples_seen"] == 24
    ref = reference(tiny_dataset, 40)
    merged = {int(g): row for phase in ("phase1", "phase2") for g, row in two[phase].items()}
    assert sorted(merged) == list(range(24)) and [merged[g] for g in range(24)] == ref[:24]
    # the 2-rank state resumed by 1 rank (micro 2): samples 24..31, then 32..39
    (tmp_path / "state.json").write_text(json.dumps(two["state"]))
    torchrun(1, tiny_dataset, tmp_path / "one.json", 2, 2, tmp_path / "state.json")
    one = json.loads((tmp_path / "one.json").read_text())
    got = {int(g): row for phase in ("phase1", "phase2") for g, row in one[phase].items()}
    assert sorted(got) == list(range(24, 32)) and [got[g] for g in range(24, 32)] == ref[24:32]
    assert one["state"]["samples_seen"] == 32
