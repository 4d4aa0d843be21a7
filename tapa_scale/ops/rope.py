"""The RoPE family and the other baselines TAPA is compared with, as small functions of positions.

- RoPE (Su et al.): rotate pairs (x_i, x_{i+D/2}) of q and k by angle pos * base^(-2i/D) ("rotate half"
  layout, as Llama checkpoints use), then a dot product scaled by 1/sqrt(D).
- Position interpolation (Chen et al.): RoPE at positions pos / scale.
- YaRN (Peng et al.): per frequency, interpolate (divide by scale) the long wavelengths, keep the short
  ones, ramp linearly in between by the number of rotations r = original_length / wavelength
  (r < beta_slow: interpolate, r > beta_fast: keep); logits are multiplied by (0.1 ln(scale) + 1)^2.
- ALiBi (Press et al.): no rotation; the logit gets -slope_h * |m - n|, slopes a geometric sequence.
- NoPE: no positional signal at all beyond the causal mask.
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


def yarn_inv_freq(head_dim: int, base: float, scale: float, original_length: int,
                  beta_fast: float = 32.0, beta_slow: float = 1.0) -> torch.Tensor:
    """YaRN "NTK-by-parts" frequencies: interpolate low frequencies, keep high ones, ramp between."""
    if not scale >= 1.0 or original_length <= 0 or not beta_fast > beta_slow:
        raise ValueError(f"YaRN needs scale >= 1, original_length > 0, beta_fast > beta_slow; got "
                         f"scale={scale}, original_length={original_length}, beta=({beta_fast}, {beta_slow})")
    inv_freq = rope_inv_freq(head_dim, base)
    rotations = original_length * inv_freq / (2 * math.pi)  # turns each pair makes over the original context
    keep = ((rotations - beta_slow) / (beta_fast - beta_slow)).clamp(0.0, 1.0)
    return keep * inv_freq + (1.0 - keep) * inv_freq / scale


def yarn_logit_scale(scale: float) -> float:
    """Factor YaRN multiplies the logits by: (0.1 ln s + 1)^2 (the square of its q/k temperature)."""
    return (0.1 * math.log(scale) + 1.0) ** 2 if scale > 1.0 else 1.0


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
