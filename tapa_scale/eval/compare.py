"""Train several positional encodings with the same budget and compare their perplexity against
context length -- the quickstart's job, and the shape of every comparison we publish.

Each training run is the ordinary CLI (`python -m tapa_scale.train`) in its own process and run
directory, so a rerun resumes or skips finished runs; evaluation then loads each final checkpoint.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

from ..config import load_config
from .long_context import evaluate_lengths, format_table, plot_ppl, tokenize_texts, write_json


def train_encoding(config: str, encoding: str, run_dir: Path, overrides: Sequence[str]) -> float:
    """Train one encoding to completion (resuming if interrupted); returns wall seconds spent now."""
    cmd = [sys.executable, "-m", "tapa_scale.train", "--config", config, f"run.dir={run_dir}",
           f"model.pos_encoding={encoding}", *overrides]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, env=os.environ.copy())
    return time.perf_counter() - start


def _last_val_loss(run_dir: Path) -> Optional[float]:
    path = run_dir / "metrics.jsonl"
    losses = [r["val_loss"] for r in map(json.loads, path.read_text().splitlines()) if "val_loss" in r]
    return losses[-1] if losses else None


def compare_encodings(config: str, encodings: Sequence[str], multiples: Sequence[int], out_dir: Path,
                      overrides: Sequence[str] = (), max_tokens: Optional[int] = None) -> dict:
    """Train each encoding, evaluate perplexity at multiples of the training length on the held-out
    long documents, write results.json, ppl_vs_length.png and table.md under out_dir."""
    from ..data import eval_documents
    from ..parallel import ParallelConfig, destroy_groups, init_groups
    from .loading import load_checkpoint_model, loss_fn_of

    for enc in encodings:  # fail on a bad config or encoding before hours of training
        cfg = load_config(config, [*overrides, f"model.pos_encoding={enc}"])
    train_length = cfg.data.seq_len
    out_dir = Path(out_dir)
    seconds = {enc: train_encoding(config, enc, out_dir / enc, overrides) for enc in encodings}
    lengths = [m * train_length for m in multiples]
    results = {"train_length": train_length, "multiples": list(multiples), "ppl": {}, "val_loss": {},
               "train_seconds": seconds, "eval_tokens": None, "config": config, "overrides": list(overrides)}
    init_groups(ParallelConfig(), device="cpu")
    try:
        for enc in encodings:
            model, _, tokenizer = load_checkpoint_model(out_dir / enc)
            texts = tokenize_texts(tokenizer, eval_documents(), max_tokens)
            r = evaluate_lengths(loss_fn_of(model), texts, lengths, label=f"perplexity of {enc}")
            results["ppl"][enc] = {str(m): r["ppl"][str(L)] for m, L in zip(multiples, lengths)}
            results["val_loss"][enc] = _last_val_loss(out_dir / enc)
            results["eval_tokens"] = r["tokens"][str(lengths[0])]
    finally:
        destroy_groups()
    columns = [str(m) for m in multiples]
    table = format_table(results["ppl"], columns, header=f"ppl at x{train_length} tokens")
    val = "\n".join(f"- {enc}: validation loss {results['val_loss'][enc]:.3f}, trained in "
                    f"{seconds[enc]:.0f} s" for enc in encodings)
    (out_dir / "table.md").write_text(table + "\n\n" + val + "\n")
    write_json(results, out_dir / "results.json")
    plot_ppl(results["ppl"], train_length, out_dir / "ppl_vs_length.png",
             title=f"Held-out perplexity, trained at {train_length} tokens")
    print(table + "\n\n" + val)
    return results
