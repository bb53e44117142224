"""The Sent folder over IMAP, against a real Dovecot: copies kept, threads as clients see them,
and an interrupted send settled by finding it there."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from email import message_from_bytes
from email.policy import default
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from freezegun import freeze_time
from sqlmodel import select

from outreach import clock
from outreach.daemon import send_once
from outreach.dispatch import Claimed, Dispatcher, Report
from outreach.enroll import enroll_csv
from outreach.mail.imap import MailboxImap
from outreach.mail.smtp import SmtpTransport
from outreach.models import Enrollment, Message
from outreach.workspace import Workspace
from tests.conftest import Cli, point_at_servers
from tests.smtp_servers import RecordingSMTP

if TYPE_CHECKING:
    from dovecot import Dovecot

pytest_plugins = ["dovecot"]
pytestmark = pytest.mark.timeout(60)

MONDAY_10 = datetime(2027, 1, 4, 8, 0, tzinfo=UTC)  # 10:00 in Helsinki


def workspace(
    workspace_dir: Path,
    smtp: RecordingSMTP,
    dovecot: Dovecot,
    user: str,
    monkeypatch: pytest.MonkeyPatch,
) -> Workspace:
    monkeypatch.setenv("OUTREACH_TEST_IMAP", dovecot.password)
    config = workspace_dir / "outreach.toml"
    point_at_servers(config, smtp.port, dovecot.host, dovecot.port, user, save_to_sent=True)
    dovecot.create_folder(user, "Sent")
    ws = Workspace.load(config)
    (workspace_dir / "one.csv").write_text(
        "email,first_name,company,language\nann@acme.example,Ann,Acme,en\n"
    )
    result = enroll_csv(ws, workspace_dir / "one.csv", "cold", now=MONDAY_10, rng=random.Random(3))
    assert result.enrolled == 1
    return ws


def test_sent_copies_thread_like_a_mail_client_sees_them(
    workspace_dir: Path, dovecot_server: Dovecot, monkeypatch: pytest.MonkeyPatch
) -> None:
    user = dovecot_server.new_user()
    with RecordingSMTP() as smtp:
        ws = workspace(workspace_dir, smtp, dovecot_server, user, monkeypatch)
        with freeze_time(MONDAY_10, real_asyncio=True) as frozen:
            for _ in range(24 * 10):
                send_once(ws, wait_for_gaps=False)
                if len(smtp.received) == 2:
                    break
                frozen.tick(timedelta(hours=1))
    assert len(smtp.received) == 2
    kept = [
        message_from_bytes(raw, policy=default) for raw in dovecot_server.messages(user, "Sent")
    ]
    assert [m["Message-ID"] for m in kept] == [r.message["Message-ID"] for r in smtp.received]
    assert kept[1]["Subject"] == "Re: " + kept[0]["Subject"]
    with MailboxImap(
        dovecot_server.host, dovecot_server.port, "none", user, dovecot_server.password
    ) as imap:
        threads = imap.thread_references("Sent")
    # Dovecot's own threading (In-Reply-To/References) puts the nudge under the intro.
    assert [len(thread) for thread in threads] == [2]


def test_every_accepted_message_of_a_batch_is_kept_when_one_bounces(
    workspace_dir: Path, dovecot_server: Dovecot, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One claim's batch (no gap to keep): the third address bounces, which is recorded at once
    # in case it pauses the mailbox. The copies of the messages before and after it still go
    # to the Sent folder.
    user = dovecot_server.new_user()
    with RecordingSMTP() as smtp:
        ws = workspace(workspace_dir, smtp, dovecot_server, user, monkeypatch)
        emails = [f"p{n}@c{n}.example" for n in range(4)]
        (workspace_dir / "four.csv").write_text(
            "email,first_name\n" + "".join(f"{e},P\n" for e in emails)
        )
        enroll_csv(ws, workspace_dir / "four.csv", "cold", now=MONDAY_10, rng=random.Random(4))
        smtp.unknown_users = {emails[2]}
        with freeze_time(MONDAY_10, real_asyncio=True):
            report = send_once(ws, wait_for_gaps=False)
    assert report.bounced == 1 and len(report.sent) == 4  # Ann and three of the four
    kept = [
        message_from_bytes(raw, policy=default)["Message-ID"]
        for raw in dovecot_server.messages(user, "Sent")
    ]
    assert sorted(kept) == sorted(sent["message_id"] for sent in report.sent)


# On PostgreSQL a dead process's claim lapses with its lease first (test_cluster.py).
@pytest.mark.sqlite_only
def test_an_interrupted_send_found_in_the_sent_folder_is_settled_not_resent(
    workspace_dir: Path, dovecot_server: Dovecot, monkeypatch: pytest.MonkeyPatch
) -> None:
    user = dovecot_server.new_user()
    with RecordingSMTP() as smtp:
        ws = workspace(workspace_dir, smtp, dovecot_server, user, monkeypatch)
        with freeze_time(MONDAY_10, real_asyncio=True):
            # A process claims the intro, the mail server keeps a copy in Sent, and the process
            # dies before it can record the answer.
            dispatcher = Dispatcher(ws, SmtpTransport)
            claim = dispatcher.claim(ws.config.mailboxes[0], clock.now(), Report())
            assert isinstance(claim, Claimed)
            assert claim.composed is not None
            dovecot_server.append(user, "Sent", claim.composed.email.as_bytes())
            report = send_once(ws)
        assert report.settled == 1 and report.unknown == 0 and report.sent == []
        assert smtp.received == []  # never sent a second time
    with ws.store.session() as session:
        message = session.exec(select(Message)).one()
        enrollment = session.exec(select(Enrollment)).one()
    assert message.state == "sent" and enrollment.step_index == 1 and enrollment.due_at


# On PostgreSQL a dead process's claim lapses with its lease first (test_cluster.py).
@pytest.mark.sqlite_only
def test_an_unknown_message_not_in_the_sent_folder_waits_for_the_operator(
    workspace_dir: Path, dovecot_server: Dovecot, monkeypatch: pytest.MonkeyPatch
) -> None:
    user = dovecot_server.new_user()
    with RecordingSMTP() as smtp:
        ws = workspace(workspace_dir, smtp, dovecot_server, user, monkeypatch)
        with freeze_time(MONDAY_10, real_asyncio=True):
            claim = Dispatcher(ws, SmtpTransport).claim(
                ws.config.mailboxes[0], clock.now(), Report()
            )
            assert isinstance(claim, Claimed)
            report = send_once(ws)
        assert report.unknown == 1 and report.settled == 0 and smtp.received == []


@pytest.mark.sqlite_only
def test_resolve_shows_the_evidence_and_refuses_to_send_twice(
    workspace_dir: Path, dovecot_server: Dovecot, monkeypatch: pytest.MonkeyPatch, run: Cli
) -> None:
    """`resolve N` alone shows the Sent folder search and the SMTP answer and changes nothing;
    `--not-sent` is refused while the Sent folder holds a copy."""
    user = dovecot_server.new_user()
    with RecordingSMTP() as smtp:
        ws = workspace(workspace_dir, smtp, dovecot_server, user, monkeypatch)
        with freeze_time(MONDAY_10, real_asyncio=True):
            claim = Dispatcher(ws, SmtpTransport).claim(
                ws.config.mailboxes[0], clock.now(), Report()
            )
            assert isinstance(claim, Claimed) and claim.composed is not None
            Dispatcher(ws, SmtpTransport).recover(clock.now(), everything=True)  # the crash
        row = str(claim.message_row)
        shown = run("resolve", row)
        assert shown.exit_code == 0, shown.stderr
        assert "Sent folder: not found in Sent" in shown.stdout
        assert "last SMTP answer: none recorded" in shown.stdout
        assert run.json("resolve", row)["state"] == "unknown"  # nothing changed

        dovecot_server.append(user, "Sent", claim.composed.email.as_bytes())
        assert run.json("resolve", row)["sent_folder"] == "found in Sent"
        refused = run("resolve", row, "--not-sent")
        assert refused.exit_code == 1
        assert "--not-sent would send it twice" in refused.stderr
        settled = run("resolve", row, "--sent")
        assert settled.exit_code == 0 and ": sent" in settled.stdout
        assert smtp.received == []
