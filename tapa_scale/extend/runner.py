"""Running a stages file: every stage an ordinary training run in <run_dir>/<stage>/, restored once
from the previous stage's final checkpoint and resumed from its own directory after that; evaluation
and gates at the end of each stage; the progress in <run_dir>/stages.json (docs/extension.md).

Rerunning the same command continues where it stopped: finished stages are skipped (and must not have
changed), a stage cut short resumes from its own newest checkpoint -- the training CLI's exact resume --
and a gated stage stops the run again unless gates are ignored.
"""
from __future__ import annotations

import json
import os
import shlex
import socket
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Optional

import yaml

from ..config import ConfigError
from ..model.config import model_identity
from .stages import Plan, Stage

GATED = 3  # exit status of a run stopped by a gate


def identity(stage: Stage) -> dict:
    """What a stage trained, flattened: a finished stage whose identity changes is refused."""
    c = stage.cfg
    out = {f"model.{k}": v for k, v in model_identity(c.model, c.data.seq_len).items()}
    out.update({f"data.{k}": getattr(c.data, k) for k in ("seq_len", "path", "tokenizer", "shuffle")})
    out["data.sources"] = [asdict(src) for src in c.data.sources]
    out.update({f"train.{k}": getattr(c.train, k) for k in (
        "steps", "seed", "lr", "warmup_steps", "min_lr_ratio", "global_batch_size", "beta1", "beta2", "eps",
        "weight_decay", "grad_clip", "document_masking", "init_optimizer")})
    out["rule"] = stage.rule
    return json.loads(json.dumps(out))  # the types a JSON round trip gives, for comparison with the file


class StageState:
    """<run_dir>/stages.json: a list of stages with name, seq_len, steps, tokens, cumulative_tokens,
    status (pending | running | done | gated), checkpoint, eval, identity."""

    def __init__(self, plan: Plan):
        self.path = plan.run_dir / "stages.json"
        old = json.loads(self.path.read_text())["stages"] if self.path.exists() else []
        by_name = {s["name"]: s for s in old}
        names = [s.name for s in plan.stages]
        lost = [n for n in by_name if n not in names]
        if lost:
            raise ConfigError(f"{plan.file}: stage(s) {lost} recorded in {self.path} are missing from the file "
                              f"(stages may be appended, not removed)")
        self.stages = []
        for stage in plan.stages:
            rec = by_name.get(stage.name)
            now = identity(stage)
            if rec and rec["status"] in ("done", "gated"):
                changed = [k for k in sorted(set(now) | set(rec["identity"])) if now.get(k) != rec["identity"].get(k)
                           and not (k not in rec["identity"] and now.get(k) == [])]  # a key added since: default
                if changed:
                    k = changed[0]
                    raise ConfigError(f"{plan.file}: stage {stage.name!r} is finished; it trained with {k}="
                                      f"{rec['identity'].get(k)!r}, the file now gives {now.get(k)!r} (a finished "
                                      f"stage cannot change; append a new stage instead)")
            self.stages.append(rec or {"name": stage.name, "seq_len": stage.seq_len, "steps": stage.steps,
                                       "tokens": 0, "cumulative_tokens": 0, "status": "pending",
                                       "checkpoint": None, "eval": None, "identity": now})
            self.stages[-1]["identity"] = now

    def __getitem__(self, i) -> dict:
        return self.stages[i]

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"stages": self.stages}, indent=1) + "\n")
        os.replace(tmp, self.path)  # a kill leaves the old file or the new one, never half of one

    def table(self) -> str:
        lines = ["| stage | seq_len | steps | tokens | status | short ppl | ppl at L | ppl at 2L | passkey at L |",
                 "|---|---|---|---|---|---|---|---|---|"]
        for s in self.stages:
            e = s["eval"] or {}
            f = lambda v: "–" if v is None else f"{v:.2f}"  # noqa: E731
            lines.append(f"| {s['name']} | {s['seq_len']} | {s['steps']} | {s['cumulative_tokens']:,} | {s['status']} "
                         f"| {f(e.get('short_ppl'))} | {f(e.get('ppl_at_length'))} | {f(e.get('ppl_at_2x'))} "
                         f"| {f(e.get('passkey'))} |")
        return "\n".join(lines)


def check_settings_travel(plan: Plan, stage: Stage, previous: Path) -> None:
    """The stage's model equals the previous checkpoint's with this stage's rule applied, nothing else:
    position-encoding settings that arrive by another route are refused in one line."""
    from omegaconf import OmegaConf

    from ..config import Config

    saved = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(Config),
                                                yaml.safe_load((previous / "config.yaml").read_text())))
    for key, value in stage.rule.items():
        setattr(saved.model.rope, key, value)
    saved.model.rope.original_length = saved.model.rope.original_length or saved.data.seq_len
    want, got = model_identity(saved.model, stage.seq_len), model_identity(stage.cfg.model, stage.seq_len)
    if stage.cfg.model.pos_encoding not in ("yarn", "llama3"):  # only these two read the original length
        want.pop("rope.original_length"), got.pop("rope.original_length")
    for key in sorted(want):
        if want[key] != got.get(key):
            raise ConfigError(f"{plan.file}: stage {stage.name!r}: model.{key}={got.get(key)!r}, but the previous "
                              f"checkpoint {previous} has {want[key]!r} and this stage's rule does not change it")


class StageFailed(RuntimeError):
    """A stage's training process failed; names the stage."""


def _latest(run_dir: Path) -> Optional[Path]:
    from ..train.checkpoint import latest_checkpoint

    return latest_checkpoint(run_dir) if run_dir.is_dir() else None


def _command(plan: Plan, stage: Stage, nproc: int, launcher: Optional[str]) -> list:
    train = ["-m", "tapa_scale.train", "--config", str(plan.base), *stage.overrides]
    if launcher:
        return shlex.split(launcher) + train
    if nproc == 1:
        return [sys.executable, *train]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_addr",
            "127.0.0.1", "--master_port", str(port), *train]


def evaluate_stage(plan: Plan, stage: Stage, ckpt_dir: Path) -> dict:
    """Perplexity at the pretraining length, the stage's and twice it; passkey at the stage's length."""
    e = stage.eval
    short = plan.stages[0].seq_len
    out = ckpt_dir.parent.parent / "stage_eval.json"
    lengths = sorted({short, stage.seq_len, 2 * stage.seq_len})
    cmd = [sys.executable, str(Path(__file__).resolve().parents[2] / "tools" / "eval_long_context.py"),
           "--checkpoint", str(ckpt_dir), "--tasks", "ppl,passkey", "--lengths", ",".join(map(str, lengths)),
           "--max-tokens", str(e["max_tokens"]), "--trials", str(e["trials"]),
           "--depths", ",".join(map(str, e["depths"])), "--json", str(out)]
    subprocess.run(cmd, check=True)
    r = json.loads(out.read_text())
    pk = r["passkey"][str(stage.seq_len)]
    accs = [v for k, v in pk.items() if not k.endswith("_ci")]
    return {"ppl": r["ppl"], "short_ppl": r["ppl"][str(short)], "ppl_at_length": r["ppl"][str(stage.seq_len)],
            "ppl_at_2x": r["ppl"][str(2 * stage.seq_len)], "passkey": sum(accs) / len(accs),
            "passkey_by_depth": pk, "json": str(out)}


def gate_failure(stage: Stage, ev: dict, previous_eval: Optional[dict]) -> Optional[str]:
    """Why a stage's gate stops the run, or None."""
    g = stage.gate
    if "max_short_ppl_increase" in g and previous_eval and previous_eval.get("short_ppl"):
        rise = ev["short_ppl"] / previous_eval["short_ppl"] - 1
        if rise > g["max_short_ppl_increase"]:
            return (f"short-context perplexity rose {rise:+.1%} against the previous stage "
                    f"(gate max_short_ppl_increase {g['max_short_ppl_increase']:.1%})")
    if "min_passkey" in g and ev.get("passkey") is not None and ev["passkey"] < g["min_passkey"]:
        return f"passkey accuracy {ev['passkey']:.2f} at {stage.seq_len} tokens is below the gate {g['min_passkey']}"
    return None


def run_plan(plan: Plan, *, nproc: int = 1, launcher: Optional[str] = None, ignore_gates: bool = False,
             eval_results: Optional[dict] = None, log=print) -> int:
    """Run every stage not yet done; returns 0, or GATED when a gate stops the run."""
    state = StageState(plan)
    state.save()
    cumulative = 0
    for stage, rec in zip(plan.stages, state.stages):
        stage_dir = plan.run_dir / stage.name
        if rec["status"] == "gated" and not ignore_gates:
            log(f"stage {stage.name}: gated earlier: {rec.get('gate_message')} (rerun with --ignore-gates to go on)")
            log(state.table())
            return GATED
        if rec["status"] in ("done", "gated"):
            cumulative = rec["cumulative_tokens"]
            continue
        if stage.index > 0:
            previous = _latest(plan.run_dir / plan.stages[stage.index - 1].name)
            if previous is None:
                raise ConfigError(f"{plan.file}: stage {stage.name!r}: the previous stage has no checkpoint in "
                                  f"{plan.run_dir / plan.stages[stage.index - 1].name}")
            if _latest(stage_dir) is None:  # restoring (a resumed stage continues its own checkpoints)
                check_settings_travel(plan, stage, previous)
        rec["status"] = "running"
        state.save()
        log(f"stage {stage.name}: seq_len {stage.seq_len}, {stage.steps} steps of {stage.tokens_per_step:,} tokens"
            + ("" if stage.index == 0 else f", restored from {plan.stages[stage.index - 1].name}"
               + (" with its optimizer state" if stage.carry_optimizer else "")))
        try:
            subprocess.run(_command(plan, stage, nproc, launcher), check=True)
        except subprocess.CalledProcessError as e:
            raise StageFailed(f"stage {stage.name!r} (seq_len {stage.seq_len}, {stage_dir}): training exited with "
                              f"status {e.returncode}; the line before this one says why; rerun the same "
                              f"command to resume") from None
        final = _latest(stage_dir)
        if final is None:
            raise ConfigError(f"stage {stage.name!r}: training ended without a checkpoint in {stage_dir} "
                              f"(train.final_checkpoint must stay true)")
        rec["checkpoint"] = str(final)
        rec["tokens"] = stage.steps * stage.tokens_per_step
        cumulative += rec["tokens"]
        rec["cumulative_tokens"] = cumulative
        state.save()
        if stage.eval is not None:
            injected = (eval_results or {}).get(stage.name)
            rec["eval"] = injected if injected is not None else evaluate_stage(plan, stage, final)
            prev_eval = state[stage.index - 1]["eval"] if stage.index > 0 else None
            why = gate_failure(stage, rec["eval"], prev_eval)
            if why:
                rec.update(status="gated", gate_message=why)
                state.save()
                log(f"stage {stage.name}: gated: {why}")
                log(state.table())
                if not ignore_gates:
                    return GATED
                continue
        rec["status"] = "done"
        state.save()
    log(state.table())
    return 0


def describe(plan: Plan) -> str:
    """--dry-run: each stage's resolved config."""
    from ..config import to_yaml

    parts = []
    for s in plan.stages:
        parts.append(f"# stage {s.index}: {s.name} (seq_len {s.seq_len}, {s.steps} steps, "
                     f"{s.tokens_per_step:,} tokens/step, rule {s.rule or 'none'}, gate {s.gate or 'none'})\n"
                     f"# overrides: {' '.join(s.overrides)}\n{to_yaml(s.cfg)}")
    return "\n".join(parts)
