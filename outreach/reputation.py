"""A sending mailbox's reputation: the warm-up ramp and the bounce pause.

A domain's reputation is the asset a team cannot buy back. Two rules guard it, each in one
function that the dispatcher, the views and the forecast all call:

- :func:`daily_limit`: today's limit of a mailbox, its ``daily_limit`` or, while it warms up,
  ``warmup_start + warmup_step x (sending days since its first send)``. The first sending day
  is stored in ``mailbox_states``, so a restart or a config reload never restarts the ramp.
- :func:`after_hard_bounce`: after a hard bounce (SMTP time or a DSN read over IMAP), pause the
  mailbox when the hard bounces among its recent sends are above ``[sending]
  bounce_pause_rate``, with the figure, until ``outreach mailboxes resume``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from sqlalchemy import update
from sqlmodel import Session, col, func, select

from outreach import planner
from outreach.config import Config, Mailbox, SendingDefaults
from outreach.models import Enrollment, MailboxState, Message, Prospect

if TYPE_CHECKING:
    from outreach.workspace import Workspace

enrollments_t = Enrollment.__table__  # type: ignore[attr-defined]

# Email rows that reached an SMTP server's verdict: the sends a bounce rate is taken over.
COUNTED_STATES = ("sent", "bounced")
BOUNCE_PAUSE_PREFIX = "bounce rate: "


@dataclass(frozen=True)
class Ramp:
    """Where a mailbox stands on its warm-up ramp on one day."""

    limit: int  # what it may send that day
    full_limit: int  # its daily_limit
    first_day: date | None  # its first sending day, None before it ever sent
    full_on: date | None  # the first day it may send full_limit (None: no ramp configured)

    @property
    def warming_up(self) -> bool:
        return self.limit < self.full_limit


def local_day(config: Config, box: Mailbox, at: datetime) -> date:
    """The mailbox's local date at ``at``: the day its limit counts."""
    zone = ZoneInfo(box.timezone or config.settings.sending.timezone)
    return at.astimezone(zone).date()


def ramp(config: Config, box: Mailbox, first_day: date | None, day: date) -> Ramp:
    """Pure: the mailbox's limit on ``day`` when its first send was on ``first_day`` (None: it
    has not sent yet, so ``day`` would be its first)."""
    full = config.daily_limit(box)
    if box.warmup_start is None or box.warmup_step is None or box.warmup_start >= full:
        return Ramp(full, full, first_day, None)
    start = first_day or day
    if day < start:
        return Ramp(min(box.warmup_start, full), full, first_day, None)
    cal = config.calendar(box)
    steps_needed = -(-(full - box.warmup_start) // box.warmup_step)  # ceiling division
    # Walk the mailbox's sending days after the first; the walk stops at the full limit, so
    # it is as long as the ramp, however old the mailbox.
    steps_today: int | None = None
    full_on: date | None = None
    d, n = start, 0
    while True:
        if d == day:
            steps_today = n
        if full_on is None and n >= steps_needed:
            full_on = d
        if full_on is not None and (steps_today is not None or d < day):
            break
        d += timedelta(days=1)
        if cal.is_sending_day(d):
            n += 1
    if steps_today is None:  # the ramp was over before ``day``
        steps_today = steps_needed
    limit = min(full, box.warmup_start + box.warmup_step * steps_today)
    return Ramp(limit, full, first_day, full_on)


def ramp_now(session: Session, config: Config, box: Mailbox, now: datetime) -> Ramp:
    """The ramp as stored for the mailbox, today (read only: for views and the forecast)."""
    state = session.get(MailboxState, box.email)
    return ramp(config, box, _first_day(session, config, box, state), local_day(config, box, now))


def daily_limit(session: Session, config: Config, box: Mailbox, now: datetime) -> int:
    """Today's limit of ``box``: its ``daily_limit``, or its step on the warm-up ramp.

    Called by the dispatcher in the claim's transaction (the mailbox's row locked): once the
    mailbox has sent, its first sending day is written down, and the ramp counts from it.
    """
    state = session.get(MailboxState, box.email)
    first = _first_day(session, config, box, state)
    if state is not None and first is not None and state.first_send_day is None:
        state.first_send_day = first.isoformat()
        session.add(state)
    return ramp(config, box, first, local_day(config, box, now)).limit


def _first_day(
    session: Session, config: Config, box: Mailbox, state: MailboxState | None
) -> date | None:
    if state is None:
        return None
    if state.first_send_day:
        return date.fromisoformat(state.first_send_day)
    if state.last_sent_at is None:
        return None
    # Sent before the day was stored (a database from before warm-up): its oldest send.
    oldest = session.exec(
        select(func.min(Message.claimed_at)).where(
            Message.sender == box.email,
            Message.channel == "email",
            col(Message.state).in_(COUNTED_STATES),
        )
    ).one()
    return local_day(config, box, oldest or state.last_sent_at)


@dataclass(frozen=True)
class BounceWindow:
    """The hard bounces among a mailbox's most recent sends."""

    sends: int
    bounces: int

    @property
    def rate(self) -> float:
        return self.bounces / self.sends if self.sends else 0.0

    def describe(self) -> str:
        rate = f"{self.rate:.1%}".replace("%", " %")
        bounces = f"{self.bounces} hard bounce" + ("" if self.bounces == 1 else "s")
        return f"{bounces} in the last {self.sends} sends, {rate}"


def bounce_window(
    session: Session, sending: SendingDefaults, mailbox: str, since: datetime | None = None
) -> BounceWindow:
    """The last ``bounce_window_sends`` sends of the mailbox (claimed since ``since``) and how
    many of them bounced hard, at SMTP time or by a DSN."""
    query = select(Message.state).where(
        Message.sender == mailbox,
        Message.channel == "email",
        col(Message.state).in_(COUNTED_STATES),
    )
    if since is not None:
        query = query.where(col(Message.claimed_at) >= since)
    states = session.exec(
        query.order_by(col(Message.claimed_at).desc(), col(Message.id).desc()).limit(
            sending.bounce_window_sends
        )
    ).all()
    return BounceWindow(len(states), sum(1 for s in states if s == "bounced"))


def after_hard_bounce(
    session: Session, sending: SendingDefaults, mailbox: str, now: datetime
) -> str | None:
    """A message of ``mailbox`` just bounced hard (its row already ``bounced`` in this
    transaction): pause the mailbox when its window is above the rate. Returns the pause's
    reason, or None."""
    session.flush()  # the bounced row counts
    state = session.get(MailboxState, mailbox, with_for_update=True)
    if state is None or state.paused_reason:
        return None
    window = bounce_window(session, sending, mailbox, state.bounces_counted_from)
    if window.sends < sending.bounce_pause_min_sends or window.rate <= sending.bounce_pause_rate:
        return None
    limit = f"{sending.bounce_pause_rate:.1%}".replace(".0%", "%").replace("%", " %")
    # `mailboxes`, `status` and the daemon's log add the resume command themselves.
    state.paused_reason = (
        f"{BOUNCE_PAUSE_PREFIX}{window.describe()} (above {limit}); clean the list"
    )
    state.paused_at = now
    session.add(state)
    return state.paused_reason


# What counts as sent to a domain today: everything claimed that was not given back.
TAKEN_STATES = ("claimed", "sending", "sent", "bounced", "unknown")


def defer_if_domain_full(
    session: Session, ws: Workspace, box: Mailbox, row: Any, now: datetime, pending: int = 0
) -> bool:
    """``[sending] recipient_domain_daily_limit``: when the mailbox has already sent that many
    emails to the prospect's domain today (counting ``pending`` picked in this claim), the
    enrollment waits for the next sending day (True), so one company's gateway is not
    hammered from one mailbox. ``row`` is a due enrollment as the claim reads it (``id``,
    ``email``, ``timezone``); the claim calls this for email steps only."""
    cap = ws.config.settings.sending.recipient_domain_daily_limit
    if cap is None:
        return False
    domain = row.email.rpartition("@")[2]
    midnight = day_start(ws.config, box, now)
    sent = sent_to_domains(session, ws.config, box, now, [domain]).get(domain, 0)
    if sent + pending < cap:
        return False
    session.connection().execute(
        update(enrollments_t)
        .where(enrollments_t.c.id == row.id)
        .values(due_at=after_domain_cap(ws.config.calendar(box, row.timezone), midnight))
    )
    return True


def sent_to_domains(
    session: Session, config: Config, box: Mailbox, now: datetime, domains: list[str] | None = None
) -> dict[str, int]:
    """How many emails the mailbox has taken today (its local day at ``now``) to each
    recipient domain (only ``domains`` when given): the per-domain cap's count, for the claim
    and the forecast alike."""
    query = (
        select(Prospect.domain, func.count())
        .select_from(Message)
        .join(Prospect, col(Prospect.id) == Message.prospect_id)
        .where(
            Message.sender == box.email,
            Message.channel == "email",
            col(Message.claimed_at) >= day_start(config, box, now),
            col(Message.state).in_(TAKEN_STATES),
        )
        .group_by(Prospect.domain)
    )
    if domains is not None:
        query = query.where(col(Prospect.domain).in_(domains))
    return {domain: count for domain, count in session.exec(query).all()}


def day_start(config: Config, box: Mailbox, at: datetime) -> datetime:
    """The mailbox's local midnight that starts the day ``at`` is in: its daily counts (the
    limit, the per-domain cap) start there."""
    zone = ZoneInfo(box.timezone or config.settings.sending.timezone)
    return datetime.combine(at.astimezone(zone).date(), time(0), zone)


def after_domain_cap(cal: planner.SendingCalendar, midnight: datetime) -> datetime:
    """When an email deferred by the per-domain cap on the day starting at ``midnight`` is
    due again: the next sending day's window (the dispatcher and the forecast both)."""
    return cal.next_open(midnight + timedelta(days=1))


__all__ = [
    "after_domain_cap",
    "day_start",
    "defer_if_domain_full",
    "BounceWindow",
    "Ramp",
    "after_hard_bounce",
    "bounce_window",
    "daily_limit",
    "local_day",
    "ramp",
    "ramp_now",
    "sent_to_domains",
]
