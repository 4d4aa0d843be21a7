#!/usr/bin/env bash
# Creates .venv in the repository root and installs tapa_scale with everything it needs.
# Sourced by launch/quickstart.sh and tests/run.sh; does nothing slow when .venv is already complete.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ -n "${TAPA_SYSTEM_PYTHON:-}" ]; then  # an image that installed everything already (docker/Dockerfile)
  export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
  return 0 2>/dev/null || exit 0
fi
venv="$root/.venv"
stamp="$venv/.tapa_scale_installed"
py="$venv/bin/python"
[ -x "$py" ] || py=python3  # the venv is made from this interpreter below, so its minor version is the same
py_minor="$("$py" -c 'import sys; print(sys.version_info[1])')"
# The exact set the suite is tested with, per Python minor version (3.11, 3.12); resolving the open
# ranges of pyproject.toml from scratch makes pip backtrack for many minutes.
lock="$root/launch/requirements-py3${py_minor}.lock"
# The stamp records what was installed; a changed pyproject.toml, lock file or this script reinstalls.
want="$(cat "$root/pyproject.toml" "$root/launch/setup_env.sh" "$([ -f "$lock" ] && echo "$lock" || echo /dev/null)" \
  | sha256sum | cut -d' ' -f1)"

if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "[setup] installing into $venv (first run takes a few minutes)"
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
  "$venv/bin/python" -m pip install -q --upgrade pip
  if [ -f "$lock" ]; then
    "$venv/bin/python" -m pip install -q -r "$lock"
    "$venv/bin/python" -m pip install -q --no-deps -e "$root"
  else
    # No lock for this Python: torch and torchvision are named together in one command (mosaicml-streaming
    # imports torchvision, and a torchvision built for another torch fails at import); megatron-core is
    # the version parallel/cpu_compat.py was tested with (it refuses others on CPU).
    "$venv/bin/python" -m pip install -q torch==2.14.1 torchvision==0.29.1 megatron-core==0.16.1 -e "$root[test]"
  fi
  echo "$want" > "$stamp"
fi
export PATH="$venv/bin:$PATH"
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
