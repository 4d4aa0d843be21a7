#!/usr/bin/env bash
# Train with torchrun, on one node or on several. Arguments go to `python -m tapa_scale.train`.
#
#   launch/torchrun.sh --config configs/tiny.yaml [key=value ...]          one node, NPROC_PER_NODE ranks
#   NNODES=4 MASTER_ADDR=node0 launch/torchrun.sh --config ...               the same line on every node
#
# Environment (all optional):
#   NPROC_PER_NODE  ranks per node (default: the GPUs nvidia-smi lists, else 1)
#   NNODES          nodes in the job (default 1)
#   MASTER_ADDR     rendezvous host, reachable from every node (multi-node: required; e.g. the first node)
#   MASTER_PORT     rendezvous port (default 29500; one node without it: a free port is picked)
#   RDZV_ID         job id the nodes share (default tapa; use the scheduler's job id)
#   RDZV_BACKEND    c10d (default: nodes may start in any order, node ranks are assigned at rendezvous)
#                   or static (then NODE_RANK=0..NNODES-1 must be set on each node)
#   TORCHRUN_ARGS   extra torchrun flags, e.g. "--max-restarts 3"
#   PREFLIGHT=0     skip the preflight that runs first on every rank with the same arguments
#                   (versions, GPUs, disk, data, collective bandwidth; docs/operations.md)
#   PREFLIGHT_ARGS  extra preflight flags, e.g. "--expect-busbw 300 --json preflight.json"
#   TAPA_DRY_RUN=1  print the command(s) instead of running them
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

gpus() { if command -v nvidia-smi >/dev/null 2>&1; then nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true; fi; }
nproc="${NPROC_PER_NODE:-$(gpus)}"
nproc="${nproc:-0}"; [ "$nproc" -gt 0 ] || nproc=1
nnodes="${NNODES:-1}"

# torchrun's flags for a rendezvous named $1 (preflight and training meet at separate ones)
launcher() {
  local id="$1" port
  out=(python -m torch.distributed.run --nproc-per-node "$nproc")
  if [ "$nnodes" -gt 1 ]; then
    : "${MASTER_ADDR:?multi-node runs need MASTER_ADDR (the rendezvous host, e.g. the first node)}"
    port="${MASTER_PORT:-29500}"
    if [ "${RDZV_BACKEND:-c10d}" = static ]; then
      : "${NODE_RANK:?RDZV_BACKEND=static needs NODE_RANK (0 .. NNODES-1) on each node}"
      out+=(--nnodes "$nnodes" --node-rank "$NODE_RANK" --master-addr "$MASTER_ADDR" --master-port "$port")
    else
      out+=(--nnodes "$nnodes" --rdzv-backend c10d --rdzv-endpoint "$MASTER_ADDR:$port" --rdzv-id "$id")
    fi
  elif [ -n "${MASTER_PORT:-}" ]; then
    out+=(--master-addr "${MASTER_ADDR:-127.0.0.1}" --master-port "$MASTER_PORT")
  else
    out+=(--standalone)  # a local rendezvous on a free port
  fi
}
launcher "${RDZV_ID:-tapa}"
cmd=("${out[@]}")
# shellcheck disable=SC2206  # TORCHRUN_ARGS is a list of flags on purpose
cmd+=(${TORCHRUN_ARGS:-} -m tapa_scale.train "$@")
pre=()
if [ "${PREFLIGHT:-1}" != 0 ]; then
  launcher "${RDZV_ID:-tapa}-preflight"
  # shellcheck disable=SC2206  # PREFLIGHT_ARGS is a list of flags on purpose
  pre=("${out[@]}" -m tapa_scale.preflight ${PREFLIGHT_ARGS:-} "$@")
fi

if [ -n "${TAPA_DRY_RUN:-}" ]; then
  if [ ${#pre[@]} -gt 0 ]; then echo "${pre[*]} && ${cmd[*]}"; else echo "${cmd[*]}"; fi
  exit 0
fi
source "$root/launch/setup_env.sh"
cd "$root"
# megatron's tensor-parallel layers rely on one CUDA work queue to order their overlapped all-reduce
# before the weight-gradient matmul (harmless on CPU)
export CUDA_DEVICE_MAX_CONNECTIONS="${CUDA_DEVICE_MAX_CONNECTIONS:-1}"
if [ ${#pre[@]} -gt 0 ]; then
  "${pre[@]}" || { echo "preflight failed (exit $?): not training; PREFLIGHT=0 skips it" >&2; exit 2; }
fi
exec "${cmd[@]}"
