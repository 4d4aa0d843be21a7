"""The study file: a grid of runs (variant x model size x seed), each pretrained at one short length,
evaluated zero-shot at multiples of it, extended with one stage and evaluated again (docs/study.md).

    base: ../tiny.yaml                  # the config every run starts from (relative to this file)
    results: ../../docs/study/paper_cpu.json   # raw results, committed; tables and figures come from it
    run_dir: runs/study_paper_cpu       # run <name> trains in <run_dir>/<name>/
    pretrain: {seq_len: 128, steps: 600, lr: {peak: 1.0e-3, warmup: 60, min_ratio: 0.1},
               batch: {tokens_per_step: 4096, micro: 32}}
    extend: {multiple: 4, steps: 100, lr: {...}, batch: {...}, carry_optimizer: true, set: {...}}
    eval: {zero_shot: [1, 2, 4, 8], extended: [1, 2, 4, 8, 16], max_tokens: 30000,
           passkey: {trials: 10, depths: [0.0, 0.5, 1.0], multiples: [1, 4, 16]}, device: auto}
    sizes: {s: {model.num_layers: 2, model.hidden_size: 64, ...}, ...}   # (+ pretrain_steps: N of its own)
    variants: {tapa: {model.pos_encoding: tapa}, tapa_lr5: {model.pos_encoding: tapa, lr_scale: 0.2}, ...}
    rules: {pi: {pos_encoding: pi, scale: multiple}, yarn: {...}, rope_base: {base: ntk}}
    grid:                               # each entry: every variant x size x seed listed
      - {variants: [tapa, rope, nope, alibi], sizes: [s, m, l], seeds: [0]}

A run is named <variant>-<size>-s<seed>. The RoPE family's rules are not pretrainings of their own: a
run whose variant pretrains plain RoPE is evaluated zero-shot under each rule (the rule at the evaluated
multiple) and extended once per rule (the rule at extend.multiple); every other encoding extends with
none. A rule's `scale: multiple` is the multiple; `base: ntk` is base * multiple^(d/(d-2)) with d the
head dimension (NTK-aware scaling); numbers are taken as given.
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import yaml

from ..config import ConfigError, load_config
from ..extend.stages import override_value

TOP_KEYS = {"base", "results", "run_dir", "pretrain", "extend", "eval", "sizes", "variants", "rules", "grid"}
PHASE_KEYS = {"seq_len", "steps", "lr", "batch", "set", "multiple", "carry_optimizer"}
EVAL_KEYS = {"zero_shot", "extended", "max_tokens", "passkey", "device", "batch_size"}
RULE_KEYS = {"pos_encoding", "scale", "base"}
RULE_ENCODINGS = ("rope", "pi", "yarn", "llama3")
NONE = "none"  # the rule of every run that extends without one


@dataclass
class Run:
    name: str
    variant: str
    size: str
    seed: int
    overrides: list                 # key=value on top of the base: size, variant, seed
    lr_scale: float = 1.0
    pretrain_steps: Optional[int] = None   # the size's own pretraining steps (sizes.<size>.pretrain_steps)
    encoding: str = "tapa"
    rules: list = field(default_factory=list)   # extension rules this run is extended under (NONE included)
    cfg: object = None                          # the resolved pretraining config (base + overrides)


@dataclass
class Study:
    file: Path
    base: Path
    results: Path
    run_dir: Path
    pretrain: dict
    extend: dict
    eval: dict
    rules: dict
    runs: list
    overrides: list = field(default_factory=list)   # the command line's key=value, applied to every run

    def select(self, pattern: Optional[str]) -> list:
        return [r for r in self.runs if pattern is None or fnmatch.fnmatch(r.name, pattern)]


def _fail(file, msg) -> ConfigError:
    return ConfigError(f"{file}: {msg}")


def load_study(file: str | Path, overrides=(), results: Optional[str] = None,
               run_dir: Optional[str] = None) -> Study:
    """Parse and validate the study file, resolving every run's config once (bad input is refused in one
    line naming the file and key before anything trains). results / run_dir replace the file's."""
    file = Path(file)
    if not file.is_file():
        raise ConfigError(f"{file}: study file not found")
    raw = yaml.safe_load(file.read_text()) or {}
    unknown = set(raw) - TOP_KEYS
    if unknown:
        raise _fail(file, f"unknown key(s) {sorted(unknown)} (expected {', '.join(sorted(TOP_KEYS))})")
    for key in ("base", "pretrain", "extend", "sizes", "variants", "grid"):
        if not raw.get(key):
            raise _fail(file, f"needs `{key}`")
    base = (file.parent / raw["base"]).resolve()
    if not base.is_file():
        raise _fail(file, f"base {raw['base']!r}: no such config ({base})")
    for phase in ("pretrain", "extend"):
        bad = set(raw[phase]) - PHASE_KEYS
        if bad:
            raise _fail(file, f"{phase}: unknown key(s) {sorted(bad)} (expected {', '.join(sorted(PHASE_KEYS))})")
    if not isinstance(raw["pretrain"].get("seq_len"), int):
        raise _fail(file, "pretrain.seq_len: an integer is required")
    if not isinstance(raw["extend"].get("multiple"), int) or raw["extend"]["multiple"] < 2:
        raise _fail(file, "extend.multiple: an integer >= 2 is required (the extended length over pretrain.seq_len)")
    ev = {"zero_shot": [1, 2, 4, 8], "extended": [1, 2, 4, 8, 16], "max_tokens": 30000,
          "passkey": {"trials": 10, "depths": [0.0, 0.5, 1.0]}, "device": "auto", "batch_size": 8,
          **(raw.get("eval") or {})}
    if set(ev) - EVAL_KEYS:
        raise _fail(file, f"eval: unknown key(s) {sorted(set(ev) - EVAL_KEYS)} (expected {sorted(EVAL_KEYS)})")
    rules = raw.get("rules") or {}
    for name, rule in rules.items():
        if name == NONE or not isinstance(rule, dict) or set(rule) - RULE_KEYS:
            raise _fail(file, f"rules.{name}: a mapping of {sorted(RULE_KEYS)} (and not named {NONE!r})")
        if rule.get("pos_encoding", "rope") not in RULE_ENCODINGS:
            raise _fail(file, f"rules.{name}.pos_encoding={rule['pos_encoding']!r}: expected one of {RULE_ENCODINGS}")
    if results is None:
        results = (file.parent / raw["results"]).resolve() if raw.get("results") else file.with_suffix(".json")
    run_dir = Path(run_dir or raw.get("run_dir") or f"runs/study_{file.stem}")
    runs = _runs(file, raw, base, list(overrides), rules)
    return Study(file, base, Path(results), run_dir, raw["pretrain"], raw["extend"], ev, rules, runs,
                 list(overrides))


def _runs(file, raw, base: Path, overrides: list, rules: dict) -> list:
    runs, seen = [], set()
    for i, entry in enumerate(raw["grid"]):
        if not isinstance(entry, dict) or set(entry) - {"variants", "sizes", "seeds"}:
            raise _fail(file, f"grid[{i}]: a mapping of variants, sizes, seeds")
        for s in entry.get("sizes", []):  # the smallest size's rows first when sizes are listed small to large
            for seed in entry.get("seeds", [0]):
                for v in entry.get("variants", []):
                    for key, table in (("variants", v), ("sizes", s)):
                        if table not in raw[key]:
                            raise _fail(file, f"grid[{i}]: {key[:-1]} {table!r} is not defined under `{key}`")
                    name = f"{v}-{s}-s{seed}"
                    if name not in seen:
                        seen.add(name)
                        runs.append(_run(file, raw, base, overrides, rules, name, v, s, int(seed)))
    if not runs:
        raise _fail(file, "grid: no runs")
    return runs


def _run(file, raw, base, overrides, rules, name, variant, size, seed) -> Run:
    spec, sized = dict(raw["variants"][variant] or {}), dict(raw["sizes"][size] or {})
    lr_scale = float(spec.pop("lr_scale", 1.0))
    steps = sized.pop("pretrain_steps", None)
    o = [f"{k}={override_value(v)}" for k, v in sized.items()]
    o += [f"{k}={override_value(v)}" for k, v in spec.items()]
    o += [f"train.seed={seed}", *overrides]
    try:
        cfg = load_config(str(base), o, check_paths=False)
    except ConfigError as e:
        raise _fail(file, f"run {name} (variant {variant}, size {size}): {e}") from None
    enc = cfg.model.pos_encoding
    if enc in RULE_ENCODINGS and enc != "rope":
        raise _fail(file, f"variants.{variant}: model.pos_encoding={enc}: the RoPE family's rules are applied to "
                          f"a plain rope pretraining (list them under `rules`), not pretrained")
    return Run(name, variant, size, seed, o, lr_scale, steps, enc, [NONE, *rules] if enc == "rope" else [NONE], cfg)


def rule_overrides(rule: dict, multiple: int, head_dim: int, base: float, train_length: int) -> list:
    """model.* key=value of a rule at a multiple of the pretraining length (1: no change at all). YaRN's
    and llama3's original length is the pretraining length, written out."""
    if multiple == 1:
        return []
    enc = rule.get("pos_encoding", "rope")
    out = [f"model.pos_encoding={enc}"]
    scale = rule.get("scale")
    if scale is not None:
        out.append(f"model.rope.scale={float(multiple if scale == 'multiple' else scale)}")
    b = rule.get("base")
    if b is not None:
        out.append(f"model.rope.base={base * multiple ** (head_dim / (head_dim - 2)) if b == 'ntk' else float(b)}")
    if enc in ("yarn", "llama3"):
        out.append(f"model.rope.original_length={train_length}")
    return out


def stages_file(study: Study, run: Run, rule: str, pretrain_dir: Optional[Path]) -> dict:
    """The stages file (tapa_scale.extend) of one piece: the pretraining (pretrain_dir None), or the
    extension under `rule` restored from pretrain_dir. Every piece is an ordinary stages run."""
    p, e = study.pretrain, study.extend
    if pretrain_dir is None:
        stage = {"name": f"pretrain_{p['seq_len']}", "seq_len": p["seq_len"], **_phase(p, run.lr_scale)}
        stage["steps"] = run.pretrain_steps or stage["steps"]
        return {"base": str(study.base), "run_dir": str(study.run_dir / run.name), "stages": [stage]}
    length = p["seq_len"] * e["multiple"]
    stage = {"name": f"extend_{length}", "seq_len": length, "init_from": str(pretrain_dir),
             "carry_optimizer": bool(e.get("carry_optimizer", False)), **_phase(e, run.lr_scale)}
    stage["set"] = {**stage.get("set", {}), "train.seed": run.seed + 1}  # new documents, as a second stage reads
    return {"base": str(study.base), "run_dir": str(study.run_dir / run.name / f"extend_{rule}"), "stages": [stage]}


def _phase(spec: dict, lr_scale: float) -> dict:
    out = {"steps": spec["steps"], "eval": False}
    if spec.get("lr"):
        lr = dict(spec["lr"])
        if "peak" in lr:
            lr["peak"] = float(lr["peak"]) * lr_scale
        out["lr"] = lr
    if spec.get("batch"):
        out["batch"] = spec["batch"]
    if spec.get("set"):
        out["set"] = spec["set"]
    return out
