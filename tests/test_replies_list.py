"""`outreach replies list`: who replied and what they said, through the CLI, on replies read
from a real Dovecot after real sends to an aiosmtpd server; times in local time with the zone."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from pathlib import Path
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

import pytest
from freezegun import freeze_time

from tests.conftest import Cli, point_at_servers
from tests.smtp_servers import RecordingSMTP

if TYPE_CHECKING:
    from dovecot import Dovecot
    from freezegun.api import FrozenDateTimeFactory

pytest_plugins = ["dovecot"]
pytestmark = pytest.mark.timeout(60)

HELSINKI = ZoneInfo("Europe/Helsinki")
SANNA = "sanna.lehto@northwind.example"
PROSPECTS = (
    "email,first_name,last_name,company,language\n"
    "ann@acme.example,Ann,Smith,Acme,en\n"
    "bob@beta.example,Bob,Berg,Beta,en\n"
    "cid@gamma.example,Cid,Cole,Gamma,en\n"
)


@dataclass
class Inbox:
    run: Cli
    smtp: RecordingSMTP
    dovecot: Dovecot
    user: str
    clock: FrozenDateTimeFactory

    def reply(self, sender: str, text: str, at: datetime) -> None:
        """The prospect answers our intro (In-Reply-To its Message-ID); we poll at ``at``."""
        self.clock.move_to(at)
        intro = next(
            r.message
            for r in self.smtp.received
            if r.message["To"].addresses[0].addr_spec == sender
        )
        reply = EmailMessage()
        reply["From"] = sender
        reply["To"] = SANNA
        reply["Subject"] = "Re: " + str(intro["Subject"])
        reply["Date"] = format_datetime(at)
        reply["Message-ID"] = make_msgid(domain=sender.partition("@")[2])
        reply["In-Reply-To"] = str(intro["Message-ID"])
        reply["References"] = str(intro["Message-ID"])
        reply.set_content(
            f"{text}\n\nOn Monday, Sanna Lehto wrote:\n> {intro.get_content()[:40]}\n"
        )
        self.dovecot.append(self.user, "INBOX", reply.as_bytes())
        assert self.run.json("replies", "--once")["replies"]


@pytest.fixture
def inbox(
    workspace_dir: Path, run: Cli, dovecot_server: Dovecot, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Inbox]:
    user = dovecot_server.new_user()
    monkeypatch.setenv("OUTREACH_TEST_IMAP", dovecot_server.password)
    config = workspace_dir / "outreach.toml"
    monday = datetime(2027, 1, 4, 10, 0, tzinfo=HELSINKI)
    with RecordingSMTP() as smtp, freeze_time(monday, real_asyncio=True) as frozen:
        point_at_servers(config, smtp.port, dovecot_server.host, dovecot_server.port, user)
        (workspace_dir / "list.csv").write_text(PROSPECTS)
        assert (
            run.json("enroll", str(workspace_dir / "list.csv"), "--sequence", "cold")["enrolled"]
            == 3
        )
        assert run("send", "--once").exit_code == 0
        assert len(smtp.received) == 3
        yield Inbox(run, smtp, dovecot_server, user, frozen)


def test_replies_list_newest_first_with_local_time_company_step_and_text(inbox: Inbox) -> None:
    inbox.reply(
        "ann@acme.example",
        "Sounds good, let's talk on Thursday.",
        datetime(2027, 1, 4, 14, 5, tzinfo=HELSINKI),
    )
    inbox.reply(
        "bob@beta.example", "Not interested, thanks.", datetime(2027, 1, 5, 9, 30, tzinfo=HELSINKI)
    )
    result = inbox.run("replies", "list")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    # Bob's came later: it is listed first, in Helsinki time with the zone, not UTC.
    assert lines[0].startswith("2027-01-05 09:30 EET  negative  bob@beta.example Bob Berg (Beta)")
    assert f"to {SANNA}  cold/intro" in lines[0]
    assert lines[1] == "    | Not interested, thanks."
    ann = lines.index(next(line for line in lines if "ann@acme.example" in line))
    assert lines[ann].startswith(
        "2027-01-04 14:05 EET  positive  ann@acme.example Ann Smith (Acme)"
    )
    assert lines[ann + 1] == "    | Sounds good, let's talk on Thursday."
    assert "wrote:" not in result.stdout  # the quoted history is not the reply's text
    assert lines[-1].startswith("2 repl(ies)")

    doc = inbox.run.json("replies", "list")
    assert [r["email"] for r in doc] == ["bob@beta.example", "ann@acme.example"]
    assert doc[0]["at"] == "2027-01-05T07:30:00+00:00"  # JSON keeps ISO 8601 UTC
    assert (
        doc[0]["company"] == "Beta" and doc[0]["sequence"] == "cold" and doc[0]["step"] == "intro"
    )


def test_replies_list_filters_since_sender_and_sentiment_with_marks_winning(inbox: Inbox) -> None:
    inbox.reply(
        "ann@acme.example", "Sounds good, let's talk.", datetime(2027, 1, 4, 14, 5, tzinfo=HELSINKI)
    )
    inbox.reply("bob@beta.example", "Not interested.", datetime(2027, 1, 5, 9, 30, tzinfo=HELSINKI))
    # "today" is Tuesday in Helsinki: Ann's Monday reply is left out.
    assert [r["email"] for r in inbox.run.json("replies", "list", "--since", "today")] == [
        "bob@beta.example"
    ]
    assert len(inbox.run.json("replies", "list", "--since", "2027-01-04")) == 2
    assert inbox.run.json("replies", "list", "--since", "2027-01-06") == []
    positive = inbox.run.json("replies", "list", "--sentiment", "positive")
    assert [r["email"] for r in positive] == ["ann@acme.example"]
    # A rep's correction wins over what the rules said.
    assert inbox.run("prospect", "bob@beta.example", "--mark", "neutral").exit_code == 0
    neutral = inbox.run.json("replies", "list", "--sentiment", "neutral", "--sentiment", "positive")
    assert {r["email"]: r["sentiment"] for r in neutral} == {
        "bob@beta.example": "neutral",
        "ann@acme.example": "positive",
    }
    assert len(inbox.run.json("replies", "list", "--sender", SANNA.upper())) == 2


def test_replies_list_bad_input_is_one_line_and_exit_1(inbox: Inbox) -> None:
    result = inbox.run("replies", "list", "--since", "last tuesday")
    assert result.exit_code == 1
    assert (
        result.stderr.strip()
        == "--since: 'last tuesday' is not a day (today, yesterday or YYYY-MM-DD)"
    )
    result = inbox.run("replies", "list", "--sender", "nobody@northwind.example")
    assert result.exit_code == 1 and len(result.stderr.strip().splitlines()) == 1
    assert "nobody@northwind.example" in result.stderr


def test_prospect_text_view_shows_the_reply_text_in_local_time(inbox: Inbox) -> None:
    inbox.reply(
        "ann@acme.example",
        "Sounds good, let's talk on Thursday.",
        datetime(2027, 1, 4, 14, 5, tzinfo=HELSINKI),
    )
    result = inbox.run("prospect", "ann@acme.example")
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "2027-01-04 14:05 EET  reply  positive" in out
    assert "    | Sounds good, let's talk on Thursday." in out
    assert "2027-01-04 10:00 EET  cold/intro  sent" in out  # the message, local too
    assert "+00:00" not in out and ".000" not in out  # no UTC microseconds for people
