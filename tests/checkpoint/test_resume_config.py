"""What a resume may change in the model section, and YaRN's original length across stages.

Would catch: a resume refused because only model.attention_impl changed (it picks how attention is
computed, not the model); a real model change let through or reported as more than one line; YaRN's
original length following a later stage's longer data.seq_len (moving the frequencies)."""
from pathlib import Path

import pytest
import yaml

from tapa_scale.config import Config, ConfigError, to_yaml
from tapa_scale.train.resume import check_compatible
from tests.checkpoint.harness import records, train
from tests.helpers import transformers_inv_freq


def _saved(**model) -> str:
    cfg = Config()
    for key, value in model.items():
        obj, *path = key.split(".")
        setattr(getattr(cfg.model, obj) if path else cfg.model, path[0] if path else obj, value)
    return to_yaml(cfg)


def test_implementation_keys_may_change_model_keys_may_not():
    now = Config()
    now.model.attention_impl = "triton"
    check_compatible(_saved(attention_impl="reference"), now, Path("ckpt"))  # no refusal
    now.model.num_kv_heads = now.model.num_heads  # 0 = num_heads: the same model, resolved
    check_compatible(_saved(), now, Path("ckpt"))
    now.model.tapa.alpha = 0.2
    with pytest.raises(ConfigError) as e:
        check_compatible(_saved(), now, Path("ckpt"))
    assert str(e.value).startswith("ckpt: cannot resume with model.tapa.alpha=0.2; the checkpoint was "
                                   "written with 0.1") and "\n" not in str(e.value)


def test_a_yarn_checkpoint_of_the_earlier_rule_is_refused():
    """A YaRN run saved before YaRN followed transformers' rule (its config.yaml has no
    model.rope.attention_factor) cannot resume: its weights were trained under other frequencies."""
    now = Config()
    now.model.pos_encoding, now.model.rope.scale = "yarn", 4.0
    saved = yaml.safe_load(_saved(pos_encoding="yarn", **{"rope.scale": 4.0}))
    check_compatible(yaml.safe_dump(saved), now, Path("ckpt"))  # today's rule: resumes
    del saved["model"]["rope"]["attention_factor"]
    with pytest.raises(ConfigError) as e:
        check_compatible(yaml.safe_dump(saved), now, Path("ckpt"))
    assert str(e.value).startswith("ckpt: model.pos_encoding=yarn was written with the earlier YaRN rule")
    assert "\n" not in str(e.value)
    saved["model"]["pos_encoding"] = "rope"  # the rule of the other encodings did not change
    now.model.pos_encoding = "rope"
    check_compatible(yaml.safe_dump(saved), now, Path("ckpt"))


def test_attention_impl_change_resumes(tmp_path):
    """Through the CLI: a run resumes with another attention implementation (the refusals of a model
    key are unit-tested above and through the CLI in test_reshard.py)."""
    run = tmp_path / "run"
    train(1, f"run.dir={run}", "train.steps=1", "model.attention_impl=reference")
    train(1, f"run.dir={run}", "train.steps=2", "model.attention_impl=auto")
    assert [r["step"] for r in records(run)] == [1, 2]


def test_extending_rope_keeps_the_first_stage_length_and_exports_what_transformers_loads(tmp_path, process_group):
    """A RoPE run at 32 tokens extended to 64 by YaRN and by llama3 scaling (train.init_from): the
    original length is the first stage's 32 (not the new seq_len) in config.yaml of run and checkpoint,
    the frequencies are transformers' for it, and the extended checkpoint's export, loaded by
    transformers as a plain Llama, gives our model's logits."""
    import torch
    from transformers import AutoModelForCausalLM

    from tapa_scale.eval.loading import load_checkpoint_model
    from tapa_scale.hf.export import export_to_hf

    first = tmp_path / "first"
    train(1, f"run.dir={first}", "model.pos_encoding=rope", "train.steps=1", "data.seq_len=32")
    for kind in ("yarn", "llama3"):
        second = tmp_path / kind
        train(1, f"run.dir={second}", f"model.pos_encoding={kind}", "model.rope.scale=4.0", "train.steps=1",
              "data.seq_len=64", f"train.init_from={first}")
        ckpt = sorted((second / "checkpoints").glob("step_*"))[-1]
        for path in (second / "config.yaml", ckpt / "config.yaml"):
            saved = yaml.safe_load(path.read_text())
            assert saved["data"]["seq_len"] == 64 and saved["model"]["rope"]["original_length"] == 32, path
        ours, cfg, _ = load_checkpoint_model(ckpt)
        scaling = {"rope_type": kind, "factor": 4.0, "original_max_position_embeddings": 32,
                   **({"low_freq_factor": 1.0, "high_freq_factor": 4.0} if kind == "llama3" else {})}
        want = transformers_inv_freq(cfg.model.head_dim, 10000.0, scaling, max_position_embeddings=128)[0]
        torch.testing.assert_close(cfg.model.encoding(64).inv_freq(cfg.model.head_dim), want, rtol=2e-6, atol=0)
        hf_dir = export_to_hf(ckpt, tmp_path / f"{kind}-hf")
        theirs = AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32).eval()
        assert theirs.config.rope_scaling["original_max_position_embeddings"] == 32
        ids = torch.randint(0, 8192, (2, 128), generator=torch.Generator().manual_seed(0))  # 4x the first stage
        with torch.no_grad():
            a, b = ours(ids, None, None).float(), theirs(ids).logits
        assert ((a - b).abs().max() / b.abs().max()).item() <= 2e-5, kind
