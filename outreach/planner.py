"""Pure time rules: when is the next step of a sequence due.

Everything here is a function of its inputs; nothing reads the clock or touches storage.
Waits are counted in the sending calendar's local wall-clock time (so "3 days" after 09:00
is 09:00 again, across daylight-saving changes), and a due time is then moved forward to the
next instant the calendar is open: a sending weekday, not a holiday, inside the window.
Every datetime returned is aware UTC; naive inputs are refused.
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from functools import lru_cache
from typing import TYPE_CHECKING, Literal
from zoneinfo import ZoneInfo

if TYPE_CHECKING:  # loaded at the first holiday check: `outreach status` plans nothing
    import holidays as holidays_lib

DAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_FULL_DAY_NAMES = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")

Unit = Literal["days", "business_days", "weeks"]
_UNITS: tuple[str, ...] = ("days", "business_days", "weeks")
_HORIZON_DAYS = 400  # next_open gives up after this many days without a sending day
_MAX_WAIT = 1000  # far beyond the playbook's longest wait (6 months); catches typos early

_WAIT_FORMS = (
    'accepted forms: "3 days", "1 day", "3-5 days", "1 business day", '
    '"3-5 business days", "2 weeks", "1-2 weeks"'
)
_WAIT_RE = re.compile(
    r"^\s*(-?\d+)\s*(?:-\s*(-?\d+)\s*)?(days?|business[\s_]+days?|weeks?)\s*$", re.IGNORECASE
)
_WINDOW_RE = re.compile(r"^\s*(\d{1,2})(?::(\d{2}))?\s*-\s*(\d{1,2})(?::(\d{2}))?\s*$")


@dataclass(frozen=True)
class Wait:
    """A wait between two steps: a whole number of days, business days or weeks, or a range."""

    low: int
    high: int
    unit: Unit

    def __post_init__(self) -> None:
        if self.unit not in _UNITS:
            raise ValueError(f"wait unit must be one of {', '.join(_UNITS)}, not {self.unit!r}")
        if self.low < 0 or self.high < 0:
            raise ValueError(f"wait {str(self)!r} is negative; {_WAIT_FORMS}")
        if self.low > self.high:
            raise ValueError(
                f"wait {str(self)!r}: the lower bound {self.low} exceeds the upper bound "
                f"{self.high}; write it as {self.high}-{self.low}"
            )
        if self.high > _MAX_WAIT:
            raise ValueError(f"wait {str(self)!r} is longer than {_MAX_WAIT} {self.unit}")

    @classmethod
    def parse(cls, text: str) -> Wait:
        """Read "3 days", "3-5 business days", "2 weeks"... (case and spacing are free)."""
        match = _WAIT_RE.match(text)
        if not match:
            raise ValueError(f"cannot read wait {text!r}; {_WAIT_FORMS}")
        low = int(match.group(1))
        high = int(match.group(2)) if match.group(2) is not None else low
        word = match.group(3).lower()
        unit: Unit = "days"
        if word.startswith("business"):
            unit = "business_days"
        elif word.startswith("week"):
            unit = "weeks"
        return cls(low, high, unit)

    def draw(self, rng: random.Random) -> int:
        """A uniform whole number in [low, high], in the wait's unit."""
        return rng.randint(self.low, self.high)

    def __str__(self) -> str:
        amount = str(self.low) if self.low == self.high else f"{self.low}-{self.high}"
        word = self.unit.replace("_", " ")
        if self.low == self.high == 1:
            word = word[:-1]  # "1 day", "1 business day", "1 week"
        return f"{amount} {word}"


def parse_window(text: str) -> tuple[time, time]:
    """Read a daily sending window "08:00-17:00" (or "8-17") into (start, end).

    The window is [start, end) in local time and may not cross midnight. "24:00" as the end
    means the end of the day and is returned as ``time.max``.
    """
    match = _WINDOW_RE.match(text)
    hint = 'write it as "HH:MM-HH:MM", for example "08:00-17:00"'
    if not match:
        raise ValueError(f"cannot read sending window {text!r}; {hint}")
    h1, m1, h2, m2 = (int(g) if g is not None else 0 for g in match.groups())
    if h1 > 23 or m1 > 59 or h2 > 24 or m2 > 59 or (h2 == 24 and m2 != 0):
        raise ValueError(f"sending window {text!r} has an impossible time; {hint}")
    start = time(h1, m1)
    end = time.max if h2 == 24 else time(h2, m2)
    if start >= end:
        raise ValueError(
            f"sending window {text!r} must start before it ends (windows across midnight are "
            'not supported; "00:00-24:00" is the whole day)'
        )
    return start, end


def _day_number(name: str, text: str) -> int:
    word = name.strip().lower()
    for names in (DAY_NAMES, _FULL_DAY_NAMES):
        if word in names:
            return names.index(word)
    raise ValueError(
        f"unknown day {name.strip()!r} in {text!r}; use {', '.join(DAY_NAMES)} "
        'with ranges and commas, for example "mon-fri" or "mon,wed,fri"'
    )


def parse_days(text: str) -> frozenset[int]:
    """Read sending weekdays "mon-fri", "mon,wed,fri", "tue-thu,sat" into numbers, 0=Monday.

    A range may wrap around the week end: "fri-mon" is Friday to Monday.
    """
    days: set[int] = set()
    for part in text.split(","):
        if not part.strip():
            raise ValueError(f'empty day in {text!r}; write days like "mon-fri" or "mon,wed"')
        first, sep, last = part.partition("-")
        a = _day_number(first, text)
        b = _day_number(last, text) if sep else a
        days.update((a + i) % 7 for i in range((b - a) % 7 + 1))
    return frozenset(days)


@lru_cache(maxsize=64)
def _country_holidays(code: str) -> holidays_lib.HolidayBase:
    """One holidays object per code ("FI", or "US-NY" for a subdivision); it fills years lazily."""
    import holidays as holidays_lib

    country, _, subdiv = code.partition("-")
    try:
        return holidays_lib.country_holidays(country.upper(), subdiv=subdiv.upper() or None)
    except NotImplementedError as exc:
        raise ValueError(
            f"unknown holiday calendar {code!r}: {exc}; use a country code such as "
            '"FI", "SE" or "US", optionally with a subdivision such as "US-NY"'
        ) from exc


def _require_aware(t: datetime, what: str = "time") -> datetime:
    if t.tzinfo is None or t.utcoffset() is None:
        raise ValueError(f"{what} {t.isoformat()} has no time zone; pass an aware datetime")
    return t.astimezone(UTC)


def _transition(tz: tzinfo, a: datetime, b: datetime) -> datetime | None:
    """The first instant in (a, b] whose UTC offset in ``tz`` differs from a's, if any.

    Assumes at most one offset change between a and b (true for any real zone within a day).
    Offsets change on whole seconds, so a binary search over seconds finds it exactly.
    """
    before = a.astimezone(tz).utcoffset()
    if b.astimezone(tz).utcoffset() == before:
        return None
    lo, hi = math.floor(a.timestamp()), math.ceil(b.timestamp())
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if datetime.fromtimestamp(mid, tz).utcoffset() == before:
            lo = mid
        else:
            hi = mid
    return datetime.fromtimestamp(hi, UTC)


def _resolve(d: date, tm: time, tz: tzinfo, fold: int = 0) -> datetime:
    """The UTC instant of local wall time ``d tm`` in ``tz``.

    An ambiguous wall time (autumn fall-back) takes its first occurrence with fold=0 and its
    second with fold=1. A wall time that does not exist (spring-forward gap) becomes the
    instant the gap ends, the first valid instant after it.
    """
    naive = datetime.combine(d, tm)
    first = naive.replace(tzinfo=tz, fold=0).astimezone(UTC)
    second = naive.replace(tzinfo=tz, fold=1).astimezone(UTC)
    if first.astimezone(tz).replace(tzinfo=None) == naive:
        return second if fold and second.astimezone(tz).replace(tzinfo=None) == naive else first
    early, late = min(first, second), max(first, second)
    return _transition(tz, early, late) or late


@dataclass(frozen=True)
class SendingCalendar:
    """When messages may go out: weekdays, a daily local window and a country's holidays."""

    timezone: ZoneInfo
    window: tuple[time, time]
    days: frozenset[int]
    holidays: str | None = None

    def __post_init__(self) -> None:
        start, end = self.window
        if start >= end:
            raise ValueError(f"sending window starts at {start} but ends at {end}")
        if not self.days <= set(range(7)):
            raise ValueError(f"sending days must be 0 (Monday) to 6 (Sunday), not {self.days}")
        if self.holidays is not None:
            _country_holidays(self.holidays)  # refuse an unknown code now, not at send time

    @classmethod
    def from_text(
        cls, timezone: str, window: str, days: str, holidays: str | None = None
    ) -> SendingCalendar:
        """Build a calendar from configuration text: "Europe/Helsinki", "08:00-17:00", "mon-fri"."""
        try:
            zone = ZoneInfo(timezone)
        except (KeyError, ValueError) as exc:
            raise ValueError(
                f'unknown time zone {timezone!r}; use a name like "Europe/Helsinki"'
            ) from exc
        return cls(zone, parse_window(window), parse_days(days), holidays or None)

    def is_holiday(self, d: date) -> bool:
        """True if ``d`` is a public holiday of the calendar's country."""
        return self.holidays is not None and d in _country_holidays(self.holidays)

    def is_sending_day(self, d: date) -> bool:
        """True if ``d`` is one of the sending weekdays and not a holiday."""
        return d.weekday() in self.days and not self.is_holiday(d)

    def _in_window(self, tm: time) -> bool:
        start, end = self.window
        return start <= tm and (tm < end or end == time.max)

    def is_open(self, t: datetime) -> bool:
        """True if ``t`` falls inside the window on a sending day, in the calendar's local time."""
        local = _require_aware(t).astimezone(self.timezone)
        return self._in_window(local.time()) and self.is_sending_day(local.date())

    def _day_bounds(self, d: date) -> tuple[datetime, datetime]:
        tz = self.timezone
        return _resolve(d, time(0), tz), _resolve(d + timedelta(1), time(0), tz)

    def _end_instants(self, d: date) -> list[datetime]:
        end = self.window[1]
        if end == time.max:
            return [_resolve(d + timedelta(1), time(0), self.timezone, fold) for fold in (0, 1)]
        return [_resolve(d, end, self.timezone, fold) for fold in (0, 1)]

    def next_open(self, t: datetime) -> datetime:
        """The earliest instant at or after ``t`` when the calendar is open, as aware UTC.

        Before the window on a sending day: that day's window start. Inside: ``t`` itself.
        After it, or on a closed day: the window start of the next sending day. Raises
        ValueError if there is no sending day within about 400 days (no days, say).
        """
        t = _require_aware(t)
        if self.is_open(t):
            return t
        first_day = t.astimezone(self.timezone).date() - timedelta(1)  # clocks may go back
        for offset in range(_HORIZON_DAYS):
            d = first_day + timedelta(offset)
            # An open stretch starts where the wall clock reaches the window start (either
            # occurrence, if the clocks went back) or where a DST jump lands inside it.
            candidates = [_resolve(d, self.window[0], self.timezone, fold) for fold in (0, 1)]
            jump = _transition(self.timezone, *self._day_bounds(d))
            if jump is not None:
                candidates.append(jump)
            opens = [c for c in candidates if c >= t and self.is_open(c)]
            if opens:
                return min(opens)
        raise ValueError(
            f"no sending day within {_HORIZON_DAYS} days of {t.isoformat()}; check the sending "
            f"days {sorted(self.days)} and holidays {self.holidays!r}"
        )

    def window_closes(self, t: datetime) -> datetime:
        """The end of the window ``t`` is in, as aware UTC (for the sender's stop time).

        If ``t`` is outside every window, this is the end of the window that :meth:`next_open`
        finds. A "00:00-24:00" window closes at the next local midnight.
        """
        opened = self.next_open(t)
        d = opened.astimezone(self.timezone).date()
        instants = self._end_instants(d)
        ends, last = [e for e in instants if e > opened], max(instants)
        jump = _transition(self.timezone, opened, last)
        if jump is not None and jump > opened and not self.is_open(jump):
            ends.append(jump)
        return min(ends, default=last)


def _add_business_days(start: date, amount: int, cal: SendingCalendar) -> date:
    d = start
    while amount > 0:
        d += timedelta(1)
        if d.weekday() < 5 and not cal.is_holiday(d):
            amount -= 1
    return d


def add_wait(anchor: datetime, amount: int, unit: str, cal: SendingCalendar) -> datetime:
    """``anchor`` plus ``amount`` days, business days or weeks in the calendar's local time.

    The local time of day is kept, so 09:00 stays 09:00 across a daylight-saving change; a
    wall time that does not exist that day moves forward to the end of the gap. Business
    days are Monday to Friday minus the calendar's holidays, whatever its sending days:
    Friday plus 3 business days is Wednesday. Returns aware UTC.
    """
    anchor = _require_aware(anchor, "anchor")
    if unit not in _UNITS:
        raise ValueError(f"wait unit must be one of {', '.join(_UNITS)}, not {unit!r}")
    if not 0 <= amount <= _MAX_WAIT:
        raise ValueError(f"cannot wait {amount} {unit}: the amount must be 0 to {_MAX_WAIT}")
    if amount == 0:
        return anchor
    local = anchor.astimezone(cal.timezone)
    if unit == "business_days":
        target = _add_business_days(local.date(), amount, cal)
    else:
        target = local.date() + timedelta(days=amount * (7 if unit == "weeks" else 1))
    return _resolve(target, local.time(), cal.timezone)


def plan_due(anchor: datetime, wait: Wait, drawn: int, cal: SendingCalendar) -> datetime:
    """When a step is due: ``drawn`` units of ``wait`` after ``anchor``, then the next open time.

    ``drawn`` comes from :meth:`Wait.draw` once and is stored by the caller, so that
    planning again after a restart gives the same answer.
    """
    return cal.next_open(add_wait(anchor, drawn, wait.unit, cal))
