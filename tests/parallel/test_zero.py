"""megatron-core's distributed optimizer (ZeRO-1: AdamW state sharded over the data x context parallel
ranks) trains like one process with torch's AdamW, and each rank holds 1/(dp x cp) of the state.

One single-process reference (torch AdamW, unsharded) and one launch per process count run every
layout with `parallel.distributed_optimizer=true`, through parity_script.py (the script and tolerances
of test_parity.py): losses, clipped global gradient norms, validation loss and the final weights after
3 steps. Per-step gradients are not compared: the distributed optimizer clips each rank's shard of the
reduced gradient in place, so no rank holds them whole; wrong gradients show in the weights.

Memory, measured on every rank: the bytes of the optimizer state it allocated, beside those of torch's
AdamW over the same parameters (built and stepped on copies). The shards of one model-parallel rank
add up to exactly the unsharded state (padding carries no state), and no shard is larger than
1/(dp x cp) of megatron's padded gradient buffer (8 bytes of AdamW state per element).

Faults (zero_faults_script.py, 2 ranks): a NaN gradient on one rank skips the step on both, read from
the gradient buffers (main_grad) the distributed optimizer uses, weights and state bit-identical.
"""
import math
import sys
from collections import defaultdict

import pytest

from dist_harness import HERE, launch_layouts, layout_result, rank_env, read_json, run, torchrun
from parity_script import parse, reference_tag
from test_parity import GRAD_TOL, LOSS_RTOL

SCRIPT = HERE / "parity_script.py"
# (layout, data x context ranks the state is sharded over). 2 ranks: DP alone, CP alone (its ranks are
# part of the optimizer's group), TP / PP / interleaved PP with one shard (the optimizer is a plain
# one); 4 ranks: DP with TP + SP, 1F1B, interleaved 1F1B, ring CP, and TP x CP.
TWO = {"dp2-zero": 2, "cp2-zero": 2, "cp2-ring-plain-zero": 2, "tp2-sp-zero": 1, "pp2-zero": 1,
       "pp2-vpp2-zero": 1}
FOUR = {"dp2-tp2-sp-zero": 2, "dp2-pp2-zero": 2, "dp2-pp2-vpp2-zero": 2, "dp2-cp2-ring-zero": 4,
        "tp2-cp2-sp-ring-zero": 2}


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = tmp_path_factory.mktemp("zero")
    run([sys.executable, str(SCRIPT), str(out), "--reference"], timeout=300, env=rank_env())
    return out, launch_layouts(SCRIPT, out, ((2, TWO), (4, FOUR)), timeout=300)


def _result(results, layout: str) -> dict:
    return layout_result(*results, layout)


def _check(results, layout: str, shards: int) -> None:
    got = _result(results, layout)
    ref = read_json(results[0] / f"reference_{reference_tag(parse(layout))}.json")
    assert got["losses"] == pytest.approx(ref["losses"], rel=LOSS_RTOL), "losses"
    assert got["norms"] == pytest.approx(ref["norms"], rel=LOSS_RTOL), "clipped global gradient norms"
    assert got["val"] == pytest.approx(ref["val"], rel=LOSS_RTOL), "validation loss"
    assert got["param_error"] < GRAD_TOL, "weights after the last step"
    by_model_rank = defaultdict(list)
    for r in got["zero"]:
        assert r["shards"] == shards, r
        assert r["state_bytes"] <= r["shard_bound_bytes"], f"rank {r['rank']}: shard larger than 1/{shards}: {r}"
        by_model_rank[tuple(r["model_rank"])].append(r)
    for model_rank, ranks in by_model_rank.items():
        assert len(ranks) == shards
        plain = ranks[0]["plain_bytes"]
        assert sum(r["state_bytes"] for r in ranks) == plain, f"model rank {model_rank}: shards {ranks}"


@pytest.mark.parametrize("layout", TWO)
def test_two_ranks_match_one_process(results, layout):
    _check(results, layout, TWO[layout])


@pytest.mark.parametrize("layout", FOUR)
def test_four_ranks_match_one_process(results, layout):
    _check(results, layout, FOUR[layout])


def test_nonfinite_gradient_skips_the_step_with_weights_and_state_untouched(tmp_path):
    # Catches a guard that reads param.grad (empty on megatron's path: the NaN step would be taken and
    # the weights become NaN), a skip on one rank only, and a skip whose return value train_step
    # cannot unpack. torch's AdamW (dp2) goes through the same guard as the sharded optimizer.
    torchrun(2, HERE / "zero_faults_script.py", tmp_path, timeout=180)
    got = read_json(tmp_path / "faults.json")
    for layout in ("dp2-zero", "dp2"):
        for rank, r in enumerate(got[layout]):
            where = f"{layout} rank {rank}"
            assert r["state_tensors"] > 0, where
            assert not r["grads_finite"] and r["skipped"], f"{where}: NaN gradient not detected"
            assert r["weights_kept"] and r["state_kept"], f"{where}: skipped step changed weights or state"
            assert math.isnan(r["steps"][1][0]) and math.isnan(r["steps"][1][1]), where  # reported as NaN
            assert not r["third_skipped"] and r["third_moved"], f"{where}: training did not go on"
            assert all(math.isfinite(v) for v in r["steps"][0] + r["steps"][2]), where
    zero, plain = got["dp2-zero"][0]["steps"], got["dp2"][0]["steps"]
    assert zero[2] == pytest.approx(plain[2], rel=LOSS_RTOL)  # the same step skipped by both optimizers
