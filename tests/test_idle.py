"""`outreach run` waits in IMAP IDLE: a reply is applied within seconds, not at the next poll."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.conftest import edit_config, point_at_servers
from tests.smtp_servers import RecordingSMTP
from tests.test_replies import reply_to

if TYPE_CHECKING:
    from dovecot import Dovecot

pytest_plugins = ["dovecot"]
pytestmark = pytest.mark.timeout(90)


class Daemon:
    """`outreach run` in a subprocess, its log lines collected as they come."""

    def __init__(self, config: Path, env: dict[str, str]) -> None:
        self.lines: list[str] = []
        self.process = subprocess.Popen(
            [sys.executable, "-m", "outreach", "--config", str(config), "run"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **env},
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(line)

    def wait_for(self, text: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not any(text in line for line in self.lines):
            assert self.process.poll() is None, "".join(self.lines)
            assert time.monotonic() < deadline, f"no '{text}' in:\n" + "".join(self.lines)
            time.sleep(0.1)

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(30)
        self._reader.join(5)
        return code


@pytest.fixture
def smtp() -> Iterator[RecordingSMTP]:
    with RecordingSMTP() as server:
        yield server


def status(config: Path) -> dict:  # type: ignore[type-arg]
    out = subprocess.run(
        [sys.executable, "-m", "outreach", "--config", str(config), "status", "--json"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return json.loads(out)


@pytest.mark.parametrize("idle", [True, False], ids=["idle", "interval-only"])
def test_a_reply_is_read_within_seconds_while_the_daemon_idles(
    workspace_dir: Path, smtp: RecordingSMTP, dovecot_server: Dovecot, idle: bool
) -> None:
    rep = dovecot_server.new_user()
    config = workspace_dir / "outreach.toml"
    point_at_servers(config, smtp.port, dovecot_server.host, dovecot_server.port, rep)
    # The interval poll is an hour away: only IDLE can bring the reply in during the test.
    edit_config(
        config,
        window="00:00-24:00",
        days="mon-sun",
        holidays="",
        dispatch_seconds=1,
        poll_seconds=3600,
        idle=idle,
    )
    (workspace_dir / "one.csv").write_text(
        "email,first_name,company,language\nann@acme.example,Ann,Acme,en\n", encoding="utf-8"
    )
    enrolled = subprocess.run(
        [sys.executable, "-m", "outreach", "--config", str(config), "enroll"]
        + [str(workspace_dir / "one.csv"), "--sequence", "cold"],
        capture_output=True,
        text=True,
    )
    assert enrolled.returncode == 0, enrolled.stderr
    daemon = Daemon(config, {"OUTREACH_TEST_IMAP": dovecot_server.password})
    try:
        daemon.wait_for("sent ")  # the intro left
        if idle:
            daemon.wait_for("(IMAP IDLE)")
        [intro] = smtp.received
        time.sleep(0.5)  # the first poll (at start) has read the empty INBOX by now
        dovecot_server.append(rep, "INBOX", reply_to(intro.message, "Sounds good, call me."))
        if idle:
            daemon.wait_for("reply from ann@acme.example", timeout=15)
        else:
            time.sleep(5)
    finally:
        code = daemon.stop()
    assert code == 0, "".join(daemon.lines)
    cold = next(s for s in status(config)["sequences"] if s["name"] == "cold")
    assert cold["enrollments"].get("replied", 0) == (1 if idle else 0)
    assert "Traceback" not in "".join(daemon.lines)
