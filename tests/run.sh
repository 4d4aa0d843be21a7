#!/usr/bin/env bash
# The whole test suite: sets up .venv if needed, then runs pytest. Extra arguments go to pytest.
# Two pytest workers by default (TAPA_TEST_WORKERS=N to change, 0 for none): many tests wait on
# subprocesses starting up or on each other, so two share the 2-core machine well. A file's tests stay
# on one worker (--dist loadfile), so module fixtures are built once.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$root/launch/setup_env.sh"
cd "$root"
workers="${TAPA_TEST_WORKERS:-2}"
if [ "$workers" = "0" ]; then
  exec python -m pytest -q "$@" tests
fi
exec python -m pytest -q -n "$workers" --dist loadfile "$@" tests
