"""What an SMTP answer does: to the message (through :mod:`outreach.lifecycle`), to its
enrollment, and to the mailbox. One handler per kind of :class:`outreach.mail.smtp.Outcome`."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlmodel import Session, col, select

from outreach import lifecycle, reputation
from outreach.claims import Claimed
from outreach.mail.smtp import Outcome
from outreach.models import Enrollment, MailboxState, Message, Prospect
from outreach.sequencing import end_enrollment, steps_done, stop_for_bounce
from outreach.workspace import Workspace

MAX_RETRY_DELAY = timedelta(hours=6)


@dataclass
class Report:
    """What one dispatch run did."""

    sent: list[dict[str, str]] = field(default_factory=list)
    retried: int = 0
    bounced: int = 0
    failed: int = 0
    cancelled: int = 0
    tasks_created: int = 0
    tasks_skipped: int = 0
    unknown: int = 0
    settled: int = 0  # unknown messages found in a Sent folder, now marked sent
    paused: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # a mailbox that could not run at all
    # Messages that could not be built (a template problem), by problem: held, not sent, and
    # tried again after claims.HOLD_FOR; their sequences go on once the template is fixed.
    held: dict[str, int] = field(default_factory=dict)


class Recorder:
    """Writes down what SMTP said and moves the sequence on accordingly."""

    def __init__(
        self, ws: Workspace, rng: random.Random, on_event: Callable[[str], None] | None = None
    ) -> None:
        self.ws = ws
        self.rng = rng
        self.sending = ws.config.settings.sending
        self.on_event = on_event

    def event(self, line: str) -> None:
        """Tell the operator at once (the CLI prints it, the daemon logs it)."""
        if self.on_event is not None:
            self.on_event(line)

    def record(self, done: list[tuple[Claimed, Outcome]], now: datetime, report: Report) -> None:
        """Record the answers of several messages in one transaction."""
        if not done:
            return
        with self.ws.store.session() as session:
            sent = [(claim, outcome) for claim, outcome in done if outcome.kind == "sent"]
            self._sent(session, sent, now, report)  # Core statements for the whole batch
            others = [(claim, outcome) for claim, outcome in done if outcome.kind != "sent"]
            # What the other answers' handlers need, read at once rather than row by row.
            # Held in a list: the session's identity map only keeps objects someone holds.
            ids = [claim.enrollment_id for claim, _ in others]
            enrollments = (
                list(session.exec(select(Enrollment).where(col(Enrollment.id).in_(ids))))
                if ids
                else []
            )
            people = [e.prospect_id for e in enrollments]
            prospects = (
                list(session.exec(select(Prospect).where(col(Prospect.id).in_(people))))
                if people
                else []
            )
            for claim, outcome in others:
                handler = getattr(self, f"_{outcome.kind}")
                handler(session, claim, outcome, now, report)
            del enrollments, prospects

    def _sent(
        self,
        session: Session,
        sent: list[tuple[Claimed, Outcome]],
        now: datetime,
        report: Report,
    ) -> None:
        moved = lifecycle.record_sent_many(
            session, [(claim.message_row, str(outcome)) for claim, outcome in sent], now
        )
        if not moved:
            return
        for box in {claim.mail_from for claim, _ in sent}:
            state = session.get(MailboxState, box)
            if state is not None and state.unreachable:
                state.unreachable = None
                session.add(state)
        accepted = [claim for claim, _ in sent if claim.message_row in moved]
        for claim in accepted:
            report.sent.append(claim.summary)
            s = claim.summary
            self.event(
                f"sent {s['sequence']}/{s['step']} to {s['to']}: {s['subject']}  "
                f"{s['message_id']}"
                + (f"  in reply to {s['in_reply_to']}" if s["in_reply_to"] else "")
            )
        done = [(claim.enrollment_id, claim.step_index) for claim in accepted]
        steps_done(self.ws, session, done, now, self.rng)

    def _unreachable(
        self, session: Session, claim: Claimed, outcome: Outcome, now: datetime, report: Report
    ) -> None:
        # No session was opened: nothing happened to this message. The mailbox waits and says
        # why; the message goes back to the queue as it was.
        lifecycle.record_not_tried(session, claim.message_row, str(outcome), None)
        self._due_again(session, claim, now)
        state = _uncount(session, claim.mail_from)
        if state is not None:
            state.unreachable = str(outcome)
            state.next_send_at = now + timedelta(seconds=self.sending.retry_seconds)
        report.notes.append(
            f"{claim.mail_from}: {outcome}; trying again after {self.sending.retry_seconds} s"
        )
        self.event(f"{claim.mail_from}: unreachable: {outcome}")

    def _retry(
        self, session: Session, claim: Claimed, outcome: Outcome, now: datetime, report: Report
    ) -> None:
        _uncount(session, claim.mail_from)
        if claim.attempts >= self.sending.max_attempts:
            lifecycle.record_failed(session, claim.message_row, str(outcome), f"gave up: {outcome}")
            self._end(session, claim, f"undeliverable: {outcome}", now)
            report.failed += 1
            return
        delay = min(
            timedelta(seconds=self.sending.retry_seconds * 2 ** (claim.attempts - 1)),
            MAX_RETRY_DELAY,
        )
        lifecycle.record_retry(session, claim.message_row, str(outcome), now + delay)
        self._due_again(session, claim, now + delay)
        report.retried += 1
        self.event(f"retry later {claim.rcpt} ({claim.step}): {outcome}")

    def _bounce(
        self, session: Session, claim: Claimed, outcome: Outcome, now: datetime, report: Report
    ) -> None:
        lifecycle.record_bounce(session, claim.message_row, str(outcome))
        message = session.get(Message, claim.message_row)
        assert message is not None
        stop_for_bounce(session, message, str(outcome), now)
        report.bounced += 1
        self.event(f"bounced {claim.rcpt}: {outcome}")
        if paused := reputation.after_hard_bounce(session, self.sending, claim.mail_from, now):
            report.paused[claim.mail_from] = paused
            self.event(f"PAUSED mailbox {claim.mail_from}: {paused}")

    def _auth(
        self, session: Session, claim: Claimed, outcome: Outcome, now: datetime, report: Report
    ) -> None:
        # Not this message's fault: it goes back to the queue, the mailbox pauses.
        lifecycle.record_not_tried(session, claim.message_row, str(outcome), str(outcome))
        self._due_again(session, claim, now)
        state = _uncount(session, claim.mail_from)
        assert state is not None
        state.paused_reason, state.paused_at = str(outcome), now
        report.paused[claim.mail_from] = str(outcome)
        self.event(f"PAUSED mailbox {claim.mail_from}: {outcome}")

    def _failed(
        self, session: Session, claim: Claimed, outcome: Outcome, now: datetime, report: Report
    ) -> None:
        lifecycle.record_failed(session, claim.message_row, str(outcome), str(outcome))
        self._end(session, claim, f"refused: {outcome}", now)
        report.failed += 1
        self.event(f"refused {claim.rcpt}: {outcome}")

    def _due_again(self, session: Session, claim: Claimed, when: datetime) -> None:
        enrollment = session.get(Enrollment, claim.enrollment_id)
        assert enrollment is not None
        if enrollment.state == "active":
            enrollment.due_at = when
            session.add(enrollment)

    def _end(self, session: Session, claim: Claimed, reason: str, now: datetime) -> None:
        enrollment = session.get(Enrollment, claim.enrollment_id)
        assert enrollment is not None
        end_enrollment(session, enrollment, "stopped", reason, now)


def _uncount(session: Session, mailbox: str) -> MailboxState | None:
    """The claim counted a send against today's limit; it did not happen after all (and the
    gap drawn after it is forgiven). The mailbox's row, read again, for what else changes."""
    lifecycle.uncount(session, mailbox, forgive_gap=True)
    return session.get(MailboxState, mailbox, populate_existing=True)
