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
#   PREFLIGHT=0     skip the preflight that runs first on every rank with the same arguments
#   PREFLIGHT_ARGS  extra preflight flags (see launch/torchrun.sh)
#   TAPA_DRY_RUN=1  print the command(s) instead of running them
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
cmd+=(${DEEPSPEED_ARGS:-} --no_local_rank)
pre=()
if [ "${PREFLIGHT:-1}" != 0 ]; then
  # shellcheck disable=SC2206  # PREFLIGHT_ARGS is a list of flags on purpose
  pre=("${cmd[@]}" --module tapa_scale.preflight ${PREFLIGHT_ARGS:-} "$@")
fi
cmd+=(--module tapa_scale.train "$@")

if [ -n "${TAPA_DRY_RUN:-}" ]; then
  if [ ${#pre[@]} -gt 0 ]; then echo "${pre[*]} && ${cmd[*]}"; else echo "${cmd[*]}"; fi
  exit 0
fi
source "$root/launch/setup_env.sh"
cd "$root"
# see torchrun.sh; on other nodes deepspeed forwards only the variables listed in ~/.deepspeed_env
export CUDA_DEVICE_MAX_CONNECTIONS="${CUDA_DEVICE_MAX_CONNECTIONS:-1}"
if [ ${#pre[@]} -gt 0 ]; then
  "${pre[@]}" || { echo "preflight failed (exit $?): not training; PREFLIGHT=0 skips it" >&2; exit 2; }
fi
exec "${cmd[@]}"
