"""The compose worker: a forked process composes large batches exactly as the dispatcher
would, a message it cannot compose is held, a dead worker costs nothing, an edited template
reaches it, and a killed dispatcher leaves no worker (nor a held lock) behind."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from freezegun import freeze_time
from sqlmodel import select

from outreach import clock, compose_worker
from outreach.claims import Claimed
from outreach.compose_worker import ComposeWorker
from outreach.daemon import DispatchLock, send_once
from outreach.dispatch import Dispatcher, Report
from outreach.enroll import enroll_csv
from outreach.mail.smtp import SmtpTransport
from outreach.models import Enrollment
from outreach.workspace import Workspace
from tests.conftest import edit_config
from tests.smtp_servers import RecordingSMTP

HELSINKI_MONDAY_10 = datetime(2027, 1, 4, 8, 0, tzinfo=UTC)
ROWS = compose_worker.MIN_BATCH + 2  # one batch the worker takes


def _workspace(directory: Path, port: int) -> Workspace:
    config = directory / "outreach.toml"
    edit_config(config, smtp_port=port, min_gap_seconds=0, max_gap_seconds=0)
    return Workspace.load(config)


def _enroll(ws: Workspace, tmp_path: Path, rows: list[str], header: str) -> None:
    path = tmp_path / "list.csv"
    path.write_text(header + "".join(row + "\n" for row in rows), encoding="utf-8")
    result = enroll_csv(ws, path, "cold", now=clock.now(), rng=random.Random(1))
    assert result.applied and not result.rejected, result.rejected[:2]


def _claims(ws: Workspace, tmp_path: Path) -> tuple[Dispatcher, list[Claimed]]:
    rows = [f"p{n}@acme{n % 3}.example,P{n},Company {n}" for n in range(ROWS)]
    _enroll(ws, tmp_path, rows, "email,first_name,company\n")
    dispatcher = Dispatcher(ws, SmtpTransport)
    dispatcher.assigner.prepare(clock.now())
    claimed = dispatcher.claim_due(ws.config.mailboxes[0], clock.now(), Report())
    assert isinstance(claimed, list) and len(claimed) == ROWS
    return dispatcher, claimed


def test_the_worker_composes_a_batch_exactly_as_this_process_does(
    workspace_dir: Path, tmp_path: Path
) -> None:
    ws = _workspace(workspace_dir, 2525)
    with freeze_time(HELSINKI_MONDAY_10, real_asyncio=True):
        dispatcher, claims = _claims(ws, tmp_path)
        now = clock.now()
        worker = dispatcher.worker
        assert worker.enabled  # two cores or more, and fork (as on this machine)
        there = asyncio.run(worker.compose(claims, now))
        worker.stop()
        here = worker.here(claims, now)
    assert worker.forks == 1 and worker.enabled  # it did go to the worker, and came back
    assert there == here  # every byte of every message, the headers and the stored texts
    assert len({c.message_id for c in here if not isinstance(c, str)}) == ROWS
    # A batch too small for the round trip is composed here, with no fork.
    small = ComposeWorker(dispatcher.composer)
    assert asyncio.run(small.compose(claims[: compose_worker.MIN_BATCH - 1], now)) == here[:-3]
    assert small.forks == 0


def test_a_message_the_worker_cannot_compose_is_held_and_the_rest_are_sent(
    workspace_dir: Path, tmp_path: Path
) -> None:
    with RecordingSMTP() as server:
        ws = _workspace(workspace_dir, server.port)
        with freeze_time(HELSINKI_MONDAY_10, real_asyncio=True):
            # Half the list has a region; the body is then edited to print it (after enroll,
            # whose pre-flight would have refused the rows without one).
            rows = [f"p{n}@acme.example,P{n},{'Nordics' if n % 2 else ''}" for n in range(ROWS)]
            _enroll(ws, tmp_path, rows, "email,first_name,region\n")
            intro = workspace_dir / "templates" / "cold" / "1-intro.yaml"
            text = intro.read_text(encoding="utf-8")
            intro.write_text(text.replace("Hi ", "Hi {{ region }} "), encoding="utf-8")
            assert intro.read_text(encoding="utf-8") != text
            report = send_once(ws)
        assert len(report.sent) == ROWS // 2
        assert sum(report.held.values()) == ROWS // 2  # one line per variant (its own line)
        assert all("1-intro.yaml:" in p and "'region' is undefined" in p for p in report.held)
        assert {r.rcpt_tos[0] for r in server.received} == {
            f"p{n}@acme.example" for n in range(1, ROWS, 2)
        }
    with ws.store.session() as session:
        held = session.exec(select(Enrollment).where(Enrollment.held_reason.is_not(None))).all()
    assert len(held) == ROWS // 2 and all(e.state == "active" for e in held)


def test_a_dead_worker_costs_nothing_the_batch_is_composed_here(
    workspace_dir: Path, tmp_path: Path
) -> None:
    ws = _workspace(workspace_dir, 2525)
    events: list[str] = []
    with freeze_time(HELSINKI_MONDAY_10, real_asyncio=True):
        dispatcher, claims = _claims(ws, tmp_path)
        worker = ComposeWorker(dispatcher.composer, events.append)

        async def twice() -> tuple[list, list]:  # type: ignore[type-arg]
            first = await worker.compose(claims, clock.now())
            assert worker._pool is not None
            for pid in worker._pool._processes:  # the worker, killed outright
                os.kill(pid, signal.SIGKILL)
            time.sleep(0.3)
            return first, await worker.compose(claims, clock.now())

        first, second = asyncio.run(twice())
        here = worker.here(claims, clock.now())
    assert first == second == here
    assert not worker.enabled and worker._pool is None  # the rest of the pass: composed here
    assert len(events) == 1 and events[0].startswith("the compose worker failed")


def test_an_edited_template_reaches_the_next_worker(workspace_dir: Path, tmp_path: Path) -> None:
    ws = _workspace(workspace_dir, 2525)
    with freeze_time(HELSINKI_MONDAY_10, real_asyncio=True):
        dispatcher, claims = _claims(ws, tmp_path)
        worker = dispatcher.worker

        def bodies() -> set[str]:
            return {c.body.split("\n")[0] for c in asyncio.run(worker.compose(claims, clock.now()))}  # type: ignore[union-attr]

        before = bodies()
        intro = workspace_dir / "templates" / "cold" / "1-intro.yaml"
        intro.write_text(
            intro.read_text(encoding="utf-8").replace("Hi ", "Hello again "), encoding="utf-8"
        )
        assert ws.refresh_templates()  # what the dispatcher's prepare does
        assert bodies() == before  # the running worker has the templates it was forked with
        worker.stop()  # as the dispatcher does when the templates were read again
        after = bodies()
        worker.stop()
    assert worker.forks == 2
    assert after != before and all(line.startswith("Hello again ") for line in after)
    assert after == {c.body.split("\n")[0] for c in worker.here(claims, clock.now())}  # type: ignore[union-attr]


def test_a_killed_dispatcher_leaves_no_worker_and_no_lock(
    workspace_dir: Path, tmp_path: Path
) -> None:
    ws = _workspace(workspace_dir, 2525)
    with freeze_time(HELSINKI_MONDAY_10, real_asyncio=True):
        rows = [f"p{n}@acme.example,P{n}" for n in range(ROWS)]
        _enroll(ws, tmp_path, rows, "email,first_name\n")
    script = textwrap.dedent(
        f"""
        import asyncio, sys, time
        from datetime import UTC, datetime
        from freezegun import freeze_time
        from outreach.daemon import DispatchLock
        from outreach.dispatch import Dispatcher, Report
        from outreach.mail.smtp import SmtpTransport
        from outreach.workspace import Workspace

        ws = Workspace.load({str(workspace_dir / "outreach.toml")!r})
        with freeze_time(datetime(2027, 1, 4, 8, 0, tzinfo=UTC), real_asyncio=True):
            lock = DispatchLock(ws).__enter__()
            d = Dispatcher(ws, SmtpTransport)
            d.assigner.prepare(datetime.now(UTC))
            claimed = d.claim_due(ws.config.mailboxes[0], datetime.now(UTC), Report())
            asyncio.run(d.worker.compose(claimed, datetime.now(UTC)))
            print(*d.worker._pool._processes, flush=True)
            time.sleep(60)
        """
    )
    child = subprocess.Popen(
        [sys.executable, "-c", script],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parent.parent,
    )
    try:
        line = child.stdout.readline()  # type: ignore[union-attr]
        [worker] = [int(pid) for pid in line.split()]
        assert _alive(worker)
        with pytest.raises(Exception, match="another outreach process"):
            DispatchLock(ws).__enter__()
    finally:
        child.kill()
        child.wait()
    # At once: the lock was the dispatcher's alone (the worker closed its copy at the fork).
    DispatchLock(ws).__enter__().__exit__(None, None, None)
    deadline = time.monotonic() + 3
    while _alive(worker) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(worker)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False
