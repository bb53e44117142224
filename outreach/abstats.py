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
from scipy import special

# Beta(1, 1), the uniform prior: before any send every reply rate in [0, 1] is equally likely.
# It is the weakest prior that keeps the posterior proper (a variant with no sends has P(best)
# 1/k among k such variants, not undefined), it adds the equivalent of one reply and one
# non-reply so it is swamped after a few dozen sends, and it never pulls a variant towards a
# rate we would have to justify. With alpha, beta >= 1 every posterior density is bounded,
# which the integration in `prob_best` relies on for its accuracy.
PRIOR: tuple[float, float] = (1.0, 1.0)

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
class Arm:
    """One variant under test: how often it was sent and how many replies count for it."""

    id: str
    sends: int
    wins: int  # replies that count under the metric


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


def _posteriors(
    arms: Sequence[Arm], prior: tuple[float, float]
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    alpha, beta = prior
    if not (alpha > 0 and beta > 0):
        raise ValueError(f"prior parameters must be positive, got {prior}")
    ids = set()
    for arm in arms:
        if not 0 <= arm.wins <= arm.sends:
            raise ValueError(f"variant {arm.id!r}: need 0 <= wins <= sends, got {arm}")
        if arm.id in ids:
            raise ValueError(f"variant {arm.id!r} appears twice")
        ids.add(arm.id)
    wins = np.array([arm.wins for arm in arms], dtype=np.float64)
    sends = np.array([arm.sends for arm in arms], dtype=np.float64)
    return alpha + wins, beta + sends - wins


def credible_interval(
    sends: int, wins: int, level: float = 0.95, prior: tuple[float, float] = PRIOR
) -> tuple[float, float]:
    """The equal-tailed `level` credible interval of the reply rate's Beta posterior."""
    if not 0 < level < 1:
        raise ValueError(f"level must be between 0 and 1, got {level}")
    a, b = _posteriors([Arm("_", sends, wins)], prior)
    tail = (1 - level) / 2
    # The Beta quantile is the inverse regularised incomplete beta function (scipy.special:
    # scipy.stats would add ~50 MB to the daemon for this one call).
    low, high = special.betaincinv(a[0], b[0], [tail, 1 - tail])
    return float(low), float(high)


def prob_best(arms: Sequence[Arm], prior: tuple[float, float] = PRIOR) -> list[float]:
    """P(each arm has the highest true reply rate), by numerical integration; sums to 1.

    Accurate to about 1e-9 for priors with alpha, beta >= 1 (the tests check closed forms),
    sharp posteriors included (thousands of sends); well under a millisecond for a few arms.
    """
    if not arms:
        return []
    a, b = _posteriors(arms, prior)
    if len(arms) == 1:
        return [1.0]
    lo = special.betaincinv(a, b, _TAIL)
    hi = special.betaincinv(a, b, 1 - _TAIL)
    # Below the highest lower tail some cdf is < _TAIL, so no arm can be best there; above the
    # highest upper tail every cdf is ~1 and no density is left.
    start, stop = lo.max(), hi.max()
    cuts = [np.array([start, stop])]
    for k in range(len(arms)):
        first, last = max(lo[k], start), min(hi[k], stop)
        if first < last:
            cuts.append(np.linspace(first, last, _PIECES + 1))
    edges = np.unique(np.concatenate(cuts))
    half = np.diff(edges) / 2
    x = ((edges[:-1] + half)[:, None] + half[:, None] * _NODES).ravel()
    w = (half[:, None] * _WEIGHTS).ravel()

    col_a, col_b = a[:, None], b[:, None]
    with np.errstate(divide="ignore"):
        log_pdf = (
            special.xlogy(col_a - 1, x)
            + special.xlog1py(col_b - 1, -x)
            - special.betaln(col_a, col_b)
        )
        log_cdf = np.log(special.betainc(col_a, col_b, x))
    # log of prod_{j != i} cdf_j, without subtracting -inf from -inf where one cdf is 0.
    others = np.where(np.eye(len(arms), dtype=bool)[:, :, None], 0.0, log_cdf[None, :, :])
    integrand = np.exp(log_pdf + others.sum(axis=1))
    p = integrand @ w
    # The raw sum is 1 within about (k + 1) * _TAIL; normalising removes that last sliver.
    p = np.clip(p / p.sum(), 0.0, 1.0)
    return [float(v) for v in p]


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


def thompson_choice(
    arms: Sequence[Arm], rng: random.Random, prior: tuple[float, float] = PRIOR
) -> str:
    """Thompson sampling: one draw from each posterior, the arm with the highest draw."""
    if not arms:
        raise ValueError("no variant to choose from")
    a, b = _posteriors(arms, prior)
    draws = [rng.betavariate(float(ai), float(bi)) for ai, bi in zip(a, b, strict=True)]
    return arms[max(range(len(arms)), key=draws.__getitem__)].id


def _fmt(p: float) -> str:
    return f"{p:.3g}"


def review(
    arms: Sequence[Arm], *, min_sends: int, retire_below: float, min_active: int = 1
) -> list[Decision]:
    """Keep or retire each active variant of one factor (a step's subjects, or its bodies).

    A variant is retired when its probability to be best is below `retire_below` and it has at
    least `min_sends` sends. The leader (highest P(best); ties: more sends, then the smaller id)
    is never retired, and at least `min_active` variants stay: when more qualify, the worst
    (lowest P(best)) go first. Decisions come back in the order of `arms`.
    """
    if min_active < 1:
        raise ValueError(f"min_active must be at least 1, got {min_active}")
    if min_sends < 0:
        raise ValueError(f"min_sends must not be negative, got {min_sends}")
    if not 0 <= retire_below <= 1:
        raise ValueError(f"retire_below must be between 0 and 1, got {retire_below}")
    p_best = prob_best(arms)
    # Best first; the leader is ranking[0], and retiring takes from the other end.
    ranking = sorted(range(len(arms)), key=lambda i: (-p_best[i], -arms[i].sends, arms[i].id))
    qualifies = [i for i in ranking[1:] if p_best[i] < retire_below and arms[i].sends >= min_sends]
    room = max(0, len(arms) - min_active)
    retired = set(qualifies[::-1][:room])

    decisions = []
    for i, arm in enumerate(arms):
        p = p_best[i]
        if len(arms) == 1:
            reason = "only active variant"
        elif i == ranking[0]:
            reason = f"leader, P(best) {_fmt(p)}"
        elif i in retired:
            reason = f"P(best) {_fmt(p)} < {retire_below:g} after {arm.sends} sends"
        elif i in qualifies:
            reason = (
                f"P(best) {_fmt(p)} < {retire_below:g} after {arm.sends} sends, kept:"
                f" at least {min_active} must stay active"
            )
        elif p < retire_below:
            reason = f"only {arm.sends} sends (< {min_sends}), kept"
        else:
            reason = f"P(best) {_fmt(p)} >= {retire_below:g}"
        low, high = credible_interval(arm.sends, arm.wins)
        decisions.append(
            Decision(
                variant=arm.id,
                sends=arm.sends,
                wins=arm.wins,
                rate=arm.wins / arm.sends if arm.sends else 0.0,
                low=low,
                high=high,
                p_best=p,
                action="retire" if i in retired else "keep",
                reason=reason,
            )
        )
    return decisions
