"""Suite-wide set-up: the Triton interpreter on CPU machines, a single-process group for megatron-core
models, and one tiny training run shared by the train and eval tests."""
import os

import torch

# Must happen before anything imports triton: CPU machines run the fused kernel in the interpreter.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

from tests.helpers import TINY, run_cli  # noqa: E402


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
