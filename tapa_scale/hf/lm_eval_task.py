"""Local lm-evaluation-harness tasks over documents of our held-out split (no downloads).

    python -m tapa_scale.hf.lm_eval_task --out TASKS [--split eval] [--docs 4] [--max-chars 2000]
    lm_eval --model hf --model_args pretrained=EXPORT,trust_remote_code=True,dtype=float32 \
        --tasks tapa_heldout_ppl,tapa_heldout_continue --include_path TASKS --device cpu

writes TASKS/docs.jsonl (the documents, truncated at a word boundary) and two task YAMLs reading it
through the `json` dataset builder that ships with `datasets`:
    tapa_heldout_ppl        loglikelihood_rolling: word/byte perplexity and bits per byte
    tapa_heldout_continue   generate_until: greedy continuation of each document's opening, exact match
                            against the true next words (exercises batched, left-padded generate())
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


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="directory for the task YAMLs (pass it as --include_path)")
    p.add_argument("--split", default="eval", choices=["eval", "val"], help="embedded corpus split")
    p.add_argument("--docs", type=int, default=4)
    p.add_argument("--max-chars", type=int, default=2000, help="characters kept of each document")
    args = p.parse_args(argv)
    names = write_tasks(args.out, split=args.split, docs=args.docs, max_chars=args.max_chars)
    print(f"wrote {', '.join(names)} to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
