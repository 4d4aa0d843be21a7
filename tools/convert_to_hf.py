"""Export a training checkpoint as a Hugging Face directory (weights, config, tokenizer, modeling code).

    python tools/convert_to_hf.py --checkpoint runs/tiny --out exports/tiny [--max-shard-size 2GB] [--dtype bf16]

--checkpoint takes a run directory (its latest complete checkpoint) or one checkpoint directory.
The result loads with AutoModelForCausalLM.from_pretrained(OUT, trust_remote_code=True) and
AutoTokenizer.from_pretrained(OUT), without tapa_scale installed. See docs/hf.md.
"""
from __future__ import annotations

import argparse
import sys


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="run directory or checkpoint directory")
    p.add_argument("--out", required=True, help="Hugging Face directory to write")
    p.add_argument("--max-shard-size", default="2GB", help="largest safetensors file, e.g. 500MB, 2GB, 1GiB")
    p.add_argument("--dtype", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                   help="weights dtype in the export (auto = as trained)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    args = p.parse_args(argv)
    from tapa_scale.config import ConfigError
    from tapa_scale.hf.export import export_to_hf
    try:
        out = export_to_hf(args.checkpoint, args.out, max_shard_size=args.max_shard_size, dtype=args.dtype,
                           overwrite=args.overwrite)
    except (ConfigError, ValueError, FileNotFoundError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
