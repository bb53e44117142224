"""The A/B review statistics against values worked out by hand or by a different route.

Reference values used below, each derivable on paper:
- Beta(1, 1) is uniform: pdf 1, cdf x. Beta(2, 1) (one send, one reply): pdf 2x, cdf x^2.
  Beta(1, 2) (one send, no reply): pdf 2(1 - x).
- P(Beta(2,1) best of {Beta(2,1), U}) = integral of 2x * x = 2/3; against two uniforms,
  integral of 2x * x * x = 1/2, so each uniform gets 1/4. P(Beta(1,2) beats U) = integral of
  2(1 - x) * x = 1/3.
- Evan Miller's closed form for two arms with integer parameters (written out below).
- Beta quantiles: Beta(1, 1) has the uniform's; Beta(1, n) has cdf 1 - (1 - x)^n, Beta(n, 1) has
  x^n; and for integers I_x(a, b) = P(Binomial(a + b - 1, x) >= a).
"""

from __future__ import annotations

import itertools
import math
import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from outreach.ab.stats import (
    PRIOR,
    PRIOR_DELAYS_DAYS,
    Arm,
    credible_interval,
    pooled_prior,
    prob_best,
    prob_best_monte_carlo,
    prob_near_best,
    reply_delays,
    review,
    thompson_choice,
    thompson_choices,
)


def lbeta(x: float, y: float) -> float:
    return math.lgamma(x) + math.lgamma(y) - math.lgamma(x + y)


def miller_b_beats_a(a: Arm, b: Arm) -> float:
    """Evan Miller, "Formulas for Bayesian A/B Testing" (2014), uniform prior:

    P(p_B > p_A) = sum_{i=0}^{alpha_B - 1} B(alpha_A + i, beta_A + beta_B)
                   / ((beta_B + i) B(1 + i, beta_B) B(alpha_A, beta_A))
    """
    alpha_a, beta_a = 1 + a.wins, 1 + a.sends - a.wins
    alpha_b, beta_b = 1 + b.wins, 1 + b.sends - b.wins
    return math.fsum(
        math.exp(
            lbeta(alpha_a + i, beta_a + beta_b)
            - math.log(beta_b + i)
            - lbeta(1 + i, beta_b)
            - lbeta(alpha_a, beta_a)
        )
        for i in range(alpha_b)
    )


# --- probability to be best ------------------------------------------------------------------


def test_two_untested_variants_are_even() -> None:
    assert prob_best([Arm("a", 0, 0), Arm("b", 0, 0)]) == pytest.approx([0.5, 0.5], abs=1e-12)


def test_two_identical_records_are_even() -> None:
    p = prob_best([Arm("a", 140, 6), Arm("b", 140, 6)])
    assert p == pytest.approx([0.5, 0.5], abs=1e-9)


def test_three_equal_variants_get_a_third_each() -> None:
    p = prob_best([Arm("a", 300, 9), Arm("b", 300, 9), Arm("c", 300, 9)])
    assert p == pytest.approx([1 / 3] * 3, abs=1e-9)


def test_one_reply_against_nothing_is_two_thirds() -> None:
    # Beta(2, 1) against Beta(1, 1): integral of 2x * x over [0, 1].
    assert prob_best([Arm("a", 1, 1), Arm("b", 0, 0)]) == pytest.approx([2 / 3, 1 / 3], abs=1e-12)


def test_one_reply_against_two_untested_is_one_half() -> None:
    # Beta(2, 1) against two uniforms: integral of 2x * x * x = 1/2; the rest split evenly.
    p = prob_best([Arm("b", 0, 0), Arm("a", 1, 1), Arm("c", 0, 0)])
    assert p == pytest.approx([0.25, 0.5, 0.25], abs=1e-12)


def test_one_silent_send_against_nothing_is_one_third() -> None:
    # Beta(1, 2) against Beta(1, 1): integral of 2(1 - x) * x over [0, 1].
    assert prob_best([Arm("a", 1, 0), Arm("b", 0, 0)]) == pytest.approx([1 / 3, 2 / 3], abs=1e-12)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        (Arm("a", 120, 3), Arm("b", 115, 8)),
        (Arm("a", 400, 12), Arm("b", 390, 13)),
        (Arm("a", 1000, 30), Arm("b", 1000, 42)),
        # Sharp posteriors: sd of the rate about 0.0025.
        (Arm("a", 5000, 150), Arm("b", 5000, 175)),
        (Arm("a", 5000, 150), Arm("b", 60, 4)),
        (Arm("a", 30, 0), Arm("b", 4000, 2)),
    ],
)
def test_two_arms_match_evan_millers_closed_form(a: Arm, b: Arm) -> None:
    expected = miller_b_beats_a(a, b)
    p_a, p_b = prob_best([a, b])
    assert p_b == pytest.approx(expected, abs=1e-9)
    assert p_a == pytest.approx(1 - expected, abs=1e-9)


def test_realistic_two_arm_value() -> None:
    # 3/120 against 8/115: the second is very likely better, but not certainly.
    p_a, p_b = prob_best([Arm("a", 120, 3), Arm("b", 115, 8)])
    assert 0.9 < p_b < 0.99
    assert p_b == pytest.approx(miller_b_beats_a(Arm("a", 120, 3), Arm("b", 115, 8)), abs=1e-9)


def test_no_arms_and_one_arm() -> None:
    assert prob_best([]) == []
    assert prob_best([Arm("only", 500, 20)]) == [1.0]


# Monte Carlo tolerance: with N independent draws the estimate of a probability p has standard
# error sqrt(p (1 - p) / N); we allow 4 standard errors per arm (two-sided 6e-5 per comparison),
# with p taken from the exact value. The seed is fixed, so the test is deterministic.
DRAWS = 200_000


@pytest.mark.parametrize(
    "arms",
    [
        [Arm("a", 120, 3), Arm("b", 115, 8)],
        [Arm("a", 150, 3), Arm("b", 150, 5), Arm("c", 150, 8)],
        [Arm("a", 300, 9), Arm("b", 310, 9), Arm("c", 290, 11), Arm("d", 305, 18)],
        [Arm("a", 5000, 150), Arm("b", 5000, 160), Arm("c", 80, 3)],
        [Arm("a", 0, 0), Arm("b", 3, 1), Arm("c", 40, 0)],
    ],
)
def test_exact_agrees_with_monte_carlo(arms: list[Arm]) -> None:
    exact = prob_best(arms)
    estimate = prob_best_monte_carlo(arms, DRAWS, np.random.default_rng(20270104))
    assert sum(estimate) == pytest.approx(1.0)
    for p, q in zip(exact, estimate, strict=True):
        tolerance = 4 * math.sqrt(max(p * (1 - p), 1e-12) / DRAWS)
        assert abs(p - q) <= tolerance, (arms, exact, estimate)


def test_monte_carlo_refuses_zero_draws() -> None:
    with pytest.raises(ValueError):
        prob_best_monte_carlo([Arm("a", 1, 0)], 0, np.random.default_rng(1))


def test_bad_counts_are_refused() -> None:
    with pytest.raises(ValueError, match="wins <= sends"):
        prob_best([Arm("a", 5, 6), Arm("b", 5, 1)])
    with pytest.raises(ValueError, match="twice"):
        prob_best([Arm("a", 5, 1), Arm("a", 5, 1)])


arm_counts = st.integers(min_value=0, max_value=5000).flatmap(
    lambda sends: st.tuples(st.just(sends), st.integers(min_value=0, max_value=sends))
)


def make_arms(counts: list[tuple[int, int]]) -> list[Arm]:
    return [Arm(f"v{i}", sends, wins) for i, (sends, wins) in enumerate(counts)]


@settings(max_examples=300, deadline=None)
@given(st.lists(arm_counts, min_size=2, max_size=5), st.data())
def test_prob_best_sums_to_one_and_rewards_a_reply(
    counts: list[tuple[int, int]], data: st.DataObject
) -> None:
    arms = make_arms(counts)
    before = prob_best(arms)
    assert math.fsum(before) == pytest.approx(1.0, abs=1e-12)
    assert all(0 <= p <= 1 for p in before)
    i = data.draw(st.integers(min_value=0, max_value=len(arms) - 1))
    sends, wins = counts[i]
    # One more send that got a reply, and (if there is one) a silent send turned into a reply.
    changed = [(sends + 1, wins + 1)] + ([(sends, wins + 1)] if wins < sends else [])
    for new in changed:
        after = prob_best(make_arms(counts[:i] + [new] + counts[i + 1 :]))
        assert after[i] >= before[i] - 1e-9, (counts, i, new, before, after)


@settings(max_examples=100, deadline=None)
@given(st.lists(arm_counts, min_size=2, max_size=4), st.randoms(use_true_random=False))
def test_prob_best_follows_the_arms_not_their_order(
    counts: list[tuple[int, int]], shuffler: random.Random
) -> None:
    arms = make_arms(counts)
    shuffled = arms[:]
    shuffler.shuffle(shuffled)
    by_id = dict(zip([a.id for a in arms], prob_best(arms), strict=True))
    for arm, p in zip(shuffled, prob_best(shuffled), strict=True):
        assert p == pytest.approx(by_id[arm.id], abs=1e-9)


# --- credible interval -----------------------------------------------------------------------


def test_interval_of_an_untested_variant_is_the_uniforms() -> None:
    assert credible_interval(0, 0) == pytest.approx((0.025, 0.975), abs=1e-12)
    assert credible_interval(0, 0, level=0.5) == pytest.approx((0.25, 0.75), abs=1e-12)


def test_interval_when_nobody_replied() -> None:
    # Beta(1, n + 1): cdf 1 - (1 - x)^(n + 1), so the q-quantile is 1 - (1 - q)^(1 / (n + 1)).
    n = 200
    low, high = credible_interval(n, 0)
    assert low == pytest.approx(1 - 0.975 ** (1 / (n + 1)), rel=1e-9)
    assert high == pytest.approx(1 - 0.025 ** (1 / (n + 1)), rel=1e-9)


def test_interval_when_everybody_replied() -> None:
    # Beta(n + 1, 1): cdf x^(n + 1).
    n = 12
    assert credible_interval(n, n) == pytest.approx(
        (0.025 ** (1 / (n + 1)), 0.975 ** (1 / (n + 1))), rel=1e-9
    )


@pytest.mark.parametrize(("sends", "wins"), [(120, 3), (115, 8), (5000, 160), (40, 20)])
def test_interval_tails_hold_two_and_a_half_percent_each(sends: int, wins: int) -> None:
    # For integer a, b: P(Beta(a, b) <= x) = P(Binomial(a + b - 1, x) >= a).
    a, b = wins + 1, sends - wins + 1
    low, high = credible_interval(sends, wins)
    assert stats.binom.sf(a - 1, a + b - 1, low) == pytest.approx(0.025, rel=1e-7)
    assert stats.binom.sf(a - 1, a + b - 1, high) == pytest.approx(0.975, rel=1e-7)
    assert low < wins / sends < high


# --- Thompson sampling -----------------------------------------------------------------------


def test_thompson_picks_each_arm_as_often_as_it_is_likely_best() -> None:
    # Each choice is a draw of "which arm is best"; over N choices the share of each arm must
    # be within 4 standard errors of its probability to be best.
    arms = [Arm("a", 120, 3), Arm("b", 115, 8), Arm("c", 100, 5)]
    rng = random.Random(7)
    n = 20_000
    chosen = [thompson_choice(arms, rng, PRIOR, temper=1.0) for _ in range(n)]
    for arm, p in zip(arms, prob_best(arms), strict=True):
        share = chosen.count(arm.id) / n
        assert abs(share - p) <= 4 * math.sqrt(p * (1 - p) / n), (arm, share, p)


def test_thompson_needs_a_variant() -> None:
    with pytest.raises(ValueError):
        thompson_choice([], random.Random(1))


# --- the review ------------------------------------------------------------------------------


def test_few_sends_are_never_retired_however_bad() -> None:
    arms = [Arm("silent", 99, 0), Arm("star", 99, 30)]
    silent, star = review(arms, min_sends=100, retire_below=0.05)
    assert silent.p_best < 1e-6
    assert silent.action == "keep"
    assert silent.reason == "only 99 sends (< 100), kept"
    assert star.action == "keep"
    # At exactly min_sends the same record is judged.
    silent, star = review(
        [Arm("silent", 100, 0), Arm("star", 99, 30)], min_sends=100, retire_below=0.05
    )
    assert silent.action == "retire"


def test_weak_variant_with_enough_sends_is_retired_with_its_numbers() -> None:
    arms = [Arm("weak", 140, 1), Arm("strong", 135, 9)]
    weak, strong = review(arms, min_sends=100, retire_below=0.05)
    expected = 1 - miller_b_beats_a(Arm("weak", 140, 1), Arm("strong", 135, 9))
    assert weak.p_best == pytest.approx(expected, abs=1e-9)
    assert weak.p_best < 0.05
    assert weak.action == "retire"
    assert weak.reason == f"P(best) {expected:.3g} < 0.05 after 140 sends"
    assert strong.action == "keep"
    assert strong.reason.startswith("leader")


def test_decision_carries_rate_interval_and_probability() -> None:
    arms = [Arm("a", 120, 3), Arm("b", 115, 8), Arm("new", 0, 0)]
    decisions = review(arms, min_sends=100, retire_below=0.05)
    for arm, decision, p in zip(arms, decisions, prob_best(arms), strict=True):
        assert (decision.variant, decision.sends, decision.wins) == (arm.id, arm.sends, arm.wins)
        assert decision.rate == (arm.wins / arm.sends if arm.sends else 0.0)
        assert (decision.low, decision.high) == credible_interval(arm.sends, arm.wins)
        assert decision.p_best == p
    assert decisions[1].rate == pytest.approx(8 / 115)
    assert decisions[2].rate == 0.0


def test_uncertain_variant_is_kept_and_says_why() -> None:
    a, b = review([Arm("a", 300, 9), Arm("b", 300, 11)], min_sends=100, retire_below=0.05)
    assert a.action == b.action == "keep"
    assert 0.05 <= a.p_best < 0.5
    assert a.reason == f"P(best) {a.p_best:.3g} >= 0.05"


def test_leader_survives_when_everything_else_is_retired() -> None:
    # retire_below 1 makes every other variant with enough sends qualify.
    arms = [Arm("a", 200, 2), Arm("b", 200, 3), Arm("c", 200, 4), Arm("d", 200, 5)]
    decisions = review(arms, min_sends=100, retire_below=1.0)
    assert [d.action for d in decisions] == ["retire", "retire", "retire", "keep"]
    assert decisions[3].reason.startswith("leader")


def test_leader_of_a_dead_heat_is_the_smaller_id() -> None:
    decisions = review([Arm("b", 200, 6), Arm("a", 200, 6)], min_sends=100, retire_below=0.9)
    assert [(d.variant, d.action) for d in decisions] == [("b", "retire"), ("a", "keep")]


def test_min_active_keeps_the_best_of_those_that_qualify() -> None:
    # Three variants qualify for retirement; with min_active=3 only the worst of them may go.
    arms = [
        Arm("s1", 300, 4),
        Arm("s2", 300, 2),
        Arm("s3", 300, 6),
        Arm("lead", 300, 25),
    ]
    decisions = review(arms, min_sends=100, retire_below=0.05, min_active=3)
    assert all(d.p_best < 0.05 for d in decisions[:3])
    assert [d.action for d in decisions] == ["keep", "retire", "keep", "keep"]
    assert decisions[0].reason.endswith("kept: at least 3 must stay active")
    assert f"{decisions[0].p_best:.3g} < 0.05 after 300 sends" in decisions[0].reason
    # With two required, the two worst go.
    decisions = review(arms, min_sends=100, retire_below=0.05, min_active=2)
    assert [d.action for d in decisions] == ["retire", "retire", "keep", "keep"]


def test_min_active_above_the_count_retires_nothing() -> None:
    arms = [Arm("a", 300, 1), Arm("b", 300, 30)]
    decisions = review(arms, min_sends=100, retire_below=0.05, min_active=3)
    assert [d.action for d in decisions] == ["keep", "keep"]


def test_one_variant_alone_is_kept() -> None:
    (only,) = review([Arm("only", 5000, 0)], min_sends=100, retire_below=0.05)
    assert only.action == "keep"
    assert only.p_best == 1.0
    assert only.reason == "only active variant"


def test_no_variants_no_decisions() -> None:
    assert review([], min_sends=100, retire_below=0.05) == []


def test_decisions_come_back_in_input_order() -> None:
    arms = [Arm("z", 150, 12), Arm("m", 150, 1), Arm("a", 20, 0), Arm("k", 150, 6)]
    decisions = review(arms, min_sends=100, retire_below=0.05)
    assert [d.variant for d in decisions] == ["z", "m", "a", "k"]
    assert [d.action for d in decisions] == ["keep", "retire", "keep", "keep"]


def test_review_refuses_nonsense_settings() -> None:
    arms = [Arm("a", 1, 0)]
    with pytest.raises(ValueError):
        review(arms, min_sends=100, retire_below=0.05, min_active=0)
    with pytest.raises(ValueError):
        review(arms, min_sends=100, retire_below=1.5)
    with pytest.raises(ValueError):
        review(arms, min_sends=-1, retire_below=0.05)


# --- within a margin of the best ------------------------------------------------------------


@pytest.mark.parametrize(
    "arms",
    [
        [Arm("a", 300, 9), Arm("b", 300, 11), Arm("c", 300, 20)],
        [Arm("a", 120, 3), Arm("b", 115, 8)],
        [Arm("a", 1000, 40), Arm("b", 900, 36), Arm("c", 40, 0)],
    ],
)
def test_prob_near_best_agrees_with_monte_carlo(arms: list[Arm]) -> None:
    rng = np.random.default_rng(3)
    n = 400_000
    a = np.array([1 + arm.wins for arm in arms], dtype=float)
    b = np.array([1 + arm.sends - arm.wins for arm in arms], dtype=float)
    draws = rng.beta(a, b, size=(n, len(arms)))
    exact = prob_near_best(arms, 0.2)
    for i, p in enumerate(exact):
        others = np.delete(draws, i, axis=1).max(axis=1)
        share = float((draws[:, i] >= 0.8 * others).mean())
        assert abs(share - p) <= 4 * math.sqrt(max(p * (1 - p), 1e-6) / n) + 1e-4, (i, share, p)


def test_prob_near_best_resolves_a_sharp_rival_inside_a_wide_posterior() -> None:
    # 2 replies in 40 sends against 4,000 in 100,000: the rival's cdf rises over a sliver of
    # the few-send arm's range. Checked against scipy's adaptive quadrature, piece by piece.
    from scipy import integrate, special

    arms = [Arm("few", 40, 2), Arm("many", 100_000, 4_000)]
    (a1, b1), (a2, b2) = [(1 + a.wins, 1 + a.sends - a.wins) for a in arms]
    scale = 1 / 0.8

    def few_near(x: float) -> float:
        pdf = math.exp(special.xlogy(a1 - 1, x) + special.xlog1py(b1 - 1, -x) - lbeta(a1, b1))
        return pdf * float(special.betainc(a2, b2, min(x * scale, 1.0)))

    rival = [0.8 * q for q in special.betaincinv(a2, b2, [1e-14, 0.5, 1 - 1e-14])]
    edges = [0.0, *rival, special.betaincinv(a1, b1, 1 - 1e-14)]
    expected = math.fsum(
        integrate.quad(few_near, lo, hi, epsabs=1e-15)[0] for lo, hi in itertools.pairwise(edges)
    )
    assert prob_near_best(arms, 0.2)[0] == pytest.approx(expected, abs=1e-9)


def test_prob_near_best_without_a_margin_is_prob_best() -> None:
    arms = [Arm("a", 300, 9), Arm("b", 300, 11)]
    assert prob_near_best(arms, 0.0) == prob_best(arms)
    with pytest.raises(ValueError):
        prob_near_best(arms, 1.0)


def test_equal_variants_with_much_data_are_near_each_other_whatever_p_best_says() -> None:
    # 20,000 sends each, 4.0 % against 4.3 %: P(best) calls the first a loser, but it is
    # surely within 20 % of the other, so the margin rule keeps it.
    arms = [Arm("a", 20_000, 800), Arm("b", 20_000, 860)]
    assert prob_best(arms)[0] < 0.25
    assert prob_near_best(arms, 0.2)[0] > 0.99
    kept = review(arms, min_sends=100, retire_below=0.3, margin=0.2)
    assert [d.action for d in kept] == ["keep", "keep"]
    assert kept[0].reason.startswith("P(within 20% of the best)")
    # Without the margin the same numbers retire it.
    assert review(arms, min_sends=100, retire_below=0.3)[0].action == "retire"


def test_a_clear_loser_is_retired_under_the_margin_too() -> None:
    weak, strong = review(
        [Arm("weak", 400, 4), Arm("strong", 400, 24)], min_sends=100, retire_below=0.05, margin=0.2
    )
    assert weak.action == "retire" and weak.p_near is not None and weak.p_near < 0.05
    assert strong.action == "keep"


# --- the pooled prior --------------------------------------------------------------------------


def test_pooled_prior_is_worth_its_sends_at_the_pooled_rate() -> None:
    arms = [Arm("a", 500, 20), Arm("b", 500, 20)]
    alpha, beta = pooled_prior(arms, 50)
    rate = 41 / 1002
    assert (alpha, beta) == pytest.approx((1 + 50 * rate, 1 + 50 * (1 - rate)))
    assert pooled_prior(arms, 0) == PRIOR
    with pytest.raises(ValueError):
        pooled_prior(arms, -1)


def test_pooled_prior_takes_a_dry_start_for_bad_luck() -> None:
    # 0 of 100 while the other replies at 4 %: with the uniform prior it looks like a loser;
    # with a prior worth 50 sends at the pooled rate it is not yet.
    arms = [Arm("dry", 100, 0), Arm("other", 800, 32)]
    uniform = prob_best(arms)[0]
    pooled = prob_best(arms, pooled_prior(arms, 50))[0]
    assert uniform < 0.05 < pooled


def test_thompson_choices_draw_like_thompson_choice() -> None:
    arms = [Arm("a", 120, 3), Arm("b", 115, 8), Arm("c", 100, 5)]
    n = 20_000
    chosen = thompson_choices(arms, n, random.Random(11), PRIOR, temper=1.0)
    for arm, p in zip(arms, prob_best(arms), strict=True):
        share = chosen.count(arm.id) / n
        assert abs(share - p) <= 4 * math.sqrt(p * (1 - p) / n), (arm, share, p)


# --- what young sends weigh ------------------------------------------------------------------


def test_reply_delay_curve_is_the_prior_until_the_workspace_has_its_own() -> None:
    curve = reply_delays([], 14)
    assert curve.observed == 0
    n = len(PRIOR_DELAYS_DAYS)
    assert float(curve.weight(1.0)) == sum(d <= 1.0 for d in PRIOR_DELAYS_DAYS) / n
    assert float(curve.weight(14)) == 1.0 and float(curve.weight(40)) == 1.0
    assert float(curve.weight(-1)) == 0.0
    # A workspace whose prospects all answer after 6 days: 200 own delays swamp the prior.
    slow = reply_delays([6.0] * 200, 14)
    assert float(slow.weight(5.9)) == pytest.approx(sum(d <= 5.9 for d in PRIOR_DELAYS_DAYS) / 220)
    assert float(slow.weight(6.0)) > 0.95


def test_exposure_counts_answered_sends_whole_and_young_ones_by_the_curve() -> None:
    curve = reply_delays([0.5, 1.5, 2.5, 3.5], 4, prior=())
    # Ages 1 and 3 days: 1/4 and 3/4 of replies have come; two answered sends weigh 2.
    assert curve.exposure([1.0, 3.0], answered=2) == pytest.approx(2 + 0.25 + 0.75)
    arm = Arm("a", 4, 2, curve.exposure([1.0, 3.0], 2))
    assert arm.trials == pytest.approx(3.0)
    with pytest.raises(ValueError, match="exposure"):
        prob_best([Arm("a", 4, 2, 1.0), Arm("b", 4, 1)])  # weighs less than its replies
