"""Starting training runs for the checkpoint tests: one process or torchrun on gloo, a free port, a
timeout, and a way to SIGKILL a run once it has logged a given step (a crash, not a clean stop).
Also the parallel layouts the tests run in (the `uninterrupted` fixture in conftest.py shares one
reference run per layout with the whole session)."""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# Tiny model, tiny batches; a step takes well under a second on one core.
TINY = ["--config", "configs/tiny.yaml", "run.progress=false", "run.tensorboard=false", "model.num_layers=2",
        "model.hidden_size=64", "model.num_heads=4", "model.num_kv_heads=4", "model.ffn_hidden_size=128",
        "data.seq_len=32", "train.micro_batch_size=2", "train.warmup_steps=1", "train.log_every=1",
        "train.eval_batches=1", "train.lr=0.01"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def command(nproc: int, *overrides, launcher: tuple = ()) -> list[str]:
    """`python -m tapa_scale.train ...`, under torchrun when nproc > 1 (`launcher`: more torchrun flags,
    e.g. ("--max-restarts", "1"))."""
    if nproc == 1:
        assert not launcher, "launcher flags need torchrun (nproc > 1)"
        return [sys.executable, "-m", "tapa_scale.train", *TINY, *overrides]
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_addr",
            "127.0.0.1", "--master_port", str(free_port()), *launcher, "-m", "tapa_scale.train", *TINY,
            *overrides]


def env() -> dict:
    e = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    return e


def start(nproc: int, *overrides, launcher: tuple = ()) -> subprocess.Popen:
    """The run's output goes to a file, not a pipe: a killed run can leave children (dist_checkpointing's
    writer manager) that would keep a pipe open."""
    log = tempfile.NamedTemporaryFile("w+", prefix="tapa-run-", suffix=".log", delete=False)
    proc = subprocess.Popen(command(nproc, *overrides, launcher=launcher), cwd=REPO, env=env(), stdout=log,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    proc.log_path = log.name
    log.close()
    return proc


def _descendants(pid: int) -> list[int]:
    """Every process below `pid` (torchrun puts its ranks in sessions of their own)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL the run: its launcher, every rank, and helpers, all at once (a node failure)."""
    for pid in [proc.pid, *_descendants(proc.pid)]:
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def _reap(proc: subprocess.Popen) -> str:
    """Kill whatever is left of the run (orphaned helpers) and return its output."""
    for pid in _descendants(proc.pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    out = Path(proc.log_path).read_text()
    os.unlink(proc.log_path)
    return out


def finish(proc: subprocess.Popen, timeout: float = 240, expect: int = 0) -> str:
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"timed out after {timeout}s:\n{_reap(proc)[-4000:]}") from None
    out = _reap(proc)
    assert proc.returncode == expect, f"exit {proc.returncode} (expected {expect}):\n{out[-5000:]}"
    return out


def train(nproc: int, *overrides, timeout: float = 240, expect: int = 0, launcher: tuple = ()) -> str:
    return finish(start(nproc, *overrides, launcher=launcher), timeout, expect)


def logged_steps(run_dir: Path) -> list[int]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line)["step"] for line in path.read_text().splitlines() if line.strip()]


def kill_after(proc: subprocess.Popen, run_dir: Path, step: int, timeout: float = 240) -> str:
    """SIGKILL the whole run (every rank and the launcher) as soon as `step` is in metrics.jsonl; returns
    what the run printed until then."""
    deadline = time.monotonic() + timeout
    while step not in logged_steps(run_dir):
        if proc.poll() is not None:
            raise AssertionError(f"run ended before step {step}:\n{_reap(proc)[-4000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"step {step} not reached in {timeout}s:\n{_reap(proc)[-4000:]}")
        time.sleep(0.05)
    kill_tree(proc)
    proc.wait()
    return _reap(proc)


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def assert_same_losses(reference: Path, resumed: Path) -> None:
    a, b = records(reference), records(resumed)
    assert [r["step"] for r in a] == [r["step"] for r in b], ([r["step"] for r in a], [r["step"] for r in b])
    for x, y in zip(a, b):
        assert x["loss"] == y["loss"] and x["lr"] == y["lr"] and x["tokens"] == y["tokens"], (x, y)
    assert a[-1].get("val_loss") == b[-1].get("val_loss")


def printed_steps(out: str) -> list[int]:
    """The steps a run printed on its console (`step N  loss ...`, rank 0), in order: where a resumed run
    started, and every attempt of a restarted one."""
    return [int(m) for m in re.findall(r"^step (\d+)  loss", out, flags=re.M)]


def checkpoint_state(ckpt: Path) -> dict:
    """A checkpoint's state.json: step, tokens, data cursor, `next_batch` fingerprint, layout."""
    return json.loads((Path(ckpt) / "state.json").read_text())


def checkpoint_steps(run_dir: Path) -> list[int]:
    """Steps of the complete (published) checkpoints of a run, oldest first."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    return sorted(int(p.name[5:]) for p in root.iterdir()
                  if re.fullmatch(r"step_\d{8}", p.name) and (p / "COMPLETE").exists())


# ---------------------------------------------------------------- layouts and shared reference runs

# The same global batch (4 sequences of 32 tokens) in every layout, so that all of them train on the
# same samples per step: one process and TP/PP/CP=2 accumulate 2 micro-batches of 2, DP=2 runs one on
# each rank, DP=4 one sequence per rank. `-zero`: megatron's distributed optimizer (AdamW state sharded
# over the data-parallel ranks).
ZERO = "parallel.distributed_optimizer=true"
LAYOUTS = {
    "single": (1, []),
    "dp2": (2, []),
    "tp2": (2, ["parallel.tp=2"]),
    "pp2": (2, ["parallel.pp=2"]),
    "cp2": (2, ["parallel.cp=2"]),
    "dp2-zero": (2, [ZERO]),
    "dp2-tp2-zero": (4, ["parallel.tp=2", ZERO]),
    "dp4-zero": (4, ["train.micro_batch_size=1", ZERO]),
}


def data_parallel_size(layout: str) -> int:
    nproc, overrides = LAYOUTS[layout]
    model = 1
    for o in overrides:
        key, _, value = o.partition("=")
        model *= int(value) if key in ("parallel.tp", "parallel.pp", "parallel.cp") else 1
    return nproc // model
STEPS = 8
RUN = [f"train.steps={STEPS}", "train.checkpoint_every=2", "train.global_batch_size=4"]


def run_uninterrupted(layout: str, run_dir: Path) -> Path:
    """A finished, never interrupted run with the `RUN` settings in `layout` (checkpoints every 2 steps)."""
    nproc, overrides = LAYOUTS[layout]
    train(nproc, f"run.dir={run_dir}", *RUN, *overrides)
    assert logged_steps(run_dir) == list(range(1, STEPS + 1))
    return run_dir
