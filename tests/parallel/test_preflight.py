"""Preflight: a rank with another version is refused in one line naming it (two processes, gloo);
data that cannot be opened and too little disk are refused naming the rank. A passing run on two
ranks, with its bandwidth report, is checked where the launcher runs it (test_launch.py)."""
import subprocess
import sys

from dist_harness import REPO, free_port, rank_env

ARGS = ["--config", "configs/tiny.yaml", "model.num_layers=2", "model.hidden_size=64", "model.num_heads=4",
        "data.seq_len=32", "--size-mb", "1", "--iters", "2"]


def _preflight(nproc, *extra, tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_addr",
           "127.0.0.1", "--master_port", str(free_port()), "-m", "tapa_scale.preflight", *ARGS,
           f"run.dir={tmp_path / 'run'}", *extra]
    return subprocess.run(cmd, env=rank_env(), cwd=REPO, capture_output=True, text=True, timeout=180)


def test_a_rank_with_another_version_is_refused_naming_it(tmp_path):
    proc = _preflight(2, "--fault-version", "1:torch=0.0", tmp_path=tmp_path)
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.startswith("preflight:")]
    assert len(lines) == 1, proc.stderr[-3000:]
    assert lines[0].startswith("preflight: rank 1 (") and "has torch 0.0 where rank 0 (" in lines[0]
    assert lines[0].endswith("; expected the same versions on every rank")


def test_data_that_cannot_be_opened_is_one_line(tmp_path, process_group):
    import torch

    from tapa_scale.config import load_config
    from tapa_scale.preflight import compare, local_facts

    (tmp_path / "empty").mkdir()  # exists, so the config is accepted; holds no dataset
    cfg = load_config(str(REPO / "configs/tiny.yaml"), [f"run.dir={tmp_path}", f"data.path={tmp_path / 'empty'}"])
    facts = local_facts(cfg, torch.device("cpu"))
    refusals, _ = compare([facts], cfg, torch.device("cpu"))
    assert len(refusals) == 1 and refusals[0].startswith("rank 0 (") and "cannot open the data (" in refusals[0]
    assert "manifest.json: missing dataset manifest" in refusals[0]


def test_too_little_disk_for_one_checkpoint_is_refused(tmp_path, process_group):
    import torch

    from tapa_scale.config import load_config
    from tapa_scale.model import build_model, transformer_config
    from tapa_scale.preflight import checkpoint_bytes, compare

    cfg = load_config(str(REPO / "configs/125m.yaml"), [f"run.dir={tmp_path}"])
    need = checkpoint_bytes(cfg)
    with torch.device("meta"):  # the parameters of the model a run would build (embedded tokenizer: 8192)
        net = build_model(cfg.model, vocab_size=8192, seq_len=cfg.data.seq_len, config=transformer_config(cfg.model))
    params = sum(p.numel() for p in net.parameters())
    assert abs(need - 12 * params) < 1e-3 * need  # fp32 weights and two AdamW moments; norms not counted
    facts = [{"rank": r, "host": "h", "versions": {"torch": "1"}, "gpus": 0, "local_world_size": 2,
              "problems": [], "disk": {"path": "/ckpt", "free_bytes": free}} for r, free in ((0, need // 2), (1, need // 2))]
    refusals, _ = compare(facts, cfg, torch.device("cpu"))
    assert len(refusals) == 1 and refusals[0].startswith("rank 0 (h): ") and "one checkpoint" in refusals[0]
    facts = [dict(f, disk={"path": "/ckpt", "free_bytes": 3 * need}) for f in facts]
    assert compare(facts, cfg, torch.device("cpu"))[0] == []
