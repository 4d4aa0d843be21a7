"""The configuration: one schema, YAML + includes + overrides, and one-line errors before any work.

Would catch: an unknown key silently ignored, a wrong type coerced, theta/alpha out of range accepted,
a layout that cannot divide heads or layers passing, a traceback instead of a message."""
import pytest

from tapa_scale.config import ConfigError, load_config, to_yaml
from tests.helpers import run_cli


def test_tiny_config_is_complete_and_includes_model_size():
    cfg = load_config("configs/tiny.yaml")
    assert (cfg.model.num_layers, cfg.model.hidden_size, cfg.model.pos_encoding) == (4, 128, "tapa")
    assert cfg.data.seq_len == 128 and cfg.train.steps > 0
    assert "pos_encoding: tapa" in to_yaml(cfg)


def test_overrides_win_and_are_typed():
    cfg = load_config("configs/tiny.yaml", ["train.steps=7", "model.tapa.alpha=0.25", "model.pos_encoding=rope"])
    assert cfg.train.steps == 7 and cfg.model.tapa.alpha == 0.25 and cfg.model.pos_encoding == "rope"


@pytest.mark.parametrize("overrides,message", [
    (["train.stepz=3"], "unknown key 'train.stepz'"),
    (["train.steps=many"], "train.steps"),
    (["model.tapa.theta=1.0"], "model.tapa.theta=1.0"),
    (["model.tapa.alpha=0"], "model.tapa.alpha=0"),
    (["model.pos_encoding=sinusoid"], "model.pos_encoding='sinusoid'"),
    (["model.num_heads=3"], "model.hidden_size=128 is not divisible by model.num_heads=3"),
    (["parallel.tp=3"], "parallel.tp=3 must divide model.num_heads=4"),
    (["parallel.pp=3"], "parallel.pp=3 must divide model.num_layers=4"),
    (["parallel.cp=2", "data.seq_len=126"], "divisible by 2*parallel.cp=4"),
    (["model.tapa.rope_heads=4", "model.tapa.rope_window=16"], "model.tapa.rope_heads=4, rope_window=16: expected"),
    (["model.tapa.rope_heads=1"], "rope_window=0: expected"),
    (["model.tapa.rope_heads=1", "model.tapa.rope_window=8", "model.pos_encoding=rope"], "a TAPA option"),
    (["model.tapa.rope_heads=2", "model.tapa.rope_window=8", "parallel.tp=2"], "without tensor or context"),
    (["train.steps"], "expected key=value"),
    (["data.path=/no/such/dir"], "data.path='/no/such/dir': directory not found"),
])
def test_bad_values_are_named(overrides, message):
    with pytest.raises(ConfigError) as e:
        load_config("configs/tiny.yaml", overrides)
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_world_size_must_fit_layout():
    with pytest.raises(ConfigError, match="world size 3 is not divisible"):
        load_config("configs/tiny.yaml", ["parallel.tp=2"], world_size=3)


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="config file not found: .*nope.yaml"):
        load_config(str(tmp_path / "nope.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        load_config(str(bad))
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("model:\n  hidden: 3\n")
    with pytest.raises(ConfigError, match="unknown.yaml: unknown key 'model.hidden'"):
        load_config(str(unknown))


def test_cli_reports_one_line_and_exit_code_2(tmp_path):
    res = run_cli("-m", "tapa_scale.train", "--config", "configs/tiny.yaml", "model.tapa.theta=0",
                  f"run.dir={tmp_path}", check=False, timeout=120)
    assert res.returncode == 2
    assert res.stderr.strip().splitlines()[-1].startswith("error: configs/tiny.yaml: model.tapa.theta=0")
    assert "Traceback" not in res.stderr
    assert not any(tmp_path.iterdir()), "nothing may be written before the config is valid"


@pytest.mark.parametrize("name", ["tiny", "quickstart", "125m", "llama3_8b_8k"])
def test_shipped_configs_load(name):
    """Every complete config in configs/ passes the schema (at a world size its layout fits)."""
    cfg = load_config(f"configs/{name}.yaml", world_size=32 if name == "llama3_8b_8k" else 1)
    assert cfg.train.steps > 0 and cfg.data.seq_len > 0
