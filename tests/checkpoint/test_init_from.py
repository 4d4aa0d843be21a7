"""Starting runs from other checkpoints' weights, across layouts and through Hugging Face.

Would catch: train.init_from ignored or applied only on one rank, a tensor-parallel run cutting the
imported weights at the wrong offsets, the HF converter mis-reading a sharded (TP=2) checkpoint, ALiBi
slopes taken from a rank's own heads instead of the global head index (the HF round trip runs ALiBi:
its slopes depend on the head, so a TP=2 run or export that mixes heads up cannot match)."""
import json
import subprocess
import sys

import torch

from tests.checkpoint.harness import REPO, env, records, train

ALIBI = "model.pos_encoding=alibi"
RTOL = 1e-5  # the same weights and batch: only the order of fp32 sums differs between 1 and 2 ranks


def convert(*args):
    res = subprocess.run([sys.executable, *args], cwd=REPO, env=env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]


def test_hf_round_trip_starts_a_tp2_run_like_a_single_process_run(tmp_path):
    src, hf, back = tmp_path / "src", tmp_path / "hf", tmp_path / "back"
    train(1, f"run.dir={src}", "train.steps=2", ALIBI)
    convert("tools/convert_to_hf.py", "--checkpoint", str(src), "--out", str(hf))
    convert("tools/convert_from_hf.py", "--hf", str(hf), "--out", str(back))
    one, two = tmp_path / "one", tmp_path / "two"
    common = ["train.steps=1", f"train.init_from={back}", "train.final_checkpoint=true", ALIBI]
    train(1, f"run.dir={one}", *common)
    train(2, f"run.dir={two}", *common, "parallel.tp=2")
    a, b = records(one)[0], records(two)[0]
    assert abs(a["loss"] - b["loss"]) <= RTOL * a["loss"], (a, b)
    # a fresh run from random weights starts elsewhere: init_from really changed the weights
    fresh = tmp_path / "fresh"
    train(1, f"run.dir={fresh}", "train.steps=1", ALIBI)
    assert abs(records(fresh)[0]["loss"] - a["loss"]) > 1e-3

    # the TP=2 run's sharded checkpoint exports to HF with the logits of our model on the same weights
    hf2 = tmp_path / "hf2"
    convert("tools/convert_to_hf.py", "--checkpoint", str(two), "--out", str(hf2))
    script = f"""
import torch, json
from transformers import AutoModelForCausalLM
from tapa_scale.parallel import ParallelConfig, init_groups
from tapa_scale.eval.loading import load_checkpoint_model
init_groups(ParallelConfig(), device="cpu")
ours, _, _ = load_checkpoint_model({str(two)!r})
theirs = AutoModelForCausalLM.from_pretrained({str(hf2)!r}, trust_remote_code=True, torch_dtype=torch.float32)
ids = torch.randint(0, 8192, (2, 48), generator=torch.Generator().manual_seed(0))
with torch.no_grad():
    a = ours(ids, None, None).float()
    b = theirs(ids).logits.float()
print(json.dumps({{"rel": ((a - b).abs().max() / a.abs().max()).item()}}))
"""
    res = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env(), capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert json.loads(res.stdout.strip().splitlines()[-1])["rel"] <= 1e-5


def test_pp2_checkpoint_weights_gather_into_one_process(tmp_path):
    """A pipeline-parallel checkpoint's stages are restacked in layer order: one process started from
    its weights (with a negligible learning rate) reports the validation loss the PP=2 run reported."""
    pp2, one = tmp_path / "pp2", tmp_path / "one"
    train(2, f"run.dir={pp2}", "train.steps=2", "parallel.pp=2")
    train(1, f"run.dir={one}", "train.steps=1", f"train.init_from={pp2}", "train.lr=1e-12")
    a, b = records(pp2)[-1]["val_loss"], records(one)[-1]["val_loss"]
    assert abs(a - b) <= RTOL * a, (a, b)
