"""The stages file: a base config and an ordered list of stages, each resolved into an ordinary run
config (tools/extend_context.py; docs/extension.md).

    base: ../tiny.yaml            # the config every stage starts from (relative to this file)
    run_dir: runs/tiny_extend     # stage <name> trains in <run_dir>/<name>/ (default: the base's run.dir)
    stages:
      - name: pretrain
        seq_len: 128
        steps: 300
        lr: {peak: 1.0e-3, warmup: 40, min_ratio: 0.1}
        batch: {global: 32, micro: 16}        # sequences per step (or tokens_per_step: 4096), per pass
      - name: extend_512
        seq_len: 512
        steps: 100
        lr: {peak: 3.0e-4, warmup: 10, min_ratio: 0.1}
        batch: {tokens_per_step: 4096}        # 8 sequences of 512: the tokens per step stay
        carry_optimizer: true                 # restore the AdamW moments (and their step counts) too
        rule: {tapa: none, nope: none, alibi: none, rope: {base: 500000}, pi: {scale: 4}, yarn: {scale: 4}}
        data: {sources: [{path: DIR, weight: 0.6}, {path: LONG, weight: 0.4, min_doc_tokens: 2048}]}
        set: {parallel.cp: 2}                 # any other config key, for this stage only
        gate: {max_short_ppl_increase: 0.03, min_passkey: 0.9}
        eval: {max_tokens: 20000, trials: 4}  # or false

Overrides: run.dir=X names the whole run (stages go into X/<name>/); key=value applies to every stage (after the base, before the stage's own keys would fix
data.seq_len and the like); <stage>:key=value applies to that stage only, last. The first stage may
name `init_from: DIR` (a checkpoint or run directory, e.g. one written by an HF import).
A stage's rule is looked up by model.pos_encoding: the RoPE family's entries set model.rope keys
(base, scale, ...); TAPA, NoPE and ALiBi take `none` -- they need nothing but the longer sequences.
YaRN's and llama3's original length is the pretraining length: the first stage's seq_len, recorded.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import yaml

from ..config import Config, ConfigError, load_config
from ..model.config import RopeConfig
from ..ops import ENCODINGS

STAGE_KEYS = {"name", "seq_len", "steps", "lr", "batch", "carry_optimizer", "rule", "set", "gate", "eval",
              "init_from", "allow_same_length", "data"}
LR_KEYS = {"peak": "train.lr", "warmup": "train.warmup_steps", "min_ratio": "train.min_lr_ratio"}
GATE_KEYS = {"max_short_ppl_increase", "min_passkey"}
EVAL_KEYS = {"max_tokens": 20000, "trials": 4, "depths": [0.0, 0.5, 1.0]}
ROTARY = ("rope", "pi", "yarn", "llama3")
RULE_FREE = tuple(e for e in ENCODINGS if e not in ROTARY)  # need nothing but longer sequences
ROPE_RULE_KEYS = {k for k in RopeConfig.__dataclass_fields__ if k != "original_length"}


@dataclass
class Stage:
    index: int
    name: str
    seq_len: int
    steps: int
    overrides: list                 # key=value on top of the base config, in order: the command line's for
                                    # every stage, the stage's own, the command line's for this stage
    carry_optimizer: bool = False
    rule: dict = field(default_factory=dict)   # model.rope.<key> -> value for this track
    gate: dict = field(default_factory=dict)
    eval: Optional[dict] = None
    cfg: Optional[Config] = None    # resolved (paths unchecked: earlier stages may not have run)
    global_batch: int = 0           # sequences per optimizer step, resolved

    @property
    def tokens_per_step(self) -> int:
        return self.global_batch * self.seq_len


@dataclass
class Plan:
    file: Path
    base: Path
    run_dir: Path
    encoding: str
    stages: list


def _fail(file, stage, msg) -> ConfigError:
    where = f"{file}: stage {stage!r}: " if stage is not None else f"{file}: "
    return ConfigError(where + msg)


def load_plan(file: str | Path, overrides=(), world_size: int = 1) -> Plan:
    """Parse, validate and resolve every stage; raises ConfigError naming file, stage and key."""
    file = Path(file)
    if not file.is_file():
        raise ConfigError(f"{file}: stages file not found")
    raw = yaml.safe_load(file.read_text()) or {}
    unknown = set(raw) - {"base", "run_dir", "stages"}
    if unknown:
        raise _fail(file, None, f"unknown key(s) {sorted(unknown)} (expected base, run_dir, stages)")
    if not raw.get("base") or not raw.get("stages"):
        raise _fail(file, None, "needs `base` (a config file) and a non-empty `stages` list")
    base = (file.parent / raw["base"]).resolve()
    if not base.is_file():
        raise _fail(file, None, f"base {raw['base']!r}: no such config ({base})")
    everywhere = [o for o in overrides if ":" not in o.split("=", 1)[0]]
    per_stage: dict = {}
    for o in overrides:
        head = o.split("=", 1)[0]
        if ":" in head:
            name, rest = o.split(":", 1)
            per_stage.setdefault(name, []).append(rest)
    base_cfg = load_config(str(base), everywhere, world_size=world_size, check_paths=False)
    given = [o.split("=", 1)[1] for o in everywhere if o.split("=", 1)[0].strip() == "run.dir"]
    run_dir = Path(given[-1] if given else raw.get("run_dir") or base_cfg.run.dir)  # run.dir=X names the whole run
    encoding = base_cfg.model.pos_encoding
    names = [s.get("name") if isinstance(s, dict) else None for s in raw["stages"]]
    bad = set(per_stage) - set(names)
    if bad:
        raise ConfigError(f"{file}: override(s) for unknown stage(s) {sorted(bad)} (stages: {names})")
    stages, prev = [], None
    for i, spec in enumerate(raw["stages"]):
        stage = _stage(file, i, spec, prev, encoding, base_cfg, run_dir)
        stage.overrides = everywhere + stage.overrides + per_stage.get(stage.name, [])
        try:
            stage.cfg = load_config(str(base), stage.overrides, world_size=world_size, check_paths=False)
        except ConfigError as e:
            raise _fail(file, stage.name, str(e)) from None
        p = stage.cfg.parallel
        stage.global_batch = stage.cfg.train.global_batch_size or stage.cfg.train.micro_batch_size * (
            world_size // (p.tp * p.pp * p.cp))
        if stage.cfg.model.pos_encoding != encoding:
            raise _fail(file, stage.name, f"model.pos_encoding={stage.cfg.model.pos_encoding!r}: every stage "
                                          f"trains the track's encoding ({encoding}); pick it for all stages")
        stages.append(stage)
        prev = stage
    return Plan(file, base, run_dir, encoding, stages)


def _stage(file, i, spec, prev: Optional[Stage], encoding: str, base_cfg: Config, run_dir: Path) -> Stage:
    if not isinstance(spec, dict) or not spec.get("name"):
        raise _fail(file, i, "each stage is a mapping with a `name`")
    name = str(spec["name"])
    if prev is not None and name == prev.name or "/" in name or ":" in name:
        raise _fail(file, name, "stage names must be unique and contain no '/' or ':'")
    unknown = set(spec) - STAGE_KEYS
    if unknown:
        raise _fail(file, name, f"unknown key(s) {sorted(unknown)} (expected {', '.join(sorted(STAGE_KEYS))})")
    for key in ("seq_len", "steps"):
        if not isinstance(spec.get(key), int) or spec[key] <= 0:
            raise _fail(file, name, f"{key}={spec.get(key)!r}: a positive integer is required")
    seq_len, steps = spec["seq_len"], spec["steps"]
    if prev is not None and seq_len <= prev.seq_len and not spec.get("allow_same_length"):
        raise _fail(file, name, f"seq_len={seq_len} does not grow past stage {prev.name!r} ({prev.seq_len}); "
                                f"set allow_same_length: true if that is intended")
    o = [f"run.dir={run_dir / name}", f"data.seq_len={seq_len}", f"train.steps={steps}",
         f"train.seed={base_cfg.train.seed + i}"]  # a stage-specific data order (docs/extension.md)
    lr = spec.get("lr") or {}
    if set(lr) - set(LR_KEYS):
        raise _fail(file, name, f"lr: unknown key(s) {sorted(set(lr) - set(LR_KEYS))} (expected peak, warmup, min_ratio)")
    o += [f"{LR_KEYS[k]}={v}" for k, v in lr.items()]
    o += _batch(file, name, spec.get("batch") or {}, seq_len)
    rule = _rule(file, name, spec.get("rule"), encoding, first=prev is None)
    if encoding in ("yarn", "llama3"):  # the pretraining length (the first stage's), never the new seq_len
        first_len = prev.cfg.model.rope.original_length if prev is not None else seq_len
        o.append(f"model.rope.original_length={base_cfg.model.rope.original_length or first_len}")
    o += [f"model.rope.{k}={v}" for k, v in rule.items()]
    carry = bool(spec.get("carry_optimizer", False))
    if prev is not None:
        o += [f"train.init_from={run_dir / prev.name}", f"train.init_optimizer={str(carry).lower()}"]
        if spec.get("init_from"):
            raise _fail(file, name, "init_from: only the first stage starts from a given checkpoint; later "
                                    "stages restore from the previous stage")
    elif spec.get("init_from"):
        o.append(f"train.init_from={spec['init_from']}")
        o.append(f"train.init_optimizer={str(carry).lower()}")
    elif carry:
        raise _fail(file, name, "carry_optimizer: the first stage has no previous optimizer (give init_from)")
    data = spec.get("data") or {}
    if not isinstance(data, dict) or "seq_len" in data:
        raise _fail(file, name, "data: a mapping of data keys for this stage, e.g. {sources: [{path: DIR, weight: "
                                "0.6}, {path: DIR2, weight: 0.4, min_doc_tokens: 4096}]} (seq_len is the stage's own)")
    o += [f"data.{k}={override_value(v)}" for k, v in data.items()]
    sets = spec.get("set") or {}
    if not isinstance(sets, dict):
        raise _fail(file, name, "set: a mapping of config keys to values")
    o += [f"{k}={override_value(v)}" for k, v in sets.items()]
    gate = spec.get("gate") or {}
    if set(gate) - GATE_KEYS:
        raise _fail(file, name, f"gate: unknown key(s) {sorted(set(gate) - GATE_KEYS)} (expected {sorted(GATE_KEYS)})")
    ev = spec.get("eval", {})
    if ev is not False:
        if set(ev or {}) - set(EVAL_KEYS):
            raise _fail(file, name, f"eval: unknown key(s) {sorted(set(ev) - set(EVAL_KEYS))} "
                                    f"(expected {sorted(EVAL_KEYS)} or false)")
        ev = {**EVAL_KEYS, **(ev or {})}
    elif gate:
        raise _fail(file, name, "gate needs the stage's evaluation (eval: false given)")
    return Stage(i, name, seq_len, steps, o, carry, rule, gate, None if ev is False else ev)


def _batch(file, name, batch: dict, seq_len: int) -> list:
    micro = [f"train.micro_batch_size={int(batch['micro'])}"] if "micro" in batch else []
    batch = {k: v for k, v in batch.items() if k != "micro"}
    if set(batch) - {"global", "tokens_per_step"} or len(batch) > 1:
        raise _fail(file, name, "batch: give one of {global: sequences} or {tokens_per_step: tokens}, and "
                                "optionally micro (sequences per forward pass)")
    if "global" in batch:
        return micro + [f"train.global_batch_size={int(batch['global'])}"]
    if "tokens_per_step" in batch:
        tokens = int(batch["tokens_per_step"])
        if tokens % seq_len or tokens < seq_len:
            raise _fail(file, name, f"batch.tokens_per_step={tokens} is not a multiple of seq_len={seq_len}")
        return micro + [f"train.global_batch_size={tokens // seq_len}"]
    return micro


def _rule(file, name, rule, encoding: str, first: bool) -> dict:
    """This track's entry of the stage's rule, as model.rope keys; refuses an entry that does not fit its
    encoding. A later stage must say what its track does (none counts)."""
    if rule is None:
        if first or encoding in RULE_FREE:
            return {}
        raise _fail(file, name, f"rule: no entry for {encoding} (a RoPE-family track extends by a rule, "
                                f"e.g. rule: {{{encoding}: {{scale: 4}}}}; write `none` to keep the settings)")
    if not isinstance(rule, dict):
        raise _fail(file, name, "rule: a mapping from encoding to its settings or none")
    bad = set(rule) - set(ENCODINGS)
    if bad:
        raise _fail(file, name, f"rule: unknown encoding(s) {sorted(bad)} (expected {', '.join(ENCODINGS)})")
    for enc, entry in rule.items():
        if entry in (None, "none"):
            continue
        if enc in RULE_FREE:
            raise _fail(file, name, f"rule.{enc}={entry!r}: {enc} takes no extension rule (write none)")
        if not isinstance(entry, dict) or set(entry) - ROPE_RULE_KEYS:
            raise _fail(file, name, f"rule.{enc}: expected none or a mapping of model.rope keys "
                                    f"({', '.join(sorted(ROPE_RULE_KEYS))})")
    if encoding not in rule and encoding not in RULE_FREE and not first:
        raise _fail(file, name, f"rule: no entry for {encoding}, the track being trained")
    entry = rule.get(encoding)
    return dict(entry) if isinstance(entry, dict) else {}


def override_value(v) -> str:
    """An override's value: booleans as YAML spells them, lists and mappings as one line of YAML."""
    if isinstance(v, (list, dict)):
        return yaml.safe_dump(v, default_flow_style=True, width=10**9).strip()
    return str(v).lower() if isinstance(v, bool) else str(v)
