"""Perplexity against context length: the table and plot that compare positional encodings."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Sequence

import torch

from .perplexity import LossFn, perplexity


def tokenize_texts(tokenizer, paths: Sequence[Path], max_tokens: Optional[int] = None) -> list[torch.Tensor]:
    """Token ids of each text file, keeping at most max_tokens in total (the last text is cut)."""
    out, left = [], max_tokens
    for path in paths:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"text file not found: {path}")
        ids = tokenizer(path.read_text(encoding="utf-8"))["input_ids"]
        if left is not None:
            ids = ids[:left]
            left -= len(ids)
        if len(ids) > 1:
            out.append(torch.tensor(ids, dtype=torch.long))
        if left is not None and left <= 0:
            break
    if not out:
        raise ValueError(f"no tokens to evaluate in {[str(p) for p in paths]}")
    return out


def evaluate_lengths(loss_fn: LossFn, texts: list[torch.Tensor], lengths: Sequence[int],
                     stride: Optional[int] = None, batch_size: int = 8, label: str = "eval") -> dict:
    """{"ppl": {"L": ppl}, "nll": {...}, "tokens": {...}, "stride": {...}} for each window length L
    (stride: fixed, or None for L // 2)."""
    from rich.progress import track

    result = {"ppl": {}, "nll": {}, "tokens": {}, "stride": {}}
    for length in track(lengths, description=f"{label}: {len(lengths)} window lengths", transient=True):
        s = stride or max(1, length // 2)
        r = perplexity(loss_fn, texts, window=length, stride=min(s, length), batch_size=batch_size)
        key = str(length)
        result["ppl"][key], result["nll"][key], result["tokens"][key] = r["ppl"], r["nll"], r["tokens"]
        result["stride"][key] = min(s, length)
    return result


def format_table(ppl: dict[str, dict[str, float]], columns: Sequence[str], header: str = "length") -> str:
    """Markdown table: one row per encoding, one column per length key."""
    lines = [f"| {header} | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for name, row in ppl.items():
        lines.append(f"| {name} | " + " | ".join(f"{row[c]:.1f}" for c in columns) + " |")
    return "\n".join(lines)


def plot_ppl(ppl: dict[str, dict[str, float]], train_length: int, out: Path, title: str = "") -> None:
    """PNG: perplexity against evaluation length (multiples of the training length), one line each."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, row in ppl.items():
        xs = sorted(row, key=float)
        ax.plot([float(x) for x in xs], [row[x] for x in xs], marker="o", label=name)
    ax.set_xscale("log", base=2)
    ticks = sorted({float(x) for row in ppl.values() for x in row})
    ax.set_xticks(ticks, [f"{t:g}x" for t in ticks])
    ax.set_xlabel(f"evaluation length / training length ({train_length} tokens)")
    ax.set_ylabel("perplexity (held-out long documents)")
    ax.set_title(title or "Perplexity vs context length")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def write_json(obj: dict, path: Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2) + "\n")
