#!/usr/bin/env bash
# The test command of the README and of CI: set up, lint, type-check, run the suite.
# Extra arguments go to pytest (e.g. `scripts/test.sh -k dc09`, `scripts/test.sh -m slow`).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh test
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
.venv/bin/python -m pytest "$@"
