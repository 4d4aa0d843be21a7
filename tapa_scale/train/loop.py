"""The training loop: `train(cfg)` builds everything, resumes from the latest complete checkpoint and
runs optimizer steps, logging, validation and checkpoints. Builders live in setup.py, one optimizer
step and validation in step.py; the step loop below fits one screen."""
from __future__ import annotations

import time
from pathlib import Path

import torch

from ..config import Config, to_yaml
from ..parallel import destroy_groups, init_groups
from . import checkpoint as ckpt
from .metrics import MetricsLogger
from .optim import lr_at, set_lr
from .setup import build_run
from .step import evaluate, train_step


def train(cfg: Config) -> dict:
    """Train (or resume) the run described by cfg; returns the last logged record."""
    groups = init_groups(cfg.parallel, cfg.train.device)
    try:
        return _train(cfg, build_run(cfg, groups))
    finally:
        destroy_groups()


def _train(cfg: Config, run) -> dict:
    t, run_dir = cfg.train, Path(cfg.run.dir)
    if run.groups.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(to_yaml(cfg))
    latest = ckpt.latest_checkpoint(run_dir)
    state = {"step": 0, "tokens": 0}
    if latest is not None:
        state = ckpt.load_checkpoint(latest, model=run.model, optimizer=run.optimizer)
        run.train_loader.load_state_dict(state["data"])
    elif t.init_from:  # weights of another run or of an import; this run's own checkpoints take precedence
        ckpt.load_model_weights(ckpt.resolve_checkpoint(t.init_from), run.model)
    logger = MetricsLogger(run_dir, total_steps=t.steps, start_step=state["step"], enabled=run.groups.is_main,
                           tensorboard=cfg.run.tensorboard, progress=cfg.run.progress)
    batches, record = iter(run.train_loader), {}
    tokens_per_step = run.global_batch * cfg.data.seq_len
    for step in range(state["step"] + 1, t.steps + 1):
        set_lr(run.optimizer, lr := lr_at(step - 1, t))
        start = time.perf_counter()
        loss, grad_norm = train_step(run, batches)
        state.update(step=step, tokens=state["tokens"] + tokens_per_step)
        last = step == t.steps
        if step % t.log_every == 0 or last or (t.eval_every and step % t.eval_every == 0):
            record = {"step": step, "loss": loss, "lr": lr, "grad_norm": grad_norm, "tokens": state["tokens"],
                      "tokens_per_s": tokens_per_step / (time.perf_counter() - start)}
            if last or (t.eval_every and step % t.eval_every == 0):
                record["val_loss"] = evaluate(run, t.eval_batches)
            logger.log(record)
        if (last and t.final_checkpoint) or (t.checkpoint_every and step % t.checkpoint_every == 0):
            if run.groups.is_main:
                ckpt.save_checkpoint(run_dir, step, model=run.model, optimizer=run.optimizer,
                                     state={**state, "data": run.train_loader.state_dict()},
                                     config_yaml=to_yaml(cfg), tokenizer_dir=run.tokenizer_dir)
    logger.close()
    return record
