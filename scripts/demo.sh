#!/usr/bin/env bash
# The quick start: install outreach into .venv, write a demo workspace, enroll the sample
# prospects into the cold sequence, and send their first emails for real, over SMTP, into a
# local mail sink (no mailbox of your own needed). Then show what left and what comes next.
# Usage: bash scripts/demo.sh [DIR]   (default: ./demo; an existing demo is started afresh)
set -euo pipefail
cd "$(dirname "$0")/.."
dir="${1:-demo}"

python3 -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check .
outreach="$PWD/.venv/bin/outreach"

rm -rf "$dir"
"$outreach" init --demo "$dir"
cd "$dir"
"$outreach" validate
"$outreach" enroll prospects.csv --sequence cold

# The local mail sink: a real SMTP server on 127.0.0.1:8025 keeping every message in sink/.
"$outreach" sink --dir sink --port 8025 &
sink_pid=$!
trap 'kill "$sink_pid" 2>/dev/null || true' EXIT
for _ in $(seq 100); do (echo >/dev/tcp/127.0.0.1/8025) 2>/dev/null && break; sleep 0.1; done

"$outreach" send --once
echo
echo "== what the sink received (full messages are files in $dir/sink/new/)"
"$outreach" sink --show --dir sink
"$outreach" status
"$outreach" schedule --date tomorrow
