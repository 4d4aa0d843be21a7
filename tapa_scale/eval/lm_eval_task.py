"""Local lm-evaluation-harness tasks over documents of our held-out split and over our generated
retrieval samples (no downloads).

    python -m tapa_scale.eval.lm_eval_task --out TASKS [--split eval] [--docs 4] [--max-chars 2000]
    lm_eval --model hf --model_args pretrained=EXPORT,trust_remote_code=True,dtype=float32 \
        --tasks tapa_heldout_ppl,tapa_heldout_continue --include_path TASKS --device cpu
    python -m tapa_scale.eval.lm_eval_task --out TASKS --retrieval passkey,ruler --tokenizer EXPORT \
        --lengths 1024,2048 [--depths 0,0.5,1] [--trials 20] [--seed 0]
    lm_eval --model hf --model_args pretrained=EXPORT,trust_remote_code=True,max_length=4096 \
        --tasks tapa_passkey,tapa_niah_single,... --include_path TASKS

writes TASKS/docs.jsonl (the documents, truncated at a word boundary) and two task YAMLs reading it
through the `json` dataset builder that ships with `datasets`:
    tapa_heldout_ppl        loglikelihood_rolling: word/byte perplexity and bits per byte
    tapa_heldout_continue   generate_until: greedy continuation of each document's opening, exact match
                            against the true next words (exercises batched, left-padded generate())
and, with --retrieval, tapa_<task> for passkey and each RULER-style task (eval/synthetic.py): the
samples tools/eval_long_context.py scores, as text (prompt, answer), in a `loglikelihood` task whose
`acc` is the harness's is_greedy -- the answer's tokens are each the argmax after the prompt, ties
going to the first index as torch.argmax breaks them: our teacher-forcing verdict. The harness
re-tokenizes the text (prompt and prompt + answer); a prompt built from token pieces can merge
differently at a piece boundary, so its token count may differ by a few from the tool's. Pass a
max_length above the longest sample, or the harness cuts prompts from the left.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

PPL_TASK = "tapa_heldout_ppl"
CONTINUE_TASK = "tapa_heldout_continue"
PROMPT_CHARS = 200  # opening of a document given as the prompt of the continuation task


def held_out_documents(split: str = "eval", docs: int = 4, max_chars: int = 2000) -> list[dict]:
    """The first `docs` documents of the embedded corpus split, each cut to <= max_chars at a space."""
    from ..data.corpus import corpus_file, read_jsonl_gz

    out = []
    for doc in read_jsonl_gz(corpus_file(split)):
        text = doc["text"]
        if len(text) > max_chars:
            cut = text.rfind(" ", 0, max_chars)
            text = text[: cut if cut > 0 else max_chars]
        prompt_end = text.rfind(" ", 0, PROMPT_CHARS) if len(text) > PROMPT_CHARS else len(text) // 2
        rest = text[prompt_end:].split()
        out.append({"id": doc["id"], "text": text, "prompt": text[:prompt_end],
                    "continuation": " " + " ".join(rest[:3])})
        if len(out) == docs:
            break
    return out


def _yaml(task: str, data: Path, body: list[str]) -> str:
    head = [f"task: {task}", "dataset_path: json", "dataset_kwargs:", "  data_files:",
            f"    test: {json.dumps(str(data))}", "test_split: test"]
    return "\n".join(head + body + ["metadata:", "  version: 1.0", ""])


def write_tasks(out: str | Path, *, split: str = "eval", docs: int = 4, max_chars: int = 2000) -> list[str]:
    """Write docs.jsonl and the two task YAMLs into `out`; returns the task names."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    data = (out / "docs.jsonl").resolve()
    data.write_text("".join(json.dumps(d, ensure_ascii=False) + "\n"
                            for d in held_out_documents(split, docs, max_chars)))
    ppl = ["output_type: loglikelihood_rolling", 'doc_to_text: ""', 'doc_to_target: "{{text}}"',
           "metric_list:", "  - metric: word_perplexity", "  - metric: byte_perplexity",
           "  - metric: bits_per_byte"]
    cont = ["output_type: generate_until", 'doc_to_text: "{{prompt}}"', 'doc_to_target: "{{continuation}}"',
            "generation_kwargs:", "  until: [\"\\n\\n\"]", "  max_gen_toks: 8", "  do_sample: false",
            "metric_list:", "  - metric: exact_match", "    aggregation: mean", "    higher_is_better: true"]
    (out / f"{PPL_TASK}.yaml").write_text(_yaml(PPL_TASK, data, ppl))
    (out / f"{CONTINUE_TASK}.yaml").write_text(_yaml(CONTINUE_TASK, data, cont))
    return [PPL_TASK, CONTINUE_TASK]


def write_retrieval_tasks(out: str | Path, samples, decode) -> list[str]:
    """retrieval_<task>.jsonl and tapa_<task>.yaml for each task among `samples` (synthetic.Sample);
    decode(token ids) -> text. Returns the task names."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    by_task: dict = {}
    for s in samples:
        by_task.setdefault(s.task, []).append({"task": s.task, "length": s.length, "depth": s.depth, "trial": s.trial,
                                               "prompt": decode(s.prompt), "answer": decode(s.answer)})
    names = []
    for task, docs in by_task.items():
        data = (out / f"retrieval_{task}.jsonl").resolve()
        data.write_text("".join(json.dumps(d, ensure_ascii=False) + "\n" for d in docs))
        body = ["output_type: loglikelihood", 'doc_to_text: "{{prompt}}"', 'doc_to_target: "{{answer}}"',
                'target_delimiter: ""', "metric_list:", "  - metric: acc", "    aggregation: mean",
                "    higher_is_better: true"]
        (out / f"tapa_{task}.yaml").write_text(_yaml(f"tapa_{task}", data, body))
        names.append(f"tapa_{task}")
    return names


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="directory for the task YAMLs (pass it as --include_path)")
    p.add_argument("--split", default="eval", choices=["eval", "val"], help="embedded corpus split")
    p.add_argument("--docs", type=int, default=4)
    p.add_argument("--max-chars", type=int, default=2000, help="characters kept of each document")
    p.add_argument("--retrieval", default=None, help="instead: retrieval tasks (passkey, ruler or task names)")
    p.add_argument("--tokenizer", default=None, help="--retrieval: the export (or tokenizer) directory")
    p.add_argument("--lengths", default="1024", help="--retrieval: prompt lengths in tokens")
    p.add_argument("--depths", default="0,0.25,0.5,0.75,1")
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.retrieval:
        names = _retrieval(args)
        if names is None:
            return 2
    else:
        names = write_tasks(args.out, split=args.split, docs=args.docs, max_chars=args.max_chars)
    print(f"wrote {', '.join(names)} to {args.out}")
    return 0


def _retrieval(args):
    from transformers import AutoTokenizer

    from ..data import eval_documents
    from .retrieval import build_samples
    from .suite import TEXT_TASKS, expand_tasks

    try:
        tasks = [t for t in expand_tasks(args.retrieval) if t not in TEXT_TASKS]
        if not args.tokenizer:
            raise ValueError("--retrieval needs --tokenizer DIR (the export the tasks will be run on)")
        tok = AutoTokenizer.from_pretrained(args.tokenizer)
        samples = build_samples(tasks, lambda t: tok(t, add_special_tokens=False)["input_ids"],
                                [int(x) for x in args.lengths.split(",")], depths=[float(x) for x in args.depths.split(",")],
                                trials=args.trials, seed=args.seed,
                                texts=[d.read_text(encoding="utf-8") for d in eval_documents()])
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return None
    return write_retrieval_tasks(args.out, samples, tok.decode)


if __name__ == "__main__":
    sys.exit(main())
