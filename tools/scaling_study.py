"""Plan layouts for a cluster, calibrate the cost model on the hardware at hand, and check it against
measured runs (docs/scaling.md).

    python tools/scaling_study.py plan --config configs/llama3_8b_8k.yaml --nodes 64 --gpus-per-node 8 \\
        --hardware h100_sxm --json plan.json [--seq-len 32768] [--global-batch 128] [--top 10]
    python tools/scaling_study.py calibrate --out docs/measured/hardware_cpu_t1.json [--quick]
    python tools/scaling_study.py anchors --hardware h100_sxm [--json OUT]
    python tools/scaling_study.py sweep --sweep configs/sweeps/cpu_validation.yaml \\
        --hardware docs/measured/hardware_cpu_t1.json --json docs/measured/scaling_validation_cpu.json \\
        [--plots docs/measured] [--only NAME] [--rerun] [--launcher CMD]

A sweep skips runs its JSON already holds (rerun with --rerun); results are written after each run.
"""
from __future__ import annotations

import argparse
import fnmatch
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tapa_scale.config import ConfigError, load_config  # noqa: E402
from tapa_scale.scaling.hardware import ProfileError, load_hardware  # noqa: E402
from tapa_scale.scaling.layout import layout_of, shape_of  # noqa: E402


def vocab_of(cfg) -> int:
    if cfg.model.vocab_size:
        return cfg.model.vocab_size
    from tapa_scale.data.tokenizer import load_tokenizer
    return len(load_tokenizer(cfg.data.tokenizer))


def cmd_plan(args) -> int:
    from tapa_scale.scaling.plan import plan

    world = args.nodes * args.gpus_per_node
    overrides = list(args.overrides) + ([f"data.seq_len={args.seq_len}"] if args.seq_len else [])
    layout_free = ["parallel.tp=1", "parallel.pp=1", "parallel.cp=1", "parallel.vpp=1", "parallel.sequence_parallel=false"]
    cfg = load_config(args.config, overrides + layout_free, world_size=1, check_paths=False)  # the layout is the plan's
    hw = load_hardware(args.hardware)
    shape = shape_of(cfg.model, cfg.data.seq_len, args.vocab or vocab_of(cfg))
    batch = args.global_batch or cfg.train.global_batch_size or world
    preds = plan(shape, hw, nodes=args.nodes, gpus_per_node=args.gpus_per_node, global_batch=batch,
                 recompute=("none", "selective", "full") if args.recompute else ("none",),
                 sharded_optimizer=(False,) if args.no_distributed_optimizer else (False, True))
    rows = [p.to_json() for p in preds]
    out = {"config": args.config, "seq_len": shape.seq_len, "vocab_size": shape.vocab_size, "nodes": args.nodes,
           "gpus_per_node": args.gpus_per_node, "global_batch": batch, "hardware": hw.name,
           "calibrated": hw.calibrated, "layouts": rows}
    Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
    print(f"{len(rows)} layouts ({sum(r['fits'] for r in rows)} fit) on {world} x {hw.name}"
          f"{'' if hw.calibrated else ' (uncalibrated profile)'}; best first:")
    for r in rows[:args.top]:
        print(f"  {r['layout']:<40} {r['tokens_per_s']:>12,.0f} tok/s  MFU {r['mfu']:.3f}  "
              f"{r['memory_gb']:7.1f} GB {'fits' if r['fits'] else 'DOES NOT FIT'}  bound by {r['bottleneck']}")
    return 0


def cmd_calibrate(args) -> int:
    from tapa_scale.scaling.calibrate import calibrate

    hw = calibrate(device=args.device, dtype=args.dtype, threads=args.threads, processes=args.processes,
                   quick=args.quick, name=args.name, links_from=args.links_from)
    hw.save(args.out)
    print(f"wrote {args.out}")
    return 0


def cmd_anchors(args) -> int:
    from tapa_scale.scaling.anchors import anchor_predictions

    hw = load_hardware(args.hardware)
    rows = anchor_predictions(hw)
    for r in rows:
        print(f"{r['anchor']:<26} published MFU {r['published_mfu_noncausal']:.3f} "
              f"({r['published_tokens_per_s_per_gpu']:,} tok/s/GPU)   predicted {r['predicted_mfu_noncausal']:.3f} "
              f"({r['predicted_tokens_per_s_per_gpu']:,.0f} tok/s/GPU), {r['predicted_memory_gb']:.1f} GB, "
              f"bound by {r['bottleneck']}")
    if args.json:
        Path(args.json).write_text(json.dumps({"hardware": hw.name, "calibrated": hw.calibrated, "anchors": rows},
                                              indent=1) + "\n")
    return 0


def _load_sweep(path: str):
    import yaml
    from tapa_scale.scaling.sweep import RunSpec

    try:
        spec = yaml.safe_load(Path(path).read_text())
        runs = [RunSpec(name=r["name"], config=r["config"], nproc=int(r.get("nproc", 1)),
                        overrides=list(r.get("set", [])), counted=bool(r.get("counted", True)))
                for r in spec["runs"]]
    except (OSError, yaml.YAMLError, KeyError, TypeError) as e:
        raise ConfigError(f"{path}: expected YAML with runs: [{{name, config, nproc, set}}] ({e!r})") from None
    return spec, runs


def cmd_sweep(args) -> int:
    from tapa_scale.scaling.sweep import DEFAULT_LAUNCHER, compare, figures, measure, run_overrides, summary

    spec, runs = _load_sweep(args.sweep)
    if args.only:
        runs = [r for r in runs if fnmatch.fnmatch(r.name, args.only)]
    hw = load_hardware(args.hardware)
    common = list(spec.get("set", []))
    steps, log_every = int(spec.get("steps", 8)), int(spec.get("log_every", 2))
    forced = run_overrides(Path("runs") / "sweeps" / Path(args.json).stem, steps, log_every)
    planned = {}
    for r in runs:  # every config is checked before the first run starts
        try:
            planned[r.name] = (r, load_config(r.config, common + r.overrides + forced, world_size=r.nproc))
        except ConfigError as e:
            raise ConfigError(f"{args.sweep}: run {r.name}: {e}") from None
    out = Path(args.json)
    measured = {row["name"]: row["measured"] for row in json.loads(out.read_text())["runs"]} if out.exists() else {}

    def write() -> dict:
        # predictions always follow the current model and profile; measurements are kept as taken
        rows = []
        for name, m in measured.items():
            r, cfg = planned.get(name) or (None, load_config(m["config"], common + m["overrides"] + forced,
                                                             world_size=m["nproc"]))
            shape = shape_of(cfg.model, cfg.data.seq_len, m.get("vocab_size") or vocab_of(cfg))
            lay = layout_of(cfg, m["nproc"])
            rows.append({**compare(m, shape, lay, hw), "tokens_per_step": lay.global_batch * shape.seq_len,
                         "seq_len": shape.seq_len,
                         "measured": m})
        result = {"hardware": hw.name, "calibrated": hw.calibrated, "runs": rows, "summary": summary(rows)}
        out.write_text(json.dumps(result, indent=1) + "\n")
        return result

    for name, (r, cfg) in planned.items():
        if name in measured and "error" not in measured[name] and not args.rerun:
            print(f"{name}: already measured")
            continue
        m = measure(r, Path("runs") / "sweeps" / out.stem, steps=steps, log_every=log_every,
                    timeout_s=float(spec.get("timeout_s", 900)),
                    common=common, launcher=args.launcher or DEFAULT_LAUNCHER, keep=args.keep,
                    memory_pass=bool(spec.get("memory_pass", False)), host_probe=bool(spec.get("host_probe", False)))
        measured[name] = {**m, "config": r.config, "overrides": r.overrides}
        write()
    result = write()
    if args.plots:
        Path(args.plots).mkdir(parents=True, exist_ok=True)
        figures(result["runs"], Path(args.plots))
    print(json.dumps(result["summary"], indent=1))
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("plan", help="rank every feasible layout of a cluster")
    p.add_argument("--config", required=True)
    p.add_argument("--nodes", type=int, required=True)
    p.add_argument("--gpus-per-node", type=int, default=8)
    p.add_argument("--hardware", default="h100_sxm", help="shipped profile name or a profile JSON")
    p.add_argument("--json", required=True)
    p.add_argument("--seq-len", type=int, default=0)
    p.add_argument("--global-batch", type=int, default=0, help="sequences per step (default: the config's)")
    p.add_argument("--vocab", type=int, default=0, help="vocabulary (default: model.vocab_size or the tokenizer's)")
    p.add_argument("--recompute", action="store_true", help="also price selective and full activation recomputation")
    p.add_argument("--no-distributed-optimizer", action="store_true",
                   help="only layouts with a full optimizer copy per data-parallel rank")
    p.add_argument("--top", type=int, default=10)
    p.add_argument("overrides", nargs="*", metavar="key=value")
    c = sub.add_parser("calibrate", help="measure this machine into a hardware profile")
    c.add_argument("--out", required=True)
    c.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    c.add_argument("--dtype", default="fp32", choices=("fp32", "bf16"))
    c.add_argument("--threads", type=int, default=1)
    c.add_argument("--processes", type=int, default=2)
    c.add_argument("--quick", action="store_true")
    c.add_argument("--name", default="")
    c.add_argument("--links-from", default="", help="with --processes 1 (one GPU): copy this profile's links")
    a = sub.add_parser("anchors", help="predictions for published throughput figures")
    a.add_argument("--hardware", default="h100_sxm")
    a.add_argument("--json", default="")
    s = sub.add_parser("sweep", help="run layouts here and compare with the prediction")
    s.add_argument("--sweep", required=True)
    s.add_argument("--hardware", required=True)
    s.add_argument("--json", required=True)
    s.add_argument("--plots", default="")
    s.add_argument("--only", default="")
    s.add_argument("--rerun", action="store_true")
    s.add_argument("--keep", action="store_true", help="keep each run's directory")
    s.add_argument("--launcher", default="", help="command before '-m tapa_scale.train'; {nproc} is substituted")
    args = parser.parse_args(argv)
    try:
        return {"plan": cmd_plan, "calibrate": cmd_calibrate, "anchors": cmd_anchors,
                "sweep": cmd_sweep}[args.command](args)
    except (ConfigError, ProfileError, ValueError) as e:
        sys.stderr.write(f"error: {e}\n")
        return 2


if __name__ == "__main__":
    sys.exit(main())
