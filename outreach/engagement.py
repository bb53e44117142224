"""Opens and clicks in the store: each fetch of a pixel or a tracked link, recorded.

An open or click is an :class:`~outreach.models.Event` of kind ``open`` or ``click`` on the
message, its enrollment and its prospect, with reason ``human`` or ``machine``
(:mod:`outreach.mail.scanners` decides). There is one row per message, kind, target URL and
human-or-machine, whatever the number of fetches: the first fetch inserts it (``INSERT ... ON
CONFLICT DO NOTHING`` on its ``dedup_key``), each later one adds to its count, so a pixel that
a proxy fetches a thousand times is one row. Only ``human`` rows count, for the audience rules
``opened`` and ``clicked`` (:func:`outreach.sequencing.advance`) and for ``stop_on: [click]``, which
ends the enrollment here, like a goal. Nothing here writes a message's state.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session, select

from outreach import handoff
from outreach.mail import scanners
from outreach.mail.tracking import CLICK, Hit
from outreach.models import Enrollment, Event, Message, Prospect
from outreach.sequencing import LIVE_STATES, end_enrollment
from outreach.workspace import Workspace

events_t = Event.__table__  # type: ignore[attr-defined]
USER_AGENT_CHARS = 200  # of the first fetch's user agent, kept to tell scanners apart later


@dataclass
class Recorded:
    """What one fetch did, for the log line."""

    kind: str
    verdict: scanners.Verdict
    first: bool  # the first fetch of its kind, target and verdict for this message
    prospect: str
    sequence: str
    step: str
    stopped: bool = False  # a person's click ended the enrollment (stop_on: [click])
    handoff: int | None = None  # and queued a CRM hand-off

    def one_line(self) -> str:
        who = f"machine ({self.verdict.why})" if self.verdict.machine else "human"
        via = f" via {self.verdict.via}" if self.verdict.via else ""
        tail = " (repeat)" if not self.first else ""
        stop = f"; stopped {self.sequence} (stop_on: click)" if self.stopped else ""
        return f"{self.kind} {who}{via}: {self.prospect} {self.sequence}/{self.step}{tail}{stop}"


def dedup_key(hit: Hit, message_row: int, verdict: scanners.Verdict) -> str:
    """One row per message, kind, target and human-or-machine."""
    key = f"{hit.kind}:{message_row}"
    if hit.url is not None:
        key += ":" + hashlib.sha256(hit.url.encode("utf-8")).hexdigest()[:16]
    return f"{key}:{verdict.reason}"


def record(ws: Workspace, hit: Hit, method: str, user_agent: str, now: datetime) -> Recorded | None:
    """Record one fetch of a signed pixel or link, in one short transaction; None when the
    token names no message of this database (a preview's, or one since deleted)."""
    machine_seconds = ws.config.settings.tracking.machine_seconds
    with ws.store.session() as session:
        message = session.exec(select(Message).where(Message.message_id == hit.message_id)).first()
        if message is None or message.id is None:
            return None
        verdict = scanners.classify(method, user_agent, message.sent_at, now, machine_seconds)
        key = dedup_key(hit, message.id, verdict)
        first = _insert(session, key, message, hit, verdict, user_agent, now)
        event = session.exec(select(Event).where(Event.dedup_key == key).with_for_update()).one()
        if not first:
            event.data = _counted(event.data, verdict, now)
            session.add(event)
        prospect = session.get(Prospect, message.prospect_id)
        assert prospect is not None
        done = Recorded(
            hit.kind, verdict, first, prospect.email, message.sequence, message.step_name
        )
        if first and hit.kind == CLICK and not verdict.machine:
            done.stopped, done.handoff = _click_goal(ws, session, message, prospect, event, now)
        return done


def _insert(
    session: Session,
    key: str,
    message: Message,
    hit: Hit,
    verdict: scanners.Verdict,
    user_agent: str,
    now: datetime,
) -> bool:
    """The event's row, unless a fetch before this one made it: whether this one did."""
    data: dict[str, Any] = {
        "sequence": message.sequence,
        "step": message.step_name,
        "count": 1,
        "last_at": _utc(now),
        "user_agent": user_agent.strip()[:USER_AGENT_CHARS],
    }
    if hit.url is not None:
        data["url"] = hit.url
    if verdict.machine:
        data["why"] = {verdict.why: 1}
    elif verdict.via:
        data["via"] = verdict.via
    conn = session.connection()
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    inserted = conn.execute(
        dialect.insert(events_t)
        .values(
            prospect_id=message.prospect_id,
            enrollment_id=message.enrollment_id,
            message_id=message.id,
            kind=hit.kind,
            reason=verdict.reason,
            data=data,
            occurred_at=now,
            dedup_key=key,
        )
        .on_conflict_do_nothing(index_elements=["dedup_key"])
        .returning(events_t.c.id)  # rowcount is not to be trusted here on every driver
    )
    return inserted.first() is not None


def _counted(data: dict[str, Any], verdict: scanners.Verdict, now: datetime) -> dict[str, Any]:
    counted = {**data, "count": int(data.get("count", 1)) + 1, "last_at": _utc(now)}
    if verdict.machine:
        why = dict(data.get("why") or {})
        why[verdict.why] = int(why.get(verdict.why, 0)) + 1
        counted["why"] = why
    return counted


def _click_goal(
    ws: Workspace,
    session: Session,
    message: Message,
    prospect: Prospect,
    click: Event,
    now: datetime,
) -> tuple[bool, int | None]:
    """A person's first click on a step with ``stop_on: [click]``: the enrollment ends, as a
    goal would end it, and the CRM gets a hand-off. Recorded as a ``stop`` event with reason
    ``click``, not as a ``goal`` event, which the A/B test counts as a positive reply (its
    metric stays replies). A click on a message whose enrollment has ended stops nothing."""
    sequence = ws.loaded_sequences.get(message.sequence)
    if sequence is None or message.step_index >= len(sequence.steps):
        return False, None
    step = sequence.steps[message.step_index]
    if "click" not in step.stop_on:
        return False, None
    enrollment = session.get(Enrollment, message.enrollment_id)
    if enrollment is None or enrollment.state not in LIVE_STATES:
        return False, None
    end_enrollment(session, enrollment, "stopped", f"goal: a click in {step.name}", now)
    stop = Event(
        prospect_id=message.prospect_id,
        enrollment_id=message.enrollment_id,
        message_id=message.id,
        kind="stop",
        reason="click",
        data={"sequences": [message.sequence], "step": step.name, "url": click.data.get("url")},
        occurred_at=now,
    )
    session.add(stop)
    queued = handoff.enqueue(session, ws.config.settings.crm, stop, prospect, "click", now)
    if queued is not None:
        session.flush()
    return True, queued.id if queued else None


def _utc(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="seconds")
