"""impl="auto" falling back from the Triton kernel to the reference: said once per process and reason,
and the implementation that ran is recorded in metrics.jsonl.

Catches: a silent fallback on CUDA (unsupported dtype or head dim, triton missing), a warning repeated
every layer and step, a warning on CPU where the reference is the intended path, and a training record
that does not say which attention ran."""
import importlib
import json
import warnings

import pytest
import torch

from tapa_scale.ops import last_attention_impl, tapa_attention

# the module itself: the package exports a function of the same name
attn = importlib.import_module("tapa_scale.ops.attention")


@pytest.fixture
def fresh(monkeypatch):
    monkeypatch.setattr(attn, "_warned_reasons", set())


def test_cuda_fallback_warns_once_per_reason(fresh):
    reason = "the kernel does not support head_dim 80 (the Triton kernel takes (16, 32, 64, 128))"
    with pytest.warns(RuntimeWarning, match=r"runs the PyTorch reference .*head_dim 80"):
        assert attn.decide_auto_impl(True, reason) == "reference"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a second warning for the same reason would raise here
        assert attn.decide_auto_impl(True, reason) == "reference"
    with pytest.warns(RuntimeWarning, match="triton is not importable"):
        assert attn.decide_auto_impl(True, "triton is not importable (No module named 'triton')") == "reference"


def test_supported_cuda_and_cpu_are_silent(fresh):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert attn.decide_auto_impl(True, None) == "triton"
        assert attn.decide_auto_impl(False, None) == "reference"
        assert attn.resolve_impl("auto", torch.zeros(1, 1, 2, 80, dtype=torch.float64)) == "reference"


def test_reasons_name_dtype_and_head_dim():
    pytest.importorskip("triton")
    f64 = torch.zeros(1, 1, 2, 64, dtype=torch.float64)
    assert "dtype torch.float64" in attn.triton_unavailable_reason(f64)
    assert "head_dim 80" in attn.triton_unavailable_reason(torch.zeros(1, 1, 2, 80))


def test_last_impl_is_what_ran():
    q = torch.randn(1, 2, 5, 8, dtype=torch.float64)
    tapa_attention(q, q, q, impl="reference")
    assert last_attention_impl() == "reference"
    attn.attention(q, q, q, attn.PositionalEncoding(kind="nope"), impl="auto")  # CPU: no SDPA path
    assert last_attention_impl() == "reference"


def test_training_records_attention_impl(trained_run):
    """A CPU training run ran the reference, and every metrics.jsonl record says so."""
    records = [json.loads(line) for line in (trained_run / "metrics.jsonl").read_text().splitlines()]
    assert records and all(r.get("attention_impl") == "reference" for r in records)
