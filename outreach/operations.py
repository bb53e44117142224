"""The outbox as people see it: tasks for the reps, messages whose fate is unknown, mailboxes."""

from __future__ import annotations

import random
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from sqlmodel import Session, col, func, select

from outreach import clock, cluster, lifecycle, reputation, sequencing
from outreach.config import Mailbox
from outreach.errors import NotFound, OutreachError
from outreach.models import Enrollment, Event, MailboxState, Message, Prospect
from outreach.sequencing import step_done
from outreach.workspace import Workspace

if TYPE_CHECKING:
    from outreach.dispatch import Report
    from outreach.mail.smtp import Transport


def list_tasks(ws: Workspace, now: datetime, sender: str | None = None) -> list[dict[str, Any]]:
    """Open LinkedIn and manual tasks, oldest first, with the text to send and where."""
    with ws.store.session() as session:
        query = (
            select(Message, Prospect)
            .join(Prospect, col(Prospect.id) == Message.prospect_id)
            .where(Message.state == "task")
            .order_by(col(Message.created_at), col(Message.id))
        )
        if sender:
            query = query.where(Message.sender == sender.strip().lower())
        rows = session.exec(query).all()
    return [
        {
            "id": task.id,
            "sender": task.sender,
            "channel": task.channel,
            "sequence": task.sequence,
            "step": task.step_name,
            "prospect": prospect.email,
            "name": " ".join(p for p in (prospect.first_name, prospect.last_name) if p) or None,
            "first_name": prospect.first_name,
            "last_name": prospect.last_name,
            "company": prospect.company,
            "linkedin": prospect.linkedin,
            "text": task.body,
            "due_since": task.created_at.isoformat(),
            "skipped_at": task.next_attempt_at.isoformat() if task.next_attempt_at else None,
        }
        for task, prospect in rows
    ]


def complete_task(
    ws: Workspace, task_id: int, now: datetime, rng: random.Random | None = None
) -> str:
    """Mark a task done; the prospect's sequence goes on to its next step."""
    with ws.store.session() as session:
        task = _open_task(session, task_id)
        if not lifecycle.task_done(session, task_id, now):
            raise OutreachError(f"task {task_id} is already {task.state}", field="ID")
        step_done(ws, session, task, now, rng or random.Random())
        return f"task {task_id} done ({task.sequence}/{task.step_name})"


def skip_task(
    ws: Workspace,
    task_id: int,
    now: datetime,
    reason: str | None = None,
    rng: random.Random | None = None,
) -> str:
    """The rep will not do this task (no LinkedIn URL, say): it is skipped with the reason,
    recorded on the prospect, and the sequence goes on as if the time to do it had run out."""
    with ws.store.session() as session:
        task = _open_task(session, task_id)
        why = f"skipped by the rep ({reason})" if reason else "skipped by the rep"
        if not lifecycle.task_skipped(session, task_id, why):
            raise OutreachError(f"task {task_id} is already {task.state}", field="ID")
        session.add(
            Event(
                prospect_id=task.prospect_id,
                enrollment_id=task.enrollment_id,
                message_id=task.id,
                kind="task_skipped",
                reason=reason or None,
                data={"sequence": task.sequence, "step": task.step_name},
                occurred_at=now,
            )
        )
        step_done(ws, session, task, now, rng or random.Random())
        return f"task {task_id} skipped ({task.sequence}/{task.step_name})"


def _open_task(session: Session, task_id: int) -> Message:
    """The open task with this id, or one clear error."""
    task = session.get(Message, task_id)
    if task is None or task.channel == "email":
        raise NotFound(
            f"no task with id {task_id}",
            field="ID",
            hint="`outreach tasks` lists the open ones",
        )
    if task.state != "task":
        raise OutreachError(f"task {task_id} is already {task.state}", field="ID")
    return task


def find_message(ws: Workspace, reference: str) -> Message:
    """A message by its outbox id or its Message-ID header (with or without <>)."""
    with ws.store.session() as session:
        message = None
        if reference.isdigit():
            message = session.get(Message, int(reference))
        if message is None:
            mid = reference if reference.startswith("<") else f"<{reference}>"
            message = session.exec(select(Message).where(Message.message_id == mid)).first()
        if message is None:
            raise NotFound(f"no message {reference}", field="MESSAGE")
        return message


def evidence(ws: Workspace, reference: str) -> dict[str, Any]:
    """What is known of a message whose fate is open, for the person who settles it: the
    outbox row, what the SMTP server last said, and whether the mailbox's Sent folder holds
    a copy (searched now by its Message-ID, read-only)."""
    from outreach.mail.imap import MailboxImap  # imapclient only for the command that needs it

    message = find_message(ws, reference)
    with ws.store.session() as session:
        prospect = session.get(Prospect, message.prospect_id)
    assert prospect is not None
    box = next((b for b in ws.config.mailboxes if b.email == message.sender), None)
    sent_folder: str
    if box is None or not box.imap_host:
        sent_folder = "not searched: the mailbox has no IMAP in the config"
    else:
        try:
            with MailboxImap.for_mailbox(box) as imap:
                folder = imap.sent_folder()
                held = imap.has_message_id(folder, message.message_id or "")
            sent_folder = f"found in {folder}" if held else f"not found in {folder}"
        except OutreachError as exc:
            sent_folder = f"could not be searched: {exc.one_line()}"
    if sent_folder.startswith("found"):
        advice = f"it left: outreach resolve {message.id} --sent"
    elif message.state not in ("unknown", "sending"):
        advice = f"nothing to settle: the message is {message.state}"
    else:
        advice = (
            "no copy was found; it may still have left (not every server files SMTP mail in "
            f"Sent). If it did not: outreach resolve {message.id} --not-sent (sends it again)"
        )
    return {
        "id": message.id,
        "message_id": message.message_id,
        "to": prospect.email,
        "mailbox": message.sender,
        "sequence": message.sequence,
        "step": message.step_name,
        "state": message.state,
        "subject": message.subject,
        "claimed_at": message.claimed_at.isoformat() if message.claimed_at else None,
        "attempts": message.attempts,
        "smtp_response": message.smtp_response,
        "error": message.error,
        "sent_folder": sent_folder,
        "advice": advice,
    }


def resolve(
    ws: Workspace,
    reference: str,
    sent: bool,
    now: datetime,
    rng: random.Random | None = None,
    *,
    force: bool = False,
) -> str:
    """Settle a message whose fate is unknown: it did leave (``sent``) or it did not. Saying
    it did not while the Sent folder holds a copy is refused (it would go twice) unless
    ``force``."""
    found = find_message(ws, reference)
    if not sent and not force:
        seen = evidence(ws, reference)["sent_folder"]
        if seen.startswith("found"):
            raise OutreachError(
                f"message {found.id} is {seen}: it left, and --not-sent would send it twice",
                field="--not-sent",
                hint=f"outreach resolve {found.id} --sent (or --force if you know better)",
            )
    with ws.store.session() as session:
        message = session.get(Message, found.id)
        assert message is not None
        assert message.id is not None
        if not lifecycle.resolve(session, message.id, sent, now):
            raise OutreachError(
                f"message {message.id} is {message.state}, not unknown", field="MESSAGE"
            )
        enrollment = session.get(Enrollment, message.enrollment_id)
        assert enrollment is not None
        if sent:
            step_done(ws, session, message, now, rng or random.Random())
        elif enrollment.state == "active":
            enrollment.due_at = now
            session.add(enrollment)
        return f"message {message.id} {message.message_id}: {message.state}"


def unknown_messages(ws: Workspace) -> list[dict[str, Any]]:
    """Messages whose fate is open: ``unknown`` after a crash, or ``sending`` right now (or
    left so by a process that died and has not been replaced yet)."""
    with ws.store.session() as session:
        rows = session.exec(
            select(Message, Prospect)
            .join(Prospect, col(Prospect.id) == Message.prospect_id)
            .where(col(Message.state).in_(("unknown", "sending")))
            .order_by(col(Message.id))
        ).all()
    return [
        {
            "id": m.id,
            "state": m.state,
            "to": prospect.email,
            "subject": m.subject,
            "message_id": m.message_id,
            "sender": m.sender,
            "sequence": m.sequence,
            "step": m.step_name,
            "claimed_at": m.claimed_at.isoformat() if m.claimed_at else None,
        }
        for m, prospect in rows
    ]


def _local(ws: Workspace, box: Mailbox, at: datetime | None) -> str | None:
    """A time as the mailbox's people read it: local, with the zone."""
    if at is None:
        return None
    zone = ZoneInfo(box.timezone or ws.config.settings.sending.timezone)
    return f"{at.astimezone(zone):%Y-%m-%d %H:%M %Z}"


def mailbox_report(ws: Workspace, now: datetime) -> list[dict[str, Any]]:
    """Per mailbox: today's limit (with the warm-up ramp) and what it sent, the backlog due
    now, paused (and why) or waiting (and until when), its recent bounce rate."""
    out = []
    sending = ws.config.settings.sending
    with ws.store.session() as session:
        paused_sequences = sequencing.paused_sequences(session)
        for box in ws.config.mailboxes:
            state = session.get(MailboxState, box.email)
            due = (
                select(func.count())
                .select_from(Enrollment)
                .where(
                    Enrollment.sender == box.email,
                    Enrollment.state == "active",
                    col(Enrollment.due_at) <= now,
                )
            )
            if paused_sequences:
                due = due.where(col(Enrollment.sequence).not_in(paused_sequences))
            backlog = session.exec(due).one()
            retrying = session.exec(
                select(func.count())
                .select_from(Message)
                .where(Message.sender == box.email, Message.state == "retry")
            ).one()
            ramp = reputation.ramp_now(session, ws.config, box, now)
            today = reputation.local_day(ws.config, box, now).isoformat()
            window = reputation.bounce_window(
                session, sending, box.email, state.bounces_counted_from if state else None
            )
            wait_until = state.next_send_at if state and state.next_send_at else None
            waiting = wait_until is not None and wait_until > now
            out.append(
                {
                    "email": box.email,
                    "name": box.name,
                    "sent_today": state.sent_on_day if state and state.day == today else 0,
                    "day": today,
                    "daily_limit": ramp.limit,  # today's, with the ramp
                    "full_limit": ramp.full_limit,
                    "warming_up": ramp.warming_up,
                    "first_send_day": ramp.first_day.isoformat() if ramp.first_day else None,
                    "full_limit_on": ramp.full_on.isoformat() if ramp.full_on else None,
                    "due_now": backlog,
                    "retrying": retrying,
                    "paused": state.paused_reason if state else None,
                    "paused_at": state.paused_at.isoformat() if state and state.paused_at else None,
                    "unreachable": state.unreachable if state else None,
                    # An unreachable server is tried again then; else the gap ends then.
                    "next_try_at": wait_until.isoformat()
                    if waiting and wait_until and state and state.unreachable
                    else None,
                    "next_send_at": wait_until.isoformat()
                    if waiting and wait_until and state and not state.unreachable
                    else None,
                    "waiting_until_local": _local(ws, box, wait_until) if waiting else None,
                    "bounces": {
                        "sends": window.sends,
                        "hard_bounces": window.bounces,
                        "rate": round(window.rate, 4),
                    },
                    "served_by": state.owner
                    if state and state.owner_until and state.owner_until > now
                    else None,
                    "last_sent_at": state.last_sent_at.isoformat()
                    if state and state.last_sent_at
                    else None,
                }
            )
    return out


def unreachable_mailboxes(ws: Workspace, now: datetime) -> list[dict[str, Any]]:
    """Mailboxes whose SMTP server could not be reached (the last try opened no session)
    while messages wait for them: what ``send --once`` exits 1 for. A mailbox that is marked
    unreachable but has nothing due is not failing anyone."""
    return [box for box in mailbox_report(ws, now) if box["unreachable"] and box["due_now"]]


def paused_sequence_names(ws: Workspace) -> list[str]:
    """The sequences paused by hand (`outreach sequence pause`)."""
    with ws.store.session() as session:
        return sorted(sequencing.paused_sequences(session))


def resume_mailbox(ws: Workspace, email: str, now: datetime | None = None) -> str:
    """Let a paused mailbox send again. After a bounce pause the rate counts afresh from now,
    so the bounces that paused it do not pause it again at the next one."""
    box = ws.config.mailbox(email, field="MAILBOX")
    with ws.store.session() as session:
        state = session.get(MailboxState, box.email)
        if state is None or not state.paused_reason:
            return f"{box.email} is not paused"
        if state.paused_reason.startswith(reputation.BOUNCE_PAUSE_PREFIX):
            state.bounces_counted_from = now or clock.now()
        state.paused_reason, state.paused_at = None, None
        session.add(state)
    return f"{box.email} resumed"


PAUSED_BY_HAND = "paused by hand"


def pause_mailbox(ws: Workspace, email: str, now: datetime, reason: str | None = None) -> str:
    """Stop a mailbox's sending by hand, until ``outreach mailboxes resume``; its due work
    waits in due order (a message in flight finishes)."""
    box = ws.config.mailbox(email, field="MAILBOX")
    with ws.store.session() as session:
        cluster.ensure_mailboxes_in(session, [box.email])
        state = session.get(MailboxState, box.email, with_for_update=True)
        assert state is not None
        if state.paused_reason:
            return f"{box.email} is already paused: {state.paused_reason}"
        state.paused_reason = f"{PAUSED_BY_HAND}: {reason}" if reason else PAUSED_BY_HAND
        state.paused_at = now
        session.add(state)
    return f"{box.email} paused (`outreach mailboxes resume {box.email}` to send again)"


def clear_wait(ws: Workspace, email: str, now: datetime) -> str:
    """A mailbox waiting (an unreachable server, or its gap) may be tried now."""
    box = ws.config.mailbox(email, field="MAILBOX")
    with ws.store.session() as session:
        state = session.get(MailboxState, box.email, with_for_update=True)
        if state is None or not state.next_send_at or state.next_send_at <= now:
            if state is not None and state.paused_reason:
                raise OutreachError(
                    f"{box.email} is paused, not waiting: {state.paused_reason}",
                    field="MAILBOX",
                    hint=f"`outreach mailboxes resume {box.email}`",
                )
            return f"{box.email} is not waiting"
        was = f"unreachable ({state.unreachable})" if state.unreachable else "waiting out its gap"
        state.next_send_at = None
        session.add(state)
    return f"{box.email} was {was}: trying now"


def retry_mailbox(
    ws: Workspace,
    email: str,
    now: datetime,
    transport_for: Callable[[Mailbox], Transport] | None = None,
    on_event: Callable[[str], None] | None = None,
) -> tuple[str, Report | None]:
    """Try a waiting mailbox now: its wait is cleared and, unless a daemon holds the database
    (it then tries at its next dispatch), one pass sends what is due from it, without waiting
    out gaps. Returns what was done and the pass's report."""
    import asyncio

    from outreach.daemon import DispatchLock, recover_after_crash
    from outreach.dispatch import Dispatcher
    from outreach.dispatch import Report as PassReport
    from outreach.mail.smtp import SmtpTransport

    text = clear_wait(ws, email, now)
    box = ws.config.mailbox(email, field="MAILBOX")
    try:
        lock = DispatchLock(ws).__enter__()
    except OutreachError:
        return (
            f"{text}; the running daemon tries it at its next dispatch (within "
            f"{ws.config.settings.daemon.dispatch_seconds} s)",
            None,
        )
    try:
        dispatcher = Dispatcher(ws, transport_for or SmtpTransport, on_event=on_event)
        if lock.exclusive:
            recover_after_crash(ws, dispatcher)
        report = PassReport()

        async def one_pass() -> None:
            try:
                await dispatcher.drain(box, report, wait_for_gaps=False)
            finally:
                cluster.let_go(ws.store, dispatcher.member)

        asyncio.run(one_pass())
    finally:
        lock.__exit__(None, None, None)
    return text, report


__all__ = [
    "complete_task",
    "list_tasks",
    "clear_wait",
    "mailbox_report",
    "pause_mailbox",
    "paused_sequence_names",
    "resolve",
    "resume_mailbox",
    "skip_task",
    "retry_mailbox",
    "unknown_messages",
    "unreachable_mailboxes",
]
