"""Sending, end to end, against a real SMTP server in the test process; freezegun moves time."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from freezegun import freeze_time
from sqlmodel import select

from outreach import clock
from outreach.daemon import send_once
from outreach.dispatch import Dispatcher, Report
from outreach.enroll import enroll_csv
from outreach.errors import ConfigError
from outreach.mail.smtp import SmtpTransport
from outreach.models import Enrollment, Message, Prospect
from outreach.operations import complete_task, list_tasks, mailbox_report, resume_mailbox
from outreach.sequencing import stop
from outreach.workspace import Workspace
from tests.conftest import edit_config
from tests.smtp_servers import RecordingSMTP

HELSINKI_MONDAY_10 = datetime(2027, 1, 4, 8, 0, tzinfo=UTC)  # Mon 4 Jan 2027 10:00 EET
HEADER = "email,first_name,last_name,company,persona,language\n"
pytestmark = pytest.mark.both_databases


@pytest.fixture
def server() -> Iterator[RecordingSMTP]:
    with RecordingSMTP() as smtp:
        yield smtp


def workspace_for(directory: Path, server: RecordingSMTP, **settings: object) -> Workspace:
    config = directory / "outreach.toml"
    edit_config(config, smtp_port=server.port, min_gap_seconds=0, max_gap_seconds=0, **settings)
    return Workspace.load(config)


def enroll_rows(ws: Workspace, tmp_path: Path, rows: list[str], now: datetime) -> None:
    path = tmp_path / "list.csv"
    path.write_text(HEADER + "".join(row + "\n" for row in rows), encoding="utf-8")
    result = enroll_csv(ws, path, "cold", now=now, rng=random.Random(1))
    assert result.applied and not result.rejected


def subjects(server: RecordingSMTP) -> list[str]:
    return [str(r.message["Subject"]) for r in server.received]


def run_hourly(
    ws: Workspace,
    frozen,
    hours: int,  # type: ignore[no-untyped-def]
    until_task: bool = False,
) -> list[tuple[datetime, Report]]:
    """Run `send --once` every hour for ``hours`` hours (or until a task appears); return
    the runs that did something, with their time."""
    busy = []
    for _ in range(hours):
        report = send_once(ws, wait_for_gaps=False)
        if report.sent or report.tasks_created or report.retried or report.bounced:
            busy.append((clock.now(), report))
            if until_task and report.tasks_created:
                break
        frozen.tick(timedelta(hours=1))
    return busy


def test_cold_sequence_end_to_end(
    workspace_dir: Path, tmp_path: Path, server: RecordingSMTP
) -> None:
    ws = workspace_for(workspace_dir, server)
    with freeze_time(HELSINKI_MONDAY_10, real_asyncio=True) as frozen:
        enroll_rows(ws, tmp_path, ["ann@acme.example,Ann,Lee,Acme,buyer,en"], clock.now())
        busy = run_hourly(ws, frozen, 24 * 26, until_task=True)
    # Intro at once, the nudge 3-5 business days later, in the window, on a working day.
    (intro_at, intro), (nudge_at, nudge), (task_at, task) = busy
    assert intro_at == HELSINKI_MONDAY_10 and len(intro.sent) == 1
    # 3-5 business days after Mon 4 Jan, skipping Loppiainen (Wed 6 Jan): 8, 11 or 12 Jan.
    assert nudge_at.date() in [datetime(2027, 1, d).date() for d in (8, 11, 12)]
    assert nudge_at.astimezone(ws.config.calendar(ws.config.mailboxes[0]).timezone).hour == 10
    first, second = (r.message for r in server.received)
    assert first["From"] == "Sanna Lehto <sanna.lehto@northwind.example>"
    assert first["To"] == "Ann Lee <ann@acme.example>"
    assert first["Message-ID"].endswith("@northwind.example>")
    assert "mailto:unsubscribe@northwind.example" in first["List-Unsubscribe"]
    assert first["List-Unsubscribe-Post"] is None  # no https URL configured
    assert second["Subject"] == "Re: " + first["Subject"]
    assert second["In-Reply-To"] == first["Message-ID"]
    assert second["References"] == first["Message-ID"]
    body = second.get_body(("plain",)).get_content()
    assert "wrote:" in body and "> Hi Ann" in body  # the intro quoted below the nudge
    # The LinkedIn step is a task for the rep, 10-14 days after the nudge; no mail for it.
    assert task.tasks_created == 1 and len(server.received) == 2
    assert timedelta(days=10) <= task_at - nudge_at < timedelta(days=15)
    [open_task] = list_tasks(ws, clock.now())
    assert open_task["prospect"] == "ann@acme.example" and open_task["text"]
    with freeze_time(task_at + timedelta(hours=2)):
        complete_task(ws, open_task["id"], clock.now())
    with ws.store.session() as session:
        cold, reminder = session.exec(select(Enrollment).order_by(Enrollment.id)).all()
    assert cold.state == "finished" and reminder.sequence == "reminder"
    assert reminder.due_at is not None
    assert timedelta(days=90) <= reminder.due_at - task_at <= timedelta(days=190)


def test_nothing_leaves_outside_the_window_weekends_or_holidays(
    workspace_dir: Path, tmp_path: Path, server: RecordingSMTP
) -> None:
    ws = workspace_for(workspace_dir, server)
    friday_evening = datetime(2027, 1, 1, 17, 0, tzinfo=UTC)  # Fri 1 Jan (New Year) 19:00 EET
    with freeze_time(friday_evening, real_asyncio=True) as frozen:
        enroll_rows(ws, tmp_path, ["ann@acme.example,Ann,Lee,Acme,buyer,en"], clock.now())
        busy = run_hourly(ws, frozen, 24 * 4)
    # Sat, Sun: weekend. Mon 4 Jan 08:00 Helsinki is the first open hour.
    [(sent_at, _)] = busy
    assert sent_at == datetime(2027, 1, 4, 6, 0, tzinfo=UTC)


def test_finnish_holiday_holds_the_message(
    workspace_dir: Path, tmp_path: Path, server: RecordingSMTP
) -> None:
    ws = workspace_for(workspace_dir, server)
    with freeze_time(datetime(2027, 1, 5, 16, 0, tzinfo=UTC), real_asyncio=True) as frozen:
        enroll_rows(ws, tmp_path, ["ann@acme.example,Ann,Lee,Acme,buyer,en"], clock.now())
        busy = run_hourly(ws, frozen, 48)
    # Tue 18:00 is after the window; Wed 6 Jan is Loppiainen; Thu 08:00 it leaves.
    assert [at for at, _ in busy] == [datetime(2027, 1, 7, 6, 0, tzinfo=UTC)]


def test_daily_limit_holds_and_the_backlog_waits_in_order(
    workspace_dir: Path, tmp_path: Path, server: RecordingSMTP
) -> None:
    ws = workspace_for(workspace_dir, server, daily_limit=3)
    rows = [f"p{i}@acme{i}.example,P{i},,Acme,,en" for i in range(5)]
    with freeze_time(HELSINKI_MONDAY_10, real_asyncio=True) as frozen:
        enroll_rows(ws, tmp_path, rows, clock.now())
        assert len(send_once(ws).sent) == 3
        assert len(send_once(ws).sent) == 0  # still Monday: the limit holds
        [box] = mailbox_report(ws, clock.now())
        assert box["sent_today"] == 3 and box["due_now"] == 2
        frozen.tick(timedelta(days=1))
        assert [s["to"] for s in send_once(ws).sent] == ["p3@acme3.example", "p4@acme4.example"]
    assert len(server.received) == 5


def test_gap_between_sends_of_one_mailbox(
    workspace_dir: Path, tmp_path: Path, server: RecordingSMTP
) -> None:
    ws = workspace_for(workspace_dir, server)
    edit_config(ws.config.path, min_gap_seconds=120, max_gap_seconds=120)
    ws = Workspace.load(ws.config.path)
    rows = [f"p{i}@acme{i}.example,P{i},,Acme,,en" for i in range(3)]
    with freeze_time(HELSINKI_MONDAY_10, real_asyncio=True) as frozen:
        enroll_rows(ws, tmp_path, rows, clock.now())
        assert len(send_once(ws, wait_for_gaps=False).sent) == 1
        frozen.tick(timedelta(seconds=60))
        assert len(send_once(ws, wait_for_gaps=False).sent) == 0
        frozen.tick(timedelta(seconds=61))
        assert len(send_once(ws, wait_for_gaps=False).sent) == 1


def test_451_is_retried_later_then_sent_once(
    workspace_dir: Path, tmp_path: Path, server: RecordingSMTP
) -> None:
    ws = workspace_for(workspace_dir, server)
    server.script("451 4.7.1 Greylisted, try again later")
    with freeze_time(HELSINKI_MONDAY_10, real_asyncio=True) as frozen:
        enroll_rows(ws, tmp_path, ["ann@acme.example,Ann,,Acme,,en"], clock.now())
        first = send_once(ws)
        assert first.retried == 1 and server.received == []
        frozen.tick(timedelta(minutes=4))
        assert send_once(ws).sent == []  # the backoff holds
        frozen.tick(timedelta(minutes=2))
        assert len(send_once(ws).sent) == 1
    [received] = server.received
    with ws.store.session() as session:
        [message] = session.exec(select(Message)).all()
    assert message.state == "sent" and message.attempts == 2
    assert received.message["Message-ID"] == message.message_id  # the same message, retried


def test_550_for_the_recipient_is_a_hard_bounce(
    workspace_dir: Path, tmp_path: Path, server: RecordingSMTP
) -> None:
    ws = workspace_for(workspace_dir, server)
    server.script("rcpt:550 5.1.1 User unknown")
    with freeze_time(HELSINKI_MONDAY_10, real_asyncio=True) as frozen:
        enroll_rows(ws, tmp_path, ["ann@acme.example,Ann,,Acme,,en"], clock.now())
        assert send_once(ws).bounced == 1
        frozen.tick(timedelta(days=10))
        assert send_once(ws).sent == []
    with ws.store.session() as session:
        prospect = session.exec(select(Prospect)).one()
        enrollment = session.exec(select(Enrollment)).one()
    assert prospect.status == "invalid" and enrollment.state == "bounced"
    assert server.received == []


def test_connection_dropped_mid_data_is_retried_without_a_duplicate(
    workspace_dir: Path, tmp_path: Path, server: RecordingSMTP
) -> None:
    ws = workspace_for(workspace_dir, server)
    server.script("drop")
    with freeze_time(HELSINKI_MONDAY_10, real_asyncio=True) as frozen:
        enroll_rows(ws, tmp_path, ["ann@acme.example,Ann,,Acme,,en"], clock.now())
        assert send_once(ws).retried == 1
        frozen.tick(timedelta(minutes=6))
        assert len(send_once(ws).sent) == 1
    assert len(server.received) == 1


def test_auth_and_starttls_and_a_wrong_password_pauses_the_mailbox(
    workspace_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with RecordingSMTP(auth=("sanna", "right horse"), starttls=True) as server:
        ws = workspace_for(
            workspace_dir,
            server,
            smtp_security="starttls",
            smtp_username="sanna",
            password_env="OUTREACH_TEST_SMTP",
        )
        monkeypatch.setenv("OUTREACH_TEST_SMTP", "wrong")
        with freeze_time(HELSINKI_MONDAY_10, real_asyncio=True):
            enroll_rows(ws, tmp_path, ["ann@acme.example,Ann,,Acme,,en"], clock.now())
            report = send_once(ws)
            assert list(report.paused) == ["sanna.lehto@northwind.example"]
            assert "535" in report.paused["sanna.lehto@northwind.example"]
            [box] = mailbox_report(ws, clock.now())
            assert box["paused"] and box["sent_today"] == 0 and box["due_now"] == 1
            assert send_once(ws).sent == []  # paused: nothing is tried
            monkeypatch.setenv("OUTREACH_TEST_SMTP", "right horse")
            resume_mailbox(ws, "sanna.lehto@northwind.example")
            assert len(send_once(ws).sent) == 1
        assert len(server.received) == 1


def test_no_message_after_a_stop(
    workspace_dir: Path, tmp_path: Path, server: RecordingSMTP
) -> None:
    ws = workspace_for(workspace_dir, server)
    with freeze_time(HELSINKI_MONDAY_10, real_asyncio=True) as frozen:
        enroll_rows(
            ws,
            tmp_path,
            ["ann@acme.example,Ann,,Acme,,en", "bob@beta.example,Bob,,Beta,,en"],
            clock.now(),
        )
        assert len(send_once(ws).sent) == 2
        stop(ws.store, "ann@acme.example", "replied", clock.now())
        frozen.tick(timedelta(days=8))
        assert [s["to"] for s in send_once(ws).sent] == ["bob@beta.example"]


def test_a_reply_between_claim_and_smtp_cancels_the_send(
    workspace_dir: Path, tmp_path: Path, server: RecordingSMTP
) -> None:
    """The race: the claim is committed, then a reply is recorded, then SMTP would start."""
    ws = workspace_for(workspace_dir, server)

    class StopBeforeSmtp(Dispatcher):
        def take(self, claim):  # type: ignore[no-untyped-def]
            stop(self.ws.store, claim.rcpt, "replied", clock.now())  # the reply lands now
            return super().take(claim)

    with freeze_time(HELSINKI_MONDAY_10, real_asyncio=True):
        enroll_rows(ws, tmp_path, ["ann@acme.example,Ann,,Acme,,en"], clock.now())
        report = asyncio.run(StopBeforeSmtp(ws, SmtpTransport).run_once())
    assert report.cancelled == 1 and report.sent == [] and server.received == []
    [box] = mailbox_report(ws, HELSINKI_MONDAY_10)
    assert box["sent_today"] == 0


def test_balanced_assignment_spreads_subjects_evenly(
    workspace_dir: Path, tmp_path: Path, server: RecordingSMTP
) -> None:
    edit_config(workspace_dir / "outreach.toml", assignment="balanced")  # the default: index
    ws = workspace_for(workspace_dir, server)
    rows = [f"p{i}@acme{i}.example,P{i},,Acme,,en" for i in range(12)]
    with freeze_time(HELSINKI_MONDAY_10, real_asyncio=True):
        enroll_rows(ws, tmp_path, rows, clock.now())
        send_once(ws)
    with ws.store.session() as session:
        messages = session.exec(select(Message)).all()
    subject_counts: dict[str | None, int] = {}
    for message in messages:
        subject_counts[message.subject_variant] = subject_counts.get(message.subject_variant, 0) + 1
    assert len(subject_counts) == 4 and set(subject_counts.values()) == {3}


def test_one_click_unsubscribe_link_is_signed_per_prospect(
    workspace_dir: Path, tmp_path: Path, server: RecordingSMTP, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OUTREACH_SECRET", "a-test-secret-of-enough-length")
    ws = workspace_for(workspace_dir, server, unsubscribe_url="https://go.northwind.example/u")
    with freeze_time(HELSINKI_MONDAY_10, real_asyncio=True):
        enroll_rows(ws, tmp_path, ["ann@acme.example,Ann,,Acme,,en"], clock.now())
        send_once(ws)
    [received] = server.received
    header = received.message["List-Unsubscribe"]
    assert "<mailto:unsubscribe@northwind.example" in header
    assert "<https://go.northwind.example/u?t=" in header
    assert received.message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    token = header.split("?t=")[1].split(">")[0]
    from urllib.parse import unquote

    from outreach.mail.unsubscribe import read_token

    assert read_token("a-test-secret-of-enough-length", unquote(token)) == "ann@acme.example"
    assert read_token("another-secret-entirely-here", unquote(token)) is None


def test_without_the_signing_secret_nothing_is_sent(
    workspace_dir: Path, tmp_path: Path, server: RecordingSMTP, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OUTREACH_SECRET", raising=False)
    ws = workspace_for(workspace_dir, server, unsubscribe_url="https://go.northwind.example/u")
    enroll_rows(ws, tmp_path, ["ann@acme.example,Ann,,Acme,,en"], HELSINKI_MONDAY_10)
    with pytest.raises(ConfigError, match="OUTREACH_SECRET must hold a secret"):
        send_once(ws)
    assert server.received == []


def test_a_failing_mailbox_does_not_stop_the_others(
    workspace_dir: Path, tmp_path: Path, server: RecordingSMTP, dead_port: int
) -> None:
    config = workspace_dir / "outreach.toml"
    ws = workspace_for(workspace_dir, server)
    config.write_text(
        config.read_text()
        + f"""
[[mailboxes]]
name = "Olli Dead"
email = "olli@northwind.example"
smtp_host = "127.0.0.1"
smtp_port = {dead_port}
smtp_security = "none"
"""
    )
    ws = Workspace.load(config)
    with freeze_time(HELSINKI_MONDAY_10, real_asyncio=True):
        for sender, row in (
            ("olli@northwind.example", "bob@beta.example,Bob,,Beta,,en"),
            ("sanna.lehto@northwind.example", "ann@acme.example,Ann,,Acme,,en"),
        ):
            path = tmp_path / "one.csv"
            path.write_text(HEADER + row + "\n")
            enroll_csv(ws, path, "cold", now=clock.now(), sender=sender)
        report = send_once(ws)
        [box_dead] = [b for b in mailbox_report(ws, clock.now()) if b["email"].startswith("olli")]
    assert [s["to"] for s in report.sent] == ["ann@acme.example"]
    assert len(server.received) == 1
    # The dead mailbox waits and says why; the message is untouched and not counted.
    assert "cannot connect" in box_dead["unreachable"]
    assert box_dead["sent_today"] == 0 and box_dead["due_now"] == 1
    assert any("olli@northwind.example" in note for note in report.notes)


def test_an_undone_task_is_skipped_and_the_sequence_goes_on(
    workspace_dir: Path, tmp_path: Path, server: RecordingSMTP
) -> None:
    ws = workspace_for(workspace_dir, server)
    with freeze_time(HELSINKI_MONDAY_10, real_asyncio=True) as frozen:
        enroll_rows(ws, tmp_path, ["ann@acme.example,Ann,,Acme,,en"], clock.now())
        busy = run_hourly(ws, frozen, 24 * 26, until_task=True)
        assert busy[-1][1].tasks_created == 1 and len(list_tasks(ws, clock.now())) == 1
        frozen.tick(timedelta(days=7, hours=1))
        report = send_once(ws)
    assert report.tasks_skipped == 1 and list_tasks(ws, clock.now()) == []
    with ws.store.session() as session:
        cold = session.exec(select(Enrollment).where(Enrollment.sequence == "cold")).one()
        task = session.exec(select(Message).where(Message.channel == "linkedin")).one()
    assert cold.state == "finished" and task.state == "skipped"
    # Finished, but not "every step done": the LinkedIn step was never done.
    assert cold.end_reason == "last step linkedin skipped: not done in time"


def test_prospects_outside_their_window_do_not_hold_back_the_others(
    workspace_dir: Path, tmp_path: Path, server: RecordingSMTP
) -> None:
    """25 prospects in New York (03:00 there) are due before one in Helsinki (10:00), e.g.
    after a retry or a config change; the Helsinki one must still leave now."""
    ws = workspace_for(workspace_dir, server)
    path = tmp_path / "mixed.csv"
    rows = "".join(f"ny{i}@us{i}.example,America/New_York\n" for i in range(25))
    path.write_text("email,timezone\n" + rows + "ann@acme.example,Europe/Helsinki\n")
    with freeze_time(HELSINKI_MONDAY_10, real_asyncio=True):
        assert enroll_csv(ws, path, "cold", now=clock.now()).enrolled == 26
        with ws.store.session() as session:
            for enrollment in session.exec(select(Enrollment)).all():
                early = enrollment.prospect_id <= 25  # the New York rows come first
                enrollment.due_at = clock.now() - timedelta(hours=2 if early else 1)
                session.add(enrollment)
        report = send_once(ws)
        assert [s["to"] for s in report.sent] == ["ann@acme.example"]
        with ws.store.session() as session:
            later = session.exec(select(Enrollment).where(Enrollment.prospect_id <= 25)).all()
    assert all(e.due_at == datetime(2027, 1, 4, 13, 0, tzinfo=UTC) for e in later)  # 08:00 NY


def test_a_server_that_is_down_never_uses_up_the_messages(
    workspace_dir: Path, tmp_path: Path, dead_port: int
) -> None:
    """Days of a dead server: nothing is attempted per message, nothing stops, then it sends."""
    port = dead_port
    config = workspace_dir / "outreach.toml"
    edit_config(config, smtp_port=port, min_gap_seconds=0, max_gap_seconds=0)
    ws = Workspace.load(config)
    rows = [f"p{i}@acme{i}.example,P{i},,Acme,,en" for i in range(3)]
    with freeze_time(HELSINKI_MONDAY_10, real_asyncio=True) as frozen:
        enroll_rows(ws, tmp_path, rows, clock.now())
        for _ in range(20):  # ~3 days of polls every 6 minutes while it is down
            assert send_once(ws).sent == []
            frozen.tick(timedelta(hours=3.6))
        with ws.store.session() as session:
            assert {e.state for e in session.exec(select(Enrollment)).all()} == {"active"}
            assert all(m.attempts == 0 for m in session.exec(select(Message)).all())
        with RecordingSMTP() as server:
            edit_config(config, smtp_port=server.port)
            ws = Workspace.load(config)
            frozen.tick(timedelta(minutes=10))
            while (
                clock.now().astimezone(ws.config.calendar(ws.config.mailboxes[0]).timezone).hour < 8
            ):
                frozen.tick(timedelta(hours=1))
            assert len(send_once(ws).sent) == 3


def test_a_relay_refusal_pauses_the_mailbox_instead_of_bouncing_the_list(
    workspace_dir: Path, tmp_path: Path, server: RecordingSMTP
) -> None:
    ws = workspace_for(workspace_dir, server)
    server.script("rcpt:550 5.7.1 Relaying denied")
    rows = [f"p{i}@acme{i}.example,P{i},,Acme,,en" for i in range(3)]
    with freeze_time(HELSINKI_MONDAY_10, real_asyncio=True):
        enroll_rows(ws, tmp_path, rows, clock.now())
        report = send_once(ws)
    assert report.bounced == 0 and "5.7.1" in report.paused["sanna.lehto@northwind.example"]
    with ws.store.session() as session:
        assert {p.status for p in session.exec(select(Prospect)).all()} == {"active"}
        assert {e.state for e in session.exec(select(Enrollment)).all()} == {"active"}


def test_a_missing_password_claims_nothing(
    workspace_dir: Path, tmp_path: Path, server: RecordingSMTP, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OUTREACH_NOT_SET_PW", raising=False)
    ws = workspace_for(
        workspace_dir, server, smtp_username="sanna", password_env="OUTREACH_NOT_SET_PW"
    )
    with freeze_time(HELSINKI_MONDAY_10, real_asyncio=True):
        enroll_rows(ws, tmp_path, ["ann@acme.example,Ann,,Acme,,en"], clock.now())
        report = send_once(ws)
        again = send_once(ws)
    assert "OUTREACH_NOT_SET_PW is not set" in report.errors[0]
    assert again.unknown == 0
    with ws.store.session() as session:
        assert session.exec(select(Message)).all() == []  # nothing claimed, nothing stranded
