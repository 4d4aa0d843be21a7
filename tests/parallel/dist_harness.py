"""Spawning ranks for the multi-process tests: torchrun on gloo, a free port, a timeout, captured output.

Each test starts its own ranks (nothing here needs the suite itself to run under torchrun); a rank that
hangs is killed by the timeout and the test fails with the ranks' last output.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rank_env(**extra) -> dict:
    """Environment for spawned ranks: the repository importable, one thread per rank (2-core machines)."""
    env = dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
               OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    env.update({k: str(v) for k, v in extra.items()})
    return env


def run(cmd: list, timeout: float, cwd=None, env=None) -> str:
    """Run a command; fail the test with its output tail on a non-zero exit or a timeout."""
    try:
        proc = subprocess.run(cmd, env=env or rank_env(), cwd=cwd or REPO, capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"")[-3000:] if isinstance(e.stdout, bytes) else (e.stdout or "")[-3000:]
        raise AssertionError(f"timed out after {timeout}s: {' '.join(map(str, cmd))}\n{out}") from None
    assert proc.returncode == 0, f"exit {proc.returncode}: {' '.join(map(str, cmd))}\n" \
                                 f"{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}"
    return proc.stdout


def torchrun(nproc: int, script, *args, timeout: float = 240) -> str:
    """`python -m torch.distributed.run --nproc_per_node nproc script args...` on 127.0.0.1."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
           "--master_addr", "127.0.0.1", "--master_port", str(free_port()), str(script), *map(str, args)]
    return run(cmd, timeout)


def read_json(path) -> dict:
    return json.loads(Path(path).read_text())


def launch_layouts(script, out, launches, timeout: float) -> dict:
    """torchrun(nproc, script, out, *layouts) for each (nproc, layouts); a launch that fails leaves its
    layouts without results and its error tail under failures[nproc]."""
    failures = {}
    for nproc, layouts in launches:
        try:
            torchrun(nproc, script, out, *layouts, timeout=timeout)
        except AssertionError as e:
            failures[nproc] = str(e)[-4000:]
    return failures


def layout_result(out, failures: dict, layout: str) -> dict:
    """OUT/<layout>.json written by a rank script, or the test fails with the rank's error (or the launch's)."""
    import pytest

    path = Path(out) / f"{layout}.json"
    if not path.exists():
        errors = sorted(Path(out).glob(f"{layout}.rank*.json"))
        detail = read_json(errors[0])["error"] if errors else "\n".join(failures.values())
        pytest.fail(f"{layout}: no result\n{detail}")
    return read_json(path)
