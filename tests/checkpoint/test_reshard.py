"""Resharding on load: a TP=2 run's checkpoint resumed by one process continues with the same losses
(within float rounding of a different reduction order) and the same data.

Would catch: tensor-parallel shards glued back at wrong offsets (the SwiGLU [gate; up] rows, the
grouped QKV rows), optimizer moments not following their parameters, a data cursor that moves."""
import shutil

from tests.checkpoint.harness import records, train

RTOL = 1e-4  # fp32 sums in a different order over 2 ranks; a wrong shard moves the loss by > 1e-2


def test_tp2_checkpoint_resumes_in_one_process(tmp_path):
    tp2, tp1 = tmp_path / "tp2", tmp_path / "tp1"
    common = ["train.steps=4", "train.checkpoint_every=2"]
    train(2, f"run.dir={tp2}", *common, "parallel.tp=2")
    shutil.copytree(tp2, tp1)
    shutil.rmtree(tp1 / "checkpoints" / "step_00000004")
    out = train(1, f"run.dir={tp1}", *common)
    assert "resharded into" in out
    a, b = records(tp2), records(tp1)
    assert [r["step"] for r in b] == [1, 2, 3, 4] and [r["tokens"] for r in a] == [r["tokens"] for r in b]
    for x, y in zip(a[2:], b[2:]):
        assert abs(x["loss"] - y["loss"]) <= RTOL * abs(x["loss"]), (x, y)
