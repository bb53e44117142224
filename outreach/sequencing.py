"""The use cases that change a prospect's course: stop, suppress, advance, mark a reply."""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, update
from sqlalchemy import select as sa_select
from sqlmodel import Session, col, func, select

from outreach import handoff, lifecycle, planner
from outreach.config import Crm, Mailbox
from outreach.errors import ConfigError, NotFound, OutreachError, Problems
from outreach.models import Enrollment, Event, Message, Prospect, SequencePause, Suppression
from outreach.prospect_csv import normalize_email
from outreach.sentiment import REPLY_CLASSES, reply_class_of
from outreach.sequences import TRACKED_RULES, Sequence
from outreach.store import Prepared, Store, expire_loaded
from outreach.workspace import Workspace

_enrollments_t = Enrollment.__table__  # type: ignore[attr-defined]
_prospects_t = Prospect.__table__  # type: ignore[attr-defined]

STOP_REASONS = ("replied", "meeting", "webinar", "not-interested", "other")
GOALS = ("meeting", "webinar")
LIVE_STATES = ("active", "paused")


def _id(row: Prospect | Enrollment | Message) -> int:
    """The primary key of a stored row (SQLModel types it as optional)."""
    assert row.id is not None
    return row.id


def live_enrollments(session: Session, prospect_id: int) -> list[Enrollment]:
    """The prospect's enrollments that may still send something (active or paused)."""
    return list(
        session.exec(
            select(Enrollment).where(
                Enrollment.prospect_id == prospect_id, col(Enrollment.state).in_(LIVE_STATES)
            )
        )
    )


def find_prospect(session: Session, email: str) -> Prospect:
    """The prospect with this address (in any letter case), or NotFound."""
    try:
        address = normalize_email(email)
    except ValueError as exc:
        raise OutreachError(f"'{email}' is not a valid address: {exc}", field="EMAIL") from None
    prospect = session.exec(select(Prospect).where(Prospect.email == address)).first()
    if prospect is None:
        raise NotFound(f"no prospect with address {address}", field="EMAIL")
    return prospect


def end_enrollment(
    session: Session, enrollment: Enrollment, state: str, reason: str, now: datetime
) -> None:
    """End an enrollment now; its planned messages and open tasks are cancelled with it."""
    enrollment.state = state
    enrollment.end_reason = reason
    enrollment.ended_at = now
    enrollment.updated_at = now
    enrollment.due_at = None
    session.add(enrollment)
    # A message waiting for a retry, or an open task, is never sent or shown now.
    lifecycle.drop_open(session, _id(enrollment), f"enrollment {state}: {reason}")


@dataclass
class StopResult:
    email: str
    reason: str
    stopped: list[str]
    handoff: int | None = None  # the hand-off queued for the CRM, if any
    already: datetime | None = None  # nothing was live and this was recorded before, then


def stop(
    store: Store, email: str, reason: str, now: datetime, crm: Crm | None = None
) -> StopResult:
    """Stop every live enrollment of a prospect now, and record why. A reply, meeting or
    webinar is handed to the CRM (queued in the same transaction) when ``crm`` has a webhook."""
    if reason not in STOP_REASONS:
        raise OutreachError(
            f"unknown reason '{reason}'", field="--reason", hint="one of " + ", ".join(STOP_REASONS)
        )
    with store.session() as session:
        prospect = find_prospect(session, email)
        state = "replied" if reason == "replied" else "stopped"
        stopped = []
        for enrollment in live_enrollments(session, _id(prospect)):
            end_enrollment(session, enrollment, state, reason, now)
            stopped.append(enrollment.sequence)
        if not stopped and (earlier := _recorded_before(session, _id(prospect), reason)):
            # Nothing to stop, and said before: a second event (and CRM hand-off) would only
            # count the same reply or meeting twice.
            return StopResult(prospect.email, reason, [], already=earlier)
        event = Event(
            prospect_id=_id(prospect),
            kind="goal" if reason in GOALS else "stop",
            reason=reason,
            data={"sequences": stopped},
            occurred_at=now,
        )
        session.add(event)
        queued = handoff.enqueue(session, crm, event, prospect, reason, now) if crm else None
        if queued is not None:
            session.flush()
        return StopResult(
            email=prospect.email,
            reason=reason,
            stopped=stopped,
            handoff=queued.id if queued else None,
        )


def _recorded_before(session: Session, prospect_id: int, reason: str) -> datetime | None:
    """When this stop reason (or, for ``replied``, a reply read from the mailbox) was last
    recorded for the prospect."""
    same = (col(Event.kind).in_(("goal", "stop"))) & (Event.reason == reason)
    if reason == "replied":
        same = same | (Event.kind == "reply")
    return session.exec(
        select(Event.occurred_at)
        .where(Event.prospect_id == prospect_id, same)
        .order_by(col(Event.id).desc())
    ).first()


def suppression_value(value: str) -> str:
    """``person@domain`` normalised, or ``@domain`` for a whole domain."""
    value = value.strip()
    if value.startswith("@"):
        domain = normalize_email("postmaster" + value).rpartition("@")[2]
        return "@" + domain
    return normalize_email(value)


@dataclass
class SuppressResult:
    value: str
    added: bool
    stopped: int


def suppress(store: Store, value: str, now: datetime, reason: str = "manual") -> SuppressResult:
    """Never write to an address or a domain again, and stop what is under way there now."""
    try:
        normalised = suppression_value(value)
    except ValueError as exc:
        raise OutreachError(
            f"'{value}' is neither an address nor @domain: {exc}", field="ADDRESS_OR_@DOMAIN"
        ) from None
    with store.session() as session:
        added, stopped = suppress_in(session, normalised, reason, now)
        return SuppressResult(value=normalised, added=added, stopped=stopped)


def suppress_in(
    session: Session, value: str, reason: str, now: datetime, *, events: bool = True
) -> tuple[bool, int]:
    """Add ``value`` (a normalised address or ``@domain``) to the suppression list and end its
    live enrollments, in the caller's transaction: ``unsubscribed`` when the person asked,
    else ``stopped``. Returns whether it was new and how many enrollments ended. ``events``
    writes a ``suppress`` event per enrollment (the caller may record its own instead)."""
    existing = session.exec(select(Suppression).where(Suppression.value == value)).first()
    if existing is None:
        session.add(Suppression(value=value, reason=reason, created_at=now))
    if value.startswith("@"):
        match = Prospect.domain == value[1:]
    else:
        match = Prospect.email == value
    state = "unsubscribed" if reason == "unsubscribed" else "stopped"
    stopped = 0
    for enrollment, prospect in session.exec(
        select(Enrollment, Prospect)
        .join(Prospect)
        .where(match, col(Enrollment.state).in_(LIVE_STATES))
    ):
        end_enrollment(session, enrollment, state, f"suppressed: {reason}", now)
        if events:
            session.add(
                Event(
                    prospect_id=_id(prospect),
                    enrollment_id=enrollment.id,
                    kind="suppress",
                    reason=reason,
                    data={"value": value},
                    occurred_at=now,
                )
            )
        stopped += 1
    return existing is None, stopped


@dataclass
class UnsuppressResult:
    value: str
    reason: str | None  # why it had been suppressed
    since: datetime


def unsuppress(store: Store, value: str, now: datetime, *, force: bool = False) -> UnsuppressResult:
    """Take an address or ``@domain`` off the suppression list, so that a later import may
    enroll it again. Enrollments the suppression stopped stay stopped. An entry made because
    the person asked to be removed is refused unless ``force`` (they asked to hear again)."""
    field = "ADDRESS_OR_@DOMAIN"
    try:
        normalised = suppression_value(value)
    except ValueError as exc:
        raise OutreachError(
            f"'{value}' is neither an address nor @domain: {exc}", field=field
        ) from None
    with store.session() as session:
        entry = session.exec(select(Suppression).where(Suppression.value == normalised)).first()
        if entry is None:
            domain = "@" + normalised.rpartition("@")[2]
            by_domain = (
                not normalised.startswith("@")
                and session.exec(select(Suppression.id).where(Suppression.value == domain)).first()
            )
            raise NotFound(
                f"{normalised} is not on the suppression list",
                field=field,
                hint=f"its domain is: `outreach unsuppress {domain}`"
                if by_domain
                else "`outreach suppressions` lists it",
            )
        if entry.reason == "unsubscribed" and not force:
            raise OutreachError(
                f"{normalised} asked to be removed ({entry.created_at:%Y-%m-%d})",
                field=field,
                hint="pass --force only if they asked to hear from you again",
            )
        result = UnsuppressResult(normalised, entry.reason, entry.created_at)
        session.delete(entry)
        if not normalised.startswith("@"):
            prospect = session.exec(select(Prospect).where(Prospect.email == normalised)).first()
            if prospect is not None:
                session.add(
                    Event(
                        prospect_id=_id(prospect),
                        kind="unsuppress",
                        reason=entry.reason,
                        data={"value": normalised},
                        occurred_at=now,
                    )
                )
        return result


def suppressions(store: Store) -> list[Suppression]:
    with store.session() as session:
        return list(session.exec(select(Suppression).order_by(Suppression.value)))


@dataclass
class EmailChange:
    old: str
    new: str
    live: int  # live enrollments that now write to the new address
    reactivated: bool  # the old address had bounced; the new one is a fresh start


def set_email(store: Store, email: str, new_email: str, now: datetime) -> EmailChange:
    """The prospect has a new address: the person keeps their history (enrollments, messages,
    events all hang on the prospect, not on the address) and what is live goes on to the new
    one. Refused if the new address is invalid, another prospect's, or suppressed."""
    field = "--set-email"
    try:
        new = normalize_email(new_email)
    except ValueError as exc:
        raise OutreachError(f"'{new_email}' is not a valid address: {exc}", field=field) from None
    with store.session() as session:
        prospect = find_prospect(session, email)
        old = prospect.email
        if new == old:
            raise OutreachError(f"{old} already has that address", field=field)
        other = session.exec(select(Prospect).where(Prospect.email == new)).first()
        if other is not None:
            raise OutreachError(
                f"{new} is another prospect",
                field=field,
                hint=f"`outreach prospect {new}` shows them; stop or suppress one instead",
            )
        domain = new.rpartition("@")[2]
        blocked = session.exec(
            select(Suppression.value).where(col(Suppression.value).in_((new, "@" + domain)))
        ).first()
        if blocked is not None:
            raise OutreachError(
                f"{new} is suppressed ({blocked})",
                field=field,
                hint=f"`outreach unsuppress {blocked}` first, if that is right",
            )
        reactivated = prospect.status != "active"
        prospect.email, prospect.domain = new, domain
        prospect.status, prospect.updated_at = "active", now  # a new address has not bounced
        session.add(prospect)
        session.add(
            Event(
                prospect_id=_id(prospect),
                kind="email_changed",
                reason=f"{old} -> {new}",
                data={"old": old, "new": new},
                occurred_at=now,
            )
        )
        live = len(live_enrollments(session, _id(prospect)))
        return EmailChange(old, new, live, reactivated)


def _calendar(ws: Workspace, sender: str, timezone: str | None) -> planner.SendingCalendar:
    """The sender's calendar; a mailbox since removed from the config plans by the defaults."""
    box = next((b for b in ws.config.mailboxes if b.email == sender), None)
    if box is None:
        box = Mailbox(name=sender, email=sender)
    return ws.config.calendar(box, timezone)


def stop_for_bounce(
    session: Session,
    message: Message,
    reason: str,
    now: datetime,
    data: dict[str, object] | None = None,
) -> None:
    """A hard bounce: the address is dead. Mark it invalid and stop every live enrollment.
    ``data`` (a bounce report's Message-ID and headers) is kept on the event."""
    prospect = session.get(Prospect, message.prospect_id)
    assert prospect is not None
    prospect.status = "invalid"
    prospect.updated_at = now
    session.add(prospect)
    for enrollment in live_enrollments(session, _id(prospect)):
        end_enrollment(session, enrollment, "bounced", reason, now)
    session.add(
        Event(
            prospect_id=_id(prospect),
            enrollment_id=message.enrollment_id,
            message_id=message.id,
            kind="bounce",
            reason="hard",
            data={"smtp": reason, **(data or {})},
            occurred_at=now,
        )
    )


def step_done(
    ws: Workspace, session: Session, message: Message, now: datetime, rng: random.Random
) -> None:
    """The message's step is done (sent, task done or skipped): if its enrollment is still
    active at that step, plan the next one. A reply or stop meanwhile leaves it ended."""
    skipped = None
    if message.state == "skipped":  # "skipped by the rep (...)", or "not done in time"
        why = message.error or "not done"
        sep = " " if why.startswith("skipped") else " skipped: "
        skipped = f"{message.step_name}{sep}{why}"
    steps_done(ws, session, [(message.enrollment_id, message.step_index)], now, rng, skipped)


def steps_done(
    ws: Workspace,
    session: Session,
    done: list[tuple[int, int]],
    now: datetime,
    rng: random.Random,
    skipped: str | None = None,
) -> None:
    """Several (enrollment, step) done at once: each enrollment still active at that step
    plans its next one. ``skipped``: why the step was not done (one skipped task).

    The common case, a next step to plan, is read and written with Core statements for the
    whole batch (it follows every message sent); an enrollment that finishes goes through
    :func:`advance`, which ends it and hands it over."""
    if not done:
        return
    session.flush()  # what the session changed before comes first
    conn = session.connection()
    e, p = _enrollments_t.c, _prospects_t.c
    rows = {
        r.id: r
        for r in conn.execute(
            sa_select(e.id, e.state, e.step_index, e.sequence, e.sender, p.timezone)
            .join_from(_enrollments_t, _prospects_t, e.prospect_id == p.id)
            .where(e.id.in_([enrollment_id for enrollment_id, _ in done]))
        )
    }
    planned: list[dict[str, Any]] = []
    for enrollment_id, step_index in done:
        row = rows.get(enrollment_id)
        if row is None or row.state != "active" or row.step_index != step_index:
            continue  # a reply or a stop came first: it stays ended
        sequence = ws.sequences[row.sequence]
        following = step_index + 1
        if following < len(sequence.steps):
            drawn, due = _plan_step(ws, sequence, following, row.sender, row.timezone, now, rng)
            planned.append(
                {
                    "row": enrollment_id,
                    "at": step_index,
                    "following": following,
                    "now": now,
                    "drawn": drawn,
                    "due": due,
                }
            )
            continue
        enrollment = session.get(Enrollment, enrollment_id)
        assert enrollment is not None
        advance(ws, session, enrollment, now, rng, skipped=skipped)
    _PLAN_NEXT.many(conn, planned)
    expire_loaded(
        session,
        Enrollment,
        {row["row"] for row in planned},
        ["step_index", "updated_at", "wait_drawn", "due_at"],
    )


def _plan_step(
    ws: Workspace,
    sequence: Sequence,
    index: int,
    sender: str,
    timezone: str | None,
    now: datetime,
    rng: random.Random,
) -> tuple[int, datetime]:
    """Step ``index`` of ``sequence`` planned from ``now``: its random wait, drawn once and
    kept, and when it falls due in the sender's calendar at the prospect's time zone."""
    step = sequence.steps[index]
    drawn = step.wait.draw(rng)
    return drawn, planner.plan_due(now, step.wait, drawn, _calendar(ws, sender, timezone))


def _plan_next() -> Any:
    e = _enrollments_t.c
    return (
        update(_enrollments_t)
        .where(e.id == bindparam("row"), e.state == "active", e.step_index == bindparam("at"))
        .values(
            step_index=bindparam("following"),
            updated_at=bindparam("now"),
            wait_drawn=bindparam("drawn"),
            due_at=bindparam("due"),
        )
    )


_PLAN_NEXT = Prepared(_plan_next)  # after every message sent: compiled once


FINISHED = "every step done"
LAST_STEP_SKIPPED = "last step "  # + "linkedin skipped by the rep (no LinkedIn URL)"


def advance(
    ws: Workspace,
    session: Session,
    enrollment: Enrollment,
    now: datetime,
    rng: random.Random,
    *,
    skipped: str | None = None,
) -> None:
    """The step is done: plan the next one, or finish and hand over to the next sequence.
    ``skipped`` says why the step was not done (a task skipped): a sequence whose last step
    was skipped still ends, and moves on, but its end reason says so, not "every step done"."""
    sequence = ws.sequences[enrollment.sequence]
    enrollment.step_index += 1
    enrollment.updated_at = now
    prospect = session.get(Prospect, enrollment.prospect_id)
    assert prospect is not None
    if enrollment.step_index < len(sequence.steps):
        enrollment.wait_drawn, enrollment.due_at = _plan_step(
            ws,
            sequence,
            enrollment.step_index,
            enrollment.sender,
            prospect.timezone,
            now,
            rng,
        )
        session.add(enrollment)
        return
    reason = LAST_STEP_SKIPPED + skipped if skipped else FINISHED
    end_enrollment(session, enrollment, "finished", reason, now)
    follow = sequence.next
    if follow is None or follow.sequence not in ws.sequences:
        return
    # The audience rules: an enrollment that reached "finished" had no reply and no bounce
    # (either would have ended it), so "no_reply" and "not_bounced" hold by construction;
    # "opened" and "clicked" ask what people (not machines) did with its emails.
    missed = _audience_missed(session, enrollment, follow.audience)
    if missed is not None:
        session.add(
            Event(
                prospect_id=_id(prospect),
                enrollment_id=enrollment.id,
                kind="next_skipped",
                reason=f"{sequence.name} -> {follow.sequence}: not {missed}",
                data={"audience": list(follow.audience)},
                occurred_at=now,
            )
        )
        return
    taken = session.exec(
        select(Enrollment).where(
            Enrollment.prospect_id == prospect.id, Enrollment.sequence == follow.sequence
        )
    ).first()
    if taken is not None:
        return
    first = ws.sequences[follow.sequence].steps[0]
    cal = _calendar(ws, enrollment.sender, prospect.timezone)
    drawn = follow.wait.draw(rng)
    start = planner.add_wait(now, drawn, follow.wait.unit, cal)
    first_drawn = first.wait.draw(rng)
    session.add(
        Enrollment(
            prospect_id=_id(prospect),
            sequence=follow.sequence,
            sender=enrollment.sender,
            state="active",
            step_index=0,
            wait_drawn=first_drawn,
            due_at=planner.plan_due(start, first.wait, first_drawn, cal),
            enrolled_at=now,
            updated_at=now,
            previous_id=enrollment.id,
        )
    )
    session.add(
        Event(
            prospect_id=_id(prospect),
            enrollment_id=enrollment.id,
            kind="handoff",
            reason=f"{sequence.name} -> {follow.sequence}",
            occurred_at=now,
        )
    )


def _audience_missed(session: Session, enrollment: Enrollment, rules: list[str]) -> str | None:
    """The first tracked audience rule (``opened``, ``clicked``) the enrollment does not meet:
    a person's open or click of one of its emails. A click counts as an open (images may be
    blocked, the link was still followed); a machine's (scanners.py) counts for neither."""
    wanted = [rule for rule in rules if rule in TRACKED_RULES]
    if not wanted:
        return None
    kinds = set(
        session.exec(
            select(Event.kind).where(
                Event.prospect_id == enrollment.prospect_id,  # the indexed column first
                Event.enrollment_id == enrollment.id,
                col(Event.kind).in_(("open", "click")),
                Event.reason == "human",
            )
        )
    )
    for rule in wanted:
        if (rule == "opened" and not kinds) or (rule == "clicked" and "click" not in kinds):
            return rule
    return None


@dataclass
class MarkResult:
    email: str
    reply_class: str
    was: str
    at: datetime


def mark_reply(store: Store, email: str, reply_class: str, now: datetime) -> MarkResult:
    """A rep corrects the class of the prospect's latest reply; the next A/B review uses it.

    The correction is kept on the reply event (with what the rules had said) and recorded as
    an event of its own.
    """
    if reply_class not in REPLY_CLASSES:
        raise OutreachError(
            f"unknown reply class '{reply_class}'",
            field="--mark",
            hint="one of " + ", ".join(REPLY_CLASSES),
        )
    with store.session() as session:
        prospect = find_prospect(session, email)
        events = session.exec(
            select(Event).where(Event.prospect_id == _id(prospect)).order_by(col(Event.id).desc())
        ).all()
        reply = next((e for e in events if reply_class_of(e) is not None), None)
        if reply is None:
            raise NotFound(
                f"no reply from {prospect.email} to mark",
                hint=f"record one with `outreach stop {prospect.email} --reason replied`",
            )
        was = reply_class_of(reply) or "neutral"
        first = reply.data.get("classified_as", was)
        reply.data = {**reply.data, "class": reply_class, "classified_as": first}
        if reply_class == "unsubscribe":  # they asked to be removed: as if the rules had seen it
            suppress_in(session, suppression_value(prospect.email), "unsubscribed", now)
        if reply.kind == "reply":
            reply.reason = reply_class
        session.add(reply)
        session.add(
            Event(
                prospect_id=_id(prospect),
                kind="mark",
                reason=reply_class,
                data={"event": reply.id, "was": was},
                occurred_at=now,
            )
        )
        return MarkResult(prospect.email, reply_class, was, reply.occurred_at)


# ------------------------------------------------------------ sequences paused by hand


def paused_sequences(session: Session) -> list[str]:
    """The sequences paused by hand: the claim skips them (nothing sent, no task created)."""
    return list(session.exec(select(SequencePause.sequence)))


def pause_sequence(ws: Workspace, name: str, now: datetime, reason: str | None = None) -> str:
    """Pause a sequence: nothing of it is sent or becomes a task until it is resumed; due
    times stay as they are, so they go out in order (within the limits) after the resume."""
    sequence = ws.sequence(name)
    with ws.store.session() as session:
        if session.get(SequencePause, sequence.name) is not None:
            return f"sequence {sequence.name} is already paused"
        session.add(SequencePause(sequence=sequence.name, reason=reason, paused_at=now))
        waiting = _live_count(session, Enrollment.sequence == sequence.name)
    return (
        f"sequence {sequence.name} paused: {waiting} live enrollment(s) wait "
        f"(`outreach sequence resume {sequence.name}`)"
    )


def resume_sequence(ws: Workspace, name: str, now: datetime) -> str:
    """Resume a paused sequence; what fell due meanwhile goes out in due order."""
    with ws.store.session() as session:
        pause = session.get(SequencePause, name.strip())
        if pause is None:
            ws.sequence(name)  # an unknown name is one line naming the known ones
            return f"sequence {name} is not paused"
        session.delete(pause)
        due = _live_count(
            session,
            Enrollment.sequence == pause.sequence,
            Enrollment.state == "active",
            col(Enrollment.due_at) <= now,
        )
    return f"sequence {pause.sequence} resumed: {due} due now go out in due order"


def _live_count(session: Session, *where: Any) -> int:
    return session.exec(
        select(func.count())
        .select_from(Enrollment)
        .where(*where, col(Enrollment.state).in_(LIVE_STATES))
    ).one()


# ------------------------------------------------------------------- a rep leaves


@dataclass
class ReassignResult:
    source: str
    target: str
    enrollments: int
    messages: int  # retries and open tasks that moved with them
    by_sequence: dict[str, int]


def reassign(
    ws: Workspace, source: str, target: str, now: datetime, sequence: str | None = None
) -> ReassignResult:
    """Move the live enrollments of mailbox ``source`` (which may be gone from the config) to
    the configured mailbox ``target``, with their retries and open tasks.

    Their due times stay. The next sequences (reminder, network) are created from the
    enrollment's sender, so they follow too. What was already sent keeps its sender: a "Re:"
    step after the change goes in the same thread (In-Reply-To and References of the earlier
    messages, "Re: " + the subject the prospect got) from the new sender, quoting the earlier
    message under the name it was sent with.
    """
    try:
        old = normalize_email(source)
    except ValueError as exc:
        raise OutreachError(f"'{source}' is not an address: {exc}", field="--from") from None
    box = ws.config.mailbox(target, field="--to")
    if old == box.email:
        raise OutreachError("--from and --to are the same mailbox", field="--to")
    if sequence is not None:
        sequence = ws.sequence(sequence).name
    with ws.store.session() as session:
        query = select(Enrollment).where(
            Enrollment.sender == old, col(Enrollment.state).in_(LIVE_STATES)
        )
        if sequence is not None:
            query = query.where(Enrollment.sequence == sequence)
        enrollments = list(session.exec(query.with_for_update()))
        ids = [e.id for e in enrollments]
        moved_messages = 0
        by_sequence: dict[str, int] = {}
        for enrollment in enrollments:
            enrollment.sender = box.email
            enrollment.updated_at = now
            session.add(enrollment)
            by_sequence[enrollment.sequence] = by_sequence.get(enrollment.sequence, 0) + 1
        if ids:
            # A retry not yet sent and an open task belong to the new sender now. A message in
            # flight (claimed, sending) is the old mailbox's to finish and record.
            for message in session.exec(
                select(Message).where(
                    col(Message.enrollment_id).in_(ids),
                    col(Message.state).in_(("retry", "task")),
                )
            ):
                message.sender = box.email
                session.add(message)
                moved_messages += 1
            for enrollment in enrollments:  # in each prospect's history
                session.add(
                    Event(
                        prospect_id=enrollment.prospect_id,
                        enrollment_id=enrollment.id,
                        kind="reassign",
                        reason=f"{old} -> {box.email}",
                        occurred_at=now,
                    )
                )
    return ReassignResult(old, box.email, len(ids), moved_messages, by_sequence)


def orphaned_senders(ws: Workspace) -> dict[str, int]:
    """Senders of live enrollments that are no longer configured mailboxes, with counts."""
    from outreach.ab.registry import _database_exists

    if not _database_exists(ws):  # asking would create the SQLite file (validate must not)
        return {}
    configured = [b.email for b in ws.config.mailboxes]
    with ws.store.session() as session:
        query = (
            select(Enrollment.sender, func.count())
            .where(col(Enrollment.state).in_(LIVE_STATES))
            .group_by(Enrollment.sender)
        )
        if configured:
            query = query.where(col(Enrollment.sender).not_in(configured))
        return {sender: count for sender, count in session.exec(query)}


def orphan_problems(ws: Workspace) -> list[ConfigError]:
    """One problem per removed mailbox that still has live enrollments: nothing is silently
    orphaned. ``validate``, ``send`` and ``run`` refuse to go on with them."""
    first = ws.config.mailboxes[0].email if ws.config.mailboxes else "EMAIL"
    return [
        ConfigError(
            f"mailbox {sender} is not in the config but has {count} live enrollment(s)",
            file=ws.config.path,
            field="[[mailboxes]]",
            hint=f"move them with `outreach reassign --from {sender} --to {first}`, or put "
            "the mailbox back",
        )
        for sender, count in sorted(orphaned_senders(ws).items())
    ]


def check_no_orphans(ws: Workspace) -> None:
    """Raise the orphan problems (``send`` and ``run`` call it before they claim anything)."""
    problems = orphan_problems(ws)
    if len(problems) == 1:
        raise problems[0]
    if problems:
        raise Problems(list(problems))
