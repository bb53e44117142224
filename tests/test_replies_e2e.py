"""Replies end to end, through the CLI: real sends to an aiosmtpd sink, mail exactly as real
clients write it APPENDed to a real Dovecot, `outreach replies --once`, then time moves on and
`outreach send --once` shows what is (and is not) sent next.

Each client message is a file in tests/mail/ as its client wrote it; only the addresses and the
Message-IDs it was captured with are swapped for the ones this test really used (the sink's
Message-IDs), every other byte kept.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from email.message import EmailMessage
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple
from zoneinfo import ZoneInfo

import pytest
from freezegun import freeze_time

from tests.conftest import Cli, edit_config, point_at_servers
from tests.smtp_servers import RecordingSMTP

if TYPE_CHECKING:
    from dovecot import Dovecot
    from freezegun.api import FrozenDateTimeFactory

pytest_plugins = ["dovecot"]
pytestmark = pytest.mark.timeout(60)

MAIL = Path(__file__).parent / "mail"
HELSINKI = ZoneInfo("Europe/Helsinki")
SANNA = "sanna.lehto@northwind.example"  # the workspace's mailbox
CAPTURED_SANNA = "sanna@northwind.example"  # how the fixtures spell our mailbox
ANN, BOB, CID = "ann@acme.example", "bob@acme.example", "cid@other.example"  # Ann and Bob: Acme
PROSPECTS = (
    f"email,first_name,company,language\n{ANN},Ann,Acme,en\n{BOB},Bob,Acme,en\n{CID},Cid,Other,en\n"
)


def captured(n: str) -> str:
    """A Message-ID of ours as a fixture was captured with it: ``<cold-1.42@northwind.example>``."""
    return f"<cold-{n}@northwind.example>"


def local(day: date, hour: int = 10) -> datetime:
    """That day at that hour in Helsinki, the workspace's zone (window 08-17, Mon-Fri, FI)."""
    return datetime.combine(day, time(hour), HELSINKI)


MONDAY = local(date(2027, 1, 4))  # intros go out
TUESDAY = local(date(2027, 1, 5))  # the answer arrives
# The nudge waits 3-5 business days; Wednesday 6 January is Epiphany, so all are due by the 12th.
NUDGES_DUE = local(date(2027, 1, 14))
TASKS_DUE = local(date(2027, 2, 10))  # the LinkedIn step, 10-14 days after the nudge
# Attribution lines and quote marks of the clients in tests/mail/: none belongs in a reply's text.
QUOTE_MARKERS = ("wrote:", "kirjoitti:", "skrev", "From:", "Lähettäjä:", "\n>", "________")


def to(message: EmailMessage) -> str:
    return str(message["To"].addresses[0].addr_spec)


def client_message(name: str, swap: dict[str, str], drop: tuple[str, ...] = ()) -> bytes:
    """The fixture's bytes with each ``swap`` key (an address or Message-ID it was captured
    with) replaced everywhere by its value, and the ``drop`` headers removed."""
    raw = (MAIL / name).read_bytes()
    for old, new in swap.items():
        assert old.encode() in raw, f"{old} is not in {name}"
        raw = raw.replace(old.encode(), new.encode())
    head, sep, body = raw.partition(b"\n\n")
    for header in drop:  # the header line and its folded continuation lines
        pattern = rb"^" + header.encode() + rb":.*\n(?:[ \t].*\n)*"
        head, found = re.subn(pattern, b"", head + b"\n", flags=re.MULTILINE | re.IGNORECASE)
        head = head.removesuffix(b"\n")
        assert found == 1, f"{header} is not in {name}"
    return head + sep + body


@dataclass
class Mailroom:
    """A workspace whose intros went out on Monday, its sink, and its rep's Dovecot mailbox."""

    run: Cli
    config: Path
    smtp: RecordingSMTP
    dovecot: Dovecot
    user: str
    clock: FrozenDateTimeFactory

    def at(self, moment: datetime) -> None:
        self.clock.move_to(moment)

    def send(self) -> list[EmailMessage]:
        """`outreach send --once`; the messages the sink received from it."""
        before = len(self.smtp.received)
        result = self.run("send", "--once", "--json")
        assert result.exit_code == 0, result.output
        return [r.message for r in self.smtp.received[before:]]

    def sent_to(self, address: str) -> list[EmailMessage]:
        return [r.message for r in self.smtp.received if to(r.message) == address]

    def intro_id(self, address: str) -> str:
        return str(self.sent_to(address)[0]["Message-ID"])

    def deliver(self, raw: bytes, folder: str = "INBOX") -> None:
        self.dovecot.append(self.user, folder, raw)

    def poll(self) -> Any:
        return self.run.json("replies", "--once")

    def prospect(self, address: str) -> Any:
        return self.run.json("prospect", address)

    def state(self, address: str) -> str:
        [enrollment] = self.prospect(address)["enrollments"]
        return str(enrollment["state"])

    def events(self, address: str, kind: str) -> list[Any]:
        return [e for e in self.prospect(address)["events"] if e["kind"] == kind]

    def cold(self) -> Any:
        """`outreach status --json`: the cold sequence's enrollment totals."""
        status = self.run.json("status")
        return next(s for s in status["sequences"] if s["name"] == "cold")["enrollments"]

    def enroll_again(self, address: str, sequence: str) -> Any:
        """Enroll one address in another sequence; the JSON report."""
        path = self.config.parent / f"again-{sequence}.csv"
        path.write_text(f"email,first_name,company,language\n{address},X,Acme,en\n")
        return self.run.json("enroll", str(path), "--sequence", sequence)


@pytest.fixture
def room(
    workspace_dir: Path, run: Cli, dovecot_server: Dovecot, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Mailroom]:
    """Ann and Bob (Acme) and Cid (Other) enrolled in cold, and their intros sent on Monday."""
    user = dovecot_server.new_user()
    monkeypatch.setenv("OUTREACH_TEST_IMAP", dovecot_server.password)
    config = workspace_dir / "outreach.toml"
    with RecordingSMTP() as smtp, freeze_time(MONDAY, real_asyncio=True) as frozen:
        point_at_servers(config, smtp.port, dovecot_server.host, dovecot_server.port, user)
        (workspace_dir / "list.csv").write_text(PROSPECTS)
        enrolled = run.json("enroll", str(workspace_dir / "list.csv"), "--sequence", "cold")
        assert enrolled["enrolled"] == 3
        mailroom = Mailroom(run, config, smtp, dovecot_server, user, frozen)
        assert sorted(to(m) for m in mailroom.send()) == [ANN, BOB, CID]
        yield mailroom


class Reply(NamedTuple):
    fixture: str
    captured_from: str  # the prospect's address in the fixture
    captured_ids: tuple[str, ...]  # our Message-IDs in its In-Reply-To/References
    says: str  # in the new text
    quoted: str  # only in the quoted history
    sentiment: str
    drop: tuple[str, ...] = ()


REPLIES = [
    Reply(
        "gmail_en_reply.eml",
        "jane.smith@acme.example",
        (captured("2.40"), captured("1.40")),
        "let's talk on Thursday",
        "Just following up",
        "positive",
    ),
    Reply(
        "gmail_fi_reply.eml",
        "pekka.nieminen@gmail.com",
        (captured("1.49"),),
        "Sovitaan palaveri",
        "poista minut",  # the footer we quote: an unsubscribe request if it were new text
        "positive",
    ),
    Reply(
        "outlook_fi_reply.eml",
        "matti.virtanen@asiakas.fi",
        (captured("1.41"),),
        "ei tällä hetkellä kiinnosta",
        "Soita, jos haluat",
        "negative",
    ),
    Reply(
        "outlook_fi_html_only_reply.eml",
        "liisa.korhonen@asiakas.fi",
        (captured("1.47"),),
        "Soita ensi viikolla",
        "poista minut",
        "positive",
    ),
    Reply(
        "outlook_en_top_posted_reply.eml",
        "david.jones@contoso.example",
        (captured("1.52"),),
        "call me on Friday afternoon",
        "never hear from you",
        "positive",
    ),
    Reply(
        "apple_mail_sv_reply.eml",
        "anna.berg@nordic.example",
        (captured("1.48"),),
        "Ring mig på fredag",
        "avregistrera",
        "positive",
    ),
    # Without In-Reply-To and References: matched by the sender's address alone.
    Reply(
        "apple_mail_sv_reply.eml",
        "anna.berg@nordic.example",
        (),
        "Ring mig på fredag",
        "avregistrera",
        "positive",
        drop=("In-Reply-To", "References"),
    ),
    Reply(
        "apple_mail_en_reply_no_in_reply_to.eml",
        "emma.wilson@fabrikam.example",
        (),
        "pricing first",
        "never hear from you",
        "neutral",
    ),
]


@pytest.mark.parametrize(
    "reply",
    REPLIES,
    ids=[r.fixture.removesuffix(".eml") + ("-bare" if r.drop else "") for r in REPLIES],
)
def test_after_a_reply_nobody_at_that_company_is_mailed_until_a_rep_resumes(
    room: Mailroom, reply: Reply
) -> None:
    room.at(TUESDAY)
    ann_intro = room.intro_id(ANN)
    swap = {reply.captured_from: ANN, CAPTURED_SANNA: SANNA}
    swap |= {captured: ann_intro for captured in reply.captured_ids}
    room.deliver(client_message(reply.fixture, swap, reply.drop))

    report = room.poll()
    assert [r["from"] for r in report["replies"]] == [ANN]
    assert report["paused_colleagues"] == 1
    ann = room.prospect(ANN)
    assert [e["state"] for e in ann["enrollments"]] == ["replied"]
    [event] = [e for e in ann["events"] if e["kind"] == "reply"]
    assert event["reason"] == reply.sentiment
    text = event["data"]["text"]
    assert reply.says in text and reply.quoted not in text
    assert [marker for marker in QUOTE_MARKERS if marker in text] == []
    assert room.cold() == {
        "active": 1, "paused": 1, "replied": 1, "bounced": 0, "unsubscribed": 0, "stopped": 0,
        "finished": 0,
    }  # fmt: skip

    room.at(NUDGES_DUE)
    assert [to(m) for m in room.send()] == [CID]  # not Ann, not her colleague Bob

    # A rep decides Bob may go on: his nudge leaves at once, in his own thread.
    assert room.run("resume", BOB).output.strip() == "resumed cold"
    [nudge] = room.send()
    assert to(nudge) == BOB and nudge["In-Reply-To"] == room.intro_id(BOB)

    room.at(TASKS_DUE)
    room.send()
    assert len(room.sent_to(ANN)) == 1  # the intro, and never anything after it
    assert ANN not in {task["prospect"] for task in room.run.json("tasks")}


class OutOfOffice(NamedTuple):
    fixture: str
    captured_from: str
    captured_id: str
    returns_on: date


OUT_OF_OFFICE = [
    OutOfOffice(
        "outlook_fi_out_of_office.eml",
        "matti.virtanen@asiakas.fi",
        captured("1.50"),
        date(2027, 1, 25),  # "palaan toimistolle 25.1.2027"
    ),
    OutOfOffice(
        "outlook_en_out_of_office.eml",
        "tom.baker@contoso.example",
        captured("1.53"),
        date(2027, 2, 1),  # "out of the office until Monday 1 February 2027"
    ),
]


@pytest.mark.parametrize("away", OUT_OF_OFFICE, ids=[a.fixture for a in OUT_OF_OFFICE])
def test_out_of_office_sends_the_next_step_only_after_the_return_date(
    room: Mailroom, away: OutOfOffice
) -> None:
    room.at(TUESDAY)
    swap = {away.captured_from: ANN, CAPTURED_SANNA: SANNA, away.captured_id: room.intro_id(ANN)}
    room.deliver(client_message(away.fixture, swap))

    report = room.poll()
    assert (report["auto_replies"], report["replies"], report["paused_colleagues"]) == (1, [], 0)
    [enrollment] = room.prospect(ANN)["enrollments"]
    assert enrollment["state"] == "active" and enrollment["next_step"] == "nudge"
    assert (
        datetime.fromisoformat(enrollment["due_at"]).astimezone(HELSINKI).date() > away.returns_on
    )

    room.at(NUDGES_DUE)
    assert sorted(to(m) for m in room.send()) == [BOB, CID]  # the others' nudges, as planned
    room.at(local(away.returns_on, 16))  # the return day itself: still not
    assert ANN not in [to(m) for m in room.send()]
    room.at(local(away.returns_on + timedelta(days=1)))
    nudges = [m for m in room.send() if to(m) == ANN]
    assert [m["In-Reply-To"] for m in nudges] == [room.intro_id(ANN)]


class Bounce(NamedTuple):
    fixture: str
    captured_rcpt: str  # the address that failed, in the fixture
    captured_id: str  # our Message-ID, as the report quotes it


HARD_BOUNCES = [
    Bounce("postfix_user_unknown.eml", "pekka.nieminen@asiakas.fi", captured("1.42")),
    Bounce("gmail_address_not_found.eml", "noone@asiakas.fi", captured("1.43")),
    Bounce("exchange_online_ndr.eml", "ville.makinen@asiakas.fi", captured("1.45")),
    Bounce("exchange_2003_ndr.eml", "olli.ojala@asiakas.fi", captured("1.46")),
]
SOFT_BOUNCES = [
    Bounce("postfix_mailbox_full_delayed.eml", "liisa.korhonen@asiakas.fi", captured("1.44")),
    Bounce("gmail_delivery_delayed.eml", "heikki.laine@asiakas.fi", captured("1.54")),
]


def bounce_for(room: Mailroom, bounce: Bounce, address: str) -> bytes:
    swap = {
        bounce.captured_rcpt: address,
        CAPTURED_SANNA: SANNA,
        bounce.captured_id: room.intro_id(address),
    }
    return client_message(bounce.fixture, swap)


@pytest.mark.parametrize("bounce", HARD_BOUNCES, ids=[b.fixture for b in HARD_BOUNCES])
def test_after_a_hard_bounce_the_address_is_never_mailed_again(
    room: Mailroom, bounce: Bounce
) -> None:
    room.at(TUESDAY)
    room.deliver(bounce_for(room, bounce, ANN))

    assert room.poll()["bounces"] == 1
    view = room.prospect(ANN)
    assert view["prospect"]["status"] == "invalid"
    assert [e["state"] for e in view["enrollments"]] == ["bounced"]
    assert room.cold()["bounced"] == 1

    room.at(NUDGES_DUE)
    assert sorted(to(m) for m in room.send()) == [BOB, CID]  # a bounce pauses nobody
    again = room.enroll_again(ANN, "reminder")
    assert again["enrolled"] == 0
    assert [s["reason"] for s in again["skipped"]] == ["address is invalid (bounced)"]
    room.at(TASKS_DUE)
    room.send()
    assert len(room.sent_to(ANN)) == 1


@pytest.mark.parametrize("bounce", SOFT_BOUNCES, ids=[b.fixture for b in SOFT_BOUNCES])
def test_after_a_soft_bounce_the_sequence_goes_on(room: Mailroom, bounce: Bounce) -> None:
    room.at(TUESDAY)
    room.deliver(bounce_for(room, bounce, ANN))

    assert room.poll()["bounces"] == 1
    assert [e["reason"] for e in room.events(ANN, "bounce")] == ["soft"]
    view = room.prospect(ANN)
    assert view["prospect"]["status"] == "active"
    assert [e["state"] for e in view["enrollments"]] == ["active"]

    room.at(NUDGES_DUE)
    assert sorted(to(m) for m in room.send()) == [ANN, BOB, CID]


def test_an_unsubscribe_mail_suppresses_the_address_in_every_sequence(room: Mailroom) -> None:
    # What Gmail sends when the prospect clicks "Unsubscribe" on our List-Unsubscribe mailto.
    assert "<mailto:unsubscribe@northwind.example" in room.sent_to(ANN)[0]["List-Unsubscribe"]
    room.at(TUESDAY)
    room.deliver(client_message("gmail_list_unsubscribe.eml", {"jane.smith@acme.example": ANN}))

    report = room.poll()
    assert (report["unsubscribes"], report["replies"]) == (1, [])
    assert room.state(ANN) == "unsubscribed"
    assert [s["value"] for s in room.run.json("suppressions")] == [ANN]
    assert room.cold()["unsubscribed"] == 1

    room.at(NUDGES_DUE)
    assert sorted(to(m) for m in room.send()) == [BOB, CID]
    again = room.enroll_again(ANN, "network")
    assert again["enrolled"] == 0 and [s["reason"] for s in again["skipped"]] == ["suppressed"]
    room.at(TASKS_DUE)
    room.send()
    assert len(room.sent_to(ANN)) == 1


def _shout_sender(raw: bytes) -> bytes:
    """Our From as another client may write it back: other display name, address in capitals."""
    return raw.replace(
        f"From: Sanna Lehto <{SANNA}>".encode(), f'From: "Lehto, Sanna" <{SANNA.upper()}>'.encode()
    )


@pytest.mark.parametrize("rewrite", [None, _shout_sender], ids=["as-sent", "capitalised"])
def test_our_own_follow_up_in_the_inbox_is_not_a_reply(room: Mailroom, rewrite: Any) -> None:
    """A copy of our nudge (From us, In-Reply-To our intro) lands in INBOX, as Gmail's All Mail
    or a Bcc to self puts it there: the sequence goes on."""
    room.at(NUDGES_DUE)
    room.send()
    [nudge] = [r for r in room.smtp.received if to(r.message) == ANN][1:]
    assert nudge.message["In-Reply-To"] == room.intro_id(ANN)
    copy = rewrite(nudge.data) if rewrite else nudge.data
    assert copy != nudge.data or rewrite is None
    room.deliver(copy)

    report = room.poll()
    assert (report["seen"], report["replies"], report["ignored"]) == (1, [], 1)
    assert room.state(ANN) == "active" and room.state(BOB) == "active"
    room.at(TASKS_DUE)
    room.send()
    assert ANN in {task["prospect"] for task in room.run.json("tasks")}  # the LinkedIn step


def test_a_uidvalidity_reset_applies_nothing_twice_and_the_new_mail_once(
    room: Mailroom,
) -> None:
    edit_config(room.config, folders=["Replies"])  # a server rule files answers here
    room.at(TUESDAY)
    old = [
        client_message(
            "gmail_en_reply.eml",
            {
                "jane.smith@acme.example": ANN,
                CAPTURED_SANNA: SANNA,
                captured("1.40"): room.intro_id(ANN),
                captured("2.40"): room.intro_id(ANN),
            },
        ),
        bounce_for(room, HARD_BOUNCES[0], CID),
        bounce_for(room, SOFT_BOUNCES[0], BOB),
    ]
    for raw in old:
        room.deliver(raw, "Replies")
    first = room.poll()
    assert (len(first["replies"]), first["bounces"]) == (1, 2)
    before = {address: room.prospect(address)["events"] for address in (ANN, BOB, CID)}

    # The folder is recreated (a server migration, a restore): new UIDVALIDITY, UIDs from 1.
    room.dovecot.delete_folder(room.user, "Replies")
    new = client_message(
        "outlook_en_top_posted_reply.eml",
        {
            "david.jones@contoso.example": BOB,
            CAPTURED_SANNA: SANNA,
            captured("1.52"): room.intro_id(BOB),
        },
    )
    for raw in [*old, new]:
        room.deliver(raw, "Replies")
    second = room.poll()

    assert any("UIDVALIDITY changed" in note for note in second["notes"])
    assert second["seen"] == 4 and [r["from"] for r in second["replies"]] == [BOB]
    assert second["bounces"] == 0
    assert room.prospect(ANN)["events"] == before[ANN]
    assert room.prospect(CID)["events"] == before[CID]
    added = room.prospect(BOB)["events"][len(before[BOB]) :]
    assert [e["kind"] for e in added] == ["reply"]
    assert room.prospect(BOB)["events"][: len(before[BOB])] == before[BOB]
