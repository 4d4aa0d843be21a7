"""The reverse direction: an export of ours, or a Llama checkpoint, back into our checkpoint format."""
from __future__ import annotations

import re

import pytest
import torch
from safetensors.torch import load_file

from tapa_scale.hf.export import export_to_hf
from tapa_scale.hf.import_hf import import_from_hf
from tapa_scale.hf.source import read_config
from tapa_scale.train.checkpoint import full_state_dict
from tests.hf.conftest import ROOT, load_tool, make_checkpoint, native_logits, native_model, rel_err, run_tool


def test_round_trip_is_exact(tapa_ckpt, tmp_path, capsys):
    """checkpoint -> HF -> checkpoint (through the CLI) gives back every tensor bit for bit and the same
    model section; the tokenizer is recognised as the embedded one."""
    hf_dir = export_to_hf(tapa_ckpt, tmp_path / "hf", max_shard_size="300KB")
    out = tmp_path / "back"
    assert load_tool("convert_from_hf").main(["--hf", str(hf_dir), "--out", str(out)]) == 0
    original, back = load_file(str(tapa_ckpt / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert set(original) == set(back)
    for key in original:
        assert torch.equal(original[key], back[key]), key
    cfg_a, cfg_b = read_config(tapa_ckpt), read_config(out)
    cfg_b.model.vocab_size = cfg_a.model.vocab_size  # the import states it explicitly (8192)
    cfg_a.model.rope.original_length = cfg_b.model.rope.original_length  # 0 = seq_len, resolved on export
    cfg_a.model.attention_impl = cfg_b.model.attention_impl
    assert cfg_a.model == cfg_b.model and cfg_b.data.seq_len == cfg_a.data.seq_len
    assert cfg_b.data.tokenizer == ""
    assert (out / "COMPLETE").is_file() and (out / "tokenizer" / "tokenizer.json").is_file()
    assert not (out / "optimizer.pt").exists()


def test_pos_encoding_and_overrides(tapa_ckpt, tmp_path, capsys):
    """--pos-encoding and key=value edit the imported config; a bad value is one error line, nothing written."""
    hf_dir = export_to_hf(make_checkpoint(tmp_path / "rope", pos_encoding="rope"), tmp_path / "hf")
    tool = load_tool("convert_from_hf")
    assert tool.main(["--hf", str(hf_dir), "--out", str(tmp_path / "yarn"), "--pos-encoding", "yarn",
                      "model.rope.scale=8"]) == 0
    cfg = read_config(tmp_path / "yarn")
    assert cfg.model.pos_encoding == "yarn" and cfg.model.rope.scale == 8.0
    assert tool.main(["--hf", str(hf_dir), "--out", str(tmp_path / "bad"), "model.rope.scale=0.5"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "model.rope.scale" in err[0]
    assert not (tmp_path / "bad").exists() and not (tmp_path / "bad.tmp").exists()


def llama_dir(tmp_path, **overrides):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-6, rope_theta=10000.0,
               tie_word_embeddings=False, initializer_range=0.2)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**{**cfg, **overrides})).eval()
    path = tmp_path / "llama"
    model.save_pretrained(str(path))
    return model, path


# Llama checkpoints as transformers builds them, with each rope_scaling kind it supports for training;
# original lengths of 16 against 96 positions (six times past), Llama 3.1's factors scaled down.
LLAMAS = {
    "rope-untied": ({}, "rope"),
    "rope-tied": ({"tie_word_embeddings": True}, "rope"),
    "linear-scaling": ({"rope_scaling": {"type": "linear", "factor": 4.0}}, "pi"),
    "yarn": ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16},
              "rope_theta": 500.0}, "yarn"),
    "yarn-attention-factor": ({"rope_scaling": {"rope_type": "yarn", "factor": 8.0, "beta_fast": 16.0,
                                                "beta_slow": 2.0, "attention_factor": 1.3}}, "yarn"),
    "llama3": ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                 "high_freq_factor": 4.0, "original_max_position_embeddings": 16},
                "rope_theta": 500.0}, "llama3"),
}


@pytest.mark.parametrize("case", list(LLAMAS))
def test_llama_gives_our_rope_model(tmp_path, case):
    """A Llama checkpoint becomes our RoPE-family model with transformers' logits, far past the original
    length: q/k rows map directly (both use the rotate-half layout) and each rope_scaling kind is the
    same rule here."""
    overrides, kind = LLAMAS[case]
    llama, path = llama_dir(tmp_path, **overrides)
    ckpt = import_from_hf(path, tmp_path / "ours")
    cfg = read_config(ckpt)
    assert cfg.model.pos_encoding == kind
    torch.manual_seed(1)
    ids = torch.randint(0, 512, (2, 96))
    with torch.no_grad():
        want = llama(ids).logits
    got = native_logits(native_model(ckpt), ids)
    # transformers forms rotary angles in float32, we in float64: measured up to ~5e-6 relative
    assert rel_err(got, want) <= 2e-5, rel_err(got, want)


@pytest.mark.parametrize("overrides, key", [
    ({"rope_scaling": {"rope_type": "dynamic", "factor": 2.0}}, "rope_scaling.rope_type='dynamic'"),
    ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0, "mscale": 0.7, "mscale_all_dim": 0.7}},
     "rope_scaling.mscale=0.7"),
    ({"attention_bias": True}, "attention_bias=true"),
])
def test_llama_we_cannot_represent_is_refused_naming_the_key(tmp_path, overrides, key):
    _, path = llama_dir(tmp_path, **overrides)
    with pytest.raises(ValueError, match=re.escape(key)) as refused:
        import_from_hf(path, tmp_path / "ours")
    assert "\n" not in str(refused.value)
    assert not (tmp_path / "ours").exists()


def test_exports_and_checkpoints_of_the_earlier_yarn_rule_are_refused(tmp_path):
    """YaRN's rule changed (to transformers'); what was written under the earlier one is recognised and
    refused in one line: a checkpoint's config.yaml without model.rope.attention_factor on export, and
    a tapa_lm export with position_encoding yarn on import."""
    import json

    import yaml

    from tapa_scale.config import ConfigError

    ckpt = make_checkpoint(tmp_path / "yarn", pos_encoding="yarn", rope={"scale": 4.0})
    saved = yaml.safe_load((ckpt / "config.yaml").read_text())
    del saved["model"]["rope"]["attention_factor"]
    (ckpt / "config.yaml").write_text(yaml.safe_dump(saved))
    with pytest.raises(ConfigError, match="earlier YaRN rule") as refused:
        export_to_hf(ckpt, tmp_path / "hf")
    assert "\n" not in str(refused.value) and not (tmp_path / "hf").exists()
    old = tmp_path / "old-export"
    old.mkdir()
    (old / "config.json").write_text(json.dumps({"model_type": "tapa_lm", "position_encoding": "yarn",
                                                 "rope_scale": 4.0, "hidden_size": 64, "num_attention_heads": 4}))
    with pytest.raises(ValueError, match="earlier YaRN rule"):
        import_from_hf(old, tmp_path / "ours")
    assert not (tmp_path / "ours").exists()


def test_training_continues_from_an_import(tapa_ckpt, tmp_path):
    """A converted (weights-only) checkpoint starts a new run: `train.init_from` loads its weights."""
    out = import_from_hf(export_to_hf(tapa_ckpt, tmp_path / "hf"), tmp_path / "ckpt")
    run = tmp_path / "run"
    run_tool("-m", "tapa_scale.train", "--config", str(out / "config.yaml"), f"run.dir={run}",
             f"train.init_from={out}", "train.steps=1", "train.micro_batch_size=2", "train.eval_batches=1",
             "train.log_every=1", "run.tensorboard=false", "run.progress=false", cwd=ROOT)
    first = run / "checkpoints" / "step_00000001"
    assert (first / "COMPLETE").is_file()
    # one warm-up step (lr 1e-3 / 100) moves no weight by more than ~1e-5: the run started from the
    # imported weights, not from a random init (which differs by ~0.02)
    start, after = load_file(str(out / "model.safetensors")), full_state_dict(first)
    assert max((start[k] - after[k]).abs().max().item() for k in start) < 1e-3
