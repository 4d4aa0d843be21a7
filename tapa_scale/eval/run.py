"""One evaluation of one or several models on the same generated samples (tools/eval_long_context.py).

`Spec` holds what to evaluate; `check_spec` refuses bad input in one line before any model loads;
`evaluate` scores one opened model (models.py) and returns its JSON; `write_outputs` writes the JSON,
a CSV per task, the markdown tables and, with a plots directory, the figures. With several models the
JSON is {"models": {name: <single-model JSON>}, "meta": {...}}; the samples are generated from the same
seed and text for every model (token-identical when their tokenizers agree; meta says whether they do).
"""
from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

from .suite import RULER_TASKS, TEXT_TASKS, expand_tasks, run_suite


@dataclass
class Spec:
    tasks: list
    lengths: list
    depths: list = field(default_factory=lambda: [0.0, 0.25, 0.5, 0.75, 1.0])
    trials: int = 20
    seed: int = 0
    threshold: float = 0.85
    stride: Optional[int] = None
    max_tokens: Optional[int] = None
    batch_size: int = 8
    position_windows: int = 16
    generate: bool = False
    text: Optional[list] = None     # ppl/position text files (None: the embedded held-out documents)


def check_spec(spec: Spec) -> None:
    expand_tasks(",".join(spec.tasks))
    if not spec.lengths or any(L < 2 for L in spec.lengths):
        raise ValueError(f"--lengths {spec.lengths}: expected lengths of at least 2 tokens")
    if any(not 0.0 <= d <= 1.0 for d in spec.depths):
        raise ValueError(f"--depths {spec.depths}: each must lie in [0, 1]")
    for name in ("trials", "batch_size", "position_windows"):
        if getattr(spec, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} {getattr(spec, name)}: expected >= 1")
    for path in spec.text or []:
        if not Path(path).is_file():
            raise FileNotFoundError(f"--text {path}: no such file")


def evaluate(ev, spec: Spec) -> dict:
    """The single-model JSON of an opened model (models.Evaluated)."""
    from ..data import eval_documents
    from .long_context import tokenize_texts

    if spec.generate and ev.generate_fn is None:
        raise ValueError(f"--generate decodes with a Hugging Face export's generate(); {ev.name} is a checkpoint")
    docs = [Path(t) for t in spec.text] if spec.text else eval_documents()
    texts_tok = tokenize_texts(ev.tokenizer, docs, spec.max_tokens) if set(spec.tasks) & set(TEXT_TASKS) else None
    if texts_tok is not None:
        longest = max(len(t) for t in texts_tok)
        if max(spec.lengths) + 1 > longest:
            raise ValueError(f"--lengths {max(spec.lengths)}: longer than the longest text ({longest} tokens of "
                             f"{[str(d) for d in docs]}); give longer --text or shorter lengths")
    texts = [d.read_text(encoding="utf-8") for d in eval_documents()] if set(spec.tasks) - set(TEXT_TASKS) else []
    encode = lambda text: ev.tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    on_cuda = ev.meta.get("device", "cpu").startswith("cuda")
    if on_cuda:
        import torch
        torch.cuda.reset_peak_memory_stats()
    result = run_suite(tasks=spec.tasks, lengths=spec.lengths, loss_fn=ev.loss_fn, logits_fn=ev.logits_fn,
                       encode=encode, texts=texts, ppl_texts=texts_tok, depths=spec.depths, trials=spec.trials,
                       seed=spec.seed, stride=spec.stride, batch_size=spec.batch_size, threshold=spec.threshold,
                       position_windows=spec.position_windows,
                       generate_fn=ev.generate_fn if spec.generate else None)
    result.update(ev.info)  # the earlier top-level keys (checkpoint/hf, pos_encoding, train_length) stay
    result["meta"].update(model=ev.info.get("checkpoint") or ev.info.get("hf"), encoding=ev.info["pos_encoding"],
                          train_length=ev.info["train_length"], scoring="generate" if spec.generate else "teacher forcing",
                          tokenizer_sha256=tokenizer_fingerprint(ev.tokenizer), **ev.meta)
    if on_cuda:
        result["meta"]["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
    return result


def tokenizer_fingerprint(tokenizer) -> str:
    import hashlib
    import json

    vocab = sorted(tokenizer.get_vocab().items())
    return hashlib.sha256(json.dumps(vocab).encode()).hexdigest()[:16]


def write_outputs(models: dict, json_path: Path, plots: Optional[Path] = None) -> dict:
    """JSON (the single-model JSON for one model, else {"models", "meta"}), CSVs, <stem>.md, figures."""
    from .figures import plot_all, tables
    from .long_context import write_json

    json_path = Path(json_path)
    if len(models) == 1:
        obj = next(iter(models.values()))
    else:
        prints = {m: r["meta"]["tokenizer_sha256"] for m, r in models.items()}
        obj = {"models": models, "meta": {"samples_sha256": {m: r["meta"]["samples_sha256"] for m, r in models.items()},
                                          "tokenizers_agree": len(set(prints.values())) == 1}}
    write_json(obj, json_path)
    write_csvs(models, json_path)
    json_path.with_suffix(".md").write_text(tables(models))
    if plots is not None:
        plot_all(models, Path(plots))
    return obj


def write_csvs(models: dict, json_path: Path) -> list[Path]:
    """<stem>.<task>.csv beside the JSON for ppl, passkey, ruler, position; a row per model and cell."""
    rows: dict = {}
    for m, r in models.items():
        if "ppl" in r:
            rows.setdefault("ppl", []).extend([m, L, r["ppl"][L], r["nll"][L], r["tokens"][L], r["stride"][L]]
                                              for L in r["ppl"])
        for L, row in r.get("passkey", {}).items():
            rows.setdefault("passkey", []).extend([m, L, d, a, *row[f"{d}_ci"]] for d, a in row.items()
                                                  if not d.endswith("_ci"))
        ruler = r.get("ruler", {})
        for t in (t for t in ruler if t in RULER_TASKS):
            rows.setdefault("ruler", []).extend([m, t, L, a, *ruler[t][f"{L}_ci"], ruler["effective_length"][t]]
                                                for L, a in ruler[t].items() if not L.endswith("_ci"))
        if "position_loss" in r:
            rows.setdefault("position", []).extend(
                [m, "window", L, a, b, v] for L, vs in r["position_loss"].items()
                for (a, b), v in zip(r["position_buckets"][L], vs))
            rows["position"].extend([m, "prefix", k, int(k), int(k) + r["prefix_passage_tokens"], v]
                                    for k, v in r["prefix_loss"].items())
    headers = {"ppl": ["model", "length", "ppl", "nll", "tokens", "stride"],
               "passkey": ["model", "length", "depth", "accuracy", "ci_low", "ci_high"],
               "ruler": ["model", "task", "length", "accuracy", "ci_low", "ci_high", "effective_length"],
               "position": ["model", "kind", "length_or_prefix", "start", "end", "loss"]}
    written = []
    for task, body in rows.items():
        path = json_path.with_name(f"{json_path.stem}.{task}.csv")
        with path.open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(headers[task])
            w.writerows(body)
        written.append(path)
    return written


def model_names(paths: Sequence[str]) -> list[str]:
    """Directory names, made unique with their parents where two are alike."""
    names = [Path(p).resolve().name for p in paths]
    return [str(Path(*Path(p).resolve().parts[-2:])) if names.count(n) > 1 else n for p, n in zip(paths, names)]
