"""Extend context in stages: pretrain short, then train longer, each stage restored from the previous
one and resumed from its own directory (tapa_scale/extend; docs/extension.md).

    python tools/extend_context.py --stages configs/stages/tiny_extend.yaml                 # TAPA track
    python tools/extend_context.py --stages configs/stages/tiny_extend.yaml model.pos_encoding=yarn \
        run.dir=runs/tiny_extend_yarn        # the same file, the YaRN track (its rule: scale 4)
    python tools/extend_context.py --stages FILE --dry-run     # each stage's resolved config
    python tools/extend_context.py --stages FILE extend_512:train.steps=50   # one stage's key
    python tools/extend_context.py --stages FILE --nproc 2     # every stage under torchrun, 2 processes

Rerun the same command after any interruption: finished stages are skipped, a stage cut short resumes.
Exit status 3: a stage's gate stopped the run (--ignore-gates goes on).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stages", required=True, help="stages file (configs/stages/*.yaml)")
    p.add_argument("--dry-run", action="store_true", help="print every stage's resolved config and exit")
    p.add_argument("--nproc", type=int, default=1, help="processes per stage (torchrun on this machine)")
    p.add_argument("--launcher", default=None, help="launcher prefix instead, e.g. 'torchrun --nnodes 4 "
                                                    "--nproc-per-node 8 --rdzv-endpoint HOST:29500'")
    p.add_argument("--world-size", type=int, default=None, help="with --launcher: the total process count")
    p.add_argument("--ignore-gates", action="store_true", help="go on past a stage whose gate failed")
    p.add_argument("--eval-results", default=None, help="JSON {stage: eval} used instead of evaluating "
                                                        "(testing the gates)")
    p.add_argument("overrides", nargs="*", metavar="[stage:]key=value")
    args = p.parse_args(argv)
    from tapa_scale.config import ConfigError
    from tapa_scale.extend import load_plan, run_plan
    from tapa_scale.extend.runner import StageFailed, describe

    try:
        plan = load_plan(args.stages, args.overrides, world_size=args.world_size or args.nproc)
        if args.dry_run:
            print(describe(plan))
            return 0
        injected = json.loads(Path(args.eval_results).read_text()) if args.eval_results else None
        return run_plan(plan, nproc=args.nproc, launcher=args.launcher, ignore_gates=args.ignore_gates,
                        eval_results=injected)
    except (ConfigError, FileNotFoundError, json.JSONDecodeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except StageFailed as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except Exception as e:  # a stage's training or evaluation failed: its own output said why
        import subprocess
        if isinstance(e, subprocess.CalledProcessError):
            print(f"error: {' '.join(map(str, e.cmd[:6]))} ... exited with status {e.returncode}; rerun the same "
                  f"command to resume", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
