"""tools/convert_to_hf.py on a training checkpoint, then the export used as a user would: a fresh
process, outside the repository, where tapa_scale cannot be imported at all."""
from __future__ import annotations

import json
import textwrap

import pytest
import torch
from safetensors.torch import load_file

from tests.hf.conftest import clean_env, load_tool, native_logits, native_model, rel_err, run_tool

TEXT = "It is a truth universally acknowledged, that a single man in possession of a good fortune"

# Runs in the child. Importing tapa_scale is made impossible first (the venv's editable install would
# otherwise find it): the export must stand on torch and transformers alone.
CHILD = textwrap.dedent("""
    import json, sys
    sys.modules["tapa_scale"] = None
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer
    hf_dir, out, text = sys.argv[1], sys.argv[2], sys.argv[3]
    tok = AutoTokenizer.from_pretrained(hf_dir)
    model = AutoModelForCausalLM.from_pretrained(hf_dir, trust_remote_code=True).eval()
    module = sys.modules[type(model).__module__]
    ids = tok(text, return_tensors="pt").input_ids
    with torch.no_grad():
        logits = model(ids).logits
    kw = dict(max_new_tokens=12, do_sample=False, attention_mask=torch.ones_like(ids))
    cached = model.generate(ids, use_cache=True, **kw)
    uncached = model.generate(ids, use_cache=False, **kw)
    save_file({"ids": ids, "logits": logits, "cached": cached, "uncached": uncached}, out + "/result.safetensors")
    json.dump({"class": type(model).__name__, "fused": module._fused_tapa_attention is not None,
               "tapa_scale_loaded": sys.modules.get("tapa_scale") is not None,
               "decoded": tok.decode(cached[0, ids.shape[1]:]), "pad": tok.pad_token_id,
               "eos": model.generation_config.eos_token_id}, open(out + "/result.json", "w"))
""")


@pytest.fixture(scope="module")
def export_dir(tapa_ckpt, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "hf"
    run_dir = tapa_ckpt.parent.parent  # a run directory means its latest complete checkpoint
    assert load_tool("convert_to_hf").main(["--checkpoint", str(run_dir), "--out", str(out),
                                            "--max-shard-size", "400KB"]) == 0
    return out


def test_cli_writes_sharded_export(export_dir):
    index = json.loads((export_dir / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) >= 3 and all((export_dir / s).is_file() for s in shards)
    assert not (export_dir / "model.safetensors").exists()
    tensors = {}
    for s in shards:
        tensors.update(load_file(str(export_dir / s)))
    assert set(tensors) == set(index["weight_map"])
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in tensors.values())


def test_cli_refuses_to_overwrite(export_dir, tapa_ckpt, capsys):
    before = sorted(p.name for p in export_dir.iterdir())
    assert load_tool("convert_to_hf").main(["--checkpoint", str(tapa_ckpt), "--out", str(export_dir)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "not empty" in err[0]
    assert sorted(p.name for p in export_dir.iterdir()) == before


def test_cli_names_a_missing_checkpoint(tmp_path, capsys):
    assert load_tool("convert_to_hf").main(["--checkpoint", str(tmp_path / "nope"), "--out",
                                            str(tmp_path / "out")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_fresh_process_without_tapa_scale(export_dir, tapa_ckpt, tmp_path):
    """Loads, scores and generates in a process that cannot import tapa_scale; logits equal our model's."""
    (tmp_path / "child.py").write_text(CHILD)
    run_tool(str(tmp_path / "child.py"), str(export_dir), str(tmp_path), TEXT, env=clean_env(tmp_path),
             cwd=tmp_path)
    info = json.loads((tmp_path / "result.json").read_text())
    got = load_file(str(tmp_path / "result.safetensors"))
    assert info["class"] == "TapaLMForCausalLM"
    assert not info["fused"] and not info["tapa_scale_loaded"]
    assert info["pad"] == info["eos"] == 0
    want = native_logits(native_model(tapa_ckpt), got["ids"])
    assert rel_err(got["logits"], want) <= 1e-5
    assert torch.equal(got["cached"], got["uncached"])
    assert got["cached"].shape[1] == got["ids"].shape[1] + 12
