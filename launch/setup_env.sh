#!/usr/bin/env bash
# Creates .venv in the repository root and installs tapa_scale with everything it needs.
# Sourced by launch/quickstart.sh and tests/run.sh; does nothing slow when .venv is already complete.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"
stamp="$venv/.tapa_scale_installed"
# The stamp records what was installed; a changed pyproject.toml, lock file or this script reinstalls.
lock="$root/launch/requirements-py311.lock"
want="$(cat "$root/pyproject.toml" "$root/launch/setup_env.sh" "$lock" | sha256sum | cut -d' ' -f1)"

if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "[setup] installing into $venv (first run takes a few minutes)"
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
  "$venv/bin/python" -m pip install -q --upgrade pip
  py_minor="$("$venv/bin/python" -c 'import sys; print(sys.version_info[1])')"
  if [ "$py_minor" -eq 11 ]; then
    # The exact set the suite is tested with; resolving the open ranges of pyproject.toml from
    # scratch makes pip backtrack for many minutes.
    "$venv/bin/python" -m pip install -q -r "$lock"
    "$venv/bin/python" -m pip install -q --no-deps -e "$root"
  else
    # torch and torchvision are named together in one command: mosaicml-streaming imports torchvision,
    # and a torchvision built for another torch fails at import. megatron-core 0.17+ needs Python >= 3.12.
    if [ "$py_minor" -lt 12 ]; then mcore="megatron-core==0.16.*"; else mcore="megatron-core>=0.16"; fi
    "$venv/bin/python" -m pip install -q torch==2.14.1 torchvision==0.29.1 "$mcore" -e "$root[test]"
  fi
  echo "$want" > "$stamp"
fi
export PATH="$venv/bin:$PATH"
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
