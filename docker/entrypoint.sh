#!/usr/bin/env bash
# Entrypoint of the tapa_scale image (docker/Dockerfile):
#   train ARGS...      preflight, then training, through launch/torchrun.sh (NNODES, MASTER_ADDR, ... as
#                      there; under Slurm, launch/slurm.sbatch sets them)
#   preflight ARGS...  the checks alone on this node's ranks (NPROC_PER_NODE, default: its GPUs, else 1)
#   anything else      run as a command (e.g. python tools/eval_long_context.py ..., bash)
# TAPA_ROOT: where the code is (default /opt/tapa_scale, where the image puts it).
set -euo pipefail
root="${TAPA_ROOT:-/opt/tapa_scale}"
cd "$root"
case "${1:-}" in
  train)
    shift
    exec bash "$root/launch/torchrun.sh" "$@" ;;
  preflight)
    shift
    gpus="$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)"
    nproc="${NPROC_PER_NODE:-${gpus:-0}}"; [ "$nproc" -gt 0 ] || nproc=1
    exec python -m torch.distributed.run --nproc-per-node "$nproc" --standalone -m tapa_scale.preflight "$@" ;;
  "")
    echo "usage: train ARGS... | preflight ARGS... | COMMAND..." >&2
    exit 2 ;;
  *)
    exec "$@" ;;
esac
