"""A study's figures and its markdown report, from the raw results JSON (docs/study.md)."""
from __future__ import annotations

import json
from pathlib import Path

from .grid import NONE
from .report import _mean, _rows, _sizes, headline, passkey_table, same_tokens, table


def write_report(results_path: Path, out_dir: Path) -> list[Path]:
    """<out_dir>/<stem>.md (every table, the headline numbers, the same-tokens check) and the PNGs."""
    results_path, out_dir = Path(results_path), Path(out_dir)
    runs = json.loads(results_path.read_text())["runs"]
    out_dir.mkdir(parents=True, exist_ok=True)
    h = headline(runs)
    parts = [table(runs, "zero_shot", "Zero-shot perplexity by multiple of the pretraining length"),
             table(runs, "extended", "Perplexity after extension, by multiple of the pretraining length"),
             passkey_table(runs), _headline_md(h), _tokens_md(same_tokens(runs))]
    md = out_dir / f"{results_path.stem}.md"
    md.write_text("\n\n".join(p for p in parts if p) + "\n")
    return [md, *plot(runs, h, out_dir, results_path.stem)]


def _headline_md(h: dict) -> str:
    lines = ["**TAPA against RoPE and NoPE, by model size**", "",
             "| size | non-embedding params | 1× gap to RoPE (nats) | 1× gap to NoPE (nats) "
             "| first multiple TAPA < RoPE, zero-shot | after extension |", "|---|---|---|---|---|---|"]
    f = lambda v: "–" if v is None else (f"{v:+.4f}" if isinstance(v, float) else str(v))  # noqa: E731
    for size, r in h["sizes"].items():
        lines.append(f"| {size} | {r['non_embedding_params']:,} | {f(r.get('gap_to_rope_nats'))} "
                     f"| {f(r.get('gap_to_nope_nats'))} | {f(r.get('first_multiple_tapa_below_rope_zero_shot'))} "
                     f"| {f(r.get('first_multiple_tapa_below_rope_extended'))} |")
    for other in ("rope", "nope"):
        t = h.get(f"trend_gap_to_{other}")
        if t:
            err = "no error estimate from 2 points" if t["slope_stderr"] is None else f"± {t['slope_stderr']:.4f}"
            lines.append(f"\nGap to {other} against log10(non-embedding params): slope "
                         f"{t['slope_nats_per_decade']:+.4f} nats per decade ({err}, {t['points']} sizes).")
    return "\n".join(lines)


def _tokens_md(groups: list) -> str:
    lines = ["**Same tokens for every row** (final data state and next-batch fingerprint of the pretraining)", "",
             "| size | seed | runs | tokens | same |", "|---|---|---|---|---|"]
    lines += [f"| {g['size']} | {g['seed']} | {', '.join(g['runs'])} | {g['tokens']:,} | "
              f"{'yes' if g['same_tokens'] else 'NO'} |" for g in groups]
    return "\n".join(lines)


def runs_multiple(runs: dict) -> float:
    """The extension's length over the pretraining's, from any extended run."""
    for r in runs.values():
        for rec in r.get("extended", {}).values():
            return rec["seq_len"] / r["pretrain"]["seq_len"]
    return 1.0


def plot(runs: dict, h: dict, out_dir: Path, stem: str) -> list[Path]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []

    def save(fig, name):
        fig.tight_layout()
        fig.savefig(out_dir / f"{stem}_{name}.png", dpi=110)
        plt.close(fig)
        written.append(out_dir / f"{stem}_{name}.png")

    sizes, params = _sizes(runs)
    for section, label in (("zero_shot", "zero-shot"), ("extended", "after extension")):
        rows = _rows(runs, section)
        present = [s for s in sizes if s in rows]
        if not present:
            continue
        fig, axes = plt.subplots(1, len(present), figsize=(4.2 * len(present), 3.6), squeeze=False)
        for ax, size in zip(axes[0], present):
            for name, row in sorted(rows[size].items()):
                ms = sorted(row, key=int)
                ax.plot([int(m) for m in ms], [_mean(row[m]) for m in ms], marker="o", label=name)
            ax.set_xscale("log", base=2)
            if section == "extended":
                ax.axvline(runs_multiple(runs), color="grey", lw=0.8, ls="--")  # the extension's length
            ax.set(xlabel="multiple of the pretraining length", ylabel="perplexity",
                   title=f"{size} ({params[size]:,} params), {label}")
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=6)
        save(fig, f"ppl_{section}")
    gaps = [(v["non_embedding_params"], v.get("gap_to_rope_nats"), v.get("gap_to_nope_nats"))
            for v in h["sizes"].values()]
    if any(g[1] is not None or g[2] is not None for g in gaps):
        fig, ax = plt.subplots(figsize=(5, 3.6))
        for i, other in ((1, "RoPE"), (2, "NoPE")):
            pts = [(g[0], g[i]) for g in gaps if g[i] is not None]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=f"TAPA − {other}")
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_xscale("log")
        ax.set(xlabel="non-embedding parameters", ylabel="1× NLL gap (nats)", title="TAPA's gap at the training length")
        ax.grid(True, alpha=0.3)
        ax.legend()
        save(fig, "gap_vs_size")
    heat = {f"{r['info']['size']} {r['info']['variant']}" + ("" if rule == NONE else f"+{rule}"):
            {str(int(m) * r["pretrain"]["seq_len"]): row for m, row in rec["eval"]["passkey"].items()}
            for r in runs.values() for rule, rec in r.get("extended", {}).items() if "passkey" in rec["eval"]}
    if heat:
        from ..eval.figures import plot_all

        for path in plot_all({k: {"passkey": v} for k, v in sorted(heat.items())}, out_dir):
            target = out_dir / f"{stem}_{path.name}"
            path.replace(target)
            written.append(target)
    curves = [(name, r["pretrain"]["loss_curve"]) for name, r in sorted(runs.items()) if "pretrain" in r]
    if curves:
        fig, ax = plt.subplots(figsize=(6, 4))
        for name, curve in curves:
            ax.plot([p[0] for p in curve], [p[1] for p in curve], label=name, lw=1)
        ax.set(xlabel="step", ylabel="training loss", title="Pretraining loss")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=5, ncol=2)
        save(fig, "loss_curves")
    return written
