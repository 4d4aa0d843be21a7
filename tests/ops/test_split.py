"""The amplitude/phase split of a head: d_amp = floor(theta*D + 1/2) (theta*D rounded half up) in every
implementation, and one clear error when theta leaves a part empty.

Catches: Python's round() (halves to the even neighbour: theta*D = 2.5 -> 2, 0.5 -> 0) in the reference,
the kernel's argument packing, the Hugging Face export or the config check; implementations that
disagree on the split; a theta that empties a part passing silently."""
import math

import pytest
import torch

from tapa_scale.config import ConfigError, load_config
from tapa_scale.hf import modeling_tapa
from tapa_scale.hf.configuration_tapa import TapaLMConfig
from tapa_scale.ops import tapa_attention, tapa_split
from tapa_scale.ops.tapa_triton_args import prepare

# (D, theta, d_amp), the expected split written out by hand.
SPLITS = [
    (5, 0.5, 3),        # theta*D = 2.5 -> 3 (round(): 2)
    (3, 0.5, 2),        # 1.5 -> 2
    (2, 0.25, 1),       # 0.5 -> 1 (round(): 0, an empty amplitude)
    (10, 0.25, 3),      # 2.5 -> 3 (round(): 2)
    (16, 5 / 32, 3),    # 2.5 -> 3, a head dim the kernel takes
    (32, 0.078125, 3),  # 2.5 -> 3
    (32, 0.5, 16), (64, 0.5, 32), (128, 0.5, 64), (128, 0.25, 32),  # shipped and kernel-tested
]
# (D, theta) leaving a part empty: 0.5 -> 1 of 1 dim (no phase), 0.4 -> 0, 3.6 -> 4 of 4 dims.
EMPTY = [(1, 0.5), (4, 0.1), (4, 0.9)]


@pytest.mark.parametrize("D,theta,d_amp", SPLITS)
def test_every_split_function_rounds_half_up(D, theta, d_amp):
    assert tapa_split(D, theta) == (d_amp, D - d_amp)
    assert modeling_tapa.tapa_split(D, theta) == (d_amp, D - d_amp)


@pytest.mark.parametrize("D,theta,d_amp", [s for s in SPLITS if s[0] in (16, 32, 64, 128)])
def test_kernel_packs_the_same_split(D, theta, d_amp, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # CPU tensors are the kernel's only when interpreting
    q = torch.zeros(1, 1, 4, D)
    p = prepare(q, q, q, alpha=0.1, theta=theta, phase="quadratic", causal=True, q_positions=None,
                k_positions=None, q_segment_ids=None, k_segment_ids=None)
    assert (p.d_amp, p.d_phase) == (d_amp, D - d_amp)


def _direct_tapa(q, k, v, d_amp, alpha):
    """Causal quadratic TAPA in float64 with the amplitude width given, not derived from theta."""
    D, n = q.shape[-1], q.shape[-2]
    amp = q[..., :d_amp] @ k[..., :d_amp].transpose(-1, -2) / math.sqrt(d_amp)
    phi = q[..., d_amp:] @ k[..., d_amp:].transpose(-1, -2) / math.sqrt(D - d_amp)
    dist = (torch.arange(n)[:, None] - torch.arange(n)[None, :]).abs().double()
    s = amp * torch.cos(2 * math.pi * dist.pow(alpha) * phi)
    s = s.masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1), float("-inf"))
    return torch.softmax(s, -1) @ v


@pytest.mark.parametrize("D,theta,d_amp", [(5, 0.5, 3), (10, 0.25, 3), (2, 0.25, 1)])
def test_scores_use_the_split(D, theta, d_amp):
    """The reference op and the Hugging Face scores, on a half case, against the direct statement."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 1, 6, D, generator=g, dtype=torch.float64) for _ in range(3))
    want = _direct_tapa(q, k, v, d_amp, alpha=0.5)
    got = tapa_attention(q, k, v, alpha=0.5, theta=theta, impl="reference")
    torch.testing.assert_close(got, want)
    cfg = TapaLMConfig(tapa_alpha=0.5, tapa_theta=theta)
    dist = (torch.arange(6)[:, None] - torch.arange(6)[None, :]).abs().double()
    hf = modeling_tapa.tapa_scores(q[:, :, None], k[:, :, None], dist[None, None, None], cfg)
    direct = _direct_tapa(q, k, torch.eye(6, dtype=torch.float64)[None, None], d_amp, 0.5)
    hf = torch.softmax(hf[:, :, 0].masked_fill(torch.ones(6, 6, dtype=torch.bool).triu(1), float("-inf")), -1)
    torch.testing.assert_close(hf, direct)


@pytest.mark.parametrize("D,theta", EMPTY)
def test_empty_part_is_one_clear_error(D, theta):
    for split in (tapa_split, modeling_tapa.tapa_split):
        with pytest.raises(ValueError, match=f"theta={theta} with head_dim={D} gives .*both parts need"):
            split(D, theta)


def test_config_check_uses_the_rule():
    """head_dim 2 with theta 0.25: 0.5 rounds up to one amplitude dim, so the config is valid (round()
    gave 0 and refused it); theta 0.2 (0.4 -> 0) is refused with the rule named."""
    sizes = ["model.hidden_size=8", "model.num_heads=4", "model.num_kv_heads=4"]
    load_config("configs/tiny.yaml", sizes + ["model.tapa.theta=0.25"])
    with pytest.raises(ConfigError, match=r"model.tapa.theta=0.2 leaves .*floor\(theta\*head_dim"):
        load_config("configs/tiny.yaml", sizes + ["model.tapa.theta=0.2"])
