"""The fused kernels compile for the H100/H200 (sm_90a) on a machine without a GPU.

The CPU tests run the kernels in the Triton interpreter, which never lowers them. This test lowers every
kernel of every compile-time variant (tapa_triton_offline.VARIANTS: bf16/fp16/fp32, head dims 32/64/128,
an uneven theta, linear phase, non-causal, positions and segment ids, the accurate cos) to a cubin with
triton's bundled ptxas, through `tools/bench_attention.py --ptxas`, in a process without TRITON_INTERPRET.

Would catch: a kernel that runs in the interpreter but does not compile for the GPU (a typo in the inline
PTX of the fast cos/sin/pow, a tl.dot operand narrower than 16 or of mixed dtypes, a constexpr branch
only the GPU takes), and default tiles whose pipeline stages need more shared memory than one program
may have (the launch would fail on the GPU).
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _ptxas() -> Path:
    spec = __import__("importlib.util").util.find_spec("triton")
    return Path(spec.origin).parent / "backends" / "nvidia" / "bin" / "ptxas"


@pytest.mark.skipif(not _ptxas().exists(), reason="this triton has no bundled ptxas (no NVIDIA backend)")
def test_every_variant_compiles_for_sm90(tmp_path):
    out = tmp_path / "ptxas.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(PYTHONPATH=str(ROOT), TRITON_CACHE_DIR=str(tmp_path / "cache"))
    run = subprocess.run([sys.executable, "tools/bench_attention.py", "--ptxas", "--json", str(out)], cwd=ROOT,
                         env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-4000:]
    variants = json.loads(out.read_text())["variants"]

    from tapa_scale.ops.tapa_triton_offline import VARIANTS
    assert sorted(variants) == sorted(VARIANTS)
    for name, rows in variants.items():
        assert [r["kernel"] for r in rows] == ["fwd", "dkdv", "dq", "delta"], name
        for r in rows:
            assert r["regs"] is not None and r["regs"] <= 255, (name, r)  # ptxas produced a cubin
            assert r["spill_bytes"] is not None, (name, r)
            assert 0 < r["smem"] <= r["smem_limit"], (name, r)
