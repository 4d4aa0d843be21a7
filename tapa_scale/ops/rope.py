"""The RoPE family and the other baselines TAPA is compared with, as small functions of positions.

Each rule is defined once, here, and equals the definition transformers applies when it loads a Llama
checkpoint with that `rope_scaling` (`modeling_rope_utils`, which follows each method's authors):

- RoPE (Su et al.; rope_type "default"): rotate pairs (x_i, x_{i+D/2}) of q and k by angle
  pos * base^(-2i/D) ("rotate half" layout, as Llama checkpoints use), then a dot product scaled by
  1/sqrt(D).
- Position interpolation (Chen et al.; "linear"): every frequency divided by the scale.
- YaRN (Peng et al.; "yarn"): per pair index i, a ramp linear in i between the dimensions whose
  wavelength makes beta_fast and beta_slow turns over the original length (bounds floored and ceiled)
  blends kept frequencies (short wavelengths) into interpolated ones (divided by the scale); cos and sin
  are multiplied by the attention factor 0.1 ln(scale) + 1 (unless given), so logits by its square.
- Llama 3 (rope_type "llama3"): wavelengths shorter than original_length / high_freq_factor are kept,
  longer than original_length / low_freq_factor divided by the factor, and in between blended by
  (original_length / wavelength - low) / (high - low).
- ALiBi (Press et al.): no rotation; the logit gets -slope_h * |m - n|, slopes a geometric sequence.
- NoPE: no positional signal at all beyond the causal mask.

transformers computes the frequencies and angles in float32; here they are float64 (positions of 128k
and beyond keep their precision), so the two agree to float32 rounding of the angle.
"""
from __future__ import annotations

import math

import torch


def rope_inv_freq(head_dim: int, base: float) -> torch.Tensor:
    """(D/2,) float64 angular frequencies base^(-2i/D) of RoPE."""
    if head_dim % 2:
        raise ValueError(f"rotary embeddings need an even head_dim, got {head_dim}")
    if not base > 1.0:
        raise ValueError(f"rope base must be > 1, got {base}")
    return base ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)


def pi_inv_freq(head_dim: int, base: float, scale: float) -> torch.Tensor:
    """Position interpolation: RoPE frequencies divided by scale (same as positions / scale)."""
    if not scale >= 1.0:
        raise ValueError(f"interpolation scale must be >= 1, got {scale}")
    return rope_inv_freq(head_dim, base) / scale


def yarn_correction_range(head_dim: int, base: float, original_length: int, beta_fast: float,
                          beta_slow: float) -> tuple[int, int]:
    """The pair indices [low, high] between which YaRN ramps: the (fractional) index whose wavelength
    makes `beta` turns over the original length is D ln(L / (2 pi beta)) / (2 ln base); low is floored
    (from beta_fast), high ceiled (from beta_slow), both clipped to [0, D - 1]."""
    def index(turns):
        return head_dim * math.log(original_length / (turns * 2 * math.pi)) / (2 * math.log(base))
    return max(math.floor(index(beta_fast)), 0), min(math.ceil(index(beta_slow)), head_dim - 1)


def yarn_inv_freq(head_dim: int, base: float, scale: float, original_length: int,
                  beta_fast: float = 32.0, beta_slow: float = 1.0) -> torch.Tensor:
    """YaRN "NTK-by-parts" frequencies: kept below pair index `low`, interpolated (divided by scale)
    above `high`, ramped linearly in the pair index between (yarn_correction_range)."""
    if not scale >= 1.0 or original_length <= 0 or not beta_fast > beta_slow:
        raise ValueError(f"YaRN needs scale >= 1, original_length > 0, beta_fast > beta_slow; got "
                         f"scale={scale}, original_length={original_length}, beta=({beta_fast}, {beta_slow})")
    inv_freq = rope_inv_freq(head_dim, base)
    low, high = yarn_correction_range(head_dim, base, original_length, beta_fast, beta_slow)
    ramp = (torch.arange(head_dim // 2, dtype=torch.float64) - low) / ((high - low) or 0.001)
    keep = 1.0 - ramp.clamp(0.0, 1.0)
    return keep * inv_freq + (1.0 - keep) * inv_freq / scale


def yarn_attention_factor(scale: float) -> float:
    """YaRN's default factor on cos and sin: 0.1 ln(scale) + 1 (1 for scale <= 1)."""
    return 0.1 * math.log(scale) + 1.0 if scale > 1.0 else 1.0


def llama3_inv_freq(head_dim: int, base: float, factor: float, original_length: int,
                    low_freq_factor: float = 1.0, high_freq_factor: float = 4.0) -> torch.Tensor:
    """Llama 3.1's frequencies: short wavelengths kept, long ones divided by `factor`, a blend between."""
    if not factor >= 1.0 or original_length <= 0 or not high_freq_factor > low_freq_factor > 0:
        raise ValueError(f"llama3 scaling needs factor >= 1, original_length > 0, high_freq_factor > "
                         f"low_freq_factor > 0; got factor={factor}, original_length={original_length}, "
                         f"low/high=({low_freq_factor}, {high_freq_factor})")
    inv_freq = rope_inv_freq(head_dim, base)
    wavelength = 2 * math.pi / inv_freq
    blend = ((original_length / wavelength - low_freq_factor) / (high_freq_factor - low_freq_factor))
    blended = (1.0 - blend) * inv_freq / factor + blend * inv_freq
    out = torch.where(wavelength > original_length / low_freq_factor, inv_freq / factor, inv_freq)
    medium = (wavelength >= original_length / high_freq_factor) & (wavelength <= original_length / low_freq_factor)
    return torch.where(medium, blended, out)


def apply_rotary(x: torch.Tensor, positions: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
    """Rotate x (B, H, N, D) by angles positions * inv_freq; positions (N,) or (B, N) integers.

    Angles are formed in float64 so that large positions (128k and beyond) keep their precision;
    the result has x's dtype.
    """
    if positions.dim() == 1:
        positions = positions[None]
    angles = positions.to(torch.float64)[:, None, :, None] * inv_freq.to(x.device)  # (Bp, 1, N, D/2)
    compute = torch.float64 if x.dtype == torch.float64 else torch.float32
    cos, sin = angles.cos().to(compute), angles.sin().to(compute)
    x1, x2 = x.to(compute).chunk(2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).to(x.dtype)


def alibi_slopes(n_heads: int) -> torch.Tensor:
    """(n_heads,) float64 ALiBi slopes: 2^(-8i/n) for n a power of two; otherwise those of the largest
    power of two below n, followed by every other slope of twice that power (as published)."""
    def powers(n):
        return [2.0 ** (-8.0 * (i + 1) / n) for i in range(n)]
    p = 2 ** int(math.floor(math.log2(n_heads)))
    slopes = powers(p)
    if p < n_heads:
        slopes += powers(2 * p)[0::2][: n_heads - p]
    return torch.tensor(slopes, dtype=torch.float64)
