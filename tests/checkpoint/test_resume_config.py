"""What a resume may change in the model section, and YaRN's original length across stages.

Would catch: a resume refused because only model.attention_impl changed (it picks how attention is
computed, not the model); a real model change let through or reported as more than one line; YaRN's
original length following a later stage's longer data.seq_len (moving the frequencies)."""
from pathlib import Path

import pytest
import yaml

from tapa_scale.config import Config, ConfigError, to_yaml
from tapa_scale.model.config import ModelConfig
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


def _yarn_inv_freq(head_dim, base, scale, original):
    """transformers' YaRN frequencies for these settings."""
    return transformers_inv_freq(head_dim, base, {"rope_type": "yarn", "factor": scale,
                                                  "original_max_position_embeddings": original},
                                 max_position_embeddings=int(original * scale))[0].tolist()


def test_attention_impl_change_resumes_and_alpha_change_is_refused(tmp_path):
    run = tmp_path / "run"
    train(1, f"run.dir={run}", "train.steps=1", "model.attention_impl=reference")
    train(1, f"run.dir={run}", "train.steps=2", "model.attention_impl=auto")
    assert [r["step"] for r in records(run)] == [1, 2]
    out = train(1, f"run.dir={run}", "train.steps=3", "model.tapa.alpha=0.2", expect=2)
    errors = [line for line in out.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "model.tapa.alpha=0.2" in errors[0] and "0.1" in errors[0], out[-2000:]


def test_yarn_original_length_stays_with_the_first_stage(tmp_path):
    yarn = ["model.pos_encoding=yarn", "model.rope.scale=4.0", "train.steps=1"]
    first, second = tmp_path / "first", tmp_path / "second"
    train(1, f"run.dir={first}", *yarn, "data.seq_len=32")
    train(1, f"run.dir={second}", *yarn, "data.seq_len=64", f"train.init_from={first}")
    ckpts = sorted((second / "checkpoints").glob("step_*"))
    for path in (second / "config.yaml", ckpts[-1] / "config.yaml"):
        saved = yaml.safe_load(path.read_text())
        assert saved["data"]["seq_len"] == 64 and saved["model"]["rope"]["original_length"] == 32, path
    m = ModelConfig(**{k: v for k, v in saved["model"].items() if k not in ("tapa", "rope")})
    m.rope.original_length, m.rope.scale = saved["model"]["rope"]["original_length"], 4.0
    m.pos_encoding = "yarn"
    got = m.encoding(64).inv_freq(m.head_dim).tolist()
    assert got == pytest.approx(_yarn_inv_freq(m.head_dim, 10000.0, 4.0, 32), rel=1e-6)
    assert got != pytest.approx(_yarn_inv_freq(m.head_dim, 10000.0, 4.0, 64), rel=1e-6)
    from tapa_scale.hf.export import hf_config
    from tapa_scale.hf.source import read_config
    hf = hf_config(read_config(ckpts[-1]), 8192, {}, __import__("torch").float32)
    assert hf.rope_scaling["original_max_position_embeddings"] == 32 and hf.rope_scaling["factor"] == 4.0
