"""Several daemons, one database: who holds what, until when, and the heartbeat that renews it.

Everything a daemon holds carries its name (:attr:`Member.id`) and an expiry:

- the **messages** it claimed (``lease_owner``, ``lease_until``): "claimed" ones go back to
  the queue when the lease lapses; "sending" ones become "unknown" (never resent by themselves).
  Those moves are :mod:`outreach.lifecycle`'s; the lease and its renewal are here;
- the **mailboxes** it serves (``mailbox_states.owner``, ``owner_until``): one daemon per
  mailbox at a time, so limits and gaps hold; a daemon takes at most its fair share;
- the **singletons** (the mailbox poll, cron jobs): one holder per cluster.

The heartbeat (:func:`beat`) renews all of it every third of ``[daemon] claim_lease_seconds``
and writes the ``daemons`` row that ``outreach status`` shows. A process that dies stops
beating, and after the lease the others take over what it held. Each rule is one statement
here, so the guarantee lives in the database in one place. On SQLite the same code runs with
a single process (the dispatch lock file keeps out a second one).
"""

from __future__ import annotations

import math
import os
import secrets
import socket
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, delete, func, or_, select, update
from sqlmodel import Session

from outreach.models import DaemonBeat, MailboxState, Message, Singleton
from outreach.store import Store

messages_t = Message.__table__  # type: ignore[attr-defined]
mailboxes_t = MailboxState.__table__  # type: ignore[attr-defined]
daemons_t = DaemonBeat.__table__  # type: ignore[attr-defined]
singletons_t = Singleton.__table__  # type: ignore[attr-defined]
FORGET_DEAD_AFTER = timedelta(days=1)  # a dead daemon's row stays visible this long


@dataclass
class Member:
    """One process taking part: a daemon (``outreach run``) or a ``send --once``."""

    lease: timedelta
    daemon: bool = False
    host: str = field(default_factory=socket.gethostname)
    pid: int = field(default_factory=os.getpid)
    id: str = ""

    def __post_init__(self) -> None:
        if not self.id:
            self.id = f"{self.host}:{self.pid}:{secrets.token_hex(3)}"

    @classmethod
    def for_settings(cls, lease_seconds: int, *, daemon: bool = False) -> Member:
        return cls(lease=timedelta(seconds=lease_seconds), daemon=daemon)

    @property
    def beat_seconds(self) -> float:
        return max(self.lease.total_seconds() / 3, 0.5)


def _insert_ignore(conn: Connection, table: Any, rows: list[dict[str, Any]]) -> None:
    """INSERT ... ON CONFLICT DO NOTHING, in the database's own dialect."""
    if not rows:
        return
    # The dialect's own INSERT, imported when used: a read-only command never needs it.
    from sqlalchemy.dialects import postgresql, sqlite

    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    conn.execute(dialect.insert(table).values(rows).on_conflict_do_nothing())


def lock_mailbox(
    session: Session, email: str, member: Member, mailboxes: list[str], now: datetime
) -> MailboxState | None:
    """The mailbox's state, locked for this transaction and leased to ``member``; None when
    another live daemon serves it, or when serving it would exceed ``member``'s fair share
    (``ceil(mailboxes / live daemons)``, so a daemon that joins gets work)."""
    state = session.get(MailboxState, email, with_for_update=True, populate_existing=True)
    if state is None:
        ensure_mailboxes_in(session, [email])
        state = session.get(MailboxState, email, with_for_update=True, populate_existing=True)
        assert state is not None
    owned = state.owner == member.id
    if not owned and state.owner and state.owner_until and state.owner_until > now:
        return None
    held = _held_mailboxes(session, member, now) - {email}
    share = math.ceil(len(mailboxes) / _live_processes(session, member, now))
    order = {name: i for i, name in enumerate(mailboxes)}
    # A daemon keeps the first `share` of its mailboxes in config order and gives up the
    # rest, so one that joins finds work; one that owns nothing takes up to `share`.
    mine = sorted(held | {email}, key=lambda name: order.get(name, len(order)))
    if mine.index(email) >= share:
        if owned:
            state.owner, state.owner_until = None, None
            session.add(state)
        return None
    state.owner, state.owner_until = member.id, now + member.lease
    session.add(state)
    return state


def ensure_mailboxes_in(session: Session, emails: list[str]) -> None:
    rows = [{"email": email, "sent_on_day": 0} for email in emails]
    _insert_ignore(session.connection(), mailboxes_t, rows)


def _held_mailboxes(session: Session, member: Member, now: datetime) -> set[str]:
    rows = session.execute(
        select(mailboxes_t.c.email).where(
            mailboxes_t.c.owner == member.id, mailboxes_t.c.owner_until > now
        )
    )
    return set(rows.scalars())


def _live_processes(session: Session, member: Member, now: datetime) -> int:
    """How many processes share the mailboxes: the live daemons, counting ``member`` once."""
    others = session.execute(
        select(func.count())
        .select_from(daemons_t)
        .where(daemons_t.c.beat_at > now - member.lease, daemons_t.c.id != member.id)
    ).scalar_one()
    return int(others) + 1


def hold_singleton(store: Store, name: str, member: Member, now: datetime) -> bool:
    """Take or keep the one-per-cluster job ``name``; False while another live process has it."""
    with store.engine.begin() as conn:
        _insert_ignore(conn, singletons_t, [{"name": name}])
        taken = conn.execute(
            update(singletons_t)
            .where(
                singletons_t.c.name == name,
                or_(
                    singletons_t.c.owner.is_(None),
                    singletons_t.c.owner == member.id,
                    singletons_t.c.owner_until < now,
                ),
            )
            .values(owner=member.id, owner_until=now + member.lease)
        ).rowcount
    return bool(taken)


def beat(store: Store, member: Member, now: datetime) -> None:
    """The heartbeat: renew every lease ``member`` holds; a daemon also writes its row."""
    until = now + member.lease
    with store.engine.begin() as conn:
        conn.execute(
            update(messages_t)
            .where(
                messages_t.c.lease_owner == member.id,
                messages_t.c.state.in_(("claimed", "sending")),
            )
            .values(lease_until=until)
        )
        for table in (mailboxes_t, singletons_t):
            conn.execute(
                update(table)
                .where(table.c.owner == member.id, table.c.owner_until > now)
                .values(owner_until=until)
            )
        if not member.daemon:
            return
        held = sorted(
            conn.execute(
                select(mailboxes_t.c.email).where(
                    mailboxes_t.c.owner == member.id, mailboxes_t.c.owner_until > now
                )
            ).scalars()
        )
        values = {"beat_at": now, "mailboxes": held}
        done = conn.execute(
            update(daemons_t).where(daemons_t.c.id == member.id).values(**values)
        ).rowcount
        if not done:
            conn.execute(
                daemons_t.insert().values(
                    id=member.id, host=member.host, pid=member.pid, started_at=now, **values
                )
            )
        conn.execute(delete(daemons_t).where(daemons_t.c.beat_at < now - FORGET_DEAD_AFTER))


def let_go(store: Store, member: Member, *, everything: bool = False) -> None:
    """Give up the mailboxes and singletons ``member`` holds (``everything``: anyone's, for a
    process that holds the SQLite lock and so knows the others are dead); its daemon row goes
    (``everything``: every row).
    Claimed messages are released by the dispatcher, which knows how to put them back."""
    with store.engine.begin() as conn:
        for table in (mailboxes_t, singletons_t):
            query = update(table)
            if not everything:
                query = query.where(table.c.owner == member.id)
            conn.execute(query.values(owner=None, owner_until=None))
        # A dead daemon's row would count it among the live ones (and halve this one's share).
        gone = delete(daemons_t)
        conn.execute(gone if everything else gone.where(daemons_t.c.id == member.id))


def daemons(store: Store, now: datetime, lease: timedelta) -> list[dict[str, Any]]:
    """Every daemon seen in the last day: alive or not, and the mailboxes it holds."""
    with store.engine.connect() as conn:
        rows = conn.execute(select(daemons_t).order_by(daemons_t.c.started_at)).mappings().all()
    out = []
    for row in rows:
        beat_at = row["beat_at"]
        out.append(
            {
                "id": row["id"],
                "host": row["host"],
                "pid": row["pid"],
                "started_at": row["started_at"].isoformat(),
                "beat_at": beat_at.isoformat(),
                "alive": beat_at > now - lease,
                "mailboxes": list(row["mailboxes"] or []),
            }
        )
    return out
