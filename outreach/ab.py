"""The A/B test: variant assignment, the variant registry, reply attribution and the review.

Two independent factors per email step: the subject (only on a step that starts a thread; a
``thread: reply`` step inherits its thread's subject) and the body. The statistics themselves
are pure and live in :mod:`outreach.abstats`; this module feeds them from the store.

Attribution (also printed by ``outreach ab report``): a human reply anywhere in a thread
counts for the subject variant of the thread's first message, and for the body variant of the
last email the prospect was sent before replying. A prospect counts at most once per variant.
"""

from __future__ import annotations

import asyncio
import random
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import select as sa_select
from sqlmodel import Session, col, func, select

from outreach import abcounts, clock
from outreach.config import ABSettings, Mailbox
from outreach.errors import NotFound, OutreachError, Problems, TemplateError
from outreach.mail.message import Outgoing, build_message, make_message_id
from outreach.models import Decision, Event, Message, Review
from outreach.models import Variant as VariantRow
from outreach.sentiment import reply_class_of
from outreach.templates import Kind, StepTemplate, Variant
from outreach.workspace import Workspace

# numpy and scipy load only when statistics are asked for (not at idle), aiosmtplib only to
# mail a digest.
if TYPE_CHECKING:
    from outreach import abstats
    from outreach.mail.smtp import Outcome, Transport

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


# ------------------------------------------------------------------------------ assignment


def balanced_choice(variants: Sequence[str], counts: Mapping[str, int], rng: random.Random) -> str:
    """The variant given to the fewest so far (ties drawn at random).

    Balanced, not merely equal odds: after n assignments the counts differ by at most one,
    so even a small test is fair. The caller counts since the set of active variants last
    changed, so a variant added later gets an equal share from then on (not every prospect
    until it has caught up).
    """
    if not variants:
        raise ValueError("no variant to choose from")
    fewest = min(counts.get(v, 0) for v in variants)
    return rng.choice([v for v in variants if counts.get(v, 0) == fewest])


# ------------------------------------------------------------------------------ the factors


@dataclass(frozen=True)
class Factor:
    """The subjects, or the bodies, of one email step of one sequence."""

    sequence: str
    step: str
    step_index: int
    kind: Kind  # subject | body
    template: StepTemplate

    @property
    def variants(self) -> list[Variant]:
        return self.template.subjects if self.kind == "subject" else self.template.bodies

    @property
    def key(self) -> tuple[str, int, str]:
        return (self.sequence, self.step_index, self.kind)

    def label(self) -> str:
        return f"{self.sequence}/{self.step} {plural(self.kind)}"


def plural(kind: str, n: int = 2) -> str:
    """ "subjects", "bodies" (or the singular when ``n`` is 1)."""
    if n == 1:
        return kind
    return "subjects" if kind == "subject" else "bodies"


def factors(ws: Workspace) -> Iterator[Factor]:
    """Every tested factor, in playbook order: each email step's subjects (when the step starts
    a thread) and bodies."""
    for name in sorted(ws.sequences):
        sequence = ws.sequences[name]
        for index, step in enumerate(sequence.steps):
            if not step.is_email:
                continue
            template = ws.templates.get(step.template)
            kinds: tuple[Kind, ...] = ("subject", "body") if step.thread == "new" else ("body",)
            for kind in kinds:
                yield Factor(name, step.name, index, kind, template)


def _variant_column(kind: str) -> Any:
    return Message.subject_variant if kind == "subject" else Message.body_variant


# ------------------------------------------------------------------------------ the registry


@dataclass
class AssignmentState:
    """What the dispatcher needs from the registry: which variants a review retired, and since
    when each factor's set of active variants has been what it is (balance is counted from
    then)."""

    retired: set[tuple[str, str, str, str]] = field(default_factory=set)
    since: dict[tuple[str, str, str], datetime] = field(default_factory=dict)
    restored: dict[tuple[str, str, str, str], datetime] = field(default_factory=dict)

    def is_retired(self, sequence: str, step: str, kind: str, variant: str) -> bool:
        return (sequence, step, kind, variant) in self.retired

    def active(self, template: StepTemplate, sequence: str, step: str, kind: Kind) -> list[Variant]:
        """The variants in the test: active in the file and not retired by a review."""
        return [v for v in template.active(kind) if not self.is_retired(sequence, step, kind, v.id)]

    def eligible(
        self,
        template: StepTemplate,
        sequence: str,
        step: str,
        kind: Kind,
        language: str,
        persona: str | None,
    ) -> list[Variant]:
        """The variants a prospect can get: in the test, with a text in their language."""
        return [
            v
            for v in self.active(template, sequence, step, kind)
            if v.text_for(language, persona) is not None
        ]


def sync_variants(ws: Workspace, session: Session, now: datetime) -> AssignmentState:
    """Register new variants and languages; refuse a text edited in place after it was sent.

    A variant's text in a language is fixed once a message carried it: the edit must go under
    a new id (the old one can be retired), so a reply is never counted for a text it did not
    answer. An edit before the first send is simply taken.
    """
    rows = {
        (r.sequence, r.step, r.kind, r.variant): r for r in session.exec(select(VariantRow)).all()
    }
    problems: list[OutreachError] = []
    for factor in factors(ws):
        for variant in factor.variants:
            key = (factor.sequence, factor.step, factor.kind, variant.id)
            current = {language: variant.fingerprint(language) for language in variant.languages}
            row = rows.get(key)
            if row is None:
                row = VariantRow(
                    sequence=factor.sequence,
                    step=factor.step,
                    kind=factor.kind,
                    variant=variant.id,
                    fingerprints=current,
                    active_since=now,
                )
                session.add(row)
                rows[key] = row
                continue
            changed = [
                language
                for language, fingerprint in current.items()
                if row.fingerprints.get(language) not in (None, fingerprint)
            ]
            edited = [
                language
                for language in sorted(changed)
                if _was_sent(session, factor, variant.id, language)
            ]
            if edited:
                problems.append(
                    TemplateError(
                        f"{factor.kind} '{variant.id}' was edited after it was sent "
                        f"({', '.join(edited)}); its replies would mix two texts",
                        file=factor.template.path,
                        line=variant.line,
                        hint="restore the sent text, or give the new text a new id "
                        "and mark the old one `retired: true`",
                    )
                )
            elif current != row.fingerprints:
                row.fingerprints = {**row.fingerprints, **current}
                session.add(row)
    if problems:
        raise Problems(problems)
    return assignment_state(rows.values())


def check_variants(ws: Workspace) -> tuple[AssignmentState, list[OutreachError]]:
    """What ``validate`` needs, changing nothing: the retired variants, and the texts edited
    after they were sent. A database that does not exist yet has neither."""
    if not _database_exists(ws):
        return AssignmentState(), []
    with ws.store.session() as session:
        try:
            return sync_variants(ws, session, clock.now()), []
        except Problems as exc:
            return assignment_state(session.exec(select(VariantRow)).all()), exc.problems
        finally:
            session.rollback()


def stored_state(ws: Workspace) -> AssignmentState:
    """The reviews' retirements as stored, read only (none before the database exists)."""
    if not _database_exists(ws):
        return AssignmentState()
    with ws.store.session() as session:
        return assignment_state(session.exec(select(VariantRow)).all())


def _database_exists(ws: Workspace) -> bool:
    """False for a SQLite file not yet made: asking would create it (validate must not)."""
    url = ws.config.database_url
    return not url.startswith("sqlite:///") or Path(url[len("sqlite:///") :]).exists()


def assignment_state(rows: Iterable[VariantRow]) -> AssignmentState:
    state = AssignmentState()
    for row in rows:
        factor = (row.sequence, row.step, row.kind)
        moments = [row.active_since] + ([row.retired_at] if row.retired_at else [])
        if row.retired_at is not None:
            state.retired.add((row.sequence, row.step, row.kind, row.variant))
        elif row.retired_by:  # "restored (was review 12)"
            state.restored[(row.sequence, row.step, row.kind, row.variant)] = row.active_since
        latest = max(moments)
        if factor not in state.since or latest > state.since[factor]:
            state.since[factor] = latest
    return state


def _was_sent(session: Session, factor: Factor, variant: str, language: str) -> bool:
    """Whether a message carried this variant's text in ``language`` (asked only when the
    text changed, which is rare: the dispatcher checks every tick)."""
    column = _variant_column(factor.kind)
    return (
        session.exec(
            select(Message.id).where(
                Message.sequence == factor.sequence,
                Message.step_index == factor.step_index,
                column == variant,
                Message.language == language,
                col(Message.state).in_(("sending", "sent", "unknown", "bounced")),
            )
        ).first()
        is not None
    )


def restore(
    ws: Workspace, sequence: str, step: str, kind: str, variant: str, now: datetime
) -> None:
    """Put a retired variant back in the test, from now on with an equal share."""
    factor = next(
        (f for f in factors(ws) if (f.sequence, f.step, f.kind) == (sequence, step, kind)), None
    )
    if factor is None:
        raise NotFound(
            f"no email step '{step}' with {plural(kind)} in sequence '{sequence}'",
            hint="`outreach ab report` lists the steps and their variants",
        )
    in_file = next((v for v in factor.variants if v.id == variant), None)
    if in_file is not None and in_file.retired:
        raise OutreachError(
            f"{kind} '{variant}' is retired in the template file, not by a review",
            file=factor.template.path,
            line=in_file.line,
            hint="remove its `retired: true` there",
        )
    with ws.store.session() as session:
        row = session.get(VariantRow, (sequence, step, kind, variant))
        if row is None or in_file is None:
            raise NotFound(
                f"no {kind} variant '{variant}' in {sequence}/{step}",
                hint="`outreach ab report` lists them",
            )
        if row.retired_at is None:
            raise OutreachError(f"{kind} '{variant}' of {sequence}/{step} is not retired")
        row.retired_at = None
        row.retired_by = f"restored (was {row.retired_by})"
        row.active_since = now
        session.add(row)


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
    (:func:`outreach.abcounts.reply_delays`). So 37 sends of yesterday tell what they can.
    """
    out = Tallies()
    out.until, out.window_days = until, window_days
    young_since = until - timedelta(days=window_days) if until is not None else None
    for kind in ("subject", "body"):
        column = _variant_column(kind)
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


# ------------------------------------------------------------------------------ the review


@dataclass
class FactorReview:
    """One factor's verdicts: the active variants' decisions, and the ones retired before."""

    factor: Factor
    decisions: list[abstats.Decision]
    wanted: int  # min_active_subjects or min_active_bodies
    retired_before: list[str] = field(default_factory=list)

    @property
    def active_after(self) -> int:
        return sum(1 for d in self.decisions if d.action == "keep")

    @property
    def missing(self) -> int:
        return max(0, self.wanted - self.active_after)

    @property
    def leader(self) -> abstats.Decision | None:
        keep = [d for d in self.decisions if d.action == "keep"]
        return max(keep, key=lambda d: (d.p_best, d.sends)) if keep else None


@dataclass
class ReviewResult:
    ran_at: datetime
    metric: str
    dry_run: bool
    review_id: int | None
    factors: list[FactorReview]

    @property
    def retired(self) -> list[tuple[FactorReview, abstats.Decision]]:
        return [(f, d) for f in self.factors for d in f.decisions if d.action == "retire"]

    @property
    def needs_copy(self) -> list[FactorReview]:
        return [f for f in self.factors if f.missing]

    def to_json(self) -> dict[str, Any]:
        return {
            "review": self.review_id,
            "ran_at": self.ran_at.isoformat(),
            "dry_run": self.dry_run,
            "metric": self.metric,
            "attribution": ATTRIBUTION,
            "factors": [
                {
                    "sequence": f.factor.sequence,
                    "step": f.factor.step,
                    "kind": f.factor.kind,
                    "template": f.factor.template.path,
                    "active_after": f.active_after,
                    "wanted": f.wanted,
                    "decisions": [_decision_json(d) for d in f.decisions],
                }
                for f in self.factors
            ],
        }


def _decision_json(d: abstats.Decision) -> dict[str, Any]:
    return {
        "variant": d.variant,
        "sends": d.sends,
        "replies": d.wins,
        "rate": round(d.rate, 6),
        "interval": [round(d.low, 6), round(d.high, 6)],
        "p_best": round(d.p_best, 6),
        "action": d.action,
        "reason": d.reason,
    }


def _fresh_trial(
    session: Session,
    factor: Factor,
    decisions: list[abstats.Decision],
    state: AssignmentState,
    until: datetime,
    settings: ABSettings,
) -> list[abstats.Decision]:
    """A variant put back with ``ab restore`` gets a real trial: it may be retired again only
    after ``min_sends_per_variant`` sends since it came back (its earlier numbers still count
    in the statistics)."""
    out = []
    for d in decisions:
        since = state.restored.get((factor.sequence, factor.step, factor.kind, d.variant))
        if d.action == "retire" and since is not None:
            fresh = session.exec(
                select(func.count()).where(
                    Message.sequence == factor.sequence,
                    Message.step_index == factor.step_index,
                    _variant_column(factor.kind) == d.variant,
                    col(Message.state).in_(DELIVERED),
                    col(Message.sent_at) >= since,
                    col(Message.sent_at) <= until,
                )
            ).one()
            if fresh < settings.min_sends_per_variant:
                d = replace(
                    d,
                    action="keep",
                    reason=f"{d.reason}, but restored {since:%Y-%m-%d}: only {fresh} sends "
                    f"since (< {settings.min_sends_per_variant}), kept",
                )
        out.append(d)
    return out


def wanted(ws: Workspace, kind: str) -> int:
    settings = ws.config.settings.ab
    return settings.min_active_subjects if kind == "subject" else settings.min_active_bodies


def review(
    ws: Workspace, now: datetime, *, dry_run: bool = False, trigger: str = "manual"
) -> ReviewResult:
    """Per step and factor, keep or retire each active variant; record every decision.

    ``dry_run`` decides the same way and records nothing.
    """
    from outreach import abstats

    settings = ws.config.settings.ab
    until = mature_until(ws, now)
    with ws.store.session() as session:
        state = sync_variants(ws, session, now)
        tally = tallies(session, settings.metric, until, settings.reply_window_days)
        results = []
        for factor in factors(ws):
            active = state.active(factor.template, factor.sequence, factor.step, factor.kind)
            arms = arms_of(tally, factor.key, [v.id for v in active])
            decisions = (
                abstats.review(
                    arms,
                    min_sends=settings.min_sends_per_variant,
                    retire_below=settings.retire_below_probability,
                    margin=settings.retire_margin,
                    prior_strength=settings.prior_sends,
                )
                if arms
                else []
            )
            decisions = _fresh_trial(session, factor, decisions, state, until, settings)
            retired_before = [v.id for v in factor.variants if v not in active]
            results.append(FactorReview(factor, decisions, wanted(ws, factor.kind), retired_before))
        result = ReviewResult(now, settings.metric, dry_run, None, results)
        if dry_run:
            session.rollback()  # not even the registry is touched
            return result
        row = Review(
            ran_at=now,
            trigger=trigger,
            metric=settings.metric,
            settings={
                "min_sends_per_variant": settings.min_sends_per_variant,
                "retire_below_probability": settings.retire_below_probability,
                "retire_margin": settings.retire_margin,
                "prior_sends": settings.prior_sends,
                "reply_window_days": settings.reply_window_days,
                "assignment": settings.assignment,
                "horizon_days": settings.horizon_days,
            },
        )
        session.add(row)
        session.flush()
        result.review_id = row.id
        for fr in results:
            f = fr.factor
            for d in fr.decisions:
                assert row.id is not None
                session.add(
                    Decision(
                        review_id=row.id,
                        sequence=f.sequence,
                        step=f.step,
                        step_index=f.step_index,
                        kind=f.kind,
                        variant=d.variant,
                        sends=d.sends,
                        wins=d.wins,
                        rate=d.rate,
                        low=d.low,
                        high=d.high,
                        p_best=d.p_best,
                        action=d.action,
                        reason=d.reason,
                    )
                )
                if d.action == "retire":
                    variant = session.get(VariantRow, (f.sequence, f.step, f.kind, d.variant))
                    assert variant is not None  # sync_variants registered it
                    variant.retired_at = now
                    variant.retired_by = f"review {row.id}"
                    session.add(variant)
    return result


# ------------------------------------------------------------------------------ the digest


def _pct(x: float) -> str:
    return f"{100 * x:.1f} %"


def describe(d: abstats.Decision) -> str:
    """One decision's numbers as a person reads them."""
    if not d.sends:
        return f"not sent yet, P(best) {d.p_best:.3f}"
    # Young sends weigh less than 1 (see `tallies`): say so where it changed the rate.
    weighed = f" (weighing {d.exposure:.1f})" if d.exposure < d.sends - 0.05 else ""
    return (
        f"{d.wins}/{d.sends}{weighed} = {_pct(d.rate)} (95 % {_pct(d.low)}-{_pct(d.high)}), "
        f"P(best) {d.p_best:.3f}"
    )


def digest(result: ReviewResult, timezone: str) -> str:
    """The marketer's short digest of a review: what needs new copy, what was retired, what
    is winning."""
    from zoneinfo import ZoneInfo

    when = result.ran_at.astimezone(ZoneInfo(timezone))
    lines = [
        f"# A/B review {when:%Y-%m-%d %H:%M} ({timezone})",
        "",
        f"Metric: {METRICS[result.metric]}.",
        "",
        "## Needs new copy",
    ]
    for f in result.needs_copy:
        leader = f.leader
        lines.append(
            f"- {f.factor.label()}: {f.active_after} active, at least {f.wanted} wanted: "
            f"write {f.missing} more {plural(f.factor.kind, f.missing)} in {f.factor.template.path}"
            + (f"; winning: '{leader.variant}' {describe(leader)}" if leader else "")
        )
    if not result.needs_copy:
        lines.append("- nothing: every step has enough active variants")
    lines += ["", "## Retired by this review"]
    lines += [f"- {f.factor.label()} '{d.variant}': {describe(d)}" for f, d in result.retired]
    if not result.retired:
        lines.append("- none")
    lines += ["", "## Leading"]
    for f in result.factors:
        leader = f.leader
        others = [d.p_best for d in f.decisions if d is not leader]
        clear = leader is not None and others and leader.p_best > max(others) + 0.01
        if leader is not None and clear and leader.sends:
            lines.append(f"- {f.factor.label()}: '{leader.variant}' {describe(leader)}")
    return "\n".join(lines) + "\n"


def publish_digest(
    ws: Workspace,
    result: ReviewResult,
    transport_for: Callable[[Mailbox], Transport] | None = None,
) -> list[str]:
    """Write the digest file and, when ``[ab] digest_to`` is set, mail it from the first
    mailbox. Returns what was done, one line each (a failed mail is a line, not an error: the
    review itself has been recorded)."""
    settings = ws.config.settings
    text = digest(result, settings.sending.timezone)
    done = []
    if settings.ab.digest_file:
        path = ws.config.root / settings.ab.digest_file
        try:
            # A running history, newest first: each review's decisions stay readable after the
            # next one (the mail carries only the new review).
            earlier = path.read_text(encoding="utf-8") if path.exists() else ""
            path.write_text(text + ("\n---\n\n" + earlier if earlier.strip() else ""), "utf-8")
        except OSError as exc:
            done.append(f"digest not written to {path}: {exc.strerror} ([ab] digest_file)")
        else:
            done.append(f"digest written to {path}")
    if settings.ab.digest_to and ws.config.mailboxes:
        box = ws.config.mailboxes[0]
        first_line = text.splitlines()[0].lstrip("# ")
        outgoing = Outgoing(
            from_name=box.name,
            from_email=box.email,
            to_email=settings.ab.digest_to,
            to_name=None,
            subject=first_line
            + (f": {len(result.needs_copy)} step(s) need new copy" if result.needs_copy else ""),
            text=text,
            html=None,
            message_id=make_message_id(box.email),
            date=result.ran_at,
        )

        from outreach.mail.smtp import SmtpTransport  # aiosmtplib: only to mail a digest

        async def send() -> Outcome:
            message = build_message(outgoing)
            transport = (transport_for or SmtpTransport)(box)
            try:
                transport.check()
                return await transport.send(message, box.email, settings.ab.digest_to or "")
            finally:
                await transport.close()

        try:
            outcome = asyncio.run(send())
        except OutreachError as exc:
            done.append(f"digest not mailed: {exc.one_line()}")
        else:
            done.append(
                f"digest mailed to {settings.ab.digest_to}"
                if outcome.kind == "sent"
                else f"digest not mailed to {settings.ab.digest_to}: {outcome}"
            )
    return done
