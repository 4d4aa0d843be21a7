"""Fixtures for the Hugging Face tests: tiny random checkpoints in our format, their exports, and the
native model's logits to compare against. Models are tiny (2 layers, hidden 64) so a conversion and a
forward pass take well under a second."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
VOCAB = 8192  # the embedded tokenizer's size, so exported tokenizers and models agree


def _ensure_group():
    from tapa_scale.parallel import ParallelConfig, init_groups

    return init_groups(ParallelConfig(), device="cpu")


@pytest.fixture(scope="session")
def hf_group():
    """A world of one with megatron's model-parallel state (shared with any other suite fixture)."""
    return _ensure_group()


def make_checkpoint(root: Path, *, seed: int = 0, seq_len: int = 64, **model) -> Path:
    """Build our model with random weights (init_std 0.2: large enough that positions change the
    logits visibly) and save it as a single-process checkpoint; returns the checkpoint dir."""
    from tapa_scale.config import Config, to_yaml
    from tapa_scale.data.tokenizer import TOKENIZER_DIR
    from tapa_scale.model import build_model, transformer_config
    from tapa_scale.model.config import ModelConfig, RopeConfig, TapaConfig
    from tapa_scale.train.checkpoint import save_checkpoint

    _ensure_group()
    tapa, rope = model.pop("tapa", {}), model.pop("rope", {})
    base = dict(num_layers=2, hidden_size=64, num_heads=4, ffn_hidden_size=128, init_std=0.2,
                attention_impl="reference")
    m = ModelConfig(**{**base, **model}, tapa=TapaConfig(**tapa), rope=RopeConfig(**rope))
    cfg = Config(model=m)
    cfg.data.seq_len = seq_len
    torch.manual_seed(seed)
    net = build_model(m, vocab_size=VOCAB, seq_len=seq_len, config=transformer_config(m))
    opt = torch.optim.SGD(net.parameters(), lr=0.0)
    return save_checkpoint(root, 1, model=net, optimizer=opt, state={"step": 1, "tokens": 0, "data": {}},
                           config_yaml=to_yaml(cfg), tokenizer_dir=TOKENIZER_DIR)


def native_model(ckpt: Path):
    """Our GPTModel rebuilt from a checkpoint (eval mode, CPU, fp32)."""
    from tapa_scale.hf.source import read_config
    from tapa_scale.model import build_model, transformer_config
    from tapa_scale.train.checkpoint import load_model_weights

    _ensure_group()
    cfg = read_config(ckpt)
    cfg.model.attention_impl = "reference"
    vocab = cfg.model.vocab_size or VOCAB
    net = build_model(cfg.model, vocab_size=vocab, seq_len=cfg.data.seq_len, config=transformer_config(cfg.model))
    load_model_weights(ckpt, net)
    return net.eval()


@torch.no_grad()
def native_logits(net, ids: torch.Tensor) -> torch.Tensor:
    """(B, N) ids -> (B, N, vocab) logits of our model (positions 0..N-1)."""
    return net(ids, None, None).float()


def load_export(hf_dir: Path):
    from tapa_scale.hf.runtime import load_hf_model

    return load_hf_model(hf_dir, "cpu", "fp32")


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    """max |got - want| / max |want|: the relative error the parity tests bound."""
    return ((got - want).abs().max() / want.abs().max()).item()


def clean_env(tmp: Path) -> dict:
    """Environment of a process that cannot import tapa_scale from the checkout: no PYTHONPATH,
    offline, and a private cache for transformers' copies of remote code."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONSTARTUP")}
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               HF_MODULES_CACHE=str(tmp / "hf_modules"), HF_HOME=str(tmp / "hf_home"))
    return env


def run_tool(*args, timeout=300, env=None, cwd=ROOT, check=True) -> subprocess.CompletedProcess:
    """`python <args>` (from the repository root unless cwd says otherwise); raises on failure if check."""
    res = subprocess.run([sys.executable, *args], cwd=cwd, env=env or dict(os.environ, PYTHONPATH=str(ROOT)),
                         capture_output=True, text=True, timeout=timeout)
    if check and res.returncode != 0:
        raise AssertionError(f"{args} failed ({res.returncode}):\n{res.stdout[-2000:]}\n{res.stderr[-4000:]}")
    return res


@pytest.fixture(scope="session")
def tapa_ckpt(tmp_path_factory) -> Path:
    """A TAPA checkpoint (GQA, tied, default init scale) written by the training loop's own
    save_checkpoint, shared by the CLI, fresh-process and lm-eval tests."""
    return make_checkpoint(tmp_path_factory.mktemp("hf_run") / "tapa", seed=7, num_kv_heads=2, init_std=0.02)


def load_tool(name: str):
    """A tools/ script as a module, so its main(argv) runs in this process (no interpreter start-up)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"tool_{name}", ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
