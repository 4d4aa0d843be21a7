"""The export computes what our model computes: logits of the Hugging Face model loaded from an export
equal the megatron-core model's in fp32 for every positional encoding, GQA and tied/untied embeddings,
on sequences longer than the training length. RoPE-family exports are plain Llama checkpoints, loaded
here without remote code, so their logits are transformers' own LlamaForCausalLM's."""
from __future__ import annotations

import json

import pytest
import torch

from tapa_scale.hf.export import export_to_hf
from tapa_scale.ops.attention import ROTARY
from tests.hf.conftest import load_export, make_checkpoint, native_logits, native_model, rel_err

TOL = 1e-5  # fp32; our HF code runs the same operations as the model, so in practice the error is ~0
# transformers forms rotary frequencies and angles in float32, we in float64: at 96 positions the angles
# differ by ~1e-5 rad, measured 1.8e-6 (pi) .. 5.1e-6 (rope) relative in the logits; 2e-5 is 4x that
TOL_ROTARY = 2e-5

CASES = {
    "tapa-quadratic-gqa-tied": dict(pos_encoding="tapa", num_kv_heads=2),
    "tapa-linear-theta0.25-untied": dict(pos_encoding="tapa", tie_embeddings=False,
                                         tapa={"phase": "linear", "theta": 0.25, "alpha": 0.3}),
    "rope-gqa-untied": dict(pos_encoding="rope", num_kv_heads=2, tie_embeddings=False, rope={"base": 500.0}),
    "pi": dict(pos_encoding="pi", rope={"scale": 4.0}),
    # original length 16 against 96 positions: six times past it
    "yarn": dict(pos_encoding="yarn", rope={"scale": 4.0, "base": 500.0, "original_length": 16}),
    "llama3": dict(pos_encoding="llama3", num_kv_heads=2,
                   rope={"scale": 8.0, "base": 500.0, "original_length": 16, "high_freq_factor": 2.0}),
    "alibi-6-heads": dict(pos_encoding="alibi", hidden_size=96, num_heads=6, num_kv_heads=3),
    # two local-RoPE heads (one key/value head) with a 24-token window against 96 positions
    "tapa-local-rope-gqa": dict(pos_encoding="tapa", num_kv_heads=2, tapa={"rope_heads": 2, "rope_window": 24},
                                rope={"base": 500.0}),
    "nope": dict(pos_encoding="nope"),
}


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """{case: (checkpoint dir, export dir)}, built once for this module."""
    root = tmp_path_factory.mktemp("parity")
    out = {}
    for i, (name, model) in enumerate(CASES.items()):
        ckpt = make_checkpoint(root / name, seed=i, **dict(model))
        out[name] = (ckpt, export_to_hf(ckpt, root / f"{name}-hf"))
    return out


def _load(name, hf_dir):
    """RoPE family: transformers' LlamaForCausalLM with no remote code; the others: our exported code."""
    if CASES[name]["pos_encoding"] not in ROTARY:
        return load_export(hf_dir)
    from transformers import AutoModelForCausalLM, LlamaForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32).eval()
    assert type(model) is LlamaForCausalLM
    return model


@pytest.mark.parametrize("name", list(CASES))
def test_logits_equal_ours(exports, name):
    ckpt, hf_dir = exports[name]
    torch.manual_seed(0)
    ids = torch.randint(0, 8192, (2, 96))  # 1.5x the training length (64): extrapolation included
    want = native_logits(native_model(ckpt), ids)
    with torch.no_grad():
        got = _load(name, hf_dir)(ids).logits
    assert got.shape == want.shape
    tol = TOL_ROTARY if CASES[name]["pos_encoding"] in ROTARY else TOL
    assert rel_err(got, want) <= tol, f"{name}: relative error {rel_err(got, want):.2e}"


def test_comparison_is_sensitive_to_the_encoding(exports, tmp_path):
    """Guards the test above against passing vacuously: the same weights under a slightly different
    TAPA exponent, or a different RoPE base, give clearly different logits."""
    torch.manual_seed(0)
    ids = torch.randint(0, 8192, (1, 64))
    for name, key, value in (("tapa-quadratic-gqa-tied", "tapa_alpha", 0.12),
                             ("rope-gqa-untied", "rope_theta", 10000.0)):
        ckpt, hf_dir = exports[name]
        want = native_logits(native_model(ckpt), ids)
        cfg = json.loads((hf_dir / "config.json").read_text())
        cfg[key] = value
        (hf_dir / "config.json").write_text(json.dumps(cfg))
        try:
            with torch.no_grad():
                got = load_export(hf_dir)(ids).logits
        finally:
            cfg[key] = {"tapa_alpha": 0.1, "rope_theta": 500.0}[key]
            (hf_dir / "config.json").write_text(json.dumps(cfg))
        assert rel_err(got, want) > 1e-3, f"{name}: changing {key} did not change the logits"


def test_export_layout(exports):
    """TAPA's config.json names the remote code and the code is beside it; a RoPE-family export is a
    plain Llama (model_type llama, rope_scaling in transformers' keys, no code files). Tied models
    carry no lm_head, untied ones do."""
    from safetensors import safe_open

    for name, untied in (("tapa-quadratic-gqa-tied", False), ("rope-gqa-untied", True), ("yarn", False)):
        hf_dir = exports[name][1]
        cfg = json.loads((hf_dir / "config.json").read_text())
        code = [f for f in ("configuration_tapa.py", "modeling_tapa.py") if (hf_dir / f).is_file()]
        if name.startswith("tapa"):
            assert cfg["model_type"] == "tapa_lm" and cfg["auto_map"]["AutoModelForCausalLM"].startswith("modeling_tapa")
            assert len(code) == 2
        else:
            assert cfg["model_type"] == "llama" and "auto_map" not in cfg and code == [], (cfg, code)
        assert cfg.get("tie_word_embeddings", True) is (not untied)  # written only when not the default
        for f in ("generation_config.json", "tokenizer.json"):
            assert (hf_dir / f).is_file(), f
        with safe_open(str(hf_dir / "model.safetensors"), "pt") as st:
            assert ("lm_head.weight" in st.keys()) is untied
            assert st.metadata() == {"format": "pt"}
    assert json.loads((exports["yarn"][1] / "config.json").read_text())["rope_scaling"] == {
        "rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16, "beta_fast": 32.0,
        "beta_slow": 1.0}
    assert json.loads((exports["llama3"][1] / "config.json").read_text())["rope_scaling"] == {
        "rope_type": "llama3", "factor": 8.0, "original_max_position_embeddings": 16, "low_freq_factor": 1.0,
        "high_freq_factor": 2.0}


def test_training_loss_equals_ours(exports):
    """`labels` give the mean next-token loss our training step computes (fine-tuning an export with
    transformers optimises the same objective)."""
    ckpt, hf_dir = exports["tapa-quadratic-gqa-tied"]
    torch.manual_seed(0)
    ids = torch.randint(0, 8192, (2, 65))
    with torch.no_grad():
        want = native_model(ckpt)(ids[:, :-1], None, None, labels=ids[:, 1:]).float().mean()
        got = load_export(hf_dir)(ids, labels=ids).loss
    assert abs(got.item() / want.item() - 1) <= TOL
