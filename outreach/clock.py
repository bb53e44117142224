"""The one place the engine reads the wall clock.

Everything that needs "now" calls :func:`now` (or takes ``now`` as an argument), so that
freezegun in tests and libfaketime around a whole process move every due time, window and
review together.
"""

from datetime import UTC, datetime


def now() -> datetime:
    """The current time as an aware UTC datetime."""
    return datetime.now(UTC)
