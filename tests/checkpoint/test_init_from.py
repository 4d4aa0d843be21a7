"""Starting runs from other checkpoints' weights, across layouts and through Hugging Face.

Would catch: train.init_from ignored or applied only on one rank, a tensor-parallel run cutting the
imported weights at the wrong offsets, the HF converter mis-reading a sharded (TP=2) checkpoint, ALiBi
slopes taken from a rank's own heads instead of the global head index (the HF round trip runs ALiBi:
its slopes depend on the head, so a TP=2 run or export that mixes heads up cannot match)."""
import torch

from tests.checkpoint.harness import records, train

ALIBI = "model.pos_encoding=alibi"
RTOL = 1e-5  # the same weights and batch: only the order of fp32 sums differs between 1 and 2 ranks


def test_hf_round_trip_starts_a_tp2_run_like_a_single_process_run(tmp_path, process_group):
    from transformers import AutoModelForCausalLM

    from tapa_scale.eval.loading import load_checkpoint_model
    from tapa_scale.hf.export import export_to_hf
    from tapa_scale.hf.import_hf import import_from_hf

    src = tmp_path / "src"
    train(1, f"run.dir={src}", "train.steps=2", ALIBI)
    back = import_from_hf(export_to_hf(src, tmp_path / "hf"), tmp_path / "back")
    one, two = tmp_path / "one", tmp_path / "two"
    common = ["train.steps=1", f"train.init_from={back}", "train.final_checkpoint=true", ALIBI]
    train(1, f"run.dir={one}", *common)
    train(2, f"run.dir={two}", *common, "parallel.tp=2")
    a, b = records(one)[0], records(two)[0]
    assert abs(a["loss"] - b["loss"]) <= RTOL * a["loss"], (a, b)
    # src's first step is a fresh run from random weights (same seed and data): init_from moved off it
    assert abs(records(src)[0]["loss"] - a["loss"]) > 1e-3

    # the TP=2 run's sharded checkpoint exports to HF with the logits of our model on the same weights
    hf2 = export_to_hf(two, tmp_path / "hf2")
    ours, _, _ = load_checkpoint_model(two)
    theirs = AutoModelForCausalLM.from_pretrained(str(hf2), trust_remote_code=True, dtype=torch.float32).eval()
    ids = torch.randint(0, 8192, (2, 48), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        x, y = ours(ids, None, None).float(), theirs(ids).logits.float()
    assert ((x - y).abs().max() / x.abs().max()).item() <= 1e-5


def test_pp2_checkpoint_weights_gather_into_one_process(tmp_path):
    """A pipeline-parallel checkpoint's stages are restacked in layer order: one process started from
    its weights (with a negligible learning rate) reports the validation loss the PP=2 run reported."""
    pp2, one = tmp_path / "pp2", tmp_path / "one"
    train(2, f"run.dir={pp2}", "train.steps=2", "parallel.pp=2")
    train(1, f"run.dir={one}", "train.steps=1", f"train.init_from={pp2}", "train.lr=1e-12")
    a, b = records(pp2)[-1]["val_loss"], records(one)[-1]["val_loss"]
    assert abs(a - b) <= RTOL * a, (a, b)
