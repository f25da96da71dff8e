#!/usr/bin/env bash
# The test command of the README and of CI: set up, lint, type-check, run the suite.
# Extra arguments go to pytest (e.g. `scripts/test.sh -k dc09`, `scripts/test.sh -m slow`).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh test
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
# Known vulnerabilities in the pinned dependencies (needs PyPI's JSON API; offline it warns).
audit_json="$(mktemp)"
if .venv/bin/pip-audit -r constraints.txt --no-deps --disable-pip --progress-spinner off \
    --timeout 15 -f json -o "$audit_json" 2>/dev/null; then
    audit_rc=0
else
    audit_rc=$?
fi
.venv/bin/python - "$audit_json" "$audit_rc" <<'PY'
import json, sys
path, rc = sys.argv[1], int(sys.argv[2])
try:
    deps = json.load(open(path))["dependencies"]
except (OSError, ValueError, KeyError):
    deps = []
audited = [d for d in deps if "skip_reason" not in d]
vulns = [(d["name"], d["version"], v["id"]) for d in audited for v in d.get("vulns", [])]
if vulns:
    for name, version, vid in vulns:
        print(f"pip-audit: {name} {version}: {vid}", file=sys.stderr)
    sys.exit(1)
if not audited:
    print("WARNING: pip-audit could not reach the vulnerability service (PyPI); the pinned "
          "dependencies in constraints.txt were NOT audited. Run `bash scripts/test.sh` with "
          "network access to audit them.", file=sys.stderr)
else:
    print(f"pip-audit: {len(audited)} pinned packages, no known vulnerabilities"
          + (f" ({len(deps) - len(audited)} not audited)" if len(deps) > len(audited) else ""))
PY
rm -f "$audit_json"
.venv/bin/python -m pytest "$@"
