"""The one place the engine reads the wall clock.

Everything that needs "now" calls :func:`now` (or takes ``now`` as an argument), so that
freezegun in tests and libfaketime around a whole process move every due time, window and
review together.
"""

import time
from datetime import UTC, datetime


def now() -> datetime:
    """The current time as an aware UTC datetime."""
    return datetime.now(UTC)


def cpu_seconds() -> float:
    """CPU seconds this thread has used: a measure of work, not a time of day, so that the
    template sandbox's time bound holds while freezegun or libfaketime hold the wall clock."""
    return time.thread_time()
