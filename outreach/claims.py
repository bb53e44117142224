"""The claim: a mailbox's next due steps taken from the queue, in one short transaction.

For each due enrollment of the mailbox, oldest first: one whose sequence or step is gone, or
whose prospect is suppressed or dead, ends; one whose window is closed is moved to its next
opening; a LinkedIn or manual step becomes a task for the rep; an email step gets its outbox
row (its variants assigned once and for good) claimed under this process's lease, and counts
against the mailbox's day. Nothing is rendered here: the transaction holds the write lock, and
templates are user code (:mod:`outreach.compose` renders after the commit).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, and_, or_, update
from sqlalchemy import select as core_select
from sqlmodel import Session, col, select

from outreach import cluster, lifecycle, reputation
from outreach.ab.assign import Assigner
from outreach.compose import Composed, Earlier, Recipient, starts_thread
from outreach.config import Mailbox
from outreach.errors import TemplateError
from outreach.mail.message import make_message_id
from outreach.models import Enrollment, Message, MessageState, Prospect, Suppression
from outreach.pacing import Pacing, Paused, Wait
from outreach.prospect_csv import PROSPECT_FIELDS
from outreach.sequences import Sequence
from outreach.sequencing import end_enrollment, paused_sequences
from outreach.workspace import Workspace

enrollments_t = Enrollment.__table__  # type: ignore[attr-defined]
prospects_t = Prospect.__table__  # type: ignore[attr-defined]
suppressions_t = Suppression.__table__  # type: ignore[attr-defined]
BATCH = 50  # due enrollments read per query
CLAIM_BATCH = 50  # messages claimed per transaction when the mailbox has no gap to keep
HOLD_FOR = timedelta(minutes=15)  # a message held for a template problem is tried again then


@dataclass
class Claimed:
    """An email claimed for sending: its outbox row, and what composing it needs."""

    message_row: int
    enrollment_id: int
    mail_from: str
    rcpt: str
    attempts: int
    sequence: str
    step: str
    step_index: int
    message_id: str
    subject_variant: str | None
    body_variant: str
    recipient: Recipient
    thread: list[Earlier]
    composed: Composed | None = None  # once composed, after the claim's commit
    summary: dict[str, str] = field(default_factory=dict)


@dataclass
class NewTask:
    """A task row made by the claim, whose text is rendered after the commit."""

    message_row: int
    box: Mailbox
    sequence: Sequence
    step_index: int
    body_variant: str
    recipient: Recipient


@dataclass
class ClaimResult:
    """What one claim transaction did."""

    claimed: list[Claimed] = field(default_factory=list)
    tasks: list[NewTask] = field(default_factory=list)
    held: dict[str, int] = field(default_factory=dict)
    paused: str | None = None
    wait: Wait | None = None


class Claimer:
    """Claims a mailbox's due work for one process."""

    def __init__(
        self,
        ws: Workspace,
        pacing: Pacing,
        assigner: Assigner,
        member: cluster.Member,
        recipient_of: Callable[[Prospect, Mailbox], Recipient],
    ) -> None:
        self.ws = ws
        self.pacing = pacing
        self.assigner = assigner
        self.member = member
        self.recipient_of = recipient_of

    def claim(self, box: Mailbox, now: datetime, limit: int | None = None) -> ClaimResult:
        """Claim up to a small batch of the mailbox's due emails (creating due tasks on the
        way), leased to this process; or say why nothing can go now."""
        sending = self.ws.config.settings.sending
        size = limit or (CLAIM_BATCH if sending.max_gap_seconds <= 0 else 1)
        result = ClaimResult()
        with self.ws.store.session() as session:
            room = self.pacing.room(session, box, now, size)
            if isinstance(room, Paused):
                result.paused = room.reason
                return result
            if isinstance(room, Wait):
                # The gap after the last message is nothing to wait for.
                if _anything_due(session.connection(), box.email, now):
                    result.wait = room
                return result
            if room is None:
                return result
            conn = session.connection()
            paused = paused_sequences(session)
            to_domain: Counter[str] = Counter()  # picked in this claim, per recipient domain
            while len(result.claimed) < room.count:
                # Every candidate not claimed leaves the due set (rescheduled to its window,
                # turned into a task, held, or ended), so this loop ends, and prospects whose
                # window is closed never hold back those whose window is open.
                due = _due(conn, box.email, now, paused)
                if not due:
                    break
                dead = _suppressed_among(conn, [row.email for row in due])
                waiting = _messages_of(conn, due)
                fresh: list[tuple[Any, Sequence, Recipient]] = []
                for row in due:
                    if len(result.claimed) + len(fresh) == room.count:
                        break
                    verdict = self._triage(session, box, row, dead, now, result)
                    if verdict is None:
                        continue
                    sequence, who = verdict
                    domain = row.email.rpartition("@")[2]
                    if reputation.defer_if_domain_full(
                        session, self.ws, box, row, now, to_domain[domain]
                    ):
                        continue  # that company's cap for today: the next sending day
                    to_domain[domain] += 1
                    existing = waiting.get(row.id)
                    if existing is None:
                        fresh.append((row, sequence, who))
                    elif claimed := self._claim_again(session, box, row, sequence, who, now):
                        result.claimed.append(claimed)
                    else:
                        _hold_row(conn, row.id, now, "its message is not waiting", result)
                result.claimed.extend(self._claim_new(session, box, fresh, now, result))
                in_flight = [c.enrollment_id for c in result.claimed]
                if in_flight:  # no second claim while in flight (nor in this loop)
                    conn.execute(
                        update(enrollments_t)
                        .where(enrollments_t.c.id.in_(in_flight), enrollments_t.c.due_at <= now)
                        .values(due_at=None, updated_at=now, held_reason=None, held_at=None)
                    )
                session.flush()
            self.pacing.count_sends(session, room.state, now, len(result.claimed))
        return result

    def claim_tasks(self, box: Mailbox, now: datetime) -> ClaimResult:
        """Make the mailbox's due LinkedIn and manual steps tasks now, without its pace (a
        task takes no place in the day's limit): what a rep asking `outreach tasks` sees is
        what is due, not what the last send pass made."""
        result = ClaimResult()
        steps = [
            (sequence.name, index)
            for sequence in self.ws.sequences.values()
            for index, step in enumerate(sequence.steps)
            if not step.is_email
        ]
        if not steps:
            return result
        with self.ws.store.session() as session:
            conn = session.connection()
            paused = paused_sequences(session)
            while due := _due(conn, box.email, now, paused, steps):
                dead = _suppressed_among(conn, [row.email for row in due])
                for row in due:  # each one leaves the due set: a task, rescheduled, or ended
                    self._triage(session, box, row, dead, now, result)
                session.flush()
        return result

    def _triage(
        self,
        session: Session,
        box: Mailbox,
        row: Any,
        dead: set[str],
        now: datetime,
        result: ClaimResult,
    ) -> tuple[Sequence, Recipient] | None:
        """What becomes of a due enrollment: its sequence and recipient when an email is to
        be claimed for it; None when it ended, waits for its window, or became a task."""
        sequence = self.ws.sequences.get(row.sequence)
        if sequence is None or row.step_index >= len(sequence.steps):
            _end(session, row.id, "sequence or step no longer exists", now)
            return None
        if is_dead(row.status, row.email, dead):
            _end(session, row.id, "suppressed", now)
            return None
        cal = self.ws.config.calendar(box, row.timezone)
        if not cal.is_open(now):
            session.connection().execute(
                update(enrollments_t)
                .where(enrollments_t.c.id == row.id)
                .values(due_at=cal.next_open(now))
            )
            return None
        who = self.recipient_of(row, box)  # type: ignore[arg-type]
        step = sequence.steps[row.step_index]
        if not step.is_email:
            try:
                self._new_task(session, box, sequence, row, who, now, result)
            except TemplateError as exc:
                _hold_row(session.connection(), row.id, now, exc.one_line(), result)
            return None
        return sequence, who

    def _claimed(
        self,
        box: Mailbox,
        row: Any,
        sequence: Sequence,
        who: Recipient,
        message: Any,
        thread: list[Earlier],
    ) -> Claimed:
        return Claimed(
            message_row=message.id,
            enrollment_id=row.id,
            mail_from=box.email,
            rcpt=row.email,
            attempts=message.attempts,
            sequence=sequence.name,
            step=sequence.steps[row.step_index].name,
            step_index=row.step_index,
            message_id=message.message_id or "",
            subject_variant=message.subject_variant,
            body_variant=message.body_variant or "",
            recipient=who,
            thread=thread,
        )

    def _thread_of(self, session: Session, sequence: Sequence, row: Any) -> list[Earlier]:
        if starts_thread(sequence.steps[row.step_index]):
            return []
        return _thread(session, sequence, row.id, row.step_index)

    def _claim_again(
        self,
        session: Session,
        box: Mailbox,
        row: Any,
        sequence: Sequence,
        who: Recipient,
        now: datetime,
    ) -> Claimed | None:
        """A step whose row waits for another attempt (after a retry, a hold, a release)."""
        message = session.exec(
            select(Message).where(
                Message.enrollment_id == row.id, Message.step_index == row.step_index
            )
        ).one()
        assert message.id is not None
        lease_until = now + self.member.lease
        if not lifecycle.claim(session, message.id, self.member.id, now, lease_until):
            return None
        session.refresh(message)
        return self._claimed(
            box, row, sequence, who, message, self._thread_of(session, sequence, row)
        )

    def _claim_new(
        self,
        session: Session,
        box: Mailbox,
        fresh: list[tuple[Any, Sequence, Recipient]],
        now: datetime,
        result: ClaimResult,
    ) -> list[Claimed]:
        """First attempts: their rows made at once, born claimed, their variants assigned
        once and for good."""
        rows: list[dict[str, Any]] = []
        kept: list[tuple[Any, Sequence, Recipient]] = []
        for row, sequence, who in fresh:
            index = row.step_index
            step = sequence.steps[index]
            template = self.ws.templates.get(step.template)
            try:
                subject = (
                    self.assigner.assign(
                        sequence.name,
                        index,
                        step.name,
                        "subject",
                        template,
                        who.language,
                        who.persona,
                    )
                    if starts_thread(step)
                    else None
                )
                body = self.assigner.assign(
                    sequence.name, index, step.name, "body", template, who.language, who.persona
                )
            except TemplateError as exc:
                _hold_row(session.connection(), row.id, now, exc.one_line(), result)
                continue
            rows.append(
                {
                    "enrollment_id": row.id,
                    "prospect_id": row.prospect_id,
                    "sequence": sequence.name,
                    "step_index": index,
                    "step_name": step.name,
                    "channel": step.channel,
                    "sender": box.email,
                    "language": who.language,
                    "persona": who.persona,
                    "subject_variant": subject,
                    "body_variant": body,
                    "message_id": make_message_id(box.email),
                }
            )
            kept.append((row, sequence, who))
        made = lifecycle.new_emails(
            session.connection(), rows, self.member.id, now, now + self.member.lease
        )
        out = []
        for (row, sequence, who), values in zip(kept, rows, strict=True):
            message = _Row(
                made[row.id],
                1,
                values["message_id"],
                values["subject_variant"],
                values["body_variant"],
            )
            out.append(
                self._claimed(
                    box, row, sequence, who, message, self._thread_of(session, sequence, row)
                )
            )
        return out

    def _new_task(
        self,
        session: Session,
        box: Mailbox,
        sequence: Sequence,
        row: Any,
        who: Recipient,
        now: datetime,
        result: ClaimResult,
    ) -> None:
        index = row.step_index
        step = sequence.steps[index]
        template = self.ws.templates.get(step.template)
        variant = self.assigner.assign(
            sequence.name, index, step.name, "body", template, who.language, who.persona
        )
        skip_at = now + timedelta(days=self.ws.config.settings.tasks.skip_after_days)
        task = Message(
            enrollment_id=row.id,
            prospect_id=row.prospect_id,
            sequence=sequence.name,
            step_index=index,
            step_name=step.name,
            channel=step.channel,
            sender=box.email,
            language=who.language,
            persona=who.persona,
            body_variant=variant,
            created_at=now,
        )
        lifecycle.new_task(session, task, skip_at)
        session.flush()
        result.tasks.append(NewTask(_id(task), box, sequence, index, variant, who))
        # The sequence waits for the rep (or the skip time).
        session.connection().execute(
            update(enrollments_t)
            .where(enrollments_t.c.id == row.id)
            .values(due_at=None, updated_at=now)
        )


def hold(
    ws: Workspace, claim: Claimed, member: cluster.Member, now: datetime, problem: str
) -> None:
    """A claimed message that cannot be composed goes back, its attempt not counted; the
    prospect waits HOLD_FOR, then it is tried again (the copy may be fixed by then). Never
    a message with a hole in it, never a sequence ended for a problem in the copy."""
    with ws.store.engine.begin() as conn:
        if lifecycle.discard(conn, claim.message_row, member.id):
            lifecycle.uncount(conn, claim.mail_from)
        else:
            lifecycle.release(conn, now, ids=[claim.message_row], owner=member.id)
        hold_enrollment(conn, claim.enrollment_id, now, problem)


def hold_enrollment(conn: Connection, enrollment_id: int, now: datetime, problem: str) -> None:
    """The enrollment's step is held for ``problem`` (a template's file:line, a header that
    cannot be built): tried again after HOLD_FOR, and shown with the reason meanwhile
    (`status`, `schedule`, `prospect`, the daemon's log once)."""
    e = enrollments_t.c
    conn.execute(
        update(enrollments_t)
        .where(e.id == enrollment_id, e.state == "active")
        .values(due_at=now + HOLD_FOR, updated_at=now, held_reason=problem, held_at=now)
    )


@dataclass
class _Row:
    """What a claim reads of a message row it has just inserted."""

    id: int
    attempts: int
    message_id: str | None
    subject_variant: str | None
    body_variant: str | None


def is_dead(status: str, email: str, suppressed: set[str]) -> bool:
    """A prospect nothing may be sent to: an address proven dead, or one on the suppression
    list by itself or by its ``@domain`` (the claim ends its enrollment; the forecast skips
    it)."""
    return status != "active" or email in suppressed or "@" + email.rpartition("@")[2] in suppressed


def _anything_due(conn: Connection, sender: str, now: datetime) -> bool:
    """Whether the mailbox has a due enrollment at all (read only, nothing locked)."""
    e = enrollments_t.c
    due = core_select(e.id).where(e.sender == sender, e.state == "active", e.due_at <= now)
    return conn.execute(due.limit(1)).first() is not None


def _due(
    conn: Connection,
    sender: str,
    now: datetime,
    paused: list[str],
    steps: list[tuple[str, int]] | None = None,
) -> list[Any]:
    """The mailbox's due enrollments, oldest first, with their prospects, locked (skipping
    those another transaction holds); only those at one of ``steps`` (sequence, index) when
    given."""
    e, p = enrollments_t.c, prospects_t.c
    at_steps = (
        [or_(*(and_(e.sequence == name, e.step_index == index) for name, index in steps))]
        if steps is not None
        else []
    )
    return list(
        conn.execute(
            core_select(
                e.id,
                e.prospect_id,
                e.sequence,
                e.step_index,
                p.email,
                p.status,
                p.fields,
                *(p[name] for name in PROSPECT_FIELDS),
            )
            .join(prospects_t, p.id == e.prospect_id)
            .where(e.sender == sender, e.state == "active", e.due_at <= now)
            # A sequence paused by hand sends nothing and creates no task; its due times wait.
            .where(*([e.sequence.not_in(paused)] if paused else []), *at_steps)
            .order_by(e.due_at, e.id)
            .limit(BATCH)
            .with_for_update(skip_locked=True, of=enrollments_t)
        ).all()
    )


def _suppressed_among(conn: Connection, emails: list[str]) -> set[str]:
    """Which of these addresses, or their ``@domain``, are on the suppression list."""
    values = set(emails) | {"@" + email.rpartition("@")[2] for email in emails}
    s = suppressions_t.c
    return set(conn.execute(core_select(s.value).where(s.value.in_(values))).scalars())


def _messages_of(conn: Connection, due: list[Any]) -> dict[int, int]:
    """The existing row of each due enrollment's current step, by enrollment."""
    m = lifecycle.messages_t.c
    steps = {row.id: row.step_index for row in due}
    found = conn.execute(
        core_select(m.id, m.enrollment_id, m.step_index).where(m.enrollment_id.in_(list(steps)))
    ).all()
    return {r.enrollment_id: r.id for r in found if steps[r.enrollment_id] == r.step_index}


def _end(session: Session, enrollment_id: int, reason: str, now: datetime) -> None:
    enrollment = session.get(Enrollment, enrollment_id)
    assert enrollment is not None
    end_enrollment(session, enrollment, "stopped", reason, now)


def _hold_row(
    conn: Connection, enrollment_id: int, now: datetime, problem: str, result: ClaimResult
) -> None:
    hold_enrollment(conn, enrollment_id, now, problem)
    result.held[problem] = result.held.get(problem, 0) + 1


def _id(row: Message) -> int:
    assert row.id is not None
    return row.id


def _thread(session: Session, sequence: Sequence, enrollment_id: int, index: int) -> list[Earlier]:
    """The sent messages of the thread step ``index`` replies in, oldest first."""
    root = sequence.thread_root(index)
    steps = [
        i for i in range(index) if sequence.steps[i].is_email and sequence.thread_root(i) == root
    ]
    if not steps:
        return []
    rows = session.exec(
        select(Message)
        .where(
            Message.enrollment_id == enrollment_id,
            col(Message.step_index).in_(steps),
            Message.state == MessageState.SENT,
        )
        .order_by(col(Message.step_index))
    )
    return [
        Earlier(
            m.message_id or "", m.subject or "", m.body or "", m.sent_at or m.created_at, m.sender
        )
        for m in rows
    ]
