"""The A/B review statistics: Beta-Binomial posteriors, probability to be best, the decision.

Pure functions of counts: no clock, no database. Each variant's reply rate gets a Beta
posterior, Beta(prior_alpha + wins, prior_beta + sends - wins). `prob_best` integrates
P(variant i is best) = integral over [0, 1] of pdf_i(x) * prod_{j != i} cdf_j(x) dx
numerically; `prob_best_monte_carlo` estimates the same by drawing, and the tests hold the two
against each other. `review` turns the probabilities into keep/retire decisions by the rules of
issue #5.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

# The counts, the prior and the reply-delay curve are plain Python (the send path reads them).
from outreach.ab.counts import PRIOR as PRIOR
from outreach.ab.counts import PRIOR_DELAYS_DAYS as PRIOR_DELAYS_DAYS
from outreach.ab.counts import Arm as Arm
from outreach.ab.counts import ReplyDelays as ReplyDelays
from outreach.ab.counts import posterior_params
from outreach.ab.counts import reply_delays as reply_delays

# prob_best integrates over [L, U] where every posterior outside its own [q(_TAIL), q(1-_TAIL)]
# is ignored; the probability left out is at most about (k + 1) * _TAIL.
_TAIL = 1e-12
# Each posterior's own range is cut into this many equal pieces; the union of all arms' cuts
# gives sub-intervals no wider than the narrowest posterior there needs, so a sharp cdf inside
# a wide pdf is still resolved. Each piece gets an _ORDER-point Gauss-Legendre rule.
_PIECES = 12
_ORDER = 8
_NODES, _WEIGHTS = np.polynomial.legendre.leggauss(_ORDER)


@dataclass(frozen=True)
class Decision:
    """What the review decided for one variant, with the numbers it decided on."""

    variant: str
    sends: int
    wins: int
    rate: float  # wins / sends (0 when no sends)
    low: float  # 95 % credible interval of the reply rate
    high: float
    p_best: float
    action: str  # "keep" | "retire"
    reason: str  # one short human sentence
    exposure: float = 0.0  # what the sends weighed (Arm.exposure)
    p_near: float | None = None  # P(within the margin of the best), when the rule has one


def _posteriors(
    arms: Sequence[Arm], prior: tuple[float, float]
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    a, b = posterior_params(arms, prior)
    return np.array(a, dtype=np.float64), np.array(b, dtype=np.float64)


def pooled_prior(arms: Sequence[Arm], strength: float) -> tuple[float, float]:
    """A prior worth ``strength`` sends at the factor's pooled reply rate (empirical Bayes).

    Beta(1 + strength * r, 1 + strength * (1 - r)), r the pooled rate of all the arms: a
    variant with little data is taken to be like the others until its own data say otherwise.
    So 0 replies in 100 sends, where the others reply at 4 %, is bad luck as often as a bad
    subject; and a new variant's first draws are near the others', not anywhere in [0, 1].
    With ``strength`` 0 this is the uniform prior. Both parameters stay >= 1, which the
    integration in :func:`prob_best` relies on.
    """
    if strength < 0:
        raise ValueError(f"strength must not be negative, got {strength}")
    wins = sum(arm.wins for arm in arms)
    trials = sum(arm.trials for arm in arms)
    rate = (wins + 1) / (trials + 2)
    return 1.0 + strength * rate, 1.0 + strength * (1 - rate)


def credible_interval(
    sends: int, wins: int, level: float = 0.95, prior: tuple[float, float] = PRIOR
) -> tuple[float, float]:
    """The equal-tailed `level` credible interval of the reply rate's Beta posterior."""
    from scipy import special  # 0.23 s of import: only when a review runs

    if not 0 < level < 1:
        raise ValueError(f"level must be between 0 and 1, got {level}")
    a, b = _posteriors([Arm("_", sends, wins)], prior)
    tail = (1 - level) / 2
    # The Beta quantile is the inverse regularised incomplete beta function (scipy.special:
    # scipy.stats would add ~50 MB to the daemon for this one call).
    low, high = special.betaincinv(a[0], b[0], [tail, 1 - tail])
    return float(low), float(high)


def credible_interval_of(arm: Arm, level: float = 0.95) -> tuple[float, float]:
    """The credible interval of an arm's rate, its sends weighed by their exposure."""
    from scipy import special  # 0.23 s of import: only when a review runs

    a, b = _posteriors([arm], PRIOR)
    tail = (1 - level) / 2
    low, high = special.betaincinv(a[0], b[0], [tail, 1 - tail])
    return float(low), float(high)


def _nodes(
    ranges: Sequence[tuple[float, float]], start: float, stop: float
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Gauss-Legendre nodes and weights over [start, stop]: each of ``ranges`` (clipped to it)
    cut into _PIECES equal pieces, the union of all cuts, _ORDER points per piece."""
    cuts = [np.array([start, stop])]
    for low, high in ranges:
        first, last = max(low, start), min(high, stop)
        if first < last:
            cuts.append(np.linspace(first, last, _PIECES + 1))
    edges = np.unique(np.concatenate(cuts))
    half = np.diff(edges) / 2
    x = ((edges[:-1] + half)[:, None] + half[:, None] * _NODES).ravel()
    w = (half[:, None] * _WEIGHTS).ravel()
    return x, w


def _integrate(
    a: NDArray[np.float64],
    b: NDArray[np.float64],
    x: NDArray[np.float64],
    w: NDArray[np.float64],
    scale: float,
) -> NDArray[np.float64]:
    """For each arm i, the integral of pdf_i(x) * prod_{j != i} cdf_j(x * scale) dx."""
    from scipy import special  # 0.23 s of import: only when a review runs

    col_a, col_b = a[:, None], b[:, None]
    with np.errstate(divide="ignore"):
        log_pdf = (
            special.xlogy(col_a - 1, x)
            + special.xlog1py(col_b - 1, -x)
            - special.betaln(col_a, col_b)
        )
        log_cdf = np.log(special.betainc(col_a, col_b, np.minimum(x * scale, 1.0)))
    # log of prod_{j != i} cdf_j, without subtracting -inf from -inf where one cdf is 0.
    others = np.where(np.eye(len(a), dtype=bool)[:, :, None], 0.0, log_cdf[None, :, :])
    integrand: NDArray[np.float64] = np.exp(log_pdf + others.sum(axis=1)) @ w
    return integrand


def prob_best(arms: Sequence[Arm], prior: tuple[float, float] = PRIOR) -> list[float]:
    """P(each arm has the highest true reply rate), by numerical integration; sums to 1.

    Accurate to about 1e-9 for priors with alpha, beta >= 1 (the tests check closed forms),
    sharp posteriors included (thousands of sends); well under a millisecond for a few arms.
    """
    from scipy import special  # 0.23 s of import: only when a review runs

    if not arms:
        return []
    a, b = _posteriors(arms, prior)
    if len(arms) == 1:
        return [1.0]
    lo = special.betaincinv(a, b, _TAIL)
    hi = special.betaincinv(a, b, 1 - _TAIL)
    # Below the highest lower tail some cdf is < _TAIL, so no arm can be best there; above the
    # highest upper tail every cdf is ~1 and no density is left.
    x, w = _nodes(list(zip(lo, hi, strict=True)), lo.max(), hi.max())
    p = _integrate(a, b, x, w, 1.0)
    # The raw sum is 1 within about (k + 1) * _TAIL; normalising removes that last sliver.
    p = np.clip(p / p.sum(), 0.0, 1.0)
    return [float(v) for v in p]


def prob_near_best(
    arms: Sequence[Arm], margin: float, prior: tuple[float, float] = PRIOR
) -> list[float]:
    """P(each arm's true rate is at least (1 - margin) times the best of the others').

    With ``margin`` 0 this is :func:`prob_best`. With a margin it is the probability that
    retiring the arm would cost less than that share of the best rate: for variants that are
    truly equal it goes to 1 as data grows (where P(best) keeps wandering and, looked at twice a
    week, sooner or later dips below any threshold).
    """
    from scipy import special  # 0.23 s of import: only when a review runs

    if not 0 <= margin < 1:
        raise ValueError(f"margin must be in [0, 1), got {margin}")
    if margin == 0 or len(arms) < 2:
        return prob_best(arms, prior) if margin == 0 else [1.0] * len(arms)
    a, b = _posteriors(arms, prior)
    scale = 1 / (1 - margin)
    lo = special.betaincinv(a, b, _TAIL)
    hi = special.betaincinv(a, b, 1 - _TAIL)
    # One grid for all arms: arm i's density is resolved over its own range, each other arm's
    # cdf (read at x * scale) over the x where it rises. Arm i's integrand is ~0 below its own
    # lower tail and below where some other cdf is still ~0.
    k = len(arms)
    floor = [max(lo[i], max(lo[j] for j in range(k) if j != i) / scale) for i in range(k)]
    start, stop = min(floor), hi.max()
    ranges = [(lo[i], hi[i]) for i in range(k)] + [(lo[i] / scale, hi[i] / scale) for i in range(k)]
    x, w = _nodes(ranges, start, stop)
    return [float(v) for v in np.clip(_integrate(a, b, x, w, scale), 0.0, 1.0)]


def prob_best_monte_carlo(
    arms: Sequence[Arm],
    draws: int,
    rng: np.random.Generator,
    prior: tuple[float, float] = PRIOR,
) -> list[float]:
    """The same probabilities estimated from `draws` joint posterior draws (a cross-check)."""
    if draws < 1:
        raise ValueError(f"draws must be at least 1, got {draws}")
    if not arms:
        return []
    a, b = _posteriors(arms, prior)
    wins = np.zeros(len(arms), dtype=np.int64)
    chunk = 100_000  # bounded memory for millions of draws
    for done in range(0, draws, chunk):
        n = min(chunk, draws - done)
        sample = rng.beta(a, b, size=(n, len(arms)))
        wins += np.bincount(sample.argmax(axis=1), minlength=len(arms))
    return [float(v) for v in wins / draws]


# Thompson sampling draws from posteriors that count the data this many times: plain Thompson
# sampling explores for an infinite horizon, and a subject line lives a few months. In
# bench/ab_sim.py's scenario B (30 seeded runs each, expected replies) plain Thompson earned
# 89.1 % of the oracle and 2x 92.8 %, 4x 88.8 % (it then sticks to an early leader too long).
# The review, which alone retires, sees the plain posteriors.
THOMPSON_TEMPER = 2.0


def thompson_choice(
    arms: Sequence[Arm],
    rng: random.Random,
    prior: tuple[float, float] = PRIOR,
    temper: float = THOMPSON_TEMPER,
) -> str:
    """Thompson sampling: one draw from each (tempered) posterior, the arm with the highest.

    The uniform prior, not the review's pooled one: it lets the assignment move to a likely
    winner sooner (more replies in the simulation), while the review, which takes the
    irreversible step, is the one that must not be fooled by a dry start."""
    return thompson_choices(arms, 1, rng, prior, temper)[0]


def thompson_choices(
    arms: Sequence[Arm],
    n: int,
    rng: random.Random,
    prior: tuple[float, float] = PRIOR,
    temper: float = THOMPSON_TEMPER,
) -> list[str]:
    """``n`` Thompson choices from the same posteriors (what the dispatcher gives the
    prospects it assigns before it next reads the tallies), drawn at once. ``temper`` > 1
    counts the data that many times (narrower posteriors: less exploration)."""
    if not arms:
        raise ValueError("no variant to choose from")
    if temper <= 0:
        raise ValueError(f"temper must be positive, got {temper}")
    a, b = _posteriors(arms, prior)
    a = prior[0] + temper * (a - prior[0])
    b = prior[1] + temper * (b - prior[1])
    draws = np.random.default_rng(rng.getrandbits(64)).beta(a, b, size=(n, len(arms)))
    return [arms[i].id for i in draws.argmax(axis=1)]


def _fmt(p: float) -> str:
    return f"{p:.3g}"


def review(
    arms: Sequence[Arm],
    *,
    min_sends: int,
    retire_below: float,
    min_active: int = 1,
    margin: float = 0.0,
    prior_strength: float = 0.0,
) -> list[Decision]:
    """Keep or retire each active variant of one factor (a step's subjects, or its bodies).

    A variant is retired when its probability to be best (with a `margin`: to be within that
    share of the best, :func:`prob_near_best`) is below `retire_below` and it has at least
    `min_sends` sends. The leader (highest P(best); ties: more sends, then the smaller id) is
    never retired, and at least `min_active` variants stay: when more qualify, the worst
    (lowest probability) go first. Decisions come back in the order of `arms`.
    """
    if min_active < 1:
        raise ValueError(f"min_active must be at least 1, got {min_active}")
    if min_sends < 0:
        raise ValueError(f"min_sends must not be negative, got {min_sends}")
    if not 0 <= retire_below <= 1:
        raise ValueError(f"retire_below must be between 0 and 1, got {retire_below}")
    prior = pooled_prior(arms, prior_strength) if prior_strength else PRIOR
    p_best = prob_best(arms, prior)
    judged = prob_near_best(arms, margin, prior) if margin and len(arms) > 1 else p_best
    what = f"P(within {margin:.0%} of the best)" if margin else "P(best)"
    # Best first; the leader is ranking[0], and retiring takes from the other end.
    ranking = sorted(range(len(arms)), key=lambda i: (-p_best[i], -arms[i].sends, arms[i].id))
    qualifies = sorted(
        (i for i in ranking[1:] if judged[i] < retire_below and arms[i].sends >= min_sends),
        key=lambda i: (judged[i], p_best[i]),
    )
    room = max(0, len(arms) - min_active)
    retired = set(qualifies[:room])

    decisions = []
    for i, arm in enumerate(arms):
        p, q = p_best[i], judged[i]
        if len(arms) == 1:
            reason = "only active variant"
        elif i == ranking[0]:
            reason = f"leader, P(best) {_fmt(p)}"
        elif i in retired:
            reason = f"{what} {_fmt(q)} < {retire_below:g} after {arm.sends} sends"
        elif i in qualifies:
            reason = (
                f"{what} {_fmt(q)} < {retire_below:g} after {arm.sends} sends, kept:"
                f" at least {min_active} must stay active"
            )
        elif q < retire_below:
            reason = f"only {arm.sends} sends (< {min_sends}), kept"
        else:
            reason = f"{what} {_fmt(q)} >= {retire_below:g}"
        low, high = credible_interval_of(arm)
        decisions.append(
            Decision(
                variant=arm.id,
                sends=arm.sends,
                wins=arm.wins,
                rate=arm.wins / arm.trials if arm.trials else 0.0,
                low=low,
                high=high,
                p_best=p,
                action="retire" if i in retired else "keep",
                reason=reason,
                exposure=arm.trials,
                p_near=q if margin else None,
            )
        )
    return decisions
