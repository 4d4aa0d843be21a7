"""Every parallel layout trains like one process: same losses, gradient norms, gradients of each step,
validation loss and final weights, starting from the same weights (fp32, gloo, torchrun).

One reference run (single process) and two launches (2 and 4 ranks) run all layouts; parity_script.py
does the work and each test below reads one layout's result. TAPA runs through every layout; each other
positional encoding through tensor parallelism and ring context parallelism (in the same 2-rank launch).

Tolerances (fp32). The layouts compute the same function with sums in other orders: tensor-parallel
matmuls and all-reduces, DDP's all-reduce over data x context ranks, the ring's float32 LSE merge.
Measured on the 2-core development machine: gradients within 8e-7 of each tensor's largest entry,
weights within 3e-7, losses and norms within 1e-7 relative. The limits below (1e-5 and 2e-6) leave more
than 10x for rounding, while any real mistake (a missing or doubled reduction, a wrong shard, a mis-
scaled loss) moves these numbers by 1e-2 or more. The optimizer is AdamW with eps=1e-3 (see
parity_script.make_config) so that rounding-sized gradient differences stay rounding-sized in the weights.
"""
import pytest

from dist_harness import HERE, launch_layouts, layout_result, rank_env, read_json, run
from parity_script import parse, reference_tag
from tapa_scale.ops import ENCODINGS

SCRIPT = HERE / "parity_script.py"
TWO = ["tp2", "tp2-sp", "tp2-sp-chunk", "pp2", "pp2-vpp2", "cp2", "cp2-ring", "cp2-plain", "cp2-ring-plain", "dp2"]
FOUR = ["tp2-pp2", "tp2-cp2-sp-ring-chunk", "dp2-pp2-vpp2"]
BASELINES = [e for e in ENCODINGS if e != "tapa"]  # one training step each (parity_script.steps_for)
ENCODED = [f"{layout}-{enc}" for enc in BASELINES for layout in ("tp2", "cp2-ring")]
GRAD_TOL, LOSS_RTOL = 1e-5, 2e-6


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """Runs the reference and both launches once; a launch that fails leaves its layouts without results."""
    out = tmp_path_factory.mktemp("parity")
    import sys
    run([sys.executable, str(SCRIPT), str(out), "--reference", *BASELINES], timeout=300, env=rank_env())
    return out, launch_layouts(SCRIPT, out, ((2, TWO + ENCODED), (4, FOUR)), timeout=420)


def _check(results, layout: str) -> None:
    out, _ = results
    got = layout_result(*results, layout)
    ref = read_json(out / f"reference_{reference_tag(parse(layout))}.json")
    assert got["losses"] == pytest.approx(ref["losses"], rel=LOSS_RTOL), "losses"
    assert got["norms"] == pytest.approx(ref["norms"], rel=LOSS_RTOL), "gradient norms"
    assert got["val"] == pytest.approx(ref["val"], rel=LOSS_RTOL), "validation loss"
    # by position: the same buckets of the same tokens whatever shard of the sequence a rank held
    assert got["val_by_position"] == pytest.approx(ref["val_by_position"], rel=LOSS_RTOL), "loss by position"
    if not parse(layout)["docs"]:  # window positions: buckets of as many tokens average to val (float32 means)
        assert sum(got["val_by_position"]) / len(got["val_by_position"]) == pytest.approx(got["val"], rel=1e-6)
    assert max(got["grad_errors"]) < GRAD_TOL, f"gradients per step: {got['grad_errors']}"
    assert got["param_error"] < GRAD_TOL, "weights after the last step"


@pytest.mark.parametrize("layout", TWO)
def test_two_ranks_match_one_process(results, layout):
    # tp2: column/row splits incl. SwiGLU's strided fc1 and GQA groups; sp: sequence-parallel norms and
    # embedding; chunk: the loss in pieces taken at the same offsets of every rank's sequence shard
    # (model/lm_head.py); pp2 / vpp2: 1F1B and interleaved schedules, tied embedding across stages; cp2: sharding
    # and K/V exchange with packed documents (plain: default positions); dp2: loader split and DDP mean
    _check(results, layout)


@pytest.mark.parametrize("layout", FOUR)
def test_four_ranks_match_one_process(results, layout):
    # combinations: tensor x pipeline groups (grad norm over the model-parallel group), tensor x context
    # with sequence parallelism, the ring and the chunked loss, data x interleaved pipeline
    _check(results, layout)


@pytest.mark.parametrize("layout", ENCODED)
def test_every_encoding_matches_one_process(results, layout):
    # tp2: each rank scores its own heads (ALiBi: with the slopes of those global heads, not of a
    # model with H/tp heads); cp2-ring: local queries against every rank's keys at global positions,
    # merged by log-sum-exp, for rotary, bias and position-free scores alike
    _check(results, layout)
