"""The A/B report: per step and factor, every variant ever tested, with its words and numbers.

The document :func:`report` returns is what ``outreach ab report --json`` prints and what
:mod:`outreach.ab.html` draws; the text and HTML views only format it, so the three agree.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime
from typing import Any

from sqlmodel import col, select

from outreach.ab import attribution, registry
from outreach.ab import review as ab_review
from outreach.errors import TemplateError
from outreach.models import Decision, Review
from outreach.models import Variant as VariantRow
from outreach.templates import Variant
from outreach.workspace import Workspace, template_variables


def report(ws: Workspace, now: datetime) -> dict[str, Any]:
    """Per sequence, step and factor, every variant ever tested: its words (rendered for the
    sample prospect), sends, replies, rate, 95 % credible interval, probability to be best
    (among the active ones), status and each review's numbers (oldest first); the same per
    language and persona where the step's messages have more than one; and the reviews."""
    from outreach.ab import stats as abstats

    settings = ws.config.settings.ab
    with ws.store.session() as session:
        rows = {
            (r.sequence, r.step, r.kind, r.variant): r for r in session.exec(select(VariantRow))
        }
        tally = attribution.tallies(session, settings.metric, now, settings.reply_window_days)
        history: dict[tuple[str, str, str, str], list[dict[str, Any]]] = defaultdict(list)
        for decision, ran_at in session.exec(
            select(Decision, Review.ran_at)
            .join(Review, col(Review.id) == col(Decision.review_id))
            .order_by(col(Decision.id))
        ).all():
            history[(decision.sequence, decision.step, decision.kind, decision.variant)].append(
                {
                    "review": decision.review_id,
                    "at": ran_at.isoformat(),
                    "sends": decision.sends,
                    "replies": decision.wins,
                    "rate": round(decision.rate, 6),
                    "interval": [round(decision.low, 6), round(decision.high, 6)],
                    "p_best": round(decision.p_best, 6),
                    "action": decision.action,
                    "reason": decision.reason,
                }
            )
        reviews = list(session.exec(select(Review).order_by(col(Review.id))).all())
    sample = _Sample(ws)
    steps = []
    for factor in registry.factors(ws):
        seen = tally.get(factor.key, {})
        in_file = {v.id: v for v in factor.variants}
        known = [
            key[3]
            for key in rows
            if key[:3] == (factor.sequence, factor.step, factor.kind) and key[3] not in in_file
        ]
        ids = list(in_file) + sorted(set(known) | {v for v in seen if v not in in_file})
        variants: list[dict[str, Any]] = []
        for variant_id in ids:
            row = rows.get((factor.sequence, factor.step, factor.kind, variant_id))
            if variant_id not in in_file:
                status, since = "removed", None
            elif in_file[variant_id].retired:
                status, since = "retired", "in the template file"
            elif row is not None and row.retired_at is not None:
                status, since = "retired", f"{row.retired_by}, {row.retired_at:%Y-%m-%d}"
            else:
                status, since = "active", None
            (arm,) = attribution.arms_from(seen, [variant_id])
            low, high = abstats.credible_interval_of(arm)
            variants.append(
                {
                    "variant": variant_id,
                    "status": status,
                    "retired": since,
                    **sample.words(factor, in_file.get(variant_id)),
                    "sends": arm.sends,
                    "weighted_sends": round(arm.trials, 3),
                    "replies": arm.wins,
                    "rate": round(arm.wins / arm.trials, 6) if arm.trials else 0.0,
                    "interval": [round(low, 6), round(high, 6)],
                    "p_best": None,
                    "history": history.get(
                        (factor.sequence, factor.step, factor.kind, variant_id), []
                    ),
                }
            )
        active = [v for v in variants if v["status"] == "active"]
        if active:
            arms = attribution.arms_from(seen, [v["variant"] for v in active])
            # The review's prior, so that the P(best) shown is the one it decides on.
            prior = abstats.pooled_prior(arms, settings.prior_sends)
            p_best = abstats.prob_best(arms, prior)
            for v, p in zip(active, p_best, strict=True):
                v["p_best"] = round(p, 6)
        steps.append(
            {
                "sequence": factor.sequence,
                "step": factor.step,
                "step_index": factor.step_index,
                "kind": factor.kind,
                "template": factor.template.path,
                "active": len(active),
                "wanted": ab_review.wanted(ws, factor.kind),
                "sends": sum(v["sends"] for v in variants),
                "variants": variants,
                "segments": _segments(
                    tally.segments.get(factor.key, {}),
                    [v["variant"] for v in active],
                    settings.min_sends_per_variant,
                    settings.prior_sends,
                ),
                "reviews": _marks(reviews, variants),
            }
        )
    curves = {kind: curve for kind, curve in tally.curves.items()}
    return {
        "generated_at": now.isoformat(),
        "metric": settings.metric,
        "metric_means": attribution.METRICS[settings.metric],
        "attribution": attribution.ATTRIBUTION,
        "sample_prospect": sample.who,
        "reply_delays": {
            kind: {
                "own_replies": curve.observed,
                "median_days": round(curve.median(), 3),
                "within_3_days": round(float(curve.weight(3.0)), 3),
                "window_days": curve.window_days,
            }
            for kind, curve in curves.items()
        },
        "last_review": (
            {
                "id": reviews[-1].id,
                "at": reviews[-1].ran_at.isoformat(),
                "trigger": reviews[-1].trigger,
            }
            if reviews
            else None
        ),
        "steps": steps,
    }


def _segments(
    segments: dict[attribution.Segment, dict[str, attribution.Tally]],
    active: list[str],
    min_sends: int,
    prior_sends: float,
) -> list[dict[str, Any]]:
    """The active variants' figures per language and persona, when the step's messages have
    more than one of either. P(best) within a segment only where every active variant has
    ``min_sends_per_variant`` sends there: the review decides on all prospects together, and
    a segment is not split below that."""
    from outreach.ab import stats as abstats

    if len(segments) < 2 or not active:
        return []
    out = []
    for (language, persona), seen in sorted(segments.items()):
        arms = attribution.arms_from(seen, active)
        enough = all(a.sends >= min_sends for a in arms)
        p_best: list[float | None] = [None] * len(arms)
        if enough and len(arms) > 1:
            p_best = list(abstats.prob_best(arms, abstats.pooled_prior(arms, prior_sends)))
        out.append(
            {
                "language": language or None,
                "persona": persona or None,
                "enough_data": enough,
                "variants": [
                    {
                        "variant": a.id,
                        "sends": a.sends,
                        "replies": a.wins,
                        "rate": round(a.wins / a.trials, 6) if a.trials else 0.0,
                        "interval": [round(x, 6) for x in abstats.credible_interval_of(a)],
                        "p_best": None if p is None else round(p, 6),
                    }
                    for a, p in zip(arms, p_best, strict=True)
                ],
            }
        )
    return out


def _marks(reviews: list[Review], variants: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each review that judged this factor: when, and what it retired here."""
    out = []
    for review in reviews:
        decided = [
            (v["variant"], h["action"])
            for v in variants
            for h in v["history"]
            if h["review"] == review.id
        ]
        if decided:
            out.append(
                {
                    "review": review.id,
                    "at": review.ran_at.isoformat(),
                    "trigger": review.trigger,
                    "retired": [variant for variant, action in decided if action == "retire"],
                }
            )
    return out


def first_line(body: str) -> str:
    """A body's first line of its own: the first non-empty line that is not the greeting
    ("Hi Aino," is the same in every variant and says nothing about it)."""
    lines = [line.strip() for line in body.splitlines() if line.strip()]
    for line in lines:
        if not (line.endswith(",") and len(line.split()) <= 4):
            return line
    return lines[0] if lines else ""


class _Sample:
    """Each variant's words as the sample prospect ([sample_prospect], as `validate` renders)
    would read them: the subject line, or the body's first line after the greeting."""

    def __init__(self, ws: Workspace) -> None:
        from outreach.validate import PLACEHOLDER_SENDER, SAMPLE_PROSPECT

        self.ws = ws
        settings = ws.config.settings
        sample = {**SAMPLE_PROSPECT, **settings.sample_prospect}
        self.language = sample.get("language") or settings.sending.language
        self.persona = sample.get("persona") or None
        box = ws.config.mailboxes[0] if ws.config.mailboxes else PLACEHOLDER_SENDER
        standard = {k: v for k, v in sample.items() if k in SAMPLE_PROSPECT}
        extra = {k: v for k, v in sample.items() if k not in SAMPLE_PROSPECT}
        self.variables = template_variables(
            {**standard, "language": self.language, "persona": self.persona},
            extra,
            ws.sender_variables(box),
            settings.variables,
        )
        self.who = " ".join(x for x in (sample.get("first_name"), sample.get("last_name")) if x) + (
            f", {sample['company']}" if sample.get("company") else ""
        )

    def words(self, factor: registry.Factor, variant: Variant | None) -> dict[str, Any]:
        """``{"text": ..., "language": ...}``; None for a variant no longer in the file."""
        if variant is None:
            return {"text": None, "language": None}
        language = self.language if self.language in variant.languages else None
        if language is None:  # the variant has no text in the sample's language: its first
            language = sorted(variant.languages)[0] if variant.languages else self.language
        renderer, path = self.ws.renderer, factor.template.path
        try:
            if factor.kind == "subject":
                text = renderer.render_subject(
                    variant, language, self.persona, self.variables, path
                )
            else:
                body, _ = renderer.render_body(
                    variant, language, self.persona, self.variables, path
                )
                text = first_line(body)
        except TemplateError as exc:  # validate names it; the report still shows the numbers
            text = f"(does not render: {exc.message})"
        return {"text": text, "language": language}
