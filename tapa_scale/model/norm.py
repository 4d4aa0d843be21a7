"""RMSNorm that megatron-core layer specs can build and that works under sequence parallelism.

torch's own norm, as megatron wraps it, refuses sequence parallelism; this one instead marks its weight
`sequence_parallel` so megatron's DDP all-reduces the weight gradient over the tensor-parallel group
(each rank saw only its slice of the sequence).
"""
import torch
from torch import nn


class RMSNorm(nn.Module):
    """y = x / sqrt(mean(x^2) + eps) * weight, computed in float32, returned in x's dtype."""

    def __init__(self, config, hidden_size: int, eps: float = 1e-5, **_megatron_kwargs):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(hidden_size, dtype=config.params_dtype))
        setattr(self.weight, "sequence_parallel", bool(config.sequence_parallel))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (y * self.weight.float()).to(x.dtype)
