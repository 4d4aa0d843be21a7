"""Sliding-window perplexity: each token scored once, with the context the window allows.

Would catch: tokens scored twice or skipped at window seams, context cut at the wrong place, a wrong
JSON contract of tools/eval_long_context.py."""
import json
import math

import pytest
import torch

from tapa_scale.eval import sliding_window_nll, window_spans
from tests.helpers import run_cli


@pytest.mark.parametrize("n,window,stride", [(10, 4, 2), (11, 4, 4), (3, 8, 4), (100, 16, 5), (17, 16, 16)])
def test_spans_tile_every_position_once(n, window, stride):
    spans = window_spans(n, window, stride)
    scored = [p for b, e, s in spans for p in range(e - s, e)]
    assert scored == list(range(n))
    assert all(e - b <= window and s <= e - b for b, e, s in spans)


def test_nll_matches_brute_force_with_context_dependent_model():
    """A fake model whose NLL for a token is label / (1 + context seen inside its window). The brute
    force asks, token by token, which window scores it: the first one (windows start every `stride`)
    that still contains it; its context is its distance from that window's start. Would catch a token
    scored twice or skipped at a seam, context counted from the wrong place, labels shifted wrongly."""
    def loss_fn(x, y):
        return y.double() / torch.arange(1, x.shape[1] + 1, dtype=torch.float64)
    ids = torch.arange(50) * 7 % 11 + 1  # labels vary, so a shifted label changes the total
    window, stride = 8, 3
    total, count = sliding_window_nll(loss_fn, ids, window, stride, batch_size=3)
    want = 0.0
    for t in range(len(ids) - 1):  # input position t predicts ids[t + 1]
        begin = next(b for b in range(0, t + 1, stride) if b + window > t)
        want += ids[t + 1].item() / (1 + t - begin)
    assert count == len(ids) - 1 and total == pytest.approx(want, rel=1e-12)


def test_eval_tool_on_a_checkpoint(trained_run, tmp_path):
    """One run of the tool with perplexity and two retrieval tasks: the JSON keeps today's keys and adds
    the asked-for sections only, with a CSV per task; bad input is one line and exit code 2."""
    text = tmp_path / "book.txt"
    text.write_text("It was the best of times, it was the worst of times. " * 60)
    out = tmp_path / "eval.json"
    run_cli("tools/eval_long_context.py", "--checkpoint", str(trained_run), "--text", str(text),
            "--tasks", "ppl,passkey,vt", "--lengths", "256,512", "--stride", "32", "--depths", "0,1",
            "--trials", "2", "--json", str(out))
    result = json.loads(out.read_text())
    assert set(result["ppl"]) == {"256", "512"}
    assert all(math.isfinite(v) and v > 1 for v in result["ppl"].values())
    assert result["tokens"]["256"] == result["tokens"]["512"] > 100
    assert result["pos_encoding"] == "tapa" and result["meta"]["encoding"] == "tapa"
    assert set(result["passkey"]["256"]) == {"0", "0_ci", "1", "1_ci"} and set(result["ruler"]) == {
        "vt", "effective_length", "threshold"}
    assert result["meta"]["samples"] == 2 * 2 * 2 + 2 * 2 and len(result["meta"]["samples_sha256"]) == 64
    for name in ("ppl", "passkey", "ruler"):
        assert (tmp_path / f"eval.{name}.csv").read_text().count("\n") > 1, name
    bad = run_cli("tools/eval_long_context.py", "--checkpoint", str(tmp_path / "nothing"), "--lengths", "64",
                  "--json", str(out), check=False)
    assert bad.returncode == 2 and "checkpoint not found" in bad.stderr


def test_task_names_are_checked_before_any_work():
    from tapa_scale.eval.suite import expand_tasks

    assert expand_tasks("ppl,ruler,niah_single") == ["ppl", "niah_single", "niah_multikey", "niah_multivalue",
                                                     "vt", "cwe", "fwe"]
    with pytest.raises(ValueError, match="unknown task 'needle'"):
        expand_tasks("ppl,needle")
