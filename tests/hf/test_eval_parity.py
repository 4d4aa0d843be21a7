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


def test_compare_scores_checkpoint_and_export_alike(setup, tapa_ckpt, tmp_path):
    """tools/eval_long_context.py --compare CHECKPOINT EXPORT: one JSON with both models, whose numbers
    agree (the export is the checkpoint), on token-identical samples; a table row per model."""
    hf_dir, text, _ = setup
    out = tmp_path / "cmp.json"
    run_tool("tools/eval_long_context.py", "--compare", str(tapa_ckpt), str(hf_dir), "--text", str(text),
             "--tasks", "ppl,passkey", "--lengths", "128", "--depths", "0.5", "--trials", "3", "--stride", "32",
             "--json", str(out))
    got = json.loads(out.read_text())
    (name_a, a), (name_b, b) = got["models"].items()  # named after their directories, in the order given
    assert name_b == "hf" and a["checkpoint"] == str(tapa_ckpt) and b["hf"] == str(hf_dir)
    assert abs(b["ppl"]["128"] / a["ppl"]["128"] - 1) <= 1e-5
    assert a["passkey"] == b["passkey"] and got["meta"]["tokenizers_agree"]
    assert a["meta"]["samples_sha256"] == b["meta"]["samples_sha256"]
    table = out.with_suffix(".md").read_text()
    assert f"| {name_a} |" in table and "| hf |" in table


def test_generate_gives_the_verdict_of_teacher_forcing(setup):
    """Decoding with generate() and its KV cache marks a sample correct exactly when teacher forcing
    does. The answers are made to matter: each sample's answer is the export's own greedy continuation,
    computed here token by token with full forward passes (no cache), or that continuation with its
    last token changed; teacher forcing and decoding must credit the first and not the second."""
    import torch

    from tapa_scale.eval.models import open_model
    from tapa_scale.eval.retrieval import build_samples, score_samples
    from tapa_scale.eval.synthetic import Sample

    hf_dir, _, _ = setup
    ev = open_model(hf_dir, "hf")
    encode = lambda t: ev.tokenizer(t, add_special_tokens=False)["input_ids"]  # noqa: E731
    base = build_samples(["passkey"], encode, [96], depths=[0.0, 1.0], trials=2, seed=3, texts=[])
    samples = []
    for s in base:
        ids = torch.tensor([s.prompt])
        for _ in range(3):  # greedy chain by full forward passes
            nxt = ev.logits_fn(ids, 1)[0, -1].argmax()
            ids = torch.cat([ids, nxt.view(1, 1)], 1)
        chain = ids[0, len(s.prompt):].tolist()
        wrong = chain[:-1] + [(chain[-1] + 1) % len(ev.tokenizer)]
        samples += [Sample(s.task, s.length, s.depth, s.trial, s.prompt, chain),
                    Sample(s.task, s.length, s.depth, s.trial, s.prompt, wrong)]
    forced = [r["correct"] for r in score_samples(ev.logits_fn, samples, batch_size=2)]
    decoded = [r["correct"] for r in score_samples(ev.logits_fn, samples, batch_size=2, generate_fn=ev.generate_fn)]
    assert forced == decoded == [True, False] * len(base)
