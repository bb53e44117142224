#!/usr/bin/env bash
# The quick start: install outreach into .venv, write a demo workspace, enroll the sample
# prospects into the cold sequence and show what will be sent and when.
# Usage: bash scripts/demo.sh [DIR]   (default: ./demo; an existing demo is started afresh)
set -euo pipefail
cd "$(dirname "$0")/.."
dir="${1:-demo}"

python3 -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check .
outreach="$PWD/.venv/bin/outreach"

rm -rf "$dir"
"$outreach" init "$dir"
cd "$dir"
"$outreach" validate
"$outreach" enroll prospects.csv --sequence cold
"$outreach" status
"$outreach" schedule
"$outreach" preview aino.korhonen@rakennus.example
