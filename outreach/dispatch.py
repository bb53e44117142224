"""Dispatch: claim what is due, send it once, record what happened, move the sequence on.

The order of events for one email is the guarantee:

1. **Claim** (one transaction): re-read the enrollment (still active, still due, still at this
   step), the suppression list and the mailbox's pace (paused? today's count? the gap?);
   render and build the message; write it to the outbox as ``sending`` with its Message-ID;
   count it against the mailbox. Commit.
2. **Last look**: immediately before the SMTP transaction, read the enrollment's state again;
   a reply or a stop recorded since the claim cancels the send.
3. **SMTP**.
4. **Record** (one transaction): ``sent`` with the server's reply and the next step planned;
   or a retry with backoff, a bounce, a paused mailbox.

A process that dies between 1 and 4 leaves the message ``sending``; when the next run starts
(or the claim's lease runs out) it becomes ``unknown`` and is never sent again by itself:
``outreach resolve`` settles it.

Several daemons (PostgreSQL): the claim takes a small batch at once, as ``claimed`` rows
leased to the daemon (``outreach/cluster.py``), and each becomes ``sending`` only by its
lease holder, in the transaction of the last look. A daemon that dies leaves its ``claimed``
rows to go back to the queue after the lease, and its ``sending`` row to become ``unknown``.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from email.message import EmailMessage
from typing import Any
from zoneinfo import ZoneInfo

from sqlmodel import Session, col, func, or_, select

from outreach import ab, clock, cluster, reputation
from outreach.config import Mailbox
from outreach.engine import end_enrollment, paused_sequences, step_done, stop_for_bounce
from outreach.errors import OutreachError, TemplateError
from outreach.imap import MailboxImap
from outreach.mail import (
    InvalidHeader,
    Outgoing,
    Quote,
    build_message,
    make_message_id,
    reply_subject,
)
from outreach.models import Enrollment, MailboxState, Message, Prospect, Suppression
from outreach.sender import Outcome, Transport
from outreach.sequences import Sequence
from outreach.templates import Kind, StepTemplate
from outreach.unsubscribe import make_link, secret_from_env
from outreach.workspace import Workspace

BATCH = 20
CLAIM_BATCH = 10  # messages claimed per transaction when the mailbox has no gap to keep
MAX_RETRY_DELAY = timedelta(hours=6)


@dataclass
class Claimed:
    """An email claimed for sending: its outbox row and the message to hand to SMTP."""

    message_row: int
    enrollment_id: int
    email: EmailMessage
    mail_from: str
    rcpt: str
    summary: dict[str, str]


@dataclass
class Wait:
    """Nothing can leave this mailbox before ``until`` (its gap)."""

    until: datetime


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
    # tried again after HOLD_FOR; their sequences go on once the template is fixed.
    held: dict[str, int] = field(default_factory=dict)


def _id(row: Prospect | Enrollment | Message) -> int:
    assert row.id is not None
    return row.id


TALLIES_TTL = timedelta(minutes=10)
HOLD_FOR = timedelta(minutes=15)  # a message held for a template problem is tried again then


class Dispatcher:
    """Sends what is due, mailbox by mailbox, in parallel; one failing mailbox stops nobody."""

    def __init__(
        self,
        ws: Workspace,
        transport_for: Callable[[Mailbox], Transport],
        *,
        rng: random.Random | None = None,
        now: Callable[[], datetime] = clock.now,
        on_event: Callable[[str], None] | None = None,
        member: cluster.Member | None = None,
    ) -> None:
        self.ws = ws
        self.member = member or cluster.Member.for_settings(
            ws.config.settings.daemon.claim_lease_seconds
        )
        self.transport_for = transport_for
        self.rng = rng or random.Random()
        self.now = now
        self.settings = ws.config.settings
        self.stopping = asyncio.Event()
        self._sent_folders_checked = False
        self.on_event = on_event
        self._counts: dict[tuple[str, int, str], dict[str, int]] = {}
        self._ab = ab.AssignmentState()
        self._tallies: ab.Tallies | None = None
        self._tallies_at: datetime | None = None
        self._secret: str | None = None
        if self.settings.sending.unsubscribe_url:
            self._secret = secret_from_env(self.settings.sending.unsubscribe_secret_env)

    # ----------------------------------------------------------------- the run

    async def run_once(self, *, wait_for_gaps: bool = True, hold: bool = False) -> Report:
        """Send everything due now, within windows and limits; then return. The mailboxes
        served are given up at the end, unless ``hold`` (the daemon keeps them between ticks)."""
        beating = asyncio.create_task(self._beat_while_running())
        try:
            return await self._run_once(wait_for_gaps)
        finally:
            beating.cancel()
            if not hold:
                cluster.let_go(self.ws.store, self.member)

    async def _beat_while_running(self) -> None:
        """Renew this process's leases while it sends (waiting out gaps can take long)."""
        while True:
            await asyncio.sleep(self.member.beat_seconds)
            await asyncio.to_thread(cluster.beat, self.ws.store, self.member, self.now())

    async def _run_once(self, wait_for_gaps: bool) -> Report:
        report = Report()
        now = self.now()
        self.prepare_ab(now)
        # The Sent folders are searched when a message has just become unknown (and once per
        # process), not on every tick: an unknown one not found there waits for the operator.
        if self.recover(now) or not self._sent_folders_checked:
            await asyncio.to_thread(self.settle_unknown_from_sent_folders, report)
            self._sent_folders_checked = True
        else:
            report.unknown = self._count_unknown()
        self.expire_tasks(now, report)
        boxes = self.ws.config.mailboxes
        results = await asyncio.gather(
            *(self.drain(box, report, wait_for_gaps) for box in boxes), return_exceptions=True
        )
        for box, result in zip(boxes, results, strict=True):
            if isinstance(result, OutreachError):
                report.errors.append(f"{box.email}: {result.one_line()}")
            elif isinstance(result, BaseException):
                raise result
        return report

    async def drain(self, box: Mailbox, report: Report, wait_for_gaps: bool) -> None:
        """Send this mailbox's due messages one by one, keeping its gap, until none is left."""
        transport = self.transport_for(box)
        transport.check()  # a missing password stops this mailbox before anything is claimed
        sent_folder: SentFolder | None = None
        batch: list[Claimed] = []
        try:
            while not self.stopping.is_set():
                claimed = self.claim_batch(box, self.now(), report)
                if claimed is None:
                    return
                if isinstance(claimed, Wait):
                    delay = (claimed.until - self.now()).total_seconds()
                    if not wait_for_gaps or delay > self.settings.sending.max_gap_seconds + 1:
                        return
                    try:
                        await asyncio.wait_for(self.stopping.wait(), timeout=max(delay, 0))
                    except TimeoutError:
                        pass
                    continue
                batch = claimed
                while batch and not self.stopping.is_set():
                    claim = batch.pop(0)
                    if not self.still_active(claim):
                        self.cancel(claim, report)
                        continue
                    if not self.take(claim):
                        continue  # its lease lapsed and another daemon has it now
                    outcome = await transport.send(claim.email, claim.mail_from, claim.rcpt)
                    self.record(claim, outcome, self.now(), report)
                    trouble = outcome.kind in ("auth", "unreachable", "retry")
                    if trouble or box.email in report.paused:
                        # The server is in trouble (or the bounces paused the mailbox): one try
                        # per mailbox per run, not per message; the rest of the batch goes back.
                        return
                    if outcome.kind == "sent" and box.save_to_sent:
                        sent_folder = sent_folder or SentFolder(box)
                        await asyncio.to_thread(sent_folder.append, claim.email, report)
        finally:
            if batch:  # stopping, or the server in trouble: the rest goes back to the queue
                self.release([c.message_row for c in batch])
            await transport.close()
            if sent_folder is not None:
                await asyncio.to_thread(sent_folder.close)

    # ---------------------------------------------------------------- the claim

    def claim(self, box: Mailbox, now: datetime, report: Report) -> Claimed | Wait | None:
        """Claim the mailbox's next due email and take it for sending at once (creating due
        tasks on the way), or say why not."""
        claimed = self.claim_batch(box, now, report, limit=1)
        if isinstance(claimed, list):
            [claim] = claimed
            taken = self.take(claim)
            assert taken
            return claim
        return claimed

    def claim_batch(
        self, box: Mailbox, now: datetime, report: Report, limit: int | None = None
    ) -> list[Claimed] | Wait | None:
        """Claim the mailbox's next due emails, up to a small batch (creating due tasks on the
        way), leased to this process; or say why not. The mailbox's state row is locked for
        the transaction and leased to this process: one daemon per mailbox at a time."""
        size = limit or (CLAIM_BATCH if self.settings.sending.max_gap_seconds <= 0 else 1)
        with self.ws.store.session() as session:
            mailboxes = [b.email for b in self.ws.config.mailboxes]
            state = cluster.lock_mailbox(session, box.email, self.member, mailboxes, now)
            if state is None:
                return None  # another daemon serves this mailbox
            if state.paused_reason:
                report.paused[box.email] = state.paused_reason
                return None
            if state.next_send_at and state.next_send_at > now:
                return Wait(state.next_send_at)
            today = now.astimezone(ZoneInfo(box.timezone or self.settings.sending.timezone))
            if state.day != today.date().isoformat():
                state.day, state.sent_on_day = today.date().isoformat(), 0
            limit = reputation.daily_limit(session, self.ws.config, box, now)  # with the ramp
            room = min(size, limit - state.sent_on_day)
            if room <= 0:
                return None  # the rest waits for tomorrow, in due order
            session.add(state)
            # A sequence paused by hand sends nothing and creates no task; its due times wait.
            paused = paused_sequences(session)
            held_back = [col(Enrollment.sequence).not_in(paused)] if paused else []
            batch: list[Claimed] = []
            while len(batch) < room:
                # Every candidate not claimed leaves the due set (rescheduled to its window,
                # turned into a task, or ended), so this loop ends, and prospects whose
                # window is closed never hold back those whose window is open.
                candidates = session.exec(
                    select(Enrollment.id)
                    .where(
                        Enrollment.sender == box.email,
                        Enrollment.state == "active",
                        col(Enrollment.due_at) <= now,
                        *held_back,
                    )
                    .order_by(col(Enrollment.due_at), col(Enrollment.id))
                    .limit(BATCH)
                    .with_for_update(skip_locked=True)
                ).all()
                if not candidates:
                    break
                for enrollment_id in candidates:
                    # Loaded one at a time: usually the first ones are claimed.
                    enrollment = session.get(Enrollment, enrollment_id)
                    assert enrollment is not None
                    if reputation.defer_if_domain_full(session, self.ws, box, enrollment, now):
                        continue  # that company's cap for today: the next sending day
                    claimed = self._claim_one(session, box, state, enrollment, now, report)
                    if claimed is not None:
                        self._lease(session, claimed, now)
                        batch.append(claimed)
                        if len(batch) == room:
                            break
                session.flush()
            return batch or None

    def _lease(self, session: Session, claim: Claimed, now: datetime) -> None:
        """The claimed row waits for its turn under this process's lease, not yet sending."""
        message = session.get(Message, claim.message_row)
        assert message is not None
        message.state = "claimed"
        message.lease_owner, message.lease_until = self.member.id, now + self.member.lease
        session.add(message)

    def take(self, claim: Claimed) -> bool:
        """Claimed becomes sending, only for the lease holder: False if the lease lapsed and
        the message went back to the queue (or to another daemon) meanwhile."""
        return cluster.take(self.ws.store, claim.message_row, self.member, self.now())

    def release(self, message_rows: list[int]) -> None:
        """Claimed messages this process will not send go back to the queue now."""
        cluster.release_claims(self.ws.store, self.now(), ids=message_rows, owner=self.member)

    def _claim_one(
        self,
        session: Session,
        box: Mailbox,
        state: MailboxState,
        enrollment: Enrollment,
        now: datetime,
        report: Report,
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
        step = sequence.steps[enrollment.step_index]
        if not step.is_email:
            self._create_task(session, box, sequence, enrollment, prospect, now)
            report.tasks_created += 1
            return None
        try:
            message, email = self._build(session, box, sequence, enrollment, prospect, now)
        except (TemplateError, InvalidHeader) as exc:
            # Never send a message with a hole in it, and never end a sequence for a problem
            # in the copy: hold the prospect, tell the operator, try again later.
            enrollment.due_at = now + HOLD_FOR
            session.add(enrollment)
            problem = exc.one_line()
            report.held[problem] = report.held.get(problem, 0) + 1
            return None
        state.sent_on_day += 1
        state.last_sent_at = now
        gap = self.rng.uniform(
            self.settings.sending.min_gap_seconds, self.settings.sending.max_gap_seconds
        )
        state.next_send_at = now + timedelta(seconds=gap)
        enrollment.due_at = None  # in flight: no second claim
        enrollment.updated_at = now
        session.add_all([enrollment, message])
        session.flush()
        return Claimed(
            message_row=_id(message),
            enrollment_id=_id(enrollment),
            email=email,
            mail_from=box.email,
            rcpt=prospect.email,
            summary={
                "to": prospect.email,
                "subject": message.subject or "",
                "message_id": message.message_id or "",
                "sequence": sequence.name,
                "step": step.name,
                "in_reply_to": message.in_reply_to or "",
            },
        )

    def _build(
        self,
        session: Session,
        box: Mailbox,
        sequence: Sequence,
        enrollment: Enrollment,
        prospect: Prospect,
        now: datetime,
    ) -> tuple[Message, EmailMessage]:
        index = enrollment.step_index
        step = sequence.steps[index]
        template = self.ws.templates.get(step.template)
        language = prospect.language or self.settings.sending.language
        persona = prospect.persona
        variables = self._variables(box, prospect)
        message = session.exec(
            select(Message).where(
                Message.enrollment_id == enrollment.id, Message.step_index == index
            )
        ).first()
        if message is None:  # first attempt: assign the variants once, for good
            message = _outbox_row(
                box,
                sequence,
                enrollment,
                prospect,
                language,
                now,
                message_id=make_message_id(box.email),
            )
            if step.thread == "new":
                message.subject_variant = self._assign(
                    sequence.name, index, step.name, "subject", template, language, persona
                )
            message.body_variant = self._assign(
                sequence.name, index, step.name, "body", template, language, persona
            )
        thread = self._thread(session, sequence, enrollment, index)
        if step.thread == "reply":
            if not thread:
                raise TemplateError(
                    f"step '{step.name}' replies in a thread that was never sent",
                    file=sequence.source,
                )
            message.subject = reply_subject(thread[0].subject or "")
        else:
            variant = template.variant("subject", message.subject_variant or "")
            message.subject = self.ws.renderer.render_subject(
                variant, language, persona, variables, template.path
            )
        body_variant = template.variant("body", message.body_variant or "")
        text, html = self.ws.renderer.render_body(
            body_variant, language, persona, variables, template.path
        )
        previous = thread[-1] if thread and step.thread == "reply" else None
        quote = None
        if previous is not None and self.settings.sending.quote_previous and previous.sent_at:
            # After a reassign the earlier message is quoted under the name it was sent with.
            author = next((b for b in self.ws.config.mailboxes if b.email == previous.sender), None)
            quote = Quote(
                sent_at=previous.sent_at,
                from_name=author.name if author else "",
                from_email=previous.sender,
                text=previous.body or "",
                timezone=prospect.timezone or box.timezone or self.settings.sending.timezone,
            )
        outgoing = Outgoing(
            from_name=box.name,
            from_email=box.email,
            to_email=prospect.email,
            to_name=" ".join(p for p in (prospect.first_name, prospect.last_name) if p) or None,
            subject=message.subject,
            text=text,
            html=html,
            message_id=message.message_id or make_message_id(box.email),
            date=now,
            in_reply_to=previous.message_id if previous else None,
            references=tuple(m.message_id for m in thread if m.message_id) if previous else (),
            unsubscribe_mailto=self.settings.sending.unsubscribe_mailto,
            unsubscribe_url=make_link(
                self.settings.sending.unsubscribe_url, self._secret, prospect.email
            )
            if self.settings.sending.unsubscribe_url and self._secret
            else None,
            quote=quote,
            language=language,
        )
        email = build_message(outgoing)
        body = email.get_body(("plain",))
        message.body = body.get_content() if body is not None else text
        message.in_reply_to = outgoing.in_reply_to
        message.references = " ".join(outgoing.references) or None
        message.thread_root = thread[0].message_id if thread else message.message_id
        message.state = "sending"
        message.claimed_at = now
        message.attempts += 1
        return message, email

    def _thread(
        self, session: Session, sequence: Sequence, enrollment: Enrollment, index: int
    ) -> list[Message]:
        """The sent messages of the thread step ``index`` belongs to, oldest first."""
        root = sequence.thread_root(index)
        steps = [
            i
            for i in range(index)
            if sequence.steps[i].is_email and sequence.thread_root(i) == root
        ]
        if not steps:
            return []
        return list(
            session.exec(
                select(Message)
                .where(
                    Message.enrollment_id == enrollment.id,
                    col(Message.step_index).in_(steps),
                    Message.state == "sent",
                )
                .order_by(col(Message.step_index))
            )
        )

    def _variables(self, box: Mailbox, prospect: Prospect) -> dict[str, object]:
        return self.ws.variables_for(prospect, box)

    def prepare_ab(self, now: datetime) -> None:
        """Register new variants (refusing texts edited after they were sent) and read which a
        review retired; balance is counted afresh on each run. A template file edited since
        the last run is read again first."""
        if self.ws.refresh_templates() and self.on_event:
            self.on_event("template files changed: read again")
        with self.ws.store.session() as session:
            state = ab.sync_variants(self.ws, session, now)
        if state != self._ab:  # a variant came, went or came back: balance from now on
            self._counts = {}
        self._ab = state
        if self._tallies_at is None or now - self._tallies_at > TALLIES_TTL:
            self._tallies = None  # Thompson sampling's posteriors, read again now and then

    def _assign(
        self,
        sequence: str,
        index: int,
        step: str,
        kind: Kind,
        template: StepTemplate,
        language: str,
        persona: str | None,
    ) -> str:
        """The variant for one new message: among the active variants that have a text for
        this prospect, the one given to the fewest since the active set last changed (or, with
        ``[ab] assignment = "thompson"``, a draw from the reply posteriors)."""
        variants = [
            v.id for v in self._ab.eligible(template, sequence, step, kind, language, persona)
        ]
        if not variants:
            raise TemplateError(
                f"no active {kind} variant in language '{language}' for step '{step}'",
                file=template.path,
                hint="add one, or un-retire one (`outreach ab restore`)",
            )
        key = (sequence, index, kind)
        if self.settings.ab.assignment == "thompson":
            return self._thompson(key, variants)
        if key not in self._counts:
            column = Message.subject_variant if kind == "subject" else Message.body_variant
            query = (
                select(column, func.count())
                .where(Message.sequence == sequence, Message.step_index == index)
                .group_by(column)
            )
            since = self._ab.since.get((sequence, step, kind))
            if since is not None:
                query = query.where(Message.created_at >= since)
            with self.ws.store.session() as session:
                rows = session.exec(query).all()
            self._counts[key] = {name: count for name, count in rows if name}
        counts = self._counts[key]
        choice = ab.balanced_choice(variants, counts, self.rng)
        counts[choice] = counts.get(choice, 0) + 1
        return choice

    def _thompson(self, key: tuple[str, int, str], variants: list[str]) -> str:
        from outreach import abstats

        if self._tallies is None:
            with self.ws.store.session() as session:
                self._tallies = ab.tallies(
                    session, self.settings.ab.metric, ab.mature_until(self.ws, self.now())
                )
            self._tallies_at = self.now()
        return abstats.thompson_choice(ab.arms_of(self._tallies, key, variants), self.rng)

    def _create_task(
        self,
        session: Session,
        box: Mailbox,
        sequence: Sequence,
        enrollment: Enrollment,
        prospect: Prospect,
        now: datetime,
    ) -> None:
        index = enrollment.step_index
        step = sequence.steps[index]
        template = self.ws.templates.get(step.template)
        language = prospect.language or self.settings.sending.language
        variant = self._assign(
            sequence.name, index, step.name, "body", template, language, prospect.persona
        )
        text, _ = self.ws.renderer.render_body(
            template.variant("body", variant),
            language,
            prospect.persona,
            self._variables(box, prospect),
            template.path,
        )
        skip_at = now + timedelta(days=self.settings.tasks.skip_after_days)
        session.add(
            _outbox_row(
                box,
                sequence,
                enrollment,
                prospect,
                language,
                now,
                body_variant=variant,
                body=text,
                state="task",
                next_attempt_at=skip_at,
            )
        )
        self._event(
            f"task for {box.email}: {step.channel} {prospect.email} ({sequence.name}/{step.name})"
        )
        enrollment.due_at = None  # the sequence waits for the rep (or the skip time)
        enrollment.updated_at = now
        session.add(enrollment)

    # --------------------------------------------------------- after the claim

    def still_active(self, claim: Claimed) -> bool:
        """The last look before SMTP: has a reply or a stop arrived since the claim?"""
        with self.ws.store.engine.connect() as conn:
            state = conn.execute(
                select(Enrollment.state).where(Enrollment.id == claim.enrollment_id)
            ).scalar()
        return state == "active"

    def cancel(self, claim: Claimed, report: Report) -> None:
        with self.ws.store.session() as session:
            message = session.get(Message, claim.message_row, with_for_update=True)
            assert message is not None
            if message.state not in ("claimed", "sending") or message.lease_owner not in (
                None,
                self.member.id,
            ):
                return  # the lease lapsed: no longer ours to cancel
            message.state = "skipped"
            message.error = "the enrollment ended before the message left"
            session.add(message)
            _uncount(session, claim.mail_from)
        report.cancelled += 1

    def record(self, claim: Claimed, outcome: Outcome, now: datetime, report: Report) -> None:
        """Write down what SMTP said and move the sequence on accordingly."""
        with self.ws.store.session() as session:
            message = session.get(Message, claim.message_row)
            enrollment = session.get(Enrollment, claim.enrollment_id)
            assert message is not None and enrollment is not None
            message.smtp_response = str(outcome)
            if outcome.kind == "sent":
                message.state, message.sent_at, message.error = "sent", now, None
                report.sent.append(claim.summary)
                state = session.get(MailboxState, claim.mail_from)
                if state is not None and state.unreachable:
                    state.unreachable = None
                    session.add(state)
                s = claim.summary
                self._event(
                    f"sent {s['sequence']}/{s['step']} to {s['to']}: {s['subject']}  "
                    f"{s['message_id']}"
                    + (f"  in reply to {s['in_reply_to']}" if s["in_reply_to"] else "")
                )
                step_done(self.ws, session, message, now, self.rng)
            elif outcome.kind == "unreachable":
                # No session was opened: nothing happened to this message. The mailbox waits
                # and says why; the message goes back to the queue as it was.
                message.state, message.error = "retry", None
                message.attempts -= 1
                if enrollment.state == "active":
                    enrollment.due_at = now
                state = _uncount(session, claim.mail_from)
                if state is not None:
                    state.unreachable = str(outcome)
                    state.next_send_at = now + timedelta(
                        seconds=self.settings.sending.retry_seconds
                    )
                report.notes.append(
                    f"{claim.mail_from}: {outcome}; trying again after "
                    f"{self.settings.sending.retry_seconds} s"
                )
                self._event(f"{claim.mail_from}: unreachable: {outcome}")
            elif outcome.kind == "retry":
                _uncount(session, claim.mail_from)
                if message.attempts >= self.settings.sending.max_attempts:
                    message.state, message.error = "failed", f"gave up: {outcome}"
                    end_enrollment(session, enrollment, "stopped", f"undeliverable: {outcome}", now)
                    report.failed += 1
                else:
                    delay = min(
                        timedelta(
                            seconds=self.settings.sending.retry_seconds
                            * 2 ** (message.attempts - 1)
                        ),
                        MAX_RETRY_DELAY,
                    )
                    message.state, message.error = "retry", str(outcome)
                    message.next_attempt_at = now + delay
                    if enrollment.state == "active":
                        enrollment.due_at = message.next_attempt_at
                    report.retried += 1
                    self._event(f"retry later {claim.rcpt} ({claim.summary['step']}): {outcome}")
            elif outcome.kind == "bounce":
                message.state, message.error = "bounced", str(outcome)
                stop_for_bounce(session, message, str(outcome), now)
                report.bounced += 1
                self._event(f"bounced {claim.rcpt}: {outcome}")
                if paused := reputation.after_hard_bounce(
                    session, self.settings.sending, claim.mail_from, now
                ):
                    report.paused[claim.mail_from] = paused
                    self._event(f"PAUSED mailbox {claim.mail_from}: {paused}")
            elif outcome.kind == "auth":
                # Not this message's fault: it goes back to the queue, the mailbox pauses.
                message.state, message.error = "retry", str(outcome)
                message.attempts -= 1
                if enrollment.state == "active":
                    enrollment.due_at = now
                state = _uncount(session, claim.mail_from)
                assert state is not None
                state.paused_reason, state.paused_at = str(outcome), now
                report.paused[claim.mail_from] = str(outcome)
                self._event(f"PAUSED mailbox {claim.mail_from}: {outcome}")
            else:
                message.state, message.error = "failed", str(outcome)
                end_enrollment(session, enrollment, "stopped", f"refused: {outcome}", now)
                report.failed += 1
                self._event(f"refused {claim.rcpt}: {outcome}")
            session.add_all([message, enrollment])

    def _event(self, line: str) -> None:
        """Tell the operator at once (the CLI prints it, the daemon logs it)."""
        if self.on_event is not None:
            self.on_event(line)

    # ------------------------------------------------------- housekeeping

    def recover(self, now: datetime, *, everything: bool = False) -> int:
        """Claims that never got an answer become ``unknown``: never resent by themselves."""
        lease = timedelta(seconds=self.settings.daemon.lease_seconds)
        # Claimed, never handed to SMTP: back to the queue (everything: the lock holder knows
        # every other process is dead).
        cluster.release_claims(self.ws.store, now, expired=not everything)
        with self.ws.store.session() as session:
            query = select(Message).where(Message.state == "sending")
            if not everything:
                # Unanswered too long, or its daemon stopped beating (died mid-SMTP).
                query = query.where(
                    or_(col(Message.claimed_at) < now - lease, col(Message.lease_until) < now)
                )
            stale = session.exec(query.with_for_update(skip_locked=True)).all()
            for message in stale:
                message.state = "unknown"
                message.error = "the process ended between claim and answer; see outreach resolve"
                session.add(message)
            return len(stale)

    def settle_unknown_from_sent_folders(self, report: Report) -> None:
        """An ``unknown`` message found in its mailbox's Sent folder did leave: mark it sent
        and let the sequence go on. One not found stays unknown (it may have left without a
        copy being kept), for the operator to resolve."""
        with self.ws.store.session() as session:
            unknown = session.exec(select(Message).where(Message.state == "unknown")).all()
        by_box: dict[str, list[Message]] = {}
        for message in unknown:
            by_box.setdefault(message.sender, []).append(message)
        for email, messages in by_box.items():
            box = next((b for b in self.ws.config.mailboxes if b.email == email), None)
            if box is None or not box.imap_host:
                report.unknown += len(messages)
                continue
            try:
                with MailboxImap.for_mailbox(box) as imap:
                    folder = imap.sent_folder()
                    found = [m for m in messages if imap.has_message_id(folder, m.message_id or "")]
            except OutreachError as exc:
                report.notes.append(f"{email}: cannot check the Sent folder: {exc.one_line()}")
                report.unknown += len(messages)
                continue
            for message in found:
                self._settle_as_sent(message.id)
            report.settled += len(found)
            report.unknown += len(messages) - len(found)

    def _count_unknown(self) -> int:
        with self.ws.store.session() as session:
            return session.exec(
                select(func.count()).select_from(Message).where(Message.state == "unknown")
            ).one()

    def _settle_as_sent(self, message_row: int | None) -> None:
        with self.ws.store.session() as session:
            message = session.get(Message, message_row)
            assert message is not None
            message.state, message.sent_at = "sent", message.claimed_at
            message.error = "found in the Sent folder after an interrupted send"
            session.add(message)
            step_done(self.ws, session, message, self.now(), self.rng)

    def expire_tasks(self, now: datetime, report: Report) -> None:
        """A task left undone past ``[tasks] skip_after_days`` is skipped; the sequence goes on."""
        with self.ws.store.session() as session:
            for task in session.exec(
                select(Message).where(Message.state == "task", col(Message.next_attempt_at) <= now)
            ):
                task.state, task.error = "skipped", "not done in time"
                session.add(task)
                step_done(self.ws, session, task, now, self.rng)
                report.tasks_skipped += 1


def _outbox_row(
    box: Mailbox,
    sequence: Sequence,
    enrollment: Enrollment,
    prospect: Prospect,
    language: str,
    now: datetime,
    **fields: Any,
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
        **fields,
    )


class SentFolder:
    """A mailbox's Sent folder over IMAP, opened on first use (in a worker thread)."""

    def __init__(self, box: Mailbox) -> None:
        self.box = box
        self._imap: MailboxImap | None = None
        self._folder: str | None = None

    def append(self, email: EmailMessage, report: Report) -> None:
        """Keep a copy; a failure is reported, never fatal: the message has already left."""
        try:
            if self._imap is None:
                self._imap = MailboxImap.for_mailbox(self.box)
                self._imap.connect()
                self._folder = self._imap.sent_folder()
            assert self._folder is not None
            self._imap.append(self._folder, email.as_bytes(), clock.now())
        except OutreachError as exc:
            report.notes.append(f"{self.box.email}: not saved to Sent: {exc.one_line()}")
            self.close()

    def close(self) -> None:
        imap, self._imap = self._imap, None
        if imap is not None:
            try:
                imap.close()
            except OutreachError:
                pass


def _suppressed(session: Session, email: str) -> bool:
    domain = "@" + email.rpartition("@")[2]
    return (
        session.exec(
            select(Suppression.id).where(col(Suppression.value).in_((email, domain)))
        ).first()
        is not None
    )


def _uncount(session: Session, mailbox: str) -> MailboxState | None:
    """The claim counted a send against today's limit; it did not happen after all."""
    state = session.get(MailboxState, mailbox, with_for_update=True, populate_existing=True)
    if state is not None:
        state.sent_on_day = max(state.sent_on_day - 1, 0)
        state.next_send_at = None
        session.add(state)
    return state
