"""The daemon's log as journald gets it: `outreach run` as a whole process, a real SMTP server
and a real Dovecot holding a Postfix bounce; one line per event, naming the mailbox and the
prospect, with a syslog priority and no timestamp, and no flufl.bounce detector chatter."""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.conftest import edit_config, point_at_servers
from tests.smtp_servers import RecordingSMTP

if TYPE_CHECKING:
    from dovecot import Dovecot

pytest_plugins = ["dovecot"]
pytestmark = [pytest.mark.timeout(240), pytest.mark.sqlite_only]

MAIL = Path(__file__).parent / "mail"
SANNA = "sanna.lehto@northwind.example"
ALWAYS_OPEN = {"window": "00:00-24:00", "days": "mon-sun", "holidays": ""}


def test_daemon_log_is_one_line_per_event_for_journald(
    workspace_dir: Path, dovecot_server: Dovecot
) -> None:
    config = workspace_dir / "outreach.toml"
    user = dovecot_server.new_user()
    bounce = (MAIL / "postfix_user_unknown.eml").read_bytes()
    with RecordingSMTP() as smtp:
        point_at_servers(config, smtp.port, dovecot_server.host, dovecot_server.port, user)
        edit_config(config, **ALWAYS_OPEN, idle=False, poll_seconds=10)
        (workspace_dir / "list.csv").write_text(
            "email,first_name\nann@acme.example,Ann\npekka.nieminen@asiakas.fi,Pekka\n"
        )
        env = {
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            "OUTREACH_TEST_IMAP": dovecot_server.password,
            "JOURNAL_STREAM": "8:12345",  # what systemd sets when stderr goes to the journal
        }
        base = [sys.executable, "-m", "outreach", "--config", str(config)]
        enroll = [*base, "enroll", str(workspace_dir / "list.csv"), "--sequence", "cold"]
        subprocess.run(enroll, check=True, env=env, capture_output=True, timeout=60)
        daemon = subprocess.Popen(
            [*base, "run"], env=env, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        try:
            deadline = time.monotonic() + 120
            while len(smtp.received) < 2 and time.monotonic() < deadline:
                time.sleep(0.2)
            # The bounce comes back once Pekka's message has left (one that came before any
            # message to him would be nobody's bounce); the next poll reads it.
            returned = bounce.replace(b"sanna@northwind.example", SANNA.encode())
            dovecot_server.append(user, "INBOX", returned)
            database = workspace_dir / "outreach.db"
            while time.monotonic() < deadline:
                with sqlite3.connect(database) as db:
                    if db.execute("SELECT 1 FROM events WHERE kind = 'bounce'").fetchone():
                        break
                time.sleep(0.2)
            time.sleep(0.5)  # its log line follows the commit
        finally:
            daemon.send_signal(signal.SIGTERM)
            _, err = daemon.communicate(timeout=60)
    assert daemon.returncode == 0, err
    lines = err.splitlines()
    assert len(smtp.received) == 2, err
    # Every line: <priority>LEVEL message, no timestamp (journald stamps it).
    for line in lines:
        assert re.match(r"<[3-7]>(INFO|WARNING|ERROR) \S", line), line
        assert not re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", line), line
    sent = [line for line in lines if " sent cold/intro to " in line]
    assert len(sent) == 2, err
    for line in sent:  # the mailbox and the prospect, in one line
        assert line.startswith(f"<6>INFO {SANNA}: sent cold/intro to "), line
    assert any("ann@acme.example" in line for line in sent)
    # The poll read the bounce: one line, the mailbox and the prospect...
    assert (
        f"<6>INFO {SANNA}: hard bounce: the address is invalid for pekka.nieminen@asiakas.fi"
        in lines
    ), err
    assert not any("Running detector" in line for line in lines)  # ...without the chatter
    assert lines[-1] == "<6>INFO stopped cleanly"
