"""The playbook's timing rules: waits in business days, sending windows, holidays, time zones.

Every date here is checked by hand against a calendar: 2027-01-08 is a Friday, 2027-01-06 is
Epiphany (loppiainen), 2027-12-06 (a Monday) is Independence Day (itsenäisyyspäivä), and
Finland's clocks change on 2027-03-28 (03:00 EET -> 04:00 EEST) and 2027-10-31
(04:00 EEST -> 03:00 EET).
"""

from __future__ import annotations

import random
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from outreach.planner import (
    DAY_NAMES,
    SendingCalendar,
    Wait,
    add_wait,
    parse_days,
    parse_window,
    plan_due,
)

HELSINKI = ZoneInfo("Europe/Helsinki")
NEW_YORK = ZoneInfo("America/New_York")


def finnish_office(days: str = "mon-fri", holidays: str | None = "FI") -> SendingCalendar:
    return SendingCalendar.from_text("Europe/Helsinki", "08:00-17:00", days, holidays)


def hki(year: int, month: int, day: int, hour: int = 0, minute: int = 0, sec: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, sec, tzinfo=HELSINKI)


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, sec: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, sec, tzinfo=UTC)


# --- the cold sequence's "3-5 business days" ---------------------------------------------


@pytest.mark.parametrize(
    ("drawn", "expected_day", "weekday"),
    [(3, date(2027, 1, 13), "wed"), (4, date(2027, 1, 14), "thu"), (5, date(2027, 1, 15), "fri")],
)
def test_friday_enrollment_with_3_to_5_business_days_lands_next_week(
    drawn: int, expected_day: date, weekday: str
) -> None:
    cal = finnish_office()
    friday_morning = hki(2027, 1, 8, 10, 0)
    assert friday_morning.weekday() == DAY_NAMES.index("fri")
    due = plan_due(friday_morning, Wait.parse("3-5 business days"), drawn, cal)
    local = due.astimezone(HELSINKI)
    assert local.date() == expected_day
    assert DAY_NAMES[local.weekday()] == weekday
    assert local.time() == time(10, 0)  # the time of day the first message went out
    assert due.tzinfo is UTC


def test_business_day_waits_from_friday_never_land_on_a_weekend() -> None:
    cal = finnish_office()
    for drawn in range(0, 30):
        due = plan_due(hki(2027, 1, 8, 10, 0), Wait(0, 30, "business_days"), drawn, cal)
        assert due.astimezone(HELSINKI).weekday() < 5


def test_business_days_skip_finnish_holiday() -> None:
    cal = finnish_office()
    # Friday 3 Dec 2027 + 1 business day: Monday 6 Dec is Independence Day, so Tuesday.
    assert add_wait(hki(2027, 12, 3, 9), 1, "business_days", cal) == hki(2027, 12, 7, 9)
    assert add_wait(hki(2027, 12, 3, 9), 3, "business_days", cal) == hki(2027, 12, 9, 9)
    # Wednesday 23 Dec 2026 + 1: Christmas Eve and Christmas Day, then the weekend.
    assert add_wait(hki(2026, 12, 23, 9), 1, "business_days", cal) == hki(2026, 12, 28, 9)


def test_business_days_without_holidays_count_every_weekday() -> None:
    cal = finnish_office(holidays=None)
    assert add_wait(hki(2027, 12, 3, 9), 1, "business_days", cal) == hki(2027, 12, 6, 9)


def test_business_days_are_monday_to_friday_whatever_the_sending_days() -> None:
    cal = finnish_office(days="mon-sun", holidays=None)
    assert add_wait(hki(2027, 1, 8, 10), 1, "business_days", cal) == hki(2027, 1, 11, 10)


def test_days_and_weeks_count_calendar_days() -> None:
    cal = finnish_office()
    assert add_wait(hki(2027, 1, 8, 10), 3, "days", cal) == hki(2027, 1, 11, 10)
    assert add_wait(hki(2027, 1, 8, 10), 2, "weeks", cal) == hki(2027, 1, 22, 10)


def test_zero_wait_is_the_anchor_itself() -> None:
    anchor = hki(2027, 1, 9, 23, 59)
    assert add_wait(anchor, 0, "business_days", finnish_office()) == anchor


def test_negative_or_unknown_amounts_are_refused() -> None:
    with pytest.raises(ValueError, match="must be 0 to 1000"):
        add_wait(hki(2027, 1, 8), -1, "days", finnish_office())
    with pytest.raises(ValueError, match="unit"):
        add_wait(hki(2027, 1, 8), 1, "months", finnish_office())


# --- sending windows, weekends and holidays -------------------------------------------------


def test_window_closed_moves_to_next_morning() -> None:
    cal = finnish_office()
    tuesday_evening = hki(2027, 1, 12, 17, 30)
    assert not cal.is_open(tuesday_evening)
    assert cal.next_open(tuesday_evening) == utc(2027, 1, 13, 6, 0)  # 08:00 in Helsinki
    # The window is [08:00, 17:00): at 17:00 sharp it is already closed.
    assert cal.next_open(hki(2027, 1, 12, 17, 0)) == hki(2027, 1, 13, 8, 0)


def test_early_morning_waits_for_the_window_the_same_day() -> None:
    cal = finnish_office()
    assert cal.next_open(hki(2027, 1, 12, 6, 15)) == hki(2027, 1, 12, 8, 0)


def test_inside_the_window_is_due_at_once() -> None:
    cal = finnish_office()
    t = hki(2027, 1, 12, 16, 59, 59)
    assert cal.is_open(t)
    assert cal.next_open(t) == t
    assert cal.next_open(t).tzinfo is UTC


def test_weekend_moves_to_monday() -> None:
    cal = finnish_office()
    assert cal.next_open(hki(2027, 1, 9, 12, 0)) == utc(2027, 1, 11, 6, 0)
    assert cal.next_open(hki(2027, 1, 8, 18, 0)) == hki(2027, 1, 11, 8, 0)
    due = plan_due(hki(2027, 1, 6, 12, 0), Wait.parse("3 days"), 3, cal)  # Wed + 3 = Saturday
    assert due == hki(2027, 1, 11, 8, 0)


def test_finnish_holiday_is_not_a_sending_day() -> None:
    cal = finnish_office()
    epiphany = date(2027, 1, 6)
    assert epiphany.weekday() == 2  # a Wednesday, otherwise a sending day
    assert cal.is_holiday(epiphany)
    assert not cal.is_sending_day(epiphany)
    assert not cal.is_open(hki(2027, 1, 6, 12, 0))
    assert cal.next_open(hki(2027, 1, 5, 18, 0)) == hki(2027, 1, 7, 8, 0)
    # Without a holiday calendar the same Wednesday is an ordinary day.
    assert finnish_office(holidays=None).next_open(hki(2027, 1, 5, 18, 0)) == hki(2027, 1, 6, 8)


def test_holiday_calendar_with_subdivision_and_unknown_code() -> None:
    cal = SendingCalendar(NEW_YORK, (time(9), time(17)), frozenset(range(5)), "US-NY")
    assert cal.is_holiday(date(2027, 7, 5))  # Independence Day observed (4 July is a Sunday)
    with pytest.raises(ValueError, match="unknown holiday calendar 'XX'"):
        SendingCalendar(HELSINKI, (time(8), time(17)), frozenset(range(5)), "XX")


def test_prospect_in_other_timezone() -> None:
    new_york = SendingCalendar.from_text("America/New_York", "09:00-17:00", "mon-fri", "US")
    helsinki_morning = hki(2027, 1, 12, 10, 0)  # 08:00 UTC, 03:00 in New York
    assert finnish_office().is_open(helsinki_morning)
    assert not new_york.is_open(helsinki_morning)
    assert new_york.next_open(helsinki_morning) == utc(2027, 1, 12, 14, 0)  # 09:00 EST
    # Helsinki's evening is New York's early afternoon.
    assert new_york.is_open(hki(2027, 1, 12, 20, 0))
    assert not finnish_office().is_open(hki(2027, 1, 12, 20, 0))
    # The wait is counted in the prospect's local days: Tue 03:00 NY + 3 days = Fri 03:00 NY.
    due = plan_due(helsinki_morning, Wait.parse("3 days"), 3, new_york)
    assert due == datetime(2027, 1, 15, 9, 0, tzinfo=NEW_YORK)


def test_window_closes_at_the_end_of_the_current_window() -> None:
    cal = finnish_office()
    assert cal.window_closes(hki(2027, 1, 12, 10, 0)) == utc(2027, 1, 12, 15, 0)
    assert cal.window_closes(hki(2027, 1, 9, 10, 0)) == hki(2027, 1, 11, 17, 0)  # Saturday
    whole_day = SendingCalendar.from_text("Europe/Helsinki", "00:00-24:00", "mon-sun")
    assert whole_day.is_open(hki(2027, 1, 12, 23, 59, 59))
    assert whole_day.window_closes(hki(2027, 1, 12, 10, 0)) == hki(2027, 1, 13, 0, 0)


def test_no_sending_day_is_refused_rather_than_looping() -> None:
    cal = SendingCalendar(HELSINKI, (time(8), time(17)), frozenset())
    with pytest.raises(ValueError, match="no sending day"):
        cal.next_open(hki(2027, 1, 8))


def test_naive_datetimes_are_refused() -> None:
    cal = finnish_office()
    naive = datetime(2027, 1, 8, 10, 0)
    with pytest.raises(ValueError, match="no time zone"):
        cal.is_open(naive)
    with pytest.raises(ValueError, match="no time zone"):
        cal.next_open(naive)
    with pytest.raises(ValueError, match="no time zone"):
        add_wait(naive, 1, "days", cal)


def test_calendar_refuses_an_empty_window_and_unknown_zone() -> None:
    with pytest.raises(ValueError, match="starts at"):
        SendingCalendar(HELSINKI, (time(17), time(8)), frozenset(range(5)))
    with pytest.raises(ValueError, match="unknown time zone"):
        SendingCalendar.from_text("Europe/Helsinkii", "08:00-17:00", "mon-fri")


# --- daylight saving ----------------------------------------------------------------------


def test_daylight_saving_change_keeps_local_time() -> None:
    cal = finnish_office(days="mon-sun", holidays=None)
    # Spring: Saturday 09:00 EET (07:00 UTC) + 1 day = Sunday 09:00 EEST (06:00 UTC).
    assert add_wait(hki(2027, 3, 27, 9), 1, "days", cal) == utc(2027, 3, 28, 6, 0)
    # Autumn: Friday 09:00 EEST (06:00 UTC) + 3 days = Monday 09:00 EET (07:00 UTC).
    assert add_wait(hki(2027, 10, 29, 9), 3, "days", cal) == utc(2027, 11, 1, 7, 0)
    assert add_wait(hki(2027, 10, 29, 9), 1, "weeks", cal) == utc(2027, 11, 5, 7, 0)
    # The window opens at 08:00 local on both sides of the change.
    assert cal.next_open(hki(2027, 3, 27, 18)) == utc(2027, 3, 28, 5, 0)
    assert cal.next_open(hki(2027, 10, 30, 18)) == utc(2027, 10, 31, 6, 0)


def test_spring_forward_gap() -> None:
    cal = SendingCalendar.from_text("Europe/Helsinki", "03:30-17:00", "mon-sun")
    # 03:30 on 28 March 2027 does not exist: the clocks jump from 03:00 to 04:00.
    saturday_0330 = hki(2027, 3, 27, 3, 30)  # 01:30 UTC
    moved = add_wait(saturday_0330, 1, "days", cal)
    assert moved == utc(2027, 3, 28, 1, 0)  # 04:00 EEST, the first instant after the gap
    assert moved.astimezone(HELSINKI).time() == time(4, 0)
    # The window "opens" inside the gap, so it is open from the moment the gap ends.
    assert cal.next_open(hki(2027, 3, 28, 0, 0)) == utc(2027, 3, 28, 1, 0)
    assert cal.is_open(utc(2027, 3, 28, 1, 0))
    assert not cal.is_open(utc(2027, 3, 28, 0, 59, 59))


def test_fall_back_ambiguous_time_takes_the_first_occurrence() -> None:
    cal = finnish_office(days="mon-sun", holidays=None)
    # 03:30 on 31 October 2027 happens twice; the wait lands on the first (EEST, 00:30 UTC).
    assert add_wait(hki(2027, 10, 30, 3, 30), 1, "days", cal) == utc(2027, 10, 31, 0, 30)


def test_window_reopens_when_the_clocks_go_back_into_it() -> None:
    # On 31 October 2027 04:00 EEST (01:00 UTC) becomes 03:00 EET: 03:00-04:00 happens twice.
    late_night = SendingCalendar.from_text("Europe/Helsinki", "02:00-03:30", "mon-sun")
    after_first_pass = hki(2027, 10, 31, 3, 45)  # 00:45 UTC, the first 03:45
    assert not late_night.is_open(after_first_pass)
    assert late_night.next_open(after_first_pass) == utc(2027, 10, 31, 1, 0)  # second 03:00
    short = SendingCalendar.from_text("Europe/Helsinki", "03:10-03:20", "mon-sun")
    assert short.next_open(after_first_pass) == utc(2027, 10, 31, 1, 10)  # second 03:10


def test_window_closes_when_the_clocks_go_back_out_of_it() -> None:
    cal = SendingCalendar.from_text("Europe/Helsinki", "03:30-05:00", "mon-sun")
    first_0345 = utc(2027, 10, 31, 0, 45)
    assert cal.is_open(first_0345)
    # At 01:00 UTC the wall clock jumps back to 03:00, before the window: it closes there...
    assert cal.window_closes(first_0345) == utc(2027, 10, 31, 1, 0)
    # ...and opens again at the second 03:30.
    assert cal.next_open(utc(2027, 10, 31, 1, 0)) == utc(2027, 10, 31, 1, 30)


# --- parsing ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected", "canonical"),
    [
        ("0 days", Wait(0, 0, "days"), "0 days"),
        ("3 days", Wait(3, 3, "days"), "3 days"),
        ("1 day", Wait(1, 1, "days"), "1 day"),
        ("0-1 days", Wait(0, 1, "days"), "0-1 days"),
        ("3-5 days", Wait(3, 5, "days"), "3-5 days"),
        ("3 - 5 days", Wait(3, 5, "days"), "3-5 days"),
        ("3-5 Business Days", Wait(3, 5, "business_days"), "3-5 business days"),
        ("1 business day", Wait(1, 1, "business_days"), "1 business day"),
        ("2 weeks", Wait(2, 2, "weeks"), "2 weeks"),
        ("1 week", Wait(1, 1, "weeks"), "1 week"),
        ("10-14 days", Wait(10, 14, "days"), "10-14 days"),
        ("  90-180 DAYS ", Wait(90, 180, "days"), "90-180 days"),
    ],
)
def test_wait_parse_accepts_the_playbook_forms(text: str, expected: Wait, canonical: str) -> None:
    wait = Wait.parse(text)
    assert wait == expected
    assert str(wait) == canonical
    assert Wait.parse(str(wait)) == wait


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "accepted forms"),
        ("three days", "accepted forms"),
        ("3 months", "accepted forms"),
        ("3-5", "accepted forms"),
        ("3 days later", "accepted forms"),
        ("3.5 days", "accepted forms"),
        ("-1 days", "negative"),
        ("5000 days", "longer than 1000 days"),
        ("5-3 days", "lower bound 5 exceeds the upper bound 3"),
    ],
)
def test_wait_parse_refuses_other_forms(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Wait.parse(text)


def test_wait_refuses_bad_fields() -> None:
    with pytest.raises(ValueError, match="exceeds"):
        Wait(5, 3, "days")
    with pytest.raises(ValueError, match="unit"):
        Wait(1, 2, "months")  # type: ignore[arg-type]


def test_draw_stays_within_bounds_and_is_reproducible() -> None:
    wait = Wait.parse("3-5 business days")
    first = [wait.draw(random.Random(42)) for _ in range(3)]
    rng_a, rng_b = random.Random(7), random.Random(7)
    draws = [wait.draw(rng_a) for _ in range(500)]
    assert draws == [wait.draw(rng_b) for _ in range(500)]
    assert set(draws) == {3, 4, 5}
    assert len(set(first)) == 1
    assert Wait.parse("3 days").draw(random.Random()) == 3


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("08:00-17:00", (time(8), time(17))),
        ("8-17", (time(8), time(17))),
        (" 8:30 - 16:45 ", (time(8, 30), time(16, 45))),
        ("00:00-24:00", (time(0), time.max)),
    ],
)
def test_parse_window_accepts(text: str, expected: tuple[time, time]) -> None:
    assert parse_window(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("17:00-08:00", "across midnight"),
        ("08:00-08:00", "start before it ends"),
        ("25:00-26:00", "impossible time"),
        ("8:60-9", "impossible time"),
        ("24:30-24:45", "impossible time"),
        ("08:00", "HH:MM-HH:MM"),
        ("", "HH:MM-HH:MM"),
        ("morning", "HH:MM-HH:MM"),
    ],
)
def test_parse_window_refuses(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_window(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("mon-fri", {0, 1, 2, 3, 4}),
        ("mon,wed,fri", {0, 2, 4}),
        ("mon-sun", set(range(7))),
        ("tue-thu,sat", {1, 2, 3, 5}),
        ("Fri-Mon", {4, 5, 6, 0}),
        (" monday , Tue ", {0, 1}),
    ],
)
def test_parse_days_accepts(text: str, expected: set[int]) -> None:
    assert parse_days(text) == frozenset(expected)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty day"),
        ("mon,,fri", "empty day"),
        ("funday", "unknown day 'funday'"),
        ("mon-xyz", "unknown day 'xyz'"),
        ("ma-pe", "unknown day 'ma'"),
    ],
)
def test_parse_days_refuses(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_days(text)


# --- properties ---------------------------------------------------------------------------

ZONES = [
    "Europe/Helsinki",
    "America/New_York",
    "Australia/Lord_Howe",  # a half-hour DST shift
    "America/Havana",  # clocks change at midnight, so some days have no 00:00
    "America/Santiago",
    "Asia/Kolkata",
    "UTC",
]


@st.composite
def calendars(draw: st.DrawFn) -> SendingCalendar:
    start = draw(st.integers(0, 24 * 60 - 1))
    end = draw(st.integers(start + 1, 24 * 60))
    window = (
        time(start // 60, start % 60),
        time.max if end == 24 * 60 else time(end // 60, end % 60),
    )
    days = draw(st.frozensets(st.integers(0, 6), min_size=1))
    return SendingCalendar(
        ZoneInfo(draw(st.sampled_from(ZONES))),
        window,
        days,
        draw(st.sampled_from([None, "FI", "US", "SE"])),
    )


anchors = st.datetimes(
    min_value=datetime(2024, 1, 1),
    max_value=datetime(2032, 12, 31),
    timezones=st.sampled_from([ZoneInfo(z) for z in ZONES]),
)


@st.composite
def waits(draw: st.DrawFn) -> tuple[Wait, int]:
    low = draw(st.integers(0, 30))
    wait = Wait(
        low,
        draw(st.integers(low, low + 20)),
        draw(st.sampled_from(["days", "business_days", "weeks"])),
    )
    return wait, wait.draw(random.Random(draw(st.integers(0, 2**32))))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(anchor=anchors, wait_and_drawn=waits(), cal=calendars())
def test_planned_time_is_always_open_and_never_before_the_anchor(
    anchor: datetime, wait_and_drawn: tuple[Wait, int], cal: SendingCalendar
) -> None:
    wait, drawn = wait_and_drawn
    assert wait.low <= drawn <= wait.high
    due = plan_due(anchor, wait, drawn, cal)
    assert due.tzinfo is UTC
    assert due >= anchor
    assert cal.is_open(due)
    # ...and it is the earliest such instant: the moment before it was closed.
    waited = add_wait(anchor, drawn, wait.unit, cal)
    assert due >= waited
    if due != waited:
        assert not cal.is_open(due - timedelta(microseconds=1))
    if wait.unit == "business_days" and drawn > 0:
        landed = waited.astimezone(cal.timezone).date()
        assert landed.weekday() < 5 and not cal.is_holiday(landed)


@settings(max_examples=200, deadline=None)
@given(t=anchors, cal=calendars())
def test_window_closes_after_it_opens(t: datetime, cal: SendingCalendar) -> None:
    opened = cal.next_open(t)
    closes = cal.window_closes(t)
    assert closes > opened
    assert cal.is_open(closes - timedelta(microseconds=1))
    if cal.window[1] != time.max:
        assert not cal.is_open(closes)
