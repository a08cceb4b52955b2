#!/usr/bin/env bash
# The whole test suite: lint, types, tests. Installs what it needs into .venv first.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
# Exact versions with hashes (scripts/lock.sh writes them), then the project itself.
.venv/bin/python -m pip install --quiet --require-hashes -r requirements/dev.txt
.venv/bin/python -m pip install --quiet --no-deps -e .

echo "== ruff"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
echo "== mypy"
.venv/bin/mypy
echo "== import layers"
.venv/bin/lint-imports
echo "== pytest"
# Two processes (pytest-xdist), each taking whole test files: most tests wait on servers, CLIs
# and browsers they start, so one process kept about one core busy; two cut the suite from about
# 17 to about 11 minutes on 2 cores. TEST_PROCESSES=0 runs it in this process alone.
.venv/bin/python -m pytest -n "${TEST_PROCESSES:-2}" --dist loadfile "$@"
