"""A/B assignment: which subject and body variant a new message gets.

By default the variant with the highest index (``[ab] assignment = "index"``,
:mod:`outreach.ab.index`); or a draw from the reply posteriors (``"thompson"``); or balanced (the
variant given to the fewest since the active set last changed). The state (what is active, the
counts, the tallies) lives here, beside the rest of the A/B test, and is read again on every
dispatch run (:meth:`Assigner.prepare`); the tallies at most every :data:`TALLIES_TTL`.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from sqlmodel import func, select

from outreach.ab import attribution, registry
from outreach.errors import TemplateError
from outreach.models import Message
from outreach.templates import Kind, StepTemplate
from outreach.workspace import Workspace

if TYPE_CHECKING:
    from outreach.ab import index as abindex

TALLIES_TTL = timedelta(minutes=10)  # the index's and Thompson's tallies are read again this often


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


class Assigner:
    """Chooses variants for new messages, for one dispatcher."""

    def __init__(self, ws: Workspace, rng: random.Random, now: Callable[[], datetime]) -> None:
        self.ws = ws
        self.rng = rng
        self.now = now
        self.state = registry.AssignmentState()
        self._counts: dict[tuple[str, int, str], dict[str, int]] = {}
        self._tallies: attribution.Tallies | None = None
        self._tallies_at: datetime | None = None
        # What the index gave each variant since the tallies were read (they do not count it).
        self._given: dict[tuple[str, int, str], dict[str, int]] = {}
        # Who may get which variants, per template, step, kind, language and persona, as the
        # files and reviews stood at the last prepare (ids of live template objects).
        self._eligible: dict[tuple[int, str, str, str, str, str | None], list[str]] = {}
        # Each factor's index as the tallies gave it (per set of eligible variants).
        self._factors: dict[tuple[tuple[str, int, str], tuple[str, ...]], abindex.Factor] = {}

    def prepare(self, now: datetime) -> bool:
        """Register new variants (refusing texts edited after they were sent) and read which a
        review retired; balance is counted afresh when the active set changed. A template file
        edited since the last run is read again first: True then."""
        changed = self.ws.refresh_templates()
        self._eligible = {}  # the files and the reviews' retirements are read again below
        with self.ws.store.session() as session:
            state = registry.sync_variants(self.ws, session, now)
        if state != self.state:  # a variant came, went or came back: balance from now on
            self._counts = {}
        self.state = state
        if self._tallies_at is None or now - self._tallies_at > TALLIES_TTL:
            self._tallies = None
            self._given = {}
            self._factors = {}
        return changed

    def assign(
        self,
        sequence: str,
        index: int,
        step: str,
        kind: Kind,
        template: StepTemplate,
        language: str,
        persona: str | None,
    ) -> str:
        """The variant for one new message: among the active variants that have a text for
        this prospect, the one given to the fewest since the active set last changed (or a
        Thompson draw)."""
        seen = (id(template), sequence, step, kind, language, persona)
        variants = self._eligible.get(seen)
        if variants is None:
            variants = self._eligible[seen] = [
                v.id for v in self.state.eligible(template, sequence, step, kind, language, persona)
            ]
        if not variants:
            raise TemplateError(
                f"no active {kind} variant in language '{language}' for step '{step}'",
                file=template.path,
                hint="add one, or un-retire one (`outreach ab restore`)",
            )
        key = (sequence, index, kind)
        if self.ws.config.settings.ab.assignment == "index":
            return self._index(key, variants)
        if self.ws.config.settings.ab.assignment == "thompson":
            return self._thompson(key, variants)
        if key not in self._counts:
            column = Message.subject_variant if kind == "subject" else Message.body_variant
            query = (
                select(column, func.count())
                .where(Message.sequence == sequence, Message.step_index == index)
                .group_by(column)
            )
            since = self.state.since.get((sequence, step, kind))
            if since is not None:
                query = query.where(Message.created_at >= since)
            with self.ws.store.session() as session:
                rows = session.exec(query).all()
            self._counts[key] = {name: count for name, count in rows if name}
        counts = self._counts[key]
        choice = balanced_choice(variants, counts, self.rng)
        counts[choice] = counts.get(choice, 0) + 1
        return choice

    def _read_tallies(self) -> attribution.Tallies:
        if self._tallies is None:
            settings = self.ws.config.settings.ab
            with self.ws.store.session() as session:
                self._tallies = attribution.tallies(
                    session,
                    settings.metric,
                    attribution.mature_until(self.ws, self.now()),
                    settings.reply_window_days,
                )
            self._tallies_at = self.now()
            self._given = {}
            self._factors = {}
        return self._tallies

    def _index(self, key: tuple[str, int, str], variants: list[str]) -> str:
        from outreach.ab import index as abindex

        tallies = self._read_tallies()
        factor = self._factors.get((key, tuple(variants)))
        if factor is None:
            horizon = abindex.horizon_sends(
                tallies.pace(key), self.ws.config.settings.ab.horizon_days
            )
            factor = abindex.Factor(attribution.arms_of(tallies, key, variants), horizon)
            self._factors[(key, tuple(variants))] = factor
        given = self._given.setdefault(key, {})
        choice = factor.choose(variants, given, self.rng)
        given[choice] = given.get(choice, 0) + 1
        return choice

    def _thompson(self, key: tuple[str, int, str], variants: list[str]) -> str:
        from outreach.ab import stats as abstats

        tallies = self._read_tallies()
        return abstats.thompson_choice(attribution.arms_of(tallies, key, variants), self.rng)
