"""Three `outreach run` daemons, one PostgreSQL database, one SMTP sink: each message once.

Real processes, real PostgreSQL (``tests/postgres.py``), a real aiosmtpd sink in this process
that records every message it accepts. Limits per mailbox are set below the backlog so that
holding them is visible; gaps are lifted and the lease is short so that the test is quick.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from email.parser import BytesHeaderParser
from pathlib import Path
from typing import IO, Any

import pytest
from sqlalchemy import create_engine, text

from outreach import clock
from outreach.enroll import enroll_csv
from outreach.mail.sink import LoopbackController
from outreach.workspace import Workspace
from tests.conftest import edit_config

pytestmark = pytest.mark.timeout(300)

MAILBOXES = 6
PER_MAILBOX = 500  # 3,000 prospects
DAILY_LIMIT = 480  # 20 per mailbox wait for tomorrow
WATCHED = "box3@northwind.example"  # its limit is its whole list: everything must leave
HELD_AFTER = 5  # the sink holds the 5th message of the watched mailbox: its daemon is mid-batch


class Recorder:
    """An SMTP sink that keeps every accepted message's envelope and Message-ID; it can hold
    one mailbox's DATA so that the daemon serving it is caught mid-batch."""

    def __init__(self, watched: str) -> None:
        self.lock = threading.Lock()
        self.kept: list[tuple[str, str, str]] = []  # (mail from, rcpt, Message-ID)
        self.watched = watched
        self.holding = threading.Event()
        self.release = threading.Event()

    async def handle_DATA(self, server, session, envelope) -> str:  # type: ignore[no-untyped-def] # noqa: N802
        headers = BytesHeaderParser().parsebytes(envelope.original_content)
        with self.lock:
            for rcpt in envelope.rcpt_tos:
                self.kept.append((envelope.mail_from, rcpt, str(headers["Message-ID"])))
            seen = sum(1 for k in self.kept if k[0] == self.watched)
        if envelope.mail_from == self.watched and seen == HELD_AFTER:
            # The server has the message; its client will never hear the answer.
            self.holding.set()
            await asyncio.get_running_loop().run_in_executor(None, self.release.wait, 60)
        return "250 2.0.0 Ok: queued"


@pytest.fixture
def recorder() -> Iterator[tuple[Recorder, int]]:
    handler = Recorder(watched=WATCHED)
    controller = LoopbackController(handler, host="127.0.0.1", port=0)
    controller.start()
    try:
        yield handler, controller.port
    finally:
        handler.release.set()
        controller.stop()


def cluster_workspace(directory: Path, url: str, smtp_port: int) -> Path:
    """The starter with six mailboxes on the sink, always open, no gaps, short leases."""
    config = directory / "outreach.toml"
    edit_config(
        config,
        url=url,
        smtp_port=smtp_port,
        window="00:00-24:00",
        days="mon-sun",
        holidays="",
        min_gap_seconds=0,
        max_gap_seconds=0,
        daily_limit=DAILY_LIMIT,
        dispatch_seconds=1,
        claim_lease_seconds=5,
    )
    extra = "".join(
        f'\n[[mailboxes]]\nname = "Box {n}"\nemail = "box{n}@northwind.example"\n'
        f'smtp_host = "127.0.0.1"\nsmtp_port = {smtp_port}\nsmtp_security = "none"\n'
        + (f"daily_limit = {PER_MAILBOX}\n" if f"box{n}@" in WATCHED else "")
        for n in range(1, MAILBOXES)
    )
    config.write_text(config.read_text(encoding="utf-8") + extra, encoding="utf-8")
    return config


def enroll_everyone(config: Path, tmp_path: Path) -> list[str]:
    ws = Workspace.load(config)
    senders = [box.email for box in ws.config.mailboxes]
    for n, sender in enumerate(senders):
        path = tmp_path / f"list{n}.csv"
        rows = "".join(f"p{n}x{i}@c{n}x{i}.example,P{i},Co {i},en\n" for i in range(PER_MAILBOX))
        path.write_text("email,first_name,company,language\n" + rows, encoding="utf-8")
        result = enroll_csv(ws, path, "cold", now=clock.now(), sender=sender, rng=random.Random(n))
        assert result.applied and result.enrolled == PER_MAILBOX
    ws.close()
    return senders


class Daemon:
    """``outreach run`` as a child process, its log in a file (thousands of lines)."""

    def __init__(self, config: Path, log: Path) -> None:
        self.log_path = log
        self._log: IO[str] = log.open("w", encoding="utf-8")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "outreach", "--config", str(config), "run"],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        code = self.process.wait(60)
        self._log.close()
        return code

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")


def query(url: str, sql: str, **params: Any) -> list[Any]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return list(conn.execute(text(sql), params))
    finally:
        engine.dispose()


def wait_for(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def test_three_daemons_send_each_message_once_and_take_over_from_a_killed_one(
    workspace_dir: Path, tmp_path: Path, postgres_url: str, recorder: tuple[Recorder, int]
) -> None:
    sink, port = recorder
    config = cluster_workspace(workspace_dir, postgres_url, port)
    senders = enroll_everyone(config, tmp_path)
    daemons = [Daemon(config, tmp_path / f"daemon{n}.log") for n in range(3)]
    try:
        # The daemon serving box3 is caught in DATA, its batch's other claims waiting.
        assert sink.holding.wait(120), "box3's fifth message never arrived"
        [(owner,)] = query(
            postgres_url, "SELECT owner FROM mailbox_states WHERE email = :e", e=sink.watched
        )
        [(pid,)] = query(postgres_url, "SELECT pid FROM daemons WHERE id = :id", id=owner)
        victim = next(d for d in daemons if d.process.pid == pid)
        victim.process.send_signal(signal.SIGSTOP)  # frozen: what it holds stands still
        held = query(
            postgres_url,
            "SELECT state, message_id, sender FROM messages WHERE lease_owner = :o AND state IN "
            "('claimed', 'sending')",
            o=owner,
        )
        claimed = {mid: box for state, mid, box in held if state == "claimed"}
        sending = {mid for state, mid, _ in held if state == "sending"}
        assert WATCHED in claimed.values() and sending, held
        victim.stop(signal.SIGKILL)
        sink.release.set()  # the server keeps the message; the dead client never knew

        total = (MAILBOXES - 1) * DAILY_LIMIT + PER_MAILBOX

        def settled() -> bool:
            [(done, open_)] = query(
                postgres_url,
                "SELECT count(*) FILTER (WHERE state IN ('sent', 'unknown')), "
                "count(*) FILTER (WHERE state IN ('claimed', 'sending')) FROM messages",
            )
            return bool(done == total and open_ == 0)

        try:
            wait_for(settled, 200, "every message within the limits to be sent or unknown")
        except AssertionError:
            states = query(
                postgres_url, "SELECT state, sender, count(*) FROM messages GROUP BY 1, 2"
            )
            raise AssertionError(
                f"{states}\n" + "\n".join(d.log()[-2000:] for d in daemons)
            ) from None
        # `outreach status` shows who is alive and what each holds.
        shown = subprocess.run(
            [sys.executable, "-m", "outreach", "--config", str(config), "status", "--json"],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        report = json.loads(shown.stdout)
        alive = {d["pid"] for d in report["daemons"] if d["alive"]}
        assert alive == {d.process.pid for d in daemons if d is not victim}
        assert [d["alive"] for d in report["daemons"] if d["pid"] == pid] == [False]
        assert report["backlog"] == (MAILBOXES - 1) * (PER_MAILBOX - DAILY_LIMIT)
    finally:
        codes = [d.stop() for d in daemons if d.process.poll() is None]
    assert codes == [0, 0], [d.log()[-3000:] for d in daemons]

    # Every message exactly once on the wire: no Message-ID and no prospect twice.
    ids = Counter(mid for _, _, mid in sink.kept)
    rcpts = Counter(rcpt for _, rcpt, _ in sink.kept)
    assert max(ids.values()) == 1 and max(rcpts.values()) == 1
    # Limits held across daemons.
    per_box = Counter(sender for sender, _, _ in sink.kept)
    assert set(per_box) == set(senders) and per_box[WATCHED] <= PER_MAILBOX
    assert max(n for box, n in per_box.items() if box != WATCHED) <= DAILY_LIMIT
    counts = dict(query(postgres_url, "SELECT email, sent_on_day FROM mailbox_states"))
    assert counts == {box: PER_MAILBOX if box == WATCHED else DAILY_LIMIT for box in senders}
    rows = {
        mid: state for state, mid in query(postgres_url, "SELECT state, message_id FROM messages")
    }
    states = Counter(rows.values())
    assert states["sent"] + states["unknown"] == total
    # The messages in SMTP when their daemon died are unknown, for the operator to settle
    # (the held one did reach the server, once); nothing else is.
    assert {mid for mid, state in rows.items() if state == "unknown"} == sending
    assert ids[next(iter(sending & set(ids)))] == 1
    # Its claims not yet sent were taken over after the lease: sent by another daemon (or
    # queued for tomorrow where the mailbox's limit was reached), never lost.
    assert all(rows[mid] == "sent" for mid, box in claimed.items() if box == WATCHED)
    assert all(rows[mid] in ("sent", "retry") for mid in claimed)
    sent = {mid for mid, state in rows.items() if state == "sent"}
    assert sent <= set(ids) and set(ids) <= sent | sending  # the wire and the database agree
