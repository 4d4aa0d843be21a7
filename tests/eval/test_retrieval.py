"""Passkey and the RULER-style tasks: samples are what they claim to be, and the metric is honest.

Would catch: a prompt one token off its length, a needle or answer missing from the context, samples that
change between runs, a scorer that credits a model ignoring its context, results that depend on the batch
size, a confidence interval that is not Wilson's."""
import pytest
import torch

from tapa_scale.data import eval_documents
from tapa_scale.data.tokenizer import TOKENIZER_DIR
from tapa_scale.eval.retrieval import (build_samples, effective_length, samples_sha256,
                                       score_samples, summarize, wilson_interval)
from tapa_scale.eval.synthetic import RULER_TASKS, TASKS


@pytest.fixture(scope="module")
def tok():
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast.from_pretrained(str(TOKENIZER_DIR))


@pytest.fixture(scope="module")
def texts():
    return [p.read_text(encoding="utf-8") for p in eval_documents()]


def _encode(tok):
    return lambda text: tok(text, add_special_tokens=False)["input_ids"]


@pytest.fixture(scope="module")
def samples(tok, texts):
    return build_samples(TASKS, _encode(tok), [1024, 1536], depths=[0.0, 0.5, 1.0], trials=3, seed=7, texts=texts)


def test_every_sample_has_its_length_and_its_answer_in_context(samples, tok):
    assert {s.task for s in samples} == set(TASKS)
    for s in samples:
        assert len(s.prompt) == s.length, (s.task, s.length, len(s.prompt))
        context = tok.decode(s.prompt)
        assert tok.decode(s.answer) == s.answer_text, s
        for needle in s.needles:  # the evidence the answer rests on is in what the model reads
            assert needle.strip() in context, (s.task, needle)
        if s.task == "passkey":
            assert context.count(s.answer_text.strip()) == 2  # "The pass key is K. ... K is the pass key."
        if s.task in ("cwe", "fwe"):
            words = context.split()
            counts = [sum(w.strip(".,") == a for w in words) for a in s.answer_text.strip().split(", ")]
            assert counts == sorted(counts, reverse=True) and min(counts) > 3, (s.task, counts)


def test_depth_places_the_needle(samples, tok):
    """depth 0 puts the passkey right after the instructions, depth 1 right before the question."""
    for s in samples:
        if s.task == "passkey" and s.trial == 0 and s.length == 1024:
            at = tok.decode(s.prompt).index("The pass key is") / len(tok.decode(s.prompt))
            assert abs(at - s.depth) < 0.1, (s.depth, at)


def test_samples_are_reproducible_and_trials_differ(samples, tok, texts):
    again = build_samples(TASKS, _encode(tok), [1024, 1536], depths=[0.0, 0.5, 1.0], trials=3, seed=7, texts=texts)
    assert samples_sha256(again) == samples_sha256(samples)
    other = build_samples(TASKS, _encode(tok), [1024, 1536], depths=[0.0, 0.5, 1.0], trials=3, seed=8, texts=texts)
    assert samples_sha256(other) != samples_sha256(samples)
    keys = [s.answer_text for s in samples if s.task == "passkey" and s.length == 1024 and s.depth == 0.5]
    assert len(set(keys)) == 3


def _oracle(samples, vocab):
    """A LastLogitsFn that knows every answer (from the prompt), or with blind=True one that never looks
    at its input: a fixed random logit table."""
    answers = {tuple(s.prompt): s.answer for s in samples}

    def knows(ids, k):
        out = torch.zeros(ids.shape[0], k, vocab)
        for b, row in enumerate(ids.tolist()):
            answer = answers[tuple(row[:len(row) + 1 - k])]
            out[b, torch.arange(k), answer] = 10.0
        return out

    table = torch.randn(64, vocab, generator=torch.Generator().manual_seed(0))
    return knows, lambda ids, k: table[:k].expand(ids.shape[0], k, vocab)


def test_an_oracle_scores_one_and_a_blind_model_chance(samples, tok):
    knows, blind = _oracle(samples, len(tok))
    assert all(r["correct"] for r in score_samples(knows, samples))
    blind_results = score_samples(blind, samples)
    assert not any(r["correct"] for r in blind_results)  # chance: ~1e-4 per answer token at best
    out = summarize(samples, score_samples(knows, samples))
    assert set(out["ruler"]) == set(RULER_TASKS) | {"effective_length", "threshold"}
    assert out["passkey"]["1024"]["0.5"] == 1.0 and out["ruler"]["effective_length"]["vt"] == 1536


def test_results_do_not_depend_on_the_batch_size(samples, process_group):
    from tapa_scale.model import ModelConfig, build_model, transformer_config

    cfg = ModelConfig(num_layers=1, hidden_size=32, num_heads=2, ffn_hidden_size=64)
    torch.manual_seed(0)
    model = build_model(cfg, vocab_size=8192, seq_len=64, config=transformer_config(cfg)).eval()
    few = [s for s in samples if s.length == 1024 and s.task in ("passkey", "vt")][:6]
    logits_fn = lambda ids, k: model.last_logits(ids, k)  # noqa: E731
    one, four = score_samples(logits_fn, few, 1), score_samples(logits_fn, few, 4)
    assert [r["correct"] for r in one] == [r["correct"] for r in four]
    assert [r["loglik"] for r in one] == pytest.approx([r["loglik"] for r in four], rel=1e-5)


def test_wilson_interval_and_effective_length():
    # published 95% Wilson intervals: 5/10 -> [0.2366, 0.7634], 0/10 -> [0, 0.2775], 10/10 -> [0.7225, 1]
    assert wilson_interval(5, 10) == pytest.approx([0.2366, 0.7634], abs=1e-4)
    assert wilson_interval(0, 10) == pytest.approx([0.0, 0.2775], abs=1e-4)
    assert wilson_interval(10, 10) == pytest.approx([0.7225, 1.0], abs=1e-4)
    assert effective_length({"1024": 0.9, "2048": 0.86, "4096": 0.5, "8192": 0.9}, 0.85) == 2048
    assert effective_length({"1024": 0.5}, 0.85) == 0


@pytest.mark.parametrize("kwargs, message", [
    (dict(tasks=["needle"]), "unknown task"),
    (dict(depths=[1.5]), "must lie in [0, 1]"),
    (dict(lengths=[40]), "too short for task"),
])
def test_bad_input_is_one_line(tok, texts, kwargs, message):
    args = dict(tasks=["passkey"], lengths=[1024], depths=[0.5], trials=1, seed=0)
    args.update(kwargs)
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")) as e:
        build_samples(args.pop("tasks"), _encode(tok), args.pop("lengths"), texts=texts, **args)
    assert "\n" not in str(e.value)
