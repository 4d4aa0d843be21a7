"""Staged context extension (tapa_scale/extend, tools/extend_context.py) on the CI stages file: a tiny
model at 32 tokens, then 64.

Would catch: a stage whose learning rate, batch or rule does not reach its run (the LR override that is
silently ignored); YaRN's original length following the new seq_len; a restore that forgets the AdamW
step counts; a kill -9 inside a stage that restarts or skips anything; a finished stage changed behind
the run's back; a gate that does not stop the run, or stops it for good; bad stage files that start
training."""
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tapa_scale.config import ConfigError
from tapa_scale.extend import load_plan
from tests.helpers import ROOT, run_cli

CI = ROOT / "configs" / "stages" / "ci.yaml"
SMALL = ["model.num_layers=2", "model.hidden_size=64", "model.num_heads=4", "model.ffn_hidden_size=128",
         "run.tensorboard=false", "train.log_every=1", "run.progress=false"]


def schedule(step: int, peak: float, warmup: int, min_ratio: float, steps: int) -> float:
    """Linear warm-up, then cosine to peak * min_ratio, for 0-based `step`: written out from the stages file."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, steps - warmup))
    return peak * min_ratio + 0.5 * peak * (1 - min_ratio) * (1 + math.cos(math.pi * progress))


def records(run_dir: Path, stage: str) -> list:
    return [json.loads(line) for line in (run_dir / stage / "metrics.jsonl").read_text().splitlines()]


def test_each_track_resolves_its_own_rule_batch_and_schedule():
    tapa = load_plan(CI, SMALL)
    short, long = tapa.stages
    assert (short.seq_len, long.seq_len) == (32, 64) and short.tokens_per_step == long.tokens_per_step == 256
    assert long.cfg.train.global_batch_size == 4 and long.cfg.train.lr == 3e-3 and long.cfg.train.init_optimizer
    assert long.cfg.train.init_from == str(tapa.run_dir / "short") and long.cfg.train.seed == short.cfg.train.seed + 1
    assert long.rule == {} and long.cfg.model.rope == short.cfg.model.rope
    yarn = load_plan(CI, SMALL + ["model.pos_encoding=yarn", "long:train.steps=7"])
    assert yarn.stages[1].cfg.model.rope.scale == 2.0 and yarn.stages[0].cfg.model.rope.scale == 1.0
    assert [s.cfg.model.rope.original_length for s in yarn.stages] == [32, 32]  # the pretraining length
    assert yarn.stages[1].cfg.train.steps == 7 and yarn.stages[0].cfg.train.steps == 4
    rope = load_plan(CI, SMALL + ["model.pos_encoding=rope"])
    assert rope.stages[1].cfg.model.rope.base == 40000 and rope.stages[0].cfg.model.rope.base == 10000


def _stages_file(tmp_path, edit) -> Path:
    raw = yaml.safe_load(CI.read_text())
    raw["base"] = str(ROOT / "configs" / "tiny.yaml")
    edit(raw)
    path = tmp_path / "stages.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.parametrize("edit, overrides, message", [
    (lambda r: r["stages"][1].update(seq_len=32), [], "stage 'long': seq_len=32 does not grow"),
    (lambda r: r["stages"][1].update(warmup=3), [], "stage 'long': unknown key(s) ['warmup']"),
    (lambda r: r["stages"][1]["rule"].update(tapa={"scale": 4}), [], "rule.tapa={'scale': 4}: tapa takes no"),
    (lambda r: r["stages"][1]["rule"].pop("rope"), ["model.pos_encoding=rope"], "rule: no entry for rope"),
    (lambda r: r["stages"][1].update(set={"parallel.tp": 3}), [], "stage 'long'"),
    (lambda r: None, ["longer:train.steps=3"], "unknown stage(s) ['longer']"),
])
def test_bad_stage_files_are_refused_in_one_line(tmp_path, edit, overrides, message):
    path = _stages_file(tmp_path, edit)
    with pytest.raises(ConfigError) as e:
        load_plan(path, SMALL + overrides, world_size=2)
    assert message in str(e.value) and str(path) in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_a_stage_names_its_own_data_sources_and_they_become_part_of_what_it_trained(tmp_path):
    from tapa_scale.extend.runner import StageState

    sources = [{"path": str(tmp_path / "short_docs"), "weight": 0.6},
               {"path": str(tmp_path / "books"), "weight": 0.4, "min_doc_tokens": 96}]
    path = _stages_file(tmp_path, lambda r: r["stages"][1].update(data={"sources": sources}))
    plan = load_plan(path, SMALL + [f"run.dir={tmp_path / 'run'}"])
    short, long = plan.stages
    assert short.cfg.data.sources == []
    assert [(s.path, s.weight, s.min_doc_tokens) for s in long.cfg.data.sources] == [
        (str(tmp_path / "short_docs"), 0.6, 0), (str(tmp_path / "books"), 0.4, 96)]
    state = StageState(plan)
    state[1]["status"] = "done"
    state.save()
    sources[1]["weight"] = 0.5
    path = _stages_file(tmp_path, lambda r: r["stages"][1].update(data={"sources": sources}))
    with pytest.raises(ConfigError, match="stage 'long' is finished; it trained with data.sources="):
        StageState(load_plan(path, SMALL + [f"run.dir={tmp_path / 'run'}"]))
    bad = _stages_file(tmp_path, lambda r: r["stages"][1].update(data={"seq_len": 96}))
    with pytest.raises(ConfigError, match="seq_len is the stage's own"):
        load_plan(bad, SMALL)


def _run(run_dir, *extra, check=True, stages=CI):
    return run_cli("tools/extend_context.py", "--stages", str(stages), f"run.dir={run_dir}", *SMALL, *extra,
                   check=check)


def test_killed_extension_resumes_bit_identically_and_gates_stop_it(tmp_path):
    """One uninterrupted run of both stages; one killed (-9) inside the second stage and rerun: every
    step's loss and lr equal, the lr of each step is the stage's own schedule, the AdamW step counts
    carry over (8 after 4 + 4 steps). Then a third stage with a gate fed a failing passkey score: the
    run stops with status 3, stops again on a rerun, goes on with --ignore-gates; a finished stage
    whose steps change in the file is refused."""
    from tapa_scale.train.checkpoint import latest_checkpoint, read_state

    ref, crashed = tmp_path / "ref", tmp_path / "crashed"
    _run(ref)
    proc = subprocess.Popen([sys.executable, "tools/extend_context.py", "--stages", str(CI), f"run.dir={crashed}",
                             *SMALL], cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metrics = crashed / "long" / "metrics.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and not (metrics.exists() and metrics.read_text().count("\n") >= 3):
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert metrics.read_text().count("\n") < 4, "the run finished before it was killed"
    status = {s["name"]: s["status"] for s in json.loads((crashed / "stages.json").read_text())["stages"]}
    assert status == {"short": "done", "long": "running"}, status
    _run(crashed)
    for stage in ("short", "long"):
        a, b = records(ref, stage), records(crashed, stage)
        assert [r["step"] for r in b] == list(range(1, 5)), stage
        assert [(r["loss"], r["lr"]) for r in a] == [(r["loss"], r["lr"]) for r in b], stage
    for stage, peak, warmup, floor in (("short", 1e-2, 1, 0.1), ("long", 3e-3, 2, 0.5)):
        assert [r["lr"] for r in records(ref, stage)] == pytest.approx(
            [schedule(s, peak, warmup, floor, 4) for s in range(4)], rel=1e-12), stage
    assert read_state(latest_checkpoint(ref / "long"))["optimizer_steps"] == 8  # bias correction continues
    table = json.loads((ref / "stages.json").read_text())["stages"]
    assert [(s["tokens"], s["cumulative_tokens"]) for s in table] == [(1024, 1024), (1024, 2048)]

    def add_gated(r):
        r["stages"].append({"name": "longer", "seq_len": 128, "steps": 2, "batch": {"tokens_per_step": 256, "micro": 2},
                            "carry_optimizer": True, "rule": {"tapa": "none"}, "gate": {"min_passkey": 0.9}})
    gated = _stages_file(tmp_path, add_gated)
    injected = tmp_path / "eval.json"
    injected.write_text(json.dumps({"longer": {"short_ppl": 100.0, "passkey": 0.25}}))
    first = _run(ref, "--eval-results", str(injected), check=False, stages=gated)
    assert first.returncode == 3 and "passkey accuracy 0.25 at 128 tokens is below the gate 0.9" in first.stdout
    again = _run(ref, "--eval-results", str(injected), check=False, stages=gated)
    assert again.returncode == 3 and "gated earlier" in again.stdout and "step 1 " not in again.stdout
    assert _run(ref, "--eval-results", str(injected), "--ignore-gates", stages=gated).returncode == 0
    changed = _run(ref, "long:train.steps=5", check=False, stages=gated)
    assert changed.returncode == 2 and "stage 'long' is finished; it trained with train.steps=4" in changed.stderr


@pytest.mark.parametrize("name, world", [("tiny_extend", 1), ("ci", 1), ("llama3_8b_8k_to_32k", 64)])
@pytest.mark.parametrize("encoding", ["tapa", "yarn"])
def test_shipped_stages_files_resolve(name, world, encoding):
    plan = load_plan(ROOT / "configs" / "stages" / f"{name}.yaml", [f"model.pos_encoding={encoding}"], world_size=world)
    assert [s.seq_len for s in plan.stages] == sorted(s.seq_len for s in plan.stages)
    if encoding == "yarn":
        assert plan.stages[-1].cfg.model.rope.original_length == plan.stages[0].seq_len
        assert plan.stages[-1].cfg.model.rope.scale > 1


def test_a_stage_that_runs_out_of_memory_is_named_in_one_line(tmp_path):
    """The second stage's first step raises torch's out-of-memory error (train.fault_oom_at): the trainer
    names the length, batch and layout with what to change, the tool names the stage, nothing else."""
    res = run_cli("tools/extend_context.py", "--stages", str(CI), f"run.dir={tmp_path}", *SMALL,
                  "long:train.fault_oom_at=1", check=False, timeout=300)
    assert res.returncode == 1, res.stderr[-3000:]
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 2 and "Traceback" not in res.stderr, res.stderr[-3000:]
    assert f"{tmp_path / 'long'}: step 1: out of memory at data.seq_len=64, train.micro_batch_size=" in errors[0]
    assert "parallel.recompute=full" in errors[0]
    assert errors[1].startswith(f"error: stage 'long' (seq_len 64, {tmp_path / 'long'}): training exited with status 2")
    assert json.loads((tmp_path / "stages.json").read_text())["stages"][0]["status"] == "done"
