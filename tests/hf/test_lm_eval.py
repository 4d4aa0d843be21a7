"""lm-evaluation-harness on the export: `lm_eval --model hf --model_args pretrained=DIR,trust_remote_code=True`
with local tasks over a few held-out documents and over our retrieval samples, offline. The per-document
log-likelihoods it reports are recomputed with our own model over the same windows, and its per-sample
retrieval verdicts equal our scorer's on the same samples, so the harness, the export and our model agree."""
from __future__ import annotations

import json

import lm_eval.utils as lm_eval_utils  # a pinned test dependency (pyproject [test]): a missing one must fail
import pytest
import torch

from tapa_scale.hf.export import export_to_hf
from tapa_scale.eval.lm_eval_task import CONTINUE_TASK, PPL_TASK, write_retrieval_tasks, write_tasks
from tests.hf.conftest import clean_env, native_model, run_tool

MAX_LENGTH = 160  # the harness's window (model_args max_length), beyond the export's training length (64)


@pytest.fixture(scope="module")
def harness_run(tapa_ckpt, tmp_path_factory):
    root = tmp_path_factory.mktemp("lm_eval")
    hf_dir = export_to_hf(tapa_ckpt, root / "hf")
    tasks = write_tasks(root / "tasks", split="eval", docs=3, max_chars=600)
    tasks += write_retrieval_tasks(root / "tasks", chain_samples(hf_dir), _decoder(hf_dir))
    out = root / "out"
    run_tool("-m", "lm_eval", "--model", "hf", "--model_args",
             f"pretrained={hf_dir},trust_remote_code=True,dtype=float32,max_length={MAX_LENGTH}",
             "--tasks", ",".join(tasks),
             "--include_path", str(root / "tasks"), "--device", "cpu", "--batch_size", "2",
             "--output_path", str(out), "--log_samples", env=clean_env(root), cwd=root, timeout=600)
    results = json.loads(next(out.rglob("results_*.json")).read_text())["results"]
    samples = {t: [json.loads(l) for l in next(out.rglob(f"samples_{t}_*.jsonl")).read_text().splitlines()]
               for t in tasks}
    return hf_dir, results, samples


def _decoder(hf_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(hf_dir)).decode


def chain_samples(hf_dir):
    """Passkey and variable-tracking samples whose answers the export gets right or wrong by design: the
    export's own greedy 2-token continuation of the prompt (full forward passes), or that continuation
    with its last token changed. A random model would otherwise fail every sample and prove nothing."""
    from tapa_scale.eval.models import open_model
    from tapa_scale.eval.retrieval import build_samples
    from tapa_scale.eval.synthetic import Sample

    ev = open_model(hf_dir, "hf")
    encode = lambda t: ev.tokenizer(t, add_special_tokens=False)["input_ids"]  # noqa: E731
    out = []
    base = [s for task, length in (("passkey", 100), ("vt", 140))
            for s in build_samples([task], encode, [length], depths=[0.5], trials=3, seed=5, texts=[])]
    for s in base:
        ids = torch.tensor([s.prompt])
        for _ in range(2):
            ids = torch.cat([ids, ev.logits_fn(ids, 1)[:, -1].argmax(-1, keepdim=True)], 1)
        chain = ids[0, len(s.prompt):].tolist()
        out += [Sample(s.task, s.length, s.depth, s.trial, s.prompt, chain),
                Sample(s.task, s.length, s.depth, 100 + s.trial, s.prompt, chain[:1] + [(chain[1] + 7) % 500])]
    return out


def test_harness_retrieval_verdicts_equal_our_scorer(harness_run):
    """lm-eval's per-sample acc (is_greedy) on tapa_passkey / tapa_vt equals our teacher-forcing verdict on
    the same text, tokenized the harness's way (prompt; prompt + answer split after the prompt)."""
    from tapa_scale.eval.models import open_model
    from tapa_scale.eval.retrieval import score_samples
    from tapa_scale.eval.synthetic import Sample

    hf_dir, results, samples = harness_run
    ev = open_model(hf_dir, "hf")
    encode = lambda t: ev.tokenizer(t, add_special_tokens=False)["input_ids"]  # noqa: E731
    for task in ("tapa_passkey", "tapa_vt"):
        theirs, ours_in = [], []
        for rec in sorted(samples[task], key=lambda r: r["doc_id"]):
            doc = rec["doc"]
            prompt = encode(doc["prompt"])
            answer = encode(doc["prompt"] + doc["answer"])[len(prompt):]
            ours_in.append(Sample(doc["task"], len(prompt), doc["depth"], doc["trial"], prompt, answer))
            theirs.append(bool(rec["acc"]))
        ours = [r["correct"] for r in score_samples(ev.logits_fn, ours_in)]
        assert ours == theirs, task
        assert any(ours) and not all(ours), (task, ours)  # both verdicts occur
        assert results[task]["acc,none"] == pytest.approx(sum(ours) / len(ours))


def test_harness_reports_metrics(harness_run):
    _, results, samples = harness_run
    ppl = results[PPL_TASK]
    for key in ("word_perplexity,none", "byte_perplexity,none", "bits_per_byte,none"):
        assert ppl[key] > 0 and ppl[key] == ppl[key], key
    assert 0.0 <= results[CONTINUE_TASK]["exact_match,none"] <= 1.0
    assert len(samples[PPL_TASK]) == 3 and len(samples[CONTINUE_TASK]) == 3
    assert all(isinstance(s["resps"][0][0], str) for s in samples[CONTINUE_TASK])


@torch.no_grad()
def test_harness_loglikelihoods_equal_our_model(harness_run, tapa_ckpt):
    """The harness scores each document in disjoint windows of MAX_LENGTH tokens (context of one
    token); our model scores the same windows to the same total log-likelihood."""
    from transformers import AutoTokenizer

    hf_dir, _, samples = harness_run
    tok = AutoTokenizer.from_pretrained(str(hf_dir))
    net = native_model(tapa_ckpt)
    for sample in samples[PPL_TASK]:
        ids = tok(sample["doc"]["text"], add_special_tokens=False).input_ids
        windows = map(lm_eval_utils.make_disjoint_window,
                      lm_eval_utils.get_rolling_token_windows(ids, prefix_token=tok.bos_token_id,
                                                              max_seq_len=MAX_LENGTH, context_len=1))
        total = 0.0
        for context, target in windows:
            seq = torch.tensor(context + target)[None, :-1]
            logp = torch.log_softmax(net(seq, None, None).float(), dim=-1)[0, -len(target):]
            total += logp.gather(-1, torch.tensor(target)[:, None]).sum().item()
        reported = float(sample["filtered_resps"][0] if not isinstance(sample["filtered_resps"][0], list)
                         else sample["filtered_resps"][0][0])
        assert abs(reported - total) <= 1e-4 * abs(total), (reported, total)

