"""lm-evaluation-harness on the export: `lm_eval --model hf --model_args pretrained=DIR,trust_remote_code=True`
with local tasks over a few held-out documents, offline. The per-document log-likelihoods it reports are
recomputed with our own model over the same windows, so the harness, the export and our model agree."""
from __future__ import annotations

import json

import lm_eval.utils as lm_eval_utils  # a pinned test dependency (pyproject [test]): a missing one must fail
import pytest
import torch

from tapa_scale.hf.export import export_to_hf
from tapa_scale.hf.lm_eval_task import CONTINUE_TASK, PPL_TASK, write_tasks
from tests.hf.conftest import clean_env, native_model, run_tool

MAX_LENGTH = 64  # the export's max_position_embeddings, which the harness takes as its window


@pytest.fixture(scope="module")
def harness_run(tapa_ckpt, tmp_path_factory):
    root = tmp_path_factory.mktemp("lm_eval")
    hf_dir = export_to_hf(tapa_ckpt, root / "hf")
    tasks = write_tasks(root / "tasks", split="eval", docs=3, max_chars=600)
    out = root / "out"
    run_tool("-m", "lm_eval", "--model", "hf", "--model_args",
             f"pretrained={hf_dir},trust_remote_code=True,dtype=float32", "--tasks", ",".join(tasks),
             "--include_path", str(root / "tasks"), "--device", "cpu", "--batch_size", "2",
             "--output_path", str(out), "--log_samples", env=clean_env(root), cwd=root, timeout=600)
    results = json.loads(next(out.rglob("results_*.json")).read_text())["results"]
    samples = {t: [json.loads(l) for l in next(out.rglob(f"samples_{t}_*.jsonl")).read_text().splitlines()]
               for t in tasks}
    return hf_dir, results, samples


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

