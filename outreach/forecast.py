"""The forecast: what will really go out on a day, mailbox by mailbox (``outreach schedule``).

It replays the dispatcher over the coming hours with the dispatcher's own rules, on copies of
what the store holds now: the mailbox's pace (:func:`outreach.pacing.allowance` and
:func:`~outreach.pacing.counted`: a pause, the gap, the day's limit), the warm-up ramp
(:func:`outreach.reputation.ramp`), the per-domain cap
(:func:`~outreach.reputation.after_domain_cap`), each prospect's window, days and holidays
(:class:`outreach.planner.SendingCalendar`), and the next step's due time once a step has
gone (:func:`outreach.planner.plan_due`). The queue is taken in the claim's order (due time,
then enrollment), and a step whose window is closed moves to its opening as the claim moves
it, so a mailbox at its limit shows its backlog on the day it will really go.

What it cannot know it assumes, and says so: nobody replies, bounces or unsubscribes; the
gap between two sends is the mean of ``min_gap_seconds`` and ``max_gap_seconds``; a step
after one sent in the forecast waits the shortest wait its range allows; a step held for a
template problem stays held (fix the template and it goes in due order); a hand-over to the
next sequence is not forecast.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlmodel import Session, col, func, select

from outreach import pacing, planner, reputation
from outreach.claims import is_dead
from outreach.config import Mailbox
from outreach.models import Enrollment, MailboxState, Prospect, Suppression
from outreach.sequences import Sequence
from outreach.sequencing import paused_sequences
from outreach.workspace import Workspace

HORIZON_DAYS = 31  # how far ahead a forecast may look
_MAX_STEPS = 200_000  # a safety stop for one mailbox's replay


@dataclass(order=True)
class _Due:
    """One enrollment's next step in the replayed queue, ordered as the claim orders it."""

    due_at: datetime
    enrollment_id: int
    step_index: int = field(compare=False)
    row: dict[str, Any] = field(compare=False)
    follow_up: bool = field(default=False, compare=False)  # planned by the forecast itself
    fell_due: datetime | None = field(default=None, compare=False)  # before any move

    def __post_init__(self) -> None:
        if self.fell_due is None:
            self.fell_due = self.due_at


@dataclass
class Planned:
    """A step the replay saw go (an email) or become a task (LinkedIn, manual)."""

    at: datetime
    item: _Due
    step: Any  # the sequences.Step
    late: bool  # it goes on a later day than it fell due (the limit, or the domain cap)


@dataclass
class Replay:
    """One mailbox's replayed day(s)."""

    box: Mailbox
    planned: list[Planned] = field(default_factory=list)
    limits: dict[date, reputation.Ramp] = field(default_factory=dict)
    backlog: int = 0  # due by the day's end and still waiting then
    paused: str | None = None


def forecast(ws: Workspace, now: datetime, day: date, sender: str | None = None) -> dict[str, Any]:
    """What goes out on ``day`` (each mailbox's own local date), as ``schedule --json``."""
    boxes = [b for b in ws.config.mailboxes if sender is None or b.email == sender]
    with ws.store.session() as session:
        paused_seqs = set(paused_sequences(session))
        dead = set(session.exec(select(Suppression.value)))
        held = _held(session, [b.email for b in boxes])
        replays = [_replay(ws, session, box, now, day, paused_seqs, dead) for box in boxes]
        active = session.exec(
            select(func.count())
            .select_from(Enrollment)
            .where(
                Enrollment.state == "active",
                *([Enrollment.sender == sender] if sender else []),
            )
        ).one()
    sequences_paused = sorted(paused_seqs)
    messages: list[dict[str, Any]] = []
    tasks: list[dict[str, Any]] = []
    mailboxes: list[dict[str, Any]] = []
    for replay in replays:
        box = replay.box
        zone = ZoneInfo(box.timezone or ws.config.settings.sending.timezone)
        ramp = replay.limits.get(day)
        on_day = [p for p in replay.planned if p.at.astimezone(zone).date() == day]
        sends = [p for p in on_day if p.step.is_email]
        for p in on_day:
            (messages if p.step.is_email else tasks).append(_entry(ws, box, zone, p))
        mailboxes.append(
            {
                "email": box.email,
                "timezone": str(zone),
                "sending_day": ws.config.calendar(box).is_sending_day(day),
                "daily_limit": ramp.limit if ramp else None,
                "full_limit": ramp.full_limit if ramp else ws.config.daily_limit(box),
                "warming_up": ramp.warming_up if ramp else False,
                "sends": len(sends),
                "first_at": sends[0].at.isoformat() if sends else None,
                "last_at": sends[-1].at.isoformat() if sends else None,
                "backlog_after": replay.backlog,
                "paused": replay.paused,
            }
        )
    messages.sort(key=lambda m: (m["at"], m["sender"]))
    tasks.sort(key=lambda m: (m["at"], m["sender"]))
    return {
        "now": now.isoformat(),
        "date": day.isoformat(),
        "assumes": "no replies, bounces or unsubscribes; mean gaps; the shortest waits",
        "active": active,
        "mailboxes": mailboxes,
        "messages": messages,
        "tasks": tasks,
        "held": held,
        "paused_sequences": sequences_paused,
    }


def _entry(ws: Workspace, box: Mailbox, zone: ZoneInfo, p: Planned) -> dict[str, Any]:
    row = p.item.row
    their = ZoneInfo(row["timezone"]) if row["timezone"] else zone
    return {
        "at": p.at.isoformat(),
        "at_local": p.at.astimezone(zone).strftime("%Y-%m-%d %H:%M %Z"),
        "prospect_local": p.at.astimezone(their).strftime("%Y-%m-%d %H:%M %Z"),
        "sender": box.email,
        "email": row["email"],
        "name": " ".join(n for n in (row["first_name"], row["last_name"]) if n) or None,
        "company": row["company"],
        "sequence": row["sequence"],
        "step": p.step.name,
        "channel": p.step.channel,
        "thread": p.step.thread,
        "due_at": p.item.fell_due.isoformat() if p.item.fell_due else None,
        "follow_up": p.item.follow_up,
        "late": p.late,
    }


def _held(session: Session, senders: list[str]) -> list[dict[str, Any]]:
    rows = session.exec(
        select(Enrollment, Prospect)
        .join(Prospect)
        .where(
            Enrollment.state == "active",
            col(Enrollment.held_reason).is_not(None),
            col(Enrollment.sender).in_(senders),
        )
        .order_by(col(Enrollment.held_at), col(Enrollment.id))
    ).all()
    return [
        {
            "email": p.email,
            "sender": e.sender,
            "sequence": e.sequence,
            "step_index": e.step_index,
            "reason": e.held_reason,
            "since": e.held_at.isoformat() if e.held_at else None,
        }
        for e, p in rows
    ]


def _replay(
    ws: Workspace,
    session: Session,
    box: Mailbox,
    now: datetime,
    day: date,
    paused_seqs: set[str],
    dead: set[str],
) -> Replay:
    """Replay the dispatcher for ``box`` from ``now`` to the end of ``day`` (its local date)."""
    config = ws.config
    zone = ZoneInfo(box.timezone or config.settings.sending.timezone)
    end = datetime.combine(day + timedelta(days=1), time(0), zone)
    replay = Replay(box)
    stored = session.get(MailboxState, box.email)
    state = MailboxState(email=box.email)  # a copy: the forecast writes nothing
    if stored is not None:
        for name in ("day", "sent_on_day", "last_sent_at", "next_send_at", "paused_reason"):
            setattr(state, name, getattr(stored, name))
    first_day = reputation.ramp_now(session, config, box, now).first_day
    d = reputation.local_day(config, box, now)
    while d <= day:
        replay.limits[d] = reputation.ramp(config, box, first_day, d)
        d += timedelta(days=1)
    queue = _queue(ws, session, box, end, paused_seqs, dead)
    if state.paused_reason:
        replay.paused = state.paused_reason
        replay.backlog = len(queue)
        return replay
    sending = config.settings.sending
    gap = (sending.min_gap_seconds + sending.max_gap_seconds) / 2
    domain_cap = sending.recipient_domain_daily_limit
    to_domain: dict[tuple[date, str], int] = {}
    if domain_cap is not None:
        today = reputation.local_day(config, box, now)
        for domain, n in reputation.sent_to_domains(session, config, box, now).items():
            to_domain[today, domain] = n
    t = now
    for _ in range(_MAX_STEPS):
        if not queue or t >= end:
            break
        today = reputation.local_day(config, box, t)
        if today not in replay.limits:
            replay.limits[today] = reputation.ramp(config, box, first_day, today)
        limit = replay.limits[today].limit
        verdict = pacing.allowance(state, today.isoformat(), limit, t, 1)
        if isinstance(verdict, pacing.Wait):  # the gap: what is due by then goes then
            t = max(verdict.until, queue[0].due_at)
            continue
        if verdict is None:  # the day's limit: the count starts again at local midnight
            t = reputation.day_start(config, box, t) + timedelta(days=1)
            continue
        assert not isinstance(verdict, pacing.Paused)  # a pause ended the replay above
        if queue[0].due_at > t:
            t = queue[0].due_at
            continue
        item = heapq.heappop(queue)
        sequence = ws.sequences[item.row["sequence"]]
        step = sequence.steps[item.step_index]
        cal = config.calendar(box, item.row["timezone"])
        if not cal.is_open(t):  # the claim moves it to its window's next opening
            item.due_at = cal.next_open(t)
            heapq.heappush(queue, item)
            continue
        assert item.fell_due is not None
        late = reputation.local_day(config, box, item.fell_due) < today
        if not step.is_email:
            replay.planned.append(Planned(t, item, step, late))
            continue  # a task: the rep's; the sequence goes on when it is done
        key = (today, item.row["domain"])
        if domain_cap is not None and to_domain.get(key, 0) >= domain_cap:
            item.due_at = reputation.after_domain_cap(cal, reputation.day_start(config, box, t))
            heapq.heappush(queue, item)
            continue
        to_domain[key] = to_domain.get(key, 0) + 1
        if first_day is None:  # its first send starts the ramp
            first_day = today
            replay.limits = {k: reputation.ramp(config, box, first_day, k) for k in replay.limits}
        pacing.counted(state, t, 1, gap)
        replay.planned.append(Planned(t, item, step, late))
        _plan_next(sequence, item, t, cal, end, queue)
    replay.backlog = sum(1 for item in queue if item.due_at < end)
    return replay


def _plan_next(
    sequence: Sequence,
    item: _Due,
    sent_at: datetime,
    cal: planner.SendingCalendar,
    end: datetime,
    queue: list[_Due],
) -> None:
    """The step after one the forecast sent: due the shortest wait later (if nobody replies)."""
    index = item.step_index + 1
    if index >= len(sequence.steps):
        return
    wait = sequence.steps[index].wait
    due = planner.plan_due(sent_at, wait, wait.low, cal)
    if due < end:
        heapq.heappush(queue, _Due(due, item.enrollment_id, index, item.row, follow_up=True))


def _queue(
    ws: Workspace,
    session: Session,
    box: Mailbox,
    end: datetime,
    paused_seqs: set[str],
    dead: set[str],
) -> list[_Due]:
    """The mailbox's active enrollments due before ``end``, as the claim would find them:
    without the held, the suppressed, the dead, the paused sequences and the gone steps."""
    rows = session.exec(
        select(Enrollment, Prospect)
        .join(Prospect)
        .where(
            Enrollment.sender == box.email,
            Enrollment.state == "active",
            col(Enrollment.due_at) < end,
            col(Enrollment.held_reason).is_(None),
        )
    ).all()
    queue = []
    for e, p in rows:
        sequence = ws.sequences.get(e.sequence)
        if e.sequence in paused_seqs or sequence is None or e.step_index >= len(sequence.steps):
            continue
        if is_dead(p.status, p.email, dead):
            continue
        assert e.due_at is not None and e.id is not None
        row = {
            "email": p.email,
            "domain": p.domain,
            "first_name": p.first_name,
            "last_name": p.last_name,
            "company": p.company,
            "timezone": p.timezone,
            "sequence": e.sequence,
        }
        queue.append(_Due(e.due_at, e.id, e.step_index, row))
    heapq.heapify(queue)
    return queue
