#!/usr/bin/env bash
# Train with the deepspeed launcher (ssh/pdsh to the hosts of a hostfile). Arguments go to
# `python -m tapa_scale.train`, which reads RANK / LOCAL_RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT
# from the environment the launcher sets for every process.
#
#   HOSTFILE=hostfile launch/deepspeed.sh --config configs/125m.yaml parallel.tp=2
#
# hostfile: one line per node, "<hostname> slots=<GPUs>" (deepspeed's format); every node needs the same
# repository path and .venv (shared filesystem) and passwordless ssh from the first node.
# Environment (all optional):
#   HOSTFILE      the hostfile (default: none = this node only)
#   NUM_NODES     use the first N hosts of the hostfile      NUM_GPUS   ranks per node
#   INCLUDE       deepspeed --include filter, e.g. "worker-0:0,1@worker-1"
#   MASTER_ADDR   rendezvous host (default: deepspeed picks the first host)   MASTER_PORT (default 29500)
#   DEEPSPEED_ARGS  extra launcher flags, e.g. "--launcher slurm"
#   TAPA_DRY_RUN=1  print the command instead of running it
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

cmd=(deepspeed)
[ -z "${HOSTFILE:-}" ] || cmd+=(--hostfile "$HOSTFILE")
[ -z "${NUM_NODES:-}" ] || cmd+=(--num_nodes "$NUM_NODES")
[ -z "${NUM_GPUS:-}" ] || cmd+=(--num_gpus "$NUM_GPUS")
[ -z "${INCLUDE:-}" ] || cmd+=(--include "$INCLUDE")
[ -z "${MASTER_ADDR:-}" ] || cmd+=(--master_addr "$MASTER_ADDR")
cmd+=(--master_port "${MASTER_PORT:-29500}")
# --no_local_rank: our CLI takes no --local_rank argument; LOCAL_RANK is in the environment instead
# shellcheck disable=SC2206  # DEEPSPEED_ARGS is a list of flags on purpose
cmd+=(${DEEPSPEED_ARGS:-} --no_local_rank --module tapa_scale.train "$@")

if [ -n "${TAPA_DRY_RUN:-}" ]; then
  echo "${cmd[*]}"
  exit 0
fi
source "$root/launch/setup_env.sh"
cd "$root"
# see torchrun.sh; on other nodes deepspeed forwards only the variables listed in ~/.deepspeed_env
export CUDA_DEVICE_MAX_CONNECTIONS="${CUDA_DEVICE_MAX_CONNECTIONS:-1}"
exec "${cmd[@]}"
