"""Reply attribution and the tallies: which variants a reply counts for, and each variant's
sends, wins and exposure as they stood at a moment.

A human reply anywhere in a thread counts for the subject variant of the thread's first
message, and for the body variant of the last email the prospect was sent before replying. A
prospect counts at most once per variant (also printed by ``outreach ab report``).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from sqlalchemy import select as sa_select
from sqlmodel import Session, col, func, select

from outreach.ab import counts as abcounts
from outreach.ab.registry import variant_column
from outreach.models import Event, Message
from outreach.sentiment import reply_class_of
from outreach.workspace import Workspace

# numpy and scipy load only when statistics are asked for (not at idle), aiosmtplib only to
# mail a digest.
if TYPE_CHECKING:
    pass

ATTRIBUTION = (
    "A human reply (not an auto-reply, not a bounce), or a meeting or webinar booked, counts "
    "for the subject variant of the thread's first message and for the body variant of the last "
    "email sent to the prospect before it; a prospect counts once per variant. Sends are "
    "messages delivered (bounces excluded); one younger than [ab] reply_window_days and not "
    "answered weighs the share of replies that come by its age, learnt from this workspace's "
    "own reply delays."
)
METRICS = {
    "positive_or_neutral": "replies classed positive or neutral (not negative, not unsubscribe)",
    "any_reply": "every human reply, unsubscribe requests and refusals included",
}
DELIVERED = ("sent",)  # a bounced message reached nobody; an unknown one may not have left


# ------------------------------------------------------------------------------ attribution


@dataclass(frozen=True)
class Reply:
    """A human reply as the A/B test sees it."""

    prospect_id: int
    at: datetime
    message_id: int | None  # our message it answered, when the headers said so
    reply_class: str  # positive | neutral | negative | unsubscribe


def counts(reply_class: str, metric: str) -> bool:
    if metric == "any_reply":
        return True
    return reply_class in ("positive", "neutral")


def human_replies(session: Session) -> list[Reply]:
    """Every human reply: classified replies (with a rep's correction), unsubscribe requests
    written as a reply, and replies a rep recorded with ``stop --reason replied``."""
    out = []
    events = session.exec(
        select(Event)
        .where(col(Event.kind).in_(("reply", "unsubscribe", "stop", "goal")))
        .order_by(col(Event.id))
    ).all()
    for event in events:
        reply_class = reply_class_of(event)
        if reply_class is not None:
            out.append(Reply(event.prospect_id, event.occurred_at, event.message_id, reply_class))
    return out


@dataclass
class Tally:
    sends: int = 0
    wins: int = 0
    exposure: float = 0.0  # what the sends weigh (a young unanswered send weighs < 1)


Segment = tuple[str, str]  # (language, persona); "" where the message had none
FactorKey = tuple[str, int, str]  # (sequence, step index, kind)


class Tallies(dict[FactorKey, dict[str, Tally]]):
    """Sends, wins and exposure per factor and variant, and the same per language and persona
    (``segments``), with the reply-delay curve each factor kind was weighed by."""

    def __init__(self) -> None:
        super().__init__()
        self.segments: dict[FactorKey, dict[Segment, dict[str, Tally]]] = {}
        self.curves: dict[str, abcounts.ReplyDelays] = {}
        # Per factor: its first send, and its sends younger than the reply window.
        self.first: dict[FactorKey, datetime] = {}
        self.recent: dict[FactorKey, int] = {}
        self.until: datetime | None = None
        self.window_days: float = 14

    def pace(self, key: FactorKey) -> float:
        """The factor's sends per day: the higher of its pace since its first send (a pause
        does not make it look idle) and over the last ``window_days`` (nor a ramp-up slow); a
        day at least for either."""
        first = self.first.get(key)
        if first is None or self.until is None:
            return 0.0
        total = sum(t.sends for t in self.get(key, {}).values())
        age = (self.until - first).total_seconds() / 86400
        return max(total / max(age, 1.0), self.recent.get(key, 0) / max(self.window_days, 1.0))


@dataclass(frozen=True)
class _Credit:
    key: FactorKey
    variant: str
    prospect_id: int
    message: Message  # the message credited (the thread's first for a subject)
    reply_at: datetime


def tallies(
    session: Session,
    metric: str,
    until: datetime | None = None,
    window_days: float = 14,
) -> Tallies:
    """Sends, wins and exposure per (sequence, step index, kind) and variant, under ``metric``,
    as they stood at ``until`` (None: everything, every send weighing 1).

    A send is never hidden for being young: one answered, or sent at least ``window_days``
    before ``until``, weighs 1; a younger unanswered one weighs the share of replies that come
    by its age, from the reply delays of this workspace's messages older than ``window_days``
    (:func:`outreach.ab.counts.reply_delays`). So 37 sends of yesterday tell what they can.
    """
    out = Tallies()
    out.until, out.window_days = until, window_days
    young_since = until - timedelta(days=window_days) if until is not None else None
    for kind in ("subject", "body"):
        column = variant_column(kind)
        # Five grouping columns: more than sqlmodel's select() is typed for.
        query = (
            sa_select(
                col(Message.sequence),
                col(Message.step_index),
                column,
                col(Message.language),
                col(Message.persona),
                func.count(),
                func.min(col(Message.sent_at)),
            )
            .where(
                column.is_not(None),
                col(Message.channel) == "email",
                col(Message.state).in_(DELIVERED),
            )
            .group_by(
                col(Message.sequence),
                col(Message.step_index),
                column,
                col(Message.language),
                col(Message.persona),
            )
        )
        if until is not None:
            query = query.where(col(Message.sent_at) <= until)
        for sequence, step_index, variant, language, persona, n, first in session.execute(
            query
        ).all():
            key = (sequence, step_index, kind)
            if first is not None:
                # A bare aggregate skips the ORM's conversion: the store keeps UTC.
                first = first if first.tzinfo else first.replace(tzinfo=UTC)
                out.first[key] = min(out.first.get(key, first), first)
            tally = out.setdefault(key, {}).setdefault(variant, Tally())
            tally.sends += n
            tally.exposure += n
            segment = (language or "", persona or "")
            seg = out.segments.setdefault(key, {}).setdefault(segment, {})
            seg.setdefault(variant, Tally(0, 0, 0.0))
            seg[variant].sends += n
            seg[variant].exposure += n
    credits = _credits(session, metric, until)
    won: dict[tuple[FactorKey, str], set[int]] = defaultdict(set)
    won_in: dict[tuple[FactorKey, Segment, str], set[int]] = defaultdict(set)
    answered: set[tuple[int | None, str]] = set()
    delays: dict[str, list[float]] = {"subject": [], "body": []}
    for c in credits:
        won[(c.key, c.variant)].add(c.prospect_id)
        won_in[(c.key, _segment(c.message), c.variant)].add(c.prospect_id)
        answered.add((c.message.id, c.key[2]))
        sent = c.message.sent_at
        if young_since is not None and sent is not None and sent <= young_since:
            delays[c.key[2]].append((c.reply_at - sent).total_seconds() / 86400)
    for (key, variant), ids in won.items():
        out.setdefault(key, {}).setdefault(variant, Tally()).wins += len(ids)
    for (key, segment, variant), ids in won_in.items():
        seg = out.segments.setdefault(key, {}).setdefault(segment, {})
        seg.setdefault(variant, Tally()).wins += len(ids)
    if until is None or young_since is None:
        return out
    out.curves = {kind: abcounts.reply_delays(d, window_days) for kind, d in delays.items()}
    young = session.exec(
        select(Message).where(
            Message.channel == "email",
            col(Message.state).in_(DELIVERED),
            col(Message.sent_at) > young_since,
            col(Message.sent_at) <= until,
        )
    ).all()
    for message in young:
        assert message.sent_at is not None
        age = (until - message.sent_at).total_seconds() / 86400
        for kind in ("subject", "body"):
            variant = message.subject_variant if kind == "subject" else message.body_variant
            if not variant:
                continue
            key = (message.sequence, message.step_index, kind)
            out.recent[key] = out.recent.get(key, 0) + 1
            if (message.id, kind) in answered:
                continue  # an answered send weighs 1, as counted
            missing = 1.0 - float(out.curves[kind].weight(age))
            out[key][variant].exposure -= missing
            out.segments[key][_segment(message)][variant].exposure -= missing
    return out


def _segment(message: Message) -> Segment:
    return (message.language or "", message.persona or "")


def arms_of(tally: Tallies, key: FactorKey, variants: list[str]) -> list[abcounts.Arm]:
    """The statistics' view of ``variants`` of one factor (none sent yet: 0 of 0)."""
    return arms_from(tally.get(key, {}), variants)


def arms_from(seen: Mapping[str, Tally], variants: list[str]) -> list[abcounts.Arm]:
    out = []
    for v in variants:
        t = seen.get(v, Tally())
        # Rounding can leave an exposure a hair outside [wins, sends]: clip it.
        out.append(
            abcounts.Arm(v, t.sends, t.wins, max(float(t.wins), min(float(t.sends), t.exposure)))
        )
    return out


def mature_until(ws: Workspace, now: datetime) -> datetime:
    """The moment the statistics are taken at: now. Young sends are no longer left out (they
    are weighed, see :func:`tallies`); kept so that callers read one moment."""
    return now


def _credits(session: Session, metric: str, until: datetime | None = None) -> list[_Credit]:
    """Which variants each counted reply (up to ``until``) is credited to."""
    replies = [
        r
        for r in human_replies(session)
        if counts(r.reply_class, metric) and (until is None or r.at <= until)
    ]
    if not replies:
        return []
    prospects = sorted({r.prospect_id for r in replies})
    sent: dict[int, list[Message]] = defaultdict(list)
    by_message_id: dict[str, Message] = {}
    for start in range(0, len(prospects), 500):
        chunk = prospects[start : start + 500]
        for message in session.exec(
            select(Message)
            .where(
                col(Message.prospect_id).in_(chunk),
                Message.channel == "email",
                col(Message.state).in_(DELIVERED),
            )
            .order_by(col(Message.sent_at), col(Message.id))
        ):
            sent[message.prospect_id].append(message)
            if message.message_id:
                by_message_id[message.message_id] = message
    out = []
    for reply in replies:
        before = [m for m in sent[reply.prospect_id] if m.sent_at and m.sent_at <= reply.at]
        if not before:
            continue
        last = before[-1]
        answered = next((m for m in before if m.id == reply.message_id), last)
        root = by_message_id.get(answered.thread_root or "", answered)
        # A message sent after ``until`` does not count as a send, nor its reply.
        if root.subject_variant and _counted(root, until):
            key = (root.sequence, root.step_index, "subject")
            out.append(_Credit(key, root.subject_variant, reply.prospect_id, root, reply.at))
        if last.body_variant and _counted(last, until):
            key = (last.sequence, last.step_index, "body")
            out.append(_Credit(key, last.body_variant, reply.prospect_id, last, reply.at))
    return out


def _counted(message: Message, until: datetime | None) -> bool:
    return until is None or (message.sent_at is not None and message.sent_at <= until)
