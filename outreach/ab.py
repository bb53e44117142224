"""Variant assignment (and, with the A/B issue, the review statistics)."""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence


def balanced_choice(variants: Sequence[str], counts: Mapping[str, int], rng: random.Random) -> str:
    """The variant given to the fewest so far (ties drawn at random).

    Balanced, not merely equal odds: after n assignments the counts differ by at most one,
    so even a small test is fair; a variant added later catches up before others move on.
    """
    if not variants:
        raise ValueError("no variant to choose from")
    fewest = min(counts.get(v, 0) for v in variants)
    return rng.choice([v for v in variants if counts.get(v, 0) == fewest])
