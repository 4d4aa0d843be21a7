"""Suite-wide set-up: the Triton interpreter on CPU machines, a single-process group for megatron-core
models, and one tiny training run shared by the train and eval tests."""
import os

import torch

# Must happen before anything imports triton: CPU machines run the fused kernel in the interpreter.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

from tests.helpers import TINY, run_cli  # noqa: E402


# The only tests that use CUDA in this process (every other one runs the GPU path in a subprocess, or
# none). Fixtures elsewhere hold a CPU world of one here, and with it the CPU compatibility layer for
# megatron-core (tapa_scale/parallel/cpu_compat.py), which must never be on while this process uses CUDA.
CUDA_MODULES = ("test_tapa_triton.py", "test_tapa_triton_jit.py", "test_tapa_triton_bench.py", "test_fallback.py")


def _uses_cuda(item) -> bool:
    return item.path.name in CUDA_MODULES


def pytest_collection_modifyitems(config, items):
    """On a CUDA host the tests that may use CUDA run last (each group in its usual order)."""
    if torch.cuda.is_available():
        items.sort(key=_uses_cuda)


def pytest_runtest_setup(item):
    """On a CUDA host, before the first test that may use CUDA: the CPU world and its patches go."""
    if torch.cuda.is_available() and _uses_cuda(item):
        from tapa_scale.parallel import cpu_compat, destroy_groups

        if cpu_compat.is_enabled():
            destroy_groups()
        assert not cpu_compat.is_enabled(), "the CPU compatibility layer is on in a process using CUDA"


@pytest.fixture(scope="session")
def process_group():
    """A world of one with megatron's model-parallel state, for building models in this process."""
    from tapa_scale.parallel import ParallelConfig, destroy_groups, init_groups

    groups = init_groups(ParallelConfig(), device="cpu")
    yield groups
    destroy_groups()


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    """A finished 6-step TAPA run with checkpoints at steps 3 and 6."""
    run_dir = tmp_path_factory.mktemp("run") / "tapa"
    run_cli("-m", "tapa_scale.train", "--config", "configs/tiny.yaml", f"run.dir={run_dir}", *TINY,
            "train.steps=6", "train.log_every=1", "train.checkpoint_every=3")
    return run_dir
