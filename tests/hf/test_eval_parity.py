"""Sliding-window perplexity of the export equals that of the original checkpoint (the evaluator of
tapa_scale.eval, the same held-out text, windows at 1x and 2x the training length)."""
from __future__ import annotations

import json

import pytest

from tapa_scale.eval import long_context
from tapa_scale.hf.export import export_to_hf
from tests.hf.conftest import native_model, run_tool


LENGTHS = [64, 128]  # the checkpoint was made at data.seq_len = 64


@pytest.fixture(scope="module")
def setup(tapa_ckpt, tmp_path_factory):
    from tapa_scale.data import eval_documents, load_tokenizer

    root = tmp_path_factory.mktemp("eval_parity")
    hf_dir = export_to_hf(tapa_ckpt, root / "hf")
    text = root / "heldout.txt"
    text.write_text(eval_documents(root / "cache")[0].read_text(encoding="utf-8")[:3000], encoding="utf-8")
    texts = long_context.tokenize_texts(load_tokenizer(str(tapa_ckpt / "tokenizer")), [text])
    return hf_dir, text, texts


def test_export_perplexity_equals_checkpoint(setup, tapa_ckpt):
    from tapa_scale.eval.loading import loss_fn_of
    from tapa_scale.hf.runtime import load_hf_loss_fn

    hf_dir, _, texts = setup
    ours = long_context.evaluate_lengths(loss_fn_of(native_model(tapa_ckpt)), texts, LENGTHS, stride=32)
    export = long_context.evaluate_lengths(load_hf_loss_fn(hf_dir), texts, LENGTHS, stride=32)
    for length in map(str, LENGTHS):
        assert export["tokens"][length] == ours["tokens"][length]
        assert abs(export["ppl"][length] / ours["ppl"][length] - 1) <= 1e-5, (length, export, ours)


def test_eval_tool_hf_flag(setup, tapa_ckpt, tmp_path):
    """tools/eval_long_context.py --hf DIR gives the numbers of --checkpoint DIR."""
    hf_dir, text, _ = setup
    args = ["--text", str(text), "--lengths", ",".join(map(str, LENGTHS)), "--stride", "32"]
    run_tool("tools/eval_long_context.py", "--checkpoint", str(tapa_ckpt), *args, "--json", str(tmp_path / "a.json"))
    run_tool("tools/eval_long_context.py", "--hf", str(hf_dir), *args, "--json", str(tmp_path / "b.json"))
    a, b = (json.loads((tmp_path / f).read_text())["ppl"] for f in ("a.json", "b.json"))
    for length in a:
        assert abs(b[length] / a[length] - 1) <= 1e-5
