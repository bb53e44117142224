"""The outbox as people see it: tasks for the reps, messages whose fate is unknown, mailboxes."""

from __future__ import annotations

import random
from datetime import datetime
from typing import Any

from sqlmodel import Session, col, func, select

from outreach.engine import step_done
from outreach.errors import NotFound, OutreachError
from outreach.models import Enrollment, Event, MailboxState, Message, Prospect
from outreach.workspace import Workspace


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
        task.state, task.sent_at = "done", now
        session.add(task)
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
        task.state, task.error, task.next_attempt_at = "skipped", why, None
        session.add(task)
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


def resolve(
    ws: Workspace, reference: str, sent: bool, now: datetime, rng: random.Random | None = None
) -> str:
    """Settle a message whose fate is unknown: it did leave (``sent``) or it did not."""
    found = find_message(ws, reference)
    with ws.store.session() as session:
        message = session.get(Message, found.id)
        assert message is not None
        if message.state not in ("unknown", "sending"):
            raise OutreachError(
                f"message {message.id} is {message.state}, not unknown", field="MESSAGE"
            )
        enrollment = session.get(Enrollment, message.enrollment_id)
        assert enrollment is not None
        if sent:
            message.state, message.sent_at = "sent", message.claimed_at or now
            message.error = "resolved by the operator: it was sent"
            step_done(ws, session, message, now, rng or random.Random())
        else:
            message.state, message.error = "retry", "resolved by the operator: not sent"
            if enrollment.state == "active":
                enrollment.due_at = now
                session.add(enrollment)
        session.add(message)
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


def mailbox_report(ws: Workspace, now: datetime) -> list[dict[str, Any]]:
    """Per mailbox: sent today against the limit, paused or not, and the backlog due now."""
    out = []
    with ws.store.session() as session:
        for box in ws.config.mailboxes:
            state = session.get(MailboxState, box.email)
            backlog = session.exec(
                select(func.count())
                .select_from(Enrollment)
                .where(
                    Enrollment.sender == box.email,
                    Enrollment.state == "active",
                    col(Enrollment.due_at) <= now,
                )
            ).one()
            retrying = session.exec(
                select(func.count())
                .select_from(Message)
                .where(Message.sender == box.email, Message.state == "retry")
            ).one()
            out.append(
                {
                    "email": box.email,
                    "name": box.name,
                    "sent_today": state.sent_on_day if state else 0,
                    "day": state.day if state else None,
                    "daily_limit": ws.config.daily_limit(box),
                    "due_now": backlog,
                    "retrying": retrying,
                    "paused": state.paused_reason if state else None,
                    "unreachable": state.unreachable if state else None,
                    "served_by": state.owner
                    if state and state.owner_until and state.owner_until > now
                    else None,
                    "last_sent_at": state.last_sent_at.isoformat()
                    if state and state.last_sent_at
                    else None,
                    "next_send_at": state.next_send_at.isoformat()
                    if state and state.next_send_at
                    else None,
                }
            )
    return out


def unreachable_mailboxes(ws: Workspace, now: datetime) -> list[dict[str, Any]]:
    """Mailboxes whose SMTP server could not be reached (the last try opened no session)
    while messages wait for them: what ``send --once`` exits 1 for. A mailbox that is marked
    unreachable but has nothing due is not failing anyone."""
    return [box for box in mailbox_report(ws, now) if box["unreachable"] and box["due_now"]]


def resume_mailbox(ws: Workspace, email: str) -> str:
    box = ws.config.mailbox(email, field="MAILBOX")
    with ws.store.session() as session:
        state = session.get(MailboxState, box.email)
        if state is None or not state.paused_reason:
            return f"{box.email} is not paused"
        state.paused_reason, state.paused_at = None, None
        session.add(state)
    return f"{box.email} resumed"


__all__ = [
    "complete_task",
    "list_tasks",
    "mailbox_report",
    "resolve",
    "resume_mailbox",
    "skip_task",
    "unknown_messages",
    "unreachable_mailboxes",
]
