"""The A/B assignment's index: which variant the next prospect gets, by an index per variant.

Pure functions of counts, in plain Python (no numpy: the dispatcher calls them for every new
message). Each variant's index is its posterior mean reply rate plus a bonus for what one more
send would teach, worth more the more sends there are still to come: the Gittins index of a
Beta-Bernoulli arm, which is the optimal rule for independent arms when each send counts
``1 - 1/horizon`` as much as the one before, in the closed-form approximation of Brezzi and Lai
("Optimal learning and experimentation in bandit problems", Journal of Economic Dynamics and
Control 27, 2002):

    index = mean + sd * psi(1 / ((n + 1) * c)),  c = -ln(1 - 1 / horizon)

with ``mean`` and ``sd`` those of the rate's Beta posterior and ``n`` its weight in sends. A
variant with few sends gets a large bonus (a fair try, however late it comes: the index is the
same at any age of the test), a well-measured one almost none; a clear loser is left alone as
soon as its bonus no longer covers its gap. Unlike Thompson sampling, which explores as if the
test lasted for ever, it explores only as much as ``horizon`` more sends can repay.

Sends not answered yet are on their way to telling: they count in ``n`` (so the bonus already
shrinks with them), while the mean counts them by their exposure (:class:`abcounts.ReplyDelays`).
The prospects assigned since the counts were read (``pending``) count in ``n`` the same way, so a
batch of choices from the same counts spreads where the bonuses are close.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence

from outreach.ab.counts import PRIOR, Arm, posterior_params

# Below this many sends of horizon the bonus makes no sense (nothing left to repay a lesson).
MIN_HORIZON = 10.0


def _psi(s: float) -> float:
    """Brezzi and Lai's piecewise approximation of the normalised Gittins bonus."""
    if s <= 0.2:
        return math.sqrt(s / 2)
    if s <= 1.0:
        return 0.49 - 0.11 / math.sqrt(s)
    if s <= 5.0:
        return 0.63 - 0.26 / math.sqrt(s)
    if s <= 15.0:
        return 0.77 - 0.58 / math.sqrt(s)
    return math.sqrt(2 * math.log(s) - math.log(math.log(s)) - math.log(16 * math.pi))


def _index(mean: float, n: float, c: float) -> float:
    return mean + math.sqrt(mean * (1 - mean) / (n + 1)) * _psi(1 / ((n + 1) * c))


def gittins_index(
    arms: Sequence[Arm],
    horizon: float,
    prior: tuple[float, float] = PRIOR,
    pending: Sequence[float] | None = None,
) -> list[float]:
    """Each arm's index (see the module's docstring), ``horizon`` sends still to come."""
    factor = Factor(arms, horizon, prior)
    extra = pending if pending is not None else [0.0] * len(arms)
    return [factor.index(arm.id, extra[i]) for i, arm in enumerate(arms)]


def index_choices(
    arms: Sequence[Arm],
    n: int,
    rng: random.Random,
    horizon: float,
    prior: tuple[float, float] = PRIOR,
    pending: Mapping[str, int] | None = None,
) -> list[str]:
    """``n`` choices from the same counts, one after the other: each goes to the highest index
    (ties drawn at random) and counts as pending for the next. ``pending`` says how many each
    arm was given already since the counts were read."""
    if not arms:
        raise ValueError("no variant to choose from")
    factor = Factor(arms, horizon, prior)
    given = [float((pending or {}).get(arm.id, 0)) for arm in arms]
    index = [factor.index(arm.id, given[i]) for i, arm in enumerate(arms)]
    out = []
    for _ in range(n):
        i = _highest(index, rng)
        out.append(arms[i].id)
        given[i] += 1
        index[i] = factor.index(arms[i].id, given[i])  # only the chosen one's index moves
    return out


def _highest(index: Sequence[float], rng: random.Random) -> int:
    """The position of the highest index; a tie drawn at random."""
    top = max(index)
    best = [i for i, v in enumerate(index) if v >= top]
    return best[0] if len(best) == 1 else rng.choice(best)


class Factor:
    """One factor's index between two readings of its tallies: each variant's posterior mean
    and weight worked out once, so an index is a few float operations (the dispatcher makes
    two choices per message, the simulator thirty a day)."""

    def __init__(
        self, arms: Sequence[Arm], horizon: float, prior: tuple[float, float] = PRIOR
    ) -> None:
        if horizon < MIN_HORIZON:
            raise ValueError(f"horizon must be at least {MIN_HORIZON:g} sends, got {horizon}")
        a, b = posterior_params(arms, prior)
        self.c = -math.log1p(-1 / horizon)
        self.mean = {arm.id: float(a[i] / (a[i] + b[i])) for i, arm in enumerate(arms)}
        # n: the posterior's weight once every send (and every pending one) has told.
        self.weight = {arm.id: prior[0] + prior[1] + arm.sends for arm in arms}

    def index(self, variant: str, pending: float = 0.0) -> float:
        """The variant's index with ``pending`` sends given since the counts were read."""
        return _index(self.mean[variant], self.weight[variant] + float(pending), self.c)

    def choose(
        self, variants: Sequence[str], pending: Mapping[str, int], rng: random.Random
    ) -> str:
        """The variant with the highest index (ties drawn at random), as :func:`index_choices`
        chooses each of its own; each must be one of the arms this was made with."""
        return variants[_highest([self.index(v, pending.get(v, 0)) for v in variants], rng)]


def horizon_sends(pace: float, horizon_days: float) -> float:
    """How many sends a factor has still to come: ``horizon_days`` at ``pace`` sends a day
    (:meth:`outreach.ab.attribution.Tallies.pace`), and never fewer than :data:`MIN_HORIZON`."""
    if horizon_days <= 0:
        raise ValueError(f"horizon_days must be positive, got {horizon_days}")
    return max(MIN_HORIZON, pace * horizon_days)
