"""No shared-memory or lock files are left under /dev/shm or /tmp, after a normal exit or a kill.

mosaicml-streaming's StreamingDataset leaves such files behind when its process is killed; the
loader reads shards with streaming's shard reader only, and this test would catch a regression
(e.g. someone switching the loader to StreamingDataset).
"""
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.data.helpers import small_docs, write_jsonl

REPO = Path(__file__).resolve().parents[2]
TMP_PATTERN = re.compile(r"^(pymp-|torch_|streaming|tapa|\d{6}_|.*\.lock$)")

CHILD = """
import itertools, sys
from tapa_scale.data import DataConfig, build_loader
from tapa_scale.data.prepare import prepare_dataset
src, out, mode = sys.argv[1:4]
prepare_dataset([src], out, val=[src], workers=2, progress=False)
loader = build_loader(DataConfig(path=out, seq_len=32, num_workers=2), "train", 2)
batches = iter(loader)
for _ in range(5):
    next(batches)
print("ready", flush=True)
if mode == "hang":
    for _ in batches:
        pass
"""


# Other tests' own files, which a test running beside this one on another pytest worker may be holding
# in /tmp for a moment (tests/checkpoint/harness.py's run logs)
OTHER_TESTS = re.compile(r"^tapa-run-.*\.log$")


def _snapshot(private: Path):
    """(/dev/shm entries, matching /tmp entries, everything in the child's own TMPDIR)."""
    shm = set(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else set()
    tmp = {n for n in os.listdir("/tmp") if TMP_PATTERN.match(n) and not OTHER_TESTS.match(n)}
    return shm, tmp, set(os.listdir(private)) if private.is_dir() else set()


def _start(tmp_path, mode):
    src = write_jsonl(tmp_path / "in.jsonl", small_docs(6, 4000))
    (tmp_path / "tmp").mkdir(exist_ok=True)  # the child's TMPDIR: whatever it leaves there is its own
    env = dict(os.environ, PYTHONPATH=str(REPO), TMPDIR=str(tmp_path / "tmp"))
    # stderr goes to a file: reading a pipe of a process that never exits would block the test
    with open(tmp_path / "stderr.txt", "w") as err:
        return subprocess.Popen([sys.executable, "-c", CHILD, str(src), str(tmp_path / "out"),
                                 mode], env=env, stdout=subprocess.PIPE, stderr=err, text=True,
                                start_new_session=True)


def _assert_clean(before, private: Path):
    shm, tmp, own = _snapshot(private)
    assert not shm - before[0], f"left in /dev/shm: {sorted(shm - before[0])}"
    assert not tmp - before[1], f"left in /tmp: {sorted(tmp - before[1])}"
    assert not own, f"left in the child's TMPDIR: {sorted(own)}"


def _kill(proc):
    """Kill the child's whole process group (it and its loader workers), as a crash would."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


def test_normal_exit_leaves_nothing(tmp_path):
    before = _snapshot(tmp_path / "tmp")
    proc = _start(tmp_path, "exit")
    try:
        out, _ = proc.communicate(timeout=90)
    finally:
        _kill(proc)
    assert proc.returncode == 0 and "ready" in out, (tmp_path / "stderr.txt").read_text()[-2000:]
    _assert_clean(before, tmp_path / "tmp")


def test_killed_run_leaves_nothing(tmp_path):
    before = _snapshot(tmp_path / "tmp")
    proc = _start(tmp_path, "hang")
    try:
        lines = iter(proc.stdout.readline, "")  # until "ready" or end of output
        assert "ready" in (line.strip() for line in lines), \
            (tmp_path / "stderr.txt").read_text()[-2000:]
    finally:
        _kill(proc)
    time.sleep(0.5)
    _assert_clean(before, tmp_path / "tmp")
