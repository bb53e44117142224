"""The message lifecycle: every state an outbox row can be in, and every way it moves.

The at-most-once promise lives here and nowhere else. Each transition is one guarded
``UPDATE ... WHERE state IN (<the states it may leave>)``: a transition that finds the row in
another state changes nothing and says so (``False``, or the rows it moved), so two processes
(or a stop and a send) can never both win. No other module writes ``Message.state``.

An email::

    (new) -claim-> CLAIMED -take-> SENDING -record_sent_many-> SENT -bounced_later-> BOUNCED
                    |   |            |-record_retry / record_not_tried-> RETRY
    RETRY <-release-+   |            |-record_bounce-> BOUNCED
      |                 |            |-record_failed-> FAILED
      +-claim (again)   |            +-mark_unknown-> UNKNOWN -resolve / settle-> SENT
                        +-cancel-> SKIPPED               +-resolve (not sent)-> RETRY

A task (LinkedIn, manual): ``(new) --> TASK --task_done--> DONE``, or ``--task_skipped--> SKIPPED``.
An enrollment that ends takes its open rows (RETRY, TASK) to SKIPPED (:func:`drop_open`).

``CLAIMED`` rows carry a lease (``lease_owner``, ``lease_until``; renewed by the heartbeat in
:mod:`outreach.cluster`): only the lease holder may take one, and a lapsed lease sends it back
to the queue. ``SENDING`` is the only state in which a message may be on the wire; a process
that dies there leaves it to become ``UNKNOWN``, never to be sent again by itself.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, bindparam, case, delete, func, or_, select, update
from sqlmodel import Session

from outreach.models import Enrollment, MailboxState, Message, MessageState
from outreach.store import Prepared, bulk_insert, db_datetime, expire_loaded

messages_t = Message.__table__  # type: ignore[attr-defined]
enrollments_t = Enrollment.__table__  # type: ignore[attr-defined]
mailboxes_t = MailboxState.__table__  # type: ignore[attr-defined]


OPEN = (MessageState.RETRY, MessageState.TASK)  # what an ending enrollment cancels
IN_FLIGHT = (MessageState.CLAIMED, MessageState.SENDING)
UNSETTLED = (MessageState.UNKNOWN, MessageState.SENDING)  # whose fate a person may settle
DELIVERED = (MessageState.SENT, MessageState.DONE)  # a step that happened

_UNKNOWN_TEXT = "the process ended between claim and answer; see outreach resolve"


def _conn(db: Session | Connection) -> Connection:
    if isinstance(db, Session):
        db.flush()  # what the session changed before comes first
        return db.connection()
    return db


def _move(
    db: Session | Connection,
    ids: int | Iterable[int],
    from_states: Sequence[MessageState],
    to: MessageState,
    *where: Any,
    **values: Any,
) -> int:
    """The one statement every transition is: move the given rows that are in one of
    ``from_states`` (and meet ``where``) to ``to``. Returns how many moved."""
    m = messages_t.c
    rows = [ids] if isinstance(ids, int) else list(ids)
    if not rows:
        return 0
    statement = (
        update(messages_t)
        .where(m.id.in_(rows), m.state.in_([s.value for s in from_states]), *where)
        .values(state=to.value, **values)
    )
    if isinstance(db, Session):
        db.flush()  # what the session changed before comes first
        moved = db.connection().execute(statement).rowcount
        # Loaded rows now disagree with the database: their attributes are read again on use.
        _expire(db, set(rows), values)
    else:
        moved = db.execute(statement).rowcount
    return int(moved)


def _expire(session: Session, rows: set[int], values: dict[str, Any]) -> None:
    """Loaded rows now disagree with the database in these columns: read them again on use."""
    expire_loaded(session, Message, rows, ["state", *values])


# ------------------------------------------------------------------ new rows


def new_emails(
    conn: Connection,
    rows: list[dict[str, Any]],
    owner: str,
    now: datetime,
    lease_until: datetime,
) -> dict[int, int]:
    """Steps' first attempts: their rows are born ``claimed`` under the claimer's lease (with
    their variants assigned once and for good). Returns the new row ids by enrollment."""
    if not rows:
        return {}
    born = {
        "state": MessageState.CLAIMED.value,
        "attempts": 1,
        "created_at": now,
        "claimed_at": now,
        "lease_owner": owner,
        "lease_until": lease_until,
    }
    # As the driver's own multi-row INSERT: SQLAlchemy's insert of a batch ran every value
    # of every row through its type processors, half the cost of a claim's writes. The rows
    # hold ids and texts; the datetimes are the ones every row is born with, converted once.
    keys = list(rows[0])
    born_values = [db_datetime(conn, v) if isinstance(v, datetime) else v for v in born.values()]
    values = [[row[key] for key in keys] + born_values for row in rows]
    made = bulk_insert(conn, messages_t, [*keys, *born], values, returning=("id", "enrollment_id"))
    return {enrollment_id: row_id for row_id, enrollment_id in made}


def new_task(session: Session, message: Message, skip_at: datetime) -> Message:
    """A LinkedIn or manual step for the rep; skipped by itself at ``skip_at`` if not done."""
    message.state = MessageState.TASK
    message.next_attempt_at = skip_at
    session.add(message)
    return message


# ------------------------------------------------------------------ the send path


def claim(
    db: Session | Connection, message_row: int, owner: str, now: datetime, lease_until: datetime
) -> bool:
    """A row waiting for its next attempt is claimed again, under the claimer's lease."""
    return (
        _move(
            db,
            message_row,
            (MessageState.RETRY,),
            MessageState.CLAIMED,
            claimed_at=now,
            attempts=messages_t.c.attempts + 1,
            lease_owner=owner,
            lease_until=lease_until,
        )
        == 1
    )


def take(
    db: Session | Connection,
    message_row: int,
    owner: str,
    now: datetime,
    lease_until: datetime,
    **content: Any,
) -> bool:
    """The last look and the hand-over to SMTP in one statement: ``claimed`` becomes
    ``sending`` only for the lease holder and only while the enrollment is still active at
    this step (a reply or a stop since the claim wins). ``content`` (subject, body, threading
    headers, composed outside any transaction) is stored with it."""
    statement = _take_statement(tuple(sorted(content)))
    moved = statement(
        _conn(db),
        row=message_row,
        owner=owner,
        now=now,
        until=lease_until,
        **{f"set_{name}": value for name, value in content.items()},
    ).rowcount
    if isinstance(db, Session):
        _expire(db, {message_row}, {"claimed_at": now, "lease_until": lease_until, **content})
    return int(moved) == 1


_TAKES: dict[tuple[str, ...], Prepared] = {}


def _take_statement(columns: tuple[str, ...]) -> Prepared:
    """The take, once per set of content columns: it runs before every message's SMTP, so it
    is compiled once (:class:`outreach.store.Prepared`)."""
    if columns not in _TAKES:

        def build() -> Any:
            m, e = messages_t.c, enrollments_t.c
            live = (
                select(e.id)
                .where(e.id == m.enrollment_id, e.state == "active", e.step_index == m.step_index)
                .exists()
            )
            return (
                update(messages_t)
                .where(
                    m.id == bindparam("row"),
                    m.state == MessageState.CLAIMED.value,
                    m.lease_owner == bindparam("owner"),
                    live,
                )
                .values(
                    state=MessageState.SENDING.value,
                    claimed_at=bindparam("now"),
                    lease_until=bindparam("until"),
                    **{name: bindparam(f"set_{name}") for name in columns},
                )
            )

        _TAKES[columns] = Prepared(build)
    return _TAKES[columns]


def discard(conn: Connection, message_row: int, owner: str) -> bool:
    """A first attempt that could not even be composed (a template problem) is forgotten, so
    the next attempt assigns its variants afresh from the file as it is then. Only a claimed
    row of the holder's that was never tried before: nothing of it ever left."""
    m = messages_t.c
    gone = conn.execute(
        delete(messages_t).where(
            m.id == message_row,
            m.state == MessageState.CLAIMED.value,
            m.lease_owner == owner,
            m.attempts == 1,
        )
    ).rowcount
    return gone == 1


def cancel(db: Session | Connection, message_row: int, owner: str) -> bool:
    """The enrollment ended before the message left: it is never sent (only by its holder)."""
    m = messages_t.c
    return (
        _move(
            db,
            message_row,
            IN_FLIGHT,
            MessageState.SKIPPED,
            or_(m.lease_owner.is_(None), m.lease_owner == owner),
            error="the enrollment ended before the message left",
            lease_owner=None,
            lease_until=None,
        )
        == 1
    )


def _answered(db: Session | Connection, message_row: int, to: MessageState, **values: Any) -> bool:
    """The server's answer to a message on the wire: it leaves ``sending``, and its lease."""
    moved = _move(
        db,
        message_row,
        (MessageState.SENDING,),
        to,
        lease_owner=None,
        lease_until=None,
        **values,
    )
    return moved == 1


def record_sent_many(
    db: Session | Connection, answers: list[tuple[int, str]], now: datetime
) -> set[int]:
    """Several messages the server accepted, in one statement; the rows that moved."""
    if not answers:
        return set()
    m = messages_t.c
    responses = dict(answers)
    statement = (
        update(messages_t)
        .where(m.id.in_(list(responses)), m.state == MessageState.SENDING.value)
        .values(
            state=MessageState.SENT.value,
            sent_at=now,
            smtp_response=case(responses, value=m.id),
            error=None,
            lease_owner=None,
            lease_until=None,
        )
        .returning(m.id)
    )
    moved = set(_conn(db).execute(statement).scalars())
    if isinstance(db, Session):
        _expire(db, moved, {"sent_at": now, "smtp_response": "", "error": None})
    return moved


def record_retry(
    db: Session | Connection, message_row: int, response: str, next_attempt_at: datetime
) -> bool:
    """A temporary failure of this message (4xx, a dropped connection): again later, with the
    same Message-ID."""
    return _answered(
        db,
        message_row,
        MessageState.RETRY,
        smtp_response=response,
        error=response,
        next_attempt_at=next_attempt_at,
    )


def record_not_tried(
    db: Session | Connection, message_row: int, response: str, error: str | None
) -> bool:
    """The mailbox, not the message, was in trouble (no session opened, or its login refused):
    the message goes back as it was, its attempt not counted."""
    return _answered(
        db,
        message_row,
        MessageState.RETRY,
        smtp_response=response,
        error=error,
        attempts=messages_t.c.attempts - 1,
    )


def record_bounce(db: Session | Connection, message_row: int, response: str) -> bool:
    """The recipient does not exist (at SMTP time)."""
    return _answered(db, message_row, MessageState.BOUNCED, smtp_response=response, error=response)


def record_failed(db: Session | Connection, message_row: int, response: str, error: str) -> bool:
    """Refused for good, or retried until ``max_attempts``."""
    return _answered(db, message_row, MessageState.FAILED, smtp_response=response, error=error)


def bounced_later(db: Session | Connection, message_row: int) -> bool:
    """A bounce report (DSN) read from the mailbox says a sent message never arrived."""
    return (
        _move(
            db,
            message_row,
            (MessageState.SENT, MessageState.SENDING, MessageState.UNKNOWN),
            MessageState.BOUNCED,
        )
        == 1
    )


# ------------------------------------------------------------------ claims that lapse


def release(
    conn: Connection,
    now: datetime,
    *,
    ids: list[int] | None = None,
    owner: str | None = None,
    expired: bool = True,
) -> int:
    """Claimed messages that never reached SMTP go back to the queue: the given ones of
    ``owner``, else those whose lease lapsed (``expired``), else every one. One whose
    enrollment ended meanwhile is skipped instead. The enrollment is due again from when it
    was claimed (it keeps its place ahead of what fell due since), and the mailbox's count
    for the day gives the claims back."""
    m, e = messages_t.c, enrollments_t.c
    query = select(m.id, m.enrollment_id, m.sender).where(m.state == MessageState.CLAIMED)
    if ids is not None:
        assert owner is not None
        query = query.where(m.id.in_(ids), m.lease_owner == owner)
    elif expired:
        query = query.where(m.lease_until < now)
    rows = conn.execute(query.with_for_update(skip_locked=True)).all()
    if not rows:
        return 0
    row_ids = [r.id for r in rows]
    active = select(e.id).where(e.id == m.enrollment_id, e.state == "active").exists()
    free = {"attempts": m.attempts - 1, "lease_owner": None, "lease_until": None}
    _move(conn, row_ids, (MessageState.CLAIMED,), MessageState.RETRY, active, **free)
    _move(conn, row_ids, (MessageState.CLAIMED,), MessageState.SKIPPED, ~active, **free)
    claimed = (
        select(func.min(m.claimed_at))
        .where(m.enrollment_id == e.id, m.id.in_(row_ids))
        .scalar_subquery()
    )
    conn.execute(
        update(enrollments_t)
        .where(e.id.in_([r.enrollment_id for r in rows]), e.state == "active", e.due_at.is_(None))
        .values(due_at=func.coalesce(claimed, now), updated_at=now)
    )
    per_mailbox: dict[str, int] = {}
    for row in rows:
        per_mailbox[row.sender] = per_mailbox.get(row.sender, 0) + 1
    for email, count in per_mailbox.items():
        uncount(conn, email, count)
    return len(rows)


def mark_unknown(
    db: Session | Connection, now: datetime, lease: timedelta, *, everything: bool = False
) -> int:
    """Messages handed to SMTP that never got an answer recorded become ``unknown``: those
    unanswered longer than ``lease``, or whose daemon stopped beating (``everything``: every
    one, for the process that holds the SQLite lock and so knows the others are dead)."""
    m = messages_t.c
    query = select(m.id).where(m.state == MessageState.SENDING)
    if not everything:
        query = query.where(or_(m.claimed_at < now - lease, m.lease_until < now))
    conn = _conn(db)
    stale = list(conn.execute(query.with_for_update(skip_locked=True)).scalars())
    return _move(db, stale, (MessageState.SENDING,), MessageState.UNKNOWN, error=_UNKNOWN_TEXT)


def uncount(
    db: Session | Connection, mailbox: str, count: int = 1, *, forgive_gap: bool = False
) -> None:
    """The claim counted sends against today's limit that did not happen after all (and with
    ``forgive_gap``, the gap drawn after them is forgiven too)."""
    conn = _conn(db)
    sent = conn.execute(
        select(mailboxes_t.c.sent_on_day).where(mailboxes_t.c.email == mailbox).with_for_update()
    ).scalar()
    if sent is not None:
        values: dict[str, Any] = {"sent_on_day": max(sent - count, 0)}
        if forgive_gap:
            values["next_send_at"] = None
        conn.execute(update(mailboxes_t).where(mailboxes_t.c.email == mailbox).values(**values))


# ------------------------------------------------------------------ people settle it


def resolve(db: Session | Connection, message_row: int, sent: bool, now: datetime) -> bool:
    """An operator says what happened to a message whose fate is unknown."""
    if sent:
        return (
            _move(
                db,
                message_row,
                UNSETTLED,
                MessageState.SENT,
                sent_at=func.coalesce(messages_t.c.claimed_at, now),
                error="resolved by the operator: it was sent",
                lease_owner=None,
                lease_until=None,
            )
            == 1
        )
    return (
        _move(
            db,
            message_row,
            UNSETTLED,
            MessageState.RETRY,
            error="resolved by the operator: not sent",
            lease_owner=None,
            lease_until=None,
        )
        == 1
    )


def settle_from_sent_folder(db: Session | Connection, message_row: int) -> bool:
    """An unknown message found in its mailbox's Sent folder did leave."""
    return (
        _move(
            db,
            message_row,
            (MessageState.UNKNOWN,),
            MessageState.SENT,
            sent_at=messages_t.c.claimed_at,
            error="found in the Sent folder after an interrupted send",
        )
        == 1
    )


def task_done(db: Session | Connection, message_row: int, now: datetime) -> bool:
    """The rep did the task."""
    return _move(db, message_row, (MessageState.TASK,), MessageState.DONE, sent_at=now) == 1


def task_skipped(db: Session | Connection, message_row: int, reason: str) -> bool:
    """A task not done in time (or skipped by the rep): the sequence goes on without it."""
    return _move(db, message_row, (MessageState.TASK,), MessageState.SKIPPED, error=reason) == 1


def drop_open(db: Session | Connection, enrollment_id: int, reason: str) -> int:
    """An enrollment ended: its message waiting for a retry and its open task are never sent
    or shown now."""
    m = messages_t.c
    rows = list(
        _conn(db)
        .execute(
            select(m.id).where(
                m.enrollment_id == enrollment_id, m.state.in_([s.value for s in OPEN])
            )
        )
        .scalars()
    )
    return _move(db, rows, OPEN, MessageState.SKIPPED, error=reason)
