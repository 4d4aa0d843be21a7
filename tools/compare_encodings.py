"""Train several positional encodings on the same budget and compare perplexity against context length.

    python tools/compare_encodings.py --config configs/quickstart.yaml --encodings tapa,rope,nope \
        --multiples 1,2,4,8 --out runs/quickstart [key=value ...]
Writes OUT/results.json, OUT/ppl_vs_length.png and OUT/table.md; OUT/<encoding>/ holds each run.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True)
    p.add_argument("--encodings", default="tapa,rope")
    p.add_argument("--multiples", default="1,2,4,8", help="evaluation lengths as multiples of data.seq_len")
    p.add_argument("--out", required=True)
    p.add_argument("--max-tokens", type=int, default=None, help="held-out tokens to score per length")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    args = p.parse_args(argv)
    from tapa_scale.config import ConfigError
    from tapa_scale.eval.compare import compare_encodings
    try:
        multiples = [int(m) for m in args.multiples.split(",")]
        compare_encodings(args.config, args.encodings.split(","), multiples, Path(args.out),
                          args.overrides, args.max_tokens)
    except (ConfigError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
