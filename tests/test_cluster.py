"""What a daemon holds lapses with its heartbeat: claims, mailboxes, the once-per-cluster poll.

Two dispatchers in one test stand for two daemons (each with its own member name); one of
them "dies" by simply never doing anything again. freezegun moves past the lease. The same
rules run on SQLite and PostgreSQL; ``test_scale_out.py`` races real processes.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from freezegun import freeze_time
from sqlmodel import select

from outreach import clock, cluster, lifecycle
from outreach.daemon import send_once
from outreach.dispatch import Claimed, Dispatcher, Report
from outreach.enroll import enroll_csv
from outreach.mail.smtp import SmtpTransport
from outreach.models import MailboxState, Message
from outreach.reports import status
from outreach.workspace import Workspace
from tests.conftest import edit_config
from tests.smtp_servers import RecordingSMTP

pytestmark = pytest.mark.both_databases
MONDAY_10 = datetime(2027, 1, 4, 8, 0, tzinfo=UTC)
LEASE = 30


@pytest.fixture
def server() -> Iterator[RecordingSMTP]:
    with RecordingSMTP() as smtp:
        yield smtp


@pytest.fixture
def ws(workspace_dir: Path, tmp_path: Path, server: RecordingSMTP) -> Iterator[Workspace]:
    config = workspace_dir / "outreach.toml"
    edit_config(
        config,
        smtp_port=server.port,
        min_gap_seconds=0,
        max_gap_seconds=0,
        claim_lease_seconds=LEASE,
    )
    workspace = Workspace.load(config)
    path = tmp_path / "list.csv"
    rows = "".join(f"p{i}@acme{i}.example,P{i},Acme,en\n" for i in range(5))
    path.write_text("email,first_name,company,language\n" + rows, encoding="utf-8")
    with freeze_time(MONDAY_10):
        assert enroll_csv(workspace, path, "cold", now=clock.now(), rng=random.Random(1)).applied
    yield workspace
    workspace.close()


def daemon(ws: Workspace) -> Dispatcher:
    member = cluster.Member.for_settings(LEASE, daemon=True)
    return Dispatcher(ws, SmtpTransport, member=member)


def states(ws: Workspace) -> list[str]:
    with ws.store.session() as session:
        return sorted(m.state for m in session.exec(select(Message)))


def test_a_dead_daemons_claims_go_back_to_the_queue_after_the_lease(
    ws: Workspace, server: RecordingSMTP
) -> None:
    box = ws.config.mailboxes[0]
    with freeze_time(MONDAY_10 + timedelta(days=1), real_asyncio=True) as frozen:
        dead = daemon(ws)
        batch = dead.claim_batch(box, clock.now(), Report())
        assert isinstance(batch, list) and len(batch) == 5
        assert dead.take(batch[0])  # handed to SMTP when the process died
        other = daemon(ws)
        # Within the lease: the mailbox and its claims are the dead one's; nothing is sent.
        assert asyncio.run(other.run_once()).sent == []
        frozen.tick(timedelta(seconds=LEASE + 1))
        report = asyncio.run(other.run_once())
        assert len(report.sent) == 4 and report.unknown == 1
        assert not dead.take(batch[1])  # the dead one can never send a message it lost
    assert states(ws) == ["sent"] * 4 + ["unknown"]
    assert len(server.received) == 4
    assert len({r.rcpt_tos[0] for r in server.received}) == 4


def test_one_mailbox_is_served_by_one_daemon_at_a_time(ws: Workspace) -> None:
    box = ws.config.mailboxes[0]
    with freeze_time(MONDAY_10 + timedelta(days=1)) as frozen:
        first, second = daemon(ws), daemon(ws)
        assert isinstance(first.claim_batch(box, clock.now(), Report(), limit=1), list)
        assert second.claim_batch(box, clock.now(), Report()) is None
        cluster.beat(ws.store, first.member, clock.now())  # alive: it keeps the mailbox
        frozen.tick(timedelta(seconds=LEASE - 1))
        assert second.claim_batch(box, clock.now(), Report()) is None
        frozen.tick(timedelta(seconds=LEASE))
        claimed = second.claim_batch(box, clock.now(), Report())
        assert isinstance(claimed, list) and all(isinstance(c, Claimed) for c in claimed)
    with ws.store.session() as session:
        state = session.get(MailboxState, box.email)
        assert state is not None and state.owner == second.member.id
        assert state.sent_on_day == 5  # the one released and re-claimed is counted once


def test_the_mailbox_poll_runs_in_one_daemon_at_a_time(ws: Workspace) -> None:
    first, second = daemon(ws).member, daemon(ws).member
    now = MONDAY_10
    assert cluster.hold_singleton(ws.store, "replies", first, now)
    assert not cluster.hold_singleton(ws.store, "replies", second, now)
    assert cluster.hold_singleton(ws.store, "replies", first, now + timedelta(seconds=10))
    later = now + timedelta(seconds=10 + LEASE + 1)
    assert cluster.hold_singleton(ws.store, "replies", second, later)


def test_status_shows_the_daemons_alive_and_what_they_hold(ws: Workspace) -> None:
    box = ws.config.mailboxes[0]
    with freeze_time(MONDAY_10 + timedelta(days=1)) as frozen:
        alive = daemon(ws)
        alive.claim_batch(box, clock.now(), Report(), limit=1)
        cluster.beat(ws.store, alive.member, clock.now())
        report = status(ws, clock.now())
        [shown] = report["daemons"]
        assert shown["alive"] and shown["mailboxes"] == [box.email]
        assert shown["pid"] == alive.member.pid and report["backlog"] == 4
        frozen.tick(timedelta(seconds=LEASE + 1))
        assert [d["alive"] for d in status(ws, clock.now())["daemons"]] == [False]
        cluster.let_go(ws.store, alive.member)  # a clean stop leaves no row behind
        assert status(ws, clock.now())["daemons"] == []


def test_the_sqlite_lock_holder_forgets_a_dead_daemon_at_once(ws: Workspace, database: str) -> None:
    """On SQLite the lock proves the last daemon dead: its row would otherwise count it as
    live for a lease and halve the new process's share of the mailboxes."""
    with freeze_time(MONDAY_10 + timedelta(days=1), real_asyncio=True):
        cluster.beat(ws.store, daemon(ws).member, clock.now())  # then SIGKILL, say
        assert len(send_once(ws).sent) == 5
        left = status(ws, clock.now())["daemons"]
    assert len(left) == (0 if database == "sqlite" else 1)  # PostgreSQL waits for the lease


def test_two_daemons_one_poll(ws: Workspace) -> None:
    from outreach.daemon import Daemon

    first, second = Daemon(ws), Daemon(ws)
    with freeze_time(MONDAY_10, real_asyncio=True):
        assert asyncio.run(first.once_per_cluster("replies"))
        assert not asyncio.run(second.once_per_cluster("replies"))
        assert asyncio.run(second.once_per_cluster("ab-review"))  # another job, another holder


def test_released_claims_keep_their_place_in_the_queue(ws: Workspace) -> None:
    """A dead daemon's claims are due again from when they were claimed, not from the moment
    they are released: they go ahead of what fell due since."""
    from outreach.models import Enrollment

    box = ws.config.mailboxes[0]
    claimed_at = MONDAY_10 + timedelta(days=1)
    with freeze_time(claimed_at, real_asyncio=True) as frozen:
        batch = daemon(ws).claim_batch(box, clock.now(), Report())
        assert isinstance(batch, list) and len(batch) == 5
        frozen.tick(timedelta(seconds=LEASE + 3600))
        with ws.store.engine.begin() as conn:
            assert lifecycle.release(conn, clock.now()) == 5
    with ws.store.session() as session:
        due = [e.due_at for e in session.exec(select(Enrollment))]
    assert due == [claimed_at] * 5
