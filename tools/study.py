"""Run a study: a grid of runs, each pretrained short, evaluated zero-shot at multiples of its length,
extended by one stage and evaluated again; the raw results in one JSON, tables and figures beside it
(tapa_scale/study; docs/study.md).

    python tools/study.py --study configs/studies/paper_cpu.yaml                 # everything not done yet
    python tools/study.py --study configs/studies/paper_cpu.yaml --only 'tapa-s-*' --jobs 2
    python tools/study.py --study configs/studies/paper_cpu.yaml --list          # the runs and their state
    python tools/study.py --study configs/studies/paper_cpu.yaml --report-only   # tables and figures again

Rerun the same command after any interruption: finished pieces are skipped, a training cut short resumes.
key=value arguments apply to every run (e.g. train.log_every=50). Exit status 1 when a run failed.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--study", required=True, help="study file (configs/studies/*.yaml)")
    p.add_argument("--only", default=None, help="glob over run names, e.g. 'tapa-*' or 'rope-s-s0'")
    p.add_argument("--jobs", type=int, default=1, help="runs at once, each with its share of the CPU threads")
    p.add_argument("--nproc", type=int, default=1, help="processes per training run (torchrun on this machine)")
    p.add_argument("--list", action="store_true", help="print the runs and what the results hold, then exit")
    p.add_argument("--report-only", action="store_true", help="regenerate the tables and figures, then exit")
    p.add_argument("--report-dir", default=None, help="where tables and figures go (default: beside the results)")
    p.add_argument("--no-report", action="store_true", help=argparse.SUPPRESS)  # a --jobs worker
    p.add_argument("--results", default=None, help="results JSON instead of the study file's")
    p.add_argument("--run-dir", default=None, help="directory of the runs instead of the study file's")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    args = p.parse_args(argv)
    from tapa_scale.config import ConfigError
    from tapa_scale.study import load_study, run_study, write_report
    from tapa_scale.study.execute import Results, complete

    try:
        study = load_study(args.study, args.overrides, args.results, args.run_dir)
        if not study.select(args.only):
            raise ConfigError(f"--only {args.only!r}: no run of {args.study} matches "
                              f"(runs: {', '.join(r.name for r in study.runs)})")
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    report_dir = Path(args.report_dir) if args.report_dir else study.results.parent
    if args.list:
        have = Results(study.results, study.file).read()["runs"]
        for r in study.select(args.only):
            pieces = [k for k in ("pretrain", "zero_shot") if k in have.get(r.name, {})]
            pieces += [f"extended:{x}" for x in have.get(r.name, {}).get("extended", {})]
            print(f"{r.name:<28} {'done' if complete(study, r, have) else 'todo':<5} {' '.join(pieces)}")
        return 0
    failed = 0 if args.report_only else run_study(study, args.only, args.jobs, args.nproc)
    if study.results.exists() and not args.no_report:
        for path in write_report(study.results, report_dir):
            print(f"wrote {path}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
