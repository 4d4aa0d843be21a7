"""The fused kernels compile for the H100/H200 (sm_90a) on a machine without a GPU.

The CPU tests run the kernels in the Triton interpreter, which never lowers them. This test lowers every
kernel of every compile-time variant (tapa_triton_offline.VARIANTS: bf16/fp16/fp32, head dims 32/64/128,
an uneven theta, linear phase, non-causal, positions and segment ids, the accurate cos) to a cubin with
triton's bundled ptxas, through `tools/bench_attention.py --ptxas`, in a process without TRITON_INTERPRET.

Would catch: a kernel that runs in the interpreter but does not compile for the GPU (a typo in the inline
PTX of the fast cos/sin/pow, a tl.dot operand narrower than 16 or of mixed dtypes, a constexpr branch
only the GPU takes), and default tiles whose pipeline stages need more shared memory than one program
may have (the launch would fail on the GPU); and default tiles whose hot loops do work twice: with
64 own rows and 8 warps, each warpgroup recomputed the whole P tile (pow, cos, sin, exp) and the
dK/dV loop ran 10 MUFU operations and 1.5x the tensor-core FLOPs per tile element instead of 5 and 1x.
"""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _ptxas() -> Path:
    spec = importlib.util.find_spec("triton")
    return Path(spec.origin).parent / "backends" / "nvidia" / "bin" / "ptxas"


@pytest.mark.skipif(not _ptxas().exists(), reason="this triton has no bundled ptxas (no NVIDIA backend)")
def test_every_variant_compiles_for_sm90(tmp_path):
    out = tmp_path / "ptxas.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(PYTHONPATH=str(ROOT), TRITON_CACHE_DIR=str(tmp_path / "cache"))
    # two processes compile the variants side by side (the suite runs one test at a time on 2 cores)
    run = subprocess.run([sys.executable, "tools/bench_attention.py", "--ptxas", "--jobs", "2", "--json", str(out)],
                         cwd=ROOT,
                         env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-4000:]
    report = json.loads(out.read_text())
    variants = report["variants"]

    from tapa_scale.ops.tapa_triton_offline import VARIANTS
    assert sorted(variants) == sorted(VARIANTS)
    for name, rows in variants.items():
        assert [r["kernel"] for r in rows] == ["fwd", "dkdv", "dq", "delta"], name
        for r in rows:
            assert r["regs"] is not None and r["regs"] <= 255, (name, r)  # ptxas produced a cubin
            assert r["spill_bytes"] is not None, (name, r)
            assert 0 < r["smem"] <= r["smem_limit"], (name, r)

    # the bf16 D = 128 defaults' unmasked loops, per tile element: each MUFU operation once (forward: pow
    # as lg2 + ex2, cos, the softmax's exp; backward kernels: pow, cos, sin, exp), and the tensor-core
    # FLOPs of the products the math needs (forward q_A.k_A + q_P.k_P and P.V: 2 * 2D; dK/dV: those two,
    # dO.V, P^T.dO and dS^T.q: 4 * 2D; dQ: 3 * 2D), not more
    for name, loops in report["hot_loop"].items():  # without and with positions
        for kernel, mufu, flops in (("fwd", 4, 4 * 128), ("dkdv", 5, 8 * 128), ("dq", 5, 6 * 128)):
            assert loops[kernel]["mufu"] <= mufu + 0.1, (name, kernel, loops[kernel])
            assert loops[kernel]["tensor_flops"] == flops, (name, kernel, loops[kernel])
