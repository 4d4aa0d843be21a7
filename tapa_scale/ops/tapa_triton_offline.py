"""Compile the fused TAPA kernels for a GPU that is not here, without running them.

The Triton interpreter runs the kernels' arithmetic on CPU but never lowers them, so it cannot see what
only a real target checks: the inline PTX of the fast cos/sin/pow, tl.dot operand shapes and layouts,
shared memory per pipeline stage, register allocation. `compile_kernels` lowers every kernel of one
`Variant` to a cubin for sm_<arch>a with triton's bundled ptxas (no GPU, no driver) and reports, per
kernel, registers and spill bytes per thread and shared memory per program. Run it in a process where
TRITON_INTERPRET is unset (the interpreter replaces `triton.jit` at import).

The signature is built from argument names as the launchers pass them: data pointers in the input
dtype, LSE/DELTA/DLSE fp32, ids int64, the three runtime scalars fp32, every other integer i32 (the
strides and lengths of any tensor below 2**31 elements). Triton specialises a live launch further
(integers equal to 1, 16-byte alignment), so the numbers are a screen; the GPU decides.
"""
from __future__ import annotations

import re
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from .tapa_triton_args import Configs, KernelConfig, Problem, default_configs
from .tapa_triton_fwd import SCAN_BLOCKS

SMEM_LIMIT = {90: 232448, 80: 166912}  # bytes of shared memory one program may use (H100/H200, A100)
_POINTER_DTYPE = {torch.bfloat16: "*bf16", torch.float16: "*fp16", torch.float32: "*fp32"}
_FP32_POINTERS = ("LSE", "DELTA", "DLSE")
_ID_POINTERS = ("QPOS", "KPOS", "QSEG", "KSEG")
_DATA_POINTERS = ("Q", "K", "V", "O", "DO", "DQ", "DK", "DV")
_FP32_SCALARS = ("alpha", "amp_scale", "phase_log2_scale")


@dataclass(frozen=True)
class Variant:
    """One set of compile-time switches, as a call of tapa_attention_triton on a GPU would produce."""
    dtype: torch.dtype = torch.bfloat16
    head_dim: int = 128
    theta: float = 0.5
    linear: bool = False
    causal: bool = True
    ids: bool = False    # positions and segment ids given (context parallelism, packed documents)
    fast: bool = True    # PTX cos.approx & co.; False is TAPA_TRITON_COS=accurate (libdevice)


# Every compile-time switch, each at least once; the first is the model's default path.
VARIANTS = {
    "bf16_d128": Variant(),
    "bf16_d128_ids": Variant(ids=True),
    "bf16_d128_accurate": Variant(fast=False),
    "fp16_d64_theta025_linear_noncausal": Variant(torch.float16, 64, 0.25, linear=True, causal=False),
    "fp16_d32": Variant(torch.float16, 32),
    "fp32_d64": Variant(torch.float32, 64),
}


def problem_of(v: Variant) -> Problem:
    """A Problem with the variant's switches on meta tensors (shapes and dtypes only)."""
    d_amp = round(v.theta * v.head_dim)
    meta = torch.empty((1, 1, 1, v.head_dim), dtype=v.dtype, device="meta")
    ids = torch.empty((1, 1), dtype=torch.int64, device="meta") if v.ids else None
    return Problem(q=meta, k=meta, v=meta, q_pos=ids, k_pos=ids, q_seg=ids, k_seg=ids, d_amp=d_amp,
                   d_phase=v.head_dim - d_amp, alpha=0.1, causal=v.causal, linear=v.linear, fast=v.fast)


def _signature(fn, dtype: torch.dtype, constexprs: dict) -> dict:
    def kind(name):
        if name in constexprs:
            return "constexpr"
        if name in _DATA_POINTERS:
            return _POINTER_DTYPE[dtype]
        if name in _FP32_POINTERS:
            return "*fp32"
        if name in _ID_POINTERS:
            return "*i64"
        return "fp32" if name in _FP32_SCALARS else "i32"
    return {name: kind(name) for name in fn.arg_names}


def _ptxas_usage(ptx: str, arch: int) -> tuple[Optional[int], Optional[int]]:
    """(registers, spill store bytes) per thread from ptxas -v."""
    import triton

    ptxas = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "k.ptx").write_text(ptx)
        log = subprocess.run([str(ptxas), "-v", f"--gpu-name=sm_{arch}a", f"{tmp}/k.ptx", "-o", f"{tmp}/k.cubin"],
                             capture_output=True, text=True).stderr
    regs, spill = re.search(r"Used (\d+) registers", log), re.search(r"(\d+) bytes spill stores", log)
    return (int(regs.group(1)) if regs else None), (int(spill.group(1)) if spill else None)


def compile_one(kernel: str, variant: Variant, config: KernelConfig, arch: int = 90) -> dict:
    """Compile one kernel ('fwd', 'dkdv', 'dq' or 'delta') of `variant` with `config` for sm_<arch>a."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from . import tapa_triton_bwd, tapa_triton_fwd

    fn = dict(fwd=tapa_triton_fwd._tapa_fwd_kernel, dkdv=tapa_triton_bwd._tapa_bwd_dkdv_kernel,
              dq=tapa_triton_bwd._tapa_bwd_dq_kernel, delta=tapa_triton_bwd._bwd_preprocess_kernel)[kernel]
    if kernel == "delta":  # the launcher's fixed rows-per-program, with dlse given
        consts = dict(HEAD_DIM=variant.head_dim, BLOCK=tapa_triton_bwd.DELTA_BLOCK, HAS_DLSE=True)
    else:
        consts = dict(problem_of(variant).constexprs(), SCAN=SCAN_BLOCKS, BLOCK_M=config.block_m,
                      BLOCK_N=config.block_n)
    t0 = time.time()
    compiled = triton.compile(ASTSource(fn=fn, signature=_signature(fn, variant.dtype, consts), constexprs=consts),
                              target=GPUTarget("cuda", arch, 32),
                              options=dict(num_warps=config.num_warps, num_stages=config.num_stages))
    regs, spills = _ptxas_usage(compiled.asm["ptx"], arch)
    return dict(kernel=kernel, config=[config.block_m, config.block_n, config.num_warps, config.num_stages],
                regs=regs, spill_bytes=spills, smem=compiled.metadata.shared,
                smem_limit=SMEM_LIMIT.get(arch), compile_s=round(time.time() - t0, 1))


def compile_kernels(variant: Variant, configs: Optional[Configs] = None, arch: int = 90) -> list[dict]:
    """Every kernel of `variant` with `configs` (default: what a CUDA launch would pick)."""
    cfgs = configs or default_configs(torch.device("cuda"), variant.dtype)
    rows = [compile_one(k, variant, getattr(cfgs, k), arch) for k in ("fwd", "dkdv", "dq")]
    delta = KernelConfig(0, 0, 4, 3)  # its launcher passes no warps/stages: triton's defaults
    return rows + [compile_one("delta", variant, delta, arch)]
