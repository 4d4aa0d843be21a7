"""Fused TAPA attention in Triton: flash-style tiling, online softmax, O(N) memory, forward and backward.

Computes exactly what `tapa_reference.tapa_attention_reference` computes (see that docstring and
docs/tapa.md): score(m, n) = (q_A.k_A/sqrt(d_amp)) * cos(2*pi*|pos_q(m) - pos_k(n)|^alpha * phi), phi the
quadratic (q_P.k_P/sqrt(d_phase)) or linear ((sum q_P + sum k_P)/sqrt(d_phase)) phase, softmax over the
kept keys (causal by global positions, equal segment ids), out = P.V, lse in natural log.

Layers (one concern per file; docs/kernel.md, Layout):
    tapa_triton_jit.py    small @triton.jit helpers: cos/sin twins, range reduction, pow, masks, block skipping
    tapa_triton_fwd.py    forward kernel (O and LSE) and its launcher
    tapa_triton_bwd.py    backward preprocess, dK/dV and dQ kernels and their launcher
    tapa_triton_args.py   argument checks, packing, launch configurations
    this file             the autograd Function and the public functions

Supported: q (B, Hq, Nq, D), k/v (B, Hkv, Nk, D), Hq % Hkv == 0 (GQA without repeating K/V), any
strides with a contiguous last dim; D in {16, 32, 64, 128} (others: ValueError, use the reference);
float16, bfloat16 (GPU), float32 (ieee dot products, not TF32); any theta that leaves both parts
non-empty (a part whose width is not a power of two is padded with masked zero columns, which costs
MMA work: theta = 0.5 with D = 64 or 128 is exact); quadratic and linear phase; alpha > 0 and theta
runtime values (theta picks d_amp, a compile-time constant); positions and segment ids (N,) or (B, N)
integers; causal or not; Nq != Nk (a context-parallel chunk of queries against other keys).
Block skipping uses per-block min/max of positions and segment ids: exact for monotone positions,
masking correct for any. A row that keeps no key gets out 0 and lse -inf.

Numerics: scores, softmax and accumulation in fp32; P and dS are cast to the input dtype for their
tensor-core products (as FlashAttention does). The phase is formed in fp32 from fp32 dot products,
in turns (psi / 2*pi), and reduced exactly to [-pi, pi] as 2*pi*(t - round(t)) (exact for |psi| < 2.6e7;
~2e-7 absolute after the product with 2*pi) before cos/sin; on GPU the reduced angle goes to PTX
cos.approx/sin.approx (~2^-20.5 absolute on [-pi, pi]). Beyond that, fp32 itself limits the phase to
ulp(psi)/2 (the reference shares that limit). TAPA_TRITON_COS=accurate uses libdevice cos/sin instead.
docs/kernel.md has the measured error table and the GPU results (H100/H200) once measured.

Tested in the Triton interpreter (fp32/fp16) on CPU, and on GPU by tools/gpu_checks.sh.
"""
from __future__ import annotations

from typing import Optional

import torch

from .tapa_triton_args import Configs, KernelConfig, prepare, resolve_configs, unsupported_reason
from .tapa_triton_bwd import backward as _backward
from .tapa_triton_fwd import forward as _forward

__all__ = ["tapa_attention_triton", "tapa_attention_triton_forward", "tapa_attention_triton_backward",
           "triton_unsupported_reason", "Configs", "KernelConfig"]


def triton_unsupported_reason(q: torch.Tensor) -> Optional[str]:
    """None if the kernel can take inputs like q (dtype, head dim, device), else why not."""
    return unsupported_reason(q)


def _problem(q, k, v, alpha, theta, phase, causal, q_positions, k_positions, q_segment_ids,
             k_segment_ids):
    return prepare(q, k, v, alpha=alpha, theta=theta, phase=phase, causal=causal,
                   q_positions=q_positions, k_positions=k_positions, q_segment_ids=q_segment_ids,
                   k_segment_ids=k_segment_ids)


class _TapaTriton(torch.autograd.Function):
    """One Function for every option: saves q, k, v, out, lse; the backward recomputes P."""

    @staticmethod
    def forward(ctx, q, k, v, problem_args, configs):
        p = _problem(q, k, v, *problem_args)
        cfgs = resolve_configs(q, configs)
        out, lse = _forward(p, cfgs.fwd)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.set_materialize_grads(False)  # an unused lse (or out) then brings None, not zeros
        ctx.problem_args = problem_args
        ctx.configs = cfgs
        return out, lse

    @staticmethod
    def backward(ctx, dout, dlse):
        q, k, v, out, lse = ctx.saved_tensors
        p = _problem(q, k, v, *ctx.problem_args)
        if dout is None:
            dout = torch.zeros_like(out)
        dq, dk, dv = _backward(p, out, lse, dout, ctx.configs, dlse)
        return dq, dk, dv, None, None


def tapa_attention_triton(q, k, v, *, alpha=0.1, theta=0.5, phase="quadratic", causal=True,
                          q_positions=None, k_positions=None, q_segment_ids=None, k_segment_ids=None,
                          return_lse=False, configs: Optional[Configs] = None):
    """TAPA attention with the fused kernel; differentiable in q, k, v (and through lse).

    Arguments and results as tapa_attention_reference: out (B, Hq, Nq, D) in q's dtype; with
    return_lse also lse (B, Hq, Nq) float32, natural log, -inf for a query that keeps no key.
    configs overrides the launch configuration (tuning and tests; default per head dim and device).
    """
    problem_args = (alpha, theta, phase, causal, q_positions, k_positions, q_segment_ids, k_segment_ids)
    out, lse = _TapaTriton.apply(q, k, v, problem_args, configs)
    return (out, lse) if return_lse else out


def tapa_attention_triton_forward(q, k, v, *, alpha=0.1, theta=0.5, phase="quadratic", causal=True,
                                  q_positions=None, k_positions=None, q_segment_ids=None,
                                  k_segment_ids=None, configs: Optional[Configs] = None):
    """Forward only, no autograd: -> (out, lse). For context parallelism, which merges blocks by LSE."""
    p = _problem(q, k, v, alpha, theta, phase, causal, q_positions, k_positions, q_segment_ids,
                 k_segment_ids)
    with torch.no_grad():
        return _forward(p, resolve_configs(q, configs).fwd)


def tapa_attention_triton_backward(q, k, v, out, lse, dout, *, alpha=0.1, theta=0.5, phase="quadratic",
                                   causal=True, q_positions=None, k_positions=None, q_segment_ids=None,
                                   k_segment_ids=None, configs: Optional[Configs] = None):
    """Gradients (dq, dk, dv) of this (q, k, v) block given the output and LSE of the whole attention.

    out (B, Hq, Nq, D) and lse (B, Hq, Nq) may be merged over several key blocks (ring attention):
    P = exp(S - lse) is then this block's share of the global softmax, delta = rowsum(out * dout) the
    global one, and dq is this block's partial dq (sum them over key blocks). No autograd involved.
    """
    p = _problem(q, k, v, alpha, theta, phase, causal, q_positions, k_positions, q_segment_ids,
                 k_segment_ids)
    if out.shape != q.shape or lse.shape != q.shape[:3] or dout.shape != q.shape:
        raise ValueError(f"out {tuple(out.shape)}, dout {tuple(dout.shape)} must match q {tuple(q.shape)} "
                         f"and lse {tuple(lse.shape)} must be {tuple(q.shape[:3])}")
    with torch.no_grad():
        return _backward(p, out, lse, dout, resolve_configs(q, configs))
