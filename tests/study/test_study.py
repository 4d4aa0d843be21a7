"""The study command (tools/study.py, tapa_scale/study) on the CI study: TAPA and RoPE pretrained at 64
tokens for a few steps, evaluated zero-shot, extended to 128 (RoPE plainly and under YaRN).

Would catch: a rule that does not reach the extension's model (or YaRN's original length following the
new length); an extension that does not start from the pretraining; recorded numbers that the
evaluation tool does not reproduce; two rows that did not see the same tokens; a rerun that trains
again; a study whose checkpoints are gone that cannot finish, or finishes with other numbers; bad study
files that start training."""
import json
import shutil

import pytest
import yaml

from tapa_scale.config import ConfigError
from tapa_scale.study import load_study
from tests.helpers import ROOT, run_cli

CI = ROOT / "configs" / "studies" / "ci.yaml"
QUIET = ["run.tensorboard=false", "run.progress=false"]


def study(tmp, *extra, check=True):
    return run_cli("tools/study.py", "--study", str(CI), "--results", str(tmp / "ci.json"), "--run-dir",
                   str(tmp / "runs"), *extra, *QUIET, check=check, timeout=900)


@pytest.fixture(scope="module")
def done(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("study")
    study(tmp, "--jobs", "2")  # two runs at once, each adding its pieces to the one results file
    return tmp, json.loads((tmp / "ci.json").read_text())


def test_every_piece_is_recorded_and_the_rule_reaches_the_model(done):
    tmp, res = done
    rope, tapa = res["runs"]["rope-xs-s0"], res["runs"]["tapa-xs-s0"]
    assert set(rope["extended"]) == {"none", "yarn"} and set(tapa["extended"]) == {"none"}
    assert set(rope["zero_shot"]) == {"none", "yarn"} and set(rope["zero_shot"]["none"]["ppl"]) == {"1", "2"}
    assert rope["zero_shot"]["yarn"]["ppl"]["1"] == rope["zero_shot"]["none"]["ppl"]["1"]  # at 1x a rule is RoPE
    assert rope["zero_shot"]["yarn"]["overrides"]["2"] == [
        "model.pos_encoding=yarn", "model.rope.scale=2.0", "model.rope.original_length=64"]
    ext = rope["extended"]["yarn"]
    saved = yaml.safe_load((tmp / "runs" / "rope-xs-s0" / "extend_yarn" / "extend_128" / "config.yaml").read_text())
    assert saved["model"]["pos_encoding"] == "yarn" and saved["model"]["rope"]["scale"] == 2.0
    assert saved["model"]["rope"]["original_length"] == 64 and saved["data"]["seq_len"] == 128
    assert saved["train"]["init_from"] == str(tmp / "runs" / "rope-xs-s0" / "pretrain_64")
    assert saved["train"]["init_optimizer"] is True and saved["train"]["seed"] == 1  # not the pretraining's order
    assert ext["steps"] == 3 and ext["seq_len"] == 128 and rope["pretrain"]["tokens"] == 4 * 512
    assert set(ext["eval"]["ppl"]) == {"1", "2", "4"} and set(ext["eval"]["passkey"]) == {"2", "4"}
    assert set(ext["eval"]["passkey"]["4"]) == {"0", "0_ci", "1", "1_ci"}
    assert rope["info"]["non_embedding_params"] == 2 * (4 * 64 * 64 + 3 * 64 * 128 + 2 * 64) + 64


def test_recorded_numbers_match_the_evaluation_tool(done, tmp_path):
    tmp, res = done
    ext = res["runs"]["rope-xs-s0"]["extended"]["yarn"]
    out = tmp_path / "e.json"
    run_cli("tools/eval_long_context.py", "--checkpoint", ext["checkpoint"], "--lengths", "64,128,256",
            "--max-tokens", "3000", "--json", str(out))
    direct = json.loads(out.read_text())["ppl"]
    assert [direct[k] for k in ("64", "128", "256")] == pytest.approx(
        [ext["eval"]["ppl"][m] for m in ("1", "2", "4")], rel=1e-6)
    out = tmp_path / "z.json"
    pre = res["runs"]["rope-xs-s0"]["pretrain"]["checkpoint"]
    run_cli("tools/eval_long_context.py", "--checkpoint", pre, "--lengths", "128", "--max-tokens", "3000",
            "--json", str(out), "model.pos_encoding=yarn", "model.rope.scale=2")
    assert json.loads(out.read_text())["ppl"]["128"] == pytest.approx(
        res["runs"]["rope-xs-s0"]["zero_shot"]["yarn"]["ppl"]["2"], rel=1e-6)


def test_report_and_same_tokens(done):
    tmp, _ = done
    md = (tmp / "ci.md").read_text()
    assert "| rope+yarn |" in md and "| xs | 0 | rope-xs-s0, tapa-xs-s0 | 2,048 | yes |" in md
    assert all((tmp / f"ci_{n}.png").is_file() for n in ("ppl_zero_shot", "ppl_extended", "passkey_heatmap",
                                                          "loss_curves", "gap_vs_size"))


def test_rerun_skips_and_a_lost_run_directory_is_rebuilt_to_the_same_numbers(done, tmp_path):
    tmp, res = done
    again = study(tmp, "--only", "rope-*")
    assert "0 of 1 selected runs to do" in again.stdout
    # a fresh machine: the runs are gone, the results keep all but the YaRN extension
    shutil.copytree(tmp, tmp_path / "s", ignore=shutil.ignore_patterns("runs"))
    partial = json.loads((tmp_path / "s" / "ci.json").read_text())
    del partial["runs"]["rope-xs-s0"]["extended"]["yarn"]
    (tmp_path / "s" / "ci.json").write_text(json.dumps(partial))
    r = study(tmp_path / "s", "--only", "rope-*")
    assert "WARNING" not in r.stdout and "pretraining at 64 tokens" in r.stdout
    now = json.loads((tmp_path / "s" / "ci.json").read_text())["runs"]["rope-xs-s0"]
    old = res["runs"]["rope-xs-s0"]
    assert now["pretrain"]["loss_curve"] == old["pretrain"]["loss_curve"]
    assert now["extended"]["yarn"]["loss_curve"] == old["extended"]["yarn"]["loss_curve"]
    assert now["extended"]["yarn"]["eval"]["ppl"] == old["extended"]["yarn"]["eval"]["ppl"]
    assert now["extended"]["none"] == old["extended"]["none"]  # recorded pieces are kept, not redone


@pytest.mark.parametrize("edit, message", [
    ({"pretrain": {"seq_len": 64, "steps": 4, "warmup": 3}}, "pretrain: unknown key(s) ['warmup']"),
    ({"grid": [{"variants": ["tapa", "alibi"], "sizes": ["xs"]}]}, "variant 'alibi' is not defined under `variants`"),
    ({"variants": {"tapa": {"model.pos_encoding": "yarn"}}}, "variants.tapa: model.pos_encoding=yarn"),
    ({"variants": {"tapa": {"model.tapa.alpah": 0.2}}}, "run tapa-xs-s0 (variant tapa, size xs)"),
    ({"rules": {"yarn": {"pos_encoding": "tapa"}}}, "rules.yarn.pos_encoding='tapa'"),
])
def test_bad_study_files_are_refused_in_one_line(tmp_path, edit, message):
    raw = {**yaml.safe_load(CI.read_text()), **edit, "base": str(ROOT / "configs" / "tiny.yaml")}
    f = tmp_path / "bad.yaml"
    f.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError) as e:
        load_study(f)
    assert len(str(e.value).splitlines()) == 1 and message in str(e.value) and str(f) in str(e.value), e.value


def test_a_pattern_that_selects_nothing_is_refused_before_anything_runs(tmp_path):
    r = run_cli("tools/study.py", "--study", str(CI), "--run-dir", str(tmp_path / "runs"), "--only", "alibi-*",
                check=False)
    assert r.returncode == 2 and "no run of" in r.stderr and "tapa-xs-s0, rope-xs-s0" in r.stderr
    assert not (tmp_path / "runs").exists()
