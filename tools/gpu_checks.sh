#!/usr/bin/env bash
# GPU checks of the fused TAPA kernel, in one run of about 8 minutes on one H100/H200.
# Needs only python with torch + triton (pytest optional). Writes JSON and logs under $OUT (default
# ./gpu_out), in order of priority, each step capped so the whole run ends by the deadline:
#   env.txt            GPU, driver, python/torch/triton versions
#   tests_gpu.json     GPU-only correctness tests: bf16/fp16 vs the reference, fast cos/sin/pow accuracy
#   numerics.json      measured cos/sin abs error per angle range and pow ulps, each twin (docs/kernel.md)
#   bench.json         TAPA-triton vs TAPA-reference vs RoPE+SDPA flash/cuDNN, N = 2k..128k, fwd and fwd+bwd
#   bench_cos.json     the same at 16k with the accurate (libdevice) cos/sin, to price the fast path
#   sweep.json         tile configurations per kernel at 16k (best ones go into default_configs)
#   tests_all.json     every test of tests/ops/test_tapa_triton.py compiled on the GPU, if time is left
#   summary.txt        pass/fail counts and speed ratios
# Usage: bash tools/gpu_checks.sh            (GPU_CHECKS_SECONDS=470 sets the deadline)
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT="${OUT:-./gpu_out}"
mkdir -p "$OUT"
PY="${PYTHON:-$(command -v python3 || command -v python)}"
START=$(date +%s)
DEADLINE=$((START + ${GPU_CHECKS_SECONDS:-470}))
export PYTHONUNBUFFERED=1

# step NAME CAP_SECONDS MIN_SECONDS CMD...: run CMD with stdout+stderr in $OUT/NAME.log, for at most
# CAP seconds and never past the deadline; skipped when fewer than MIN seconds are left.
step() {
    local name=$1 cap=$2 min=$3
    shift 3
    local left=$((DEADLINE - $(date +%s)))
    if ((left < min)); then
        echo "[$(date +%T)] skip $name (${left}s left)" | tee -a "$OUT/summary.txt"
        return
    fi
    ((cap > left)) && cap=$left
    echo "[$(date +%T)] $name (cap ${cap}s)" | tee -a "$OUT/summary.txt"
    timeout --kill-after=10 "$cap" "$@" >"$OUT/$name.log" 2>&1
    local rc=$?
    echo "[$(date +%T)] $name exit $rc$( ((rc == 124 || rc == 137)) && echo ' (timed out)')" | tee -a "$OUT/summary.txt"
}

: >"$OUT/summary.txt"
{
    nvidia-smi || true
    "$PY" -c "import sys, torch, triton; print(sys.version); print('torch', torch.__version__, 'cuda', torch.version.cuda); print('triton', triton.__version__); print(torch.cuda.get_device_name(), torch.cuda.get_device_capability())"
    "$PY" -c "import pytest; print('pytest', pytest.__version__)" 2>/dev/null || echo "pytest absent"
} >"$OUT/env.txt" 2>&1

step tests_gpu 150 30 "$PY" -m tests.ops.test_tapa_triton --gpu-only --json "$OUT/tests_gpu.json"
step numerics 60 20 "$PY" -m tests.ops.test_tapa_triton --numerics "$OUT/numerics.json"
step bench 200 60 "$PY" tools/bench_attention.py --max-seconds 170 --json "$OUT/bench.json"
step bench_cos 60 30 "$PY" tools/bench_attention.py --lengths 16384 --methods tapa_triton,tapa_triton_accurate_cos \
    --max-seconds 50 --json "$OUT/bench_cos.json"
step sweep 100 45 "$PY" tools/bench_attention.py --sweep --lengths 16384 --max-seconds 85 --json "$OUT/sweep.json"
step tests_all 200 45 "$PY" -m tests.ops.test_tapa_triton --json "$OUT/tests_all.json"

{
    echo "--- elapsed $(($(date +%s) - START))s"
    for f in tests_gpu tests_all; do
        [ -f "$OUT/$f.log" ] && echo "$f: $(tail -n 1 "$OUT/$f.log")"
        grep -h '^failed' "$OUT/$f.log" 2>/dev/null
    done
    [ -f "$OUT/bench.log" ] && grep -h 'tapa_triton /' "$OUT/bench.log"
    [ -f "$OUT/sweep.log" ] && grep -h '^best' "$OUT/sweep.log"
} | tee -a "$OUT/summary.txt"
