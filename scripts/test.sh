#!/usr/bin/env bash
# Install everything the tests need on a fresh machine (Python 3.11+), then run the checks
# and the tests. Extra arguments go to pytest, e.g. `bash scripts/test.sh -k planner`.
set -euo pipefail
cd "$(dirname "$0")/.."

python3 -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[test]'

.venv/bin/ruff check outreach tests bench
.venv/bin/mypy
.venv/bin/python -m pytest -q "$@"
