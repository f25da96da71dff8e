#!/usr/bin/env bash
# The demo command of the README: set up, then run a whole campus and centre on this machine.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/campusguard demo "$@"
