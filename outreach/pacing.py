"""Which mailbox may send when: its pause, its gap, and what is left of today's limit.

Kept in the ``mailbox_states`` row, locked in the claim's transaction and leased to one daemon
(:func:`outreach.cluster.lock_mailbox`), so limits and gaps hold across restarts and daemons.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from sqlmodel import Session

from outreach import cluster, reputation
from outreach.config import Config, Mailbox
from outreach.models import MailboxState


@dataclass
class Wait:
    """Nothing can leave this mailbox before ``until`` (its gap)."""

    until: datetime


@dataclass
class Paused:
    """The mailbox is paused, and why (``outreach mailboxes resume``)."""

    reason: str


@dataclass
class Room:
    """The mailbox may send ``count`` messages now; ``state`` is its locked row."""

    state: MailboxState
    count: int


class Pacing:
    """The mailboxes' pace, read and counted in the caller's transaction."""

    def __init__(self, config: Config, member: cluster.Member, rng: random.Random) -> None:
        self.config = config
        self.member = member
        self.rng = rng

    def local_day(self, box: Mailbox, now: datetime) -> str:
        """The mailbox's own date at ``now``: its daily limit counts that day."""
        zone = ZoneInfo(box.timezone or self.config.settings.sending.timezone)
        return now.astimezone(zone).date().isoformat()

    def daily_limit(
        self, session: Session, box: Mailbox, state: MailboxState, now: datetime
    ) -> int:
        """How many messages the mailbox may send on its day at ``now``: its limit, or its
        step on the warm-up ramp (``outreach/reputation.py``)."""
        return reputation.daily_limit(session, self.config, box, now)

    def room(
        self, session: Session, box: Mailbox, now: datetime, wanted: int
    ) -> Room | Wait | Paused | None:
        """Lock the mailbox for this transaction and say how many of ``wanted`` messages it
        may send now; None when another daemon serves it, or today's limit is reached (the
        rest waits for tomorrow, in due order)."""
        mailboxes = [b.email for b in self.config.mailboxes]
        state = cluster.lock_mailbox(session, box.email, self.member, mailboxes, now)
        if state is None:
            return None
        verdict = allowance(
            state,
            self.local_day(box, now),
            lambda: self.daily_limit(session, box, state, now),
            now,
            wanted,
        )
        session.add(state)
        return verdict

    def count_sends(self, session: Session, state: MailboxState, now: datetime, n: int) -> None:
        """``n`` more messages claimed for today; the next may go after a random gap."""
        if n == 0:
            return
        sending = self.config.settings.sending
        counted(state, now, n, self.rng.uniform(sending.min_gap_seconds, sending.max_gap_seconds))
        session.add(state)


# The two rules below are the whole of a mailbox's pace. The dispatcher applies them to the
# locked ``mailbox_states`` row; the forecast (``outreach/forecast.py``) to a copy of it, at
# the times it simulates: so ``outreach schedule`` says what the dispatcher will do.


def allowance(
    state: MailboxState, day: str, limit: int | Callable[[], int], now: datetime, wanted: int
) -> Room | Wait | Paused | None:
    """How many of ``wanted`` messages a mailbox in ``state`` may send at ``now``, its local
    date being ``day`` and ``limit`` that day's limit (a callable is called only when it
    matters); None when the day's limit is reached. A new day starts the count again
    (written to ``state``)."""
    if state.paused_reason:
        return Paused(state.paused_reason)
    if state.next_send_at and state.next_send_at > now:
        return Wait(state.next_send_at)
    if state.day != day:
        state.day, state.sent_on_day = day, 0
    count = min(wanted, (limit if isinstance(limit, int) else limit()) - state.sent_on_day)
    return Room(state, count) if count > 0 else None


def counted(state: MailboxState, now: datetime, n: int, gap_seconds: float) -> None:
    """``n`` more messages claimed at ``now`` for the day; the next may go after the gap."""
    if n == 0:
        return
    state.sent_on_day += n
    state.last_sent_at = now
    state.next_send_at = now + timedelta(seconds=gap_seconds)
