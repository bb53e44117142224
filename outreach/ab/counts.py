"""What the A/B test counts, in plain Python: an arm's sends and replies, the prior, the
posterior's parameters and the reply-delay curve.

The dispatcher reads these for every new message (the assignment's index,
:mod:`outreach.ab.index`), so they import no numpy: a `send --once` that assigns by index never
loads it (0.14 s of CPU here). :mod:`outreach.ab.stats` builds the review's statistics on them
and exports them too.
"""

from __future__ import annotations

import bisect
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, overload

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray

# Beta(1, 1), the uniform prior: before any send every reply rate in [0, 1] is equally likely.
# It is the weakest prior that keeps the posterior proper (a variant with no sends has P(best)
# 1/k among k such variants, not undefined), it adds the equivalent of one reply and one
# non-reply so it is swamped after a few dozen sends, and it never pulls a variant towards a
# rate we would have to justify. With alpha, beta >= 1 every posterior density is bounded,
# which the integration in `prob_best` relies on for its accuracy.
PRIOR: tuple[float, float] = (1.0, 1.0)


@dataclass(frozen=True)
class Arm:
    """One variant under test: how often it was sent and how many replies count for it.

    ``exposure`` is what the sends weigh: a send that was answered, or is old enough that its
    reply would have come, weighs 1; a younger one weighs the probability that a reply would
    have come by now (:class:`ReplyDelays`). None means every send weighs 1.
    """

    id: str
    sends: int
    wins: int  # replies that count under the metric
    exposure: float | None = None

    @property
    def trials(self) -> float:
        """The sends as the posterior sees them."""
        return float(self.sends) if self.exposure is None else self.exposure


def posterior_params(
    arms: Sequence[Arm], prior: tuple[float, float]
) -> tuple[list[float], list[float]]:
    """Each arm's Beta posterior, (alpha + wins, beta + trials - wins), the arms checked."""
    alpha, beta = prior
    if not (alpha > 0 and beta > 0):
        raise ValueError(f"prior parameters must be positive, got {prior}")
    ids = set()
    for arm in arms:
        if not 0 <= arm.wins <= arm.sends:
            raise ValueError(f"variant {arm.id!r}: need 0 <= wins <= sends, got {arm}")
        # Answered sends weigh 1 each, so wins <= exposure (a hair of rounding allowed).
        if arm.exposure is not None and not arm.wins - 1e-9 <= arm.exposure <= arm.sends + 1e-9:
            raise ValueError(f"variant {arm.id!r}: need wins <= exposure <= sends, got {arm}")
        if arm.id in ids:
            raise ValueError(f"variant {arm.id!r} appears twice")
        ids.add(arm.id)
    a = [alpha + float(arm.wins) for arm in arms]
    b = [beta + max(float(arm.trials) - float(arm.wins), 0.0) for arm in arms]
    return a, b


# Before a workspace has reply delays of its own, these stand in for them (days from a message
# to its reply; the typical shape for cold B2B email: half within a day, four in five within
# three days, a tail to two weeks). They weigh as many observations as there are of them, so
# the workspace's own delays take over after a few dozen replies.
PRIOR_DELAYS_DAYS: tuple[float, ...] = (
    0.05, 0.15, 0.25, 0.4, 0.55, 0.7, 0.8, 0.9, 0.95, 1.0,
    1.3, 1.6, 1.9, 2.2, 2.5, 2.8, 4.0, 6.0, 9.0, 13.0,
)  # fmt: skip


@dataclass(frozen=True)
class ReplyDelays:
    """How long replies take: ``weight(age)`` is the share of a message's eventual replies
    that have come ``age`` days after it was sent (1 from ``window_days`` on)."""

    days: tuple[float, ...]  # sorted delays, observed and prior, each clipped to the window
    window_days: float
    observed: int  # how many of them are the workspace's own

    @cached_property
    def _sorted(self) -> NDArray[np.float64]:
        import numpy as np

        return np.asarray(self.days, dtype=np.float64)

    @overload
    def weight(self, age_days: float) -> float: ...
    @overload
    def weight(self, age_days: NDArray[np.float64]) -> NDArray[np.float64]: ...
    def weight(self, age_days: float | NDArray[np.float64]) -> float | NDArray[np.float64]:
        """P(a reply that will come has come by ``age_days``), the empirical curve: for one
        age in plain Python (the dispatcher's tallies), for an array with numpy (the
        simulator's)."""
        if isinstance(age_days, int | float):
            if age_days >= self.window_days:
                return 1.0
            if age_days < 0:
                return 0.0
            return bisect.bisect_right(self.days, age_days) / len(self.days)
        import numpy as np

        age = np.asarray(age_days, dtype=np.float64)
        share = np.searchsorted(self._sorted, age, side="right") / len(self.days)
        return np.where(age >= self.window_days, 1.0, np.where(age < 0, 0.0, share))

    def exposure(self, ages_days: Sequence[float] | NDArray[np.float64], answered: int) -> float:
        """What ``ages_days`` (one per send not answered yet) and ``answered`` sends weigh."""
        import numpy as np

        ages = np.asarray(ages_days, dtype=np.float64)
        return float(answered + (self.weight(ages).sum() if ages.size else 0.0))

    def median(self) -> float:
        return float(statistics.median(self.days))


def reply_delays(
    observed_days: Iterable[float],
    window_days: float,
    prior: Sequence[float] = PRIOR_DELAYS_DAYS,
) -> ReplyDelays:
    """The reply-delay curve from the workspace's own delays (days from a message to its
    reply, for messages sent at least ``window_days`` ago, so that none is cut short) and the
    prior's."""
    if window_days <= 0:
        raise ValueError(f"window_days must be positive, got {window_days}")
    observed = [min(max(float(d), 0.0), window_days) for d in observed_days]
    days = sorted([min(float(d), window_days) for d in prior] + observed)
    if not days:
        raise ValueError("no reply delays, and no prior ones")
    return ReplyDelays(tuple(days), float(window_days), len(observed))
