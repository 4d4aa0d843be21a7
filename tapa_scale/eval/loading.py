"""Load a trained checkpoint for evaluation: the model rebuilt from the checkpoint's own config."""
from __future__ import annotations

from pathlib import Path

import torch
import yaml

from ..config import Config, ConfigError, load_config
from ..model.config import saved_rope_rule_problem
from ..model import build_model, transformer_config
from ..train.checkpoint import load_model_weights, resolve_checkpoint


def load_checkpoint_model(path: str | Path, device: torch.device | str = "cpu", overrides=()):
    """(model in eval mode, Config, tokenizer) of a checkpoint or run directory (its latest checkpoint).

    overrides (key=value) edit the checkpoint's config before the model is built, e.g. to score a RoPE
    checkpoint zero-shot as PI or YaRN (model.pos_encoding=yarn model.rope.scale=4); the weights must
    still fit the edited model. Needs a single-process group (tapa_scale.parallel.init_groups) since
    the model is megatron-core's.
    """
    from transformers import PreTrainedTokenizerFast

    ckpt = resolve_checkpoint(path)
    problem = saved_rope_rule_problem(yaml.safe_load((ckpt / "config.yaml").read_text()))
    if problem:
        raise ConfigError(f"{ckpt}/config.yaml: {problem}")
    cfg: Config = load_config(str(ckpt / "config.yaml"), check_paths=False, world_size=1,
                              overrides=["parallel.tp=1", "parallel.pp=1", "parallel.cp=1",
                                         "parallel.sequence_parallel=false", *overrides])
    tokenizer = PreTrainedTokenizerFast.from_pretrained(str(ckpt / "tokenizer"))
    vocab = cfg.model.vocab_size or len(tokenizer)
    if len(tokenizer) > vocab:
        raise ConfigError(f"{ckpt}/tokenizer has {len(tokenizer)} tokens but the model (model.vocab_size) only "
                          f"{vocab}: the tokenizer does not belong to this checkpoint")
    model = build_model(cfg.model, vocab_size=vocab, seq_len=cfg.data.seq_len, config=transformer_config(cfg.model))
    load_model_weights(ckpt, model)
    return model.to(device).eval(), cfg, tokenizer


def loss_fn_of(model):
    """Per-token NLL function of a megatron GPTModel, for eval.perplexity."""
    def loss_fn(input_ids, labels):
        device = next(model.parameters()).device
        return model(input_ids.to(device), None, None, labels=labels.to(device)).float().cpu()
    return loss_fn
