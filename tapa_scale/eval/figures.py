"""What users look at: a markdown table shaped like the paper's Table 1 (rows = models, columns =
lengths) per task, and PNG figures -- perplexity against length (a line per model), passkey accuracy
as a depth x length heat map per model, RULER-style accuracy against length, loss by position.

Every function takes {model name: single-model result JSON} (tools/eval_long_context.py), so one
model and a --compare of several are drawn the same way, side by side from the same run.
"""
from __future__ import annotations

from pathlib import Path

Results = dict  # {model name: the single-model JSON}


def _lengths(section: dict) -> list[str]:
    return sorted((k for k in section if k.isdigit()), key=int)


def tables(models: Results) -> str:
    """Markdown: perplexity, passkey (mean over depths), each RULER-style task, rows = models."""
    out = []

    def table(title, rows: dict, fmt):
        cols = sorted({c for r in rows.values() for c in r}, key=int)
        lines = [f"**{title}**", "", "| model | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
        lines += [f"| {m} | " + " | ".join(fmt(r[c]) if c in r else "–" for c in cols) + " |" for m, r in rows.items()]
        out.append("\n".join(lines))

    ppl = {m: r["ppl"] for m, r in models.items() if "ppl" in r}
    if ppl:
        table("perplexity by window length (tokens)", ppl, lambda v: f"{v:.2f}")
    pk = {m: {L: _mean_over_depths(row) for L, row in r["passkey"].items()} for m, r in models.items() if "passkey" in r}
    if pk:
        table("passkey accuracy by length (mean over depths)", pk, lambda v: f"{v:.2f}")
    tasks = sorted({t for r in models.values() for t in r.get("ruler", {}) if t not in ("effective_length", "threshold")})
    for task in tasks:
        rows = {m: {L: r["ruler"][task][L] for L in _lengths(r["ruler"][task])}
                for m, r in models.items() if task in r.get("ruler", {})}
        eff = {m: r["ruler"]["effective_length"][task] for m, r in models.items() if task in r.get("ruler", {})}
        table(f"{task} accuracy by length (effective length: "
              + ", ".join(f"{m} {e}" for m, e in eff.items()) + ")", rows, lambda v: f"{v:.2f}")
    return "\n\n".join(out) + "\n"


def _mean_over_depths(row: dict) -> float:
    accs = [v for d, v in row.items() if not d.endswith("_ci")]
    return sum(accs) / len(accs)


def plot_all(models: Results, out_dir: Path) -> list[Path]:
    """The figures for the sections present, under out_dir; returns their paths."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []

    def save(fig, name):
        if fig.get_layout_engine() is None:
            fig.tight_layout()
        fig.savefig(out_dir / name, dpi=120)
        plt.close(fig)
        written.append(out_dir / name)

    if any("ppl" in r for r in models.values()):
        fig, ax = plt.subplots(figsize=(6, 4))
        for m, r in models.items():
            if "ppl" in r:
                xs = _lengths(r["ppl"])
                ax.plot([int(x) for x in xs], [r["ppl"][x] for x in xs], marker="o", label=m)
        ax.set_xscale("log", base=2)
        ax.set(xlabel="window length (tokens)", ylabel="perplexity", title="Perplexity vs length")
        ax.grid(True, alpha=0.3)
        ax.legend()
        save(fig, "ppl_vs_length.png")
    with_pk = [(m, r["passkey"]) for m, r in models.items() if "passkey" in r]
    if with_pk:
        fig, axes = plt.subplots(1, len(with_pk), figsize=(3.2 * len(with_pk) + 1, 3.4), squeeze=False,
                                 layout="constrained")
        for ax, (m, pk) in zip(axes[0], with_pk):
            lengths = _lengths(pk)
            depths = sorted((d for d in pk[lengths[0]] if not d.endswith("_ci")), key=float)
            grid = [[pk[L][d] for L in lengths] for d in depths]
            im = ax.imshow(grid, vmin=0, vmax=1, cmap="RdYlGn", aspect="auto", origin="upper")
            for i, row in enumerate(grid):
                for j, acc in enumerate(row):
                    ax.text(j, i, f"{acc:.2f}", ha="center", va="center", fontsize=7)
            ax.set_xticks(range(len(lengths)), lengths, rotation=45)
            ax.set_yticks(range(len(depths)), depths)
            ax.set(xlabel="length (tokens)", ylabel="depth", title=m)
        fig.colorbar(im, ax=axes[0].tolist(), label="accuracy")
        fig.suptitle("Passkey accuracy")
        save(fig, "passkey_heatmap.png")
    tasks = sorted({t for r in models.values() for t in r.get("ruler", {}) if t not in ("effective_length", "threshold")})
    if tasks:
        fig, axes = plt.subplots(1, len(tasks), figsize=(3 * len(tasks), 3.2), squeeze=False, sharey=True)
        for ax, task in zip(axes[0], tasks):
            for m, r in models.items():
                row = r.get("ruler", {}).get(task)
                if row:
                    xs = _lengths(row)
                    ax.plot([int(x) for x in xs], [row[x] for x in xs], marker="o", label=m)
            ax.set_xscale("log", base=2)
            ax.set(title=task, xlabel="length", ylim=(-0.05, 1.05))
        axes[0][0].set_ylabel("accuracy")
        axes[0][-1].legend(fontsize=7)
        save(fig, "ruler_vs_length.png")
    if any("position_loss" in r for r in models.values()):
        fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.8))
        for m, r in models.items():
            if "position_loss" not in r:
                continue
            L = _lengths(r["position_loss"])[-1]
            mids = [(s + e) / 2 for s, e in r["position_buckets"][L]]
            a.plot(mids, r["position_loss"][L], marker=".", label=f"{m} (window {L})")
            ks = sorted(r["prefix_loss"], key=int)
            b.plot([int(k) for k in ks], [r["prefix_loss"][k] for k in ks], marker="o", label=m)
        a.set(xlabel="position in window", ylabel="mean loss", title="Loss by position")
        b.set(xlabel="tokens of other text before the passage", ylabel="passage loss", title="Passage moved outwards")
        for ax in (a, b):
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=7)
        save(fig, "loss_by_position.png")
    return written
