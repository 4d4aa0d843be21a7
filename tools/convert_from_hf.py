"""Import a Hugging Face model (our export, or a Llama-architecture checkpoint) as a tapa_scale checkpoint.

    python tools/convert_from_hf.py --hf exports/tiny --out ckpts/tiny_from_hf [--pos-encoding yarn] \
        [model.rope.scale=8 ...]

Writes a weights-only checkpoint directory (model.safetensors, config.yaml, tokenizer/, COMPLETE):
no optimizer state, so it starts a new run, e.g. a context-extension stage (see docs/hf.md).
--pos-encoding and key=value overrides edit the config of the imported model.
"""
from __future__ import annotations

import argparse
import sys


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hf", required=True, help="Hugging Face model directory (safetensors weights)")
    p.add_argument("--out", required=True, help="checkpoint directory to write")
    p.add_argument("--pos-encoding", choices=["tapa", "rope", "pi", "yarn", "llama3", "nope", "alibi"],
                   help="positional encoding of the imported model (default: the source's own)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. model.rope.scale=8")
    args = p.parse_args(argv)
    from tapa_scale.config import ConfigError
    from tapa_scale.hf.import_hf import import_from_hf
    overrides = ([f"model.pos_encoding={args.pos_encoding}"] if args.pos_encoding else []) + args.overrides
    try:
        out = import_from_hf(args.hf, args.out, overrides=overrides, overwrite=args.overwrite)
    except (ConfigError, ValueError, FileNotFoundError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not (out / "tokenizer").is_dir():
        print(f"note: {args.hf} has no tokenizer.json; the run will use data.tokenizer from config.yaml")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
