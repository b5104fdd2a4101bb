#!/usr/bin/env bash
# Install mome and the verified stack into .venv (created if missing), then run the tests.
# Usage: scripts/test.sh [pytest arguments], from any directory. Fails if pytest collects no tests.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [[ ! -x .venv/bin/python ]]; then
    python3 -m venv .venv
fi
.venv/bin/python -m pip install --quiet -c requirements/constraints.txt -e ".[test]"

status=0
.venv/bin/python -m pytest "$@" || status=$?
if [[ $status -eq 5 ]]; then
    echo "scripts/test.sh: pytest collected no tests (exit 5); failing." >&2
    exit 1
fi
exit "$status"
