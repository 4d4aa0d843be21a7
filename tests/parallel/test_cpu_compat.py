"""The CPU compatibility layer is scoped: it restores what it patched, and refuses to switch on for an
untested megatron-core or in a process that uses CUDA."""
import pytest
import torch

from tapa_scale.parallel import cpu_compat


def _targets():
    """Every object the layer is documented to change, read straight from megatron (independent of the
    layer's bookkeeping)."""
    import importlib

    from megatron.core.models.common.language_module.language_module import LanguageModule
    from megatron.core.tensor_parallel import random as tp_random

    from megatron.core.optimizer import optimizer as mcore_optimizer
    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer

    names = {m: importlib.import_module(m).torch for m in cpu_compat._MODULES}
    return (names, tp_random._get_cuda_rng_state, tp_random._set_cuda_rng_state,
            LanguageModule.__dict__["setup_embeddings_and_output_layer"], torch.Tensor.cuda,
            DistributedOptimizer.__dict__["__init__"], mcore_optimizer.clip_grad_by_total_norm_fp32,
            torch.Tensor.type)


def test_disable_restores_megatron_and_tensor_cuda():
    """Catches patches that outlive the layer (module torch, RNG helpers, the LanguageModule method)."""
    was = cpu_compat.is_enabled()
    cpu_compat.disable()
    before = _targets()
    assert all(t is torch for t in before[0].values())
    with cpu_compat.active():
        during = _targets()
        assert all(t is not torch for t in during[0].values()) and during[1] is not before[1]
        assert during[5] is not before[5] and during[6] is not before[6] and during[7] is before[7]
    after = _targets()
    assert after[0] == before[0] and after[1:] == before[1:]
    if was:
        cpu_compat.enable()


def test_untested_megatron_version_is_refused(monkeypatch):
    """Catches a layer that patches a megatron-core it was never run against."""
    import megatron.core

    was = cpu_compat.is_enabled()
    cpu_compat.disable()
    monkeypatch.setattr(megatron.core, "__version__", "0.99.0")
    try:
        with pytest.raises(RuntimeError, match=r"tested with megatron-core 0\.16\.1 and meets 0\.99\.0: refusing"):
            cpu_compat.enable()
        assert not cpu_compat.is_enabled() and _targets()[0]["megatron.core.utils"] is torch
    finally:
        monkeypatch.undo()
        if was:
            cpu_compat.enable()


def test_refuses_in_a_process_that_uses_cuda(monkeypatch):
    """Catches the layer switching on where megatron's GPU buffers would land on the CPU."""
    was = cpu_compat.is_enabled()
    cpu_compat.disable()
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    try:
        with pytest.raises(RuntimeError, match="initialised CUDA"):
            cpu_compat.enable()
        assert _targets()[0]["megatron.core.utils"] is torch
    finally:
        monkeypatch.undo()
        if was:
            cpu_compat.enable()


def test_elsewhere_an_untested_version_is_warned_about_once(monkeypatch):
    """The GPU path patches nothing: it warns (once per process) instead of refusing."""
    import warnings

    import megatron.core

    monkeypatch.setattr(megatron.core, "__version__", "0.99.0")
    monkeypatch.setattr(cpu_compat, "_warned", [])
    with pytest.warns(RuntimeWarning, match=r"tested with megatron-core 0\.16\.1 and meets 0\.99\.0"):
        assert cpu_compat.check_version() == "0.99.0"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert cpu_compat.check_version() == "0.99.0"


def test_the_layer_lives_as_long_as_the_cpu_groups(tmp_path):
    """In a fresh process: init_groups on CPU switches the layer on, destroy_groups switches it off and
    megatron's modules see torch again. Catches a layer left on after the CPU world it served."""
    import subprocess
    import sys
    from pathlib import Path

    script = """
import importlib, torch
from tapa_scale.parallel import ParallelConfig, cpu_compat, destroy_groups, init_groups
assert not cpu_compat.is_enabled()
init_groups(ParallelConfig(), device="cpu")
assert cpu_compat.is_enabled() and importlib.import_module("megatron.core.utils").torch is not torch
destroy_groups()
assert not cpu_compat.is_enabled()
assert all(importlib.import_module(m).torch is torch for m in cpu_compat._MODULES)
print("ok")
"""
    root = Path(__file__).resolve().parents[2]
    res = subprocess.run([sys.executable, "-c", script], cwd=root, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr[-2000:]


def test_cuda_type_names_only_inside_the_patched_calls():
    """The distributed optimizer's type checks see 'torch.cuda.FloatTensor' for a CPU fp32 tensor while
    a patched call runs; conversions, and everything after the call, see torch's own answers."""
    seen = []

    def probe(t):
        seen.append((t.type(), t.type(torch.float64).dtype, t.half().type()))
        return "done"

    wrapped = cpu_compat._with_cuda_type_names(cpu_compat._with_cuda_type_names(probe))  # re-entrant
    assert wrapped(torch.zeros(2)) == "done"
    assert seen == [("torch.cuda.FloatTensor", torch.float64, "torch.cuda.HalfTensor")]
    assert torch.zeros(2).type() == "torch.FloatTensor" and torch.Tensor.type is cpu_compat._TENSOR_TYPE
