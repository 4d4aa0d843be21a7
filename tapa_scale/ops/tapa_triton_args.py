"""Argument checking and packing for the fused TAPA kernels (shared by the forward and backward launchers).

`prepare(...)` validates the public arguments once (the same errors as the reference, plus what the
kernel refuses) and returns a `Problem`: the tensors in kernel-ready form and every scalar/constexpr the
launchers pass. `KernelConfig` is one launch configuration (tile sizes, warps, pipeline stages);
`default_configs` picks one per kernel from the device and the dtype.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, replace
from typing import Optional

import torch

from .chunked import as_position_rows, check_qkv
from .tapa_reference import check_tapa_args

HEAD_DIMS = (16, 32, 64, 128)
DTYPES = (torch.float16, torch.bfloat16, torch.float32)


@dataclass(frozen=True)
class KernelConfig:
    """One launch configuration. block_m tiles queries, block_n tiles keys (in every kernel)."""
    block_m: int
    block_n: int
    num_warps: int = 4
    num_stages: int = 2


@dataclass(frozen=True)
class Configs:
    fwd: KernelConfig
    dkdv: KernelConfig
    dq: KernelConfig


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def default_configs(device: torch.device, dtype: torch.dtype = torch.bfloat16) -> Configs:
    """Tile sizes per kernel. Interpreter: small tiles so short test sequences span several blocks.

    GPU: starting points in the usual flash-attention range (64-128 rows, 2-3 stages), screened offline for
    register spills on sm_90a (tools/bench_attention.py --ptxas) but not yet timed. 8 warps for every
    head dim and dtype: the elementwise temporaries of a (BM, BN) tile (pow, cos, sin, masks) do not
    shrink with D, and with 4 warps the forward and dQ kernels spill 0.7-2.7 kB per thread at D = 16/32
    in bf16/fp16 and 2-3 kB at D = 64 in fp32 (0-60 bytes with 8). With 8 warps (two warpgroups) a
    kernel's own rows must number 128 (block_m for the forward and dQ, block_n for dK/dV): with 64 the
    warpgroups split the tile's columns, and each then recomputes the whole P tile (pow, cos, sin, exp)
    for the next product, which doubled the dK/dV loop's MUFU work and raised its instructions per
    tile element from 52 to 108 (tapa_triton_offline.hot_loop). fp32 inputs (IEEE dots, for tests and
    debugging) take small tiles: their operands need twice the shared memory.
    tools/bench_attention.py --sweep times the alternatives; docs/kernel.md records what was chosen
    and on which GPU.
    """
    if device.type != "cuda" or interpreting():
        small = KernelConfig(32, 32, 4, 1)
        return Configs(small, small, small)
    if dtype == torch.float32:
        return Configs(fwd=KernelConfig(64, 32, 8, 2), dkdv=KernelConfig(32, 32, 8, 2),
                       dq=KernelConfig(64, 32, 8, 2))
    return Configs(fwd=KernelConfig(128, 64, 8, 3), dkdv=KernelConfig(32, 128, 8, 2),
                   dq=KernelConfig(128, 64, 8, 2))


def _env_config(name: str, base: KernelConfig) -> KernelConfig:
    """TAPA_TRITON_<NAME>=block_m,block_n,num_warps,num_stages overrides one kernel's config (sweeps)."""
    raw = os.environ.get(f"TAPA_TRITON_{name.upper()}")
    if not raw:
        return base
    bm, bn, w, s = (int(x) for x in raw.split(","))
    return replace(base, block_m=bm, block_n=bn, num_warps=w, num_stages=s)


def resolve_configs(q: torch.Tensor, configs: Optional[Configs]) -> Configs:
    """The configs given, else the defaults for q's device and dtype (env overrides apply)."""
    if configs is not None:
        return configs
    c = default_configs(q.device, q.dtype)
    return Configs(_env_config("fwd", c.fwd), _env_config("dkdv", c.dkdv), _env_config("dq", c.dq))


def unsupported_reason(q: torch.Tensor) -> Optional[str]:
    """Why the kernel cannot serve these inputs (None if it can): what impl='auto' should check."""
    if q.dtype not in DTYPES:
        return f"dtype {q.dtype} (the Triton kernel takes float16, bfloat16, float32)"
    if q.dim() != 4 or q.shape[-1] not in HEAD_DIMS:
        return f"head_dim {q.shape[-1] if q.dim() else None} (the Triton kernel takes {HEAD_DIMS})"
    if not (q.is_cuda or (interpreting() and q.device.type == "cpu")):
        return f"device {q.device} (CUDA tensors, or CPU tensors under TRITON_INTERPRET=1)"
    return None


def _next_pow2_16(n: int) -> int:
    """tl.arange needs powers of two and tl.dot needs >= 16: pad a split width to that (masked)."""
    return max(16, 1 << (n - 1).bit_length())


@dataclass
class Problem:
    """Validated inputs in kernel form. ids tensors are (Bp, N) int64 with Bp in {1, B}, or None."""
    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    q_pos: Optional[torch.Tensor]
    k_pos: Optional[torch.Tensor]
    q_seg: Optional[torch.Tensor]
    k_seg: Optional[torch.Tensor]
    d_amp: int
    d_phase: int
    alpha: float
    causal: bool
    linear: bool
    fast: bool

    @property
    def shape(self):
        B, Hq, Nq, D = self.q.shape
        return B, Hq, self.k.shape[1], Nq, self.k.shape[2], D

    def ids_args(self):
        """Pointer and batch-stride of each ids tensor (q itself as an unused dummy when absent)."""
        out = []
        for t in (self.q_pos, self.k_pos, self.q_seg, self.k_seg):
            out += [self.q, 0] if t is None else [t, t.stride(0) if t.shape[0] > 1 else 0]
        return out

    def constexprs(self) -> dict:
        """Compile-time switches shared by every kernel."""
        fp32 = self.q.dtype == torch.float32
        return dict(
            HEAD_DIM=self.q.shape[-1], D_AMP=self.d_amp, D_PHASE=self.d_phase,
            PA=_next_pow2_16(self.d_amp), PP=_next_pow2_16(self.d_phase),
            CAUSAL=self.causal, LINEAR=self.linear, FAST=self.fast,
            HAS_QPOS=self.q_pos is not None, HAS_KPOS=self.k_pos is not None,
            HAS_SEG=self.q_seg is not None,
            # fp32 inputs: TF32 would round q_P.k_P to 10 bits and wreck large phase angles.
            PREC="ieee" if fp32 else "tf32",
        )

    def scales(self) -> dict:
        """Runtime fp32 scalars: amplitude scale, log2 of the phase scale 1/sqrt(d_phase) (the kernels carry
        the phase in turns, tapa_triton_jit.reduce_turns), alpha."""
        return dict(alpha=self.alpha, amp_scale=1.0 / math.sqrt(self.d_amp),
                    phase_log2_scale=-0.5 * math.log2(self.d_phase))


def _ids(t, batch, n, device, name):
    if t is None:
        return None
    rows = as_position_rows(t, batch, n, device, name)
    return rows.contiguous()


def _lastdim_contiguous(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


def prepare(q, k, v, *, alpha, theta, phase, causal, q_positions, k_positions, q_segment_ids,
            k_segment_ids) -> Problem:
    """Check the public arguments (one clear ValueError each) and pack them for the launchers."""
    check_qkv(q, k, v)
    d_amp, d_phase = check_tapa_args(alpha, theta, phase, q.shape[-1])
    reason = unsupported_reason(q)
    if reason is not None:
        raise ValueError(f"tapa_attention_triton does not support {reason}; use impl='reference'")
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError(f"q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if k.device != q.device or v.device != q.device:
        raise ValueError(f"q, k, v must be on one device, got {q.device}, {k.device}, {v.device}")
    if (q_segment_ids is None) != (k_segment_ids is None):
        raise ValueError("q_segment_ids and k_segment_ids must be given together")
    B, _, Nq, _ = q.shape
    Nk = k.shape[2]
    fast = q.is_cuda and not interpreting() and os.environ.get("TAPA_TRITON_COS", "fast") != "accurate"
    return Problem(
        q=_lastdim_contiguous(q), k=_lastdim_contiguous(k), v=_lastdim_contiguous(v),
        q_pos=_ids(q_positions, B, Nq, q.device, "q_positions"),
        k_pos=_ids(k_positions, B, Nk, q.device, "k_positions"),
        q_seg=_ids(q_segment_ids, B, Nq, q.device, "q_segment_ids"),
        k_seg=_ids(k_segment_ids, B, Nk, q.device, "k_segment_ids"),
        d_amp=d_amp, d_phase=d_phase, alpha=float(alpha), causal=bool(causal),
        linear=phase == "linear", fast=fast,
    )
