"""LinkedIn and manual steps: their text rendered once the claim made them, and skipped
when the rep has not done them within ``[tasks] skip_after_days``."""

from __future__ import annotations

import random
from datetime import datetime

from sqlalchemy import update
from sqlmodel import col, select

from outreach import lifecycle
from outreach.claims import NewTask
from outreach.compose import Composer
from outreach.errors import TemplateError
from outreach.models import Message, MessageState
from outreach.outcomes import Report
from outreach.sequencing import step_done
from outreach.workspace import Workspace


def render_new(ws: Workspace, composer: Composer, tasks: list[NewTask]) -> None:
    """Fill in the text of tasks the claim made (rendered outside its transaction). A text
    that cannot be rendered is kept as the task's error, for the rep to see."""
    for task in tasks:
        template = ws.templates.get(task.sequence.steps[task.step_index].template)
        values: dict[str, str | None]
        try:
            text, _ = composer.body(template, task.body_variant, task.recipient)
            values = {"body": text}
        except TemplateError as exc:
            values = {"error": f"the text could not be rendered: {exc.one_line()}"}
        with ws.store.engine.begin() as conn:
            table = lifecycle.messages_t
            conn.execute(update(table).where(table.c.id == task.message_row).values(**values))


def expire(ws: Workspace, now: datetime, report: Report, rng: random.Random) -> None:
    """A task left undone past ``[tasks] skip_after_days`` is skipped; the sequence goes on."""
    with ws.store.session() as session:
        due = session.exec(
            select(Message.id).where(
                Message.state == MessageState.TASK, col(Message.next_attempt_at) <= now
            )
        ).all()
        for task_id in due:
            assert task_id is not None
            if lifecycle.task_skipped(session, task_id, "not done in time"):
                task = session.get(Message, task_id)
                assert task is not None
                step_done(ws, session, task, now, rng)
                report.tasks_skipped += 1
