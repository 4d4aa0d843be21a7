"""Fine-tune trained models briefly on passkey-format data and score passkey at the fine-tuning length
and beyond, before and after (tapa_scale/eval/passkey_finetune.py; docs/evaluation.md).

    python tools/passkey_finetune.py --base runs/quickstart --encodings tapa,rope --length 128 \
        --steps 300 --lengths 128,256,512,1024 --out runs/passkey_ft

--base holds one run directory per encoding (the quickstart's); a missing one is trained first with
--config (the quickstart's config). Writes OUT/results.json, OUT/table.md and OUT/passkey_heatmap.png;
an encoding already in results.json is skipped, so a rerun resumes.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", required=True, help="directory with a run directory per encoding")
    p.add_argument("--config", default="configs/quickstart.yaml", help="config to train a missing base run")
    p.add_argument("--encodings", default="tapa,rope")
    p.add_argument("--length", type=int, default=128, help="prompt length of the fine-tuning samples")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--lengths", default="128,256,512,1024", help="evaluation lengths")
    p.add_argument("--depths", default="0,0.25,0.5,0.75,1")
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--seed", type=int, default=0, help="evaluation seed (training uses another)")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    from tapa_scale.eval.compare import train_encoding
    from tapa_scale.eval.figures import plot_all, tables
    from tapa_scale.eval.loading import load_checkpoint_model
    from tapa_scale.eval.passkey_finetune import finetune, score_passkey
    from tapa_scale.parallel import ParallelConfig, init_groups

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "results.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    lengths = [int(x) for x in args.lengths.split(",")]
    depths = [float(x) for x in args.depths.split(",")]
    for enc in args.encodings.split(","):
        run_dir = Path(args.base) / enc
        if not (run_dir / "checkpoints").is_dir():
            train_encoding(args.config, enc, run_dir, [])
    init_groups(ParallelConfig(), device="cpu")
    for enc in args.encodings.split(","):
        if f"{enc} fine-tuned" in results:
            continue
        model, cfg, tok = load_checkpoint_model(Path(args.base) / enc)
        encode = lambda t: tok(t, add_special_tokens=False)["input_ids"]  # noqa: E731
        score = lambda: score_passkey(model, encode, lengths, depths=depths, trials=args.trials,  # noqa: E731
                                      seed=args.seed)
        before = score()
        losses = finetune(model, encode, length=args.length, steps=args.steps, batch=args.batch, lr=args.lr,
                          log=lambda m: print(f"[{enc}] {m}", flush=True))
        after = score()
        for name, r in ((f"{enc} base", before), (f"{enc} fine-tuned", after)):
            r.update(pos_encoding=enc, train_length=cfg.data.seq_len, finetune_length=args.length,
                     finetune_steps=args.steps, finetune_batch=args.batch, finetune_lr=args.lr)
            results[name] = r
        results[f"{enc} fine-tuned"]["finetune_losses"] = [round(x, 4) for x in losses]
        path.write_text(json.dumps(results, indent=1) + "\n")  # after each encoding: a rerun resumes
        print(tables({k: v for k, v in results.items()}), flush=True)
    (out / "table.md").write_text(tables(results))
    plot_all(results, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
