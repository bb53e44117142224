"""The claim: a mailbox's next due steps taken from the queue, in one short transaction.

For each due enrollment of the mailbox, oldest first: one whose sequence or step is gone, or
whose prospect is suppressed or dead, ends; one whose window is closed is moved to its next
opening; a LinkedIn or manual step becomes a task for the rep; an email step gets its outbox
row (its variants assigned once and for good) claimed under this process's lease, and counts
against the mailbox's day. Nothing is rendered here: the transaction holds the write lock, and
templates are user code (:mod:`outreach.compose` renders after the commit).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import update
from sqlmodel import Session, col, select

from outreach import cluster, lifecycle
from outreach.abassign import Assigner
from outreach.compose import Composed, Earlier, Recipient, starts_thread
from outreach.config import Mailbox
from outreach.engine import end_enrollment
from outreach.errors import TemplateError
from outreach.mail import make_message_id
from outreach.models import Enrollment, Message, MessageState, Prospect, Suppression
from outreach.pacing import Pacing, Paused, Wait
from outreach.sequences import Sequence
from outreach.workspace import Workspace

BATCH = 20  # due enrollments read per query
CLAIM_BATCH = 10  # messages claimed per transaction when the mailbox has no gap to keep
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
                result.wait = room
                return result
            if room is None:
                return result
            while len(result.claimed) < room.count:
                # Every candidate not claimed leaves the due set (rescheduled to its window,
                # turned into a task, held, or ended), so this loop ends, and prospects whose
                # window is closed never hold back those whose window is open.
                candidates = session.exec(
                    select(Enrollment.id)
                    .where(
                        Enrollment.sender == box.email,
                        Enrollment.state == "active",
                        col(Enrollment.due_at) <= now,
                    )
                    .order_by(col(Enrollment.due_at), col(Enrollment.id))
                    .limit(BATCH)
                    .with_for_update(skip_locked=True)
                ).all()
                if not candidates:
                    break
                for enrollment_id in candidates:
                    enrollment = session.get(Enrollment, enrollment_id)
                    assert enrollment is not None
                    claimed = self._claim_one(session, box, enrollment, now, result)
                    if claimed is not None:
                        self.pacing.count_send(session, room.state, now)
                        result.claimed.append(claimed)
                        if len(result.claimed) == room.count:
                            break
                session.flush()
        return result

    def _claim_one(
        self,
        session: Session,
        box: Mailbox,
        enrollment: Enrollment,
        now: datetime,
        result: ClaimResult,
    ) -> Claimed | None:
        prospect = session.get(Prospect, enrollment.prospect_id)
        assert prospect is not None
        sequence = self.ws.sequences.get(enrollment.sequence)
        if sequence is None or enrollment.step_index >= len(sequence.steps):
            end_enrollment(session, enrollment, "stopped", "sequence or step no longer exists", now)
            return None
        if prospect.status != "active" or _suppressed(session, prospect.email):
            end_enrollment(session, enrollment, "stopped", "suppressed", now)
            return None
        cal = self.ws.config.calendar(box, prospect.timezone)
        if not cal.is_open(now):
            enrollment.due_at = cal.next_open(now)
            session.add(enrollment)
            return None
        index = enrollment.step_index
        step = sequence.steps[index]
        who = self.recipient_of(prospect, box)
        try:
            if not step.is_email:
                self._new_task(session, box, sequence, enrollment, prospect, who, now, result)
                return None
            message = self._claim_row(session, box, sequence, enrollment, prospect, who, now)
        except TemplateError as exc:
            _hold(session, enrollment, now, exc.one_line(), result)
            return None
        if message is None:
            _hold(session, enrollment, now, "its message is not waiting to be sent", result)
            return None
        enrollment.due_at = None  # in flight: no second claim
        enrollment.updated_at = now
        session.add(enrollment)
        assert message.id is not None and enrollment.id is not None
        return Claimed(
            message_row=message.id,
            enrollment_id=enrollment.id,
            mail_from=box.email,
            rcpt=prospect.email,
            attempts=message.attempts,
            sequence=sequence.name,
            step=step.name,
            step_index=index,
            message_id=message.message_id or "",
            subject_variant=message.subject_variant,
            body_variant=message.body_variant or "",
            recipient=who,
            thread=[] if starts_thread(step) else _thread(session, sequence, enrollment, index),
        )

    def _claim_row(
        self,
        session: Session,
        box: Mailbox,
        sequence: Sequence,
        enrollment: Enrollment,
        prospect: Prospect,
        who: Recipient,
        now: datetime,
    ) -> Message | None:
        """The step's outbox row, claimed: made on the first attempt (its variants assigned
        once, for good), claimed again after a retry. None if it is not waiting."""
        index = enrollment.step_index
        lease_until = now + self.member.lease
        message = session.exec(
            select(Message).where(
                Message.enrollment_id == enrollment.id, Message.step_index == index
            )
        ).first()
        if message is not None:
            if not lifecycle.claim(session, _id(message), self.member.id, now, lease_until):
                return None
            session.refresh(message)
            return message
        step = sequence.steps[index]
        template = self.ws.templates.get(step.template)
        message = _outbox_row(box, sequence, enrollment, prospect, who.language, now)
        message.message_id = make_message_id(box.email)
        if starts_thread(step):
            message.subject_variant = self.assigner.assign(
                sequence.name, index, step.name, "subject", template, who.language, who.persona
            )
        message.body_variant = self.assigner.assign(
            sequence.name, index, step.name, "body", template, who.language, who.persona
        )
        lifecycle.new_email(session, message, self.member.id, lease_until)
        session.flush()
        return message

    def _new_task(
        self,
        session: Session,
        box: Mailbox,
        sequence: Sequence,
        enrollment: Enrollment,
        prospect: Prospect,
        who: Recipient,
        now: datetime,
        result: ClaimResult,
    ) -> None:
        index = enrollment.step_index
        step = sequence.steps[index]
        template = self.ws.templates.get(step.template)
        variant = self.assigner.assign(
            sequence.name, index, step.name, "body", template, who.language, who.persona
        )
        skip_at = now + timedelta(days=self.ws.config.settings.tasks.skip_after_days)
        row = _outbox_row(box, sequence, enrollment, prospect, who.language, now)
        row.body_variant = variant
        lifecycle.new_task(session, row, skip_at)
        session.flush()
        result.tasks.append(NewTask(_id(row), box, sequence, index, variant, who))
        enrollment.due_at = None  # the sequence waits for the rep (or the skip time)
        enrollment.updated_at = now
        session.add(enrollment)


def hold(ws: Workspace, claim: Claimed, member: cluster.Member, now: datetime) -> None:
    """A claimed message that cannot be composed goes back, its attempt not counted; the
    prospect waits HOLD_FOR, then it is tried again (the copy may be fixed by then). Never
    a message with a hole in it, never a sequence ended for a problem in the copy."""
    with ws.store.engine.begin() as conn:
        lifecycle.release(conn, now, ids=[claim.message_row], owner=member.id)
        e = lifecycle.enrollments_t.c
        conn.execute(
            update(lifecycle.enrollments_t)
            .where(e.id == claim.enrollment_id, e.state == "active")
            .values(due_at=now + HOLD_FOR, updated_at=now)
        )


def _hold(
    session: Session, enrollment: Enrollment, now: datetime, problem: str, result: ClaimResult
) -> None:
    enrollment.due_at = now + HOLD_FOR
    session.add(enrollment)
    result.held[problem] = result.held.get(problem, 0) + 1


def _id(row: Prospect | Enrollment | Message) -> int:
    assert row.id is not None
    return row.id


def _outbox_row(
    box: Mailbox,
    sequence: Sequence,
    enrollment: Enrollment,
    prospect: Prospect,
    language: str,
    now: datetime,
) -> Message:
    """A new outbox row for the enrollment's current step."""
    step = sequence.steps[enrollment.step_index]
    return Message(
        enrollment_id=_id(enrollment),
        prospect_id=_id(prospect),
        sequence=sequence.name,
        step_index=enrollment.step_index,
        step_name=step.name,
        channel=step.channel,
        sender=box.email,
        language=language,
        persona=prospect.persona,
        created_at=now,
    )


def _thread(
    session: Session, sequence: Sequence, enrollment: Enrollment, index: int
) -> list[Earlier]:
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
            Message.enrollment_id == enrollment.id,
            col(Message.step_index).in_(steps),
            Message.state == MessageState.SENT,
        )
        .order_by(col(Message.step_index))
    )
    return [
        Earlier(m.message_id or "", m.subject or "", m.body or "", m.sent_at or m.created_at)
        for m in rows
    ]


def _suppressed(session: Session, email: str) -> bool:
    domain = "@" + email.rpartition("@")[2]
    return (
        session.exec(
            select(Suppression.id).where(col(Suppression.value).in_((email, domain)))
        ).first()
        is not None
    )
