"""outreach.mail.imap against a real Dovecot: login, Sent folder, append, search, fetch, threads.

Every test logs in as a user of its own (an empty maildir) on the session's Dovecot, and reads
flags back through a separate plain IMAP connection, as another mail client would.
"""

from __future__ import annotations

import re
import socket
import ssl
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from email.message import EmailMessage
from email.policy import SMTP
from typing import TYPE_CHECKING

import pytest

from outreach.config import Mailbox
from outreach.mail.imap import ImapError, MailboxImap

if TYPE_CHECKING:
    from dovecot import Dovecot

# The server comes as a fixture only: importing dovecot here as well would import it before
# pytest registers it, and pytest could no longer rewrite its asserts.
pytest_plugins = ["dovecot"]
pytestmark = pytest.mark.timeout(30)

Connect = Callable[..., MailboxImap]


def message(
    message_id: str,
    subject: str = "Quick question about Northwind",
    *,
    in_reply_to: str | None = None,
) -> bytes:
    """A plain message as a mail client would store it (CRLF line ends)."""
    msg = EmailMessage()
    msg["From"] = "Sanna Lehto <sanna.lehto@northwind.example>"
    msg["To"] = "Matti Virtanen <matti@prospect.example>"
    msg["Subject"] = subject
    msg["Date"] = "Mon, 04 Jan 2027 09:00:00 +0200"
    msg["Message-ID"] = message_id
    if in_reply_to:
        msg["In-Reply-To"] = in_reply_to
        msg["References"] = in_reply_to
    msg.set_content("Hi Matti,\n\nwould a short call next week work?\n\nSanna\n")
    return msg.as_bytes(policy=SMTP)


@pytest.fixture
def user(dovecot_server: Dovecot) -> str:
    return dovecot_server.new_user()


@pytest.fixture
def connect(dovecot_server: Dovecot, user: str) -> Connect:
    """``connect()`` is a MailboxImap for this test's user over plaintext loopback."""

    def make(**overrides: object) -> MailboxImap:
        args: dict[str, object] = {
            "host": dovecot_server.host,
            "port": dovecot_server.port,
            "security": "none",
            "username": user,
            "password": dovecot_server.password,
            "timeout": 5,
        }
        args.update(overrides)
        return MailboxImap(**args)  # type: ignore[arg-type]

    return make


def seen(dovecot_server: Dovecot, user: str, folder: str) -> dict[int, bool]:
    return {uid: "\\Seen" in f for uid, f in dovecot_server.flags(user, folder).items()}


# Logging in


def test_login_with_the_right_password(connect: Connect) -> None:
    with connect() as imap:
        assert imap.fetch_new("INBOX", None, 0)[1] == []


def test_wrong_password_is_one_line_without_the_password(connect: Connect) -> None:
    wrong = "hunter2-not-the-password"
    with pytest.raises(ImapError) as caught:
        with connect(password=wrong):
            pass
    text = str(caught.value)
    assert wrong not in text
    assert "login" in text and "failed" in text
    assert "\n" not in text


@pytest.mark.parametrize("security", ["starttls", "tls"])
def test_encrypted_login_to_loopback(
    dovecot_server: Dovecot, connect: Connect, security: str
) -> None:
    port = dovecot_server.tls_port if security == "tls" else dovecot_server.port
    # Loopback: the self-signed certificate is accepted without a CA.
    with connect(security=security, port=port) as imap:
        assert imap.fetch_new("INBOX", None, 0)[1] == []


def test_certificate_is_verified_when_the_context_asks(
    dovecot_server: Dovecot, connect: Connect
) -> None:
    trusting = ssl.create_default_context(cafile=str(dovecot_server.cert_path))
    with connect(
        host="localhost", security="tls", port=dovecot_server.tls_port, ssl_context=trusting
    ):
        pass
    untrusting = ssl.create_default_context()  # the system CAs never signed this one
    with pytest.raises(ImapError, match="certificate not trusted"):
        with connect(
            host="localhost", security="starttls", port=dovecot_server.port, ssl_context=untrusting
        ):
            pass


def test_remote_hosts_get_verified_tls_and_never_plaintext() -> None:
    imap = MailboxImap("imap.northwind.example", 993, "tls", "sanna", "pw")
    assert imap.ssl_context.verify_mode == ssl.CERT_REQUIRED
    assert imap.ssl_context.check_hostname
    with pytest.raises(ImapError, match="only allowed to a loopback host"):
        MailboxImap("imap.northwind.example", 143, "none", "sanna", "pw")


def test_unreachable_server_is_one_line() -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(ImapError, match=f"127.0.0.1:{port}"):
        with MailboxImap("127.0.0.1", port, "none", "sanna", "pw", timeout=2):
            pass


def test_commands_need_a_connection(connect: Connect) -> None:
    with pytest.raises(ImapError, match="not connected"):
        connect().sent_folder()


def test_for_mailbox_takes_defaults_from_the_config(
    dovecot_server: Dovecot, user: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SANNA_MAIL_PASSWORD", dovecot_server.password)
    tls = Mailbox(
        name="Sanna Lehto",
        email="sanna.lehto@northwind.example",
        imap_host="imap.northwind.example",
        password_env="SANNA_MAIL_PASSWORD",
    )
    imap = MailboxImap.for_mailbox(tls)
    assert (imap.port, imap.security, imap.username) == (993, "tls", tls.email)
    starttls = tls.model_copy(update={"imap_security": "starttls"})
    assert MailboxImap.for_mailbox(starttls).port == 143

    local = Mailbox(
        name="Sanna Lehto",
        email=user,
        imap_host="127.0.0.1",
        imap_port=dovecot_server.port,
        imap_security="none",
        password_env="SANNA_MAIL_PASSWORD",
    )
    with MailboxImap.for_mailbox(local) as imap:
        assert imap.fetch_new("INBOX", None, 0)[1] == []

    monkeypatch.delenv("SANNA_MAIL_PASSWORD")
    with pytest.raises(ImapError, match="SANNA_MAIL_PASSWORD"):
        MailboxImap.for_mailbox(local)
    with pytest.raises(ImapError, match="no imap_host"):
        MailboxImap.for_mailbox(local.model_copy(update={"imap_host": None}))


# The Sent folder


def test_sent_folder_is_the_special_use_one(
    dovecot_server: Dovecot, user: str, connect: Connect
) -> None:
    dovecot_server.create_folder(user, "Sent")  # a decoy by name
    dovecot_server.create_folder(
        user, dovecot_server.sent_special_use
    )  # Dovecot flags this one \Sent
    with connect() as imap:
        assert imap.sent_folder() == dovecot_server.sent_special_use


@pytest.mark.parametrize("name", ["Sent Items", "Lähetetyt"])
def test_sent_folder_by_name_without_special_use(
    dovecot_server: Dovecot, user: str, connect: Connect, name: str
) -> None:
    dovecot_server.create_folder(user, "Archive")
    dovecot_server.create_folder(user, name)
    with connect() as imap:
        assert imap.sent_folder() == name


def test_no_sent_folder_is_an_error(connect: Connect) -> None:
    with connect() as imap, pytest.raises(ImapError, match="no Sent folder"):
        imap.sent_folder()


# Append and search


def test_appended_message_is_found_by_message_id(
    dovecot_server: Dovecot, user: str, connect: Connect
) -> None:
    dovecot_server.create_folder(user, "Sent")
    # In the past: Dovecot ignores an internal date more than a few hours ahead of its clock.
    when = datetime(2025, 1, 4, 9, 0, tzinfo=timezone(timedelta(hours=2)))
    with connect() as imap:
        folder = imap.sent_folder()
        imap.append(folder, message("<intro-1@northwind.example>"), when)
        assert imap.has_message_id(folder, "<intro-1@northwind.example>")
        assert imap.has_message_id(folder, "intro-1@northwind.example")  # brackets optional
        assert not imap.has_message_id(folder, "<intro-2@northwind.example>")
        assert not imap.has_message_id(folder, "<intro-1@northwind")  # not a prefix match

    assert dovecot_server.messages(user, "Sent") == [message("<intro-1@northwind.example>")]
    assert seen(dovecot_server, user, "Sent") == {1: True}
    client = dovecot_server.connect(user)
    try:
        client.select("Sent", readonly=True)
        _, data = client.uid("FETCH", "1", "(INTERNALDATE)")
    finally:
        client.logout()
    stamp = re.search(rb'INTERNALDATE "([^"]+)"', data[0])
    assert stamp is not None
    assert datetime.strptime(stamp.group(1).decode(), "%d-%b-%Y %H:%M:%S %z") == when


def test_search_leaves_other_messages_unread(
    dovecot_server: Dovecot, user: str, connect: Connect
) -> None:
    dovecot_server.append(user, "INBOX", message("<reply-1@prospect.example>"))
    dovecot_server.append(user, "INBOX", message("<reply-2@prospect.example>"), flags=["\\Seen"])
    with connect() as imap:
        assert imap.has_message_id("INBOX", "<reply-1@prospect.example>")
        assert not imap.has_message_id("INBOX", "<reply-3@prospect.example>")
    assert seen(dovecot_server, user, "INBOX") == {1: False, 2: True}


@pytest.mark.parametrize("bad", ["<a@b>\r\nA1 LOGOUT", "", "<>", "<a@b> <c@d>"])
def test_what_is_not_one_message_id_is_refused(connect: Connect, bad: str) -> None:
    with connect() as imap, pytest.raises(ImapError, match="not a Message-ID"):
        imap.has_message_id("INBOX", bad)


# Fetching new mail


def test_fetch_new_is_incremental_by_uid_and_marks_nothing_read(
    dovecot_server: Dovecot, user: str, connect: Connect
) -> None:
    first = [message(f"<reply-{n}@prospect.example>") for n in (1, 2)]
    for raw in first:
        dovecot_server.append(user, "INBOX", raw)
    with connect() as imap:
        validity, fetched = imap.fetch_new("INBOX", None, 0)
        assert fetched == [(1, first[0]), (2, first[1])]

        third = message("<reply-3@prospect.example>")
        dovecot_server.append(user, "INBOX", third)
        again, fetched = imap.fetch_new("INBOX", validity, 2)
        assert (again, fetched) == (validity, [(3, third)])
        # Nothing above the last UID: "3:*" would still match UID 3 on the server.
        assert imap.fetch_new("INBOX", validity, 3) == (validity, [])
    assert seen(dovecot_server, user, "INBOX") == {1: False, 2: False, 3: False}


def test_changed_uidvalidity_returns_everything(
    dovecot_server: Dovecot, user: str, connect: Connect
) -> None:
    dovecot_server.append(user, "Replies", message("<old@prospect.example>"))
    with connect() as imap:
        validity, _ = imap.fetch_new("Replies", None, 0)
    dovecot_server.delete_folder(user, "Replies")
    fresh = [message(f"<new-{n}@prospect.example>") for n in (1, 2)]
    for raw in fresh:
        dovecot_server.append(user, "Replies", raw)
    with connect() as imap:
        new_validity, fetched = imap.fetch_new("Replies", validity, 1)
    assert new_validity != validity
    assert [raw for _, raw in fetched] == fresh


# Threads, as mail clients see them


def test_reply_threads_with_its_original(
    dovecot_server: Dovecot, user: str, connect: Connect
) -> None:
    original = "<intro-1@northwind.example>"
    dovecot_server.append(user, "INBOX", message(original))
    dovecot_server.append(user, "INBOX", message("<other@northwind.example>", "Another topic"))
    dovecot_server.append(
        user,
        "INBOX",
        message("<reply-1@prospect.example>", "Re: Quick question", in_reply_to=original),
    )
    with connect() as imap:
        threads = imap.thread_references("INBOX")
    assert sorted(sorted(thread) for thread in threads) == [[1, 3], [2]]
