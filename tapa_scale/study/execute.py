"""Running a study: every run's pieces in order -- pretraining, zero-shot evaluation, one extension per
rule and its evaluation -- each recorded in the results JSON as soon as it is done (docs/study.md).

A rerun skips what the results already hold and resumes what was cut short (each training piece is an
ordinary stages run, so a stage cut short resumes from its own checkpoint). When the results hold a
pretraining whose checkpoint is gone (a fresh machine) and a later piece still needs it, the pretraining
is run again and its final loss compared with the recorded one; a difference is reported, not hidden.
"""
from __future__ import annotations

import fcntl
import json
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

import yaml

from .grid import NONE, Run, Study, rule_overrides, stages_file


class Results:
    """The study's raw results: {"study", "runs": {name: {...}}}, read and written under a file lock so
    that parallel jobs each add their pieces."""

    def __init__(self, path: Path, study_file: Path):
        self.path, self.study_file = Path(path), study_file
        self.lock = self.path.with_name(self.path.name + ".lock")

    @contextmanager
    def _locked(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.lock, "w") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            yield

    def read(self) -> dict:
        with self._locked():
            return self._read()

    def _read(self) -> dict:
        if self.path.exists():
            return json.loads(self.path.read_text())
        return {"study": self.study_file.name, "runs": {}}

    def update(self, run: str, key: str, value) -> None:
        with self._locked():
            obj = self._read()
            obj["runs"].setdefault(run, {})[key] = value
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(obj, indent=1, sort_keys=True) + "\n")
            os.replace(tmp, self.path)  # a kill leaves the old file or the new one


def _plan(study: Study, run: Run, rule: str, pretrain_dir: Optional[Path], extra=(), nproc: int = 1):
    from ..extend import load_plan

    spec = stages_file(study, run, rule, pretrain_dir)
    target = Path(spec["run_dir"]) / "study_stages.yaml"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(yaml.safe_dump(spec, sort_keys=False))
    return load_plan(target, [*run.overrides, *extra], world_size=nproc)


def _train(study: Study, run: Run, rule: str, pretrain_dir, extra, nproc: int, log) -> dict:
    """One training piece to completion; returns its record."""
    from ..extend import run_plan
    from ..train.checkpoint import latest_checkpoint, read_state

    plan = _plan(study, run, rule, pretrain_dir, extra, nproc)
    stage_dir = plan.run_dir / plan.stages[0].name
    resumed = stage_dir.is_dir() and latest_checkpoint(stage_dir) is not None
    start = time.perf_counter()
    run_plan(plan, nproc=nproc, log=log)
    ckpt = latest_checkpoint(stage_dir)
    state = read_state(ckpt)
    rows = [json.loads(line) for line in (stage_dir / "metrics.jsonl").read_text().splitlines()]
    return {"checkpoint": str(ckpt), "seconds": round(time.perf_counter() - start, 1), "resumed": resumed,
            "seq_len": plan.stages[0].seq_len, "steps": state["step"], "tokens": state["tokens"],
            "data": state.get("data"), "next_batch": state.get("next_batch"),
            "loss_curve": [[r["step"], round(r["loss"], 5)] for r in rows if "loss" in r],
            "val_loss": next((r["val_loss"] for r in reversed(rows) if "val_loss" in r), None)}


def _evaluate(study: Study, ckpt: str, multiples, overrides, passkey: bool, train_length: int) -> dict:
    """Perplexity at `multiples` of the pretraining length and, with passkey, passkey accuracy at the
    eval's passkey multiples; keyed by multiple."""
    from ..eval.models import open_model
    from ..eval.run import Spec, evaluate

    e, pk = study.eval, study.eval["passkey"]
    ev = open_model(ckpt, "checkpoint", device=e["device"], overrides=overrides)
    out = {"overrides": list(overrides), "seconds": {}}
    jobs = [("ppl", multiples)] + ([("passkey", pk.get("multiples", multiples))] if passkey else [])
    for task, ms in jobs:
        lengths = [m * train_length for m in ms]
        spec = Spec(tasks=[task], lengths=lengths, depths=list(pk["depths"]), trials=int(pk["trials"]),
                    max_tokens=e["max_tokens"], batch_size=int(e["batch_size"]))
        r = evaluate(ev, spec)
        for key in ("ppl", "nll") if task == "ppl" else ("passkey",):
            out[key] = {str(m): r[key][str(L)] for m, L in zip(ms, lengths)}
        out["seconds"].update(r["meta"]["seconds"])
        out[f"{task}_samples_sha256"] = r["meta"].get("samples_sha256")
    return out


def _zero_shot(study: Study, run: Run, ckpt: str, train_length: int, head_dim: int, base: float) -> dict:
    """Perplexity at each zero-shot multiple: plainly, and under each rule at that multiple."""
    plain = _evaluate(study, ckpt, study.eval["zero_shot"], [], False, train_length)
    out = {NONE: plain}
    for rule in run.rules[1:]:
        row = {"ppl": {}, "nll": {}, "overrides": {}}
        for m in study.eval["zero_shot"]:
            o = rule_overrides(study.rules[rule], m, head_dim, base, train_length)
            r = plain if not o else _evaluate(study, ckpt, [m], o, False, train_length)
            for k in ("ppl", "nll"):
                row[k][str(m)] = r[k][str(m)]
            row["overrides"][str(m)] = o
        out[rule] = row
    return out


def run_one(study: Study, run: Run, results: Results, nproc: int = 1, log=print) -> None:
    """Every piece of one run that the results do not hold yet."""
    from ..train.checkpoint import latest_checkpoint

    have = results.read()["runs"].get(run.name, {})
    cfg = run.cfg  # resolved once, when the study file was loaded
    L, m = study.pretrain["seq_len"], study.extend["multiple"]
    head_dim, base = cfg.model.head_dim, cfg.model.rope.base
    pending_ext = [r for r in run.rules if r not in have.get("extended", {})]
    if "info" not in have:
        results.update(run.name, "info", _info(run, cfg, L))
    pre_dir = study.run_dir / run.name / f"pretrain_{L}"
    needs_ckpt = "zero_shot" not in have or pending_ext
    if "pretrain" not in have or (needs_ckpt and (not pre_dir.is_dir() or latest_checkpoint(pre_dir) is None)):
        log(f"{run.name}: pretraining at {L} tokens")
        rec = _train(study, run, NONE, None, [], nproc, log)
        old = have.get("pretrain")
        if old and old["loss_curve"] != rec["loss_curve"]:
            rec["reproduced"] = False
            log(f"{run.name}: WARNING the pretraining was run again (its checkpoint was gone) and its losses differ "
                f"from the recorded ones (final {old['loss_curve'][-1]} recorded, {rec['loss_curve'][-1]} now)")
        results.update(run.name, "pretrain", rec)
        have["pretrain"] = rec
    ckpt = str(latest_checkpoint(pre_dir))
    if "zero_shot" not in have:
        log(f"{run.name}: zero-shot evaluation at {study.eval['zero_shot']} x {L}")
        results.update(run.name, "zero_shot", _zero_shot(study, run, ckpt, L, head_dim, base))
    extended = dict(have.get("extended", {}))
    for rule in pending_ext:
        o = [] if rule == NONE else rule_overrides(study.rules[rule], m, head_dim, base, L)
        log(f"{run.name}: extending to {m * L} tokens" + ("" if rule == NONE else f" under {rule} ({' '.join(o)})"))
        rec = _train(study, run, rule, Path(ckpt).parent.parent, o, nproc, log)
        rec["rule_overrides"] = o
        rec["eval"] = _evaluate(study, rec["checkpoint"], study.eval["extended"], [], True, L)
        extended[rule] = rec
        results.update(run.name, "extended", extended)
    log(f"{run.name}: done")


def _info(run: Run, cfg, train_length: int) -> dict:
    from ..scaling.layout import shape_of

    shape = shape_of(cfg.model, train_length, cfg.model.vocab_size or 8192)
    split, replicated = shape.layer_params()
    return {"variant": run.variant, "size": run.size, "seed": run.seed, "encoding": run.encoding,
            "lr_scale": run.lr_scale, "overrides": run.overrides, "rules": run.rules,
            "non_embedding_params": cfg.model.num_layers * (split + replicated) + cfg.model.hidden_size,
            "model": {k: getattr(cfg.model, k) for k in ("num_layers", "hidden_size", "num_heads", "ffn_size")},
            "tapa": {"alpha": cfg.model.tapa.alpha, "theta": cfg.model.tapa.theta, "phase": cfg.model.tapa.phase}}


def complete(study: Study, run: Run, have: dict) -> bool:
    r = have.get(run.name, {})
    return "zero_shot" in r and all(rule in r.get("extended", {}) for rule in run.rules)


def run_study(study: Study, only: Optional[str] = None, jobs: int = 1, nproc: int = 1, log=print) -> int:
    """Every selected run that is not complete; jobs > 1 runs that many at once, each in its own process
    with its share of the CPU threads. Returns the number of runs that failed."""
    import subprocess
    import sys
    from concurrent.futures import ThreadPoolExecutor

    results = Results(study.results, study.file)
    todo = [r for r in study.select(only) if not complete(study, r, results.read()["runs"])]
    log(f"study {study.file}: {len(todo)} of {len(study.select(only))} selected runs to do; results in {study.results}")
    if jobs == 1:
        from ..parallel import ParallelConfig, init_groups
        from ..eval.models import resolve_device

        init_groups(ParallelConfig(), device=resolve_device(study.eval["device"]).type)
        for run in todo:
            run_one(study, run, results, nproc=nproc, log=log)
        return 0
    tool = Path(__file__).resolve().parents[2] / "tools" / "study.py"
    threads = max(1, (os.cpu_count() or 1) // jobs)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}

    def one(run: Run) -> int:
        cmd = [sys.executable, str(tool), "--study", str(study.file), "--only", run.name, "--nproc", str(nproc),
               "--results", str(study.results), "--run-dir", str(study.run_dir), "--no-report", *study.overrides]
        with open(study.run_dir / f"{run.name}.log", "a") as out:
            return subprocess.run(cmd, env=env, stdout=out, stderr=subprocess.STDOUT).returncode

    study.run_dir.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(jobs) as pool:
        codes = list(pool.map(one, todo))
    failed = [r.name for r, c in zip(todo, codes) if c]
    if failed:
        log(f"failed: {failed} (their logs: {study.run_dir}/<run>.log); rerun to resume them")
    return len(failed)
