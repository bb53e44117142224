#!/usr/bin/env bash
# Install everything the tests need on a fresh machine (Python 3.11+, Debian/Ubuntu), then
# run the checks and the tests. Extra arguments go to pytest, e.g. `bash scripts/test.sh -k planner`.
set -euo pipefail
cd "$(dirname "$0")/.."

# Dovecot (the real IMAP server of the Sent-folder and reply tests), PostgreSQL (the store
# and dispatch tests run on SQLite and on a throwaway PostgreSQL cluster) and Chromium (the
# A/B HTML report is rendered in a real headless browser): Debian/Ubuntu packages.
missing=()
command -v dovecot >/dev/null 2>&1 || [ -x /usr/sbin/dovecot ] || missing+=(dovecot-imapd)
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || missing+=(postgresql)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
if [ ${#missing[@]} -gt 0 ]; then
    sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi

python3 -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[test]'

.venv/bin/ruff check outreach tests bench
.venv/bin/mypy
# In parallel (one worker per core, at most 4; each worker starts its own Dovecot and
# PostgreSQL on free ports): `-n 0` among the arguments runs it in one process.
.venv/bin/python -m pytest -q -n auto --maxprocesses 4 "$@"
