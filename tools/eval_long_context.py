"""Long-context evaluation of checkpoints or exports: perplexity by window length, passkey retrieval,
the RULER-style tasks, loss by position (docs/evaluation.md).

    python tools/eval_long_context.py --checkpoint runs/tiny --lengths 128,256,512 --json out.json
    python tools/eval_long_context.py --hf exports/tiny --tasks ppl,passkey,ruler,position --lengths 512,1024 \
        --depths 0,0.5,1 --trials 20 --json out.json --plots figs/
    python tools/eval_long_context.py --checkpoint runs/rope --tasks passkey --lengths 1024 --json pi.json \
        model.pos_encoding=pi model.rope.scale=4        # score a RoPE checkpoint zero-shot as PI
    python tools/eval_long_context.py --compare runs/tapa runs/rope exports/alibi --tasks ppl,passkey \
        --lengths 256,512,1024 --json cmp.json --plots figs/
    torchrun --nproc-per-node 8 tools/eval_long_context.py --checkpoint runs/125m --device cuda --dtype bf16 ...

ppl and position read the embedded held-out documents (--text FILE... for others); the needle tasks'
haystack is the same held-out text. Writes the JSON, a CSV per task and a markdown table beside it
(rank 0 of a torchrun launch; every rank scores a share).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def _numbers(text: str, kind, what: str) -> list:
    try:
        return [kind(x) for x in text.split(",") if x]
    except ValueError:
        raise ValueError(f"{what} {text!r}: expected comma-separated numbers") from None


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="checkpoint dir, or run dir (its latest checkpoint)")
    source.add_argument("--hf", help="a Hugging Face export (tools/convert_to_hf.py) or a Llama directory")
    source.add_argument("--compare", nargs="+", metavar="DIR", help="several checkpoints/run dirs/exports")
    p.add_argument("--tasks", default="ppl", help="comma-separated: ppl, passkey, ruler (all six), position, "
                                                  "or RULER task names")
    p.add_argument("--text", nargs="*", help="UTF-8 text files for ppl and position (default: the embedded "
                                             "held-out documents)")
    p.add_argument("--lengths", required=True, help="comma-separated lengths in tokens (windows; prompt lengths)")
    p.add_argument("--stride", type=int, default=None, help="ppl window stride (default: half of each length)")
    p.add_argument("--max-tokens", type=int, default=None, help="ppl/position: read at most this many tokens")
    p.add_argument("--depths", default="0,0.25,0.5,0.75,1", help="needle depths in [0, 1]")
    p.add_argument("--trials", type=int, default=20, help="samples per (task, length, depth)")
    p.add_argument("--seed", type=int, default=0, help="seed of the generated samples")
    p.add_argument("--threshold", type=float, default=0.85, help="accuracy that counts for RULER's effective length")
    p.add_argument("--position-windows", type=int, default=16, help="position: windows scored per length")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    p.add_argument("--dtype", default="fp32", help="fp32 or bf16 (checkpoints: float32 weights under bf16 autocast)")
    p.add_argument("--generate", action="store_true", help="retrieval: decode with the export's generate() "
                                                           "(KV cache) instead of teacher forcing")
    p.add_argument("--json", required=True, help="output JSON path")
    p.add_argument("--plots", default=None, help="directory for the PNG figures")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="model overrides for checkpoints")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse(argv)
    from tapa_scale.eval.models import kind_of, open_model
    from tapa_scale.eval.run import Spec, check_spec, evaluate, model_names, write_outputs
    from tapa_scale.eval.suite import expand_tasks

    try:
        spec = Spec(tasks=expand_tasks(args.tasks), lengths=_numbers(args.lengths, int, "--lengths"),
                    depths=_numbers(args.depths, float, "--depths"), trials=args.trials, seed=args.seed,
                    threshold=args.threshold, stride=args.stride, max_tokens=args.max_tokens,
                    batch_size=args.batch_size, position_windows=args.position_windows,
                    generate=args.generate, text=args.text)
        check_spec(spec)
        paths = args.compare or [args.checkpoint or args.hf]
        kinds = [kind_of(p) if args.compare else ("hf" if args.hf else "checkpoint") for p in paths]
        if args.overrides and "hf" in kinds:
            raise ValueError("key=value overrides edit our checkpoints' model; they do not apply to an export "
                             f"({paths[kinds.index('hf')]})")
        if args.generate and "checkpoint" in kinds:
            raise ValueError(f"--generate decodes with an export's generate(); {paths[kinds.index('checkpoint')]} "
                             "is a checkpoint (convert it with tools/convert_to_hf.py)")
        if "checkpoint" in kinds or "WORLD_SIZE" in os.environ:
            _init_groups(args.device)
        models = {}
        for path, kind, name in zip(paths, kinds, model_names(paths)):
            ev = open_model(path, kind, device=args.device, dtype=args.dtype, overrides=args.overrides, name=name)
            models[name] = evaluate(ev, spec)
            del ev
    except (FileNotFoundError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if int(os.environ.get("RANK", "0")) == 0:
        write_outputs(models, Path(args.json), Path(args.plots) if args.plots else None)
        _print(models, spec.lengths)
    return 0


def _init_groups(device: str) -> None:
    from tapa_scale.eval.models import resolve_device
    from tapa_scale.parallel import ParallelConfig, init_groups

    init_groups(ParallelConfig(), device=resolve_device(device).type)  # ended with the process


def _print(models: dict, lengths) -> None:
    for name, r in models.items():
        print(f"{name} ({r['pos_encoding']}, trained at {r['train_length']} tokens)")
        for length in map(str, lengths):
            parts = [f"ppl {r['ppl'][length]:.2f}"] if "ppl" in r else []
            if "passkey" in r:
                row = r["passkey"][length]
                parts.append("passkey " + " ".join(f"{d}:{a:.2f}" for d, a in row.items() if not d.endswith("_ci")))
            parts += [f"{t} {row[length]:.2f}" for t, row in r.get("ruler", {}).items()
                      if isinstance(row, dict) and length in row]
            if "position_loss" in r:
                parts.append("loss by position " + " ".join(f"{v:.2f}" for v in r["position_loss"][length]))
            print(f"{length:>7} tokens  " + "  ".join(parts))


if __name__ == "__main__":
    sys.exit(main())
