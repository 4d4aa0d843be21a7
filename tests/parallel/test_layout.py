"""Bad parallel layouts are refused with one clear line before any process group starts."""
import subprocess
import sys

import pytest

from dist_harness import REPO, rank_env
from tapa_scale.parallel import ParallelConfig, validate_parallel

MODEL = dict(num_heads=4, kv_heads=2, num_layers=4, seq_len=32)


def problems(world_size=1, num_microbatches=None, device="auto", eval_batches=None, **layout):
    return validate_parallel(ParallelConfig(**layout), world_size=world_size, num_microbatches=num_microbatches,
                             eval_batches=eval_batches, device=device, **MODEL)


@pytest.mark.parametrize("layout, world, expected", [
    (dict(tp=3), 3, "parallel.tp=3 must divide model.num_heads=4 and the key/value heads (query groups, 2)"),
    (dict(tp=4), 4, "query groups, 2"),                       # divides the heads but not the 2 query groups
    (dict(pp=3), 3, "parallel.pp=3 must divide model.num_layers=4"),
    (dict(pp=2, vpp=4), 2, "parallel.pp=2 x parallel.vpp=4 must divide model.num_layers=4"),
    (dict(vpp=2), 1, "parallel.vpp=2 (interleaved pipeline) needs parallel.pp > 1"),
    (dict(tp=2), 3, "world size 3 is not divisible by parallel.tp*pp*cp=2"),
    (dict(cp=3), 3, "data.seq_len=32 must be divisible by 2*parallel.cp=6"),
    (dict(sequence_parallel=True), 1, "parallel.sequence_parallel=true needs parallel.tp > 1"),
    (dict(cp_comm="p2p"), 1, "parallel.cp_comm='p2p': expected allgather or ring"),
    (dict(tp=0), 1, "parallel.tp=0: must be >= 1"),
])
def test_bad_layouts_are_named(layout, world, expected):
    found = problems(world, **layout)
    assert any(expected in p for p in found), found


def test_interleaving_needs_a_multiple_of_pp_micro_batches():
    assert problems(2, num_microbatches=4, pp=2, vpp=2) == []
    assert "multiple of parallel.pp=2" in problems(2, num_microbatches=3, pp=2, vpp=2)[0]
    assert problems(2, num_microbatches=4, eval_batches=6, pp=2, vpp=2) == []
    assert problems(2, num_microbatches=4, eval_batches=3, pp=2, vpp=2) == [
        "train.eval_batches=3: the interleaved schedule (parallel.vpp=2) validates a multiple of "
        "parallel.pp=2 micro-batches per data-parallel rank"]


def test_distributed_optimizer_runs_on_cpu():
    # megatron's distributed optimizer runs on gloo through parallel/cpu_compat.py (tests/parallel/test_zero.py)
    assert problems(2, device="cpu", distributed_optimizer=True, tp=2) == []


def test_overlap_options_need_cuda_and_the_distributed_optimizer():
    on = dict(distributed_optimizer=True, overlap_grad_reduce=True, overlap_param_gather=True)
    assert problems(2, device="cuda", **on) == []
    assert problems(2, device="cuda", overlap_grad_reduce=True) == []
    assert problems(2, device="cuda", overlap_param_gather=True, distributed_optimizer=True) == [
        "parallel.overlap_param_gather=true needs parallel.distributed_optimizer=true and "
        "parallel.overlap_grad_reduce=true (megatron gathers the weights its optimizer shards)"]
    assert problems(2, device="cpu", **on) == [
        "parallel.overlap_grad_reduce=true: megatron overlaps communication on CUDA streams; not available on "
        "the CPU (set it false there)"]


def test_good_layouts_pass():
    for layout, world in ((dict(tp=2, pp=2), 8), (dict(tp=2, sequence_parallel=True, cp=2), 4),
                          (dict(pp=2, vpp=2), 2), (dict(cp=4, cp_comm="ring"), 4)):
        assert problems(world, **layout) == [], layout


def test_cli_refuses_a_bad_layout_before_starting(tmp_path):
    # one line naming the key and value, exit code 2, nothing written, no rendezvous attempted
    run_dir = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "tapa_scale.train", "--config", "configs/tiny.yaml",
                           f"run.dir={run_dir}", "parallel.tp=3"], cwd=REPO, env=rank_env(WORLD_SIZE=3),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "parallel.tp=3 must divide model.num_heads=4" in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert not run_dir.exists()
