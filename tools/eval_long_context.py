"""Sliding-window perplexity of a checkpoint at several context lengths.

    python tools/eval_long_context.py --checkpoint runs/tiny --lengths 128,256,512,1024 --json out.json
    python tools/eval_long_context.py --hf exports/tiny --lengths 128,256 --json out.json
    (texts default to the embedded held-out long documents; --text FILE... to choose others)
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="checkpoint dir, or run dir (its latest checkpoint)")
    source.add_argument("--hf", help="a Hugging Face export of ours (tools/convert_to_hf.py)")
    p.add_argument("--text", nargs="*", help="UTF-8 text files (default: the embedded evaluation documents)")
    p.add_argument("--lengths", required=True, help="comma-separated window lengths in tokens")
    p.add_argument("--stride", type=int, default=None, help="window stride (default: half of each length)")
    p.add_argument("--max-tokens", type=int, default=None, help="evaluate at most this many tokens in total")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--json", required=True, help="output JSON path")
    args = p.parse_args(argv)
    try:
        lengths = [int(x) for x in args.lengths.split(",") if x]
    except ValueError:
        print(f"error: --lengths {args.lengths!r}: expected comma-separated integers", file=sys.stderr)
        return 2
    from tapa_scale.data import eval_documents
    from tapa_scale.eval import evaluate_lengths, tokenize_texts
    from tapa_scale.eval.long_context import write_json

    try:
        loss_fn, tokenizer, info = (_load_hf if args.hf else _load_checkpoint)(args)
        texts = tokenize_texts(tokenizer, [Path(t) for t in args.text] if args.text else eval_documents(),
                               args.max_tokens)
        result = evaluate_lengths(loss_fn, texts, lengths, args.stride, args.batch_size)
    except (FileNotFoundError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    result.update(info)
    write_json(result, Path(args.json))
    for length in lengths:
        print(f"{length:>7} tokens  ppl {result['ppl'][str(length)]:.2f}")
    return 0


def _load_checkpoint(args):
    """(loss_fn, tokenizer, info) of one of our checkpoints, in a single-process group."""
    from tapa_scale.eval.loading import load_checkpoint_model, loss_fn_of
    from tapa_scale.parallel import ParallelConfig, init_groups

    init_groups(ParallelConfig(), device="cpu")  # ended with the process
    model, cfg, tokenizer = load_checkpoint_model(args.checkpoint)
    return loss_fn_of(model), tokenizer, {"checkpoint": str(args.checkpoint), "pos_encoding":
                                          cfg.model.pos_encoding, "train_length": cfg.data.seq_len}


def _load_hf(args):
    """(loss_fn, tokenizer, info) of a Hugging Face export."""
    from transformers import AutoTokenizer

    from tapa_scale.hf.runtime import load_hf_loss_fn

    from tapa_scale.hf.rope_scaling import from_llama_rope

    loss_fn = load_hf_loss_fn(args.hf)
    config = loss_fn.model.config  # ours (TAPA, ALiBi, NoPE) or a Llama (the RoPE family)
    kind = getattr(config, "position_encoding", None) or from_llama_rope(config.to_dict())[0]
    return loss_fn, AutoTokenizer.from_pretrained(args.hf), {
        "hf": str(args.hf), "pos_encoding": kind, "train_length": config.max_position_embeddings}


if __name__ == "__main__":
    sys.exit(main())
