"""The sweep runner on a real training run, its timeout, and the planning tool's command line.

Would catch: a measurement read from the start-up record, step parts that no longer add up, a hung
run that is not killed, predictions that cannot be set beside a measured run, a bad hardware name
that surfaces as a traceback."""
import json
from dataclasses import replace
import sys
from pathlib import Path

import pytest

from tapa_scale.config import load_config
from tapa_scale.scaling.hardware import load_hardware
from tapa_scale.scaling.layout import layout_of, shape_of
from tapa_scale.scaling.sweep import RunSpec, compare, measure, summary

ROOT = Path(__file__).resolve().parents[2]
SMALL = ["model.num_layers=2", "data.seq_len=64", "train.micro_batch_size=4", "train.threads=1",
         "train.eval_batches=1", "train.warmup_steps=1"]


def test_measure_a_real_run_and_compare(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    spec = RunSpec(name="tiny", config="configs/tiny.yaml", nproc=1, overrides=SMALL)
    m = measure(spec, tmp_path, steps=4, log_every=2, timeout_s=300, common=[], log=lambda *_: None)
    assert "error" not in m, m
    assert m["step_time_s"] > 0 and m["peak_memory_gb"] > 0.1 and m["vocab_size"] > 0
    # the record after the first: its parts add up to its step time (the training loop's accounting)
    assert sum(m["parts"].values()) == pytest.approx(m["step_time_s"], rel=1e-6)
    assert not (tmp_path / "tiny" / "checkpoints").exists()
    cfg = load_config("configs/tiny.yaml", SMALL)
    row = compare(m, shape_of(cfg.model, 64, m["vocab_size"]), layout_of(cfg, 1), load_hardware("h100_sxm"))
    assert row["predicted_step_time_s"] > 0 and row["predicted_memory_gb"] > 0
    assert summary([row])["counted"] == 1


def test_a_run_past_its_timeout_is_killed(tmp_path):
    launcher = f"{sys.executable} -c 'import time; time.sleep(60)'"
    spec = RunSpec(name="hung", config="configs/tiny.yaml")
    m = measure(spec, tmp_path, steps=2, log_every=1, timeout_s=1, common=[], launcher=launcher,
                log=lambda *_: None)
    assert m["error"] == "exit timeout" and m["wall_s"] < 30


FAKE_TRAINER = """
import json, os, sys
from pathlib import Path
args = dict(a.split("=", 1) for a in sys.argv[1:] if "=" in a)
run = Path(args["run.dir"])
live = os.environ.get("MALLOC_MMAP_THRESHOLD_") == "131072"
rows = [{"step": s, "step_time_s": 1.0, "time_forward_backward_s": 1.0, "peak_memory_gb": 2.0 if live else 3.0}
        for s in range(1, int(args["train.steps"]) + 1)]
(run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\\n" for r in rows))
(run / "accounting.json").write_text(json.dumps({"vocab_size": 8192}))
(run / "steps").write_text(args["train.steps"])
"""


def test_the_memory_pass_reruns_with_every_large_allocation_mapped(tmp_path):
    script = tmp_path / "fake_trainer.py"
    script.write_text(FAKE_TRAINER)
    spec = RunSpec(name="fake", config="configs/tiny.yaml")
    m = measure(spec, tmp_path, steps=8, log_every=2, timeout_s=60, common=[], launcher=f"{sys.executable} {script}",
                log=lambda *_: None, memory_pass=True, keep=True, host_probe=True)
    assert m["peak_memory_gb"] == 2.0 and m["peak_rss_default_heap_gb"] == 3.0 and m["step_time_s"] == 1.0
    assert (tmp_path / "live_bytes" / "fake" / "steps").read_text() == "3"
    # the host ran at half its calibrated speed: the adjusted error scales the prediction by 2
    cfg = load_config("configs/tiny.yaml", [])
    hw = replace(load_hardware("h100_sxm"), device="cpu", compute_dtype="fp32", host_mix_s=m["host_mix_s"] / 2)
    row = compare(m, shape_of(cfg.model, 128, 8192), layout_of(cfg, 1), hw)
    assert row["host_slowdown"] == pytest.approx(2.0)
    assert row["step_error_host_adjusted"] == pytest.approx(2 * (1 + row["step_error"]) - 1)
    assert summary([{**row, "counted": True}])["median_abs_step_error_host_adjusted"] == \
        pytest.approx(abs(row["step_error_host_adjusted"]))


def test_plan_command_line(tmp_path, capsys, monkeypatch):
    import importlib.util
    spec = importlib.util.spec_from_file_location("scaling_study", ROOT / "tools" / "scaling_study.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    monkeypatch.chdir(ROOT)
    out = tmp_path / "plan.json"
    args = ["plan", "--config", "configs/llama3_8b_8k.yaml", "--nodes", "2", "--json", str(out)]
    assert tool.main(args + ["--vocab", "128256"]) == 0
    rows = json.loads(out.read_text())["layouts"]
    assert rows and all(r["tp"] * r["pp"] * r["cp"] * r["dp"] == 16 for r in rows)
    capsys.readouterr()
    assert tool.main(args + ["--hardware", "h900"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("error: hardware 'h900'")


def test_figures_from_rows(tmp_path):
    from tapa_scale.scaling.sweep import figures
    row = dict(config="configs/tiny.yaml", seq_len=128, tokens_per_step=4096, counted=True, peak_memory_gb=1.0,
               predicted_memory_gb=0.9)
    rows = [dict(row, name="dp1", nproc=1, step_time_s=1.0, predicted_step_time_s=0.9),
            dict(row, name="dp2", nproc=2, step_time_s=0.6, predicted_step_time_s=0.5)]
    paths = figures(rows, tmp_path)
    assert [p.name for p in paths] == ["predicted_vs_measured.png", "scaling.png"]
    assert all(p.stat().st_size > 10_000 for p in paths)
