"""Read-only views for people: status per sequence and step, one prospect, what is coming up."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import case, func
from sqlalchemy import select as sa_select
from sqlmodel import Session, col, select

from outreach import cluster, localtime
from outreach.config import Config
from outreach.export import neutralise
from outreach.models import Enrollment, Event, Message, Prospect, Suppression
from outreach.operations import mailbox_report, unknown_messages
from outreach.prospect_csv import STANDARD_FIELDS
from outreach.sentiment import reply_class_of
from outreach.sequences import playbook_order
from outreach.sequencing import LAST_STEP_SKIPPED, find_prospect
from outreach.workspace import Workspace

enrollments_t = Enrollment.__table__  # type: ignore[attr-defined]
messages_t = Message.__table__  # type: ignore[attr-defined]
events_t = Event.__table__  # type: ignore[attr-defined]
TRACKED = ("open", "click")
# Per step: the messages a person opened / clicked in, and those a machine did (not counted).
TRACKING_COUNTS = ("opened", "opened_by_machines", "clicked", "clicked_by_machines")
ENDED = ("replied", "bounced", "unsubscribed", "stopped")
# "skipped": the step's tasks that were skipped (by the rep, or left undone too long).
STEP_COUNTS = ("active", "due", "waiting", "sent", "skipped", *ENDED, "finished")


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment else None


def status(ws: Workspace, now: datetime) -> dict[str, Any]:
    """Per sequence and step: who is there now, what was sent, and how enrollments ended.

    An enrollment that ended (replied, bounced, unsubscribed, stopped) is counted at the last
    step it was given; "finished" (reached the end of the sequence) at the last step, and
    ``last_step_skipped`` says how many of those finished without doing their last step.
    """
    sequences = ws.sequences
    report: dict[str, Any] = {"now": now.isoformat(), "sequences": []}
    with ws.store.session() as session:
        e, m = enrollments_t.c, messages_t.c
        is_due = case((e.due_at <= now, 1), else_=0)
        enrollment_rows: list[tuple[str, str, int, int, int]] = [
            tuple(row)  # type: ignore[misc]
            for row in session.execute(
                sa_select(e.sequence, e.state, e.step_index, is_due, func.count()).group_by(
                    e.sequence, e.state, e.step_index, is_due
                )
            )
        ]
        sent_rows: list[tuple[str, int, int]] = [
            tuple(row)  # type: ignore[misc]
            for row in session.execute(
                sa_select(m.sequence, m.step_index, func.count())
                .where(m.state.in_(("sent", "done")))
                .group_by(m.sequence, m.step_index)
            )
        ]
        skipped_rows: list[tuple[str, int, int]] = [
            tuple(row)  # type: ignore[misc]
            for row in session.execute(
                sa_select(m.sequence, m.step_index, func.count())
                .where(m.state == "skipped", m.channel != "email")
                .group_by(m.sequence, m.step_index)
            )
        ]
        last_skipped: dict[str, int] = {
            str(seq): int(count)
            for seq, count in session.execute(
                sa_select(e.sequence, func.count())
                .where(e.state == "finished", e.end_reason.startswith(LAST_STEP_SKIPPED))
                .group_by(e.sequence)
            )
        }
        ev = events_t.c
        tracked_rows: list[tuple[str, int, str, str, int]] = [
            tuple(row)  # type: ignore[misc]
            for row in session.execute(
                sa_select(
                    m.sequence,
                    m.step_index,
                    ev.kind,
                    ev.reason,
                    func.count(ev.message_id.distinct()),
                )
                .select_from(events_t.join(messages_t, ev.message_id == m.id))
                .where(ev.kind.in_(TRACKED))
                .group_by(m.sequence, m.step_index, ev.kind, ev.reason)
            )
        ]
        report["suppressed"] = session.exec(select(func.count()).select_from(Suppression)).one()
        # Prospects whose next step cannot be sent, and why (tried again every 15 minutes).
        report["held"] = [
            {"sequence": seq, "reason": reason, "prospects": count}
            for seq, reason, count in session.execute(
                sa_select(e.sequence, e.held_reason, func.count())
                .where(e.state == "active", e.held_reason.is_not(None))
                .group_by(e.sequence, e.held_reason)
                .order_by(e.sequence, e.held_reason)
            )
        ]
    names = playbook_order(sequences) + sorted({r[0] for r in enrollment_rows} - set(sequences))
    for name in names:
        sequence = sequences.get(name)
        step_names = [s.name for s in sequence.steps] if sequence else []
        # A finished enrollment sits one past the last step: that is not a step to show.
        size = len(step_names) or max([1] + [r[2] for r in enrollment_rows if r[0] == name])
        steps: list[dict[str, Any]] = [
            {
                "index": i,
                "name": step_names[i] if i < len(step_names) else f"#{i}",
                "channel": sequence.steps[i].channel if sequence and i < len(step_names) else None,
                **{key: 0 for key in STEP_COUNTS},
                "tracking": dict.fromkeys(TRACKING_COUNTS, 0),
            }
            for i in range(size)
        ]
        totals = {state: 0 for state in ("active", "paused", "finished", *ENDED)}
        for seq, state, step_index, due, count in enrollment_rows:
            if seq != name:
                continue
            totals[state] = totals.get(state, 0) + count
            if state == "active":
                row = steps[min(step_index, size - 1)]
                row["active"] += count
                row["due" if due else "waiting"] += count
            elif state in ENDED or state == "finished":
                steps[max(min(step_index, size) - 1, 0)][state] += count
        for seq, step_index, count in sent_rows:
            if seq == name and step_index < size:
                steps[step_index]["sent"] += count
        for seq, step_index, count in skipped_rows:
            if seq == name and step_index < size:
                steps[step_index]["skipped"] += count
        for seq, step_index, kind, reason, count in tracked_rows:
            if seq == name and step_index < size:
                counts = steps[step_index]["tracking"]
                key = "opened" if kind == "open" else "clicked"
                counts[key if reason == "human" else f"{key}_by_machines"] += count
        report["sequences"].append(
            {
                "name": name,
                "enrollments": totals,
                "last_step_skipped": last_skipped.get(name, 0),
                "steps": steps,
            }
        )
    tracking = ws.config.settings.tracking
    report["tracking"] = {"opens": tracking.opens, "clicks": tracking.clicks}
    report["mailboxes"] = mailbox_report(ws, now)
    report["backlog"] = sum(box["due_now"] for box in report["mailboxes"])
    report["unknown"] = unknown_messages(ws)
    report["daemons"] = cluster.daemons(
        ws.store, now, timedelta(seconds=ws.config.settings.daemon.claim_lease_seconds)
    )
    return report


def prospect_view(ws: Workspace, email: str) -> dict[str, Any]:
    """One prospect: fields, enrollments, every message and every event."""
    with ws.store.session() as session:
        prospect = find_prospect(session, email)
        enrollments = session.exec(
            select(Enrollment)
            .where(Enrollment.prospect_id == prospect.id)
            .order_by(col(Enrollment.id))
        ).all()
        messages = session.exec(
            select(Message).where(Message.prospect_id == prospect.id).order_by(col(Message.id))
        ).all()
        events = session.exec(
            select(Event).where(Event.prospect_id == prospect.id).order_by(col(Event.id))
        ).all()
    sequences = ws.sequences
    return {
        "prospect": {key: getattr(prospect, key) for key in (*STANDARD_FIELDS, "status")}
        | {"fields": prospect.fields, "created_at": _iso(prospect.created_at)},
        "enrollments": [
            {
                "id": e.id,
                "sequence": e.sequence,
                "sender": e.sender,
                "state": e.state,
                "next_step": _step_name(sequences, e.sequence, e.step_index)
                if e.state in ("active", "paused")
                else None,
                "step_index": e.step_index,
                "due_at": _iso(e.due_at),
                "enrolled_at": _iso(e.enrolled_at),
                "ended_at": _iso(e.ended_at),
                "end_reason": e.end_reason,
                "held": e.held_reason if e.state == "active" else None,
                "held_since": _iso(e.held_at) if e.state == "active" else None,
            }
            for e in enrollments
        ],
        "messages": [
            {
                "id": m.id,
                "sequence": m.sequence,
                "step": m.step_name,
                "channel": m.channel,
                "state": m.state,
                "sent_at": _iso(m.sent_at),
                "subject": m.subject,
                "subject_variant": m.subject_variant,
                "body_variant": m.body_variant,
                "message_id": m.message_id,
                **fetches(events, m.id),
            }
            for m in messages
        ],
        "events": [
            {"kind": ev.kind, "reason": ev.reason, "at": _iso(ev.occurred_at), "data": ev.data}
            for ev in events
        ],
    }


def fetches(events: Any, message_row: int | None) -> dict[str, dict[str, int]]:
    """A message's opens and clicks: how many fetches a person made, and a machine."""
    out = {"opens": {"human": 0, "machine": 0}, "clicks": {"human": 0, "machine": 0}}
    for ev in events:
        if (
            ev.message_id == message_row
            and ev.kind in TRACKED
            and ev.reason in ("human", "machine")
        ):
            key = "opens" if ev.kind == "open" else "clicks"
            out[key][ev.reason] += int((ev.data or {}).get("count", 1))
    return out


def _step_name(sequences: dict[str, Any], sequence: str, index: int) -> str | None:
    seq = sequences.get(sequence)
    if seq is None or index >= len(seq.steps):
        return None
    return str(seq.steps[index].name)


def _mailbox_zone(ws: Workspace, sender: str) -> str:
    for box in ws.config.mailboxes:
        if box.email == sender and box.timezone:
            return box.timezone
    return ws.config.settings.sending.timezone


EXPORT_COLUMNS = (
    "email",
    "first_name",
    "last_name",
    "company",
    "title",
    "linkedin",
    "persona",
    "language",
    "sequence",
    "step",
    "subject_variant",
    "body_variant",
    "replied_at",
    "sentiment",
    "reason",
    "reply_text",
)


def replied(ws: Workspace) -> list[dict[str, Any]]:
    """Every human reply and goal, newest last, with what was sent before it: for the CRM."""
    with ws.store.session() as session:
        rows = session.exec(
            select(Event, Prospect)
            .join(Prospect, col(Prospect.id) == Event.prospect_id)
            .where(
                col(Event.kind).in_(("reply", "goal"))
                # a rep recorded it; a person's click on a step with stop_on: [click]
                | ((col(Event.kind) == "stop") & col(Event.reason).in_(("replied", "click")))
            )
            .order_by(col(Event.occurred_at), col(Event.id))
        ).all()
        out = []
        for event, prospect in rows:
            last = session.exec(
                select(Message)
                .where(
                    Message.prospect_id == prospect.id,
                    Message.state == "sent",
                    col(Message.sent_at) <= event.occurred_at,
                )
                .order_by(col(Message.sent_at).desc())
            ).first()
            out.append(
                {
                    **{key: getattr(prospect, key) for key in EXPORT_COLUMNS[:8]},
                    "sequence": last.sequence if last else None,
                    "step": last.step_name if last else None,
                    "subject_variant": last.subject_variant if last else None,
                    "body_variant": last.body_variant if last else None,
                    "replied_at": event.occurred_at.isoformat(),
                    # The reply's class, a rep's correction (`prospect --mark`) first.
                    "sentiment": reply_class_of(event) if event.kind == "reply" else None,
                    "reason": event.reason
                    if event.kind == "goal" or event.reason == "click"
                    else "reply",
                    "reply_text": (event.data or {}).get("text", ""),
                }
            )
    return out


REPLY_KINDS = ("reply", "unsubscribe")  # read from a mailbox: a person wrote back


def reply_list(
    ws: Workspace,
    *,
    since: datetime | None = None,
    sender: str | None = None,
    sentiments: tuple[str, ...] = (),
) -> list[dict[str, Any]]:
    """The human replies read from the mailboxes, newest first: when, who (and their company),
    to which mailbox, sequence and step, the sentiment (a rep's ``--mark`` correction first)
    and the reply's new text. ``since`` keeps those read from that moment on; ``sender`` one
    mailbox's; ``sentiments`` those classes. A request to be removed sent to the
    ``unsubscribe_mailto`` address is not a reply and is left out."""
    with ws.store.session() as session:
        query = (
            select(Event, Prospect)
            .join(Prospect, col(Prospect.id) == Event.prospect_id)
            .where(col(Event.kind).in_(REPLY_KINDS))
            .order_by(col(Event.occurred_at).desc(), col(Event.id).desc())
        )
        if since is not None:
            query = query.where(col(Event.occurred_at) >= since)
        rows = session.exec(query).all()
        out = []
        for event, prospect in rows:
            sentiment = reply_class_of(event)
            if sentiment is None or (sentiments and sentiment not in sentiments):
                continue
            answered = _answered_message(session, event, prospect)
            mailbox = answered.sender if answered else _latest_sender(session, prospect)
            if sender and mailbox != sender.strip().lower():
                continue
            out.append(
                {
                    "id": event.id,
                    "at": event.occurred_at.isoformat(),
                    "email": prospect.email,
                    "name": " ".join(p for p in (prospect.first_name, prospect.last_name) if p)
                    or None,
                    "company": prospect.company,
                    "sender": mailbox,
                    "sequence": answered.sequence if answered else None,
                    "step": answered.step_name if answered else None,
                    "sentiment": sentiment,
                    "classified_as": (event.data or {}).get("classified_as"),
                    "rule": (event.data or {}).get("rule"),
                    "text": (event.data or {}).get("text", ""),
                }
            )
    return out


def _answered_message(session: Session, event: Event, prospect: Prospect) -> Message | None:
    """The email the reply answers (by its In-Reply-To), else the last one sent before it."""
    if event.message_id is not None:
        message = session.get(Message, event.message_id)
        if message is not None:
            return message
    return session.exec(
        select(Message)
        .where(
            Message.prospect_id == prospect.id,
            Message.state == "sent",
            col(Message.sent_at) <= event.occurred_at,
        )
        .order_by(col(Message.sent_at).desc())
    ).first()


def _latest_sender(session: Session, prospect: Prospect) -> str | None:
    """The mailbox of the prospect's latest enrollment: who a reply without a match went to."""
    return session.exec(
        select(Enrollment.sender)
        .where(Enrollment.prospect_id == prospect.id)
        .order_by(col(Enrollment.id).desc())
    ).first()


TASK_CSV_COLUMNS = (
    "id",
    "sender",
    "prospect",
    "first_name",
    "last_name",
    "company",
    "linkedin",
    "channel",
    "sequence",
    "step",
    "due",
    "text",
)


def task_csv_rows(config: Config, tasks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`outreach tasks --csv`: one row per open task, for a LinkedIn tool; ``due`` is ISO 8601
    in the sender's time zone (with its offset)."""
    out = []
    for task in tasks:
        due = datetime.fromisoformat(task["due_since"]).astimezone(
            ZoneInfo(localtime.mailbox_zone(config, task["sender"]))
        )
        row = {
            "id": task["id"],
            "sender": task["sender"],
            "prospect": task["prospect"],
            "first_name": task["first_name"],
            "last_name": task["last_name"],
            "company": task["company"],
            "linkedin": task["linkedin"],
            "channel": task["channel"],
            "sequence": task["sequence"],
            "step": task["step"],
            "due": due.isoformat(timespec="minutes"),
            "text": (task["text"] or "").rstrip(),
        }
        out.append({key: neutralise(value) for key, value in row.items()})
    return out
