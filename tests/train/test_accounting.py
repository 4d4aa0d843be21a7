"""Throughput accounting in metrics.jsonl: the step-time parts add up, delays land in their part,
tokens/s and MFU follow from the stated FLOPs; the manual garbage collector; the CPU peak cache."""
import gc
import json

import pytest
import torch

from tapa_scale.config import load_config
from tapa_scale.scaling import model_flops
from tapa_scale.scaling.peaks import cpu_peak, gpu_peak
from tapa_scale.train.accounting import PARTS, ManualGC
from tests.helpers import TINY, run_cli

STALL_S = 0.6


@pytest.fixture(scope="module")
def accounted_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("acct") / "run"
    run_cli("-m", "tapa_scale.train", "--config", "configs/tiny.yaml", f"run.dir={run_dir}", *TINY,
            "train.steps=5", "train.log_every=1", "train.checkpoint_every=2", "train.eval_every=0",
            "train.fault_stall_at=4", f"train.fault_stall_s={STALL_S}")
    recs = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return run_dir, recs


def test_step_time_parts_add_up_and_delays_land_in_their_part(accounted_run):
    run_dir, recs = accounted_run
    assert [r["step"] for r in recs] == [1, 2, 3, 4, 5]
    for r in recs:
        parts = [r[f"time_{p}_s"] for p in PARTS]
        assert min(parts) >= -1e-9 and sum(parts) == pytest.approx(r["step_time_s"], rel=1e-9)
        assert r["time_forward_backward_s"] > 0 and r["time_grad_sync_s"] > 0
    # the save after step 2 is reported with step 3; polling the saver on other steps costs ~nothing
    ckpt = [r["time_checkpoint_s"] for r in recs]
    assert ckpt[2] > 0.01 and ckpt[2] > 10 * max(ckpt[:2] + ckpt[3:4])
    assert recs[3]["time_other_s"] >= STALL_S  # the injected stall is not data, compute or checkpoint
    assert all(r["time_other_s"] < STALL_S / 2 for i, r in enumerate(recs) if i != 3)


def test_throughput_and_mfu_follow_from_the_stated_flops(accounted_run):
    run_dir, recs = accounted_run
    acct = json.loads((run_dir / "accounting.json").read_text())
    cfg = load_config(str(run_dir / "config.yaml"))
    vocab = 8192  # the embedded tokenizer
    flops = model_flops(cfg.model, cfg.data.seq_len, vocab)
    assert acct["model_flops_per_token"] == pytest.approx(flops.train)
    assert acct["peak_flops_per_s"] > 0 and "measured" in acct["peak_source"]
    tokens_per_step = cfg.train.micro_batch_size * cfg.data.seq_len
    for r in recs:
        assert r["tokens_per_s"] == pytest.approx(tokens_per_step / r["step_time_s"])
        assert r["tokens_per_s_per_device"] == pytest.approx(r["tokens_per_s"])  # one process
        assert r["model_tflops_per_s"] == pytest.approx(flops.train * r["tokens_per_s"] / 1e12)
        assert r["mfu"] == pytest.approx(r["model_tflops_per_s"] * 1e12 / acct["peak_flops_per_s"])
        assert r["mfu_noncausal"] > r["mfu"] and r["peak_memory_gb"] > 0.05


def test_manual_gc_collects_at_the_chosen_steps_only():
    full, step = [], 0

    def count(phase, info):
        if phase == "start" and info["generation"] == 2:
            full.append(step)
    gc.callbacks.append(count)
    was = gc.isenabled()
    try:
        collector = ManualGC(every=3)
        for step in range(1, 8):
            for _ in range(20000):  # cyclic garbage that would trigger automatic collections
                a = []
                a.append(a)
            collector.step(step)
            assert not gc.isenabled()
        collector.close()
        assert gc.isenabled() == was
    finally:
        gc.callbacks.remove(count)
    assert full == [3, 6]


def test_cpu_peak_is_measured_once_and_then_read_from_the_cache(tmp_path):
    cache = tmp_path / "peak.json"
    first = cpu_peak(torch.float32, cache)
    assert first > 1e8 and cache.exists()
    known = json.loads(cache.read_text())
    known = {k: 123.0 for k in known}  # a later run must divide by the cached figure, not re-measure
    cache.write_text(json.dumps(known))
    assert cpu_peak(torch.float32, cache) == 123.0
    assert gpu_peak("NVIDIA H100 80GB HBM3") == 989.4e12 and gpu_peak("NVIDIA H100 PCIe") == 756e12
    assert gpu_peak("NVIDIA L40S") == 362.1e12 and gpu_peak("Some GPU") is None
