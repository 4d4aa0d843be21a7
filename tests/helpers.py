"""Helpers shared by tests: run a CLI of the project in a subprocess, a tiny training budget."""
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args, timeout=600, check=True, cwd=ROOT):
    """Run `python <args>` from the repository root; returns the CompletedProcess."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    res = subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True,
                         timeout=timeout)
    if check and res.returncode != 0:
        raise AssertionError(f"{args} failed ({res.returncode}):\n{res.stderr[-3000:]}")
    return res


# A small model and budget so that each training run takes seconds on 2 cores.
TINY = ["model.num_layers=2", "model.hidden_size=64", "model.num_heads=4", "model.ffn_hidden_size=128",
        "data.seq_len=64", "train.micro_batch_size=8", "train.lr=0.01", "train.eval_batches=2", "train.warmup_steps=2",
        "run.tensorboard=false"]


def transformers_inv_freq(head_dim: int, base: float, rope_scaling=None, max_position_embeddings: int = 2048):
    """(frequencies, attention factor) as transformers computes them for a Llama config with this
    rope_scaling (its ROPE_INIT_FUNCTIONS, float32): the independent statement our rules must equal."""
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    config = LlamaConfig(hidden_size=head_dim * 2, num_attention_heads=2, head_dim=head_dim, rope_theta=base,
                         rope_scaling=rope_scaling, max_position_embeddings=max_position_embeddings)
    kind = (rope_scaling or {}).get("rope_type", "default")
    inv_freq, factor = ROPE_INIT_FUNCTIONS[kind](config, "cpu")
    return inv_freq.double(), float(factor)
