"""The A/B review and its digest: each factor's variants judged on the tallies
(:mod:`outreach.ab.stats`), the decisions stored, the digest written and mailed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlmodel import Session, col, func, select

from outreach.ab.attribution import (
    ATTRIBUTION,
    DELIVERED,
    METRICS,
    arms_of,
    mature_until,
    tallies,
)
from outreach.ab.registry import (
    AssignmentState,
    Factor,
    factors,
    plural,
    sync_variants,
    variant_column,
)
from outreach.config import ABSettings, Mailbox
from outreach.errors import OutreachError
from outreach.mail.message import Outgoing, build_message, make_message_id
from outreach.models import Decision, Message, Review
from outreach.models import Variant as VariantRow
from outreach.workspace import Workspace

# numpy and scipy load only when statistics are asked for (not at idle), aiosmtplib only to
# mail a digest.
if TYPE_CHECKING:
    from outreach.ab import stats as abstats
    from outreach.mail.smtp import Outcome, Transport

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
                    variant_column(factor.kind) == d.variant,
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
    from outreach.ab import stats as abstats

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
