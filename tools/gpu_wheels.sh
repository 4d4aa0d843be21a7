#!/usr/bin/env bash
# Download, for a GPU machine's Python, the wheels of packages its image lacks, at the versions of our
# Python 3.12 lock, so that `tools/gpu_checks.sh --wheels DIR` can install them there without an index.
#
#   bash tools/gpu_wheels.sh DIR megatron-core mosaicml-streaming transformers   # the named packages
#   bash tools/gpu_wheels.sh DIR --all          # every package of the lock but torch, triton and nvidia-*
#
# Wheels only (--only-binary), without their dependencies (--no-deps: name each one needed); a package
# with no wheel for the platform stops with pip's message. PYTHON_VERSION (default 3.12) picks the target.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dir="${1:?usage: gpu_wheels.sh DIR (PACKAGE... | --all)}"
shift
lock="$root/launch/requirements-py312.lock"
if [ "${1:-}" = --all ]; then
  mapfile -t pins < <(python3 "$root/docker/filter_lock.py" "$lock")
else
  pins=()
  for name in "$@"; do
    pin="$(grep -i -E "^${name//-/[-_.]}==" "$lock" || true)"
    [ -n "$pin" ] || { echo "$name: not in $lock; expected a package of the lock" >&2; exit 2; }
    pins+=("$pin")
  done
fi
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 \
         manylinux2014_x86_64 manylinux1_x86_64; do platforms+=(--platform "$p"); done
python3 -m pip download --no-deps --only-binary=:all: --python-version "${PYTHON_VERSION:-3.12}" \
  --implementation cp "${platforms[@]}" -d "$dir" "${pins[@]}"
