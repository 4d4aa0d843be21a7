"""The training need that tools/bench_data.py holds the loader against counts the parameters of the
model that is actually built (not a hand estimate)."""
import importlib.util
from pathlib import Path

import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parents[2]


def _bench():
    spec = importlib.util.spec_from_file_location("bench_data", ROOT / "tools" / "bench_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", ["125m", "1b"])
def test_need_counts_the_parameters_of_the_built_model(process_group, name):
    from tapa_scale.model import ModelConfig, build_model, transformer_config

    bench = _bench()
    cfg = ModelConfig(pos_encoding="tapa", **yaml.safe_load((ROOT / f"configs/model/{name}.yaml").read_text())["model"])
    with torch.device("meta"):
        net = build_model(cfg, vocab_size=32768, seq_len=128, config=transformer_config(cfg))
    need = bench.training_need(name, 8192, 32768)
    assert need["params"] == sum(p.numel() for p in net.parameters())
