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

    names = {m: importlib.import_module(m).torch for m in cpu_compat._MODULES}
    return (names, tp_random._get_cuda_rng_state, tp_random._set_cuda_rng_state,
            LanguageModule.__dict__["setup_embeddings_and_output_layer"], torch.Tensor.cuda)


def test_disable_restores_megatron_and_tensor_cuda():
    """Catches patches that outlive the layer (module torch, RNG helpers, the LanguageModule method)."""
    was = cpu_compat.is_enabled()
    cpu_compat.disable()
    before = _targets()
    assert all(t is torch for t in before[0].values())
    with cpu_compat.active():
        during = _targets()
        assert all(t is not torch for t in during[0].values()) and during[1] is not before[1]
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
        with pytest.raises(RuntimeError, match=r"written for megatron-core 0\.16\.1 and meets 0\.99\.0"):
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
