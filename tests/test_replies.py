"""Replies, bounces, auto-replies and unsubscribes read from a real Dovecot, applied at once."""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, date, datetime, timedelta
from email.message import EmailMessage
from email.policy import SMTP
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from freezegun import freeze_time
from sqlmodel import select

from outreach import clock, inbox
from outreach.daemon import send_once
from outreach.dispatch import Dispatcher
from outreach.enroll import enroll_csv
from outreach.mail.smtp import SmtpTransport
from outreach.models import Enrollment, Event, Message, Prospect, Suppression
from outreach.workspace import Workspace
from tests.conftest import point_at_servers
from tests.smtp_servers import RecordingSMTP

if TYPE_CHECKING:
    from dovecot import Dovecot

pytest_plugins = ["dovecot"]
pytestmark = pytest.mark.timeout(60)

MONDAY_10 = datetime(2027, 1, 4, 8, 0, tzinfo=UTC)  # 10:00 in Helsinki
SANNA = "sanna.lehto@northwind.example"


@pytest.fixture
def smtp() -> RecordingSMTP:
    with RecordingSMTP() as server:
        yield server


@pytest.fixture
def rep(dovecot_server: Dovecot) -> str:
    return dovecot_server.new_user()


@pytest.fixture
def ws(
    workspace_dir: Path,
    smtp: RecordingSMTP,
    dovecot_server: Dovecot,
    rep: str,
    monkeypatch: pytest.MonkeyPatch,
) -> Workspace:
    monkeypatch.setenv("OUTREACH_TEST_IMAP", dovecot_server.password)
    config = workspace_dir / "outreach.toml"
    point_at_servers(config, smtp.port, dovecot_server.host, dovecot_server.port, rep)
    workspace = Workspace.load(config)
    rows = (
        "email,first_name,company,language\nann@acme.example,Ann,Acme,en\n"
        "bob@acme.example,Bob,Acme,en\ncid@other.example,Cid,Other,en\n"
    )
    (workspace_dir / "list.csv").write_text(rows)
    assert (
        enroll_csv(
            workspace, workspace_dir / "list.csv", "cold", now=MONDAY_10, rng=random.Random(5)
        ).enrolled
        == 3
    )
    return workspace


# A delivery status notification as Postfix writes it (RFC 3464).
POSTFIX_DSN = """\
From: MAILER-DAEMON@mx.other.example (Mail Delivery System)
To: {to}
Subject: Undelivered Mail Returned to Sender
Date: Mon, 04 Jan 2027 10:00:05 +0200
Message-ID: <20270104080005.1A2B3C@mx.other.example>
Auto-Submitted: auto-replied
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="B0UNDARY"

--B0UNDARY
Content-Description: Notification
Content-Type: text/plain; charset=us-ascii

This is the mail system at host mx.other.example.

I'm sorry to have to inform you that your message could not
be delivered to one or more recipients.

<cid@other.example>: host mx.other.example said: 550 5.1.1 <cid@other.example>:
    Recipient address rejected: User unknown in local recipient table

--B0UNDARY
Content-Description: Delivery report
Content-Type: message/delivery-status

Reporting-MTA: dns; mx.other.example
Arrival-Date: Mon,  4 Jan 2027 10:00:04 +0200

Final-Recipient: rfc822; cid@other.example
Original-Recipient: rfc822;cid@other.example
Action: failed
Status: 5.1.1
Diagnostic-Code: smtp; 550 5.1.1 <cid@other.example>: Recipient address rejected:
    User unknown in local recipient table

--B0UNDARY
Content-Description: Undelivered Message Headers
Content-Type: text/rfc822-headers

From: Sanna Lehto <sanna.lehto@northwind.example>
To: cid@other.example
Message-ID: {message_id}

--B0UNDARY--
"""


def sent_to(smtp: RecordingSMTP, address: str) -> EmailMessage:
    return next(
        r.message for r in smtp.received if r.message["To"].addresses[0].addr_spec == address
    )


def reply_to(
    original: EmailMessage, text: str, *, sender: str = "Ann <ann@acme.example>", **headers: str
) -> bytes:
    """A reply as a mail client writes it: new text on top, our message quoted below."""
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = original["From"]
    msg["Subject"] = "Re: " + original["Subject"]
    msg["Date"] = "Tue, 05 Jan 2027 09:12:00 +0200"
    msg["Message-ID"] = f"<reply-{random.random()}@acme.example>"
    msg["In-Reply-To"] = original["Message-ID"]
    msg["References"] = original["Message-ID"]
    for name, value in headers.items():
        msg[name.replace("_", "-")] = value
    quoted = "\n".join(
        "> " + line for line in original.get_body(("plain",)).get_content().splitlines()
    )
    msg.set_content(
        f"{text}\n\nOn Mon, 4 Jan 2027 at 10:00, Sanna Lehto <{SANNA}> wrote:\n{quoted}\n"
    )
    return msg.as_bytes(policy=SMTP)


def states(ws: Workspace) -> dict[str, str]:
    with ws.store.session() as session:
        rows = session.exec(select(Enrollment, Prospect).join(Prospect)).all()
    return {prospect.email: enrollment.state for enrollment, prospect in rows}


def test_a_reply_stops_the_sequence_and_the_nudge_never_leaves(
    ws: Workspace, smtp: RecordingSMTP, dovecot_server: Dovecot, rep: str
) -> None:
    with freeze_time(MONDAY_10, real_asyncio=True) as frozen:
        assert len(send_once(ws).sent) == 3
        dovecot_server.append(
            rep,
            "INBOX",
            reply_to(sent_to(smtp, "ann@acme.example"), "Sounds good, let's talk next week."),
        )
        report = inbox.poll(ws, clock.now())
        assert [r["from"] for r in report.replies] == ["ann@acme.example"]
        assert states(ws)["ann@acme.example"] == "replied"
        # Bob works at the same company: paused until a rep decides; Cid goes on.
        assert states(ws)["bob@acme.example"] == "paused"
        assert states(ws)["cid@other.example"] == "active"
        frozen.tick(timedelta(days=10))
        later = send_once(ws)
    assert [s["to"] for s in later.sent] == ["cid@other.example"]
    with ws.store.session() as session:
        event = session.exec(select(Event).where(Event.kind == "reply")).one()
    assert event.reason == "positive"
    assert event.data["text"].startswith("Sounds good") and "wrote:" not in event.data["text"]


def test_polls_are_incremental_and_never_apply_twice(
    ws: Workspace, smtp: RecordingSMTP, dovecot_server: Dovecot, rep: str
) -> None:
    with freeze_time(MONDAY_10, real_asyncio=True):
        send_once(ws)
        dovecot_server.append(
            rep, "INBOX", reply_to(sent_to(smtp, "cid@other.example"), "Not interested, thanks.")
        )
        first = inbox.poll(ws, clock.now())
        second = inbox.poll(ws, clock.now())
    assert first.seen == 1 and second.seen == 0
    with ws.store.session() as session:
        [event] = session.exec(select(Event).where(Event.kind == "reply")).all()
    assert event.reason == "negative"
    flags = dovecot_server.flags(rep, "INBOX")
    assert all("\\Seen" not in f for f in flags.values())  # the rep's mail stays unread


def test_our_own_copy_in_the_inbox_is_never_a_reply(
    ws: Workspace, smtp: RecordingSMTP, dovecot_server: Dovecot, rep: str
) -> None:
    with freeze_time(MONDAY_10, real_asyncio=True):
        send_once(ws)
        own = reply_to(
            sent_to(smtp, "ann@acme.example"), "Just bumping this.", sender=f"Sanna Lehto <{SANNA}>"
        )
        dovecot_server.append(rep, "INBOX", own)
        report = inbox.poll(ws, clock.now())
    assert report.replies == [] and states(ws)["ann@acme.example"] == "active"


def test_a_bounce_marks_the_address_invalid(
    ws: Workspace, smtp: RecordingSMTP, dovecot_server: Dovecot, rep: str
) -> None:
    with freeze_time(MONDAY_10, real_asyncio=True):
        send_once(ws)
        original = sent_to(smtp, "cid@other.example")
        dsn = POSTFIX_DSN.format(message_id=original["Message-ID"], to=SANNA).encode()
        dovecot_server.append(rep, "INBOX", dsn.replace(b"\n", b"\r\n"))
        report = inbox.poll(ws, clock.now())
    assert report.bounces == 1
    with ws.store.session() as session:
        cid = session.exec(select(Prospect).where(Prospect.email == "cid@other.example")).one()
    assert cid.status == "invalid" and states(ws)["cid@other.example"] == "bounced"


def test_a_late_bounce_of_the_first_message_is_one_bounce(
    ws: Workspace, smtp: RecordingSMTP, dovecot_server: Dovecot, rep: str
) -> None:
    """The intro bounces only after the nudge left: the report names the intro, and the
    prospect gets one bounce event, on the message it names."""
    with freeze_time(MONDAY_10, real_asyncio=True) as frozen:
        send_once(ws)
        intro = sent_to(smtp, "cid@other.example")
        frozen.tick(timedelta(days=8))
        send_once(ws)
        assert sum(r.rcpt_tos == ["cid@other.example"] for r in smtp.received) == 2
        dsn = POSTFIX_DSN.format(message_id=intro["Message-ID"], to=SANNA).encode()
        dovecot_server.append(rep, "INBOX", dsn.replace(b"\n", b"\r\n"))
        assert inbox.poll(ws, clock.now()).bounces == 1
    with ws.store.session() as session:
        cid = session.exec(select(Prospect).where(Prospect.email == "cid@other.example")).one()
        bounces = session.exec(
            select(Event).where(Event.kind == "bounce", Event.prospect_id == cid.id)
        ).all()
        [bounced] = session.exec(select(Message).where(Message.state == "bounced")).all()
    assert len(bounces) == 1 and bounces[0].data["message_id"]
    assert bounced.message_id == intro["Message-ID"]


def test_out_of_office_moves_the_next_step_past_the_return_date(
    ws: Workspace, smtp: RecordingSMTP, dovecot_server: Dovecot, rep: str
) -> None:
    with freeze_time(MONDAY_10, real_asyncio=True):
        send_once(ws)
        away = reply_to(
            sent_to(smtp, "cid@other.example"),
            "I am out of the office until 25 January 2027 with limited access.",
            sender="Cid <cid@other.example>",
            Auto_Submitted="auto-replied",
        )
        dovecot_server.append(rep, "INBOX", away)
        report = inbox.poll(ws, clock.now())
    assert report.auto_replies == 1 and states(ws)["cid@other.example"] == "active"
    with ws.store.session() as session:
        enrollment = session.exec(
            select(Enrollment).join(Prospect).where(Prospect.email == "cid@other.example")
        ).one()
    assert enrollment.due_at is not None and enrollment.due_at.date() >= date(2027, 1, 26)


def test_asking_to_be_removed_suppresses_the_address(
    ws: Workspace, smtp: RecordingSMTP, dovecot_server: Dovecot, rep: str
) -> None:
    with freeze_time(MONDAY_10, real_asyncio=True):
        send_once(ws)
        dovecot_server.append(
            rep,
            "INBOX",
            reply_to(
                sent_to(smtp, "cid@other.example"),
                "Please remove me from your list.",
                sender="Cid <cid@other.example>",
            ),
        )
        report = inbox.poll(ws, clock.now())
    assert report.unsubscribes == 1 and states(ws)["cid@other.example"] == "unsubscribed"
    with ws.store.session() as session:
        assert session.exec(select(Suppression.value)).all() == ["cid@other.example"]


def test_a_reply_applied_between_claim_and_smtp_stops_the_send(
    ws: Workspace, smtp: RecordingSMTP, dovecot_server: Dovecot, rep: str
) -> None:
    """The race the playbook cares about: the nudge is claimed, the reply is read, then SMTP."""
    with freeze_time(MONDAY_10, real_asyncio=True) as frozen:
        send_once(ws)
        dovecot_server.append(
            rep,
            "INBOX",
            reply_to(
                sent_to(smtp, "cid@other.example"),
                "Yes, call me on Thursday.",
                sender="Cid <cid@other.example>",
            ),
        )
        frozen.tick(timedelta(days=8))
        polled: list[int] = []

        class ReplyLandsNow(Dispatcher):
            def take(self, claim):  # type: ignore[no-untyped-def]
                if claim.rcpt == "cid@other.example":  # Cid's nudge is claimed: now the reply
                    polled.append(inbox.poll(self.ws, clock.now()).seen)
                return super().take(claim)

        before = len(smtp.received)
        report = asyncio.run(ReplyLandsNow(ws, SmtpTransport).run_once())
    assert polled == [1] and report.cancelled == 1
    assert all(
        r.message["To"].addresses[0].addr_spec != "cid@other.example"
        for r in smtp.received[before:]
    )


def test_resume_lets_a_paused_colleague_go_on(
    ws: Workspace, smtp: RecordingSMTP, dovecot_server: Dovecot, rep: str
) -> None:
    with freeze_time(MONDAY_10, real_asyncio=True):
        send_once(ws)
        dovecot_server.append(
            rep, "INBOX", reply_to(sent_to(smtp, "ann@acme.example"), "Thanks, we are covered.")
        )
        inbox.poll(ws, clock.now())
        assert states(ws)["bob@acme.example"] == "paused"
        assert inbox.resume(ws, "bob@acme.example", clock.now()) == ["cold"]
    assert states(ws)["bob@acme.example"] == "active"


def test_export_replied_gives_the_crm_the_reply_and_what_preceded_it(
    ws: Workspace, smtp: RecordingSMTP, dovecot_server: Dovecot, rep: str
) -> None:
    from outreach.reports import replied
    from outreach.sequencing import stop

    with freeze_time(MONDAY_10, real_asyncio=True):
        send_once(ws)
        dovecot_server.append(
            rep, "INBOX", reply_to(sent_to(smtp, "ann@acme.example"), "Interested, call me.")
        )
        inbox.poll(ws, clock.now())
        stop(ws.store, "cid@other.example", "meeting", clock.now())
    rows = replied(ws)
    assert [(r["email"], r["reason"]) for r in rows] == [
        ("ann@acme.example", "reply"),
        ("cid@other.example", "meeting"),
    ]
    assert rows[0]["sentiment"] == "positive" and rows[0]["step"] == "intro"
    assert rows[0]["subject_variant"] and rows[0]["reply_text"].startswith("Interested")


def test_mail_that_is_not_ours_is_never_classified(
    ws: Workspace,
    smtp: RecordingSMTP,
    dovecot_server: Dovecot,
    rep: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A first poll of a big mailbox reads the rep's other mail too: matching comes first."""
    with freeze_time(MONDAY_10, real_asyncio=True):
        send_once(ws)
        newsletter = reply_to(
            sent_to(smtp, "ann@acme.example"),
            "Our weekly numbers are attached.",
            sender="Colleague <pat@partner.example>",
        )
        newsletter = newsletter.replace(b"In-Reply-To:", b"X-Was-In-Reply-To:")
        newsletter = newsletter.replace(b"References:", b"X-Was-References:")
        dovecot_server.append(rep, "INBOX", newsletter)
        classified: list[object] = []
        monkeypatch.setattr(inbox, "classify", lambda message, **_: classified.append(message))
        report = inbox.poll(ws, clock.now())
    assert (report.seen, report.ignored, classified) == (1, 1, [])


def test_hard_bounces_read_from_dsns_pause_the_mailbox(
    ws: Workspace, workspace_dir: Path, smtp: RecordingSMTP, dovecot_server: Dovecot, rep: str
) -> None:
    """A DSN read over IMAP counts against the sending mailbox's bounce rate like a 5.1.1 at
    SMTP time: 1 of 3 sends is far above 3 %, with bounce_pause_min_sends = 3."""
    from outreach.operations import mailbox_report
    from tests.conftest import edit_config

    edit_config(workspace_dir / "outreach.toml", bounce_pause_min_sends=3)
    ws = Workspace.load(workspace_dir / "outreach.toml")
    with freeze_time(MONDAY_10, real_asyncio=True):
        assert len(send_once(ws).sent) == 3
        original = sent_to(smtp, "cid@other.example")
        dsn = POSTFIX_DSN.format(message_id=original["Message-ID"], to=SANNA).encode()
        dovecot_server.append(rep, "INBOX", dsn.replace(b"\n", b"\r\n"))
        report = inbox.poll(ws, clock.now())
        [box] = mailbox_report(ws, clock.now())
    assert report.bounces == 1
    reason = "bounce rate: 1 hard bounce in the last 3 sends, 33.3 % (above 3 %)"
    assert box["paused"].startswith(reason)
    assert any(reason in note for note in report.notes)
    ws.close()
