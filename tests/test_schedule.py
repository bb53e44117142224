"""`outreach schedule`: the forecast says what `send` then really sends, day by day.

A mailbox whose daily limit is smaller than its list keeps a backlog; the forecast must show
each message on the day it really goes (the backlog first, then the follow-ups that fell due
behind it), and what it shows must be what `send --once` then puts on the wire."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from freezegun import freeze_time

from tests.conftest import Cli, edit_config
from tests.smtp_servers import RecordingSMTP

pytestmark = pytest.mark.timeout(120)

HELSINKI = ZoneInfo("Europe/Helsinki")
MONDAY = date(2027, 1, 11)  # a week with no Finnish holiday
WEEK = [MONDAY + timedelta(days=n) for n in range(5)]
SANNA = "sanna.lehto@northwind.example"


def at(day: date, hour: int, minute: int = 0) -> datetime:
    return datetime(day.year, day.month, day.day, hour, minute, tzinfo=HELSINKI)


def enroll(run: Cli, tmp_path: Path, emails: list[str], *extra: str) -> None:
    path = tmp_path / "list.csv"
    path.write_text("email,first_name\n" + "".join(f"{e},X\n" for e in emails))
    assert run.json("enroll", str(path), "--sequence", "cold", *extra)["enrolled"] == len(emails)


def fixed_nudge(workspace_dir: Path, wait: str = "2 business days") -> None:
    cold = workspace_dir / "sequences" / "cold.yaml"
    cold.write_text(cold.read_text().replace("3-5 business days", wait))


def forecast(run: Cli, day: date, *extra: str) -> list[tuple[str, str]]:
    doc = run.json("schedule", "--date", day.isoformat(), *extra)
    assert doc["date"] == day.isoformat()
    return [(m["email"], m["step"]) for m in doc["messages"]]


def wire(smtp: RecordingSMTP, since: int) -> list[tuple[str, str]]:
    out = []
    for received in smtp.received[since:]:
        subject = str(received.message["Subject"])
        out.append((received.rcpt_tos[0], "nudge" if subject.startswith("Re: ") else "intro"))
    return out


def test_the_forecast_is_what_send_then_sends_on_each_of_five_days(
    workspace_dir: Path, run: Cli, tmp_path: Path
) -> None:
    """Ten prospects, four a day, the nudge two business days after the intro. The intros
    take Monday and Tuesday; from Wednesday the nudges of the first eight fall due at the
    window's opening beside the two intros still waiting, and at one opening the earlier
    enrolled go first: the two intros go on Friday. Sending runs as cron would run it, night
    and day (as the daemon does), and the forecast made on Monday, and each morning, is what
    goes on the wire."""
    config = workspace_dir / "outreach.toml"
    fixed_nudge(workspace_dir)
    emails = [f"p{n:02d}@firm{n:02d}.example" for n in range(10)]
    with RecordingSMTP() as smtp, freeze_time(at(MONDAY, 7), real_asyncio=True) as clock:
        edit_config(config, smtp_port=smtp.port, daily_limit=4)
        edit_config(config, min_gap_seconds=0, max_gap_seconds=0)
        enroll(run, tmp_path, emails)
        on_monday = {day: forecast(run, day) for day in WEEK}
        assert [len(on_monday[day]) for day in WEEK] == [4, 4, 4, 4, 2]
        assert on_monday[WEEK[2]] == [(e, "nudge") for e in emails[:4]]
        assert on_monday[WEEK[4]] == [(e, "intro") for e in emails[8:]]
        text = run("schedule", "--date", WEEK[4].isoformat())
        assert text.exit_code == 0
        assert text.stdout.startswith("Fri 2027-01-15: 2 email(s) and 0 task(s) will go out")
        assert "limit 4" in text.stdout and "late" in text.stdout  # fell due on Monday

        for day in WEEK:
            clock.move_to(at(day, 0, 30))
            assert run("send", "--once").exit_code == 0  # the night: nothing is open
            clock.move_to(at(day, 7))
            this_morning = forecast(run, day)
            before = len(smtp.received)
            for hour in (8, 12, 16):  # as the daemon would: from the opening
                clock.move_to(at(day, hour))
                assert run("send", "--once").exit_code == 0
            sent = wire(smtp, before)
            assert sent == this_morning, day
            assert sorted(sent) == sorted(on_monday[day]), day
    assert len(smtp.received) == 18  # every one once


@freeze_time(at(MONDAY, 7))
def test_the_warm_up_ramp_and_the_gap_shape_the_day(
    workspace_dir: Path, run: Cli, tmp_path: Path
) -> None:
    """A new mailbox on its ramp (2, then 4 a day) with a 10-minute gap: two messages at
    08:00 and 08:10 on Monday, four from 08:00 on Tuesday; the mailbox line says it warms up."""
    config = workspace_dir / "outreach.toml"
    edit_config(config, min_gap_seconds=600, max_gap_seconds=600, daily_limit=20)
    text = config.read_text()
    ramp = f'email = "{SANNA}"\nwarmup_start = 2\nwarmup_step = 2'
    config.write_text(text.replace(f'email = "{SANNA}"', ramp, 1))
    enroll(run, tmp_path, [f"p{n}@firm{n}.example" for n in range(10)])
    monday = run.json("schedule")
    assert [m["at_local"][11:16] for m in monday["messages"]] == ["08:00", "08:10"]
    (box,) = monday["mailboxes"]
    assert box["daily_limit"] == 2 and box["full_limit"] == 20 and box["warming_up"]
    assert box["backlog_after"] == 8
    tuesday = run.json("schedule", "--date", "tomorrow")
    assert [m["at_local"][11:16] for m in tuesday["messages"]] == [
        "08:00",
        "08:10",
        "08:20",
        "08:30",
    ]
    assert all(m["late"] for m in tuesday["messages"])
    assert "warming up to 20" in run("schedule").stdout


@freeze_time(at(MONDAY, 7))
def test_windows_in_the_prospects_zone_and_a_paused_mailbox(
    workspace_dir: Path, run: Cli, tmp_path: Path
) -> None:
    """A prospect in New York gets their message at 08:00 their time (15:00 in Helsinki); a
    paused mailbox sends nothing and says so; a sequence paused by hand is named."""
    path = tmp_path / "ny.csv"
    path.write_text(
        "email,first_name,timezone\n"
        "ann@nyc.example,Ann,America/New_York\nbo@hki.example,Bo,Europe/Helsinki\n"
    )
    assert run.json("enroll", str(path), "--sequence", "cold")["enrolled"] == 2
    doc = run.json("schedule")
    times = {m["email"]: (m["at_local"], m["prospect_local"]) for m in doc["messages"]}
    assert times["bo@hki.example"][0].endswith("08:00 EET")
    assert times["ann@nyc.example"] == ("2027-01-11 15:00 EET", "2027-01-11 08:00 EST")

    assert run("mailboxes", "pause", SANNA, "--reason", "on leave").exit_code == 0
    paused = run.json("schedule")
    assert paused["messages"] == []
    assert paused["mailboxes"][0]["paused"] == "paused by hand: on leave"
    assert paused["mailboxes"][0]["backlog_after"] == 2
    assert "paused by hand: on leave; nothing goes out" in run("schedule").stdout
    assert run("mailboxes", "resume", SANNA).exit_code == 0
    assert run("sequence", "pause", "cold").exit_code == 0
    held_back = run("schedule")
    assert "0 email(s)" in held_back.stdout
    assert "sequence cold is paused: nothing of it goes out" in held_back.stderr


@freeze_time(at(MONDAY, 7))
def test_bad_dates_and_senders_are_one_line_and_exit_1(run: Cli) -> None:
    for args, says in [
        (("--date", "someday"), "--date: 'someday' is not a day (today, tomorrow or YYYY-MM-DD)"),
        (("--date", "2027-01-10"), "--date: 2027-01-10 is not between today"),
        (("--date", "2027-06-01"), "and 31 days ahead"),
        (("--sender", "nobody@else.example"), "--sender: no mailbox nobody@else.example"),
    ]:
        result = run("schedule", *args)
        assert result.exit_code == 1, args
        assert says in result.stderr and len(result.stderr.splitlines()) == 1
    assert run.json("schedule", "--sender", SANNA)["mailboxes"][0]["email"] == SANNA


@freeze_time(at(MONDAY, 7))
def test_a_held_step_is_shown_with_its_reason_not_forecast_to_go(
    workspace_dir: Path, run: Cli, tmp_path: Path
) -> None:
    """A template that cannot render holds its step (`send` says so once); the forecast lists
    it as held, with the file:line, and does not count it among what goes out."""
    intro = workspace_dir / "templates" / "cold" / "1-intro.yaml"
    enroll(run, tmp_path, ["ann@acme.example", "bob@beta.example"])
    intro.write_text(intro.read_text().replace("{{ sender.signature }}", "{{ no_such_thing }}"))
    with RecordingSMTP() as smtp, freeze_time(at(MONDAY, 9), real_asyncio=True):
        edit_config(workspace_dir / "outreach.toml", smtp_port=smtp.port, max_gap_seconds=0)
        edit_config(workspace_dir / "outreach.toml", min_gap_seconds=0)
        assert run("send", "--once").exit_code == 1
        doc = run.json("schedule")
        assert doc["messages"] == []
        assert {h["email"] for h in doc["held"]} == {"ann@acme.example", "bob@beta.example"}
        assert all("1-intro.yaml:" in h["reason"] for h in doc["held"])
        text = run("schedule")
        assert "held: ann@acme.example (cold, step 1): " in text.stderr


def test_the_per_domain_cap_spreads_one_company_over_the_days_as_send_does(
    workspace_dir: Path, run: Cli, tmp_path: Path
) -> None:
    """Five colleagues at one company, at most two a day from one mailbox: the forecast puts
    two on Monday, two on Tuesday, one on Wednesday, and `send` sends the two it said."""
    config = workspace_dir / "outreach.toml"
    emails = [f"p{n}@acme.example" for n in range(5)]
    with RecordingSMTP() as smtp, freeze_time(at(MONDAY, 7), real_asyncio=True) as clock:
        edit_config(config, smtp_port=smtp.port, min_gap_seconds=0, max_gap_seconds=0)
        edit_config(config, recipient_domain_daily_limit=2)
        enroll(run, tmp_path, emails)
        assert [len(forecast(run, day)) for day in WEEK[:3]] == [2, 2, 1]
        monday = forecast(run, MONDAY)
        clock.move_to(at(MONDAY, 9))
        assert run("send", "--once").exit_code == 0
        assert wire(smtp, 0) == monday
        assert run.json("schedule")["messages"] == []  # the cap holds for the rest of the day
