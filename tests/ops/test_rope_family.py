"""Each baseline pinned to its defining property, and all of them through the one attention entry."""
import math

import pytest
import torch

from tapa_scale.ops import PositionalEncoding, attention
from tapa_scale.ops import rope
from tests.helpers import transformers_inv_freq


def test_rope_scores_depend_only_on_distance():
    """<R(m) q, R(n) k> is a function of m - n: shifting both positions changes nothing."""
    torch.manual_seed(0)
    q, k = torch.randn(1, 1, 1, 32, dtype=torch.float64), torch.randn(1, 1, 1, 32, dtype=torch.float64)
    f = rope.rope_inv_freq(32, 10000.0)
    def score(m, n):
        return (rope.apply_rotary(q, torch.tensor([m]), f) * rope.apply_rotary(k, torch.tensor([n]), f)).sum()
    for shift in (1, 17, 100_000):
        torch.testing.assert_close(score(9, 4), score(9 + shift, 4 + shift))
    assert not torch.allclose(score(9, 4), score(9, 5))


def test_pi_is_rope_at_scaled_positions():
    torch.manual_seed(0)
    x = torch.randn(1, 2, 6, 16, dtype=torch.float64)
    pos = torch.arange(6) * 5
    got = rope.apply_rotary(x, pos, rope.pi_inv_freq(16, 500.0, 4.0))
    want = rope.apply_rotary(x, pos.double() / 4.0, rope.rope_inv_freq(16, 500.0))
    torch.testing.assert_close(got, want)


# (kind, head_dim, base, scale, original length, extra): short and long wavelengths on both sides of the
# ramp, Llama 3.1's settings (base 500000, factor 8, original 8192, low/high 1/4), a DeepSeek-like YaRN
# factor 40, an explicit attention factor and non-default betas
FREQUENCY_CASES = [
    ("yarn", 64, 10000.0, 4.0, 2048, {}),
    ("yarn", 128, 500000.0, 8.0, 8192, {"beta_fast": 16.0, "beta_slow": 2.0}),
    ("yarn", 32, 10000.0, 40.0, 4096, {"attention_factor": 1.2}),
    ("yarn", 16, 500.0, 2.0, 64, {}),
    ("llama3", 128, 500000.0, 8.0, 8192, {"low_freq_factor": 1.0, "high_freq_factor": 4.0}),
    ("llama3", 64, 10000.0, 32.0, 2048, {"low_freq_factor": 2.0, "high_freq_factor": 8.0}),
    ("llama3", 16, 500.0, 4.0, 64, {"low_freq_factor": 1.0, "high_freq_factor": 2.0}),
    ("pi", 64, 10000.0, 4.0, 0, {}),
    ("rope", 128, 500000.0, 1.0, 0, {}),
]
HF_TYPE = {"rope": "default", "pi": "linear", "yarn": "yarn", "llama3": "llama3"}


@pytest.mark.parametrize("case", FREQUENCY_CASES, ids=lambda c: f"{c[0]}-D{c[1]}-s{c[3]}")
def test_rotary_frequencies_equal_transformers(case):
    """Each rule against transformers' own ROPE_INIT_FUNCTIONS (float32 there, float64 here: equal to
    a few float32 ulps), and the logit factor against its attention factor squared (it multiplies the
    cos and sin of both q and k). Would catch YaRN's ramp taken linear in turns instead of in the pair
    index, bounds not floored/ceiled, llama3's bands swapped, a missing attention factor."""
    kind, D, base, scale, original, extra = case
    enc = PositionalEncoding(kind, rope_base=base, scale=scale, original_length=original, **extra)
    scaling = None
    if kind != "rope":
        scaling = {"rope_type": HF_TYPE[kind], "factor": scale, **extra}
        if original:
            scaling["original_max_position_embeddings"] = original
    want, factor = transformers_inv_freq(D, base, scaling, max_position_embeddings=int((original or 64) * scale))
    torch.testing.assert_close(enc.inv_freq(D), want, rtol=2e-6, atol=0)
    assert enc.logit_factor() == pytest.approx(factor ** 2, rel=1e-12)


def test_yarn_keeps_fast_dims_interpolates_slow_dims():
    """The shape of the rule, independent of any implementation: pairs that turn more than beta_fast
    times over the original length keep their frequency, fewer than beta_slow times are divided by
    the scale, and those between lie strictly between (a ramp, not a step)."""
    base, D, s, L = 10000.0, 64, 8.0, 4096
    f, y = rope.rope_inv_freq(D, base), rope.yarn_inv_freq(D, base, s, L)
    turns = L * f / (2 * math.pi)
    fast, slow = turns > 32, turns < 1
    assert fast.any() and slow.any()
    torch.testing.assert_close(y[fast], f[fast])
    torch.testing.assert_close(y[slow], f[slow] / s)
    low, high = rope.yarn_correction_range(D, base, L, 32.0, 1.0)
    inner = slice(low + 1, high)
    assert torch.all((y[inner] < f[inner]) & (y[inner] > f[inner] / s))
    assert PositionalEncoding("yarn", scale=s, original_length=L).logit_factor() == \
        pytest.approx((0.1 * math.log(8) + 1) ** 2)
    torch.testing.assert_close(rope.yarn_inv_freq(D, base, 1.0, L), f)


def test_alibi_slopes_as_published():
    torch.testing.assert_close(rope.alibi_slopes(8), torch.tensor([2.0 ** -i for i in range(1, 9)], dtype=torch.float64))
    # 12 heads: the 8 slopes of 8 heads, then the odd-numbered slopes of 16 heads
    want = [2.0 ** -i for i in range(1, 9)] + [2.0 ** -(i / 2) for i in (1, 3, 5, 7)]
    torch.testing.assert_close(rope.alibi_slopes(12), torch.tensor(want, dtype=torch.float64))


def naive(q, k, v, bias=None, scale=None):
    s = q @ k.transpose(-1, -2) * (scale or 1 / math.sqrt(q.shape[-1]))
    n = q.shape[2]
    if bias is not None:
        s = s + bias
    s = s.masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1), float("-inf"))
    return torch.softmax(s, -1) @ v


def test_alibi_attention_adds_linear_distance_bias():
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 4, 9, 8, dtype=torch.float64) for _ in range(3))
    pos = torch.arange(9)
    bias = -rope.alibi_slopes(4)[:, None, None] * (pos[:, None] - pos[None, :]).abs()
    torch.testing.assert_close(attention(q, k, v, PositionalEncoding("alibi")), naive(q, k, v, bias))


def test_alibi_heads_of_a_tensor_parallel_rank_keep_their_global_slopes():
    """Catches slopes taken from the local head count: under TP=2 a rank holding heads 2..3 of 4 must
    use slopes 2^(-8*3/4), 2^(-8*4/4) (those of global heads 2, 3), not the 2-head model's 2^-4, 2^-8."""
    torch.manual_seed(0)
    H, n = 4, 9
    q, k, v = (torch.randn(1, H, n, 8, dtype=torch.float64) for _ in range(3))
    pos = torch.arange(n)
    slopes = torch.tensor([2.0 ** (-8.0 * (h + 1) / H) for h in range(H)], dtype=torch.float64)
    want = naive(q, k, v, -slopes[:, None, None] * (pos[:, None] - pos[None, :]).abs())
    enc = PositionalEncoding("alibi", num_heads=H)
    for offset in (0, 2):
        local = slice(offset, offset + 2)
        got = attention(q[:, local], k[:, local], v[:, local], enc, head_offset=offset)
        torch.testing.assert_close(got, want[:, local])
    with pytest.raises(ValueError, match="head_offset"):
        attention(q[:, :2], k[:, :2], v[:, :2], enc, head_offset=3)


def test_nope_is_plain_causal_attention_and_rope_rotates_first():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 2, 11, 8, dtype=torch.float64) for _ in range(3))
    torch.testing.assert_close(attention(q, k, v, PositionalEncoding("nope")), naive(q, k, v))
    f = rope.rope_inv_freq(8, 10000.0)
    pos = torch.arange(11)
    want = naive(rope.apply_rotary(q, pos, f), rope.apply_rotary(k, pos, f), v)
    torch.testing.assert_close(attention(q, k, v, PositionalEncoding("rope")), want)
    yarn = PositionalEncoding("yarn", scale=4.0, original_length=8)
    f = yarn.inv_freq(8)
    want = naive(rope.apply_rotary(q, pos, f), rope.apply_rotary(k, pos, f), v,
                 scale=yarn.logit_factor() / math.sqrt(8))
    torch.testing.assert_close(attention(q, k, v, yarn), want)


@pytest.mark.parametrize("kind", ["rope", "pi", "yarn", "llama3", "alibi", "nope", "tapa"])
def test_query_shard_with_global_positions_equals_full_sequence(kind):
    """What context parallelism needs: the last 5 queries, given their global positions, against all
    keys produce exactly the last 5 rows of the full computation, and the lse of those rows."""
    torch.manual_seed(0)
    enc = PositionalEncoding(kind, scale=2.0, original_length=8)
    q, k, v = torch.randn(1, 4, 12, 8), torch.randn(1, 2, 12, 8), torch.randn(1, 2, 12, 8)
    full, lse = attention(q, k, v, enc, return_lse=True)
    part, part_lse = attention(q[:, :, 7:], k, v, enc, q_positions=torch.arange(7, 12), return_lse=True)
    torch.testing.assert_close(part, full[:, :, 7:])
    torch.testing.assert_close(part_lse, lse[:, :, 7:])


def test_unknown_encoding_is_named():
    with pytest.raises(ValueError, match="'sinusoid'"):
        PositionalEncoding("sinusoid")
