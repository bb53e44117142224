"""The local mail sink and the test SMTP servers, driven by real SMTP clients over loopback."""

from __future__ import annotations

import asyncio
import gc
import smtplib
import socket
import warnings
from email.message import EmailMessage
from email.utils import make_msgid
from pathlib import Path
from typing import TYPE_CHECKING

import aiosmtplib
import pytest

from outreach.errors import OutreachError
from outreach.mail.sink import PortInUse, Sink, summarize

if TYPE_CHECKING:
    from smtp_servers import MakeSMTPServer, RecordingSMTP

# The servers come as fixtures only: importing smtp_servers here as well would import it
# before pytest registers it, and pytest could no longer rewrite its asserts.
pytest_plugins = ["smtp_servers"]
pytestmark = pytest.mark.timeout(30)

CLIENT_TIMEOUT = 5  # seconds, for every client: a hung server fails the test fast


def cold_email(subject: str = "Quick question, Aino", **headers: str) -> EmailMessage:
    message = EmailMessage()
    message["From"] = "Sanna Lehto <sanna.lehto@northwind.example>"
    message["To"] = "Aino Korhonen <aino.korhonen@rakennus.example>"
    message["Subject"] = subject
    message["Message-ID"] = make_msgid(domain="northwind.example")
    for name, value in headers.items():
        message[name.replace("_", "-")] = value
    message.set_content("Hi Aino,\n\nA short question about your site diaries.\n\nSanna\n")
    return message


def send(message: EmailMessage, port: int, **options: object) -> None:
    """Send with aiosmtplib to 127.0.0.1:port (plain unless options say otherwise)."""
    options.setdefault("start_tls", False)
    asyncio.run(
        aiosmtplib.send(
            message,
            hostname="127.0.0.1",
            port=port,
            timeout=CLIENT_TIMEOUT,
            **options,  # type: ignore[arg-type]
        )
    )


def listening_socket() -> socket.socket:
    return socket.create_server(("127.0.0.1", 0))


# --- the sink ----------------------------------------------------------------------------------


def test_sink_keeps_a_sent_message_in_the_maildir(tmp_path: Path) -> None:
    maildir = tmp_path / "mail"
    first = cold_email()
    with Sink(maildir, port=0) as sink:
        send(first, sink.port)

    [summary] = summarize(maildir)
    stored = Path(summary["file"])
    assert stored.parent == maildir / "new"
    assert summary["subject"] == "Quick question, Aino"
    assert summary["from"] == "Sanna Lehto <sanna.lehto@northwind.example>"
    assert summary["to"] == "Aino Korhonen <aino.korhonen@rakennus.example>"
    assert summary["message_id"] == first["Message-ID"]
    assert summary["date"] == ""  # the client added none, and the sink adds nothing
    assert summary["in_reply_to"] == summary["references"] == ""


def test_sink_summary_decodes_headers_and_keeps_the_thread_oldest_first(tmp_path: Path) -> None:
    maildir = tmp_path / "mail"
    first = cold_email("Nopea kysymys, Äino – työmaapäiväkirjat")
    with Sink(maildir, port=0) as sink:
        send(first, sink.port)
        nudge = cold_email(
            "Re: Nopea kysymys, Äino – työmaapäiväkirjat",
            In_Reply_To=first["Message-ID"],
            References=first["Message-ID"],
        )
        send(nudge, sink.port)
        third = cold_email("Third", References=f"{first['Message-ID']} {nudge['Message-ID']}")
        send(third, sink.port)

    summaries = summarize(maildir)
    assert [s["subject"] for s in summaries] == [
        "Nopea kysymys, Äino – työmaapäiväkirjat",
        "Re: Nopea kysymys, Äino – työmaapäiväkirjat",
        "Third",
    ]
    assert summaries[1]["in_reply_to"] == first["Message-ID"]
    assert summaries[1]["references"] == first["Message-ID"]
    assert summaries[2]["references"] == f"{first['Message-ID']} {nudge['Message-ID']}"
    assert set(summaries[0]) == {
        "file",
        "date",
        "from",
        "to",
        "subject",
        "message_id",
        "in_reply_to",
        "references",
    }


def test_sink_stores_the_bytes_exactly_as_received(tmp_path: Path) -> None:
    raw = (
        b"From: sanna.lehto@northwind.example\r\n"
        b"To: aino.korhonen@rakennus.example\r\n"
        b"Subject: bytes\r\n"
        b"\r\n"
        b"From the start of a line, not mangled.\r\n"
        b".a line that starts with a dot\r\n"
        b"\xc3\xa4 8-bit UTF-8\r\n"
    )

    async def deliver(port: int) -> None:
        async with aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=CLIENT_TIMEOUT) as c:
            await c.sendmail(
                "sanna.lehto@northwind.example", ["aino.korhonen@rakennus.example"], raw
            )

    with Sink(tmp_path / "mail", port=0) as sink:
        asyncio.run(deliver(sink.port))

    [summary] = summarize(tmp_path / "mail")
    assert Path(summary["file"]).read_bytes() == raw


def test_sink_accepts_the_standard_library_client(tmp_path: Path) -> None:
    with Sink(tmp_path / "mail", port=0) as sink:
        with smtplib.SMTP("127.0.0.1", sink.port, timeout=CLIENT_TIMEOUT) as client:
            refused = client.send_message(cold_email("Sent with smtplib"))
    assert refused == {}
    assert [s["subject"] for s in summarize(tmp_path / "mail")] == ["Sent with smtplib"]


def test_sink_port_zero_picks_a_free_port_and_reports_it(tmp_path: Path) -> None:
    sink = Sink(tmp_path / "mail", port=0)
    assert sink.port == 0
    sink.start()
    try:
        assert sink.running and sink.port != 0
        with socket.create_connection(("127.0.0.1", sink.port), timeout=CLIENT_TIMEOUT) as s:
            assert s.recv(1024).startswith(b"220 ")
    finally:
        sink.stop()
    assert not sink.running
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", sink.port), timeout=CLIENT_TIMEOUT).close()


def test_sink_on_a_taken_port_says_so_at_once(tmp_path: Path) -> None:
    with listening_socket() as taken:
        port = taken.getsockname()[1]
        sink = Sink(tmp_path / "mail", port=port)
        with pytest.raises(OSError, match=rf"^port {port} is in use: ") as caught:
            sink.start()
    assert isinstance(caught.value, PortInUse)
    assert isinstance(caught.value, OutreachError)  # the CLI prints it as one line
    assert "choose another port" in str(caught.value)
    assert not sink.running


def test_sink_can_restart_on_the_same_port(tmp_path: Path) -> None:
    with Sink(tmp_path / "mail", port=0) as sink:
        port = sink.port
        send(cold_email("one"), port)
    with Sink(tmp_path / "mail", port=port):
        send(cold_email("two"), port)
    assert [s["subject"] for s in summarize(tmp_path / "mail")] == ["one", "two"]


def test_stopping_the_sink_closes_a_connection_left_open(tmp_path: Path) -> None:
    sink = Sink(tmp_path / "mail", port=0)
    sink.start()
    with socket.create_connection(("127.0.0.1", sink.port), timeout=CLIENT_TIMEOUT) as client:
        assert client.recv(1024).startswith(b"220 ")
        sink.stop()
        assert client.recv(1024) == b""  # closed by the server, not left to the GC


@pytest.mark.parametrize("host", ["0.0.0.0", "192.0.2.10", "::", "mail.example.com", ""])
def test_sink_refuses_a_host_that_is_not_loopback(tmp_path: Path, host: str) -> None:
    with pytest.raises(ValueError, match="not a loopback address"):
        Sink(tmp_path / "mail", host=host, port=0)


def test_sink_listens_on_localhost_and_ipv6_loopback(tmp_path: Path) -> None:
    with Sink(tmp_path / "mail", host="localhost", port=0) as sink:
        assert sink.host == "127.0.0.1"
        send(cold_email("via localhost"), sink.port)
    try:
        socket.create_server(("::1", 0), family=socket.AF_INET6).close()
    except OSError:
        pytest.skip("no IPv6 loopback on this machine")
    with Sink(tmp_path / "mail", host="::1", port=0) as sink:
        asyncio.run(
            aiosmtplib.send(
                cold_email("via ::1"),
                hostname="::1",
                port=sink.port,
                start_tls=False,
                timeout=CLIENT_TIMEOUT,
            )
        )
    assert [s["subject"] for s in summarize(tmp_path / "mail")] == ["via localhost", "via ::1"]


def test_summarize_a_maildir_no_sink_has_written_yet(tmp_path: Path) -> None:
    assert summarize(tmp_path / "nothing-here") == []


# --- the recording test server -----------------------------------------------------------------


def test_recording_server_keeps_envelope_and_data(smtp_server: RecordingSMTP) -> None:
    message = cold_email()
    send(
        message,
        smtp_server.port,
        sender="bounces@northwind.example",
        recipients=["aino.korhonen@rakennus.example", "crm-bcc@northwind.example"],
    )
    [received] = smtp_server.received
    assert received.mail_from == "bounces@northwind.example"
    assert received.rcpt_tos == ["aino.korhonen@rakennus.example", "crm-bcc@northwind.example"]
    assert received.login is None
    assert received.message["Message-ID"] == message["Message-ID"]
    assert received.message["Subject"] == "Quick question, Aino"
    assert b"site diaries" in received.data


def test_auth_with_starttls_accepts_the_right_password(
    smtp_server_auth_starttls: RecordingSMTP,
) -> None:
    server = smtp_server_auth_starttls
    assert server.cert_path is not None
    send(
        cold_email(),
        server.port,
        start_tls=True,
        cert_bundle=str(server.cert_path),  # verified: name and chain
        username=server.username,
        password=server.password,
    )
    send(
        cold_email("unverified"),
        server.port,
        start_tls=True,
        validate_certs=False,
        username=server.username,
        password=server.password,
    )
    assert [r.login for r in server.received] == [server.username, server.username]


def test_auth_with_starttls_refuses_a_wrong_password_with_535(
    smtp_server_auth_starttls: RecordingSMTP,
) -> None:
    with pytest.raises(aiosmtplib.SMTPAuthenticationError) as caught:
        send(
            cold_email(),
            smtp_server_auth_starttls.port,
            start_tls=True,
            validate_certs=False,
            username=smtp_server_auth_starttls.username,
            password="wrong",
        )
    assert caught.value.code == 535
    assert smtp_server_auth_starttls.received == []


def test_auth_plain_and_login_mechanisms_both_work(
    smtp_server_auth_starttls: RecordingSMTP,
) -> None:
    server = smtp_server_auth_starttls
    assert server.username is not None and server.password is not None

    async def login_with(mechanism: str, password: str) -> int:
        assert server.username is not None
        client = aiosmtplib.SMTP(
            hostname="127.0.0.1",
            port=server.port,
            start_tls=True,
            validate_certs=False,
            timeout=CLIENT_TIMEOUT,
        )
        async with client:
            await client.ehlo()  # login() does this itself; the auth_* methods do not
            auth = client.auth_plain if mechanism == "PLAIN" else client.auth_login
            try:
                return (await auth(server.username, password)).code
            except aiosmtplib.SMTPAuthenticationError as error:
                return error.code

    assert asyncio.run(login_with("PLAIN", server.password)) == 235
    assert asyncio.run(login_with("LOGIN", server.password)) == 235
    assert asyncio.run(login_with("PLAIN", "wrong")) == 535
    assert asyncio.run(login_with("LOGIN", "wrong")) == 535


def test_starttls_server_refuses_mail_in_the_clear(
    smtp_server_auth_starttls: RecordingSMTP,
) -> None:
    with pytest.raises(aiosmtplib.SMTPSenderRefused) as caught:
        send(cold_email(), smtp_server_auth_starttls.port, start_tls=False)
    assert caught.value.code == 530


def test_auth_server_refuses_mail_before_login(make_smtp_server: MakeSMTPServer) -> None:
    server = make_smtp_server(auth=("sanna", "secret"))
    with pytest.raises(aiosmtplib.SMTPSenderRefused) as caught:
        send(cold_email(), server.port)
    assert caught.value.code == 530
    # Without TLS, AUTH is allowed in the clear (loopback; smtp_security = "none").
    send(cold_email(), server.port, username="sanna", password="secret")
    assert [r.login for r in server.received] == ["sanna"]


def test_implicit_tls_with_auth(make_smtp_server: MakeSMTPServer) -> None:
    server = make_smtp_server(implicit_tls=True, auth=("sanna", "secret"))
    assert server.cert_path is not None
    send(
        cold_email("over SMTPS"),
        server.port,
        use_tls=True,
        start_tls=None,
        cert_bundle=str(server.cert_path),
        username="sanna",
        password="secret",
    )
    with pytest.raises(aiosmtplib.SMTPAuthenticationError):
        send(
            cold_email(),
            server.port,
            use_tls=True,
            start_tls=None,
            validate_certs=False,
            username="sanna",
            password="wrong",
        )
    # A plaintext client never sees the greeting, which is inside TLS. (A raw socket: an
    # aiosmtplib client that times out in connect() leaves its transport half-closed.)
    with socket.create_connection(("127.0.0.1", server.port), timeout=0.5) as plain:
        with pytest.raises(TimeoutError):
            plain.recv(1024)
    assert [r.message["Subject"] for r in server.received] == ["over SMTPS"]


def test_stopping_the_server_disconnects_a_client_left_in_tls(
    smtp_server_auth_starttls: RecordingSMTP,
) -> None:
    server = smtp_server_auth_starttls
    with warnings.catch_warnings():
        # Garbage from earlier tests is not this test's business: an aiosmtplib client whose
        # TLS shutdown outlives its asyncio.run can leave a socket behind (client side).
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()

    async def stay_connected_while_the_server_stops() -> None:
        client = aiosmtplib.SMTP(
            hostname="127.0.0.1",
            port=server.port,
            start_tls=True,
            validate_certs=False,
            timeout=CLIENT_TIMEOUT,
        )
        await client.connect()
        await client.ehlo()
        server.stop()
        with pytest.raises(aiosmtplib.SMTPServerDisconnected):
            await client.noop()

    asyncio.run(stay_connected_while_the_server_stops())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        gc.collect()  # a server-side socket or TLS transport left open would warn here
    assert [str(w.message) for w in caught if w.category is ResourceWarning] == []


def test_scripted_451_fails_one_send_and_the_next_succeeds(smtp_server: RecordingSMTP) -> None:
    smtp_server.script("451 4.7.1 Try again later")
    with pytest.raises(aiosmtplib.SMTPDataError) as caught:
        send(cold_email("first try"), smtp_server.port)
    assert caught.value.code == 451
    assert "Try again later" in caught.value.message
    send(cold_email("second try"), smtp_server.port)
    assert [r.message["Subject"] for r in smtp_server.received] == ["second try"]


def test_scripted_rcpt_550_refuses_the_recipient(smtp_server: RecordingSMTP) -> None:
    smtp_server.script("rcpt:550 5.1.1 User unknown")
    with pytest.raises(aiosmtplib.SMTPRecipientsRefused) as caught:
        send(cold_email(), smtp_server.port)
    [refused] = caught.value.recipients
    assert refused.code == 550 and refused.recipient == "aino.korhonen@rakennus.example"
    assert smtp_server.received == []
    send(cold_email(), smtp_server.port)
    assert len(smtp_server.received) == 1


def test_scripted_drop_disconnects_in_the_middle_of_data(smtp_server: RecordingSMTP) -> None:
    smtp_server.script("drop")
    with pytest.raises(aiosmtplib.SMTPServerDisconnected):
        send(cold_email(), smtp_server.port)
    assert smtp_server.received == []
    send(cold_email("after the drop"), smtp_server.port)
    assert [r.message["Subject"] for r in smtp_server.received] == ["after the drop"]


def test_scripted_replies_queue_in_order(smtp_server: RecordingSMTP) -> None:
    smtp_server.script("451 4.3.0 one", "452 4.3.1 two", "250 2.0.0 Queued as X1")
    codes = []
    for _ in range(4):
        try:
            send(cold_email(), smtp_server.port)
            codes.append(250)
        except aiosmtplib.SMTPDataError as error:
            codes.append(error.code)
    assert codes == [451, 452, 250, 250]
    assert len(smtp_server.received) == 2  # a scripted 2xx keeps the message


@pytest.mark.parametrize("bad", ["", "hello", "rcpt:drop", "rcpt:", "99 short", "600 nope"])
def test_script_refuses_what_it_cannot_answer(smtp_server: RecordingSMTP, bad: str) -> None:
    with pytest.raises(ValueError, match="cannot script"):
        smtp_server.script(bad)


def test_starttls_and_implicit_tls_together_are_refused(make_smtp_server: MakeSMTPServer) -> None:
    with pytest.raises(ValueError, match="not both"):
        make_smtp_server(starttls=True, implicit_tls=True)
