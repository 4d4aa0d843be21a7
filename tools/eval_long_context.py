"""Long-context evaluation of a checkpoint or an export: perplexity by window length, passkey retrieval,
the RULER-style tasks (docs/evaluation.md).

    python tools/eval_long_context.py --checkpoint runs/tiny --lengths 128,256,512 --json out.json
    python tools/eval_long_context.py --hf exports/tiny --tasks ppl,passkey,ruler --lengths 512,1024 \
        --depths 0,0.5,1 --trials 20 --json out.json
    python tools/eval_long_context.py --checkpoint runs/rope --tasks passkey --lengths 1024 --json pi.json \
        model.pos_encoding=pi model.rope.scale=4        # score a RoPE checkpoint zero-shot as PI

Perplexity texts default to the embedded held-out documents (--text FILE... to choose others); the
needle tasks' haystack is the same held-out text. Writes the JSON and a CSV per task beside it.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _numbers(text: str, kind, what: str) -> list:
    try:
        return [kind(x) for x in text.split(",") if x]
    except ValueError:
        raise ValueError(f"{what} {text!r}: expected comma-separated numbers") from None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="checkpoint dir, or run dir (its latest checkpoint)")
    source.add_argument("--hf", help="a Hugging Face export (tools/convert_to_hf.py) or a Llama directory")
    p.add_argument("--tasks", default="ppl", help="comma-separated: ppl, passkey, ruler (all six) or RULER task names")
    p.add_argument("--text", nargs="*", help="UTF-8 text files for ppl (default: the embedded evaluation documents)")
    p.add_argument("--lengths", required=True, help="comma-separated lengths in tokens (windows; prompt lengths)")
    p.add_argument("--stride", type=int, default=None, help="ppl window stride (default: half of each length)")
    p.add_argument("--max-tokens", type=int, default=None, help="ppl: evaluate at most this many tokens")
    p.add_argument("--depths", default="0,0.25,0.5,0.75,1", help="needle depths in [0, 1]")
    p.add_argument("--trials", type=int, default=20, help="samples per (task, length, depth)")
    p.add_argument("--seed", type=int, default=0, help="seed of the generated samples")
    p.add_argument("--threshold", type=float, default=0.85, help="accuracy that counts for RULER's effective length")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--json", required=True, help="output JSON path")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="model overrides for --checkpoint")
    args = p.parse_args(argv)
    from tapa_scale.data import eval_documents
    from tapa_scale.eval import tokenize_texts
    from tapa_scale.eval.long_context import write_json
    from tapa_scale.eval.suite import expand_tasks, run_suite, write_csvs

    try:
        tasks = expand_tasks(args.tasks)
        lengths = _numbers(args.lengths, int, "--lengths")
        depths = _numbers(args.depths, float, "--depths")
        if args.overrides and args.hf:
            raise ValueError("key=value overrides edit our checkpoint's model; they do not apply to --hf")
        if any(not 0.0 <= d <= 1.0 for d in depths):
            raise ValueError(f"--depths {args.depths}: each must lie in [0, 1]")
        loss_fn, logits_fn, tokenizer, info = (_load_hf if args.hf else _load_checkpoint)(args)
        docs = [Path(t) for t in args.text] if args.text else eval_documents()
        ppl_texts = tokenize_texts(tokenizer, docs, args.max_tokens) if "ppl" in tasks else None
        texts = [d.read_text(encoding="utf-8") for d in eval_documents()] if tasks != ["ppl"] else []
        encode = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
        result = run_suite(tasks=tasks, lengths=lengths, loss_fn=loss_fn, logits_fn=logits_fn, encode=encode,
                           texts=texts, ppl_texts=ppl_texts, depths=depths, trials=args.trials, seed=args.seed,
                           stride=args.stride, batch_size=args.batch_size, threshold=args.threshold)
    except (FileNotFoundError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    result.update(info)  # today's top-level keys (checkpoint/hf, pos_encoding, train_length) stay
    result["meta"].update(model=info.get("checkpoint") or info.get("hf"), encoding=info["pos_encoding"],
                          train_length=info["train_length"], overrides=list(args.overrides))
    out = Path(args.json)
    write_json(result, out)
    write_csvs(result, out)
    for length in lengths:
        parts = [f"ppl {result['ppl'][str(length)]:.2f}"] if "ppl" in result else []
        if "passkey" in result:
            row = result["passkey"][str(length)]
            parts.append("passkey " + " ".join(f"{d}:{a:.2f}" for d, a in row.items() if not d.endswith("_ci")))
        for task, row in result.get("ruler", {}).items():
            if str(length) in getattr(row, "keys", lambda: ())():
                parts.append(f"{task} {row[str(length)]:.2f}")
        print(f"{length:>7} tokens  " + "  ".join(parts))
    return 0


def _load_checkpoint(args):
    """(loss_fn, logits_fn, tokenizer, info) of one of our checkpoints, in a single-process group."""
    from tapa_scale.eval.loading import load_checkpoint_model, loss_fn_of
    from tapa_scale.eval.retrieval import logits_fn_of_model
    from tapa_scale.parallel import ParallelConfig, init_groups

    init_groups(ParallelConfig(), device="cpu")  # ended with the process
    model, cfg, tokenizer = load_checkpoint_model(args.checkpoint, overrides=args.overrides)
    return loss_fn_of(model), logits_fn_of_model(model), tokenizer, {
        "checkpoint": str(args.checkpoint), "pos_encoding": cfg.model.pos_encoding, "train_length": cfg.data.seq_len}


def _load_hf(args):
    """(loss_fn, logits_fn, tokenizer, info) of a Hugging Face export."""
    from transformers import AutoTokenizer

    from tapa_scale.eval.retrieval import logits_fn_of_hf
    from tapa_scale.hf.rope_scaling import from_llama_rope
    from tapa_scale.hf.runtime import load_hf_loss_fn

    loss_fn = load_hf_loss_fn(args.hf)
    config = loss_fn.model.config  # ours (TAPA, ALiBi, NoPE) or a Llama (the RoPE family)
    kind = getattr(config, "position_encoding", None) or from_llama_rope(config.to_dict())[0]
    return loss_fn, logits_fn_of_hf(loss_fn.model), AutoTokenizer.from_pretrained(args.hf), {
        "hf": str(args.hf), "pos_encoding": kind, "train_length": config.max_position_embeddings}


if __name__ == "__main__":
    sys.exit(main())
