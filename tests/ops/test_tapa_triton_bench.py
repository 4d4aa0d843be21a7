"""tools/bench_attention.py without a GPU: its FLOP formula, its RoPE, its refusal on CPU, and one pass of
its measuring loop with CUDA timing replaced by a wall clock (kernel in the Triton interpreter, fp32).

Would catch: a wrong causal FLOP count, a RoPE that differs from tapa_scale.ops.rope, a crash trace
instead of a message on CPU, a cell loop that dies on a missing backend instead of recording it.
"""
from __future__ import annotations

import importlib.util
import os
import sys
import time
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_attention", ROOT / "tools" / "bench_attention.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_causal_flops(bench):
    assert bench.causal_flops(2, 32, 8192, 128, "fwd") == 4 * 2 * 32 * 8192**2 * 128 / 2
    assert bench.causal_flops(1, 1, 10, 8, "fwd_bwd") == 3.5 * 2 * 100 * 8


def test_rope_matches_the_package(bench, monkeypatch):
    from tapa_scale.ops.rope import apply_rotary, rope_inv_freq
    monkeypatch.setattr(bench, "DEVICE", "cpu")
    monkeypatch.setattr(bench, "DTYPE", torch.float32)
    x = torch.randn(2, 3, 50, 16)
    cos, sin = bench.rope_tables(50, 16, "cpu")
    want = apply_rotary(x, torch.arange(50), rope_inv_freq(16, 1e4))
    torch.testing.assert_close(bench.rotate(x, cos, sin), want, atol=1e-5, rtol=1e-5)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU refusal")
def test_cpu_refusal_is_a_message(bench, capsys):
    assert bench.main(["--lengths", "128"]) == 2
    err = capsys.readouterr().err
    assert "needs a CUDA GPU" in err and "Traceback" not in err


class _WallEvent:
    def __init__(self, enable_timing=True):
        self.t = None

    def record(self):
        self.t = time.perf_counter()

    def elapsed_time(self, other):
        return (other.t - self.t) * 1e3


@pytest.mark.skipif(torch.cuda.is_available(), reason="the GPU runs the real bench")
def test_cells_run_and_record_errors_on_cpu(bench, monkeypatch):
    for name, fake in [("Event", _WallEvent), ("synchronize", lambda: None), ("memory_allocated", lambda: 0),
                       ("max_memory_allocated", lambda: 0), ("reset_peak_memory_stats", lambda: None),
                       ("empty_cache", lambda: None)]:
        monkeypatch.setattr(bench.torch.cuda, name, fake)
    monkeypatch.setattr(bench, "DEVICE", "cpu")
    monkeypatch.setattr(bench, "DTYPE", torch.float32)
    monkeypatch.setattr(bench, "time_ms", lambda step: (step(), 1.0)[1])
    rows = [bench.run_cell(m, 64, 1, 2, 32, mode)
            for m in ("tapa_triton", "tapa_reference", "sdpa_flash") for mode in ("fwd", "fwd_bwd")]
    assert [r["status"] for r in rows[:4]] == ["ok"] * 4
    assert rows[0]["tflops"] == round(bench.causal_flops(1, 2, 64, 32, "fwd") / 1.0 / 1e9, 1)
    assert all(r["status"] in ("ok", "error") for r in rows[4:])  # flash on CPU: recorded, not raised
    rows[4].update(status="ok", ms=2.0, attn_ms=1.5)
    (ratio,) = bench.ratios(rows[:1] + rows[4:5])
    assert ratio["speed_ratio"] == 2.0 and ratio["speed_ratio_vs_attn_only"] == 1.5
    docs = [bench.run_cell(m, 64, 1, 2, 32, "fwd_bwd") for m in ("tapa_triton_docs", "rope_flex_docs")]
    assert [r["status"] for r in docs] == ["ok", "ok"], docs
    docs[0]["ms"], docs[1]["ms"] = 1.0, 3.0
    assert bench.ratios(docs) == [dict(N=64, mode="fwd_bwd", vs="rope_flex_docs", speed_ratio=3.0)]


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU the script runs for real, for minutes")
def test_gpu_checks_script_writes_into_the_given_folder_and_keeps_partial_results(tmp_path):
    """tools/gpu_checks.sh with a deadline too short for the benchmark: it must still end cleanly, say
    what it skipped, and leave every log and result of the steps that ran in the folder it was given
    (a relative path, resolved from the caller's directory), with an archive of them all beside them.
    Would catch a step that writes elsewhere or a shell error that ends the run early."""
    import subprocess
    import tarfile

    env = dict(os.environ, GPU_CHECKS_SECONDS="40", SHARDS="2", PYTHON=sys.executable, TMPDIR=str(tmp_path))
    env.pop("OUT", None)
    run = subprocess.run(["bash", str(ROOT / "tools/gpu_checks.sh"), "results"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    out = tmp_path / "results"
    files = {p.name for p in out.iterdir()}
    expected = {"env.txt", "numerics.json", "numerics.log", "tests_gpu.0.log", "tests_gpu.json", "summary.txt"}
    assert expected | {"gpu_checks.tar.gz"} <= files and ".archive.tmp" not in files, files
    with tarfile.open(out / "gpu_checks.tar.gz") as tar:
        packed = {m.name.removeprefix("./") for m in tar.getmembers()} - {"."}
    assert packed == files - {"gpu_checks.tar.gz"}, (packed, files)
    summary = (out / "summary.txt").read_text()
    assert "skip bench (deadline)" in summary and "numerics exit 0" in summary, summary
