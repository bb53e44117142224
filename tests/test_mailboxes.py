"""Many mailboxes, safely: rotation, reassign, warm-up, bounce protection, pauses by hand.

A real SMTP server (aiosmtpd) in the test process answers 550 5.1.1 for chosen recipients;
freezegun walks through the days of a ramp; the rotation and the hand-over pinning run on
SQLite and PostgreSQL.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from freezegun import freeze_time
from sqlmodel import select

from outreach import clock, sequencing
from outreach.daemon import send_once
from outreach.enroll import enroll_csv
from outreach.models import Enrollment, Message, Prospect
from outreach.operations import mailbox_report
from outreach.workspace import Workspace
from tests.conftest import Cli, edit_config
from tests.smtp_servers import RecordingSMTP

pytestmark = [pytest.mark.both_databases, pytest.mark.timeout(300)]

MONDAY_10 = datetime(2027, 1, 4, 8, 0, tzinfo=UTC)  # Mon 4 Jan 2027, 10:00 in Helsinki
SANNA = "sanna.lehto@northwind.example"
OLLI = "olli.virtanen@northwind.example"
EEVA = "eeva.nieminen@northwind.example"


@pytest.fixture
def server() -> Iterator[RecordingSMTP]:
    with RecordingSMTP() as smtp:
        yield smtp


def add_mailbox(config: Path, name: str, email: str, port: int, **extra: object) -> None:
    lines = "".join(f"{key} = {json.dumps(value)}\n" for key, value in extra.items())
    config.write_text(
        config.read_text(encoding="utf-8")
        + f'\n[[mailboxes]]\nname = "{name}"\nemail = "{email}"\nsmtp_host = "127.0.0.1"\n'
        f'smtp_port = {port}\nsmtp_security = "none"\n{lines}',
        encoding="utf-8",
    )


def team(directory: Path, server: RecordingSMTP, **settings: object) -> Path:
    """The starter workspace with three mailboxes on one test SMTP server, no gaps."""
    config = directory / "outreach.toml"
    edit_config(config, smtp_port=server.port, min_gap_seconds=0, max_gap_seconds=0, **settings)
    add_mailbox(config, "Olli Virtanen", OLLI, server.port, daily_limit=20)
    add_mailbox(config, "Eeva Nieminen", EEVA, server.port, daily_limit=20)
    return config


def write_list(path: Path, emails: list[str], extra: str = "") -> Path:
    header = "email,first_name,company,language" + (",owner" if extra else "") + "\n"
    rows = "".join(
        f"{email},P{i},Co {email.rpartition('@')[2]},en" + (f",{extra}" if extra else "") + "\n"
        for i, email in enumerate(emails)
    )
    path.write_text(header + rows, encoding="utf-8")
    return path


def senders(ws: Workspace, sequence: str = "cold") -> dict[str, str]:
    with ws.store.session() as session:
        rows = session.exec(
            select(Prospect.email, Enrollment.sender)
            .join(Enrollment, Enrollment.prospect_id == Prospect.id)  # type: ignore[arg-type]
            .where(Enrollment.sequence == sequence)
        ).all()
    return dict(rows)


# ---------------------------------------------------------------------------- rotation


def test_enroll_spreads_a_list_by_capacity_and_keeps_colleagues_together(
    workspace_dir: Path, tmp_path: Path, server: RecordingSMTP
) -> None:
    """Sanna 50 a day, Olli and Eeva 20: 250:100:100 over five sending days, so 5:2:2."""
    config = team(workspace_dir, server)
    run = Cli(config)
    solo = [f"p{i}@company{i}.example" for i in range(81)]
    colleagues = [f"{name}@acme.example" for name in ("ann", "bob", "cid", "dan")]
    write_list(tmp_path / "list.csv", solo + colleagues)
    with freeze_time(MONDAY_10):
        result = run("enroll", str(tmp_path / "list.csv"), "--sequence", "cold", "--sender", "all")
    assert result.exit_code == 0, result.output
    ws = Workspace.load(config)
    split = Counter(senders(ws).values())
    assert sum(split.values()) == 85
    # 81 single prospects + one company of 4: the shares 5:2:2 to within that company.
    assert abs(split[SANNA] - 85 * 5 / 9) <= 4 and abs(split[OLLI] - 85 * 2 / 9) <= 4
    assert abs(split[EEVA] - 85 * 2 / 9) <= 4
    assert len({senders(ws)[email] for email in colleagues}) == 1
    # The split is printed, with what each can send.
    assert (
        f"{SANNA}" in result.output and "can send 250 in the next 5 sending days" in result.output
    )
    assert "can send 100 in the next 5 sending days" in result.output
    ws.close()


def test_two_senders_given_split_evenly(
    workspace_dir: Path, tmp_path: Path, server: RecordingSMTP
) -> None:
    config = team(workspace_dir, server)
    write_list(tmp_path / "list.csv", [f"p{i}@c{i}.example" for i in range(40)])
    ws = Workspace.load(config)
    with freeze_time(MONDAY_10):
        result = enroll_csv(
            ws, tmp_path / "list.csv", "cold", now=clock.now(), senders=[OLLI, EEVA]
        )
    assert result.applied and result.split == {OLLI: 20, EEVA: 20}
    assert result.capacity == {OLLI: 100, EEVA: 100}
    ws.close()


def test_a_warming_mailbox_gets_its_smaller_share(
    workspace_dir: Path, tmp_path: Path, server: RecordingSMTP
) -> None:
    """Eeva warms up: 5, 10, 15, 20, 20 on the five sending days = 70 against Olli's 100."""
    config = workspace_dir / "outreach.toml"
    edit_config(config, smtp_port=server.port, min_gap_seconds=0, max_gap_seconds=0)
    add_mailbox(config, "Olli Virtanen", OLLI, server.port, daily_limit=20)
    add_mailbox(
        config, "Eeva Nieminen", EEVA, server.port, daily_limit=20, warmup_start=5, warmup_step=5
    )
    write_list(tmp_path / "list.csv", [f"p{i}@c{i}.example" for i in range(170)])
    ws = Workspace.load(config)
    with freeze_time(MONDAY_10):
        result = enroll_csv(
            ws, tmp_path / "list.csv", "cold", now=clock.now(), senders=[OLLI, EEVA]
        )
    assert result.capacity == {OLLI: 100, EEVA: 70}
    assert result.split == {OLLI: 100, EEVA: 70}
    ws.close()


def test_a_sender_column_chooses_per_row_and_an_unknown_one_is_rejected_with_its_line(
    workspace_dir: Path, tmp_path: Path, server: RecordingSMTP
) -> None:
    config = team(workspace_dir, server)
    run = Cli(config)
    path = tmp_path / "owners.csv"
    path.write_text(
        "Sähköposti;Omistaja\n"
        f"ann@acme.example;{OLLI}\n"
        "bob@beta.example;Eeva Nieminen\n"
        "cid@gamma.example;mikko@northwind.example\n",
        encoding="utf-8",
    )
    with freeze_time(MONDAY_10):
        refused = run("enroll", str(path), "--sequence", "cold")
        assert refused.exit_code == 1
        assert (
            f"{path}:4: sender 'mikko@northwind.example' is not a configured mailbox"
            in refused.stderr
        )
        ws = Workspace.load(config)
        assert senders(ws) == {}  # all or nothing
        kept = run("enroll", str(path), "--sequence", "cold", "--skip-invalid")
    assert kept.exit_code == 0
    assert senders(ws) == {"ann@acme.example": OLLI, "bob@beta.example": EEVA}
    ws.close()


def test_pinned_sender_across_the_hand_over_to_the_reminder(
    workspace_dir: Path, tmp_path: Path, server: RecordingSMTP
) -> None:
    """Every step of cold, and the reminder it hands over to, go from one person; a later
    enroll of the same people with --sender all keeps each one's sender."""
    config = team(workspace_dir, server)
    emails = [f"p{i}@c{i}.example" for i in range(12)]
    write_list(tmp_path / "list.csv", emails)
    ws = Workspace.load(config)
    rng = random.Random(3)
    with freeze_time(MONDAY_10):
        enroll_csv(ws, tmp_path / "list.csv", "cold", now=clock.now(), senders=["all"], rng=rng)
        first = senders(ws)
        assert len(set(first.values())) == 3
        with ws.store.session() as session:
            for enrollment in session.exec(select(Enrollment)).all():
                while enrollment.state == "active":  # every step done: hands over at the end
                    sequencing.advance(ws, session, enrollment, clock.now(), rng)
        assert senders(ws, "reminder") == first
        with ws.store.session() as session:  # the reminder done, the network not yet begun
            for enrollment in session.exec(
                select(Enrollment).where(Enrollment.sequence == "reminder")
            ).all():
                enrollment.state = "finished"
                session.add(enrollment)
        # The network list enrolled by hand with --sender all: the same person again.
        result = enroll_csv(ws, tmp_path / "list.csv", "network", now=clock.now(), senders=["all"])
    assert result.enrolled == 12 and senders(ws, "network") == first
    ws.close()


# ------------------------------------------------------------------ a rep leaves


def test_reassign_moves_live_work_and_the_nudge_stays_in_the_thread(
    workspace_dir: Path, tmp_path: Path, server: RecordingSMTP
) -> None:
    """The threading rule: a "Re:" step after a change of sender goes in the same thread
    (In-Reply-To, References, "Re: " + the subject sent) from the new sender, quoting the
    earlier message under the name of the person who sent it."""
    config = team(workspace_dir, server)
    run = Cli(config)
    write_list(tmp_path / "list.csv", ["ann@acme.example"])
    with freeze_time(MONDAY_10) as frozen:
        assert (
            run(
                "enroll", str(tmp_path / "list.csv"), "--sequence", "cold", "--sender", OLLI
            ).exit_code
            == 0
        )
        ws = Workspace.load(config)
        send_once(ws, wait_for_gaps=False)
        [intro] = [r.message for r in server.received]
        assert intro["From"].addresses[0].addr_spec == OLLI
        moved = run("reassign", "--from", OLLI, "--to", EEVA)
        assert moved.exit_code == 0 and "moved 1 live enrollment(s)" in moved.output
        history = run.json("prospect", "ann@acme.example")
        assert f"{OLLI} -> {EEVA}" in json.dumps(history)
        frozen.tick(timedelta(days=9))
        send_once(ws, wait_for_gaps=False)
    nudge = server.received[-1].message
    assert nudge["From"].addresses[0].addr_spec == EEVA
    assert nudge["In-Reply-To"] == intro["Message-ID"]
    assert intro["Message-ID"] in nudge["References"]
    assert nudge["Subject"] == "Re: " + intro["Subject"]
    text = nudge.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert f"Olli Virtanen <{OLLI}>" in text
    ws.close()


def test_a_removed_mailbox_with_live_enrollments_stops_validate_send_and_run(
    workspace_dir: Path, tmp_path: Path, server: RecordingSMTP
) -> None:
    config = team(workspace_dir, server)
    run = Cli(config)
    write_list(tmp_path / "list.csv", ["ann@acme.example", "bob@beta.example"])
    with freeze_time(MONDAY_10):
        assert (
            run(
                "enroll", str(tmp_path / "list.csv"), "--sequence", "cold", "--sender", EEVA
            ).exit_code
            == 0
        )
        text = config.read_text(encoding="utf-8")
        config.write_text(text[: text.index('\n[[mailboxes]]\nname = "Eeva')] + "\n")
        for command in (["validate"], ["send", "--once"], ["run"]):
            result = run(*command)
            assert result.exit_code == 1, command
            assert f"mailbox {EEVA} is not in the config but has 2 live enrollment(s)" in (
                result.stderr
            )
            assert f"outreach reassign --from {EEVA} --to " in result.stderr
        assert run("reassign", "--from", EEVA, "--to", SANNA).exit_code == 0
        sent = run("send", "--once", "--no-wait")
    assert sent.exit_code == 0, sent.output + sent.stderr
    assert {r.message["From"].addresses[0].addr_spec for r in server.received} == {SANNA}


# ----------------------------------------------------------------------- warm-up


def test_a_new_mailbox_ramps_by_sending_day_and_a_restart_does_not_reset_it(
    workspace_dir: Path, tmp_path: Path, server: RecordingSMTP
) -> None:
    config = workspace_dir / "outreach.toml"
    edit_config(
        config,
        smtp_port=server.port,
        min_gap_seconds=0,
        max_gap_seconds=0,
        daily_limit=20,
        warmup_start=5,
        warmup_step=5,
    )
    run = Cli(config)
    write_list(tmp_path / "list.csv", [f"p{i}@c{i}.example" for i in range(90)])
    per_day = []
    with freeze_time(MONDAY_10) as frozen:
        assert run("enroll", str(tmp_path / "list.csv"), "--sequence", "cold").exit_code == 0
        [box] = run.json("mailboxes")
        assert (box["daily_limit"], box["full_limit_on"]) == (5, "2027-01-08")
        for _ in range(7):  # Mon 4 .. Sun 10 January (Wednesday 6th is Epiphany, a holiday)
            before = len(server.received)
            # A fresh process every day: the ramp counts from the day stored in the database.
            ws = Workspace.load(config)
            send_once(ws, wait_for_gaps=False)
            ws.close()
            per_day.append(len(server.received) - before)
            if len(per_day) == 5:
                friday = run("mailboxes").output
            frozen.tick(timedelta(days=1))
        [box] = run.json("mailboxes")
    assert "20/20 today" in friday and "at today's limit: the backlog waits" in friday
    # Mon 5, Tue 10, Wed holiday, Thu 15, Fri 20, weekend nothing.
    assert per_day == [5, 10, 0, 15, 20, 0, 0]
    assert box["first_send_day"] == "2027-01-04" and box["daily_limit"] == 20
    assert not box["warming_up"]


def test_mailboxes_shows_the_ramp(workspace_dir: Path, server: RecordingSMTP) -> None:
    config = workspace_dir / "outreach.toml"
    edit_config(config, daily_limit=40, warmup_start=10, warmup_step=10)
    with freeze_time(MONDAY_10):
        result = Cli(config)("mailboxes")
    assert result.exit_code == 0
    assert f"{SANNA}: 0/10 today" in result.output
    assert "warming up: 10 today, the full 40 from 2027-01-08" in result.output


# ------------------------------------------------------------- bounce protection


def test_a_bad_list_pauses_the_mailbox_with_the_figure(
    workspace_dir: Path, tmp_path: Path, server: RecordingSMTP
) -> None:
    """Five early bounces, then the sixth at the 80th send: 6 in 80, 7.5 %, over 3 %."""
    config = workspace_dir / "outreach.toml"
    edit_config(
        config,
        smtp_port=server.port,
        min_gap_seconds=0,
        max_gap_seconds=0,
        daily_limit=200,
        bounce_pause_min_sends=80,
    )
    emails = [f"p{i:03}@c{i}.example" for i in range(1, 121)]
    server.unknown_users = {emails[n - 1] for n in (10, 20, 30, 40, 50, 80)}
    write_list(tmp_path / "list.csv", emails)
    run = Cli(config)
    with freeze_time(MONDAY_10):
        assert run("enroll", str(tmp_path / "list.csv"), "--sequence", "cold").exit_code == 0
        sent = run("send", "--once", "--no-wait")
        ws = Workspace.load(config)
        with ws.store.session() as session:
            tried = session.exec(select(Message).where(Message.channel == "email")).all()
        listed = run("mailboxes")
        again = run("send", "--once", "--no-wait")
    # 80 went to the server; the rest of the claim's batch went back to the queue untried.
    assert len([m for m in tried if m.state in ("sent", "bounced")]) == 80
    back = [m for m in tried if m.state not in ("sent", "bounced")]
    assert all(m.state == "retry" and m.attempts == 0 for m in back)
    assert len(server.received) == 74
    reason = "6 hard bounces in the last 80 sends, 7.5 % (above 3 %)"
    assert reason in sent.output + sent.stderr
    assert sent.exit_code == 1  # a paused mailbox: cron notices
    assert f"PAUSED: bounce rate: {reason}" in listed.output
    assert again.exit_code == 1 and len(server.received) == 74
    with freeze_time(MONDAY_10 + timedelta(minutes=5)):
        assert "resumed" in run("mailboxes", "resume", SANNA).output
        server.unknown_users = {emails[85]}  # one more bad address after the list was cleaned
        resumed = run("send", "--once", "--no-wait")
    # Counted afresh from the resume: 1 in 40 does not pause (fewer than 80 sends counted).
    assert resumed.exit_code == 0, resumed.output + resumed.stderr
    assert len(server.received) == 74 + 39
    ws.close()


def test_with_the_defaults_a_bad_list_costs_a_handful_of_bounces(
    workspace_dir: Path, tmp_path: Path, server: RecordingSMTP
) -> None:
    config = workspace_dir / "outreach.toml"
    edit_config(
        config, smtp_port=server.port, min_gap_seconds=0, max_gap_seconds=0, daily_limit=500
    )
    emails = [f"p{i:03}@c{i}.example" for i in range(1, 301)]
    server.unknown_users = set(emails[9::10])  # one in ten is dead
    write_list(tmp_path / "list.csv", emails)
    with freeze_time(MONDAY_10):
        ws = Workspace.load(config)
        enroll_csv(ws, tmp_path / "list.csv", "cold", now=clock.now())
        report = send_once(ws, wait_for_gaps=False)
        [box] = mailbox_report(ws, clock.now())
    assert report.bounced == 2 and len(report.sent) == 18  # 2 in 20 = 10 %: paused
    assert box["paused"].startswith("bounce rate: 2 hard bounces in the last 20 sends, 10.0 %")
    ws.close()


# ------------------------------------------------------------------ pause by hand


def test_a_paused_sequence_sends_nothing_then_goes_in_due_order(
    workspace_dir: Path, tmp_path: Path, server: RecordingSMTP
) -> None:
    config = workspace_dir / "outreach.toml"
    edit_config(config, smtp_port=server.port, min_gap_seconds=0, max_gap_seconds=0)
    run = Cli(config)
    emails = [f"p{i}@c{i}.example" for i in range(5)]
    write_list(tmp_path / "list.csv", emails)
    with freeze_time(MONDAY_10) as frozen:
        assert run("enroll", str(tmp_path / "list.csv"), "--sequence", "cold").exit_code == 0
        paused = run("sequence", "pause", "cold")
        assert "sequence cold paused: 5 live enrollment(s) wait" in paused.output
        for _ in range(3):
            assert run("send", "--once", "--no-wait").exit_code == 0
            frozen.tick(timedelta(hours=1))
        assert server.received == []
        assert run.json("mailboxes")[0]["due_now"] == 0  # held, not a backlog of the mailbox
        assert "sequence cold is paused: nothing of it goes out" in run("mailboxes").output
        assert "5 due now go out in due order" in run("sequence", "resume", "cold").output
        assert run("send", "--once", "--no-wait").exit_code == 0
    assert [r.rcpt_tos[0] for r in server.received] == emails


def test_a_mailbox_paused_by_hand_waits_until_resumed(
    workspace_dir: Path, tmp_path: Path, server: RecordingSMTP
) -> None:
    config = workspace_dir / "outreach.toml"
    edit_config(config, smtp_port=server.port, min_gap_seconds=0, max_gap_seconds=0)
    run = Cli(config)
    write_list(tmp_path / "list.csv", ["ann@acme.example"])
    with freeze_time(MONDAY_10):
        assert run("enroll", str(tmp_path / "list.csv"), "--sequence", "cold").exit_code == 0
        assert "paused" in run("mailboxes", "pause", SANNA, "--reason", "on leave").output
        held = run("send", "--once", "--no-wait")
        listed = run("mailboxes")
        run("mailboxes", "resume", SANNA)
        sent = run("send", "--once", "--no-wait")
    # Reported, but meant: cron does not see a failure every run while the rep is away.
    assert held.exit_code == 0 and "is paused: paused by hand: on leave" in held.stderr
    assert "PAUSED: paused by hand: on leave" in listed.output
    assert sent.exit_code == 0 and len(server.received) == 1


def test_mailboxes_shows_next_send_at_and_retry_sends_now(
    workspace_dir: Path, tmp_path: Path, server: RecordingSMTP
) -> None:
    config = workspace_dir / "outreach.toml"
    edit_config(config, smtp_port=server.port, min_gap_seconds=600, max_gap_seconds=600)
    run = Cli(config)
    write_list(tmp_path / "list.csv", ["ann@acme.example", "bob@beta.example"])
    with freeze_time(MONDAY_10):
        assert run("enroll", str(tmp_path / "list.csv"), "--sequence", "cold").exit_code == 0
        assert run("send", "--once", "--no-wait").exit_code == 0
        assert len(server.received) == 1
        listed = run("mailboxes")
        [box] = run.json("mailboxes")
        retried = run("mailboxes", "retry", SANNA)
    assert "next send at 2027-01-04 10:10 EET (its gap)" in listed.output
    assert box["next_send_at"] == "2027-01-04T08:10:00+00:00" and box["next_try_at"] is None
    assert retried.exit_code == 0, retried.output + retried.stderr
    assert "waiting out its gap: trying now" in retried.output
    assert len(server.received) == 2


def test_an_unreachable_mailbox_shows_next_try_at_and_retry_tries_it_now(
    workspace_dir: Path, tmp_path: Path, dead_port: int
) -> None:
    config = workspace_dir / "outreach.toml"
    edit_config(config, smtp_port=dead_port, min_gap_seconds=0, max_gap_seconds=0)
    run = Cli(config)
    write_list(tmp_path / "list.csv", ["ann@acme.example"])
    with freeze_time(MONDAY_10):
        assert run("enroll", str(tmp_path / "list.csv"), "--sequence", "cold").exit_code == 0
        run("send", "--once", "--no-wait")
        listed = run("mailboxes")
        [box] = run.json("mailboxes")
        retried = run("mailboxes", "retry", SANNA)
        [after] = run.json("mailboxes")
    assert "UNREACHABLE: " in listed.output
    assert "next try at 2027-01-04 10:05 EET" in listed.output  # retry_seconds = 300
    assert box["next_try_at"] == "2027-01-04T08:05:00+00:00" and box["next_send_at"] is None
    assert "was unreachable" in retried.output and "trying now" in retried.output
    assert retried.exit_code == 1 and SANNA in retried.stderr  # tried, and still down
    assert after["due_now"] == 1 and after["sent_today"] == 0  # nothing lost or counted


def test_a_recipient_domain_cap_spreads_one_company_over_days(
    workspace_dir: Path, tmp_path: Path, server: RecordingSMTP
) -> None:
    config = workspace_dir / "outreach.toml"
    edit_config(
        config,
        smtp_port=server.port,
        min_gap_seconds=0,
        max_gap_seconds=0,
        recipient_domain_daily_limit=2,
    )
    acme = [f"{name}@acme.example" for name in ("ann", "bob", "cid", "dan", "eve")]
    write_list(tmp_path / "list.csv", [*acme, "x@beta.example", "y@beta.example"])
    run = Cli(config)
    days = []
    with freeze_time(MONDAY_10) as frozen:
        assert run("enroll", str(tmp_path / "list.csv"), "--sequence", "cold").exit_code == 0
        for _ in range(3):
            before = len(server.received)
            assert run("send", "--once", "--no-wait").exit_code == 0
            days.append(sorted(r.rcpt_tos[0] for r in server.received[before:]))
            frozen.tick(timedelta(days=1))
    # Monday: two of Acme and both of Beta (Acme's cap does not hold Beta back); Tuesday two
    # more of Acme; Wednesday 6 January is a holiday; Thursday the last one.
    assert days[0] == ["ann@acme.example", "bob@acme.example", "x@beta.example", "y@beta.example"]
    assert days[1] == ["cid@acme.example", "dan@acme.example"]
    assert days[2] == []
    with freeze_time(MONDAY_10 + timedelta(days=3)):
        assert run("send", "--once", "--no-wait").exit_code == 0
    assert server.received[-1].rcpt_tos == ["eve@acme.example"]
