#!/usr/bin/env bash
# GPU checks of the fused TAPA kernel and end-to-end training, in one run of about 9.5 minutes on one H100/H200.
# Needs only python with torch + triton (pytest optional). Writes JSON and logs into the results folder
# it is given, in order of priority, each step capped so the whole run ends by the deadline:
#   env.txt            GPU, driver, python/torch/triton versions
#   tests_gpu.json     GPU-only correctness tests: bf16/fp16 vs the reference, fast cos/sin/pow accuracy,
#                      large phase angles through the fast path
#   numerics.json      measured cos/sin abs error per angle range and pow ulps, each twin (docs/kernel.md)
#   bench.json         TAPA-triton vs TAPA-reference vs RoPE+SDPA flash/cuDNN, N = 2k..128k, fwd and fwd+bwd
#   train_8k.json      end-to-end training of the 125m model at 8192 tokens on one GPU, TAPA (fused kernel)
#                      and RoPE (SDPA) side by side: tokens/s, MFU (causal and non-causal), peak memory and
#                      the step-time breakdown; needs megatron-core (carried as wheels), skipped without it
#   cost_model/        the cost model on this GPU: hardware_gpu.json (calibrated: GEMMs, attention of the
#                      Triton kernel and SDPA, bandwidth, runtime; links copied from the shipped profile) and
#                      validation.json + PNGs (configs/sweeps/gpu_validation.yaml, predicted vs measured)
#   bench_cos.json     the same at 16k with the accurate (libdevice) cos/sin, to price the fast path
#   sweep.json         tile configurations per kernel at 16k (best ones go into default_configs)
#   eval_125m.json     the long-context evaluation of a 125m TAPA model (two training steps at 8k, then
#                      ppl, passkey and loss by position at 8k/16k/32k in bf16 on the GPU): seconds per
#                      task and peak memory; needs megatron-core and transformers (carried as wheels),
#                      skipped without them
#   train_32k.json     the same training comparison at 32768 tokens, if time is left
#   zero_overlap.log   the tiny model with the distributed optimizer, megatron's overlap of gradient
#                      reduction and weight gathering off and on: equal losses and checkpointed weights
#   tests_all.json     every test of tests/ops/test_tapa_triton.py compiled on the GPU, if time is left
#   summary.txt        step timings, pass/fail counts and speed ratios
#   <step>.log         each step's output; gpu_checks.tar.gz: the whole folder as one archive
# The archive is rewritten after every step, so a run cut short still leaves everything it measured.
# Usage: bash tools/gpu_checks.sh [--wheels DIR] [RESULTS_DIR]   (default $OUT, else ./gpu_out;
# GPU_CHECKS_SECONDS=560 sets the deadline, SHARDS=4 the parallel test processes: Triton compiles one
# kernel at a time per process, and compiling dominates the tests). --wheels DIR: packages the machine
# lacks (megatron-core, mosaicml-streaming, transformers, ...), as wheels made by tools/gpu_wheels.sh,
# installed into a private directory first (no index, no dependencies resolved, the image's torch kept).
set -uo pipefail
WHEELS=""
if [ "${1:-}" = --wheels ]; then WHEELS="$2"; shift 2; fi
RES="$(mkdir -p "${1:-${OUT:-./gpu_out}}" && cd "${1:-${OUT:-./gpu_out}}" && pwd)" || exit 2
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY="${PYTHON:-$(command -v python3 || command -v python)}"
SHARDS="${SHARDS:-4}"
START=$(date +%s)
DEADLINE=$((START + ${GPU_CHECKS_SECONDS:-560}))
export PYTHONUNBUFFERED=1
if [ -n "$WHEELS" ]; then
    SITE="$(mktemp -d)"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" "$WHEELS"/*.whl &&
        export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}" || echo "wheels from $WHEELS did not install" >&2
fi

note() { echo "[$(date +%T)] $*" | tee -a "$RES/summary.txt"; }

# pack: the results folder as one archive inside it (written aside, then moved into place).
pack() {
    tar czf "$RES/.archive.tmp" -C "$RES" --exclude=./gpu_checks.tar.gz --exclude=./.archive.tmp . 2>/dev/null &&
        mv "$RES/.archive.tmp" "$RES/gpu_checks.tar.gz"
    return 0
}

# budget CAP MIN: seconds this step may use (CAP, or less near the deadline); empty if under MIN left.
budget() {
    local left=$((DEADLINE - $(date +%s)))
    ((left < $2)) && return
    echo $(($1 < left ? $1 : left))
}

# step NAME CAP MIN CMD...: one command, stdout+stderr in the work folder's NAME.log.
step() {
    local name=$1 secs
    secs=$(budget "$2" "$3")
    shift 3
    [ -z "$secs" ] && { note "skip $name (deadline)"; return; }
    note "$name (cap ${secs}s)"
    timeout --kill-after=10 "$secs" "$@" >"$RES/$name.log" 2>&1
    local rc=$?
    note "$name exit $rc$( ((rc == 124 || rc == 137)) && echo ' (timed out)')"
    pack
}

# sharded NAME CAP MIN ARGS...: the test runner in $SHARDS parallel processes, merged into NAME.json.
sharded() {
    local name=$1 secs k
    secs=$(budget "$2" "$3")
    shift 3
    [ -z "$secs" ] && { note "skip $name (deadline)"; return; }
    note "$name in $SHARDS shards (cap ${secs}s)"
    local pids=()
    for ((k = 0; k < SHARDS; k++)); do
        timeout --kill-after=10 "$secs" "$PY" -m tests.ops.test_tapa_triton "$@" --shard "$k/$SHARDS" \
            --json "$RES/$name.$k.json" >"$RES/$name.$k.log" 2>&1 &
        pids+=($!)
    done
    for k in "${pids[@]}"; do wait "$k"; done
    note "$name done"
    "$PY" -c "$MERGE" "$RES" "$name" "$SHARDS" | tee -a "$RES/summary.txt"
    pack
}

read -r -d '' MERGE <<'PYEOF'
import json, sys
from pathlib import Path
out, name, n = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
parts = [json.loads(p.read_text()) for k in range(n) if (p := out / f"{name}.{k}.json").exists()]
results = [r for part in parts for r in part["results"]]
merged = dict(parts[0], results=results) if parts else dict(results=[])
merged.update(shards=n, shards_reported=len(parts))
(out / f"{name}.json").write_text(json.dumps(merged, indent=1))
failed = [r["test"] for r in results if r["status"] != "passed"]
print(f"{name}: {len(results) - len(failed)} passed, {len(failed)} failed; {len(parts)}/{n} shards finished")
for t in failed:
    print("  failed", t)
PYEOF

: >"$RES/summary.txt"
{
    nvidia-smi || true
    "$PY" -c "import sys, torch, triton; print(sys.version); print('torch', torch.__version__, 'cuda', torch.version.cuda); print('triton', triton.__version__); print(torch.cuda.get_device_name(), torch.cuda.get_device_capability())"
    "$PY" -c "import pytest; print('pytest', pytest.__version__)" 2>/dev/null || echo "pytest absent"
} >"$RES/env.txt" 2>&1

sharded tests_gpu 150 30 --gpu-only
step numerics 60 20 "$PY" -m tests.ops.test_tapa_triton --numerics "$RES/numerics.json"
step bench 200 60 "$PY" tools/bench_attention.py --max-seconds 170 --json "$RES/bench.json"
step train_8k 110 60 "$PY" tools/gpu_train_compare.py --seq-len 8192 --json "$RES/train_8k.json"
step cost_model 150 60 bash -c '
    "$0" -c "import megatron.core" || { echo "megatron-core missing: skipped"; exit 3; }
    mkdir -p "$1/cost_model" && links=$("$0" -c "import torch; print(\"h200\" if \"H200\" in torch.cuda.get_device_name() else \"h100_sxm\")") &&
    "$0" tools/scaling_study.py calibrate --device cuda --dtype bf16 --processes 1 --links-from "$links" \
        --out "$1/cost_model/hardware_gpu.json" &&
    "$0" tools/scaling_study.py sweep --sweep configs/sweeps/gpu_validation.yaml --hardware "$1/cost_model/hardware_gpu.json" \
        --json "$1/cost_model/validation.json" --plots "$1/cost_model"' "$PY" "$RES"
step bench_cos 60 30 "$PY" tools/bench_attention.py --lengths 16384 --methods tapa_triton,tapa_triton_accurate_cos \
    --max-seconds 50 --json "$RES/bench_cos.json"
step sweep 100 45 "$PY" tools/bench_attention.py --sweep --lengths 16384 --max-seconds 85 --json "$RES/sweep.json"
step eval_125m 120 60 bash -c '
    "$0" -c "import megatron.core, transformers" || { echo "megatron-core or transformers missing: skipped"; exit 3; }
    run=$(mktemp -d) && trap "rm -rf $run" EXIT
    "$0" -m tapa_scale.train --config configs/125m.yaml run.dir="$run" data.seq_len=8192 train.steps=2 \
        train.micro_batch_size=1 train.global_batch_size=1 train.warmup_steps=1 train.eval_every=0 \
        train.checkpoint_every=0 run.tensorboard=false &&
    "$0" tools/eval_long_context.py --checkpoint "$run" --device cuda --dtype bf16 --tasks ppl,passkey,position \
        --lengths 8192,16384,32768 --depths 0.5 --trials 2 --max-tokens 200000 --position-windows 2 \
        --batch-size 1 --json "$1/eval_125m.json"' "$PY" "$RES"
step train_32k 90 60 "$PY" tools/gpu_train_compare.py --seq-len 32768 --steps 4 --json "$RES/train_32k.json"
step zero_overlap 60 40 bash -c '
    "$0" -c "import megatron.core" || { echo "megatron-core missing: skipped"; exit 3; }
    base=$(mktemp -d) && trap "rm -rf $base" EXIT
    for o in false true; do
        "$0" -m tapa_scale.train --config configs/tiny.yaml run.dir="$base/$o" train.steps=6 train.checkpoint_every=3 \
            run.tensorboard=false run.progress=false parallel.distributed_optimizer=true \
            parallel.overlap_grad_reduce=$o parallel.overlap_param_gather=$o || exit 1
    done
    "$0" - "$base" <<"PY"
import json, sys
from pathlib import Path
from tapa_scale.train.checkpoint import full_state_dict, latest_checkpoint
runs = [Path(sys.argv[1]) / o for o in ("false", "true")]
losses = [[json.loads(l)["loss"] for l in (r / "metrics.jsonl").read_text().splitlines()] for r in runs]
a, b = (full_state_dict(latest_checkpoint(r)) for r in runs)
diff = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
print(json.dumps({"losses_off": losses[0], "losses_on": losses[1], "max_weight_diff": diff}))
sys.exit(0 if losses[0] == losses[1] and diff == 0 else 1)
PY' "$PY"
sharded tests_all 200 45

{
    echo "--- elapsed $(($(date +%s) - START))s"
    [ -f "$RES/bench.log" ] && grep -h 'tapa_triton /' "$RES/bench.log"
    [ -f "$RES/sweep.log" ] && grep -h '^best' "$RES/sweep.log"
    for f in "$RES"/train_8k.log "$RES"/train_32k.log; do [ -f "$f" ] && grep -h '^train ' "$f"; done
} | tee -a "$RES/summary.txt"
pack
