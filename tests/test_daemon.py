"""Whole processes: `outreach run` and `outreach send --once` killed, stopped and restarted."""

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

import pytest

from outreach.mail.sink import LoopbackController
from tests.conftest import edit_config

ALWAYS_OPEN = {
    "window": "00:00-24:00",
    "days": "mon-sun",
    "holidays": "",
    "min_gap_seconds": 0,
    "max_gap_seconds": 0,
}


class HoldingHandler:
    """An SMTP server that holds every DATA command until the test lets it answer; like a
    real server, it keeps the message once it has the data, even if the client is gone."""

    def __init__(self) -> None:
        self.in_data = threading.Event()
        self.release = threading.Event()
        self.kept: list[bytes] = []

    async def handle_DATA(self, server, session, envelope) -> str:  # type: ignore[no-untyped-def] # noqa: N802
        import asyncio

        self.kept.append(envelope.original_content)  # the server has it from here on
        self.in_data.set()
        await asyncio.get_running_loop().run_in_executor(None, self.release.wait, 30)
        return "250 2.0.0 Ok: queued"


@pytest.fixture
def holding_server() -> Iterator[tuple[HoldingHandler, int]]:
    handler = HoldingHandler()
    controller = LoopbackController(handler, host="127.0.0.1", port=0)
    controller.start()
    try:
        yield handler, controller.port
    finally:
        handler.release.set()
        controller.stop()


def outreach(config: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "outreach", "--config", str(config), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
    )


def finish(process: subprocess.Popen[str], timeout: float = 60) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=timeout)
    return process.returncode, out, err


def prepared(workspace_dir: Path, port: int, **extra: object) -> Path:
    config = workspace_dir / "outreach.toml"
    edit_config(config, smtp_port=port, **{**ALWAYS_OPEN, **extra})
    lines = "email,first_name,company,language\nann@acme.example,Ann,Acme,en\n"
    (workspace_dir / "one.csv").write_text(lines, encoding="utf-8")
    code, _, err = finish(
        outreach(config, "enroll", str(workspace_dir / "one.csv"), "--sequence", "cold")
    )
    assert code == 0, err
    return config


def status(config: Path) -> dict:  # type: ignore[type-arg]
    code, out, err = finish(outreach(config, "status", "--json"))
    assert code == 0, err
    return json.loads(out)


# On PostgreSQL the restart waits out the dead process's lease: test_scale_out.py.
@pytest.mark.sqlite_only
def test_sigkill_mid_send_never_leads_to_a_second_copy(
    workspace_dir: Path, holding_server: tuple[HoldingHandler, int]
) -> None:
    handler, port = holding_server
    config = prepared(workspace_dir, port)
    sender = outreach(config, "send", "--once")
    assert handler.in_data.wait(30), "the send never reached DATA"
    sender.send_signal(signal.SIGKILL)  # dies between claim and answer
    sender.wait(30)
    handler.release.set()  # the server had the data: it delivers, the client never knew
    assert len(handler.kept) == 1
    # Restart: the message is held as unknown, not sent again.
    code, out, err = finish(outreach(config, "send", "--once"))
    assert code == 0, err
    assert "0 sent" in out and "1 message(s) in unknown state" in err
    report = status(config)
    [unknown] = report["unknown"]
    assert unknown["step"] == "intro"
    assert len(handler.kept) == 1
    # The operator looks in the Sent folder, finds it, and says so: the sequence goes on.
    code, out, err = finish(outreach(config, "resolve", str(unknown["id"]), "--sent"))
    assert code == 0 and ": sent" in out, err
    report = status(config)
    assert report["unknown"] == []
    cold = next(s for s in report["sequences"] if s["name"] == "cold")
    assert cold["steps"][0]["sent"] == 1 and cold["steps"][1]["waiting"] == 1


def test_sigterm_finishes_the_message_in_flight_and_exits_0(
    workspace_dir: Path, holding_server: tuple[HoldingHandler, int]
) -> None:
    handler, port = holding_server
    config = prepared(workspace_dir, port)
    edit_config(config, dispatch_seconds=1)
    daemon = outreach(config, "run")
    assert handler.in_data.wait(30), "the daemon never reached DATA"
    daemon.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    assert daemon.poll() is None  # still finishing the message in flight
    handler.release.set()
    code, _, err = finish(daemon, timeout=30)
    assert code == 0, err
    assert "stopped cleanly" in err
    cold = next(s for s in status(config)["sequences"] if s["name"] == "cold")
    assert cold["steps"][0]["sent"] == 1 and len(handler.kept) == 1


@pytest.mark.sqlite_only
def test_a_second_daemon_on_the_same_sqlite_file_is_refused(
    workspace_dir: Path, holding_server: tuple[HoldingHandler, int]
) -> None:
    handler, port = holding_server
    config = prepared(workspace_dir, port)
    edit_config(config, dispatch_seconds=1)
    first = outreach(config, "run")
    try:
        assert handler.in_data.wait(30)
        code, _, err = finish(outreach(config, "send", "--once"))
        assert code == 1
        assert "another outreach process" in err and "outreach.db.lock" in err
    finally:
        first.send_signal(signal.SIGTERM)
        handler.release.set()
        assert finish(first, timeout=30)[0] == 0


def test_the_daemon_serves_one_click_unsubscribe(
    workspace_dir: Path, holding_server: tuple[HoldingHandler, int]
) -> None:
    import socket
    import urllib.request

    from outreach.mail.unsubscribe import make_link

    handler, port = holding_server
    handler.release.set()  # the SMTP server answers at once here
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        web_port = probe.getsockname()[1]
    config = prepared(workspace_dir, port)
    edit_config(
        config,
        dispatch_seconds=1,
        enabled=True,
        port=web_port,
        unsubscribe_url=f"http://127.0.0.1:{web_port}/u".replace("http:", "https:"),
    )
    secret = "a-daemon-test-secret-long-enough"
    daemon = outreach(config, "run", env={"OUTREACH_SECRET": secret})
    try:
        base = f"http://127.0.0.1:{web_port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=2) as answer:
                    assert answer.status == 200
                    break
            except OSError:
                assert time.monotonic() < deadline, "the daemon never served /health"
                time.sleep(0.2)
        link = make_link(f"{base}/u", secret, "ann@acme.example")
        request = urllib.request.Request(link, data=b"List-Unsubscribe=One-Click", method="POST")
        with urllib.request.urlopen(request, timeout=10) as answer:
            assert answer.status == 200
    finally:
        daemon.send_signal(signal.SIGTERM)
        code, _, err = finish(daemon, timeout=30)
    assert code == 0, err
    cold = next(s for s in status(config)["sequences"] if s["name"] == "cold")
    assert cold["enrollments"]["unsubscribed"] == 1


def test_a_database_that_is_away_is_one_log_line_per_run(
    caplog: pytest.LogCaptureFixture,
) -> None:
    import asyncio
    import logging

    from sqlalchemy.exc import OperationalError

    from outreach.daemon import guarded

    async def job() -> None:
        raise OperationalError("SELECT 1", {}, Exception("server closed the connection"))

    with caplog.at_level(logging.ERROR, logger="outreach"):
        asyncio.run(guarded("dispatch", job)())
    [record] = caplog.records
    assert record.getMessage() == (
        "dispatch: the database is not answering (server closed the connection); "
        "trying again next run"
    )


def test_sighup_reads_the_config_again_in_the_same_process(
    workspace_dir: Path, holding_server: tuple[HoldingHandler, int]
) -> None:
    """`kill -HUP` lets the daemon finish, then start again (same pid) with the edited
    config: here a dispatch interval of 7 s instead of 1 s."""
    handler, port = holding_server
    handler.release.set()  # deliver at once
    config = prepared(workspace_dir, port)
    edit_config(config, dispatch_seconds=1)
    daemon = outreach(config, "run")
    lines: list[str] = []
    started = threading.Event()

    def read() -> None:
        assert daemon.stderr is not None
        for line in daemon.stderr:
            lines.append(line)
            if "outreach running" in line and "every 7s" in line:
                started.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    deadline = time.monotonic() + 30
    while not any("outreach running" in line for line in lines) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert any(f"kill -HUP {daemon.pid} reloads outreach.toml" in line for line in lines)
    edit_config(config, dispatch_seconds=7)
    daemon.send_signal(signal.SIGHUP)
    assert started.wait(30), "".join(lines)
    assert daemon.poll() is None  # the same process, running again
    daemon.send_signal(signal.SIGTERM)
    assert daemon.wait(30) == 0
    reader.join(5)
    assert sum("stopped cleanly" in line for line in lines) == 2


class Timestamps:
    """An SMTP server that notes when each message arrives."""

    def __init__(self) -> None:
        self.at: list[float] = []

    async def handle_DATA(self, server, session, envelope) -> str:  # type: ignore[no-untyped-def] # noqa: N802
        self.at.append(time.monotonic())
        return "250 2.0.0 Ok: queued"


@pytest.mark.sqlite_only
def test_the_daemon_sends_at_the_gap_not_at_the_dispatch_interval(workspace_dir: Path) -> None:
    """Gaps of 2 s and a dispatch interval of an hour: a mailbox sends about one message per
    2 s (before, one per interval)."""
    handler = Timestamps()
    controller = LoopbackController(handler, host="127.0.0.1", port=0)
    controller.start()
    try:
        config = workspace_dir / "outreach.toml"
        edit_config(
            config,
            smtp_port=controller.port,
            **{**ALWAYS_OPEN, "min_gap_seconds": 2, "max_gap_seconds": 2},
            dispatch_seconds=3600,
        )
        rows = "".join(f"p{i}@acme{i}.example,P{i},Acme,en\n" for i in range(5))
        path = workspace_dir / "five.csv"
        path.write_text("email,first_name,company,language\n" + rows, encoding="utf-8")
        code, _, err = finish(outreach(config, "enroll", str(path), "--sequence", "cold"))
        assert code == 0, err
        daemon = outreach(config, "run")
        deadline = time.monotonic() + 120
        while len(handler.at) < 5 and time.monotonic() < deadline and daemon.poll() is None:
            time.sleep(0.2)
        daemon.send_signal(signal.SIGTERM)
        code, _, err = finish(daemon, timeout=60)
    finally:
        controller.stop()
    assert code == 0, err
    assert len(handler.at) == 5, err
    gaps = [b - a for a, b in zip(handler.at, handler.at[1:], strict=False)]
    # The gap is kept between claims; an arrival at the server can lag its claim (the first
    # one opens the connection), so the pace is judged over the whole run.
    assert handler.at[-1] - handler.at[0] >= 4 * 2 - 1, gaps  # never faster than the gap
    assert sum(gaps) / len(gaps) < 6, gaps  # and about at it (loaded machines are slower)
