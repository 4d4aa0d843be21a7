"""Compile the fused TAPA kernels for a GPU that is not here, without running them.

The Triton interpreter runs the kernels' arithmetic on CPU but never lowers them, so it cannot see what
only a real target checks: the inline PTX of the fast cos/sin/pow, tl.dot operand shapes and layouts,
shared memory per pipeline stage, register allocation. `compile_kernels` lowers every kernel of one
`Variant` to a cubin for sm_<arch>a with triton's bundled ptxas (no GPU, no driver) and reports, per
kernel, registers and spill bytes per thread and shared memory per program. Run it in a process where
TRITON_INTERPRET is unset (the interpreter replaces `triton.jit` at import).

The signature is built from argument names as the launchers pass them: data pointers in the input
dtype, LSE/DELTA/DLSE fp32, ids int64, the three runtime scalars fp32, every other integer i32 (the
strides and lengths of any tensor below 2**31 elements). Pointers and strides carry the hint a live
launch gives them when they are multiples of 16 (torch allocations and head dims 16-128 are), which
lets loads be vectorised; head counts and lengths carry none. Triton also folds integers equal to 1
at a live launch (GROUP = 1 without GQA), so the numbers are a screen; the GPU decides.
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

from .tapa_reference import tapa_split
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


# Every compile-time switch, each at least once. The first is how the benchmark calls the kernel, the
# second how the model does (it always passes positions, and segment ids for packed documents).
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
    d_amp, d_phase = tapa_split(v.head_dim, v.theta)
    meta = torch.empty((1, 1, 1, v.head_dim), dtype=v.dtype, device="meta")
    ids = torch.empty((1, 1), dtype=torch.int64, device="meta") if v.ids else None
    return Problem(q=meta, k=meta, v=meta, q_pos=ids, k_pos=ids, q_seg=ids, k_seg=ids, d_amp=d_amp,
                   d_phase=d_phase, alpha=0.1, causal=v.causal, linear=v.linear, fast=v.fast)


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


def _alignment_hints(fn, signature: dict) -> dict:
    """tt.divisibility=16 on every pointer and stride argument (see the module docstring)."""
    return {(i,): [["tt.divisibility", 16]] for i, name in enumerate(fn.arg_names)
            if signature[name].startswith("*") or name.startswith("s_")}


def _ptxas_usage(ptx: str, arch: int) -> tuple[Optional[int], Optional[int]]:
    """(registers, spill store bytes) per thread from ptxas -v."""
    import triton

    ptxas = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "k.ptx").write_text(ptx)
        log = subprocess.run([str(ptxas), "-v", f"--gpu-name=sm_{arch}a", f"{tmp}/k.ptx", "-o",
                              f"{tmp}/k.cubin"], capture_output=True, text=True).stderr
    regs, spill = re.search(r"Used (\d+) registers", log), re.search(r"(\d+) bytes spill stores", log)
    return (int(regs.group(1)) if regs else None), (int(spill.group(1)) if spill else None)


def compile_one(kernel: str, variant: Variant, config: KernelConfig, arch: int = 90,
                keep: bool = False) -> dict:
    """Compile one kernel ('fwd', 'dkdv', 'dq' or 'delta') of `variant` with `config` for sm_<arch>a
    (keep: also return the cubin)."""
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
    signature = _signature(fn, variant.dtype, consts)
    source = ASTSource(fn=fn, signature=signature, constexprs=consts, attrs=_alignment_hints(fn, signature))
    compiled = triton.compile(source, target=GPUTarget("cuda", arch, 32),
                              options=dict(num_warps=config.num_warps, num_stages=config.num_stages))
    regs, spills = _ptxas_usage(compiled.asm["ptx"], arch)
    row = dict(kernel=kernel, config=[config.block_m, config.block_n, config.num_warps, config.num_stages],
               regs=regs, spill_bytes=spills, smem=compiled.metadata.shared,
               smem_limit=SMEM_LIMIT.get(arch), compile_s=round(time.time() - t0, 1))
    return dict(row, cubin=compiled.asm["cubin"]) if keep else row


def compile_kernels(variant: Variant, configs: Optional[Configs] = None, arch: int = 90,
                    loops: bool = False) -> list[dict]:
    """Every kernel of `variant` with `configs` (default: what a CUDA launch would pick); with `loops`,
    the attention kernels' rows are hot_loop's (the same compile, plus the hot loop's mix)."""
    cfgs = configs or default_configs(torch.device("cuda"), variant.dtype)
    one = hot_loop if loops else compile_one
    rows = [one(k, variant, getattr(cfgs, k), arch) for k in ("fwd", "dkdv", "dq")]
    delta = KernelConfig(0, 0, 4, 3)  # its launcher passes no warps/stages: triton's defaults
    return rows + [compile_one("delta", variant, delta, arch)]


# ----------------------------------------------------------------------------------------------------
# the hot loop's instruction mix, and what it implies on an H100/H200
# ----------------------------------------------------------------------------------------------------
# Per SM and clock on sm_90 (CUDA programming guide, throughput table; H100 whitepaper): 4 warp
# schedulers issue one warp instruction each (128 thread instructions), the MUFU units (lg2, ex2, cos,
# sin) retire 16 results, the tensor cores 4096 dense bf16/fp16 FLOPs.
ISSUE_PER_CLK, MUFU_PER_CLK, TENSOR_FLOP_PER_CLK = 128, 16, 4096
_LABEL = re.compile(r"^(\.L_x_\d+):")
_BRANCH = re.compile(r"BRA `\((\.L_x_\d+)\)")
_OPCODE = re.compile(r"^\s*/\*[0-9a-f]+\*/\s+(?:@!?U?P\w+\s+)?([A-Z0-9_]+)(\.[A-Z0-9_.]+)?")
_MMA = re.compile(r"HGMMA\.(\d+)x(\d+)x(\d+)")


def _loops(sass: str) -> list[list[str]]:
    """Bodies (instruction lines) of the loops in a disassembly: a branch back to an earlier label."""
    lines = sass.splitlines()
    at = {m.group(1): i for i, line in enumerate(lines) if (m := _LABEL.match(line))}
    bodies = []
    for i, line in enumerate(lines):
        m = _BRANCH.search(line)
        if m and at.get(m.group(1), i) < i:
            bodies.append([x for x in lines[at[m.group(1)]:i + 1] if _OPCODE.match(x)])
    return bodies


def hot_loop(kernel: str, variant: Variant, config: KernelConfig, arch: int = 90) -> dict:
    """Instruction mix of one kernel's unmasked loop (the innermost loop with tensor-core instructions
    and the fewest instructions), per element of its (BM, BN) tile and per thread, from the SASS of the
    compiled kernel, and the clocks per element an SM needs for it on each limit: instruction issue,
    MUFU, tensor cores. The largest is the loop's ceiling if everything else overlaps perfectly;
    memory, latency and the masked diagonal blocks come on top."""
    import triton

    compiled = compile_one(kernel, variant, config, arch, keep=True)
    nvdisasm = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "nvdisasm"
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "k.cubin").write_bytes(compiled.pop("cubin"))
        sass = subprocess.run([str(nvdisasm), "-c", f"{tmp}/k.cubin"], capture_output=True, text=True,
                              check=True).stdout
    body = min((b for b in _loops(sass) if any("HGMMA" in x for x in b)), key=len)
    ops: dict[str, int] = {}
    for line in body:
        op = _OPCODE.match(line).group(1)
        ops[op] = ops.get(op, 0) + 1
    per_thread = config.block_m * config.block_n / (32 * config.num_warps)   # tile elements per thread
    warpgroups = config.num_warps / 4
    flops = 2 * warpgroups * sum(int(a) * int(b) * int(c) for m in map(_MMA.search, body) if m
                                 for a, b, c in [m.groups()])
    per_elt = {op: round(n / per_thread, 2) for op, n in ops.items()}
    clocks = dict(issue=len(body) / per_thread / ISSUE_PER_CLK,
                  mufu=ops.get("MUFU", 0) / per_thread / MUFU_PER_CLK,
                  tensor=flops / (config.block_m * config.block_n) / TENSOR_FLOP_PER_CLK)
    local = per_elt.get("LDL", 0) + per_elt.get("STL", 0)
    return dict(compiled, elements_per_thread=per_thread, instructions=round(len(body) / per_thread, 2),
                mufu=per_elt.get("MUFU", 0.0), local_memory=round(local, 2),
                tensor_flops=flops / (config.block_m * config.block_n),
                clocks={k: round(v, 4) for k, v in clocks.items()}, bound=max(clocks, key=clocks.get),
                ops=dict(sorted(per_elt.items(), key=lambda kv: -kv[1])))


def model_ceiling(loops: dict, head_dim: int = 128) -> dict:
    """Fraction of the tensor cores' dense peak that the hot loops' limits allow, credited as
    tools/bench_attention.py credits FLOPs (forward 4*D per kept pair, forward+backward 3.5x that):
    the forward kernel alone, and forward + dK/dV + dQ run one after the other. `loops`: hot_loop
    results by kernel name."""
    slowest = {k: max(r["clocks"].values()) for k, r in loops.items()}
    fwd = 4 * head_dim / TENSOR_FLOP_PER_CLK / slowest["fwd"]
    both = 3.5 * 4 * head_dim / TENSOR_FLOP_PER_CLK / (slowest["fwd"] + slowest["dkdv"] + slowest["dq"])
    return dict(fwd=round(fwd, 3), fwd_bwd=round(both, 3))
