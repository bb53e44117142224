"""OAuth 2.0 mailboxes end to end, through the CLI, against real servers on loopback.

The authorization server (``tests/oauth_server.py``) issues short-lived tokens and rotating
refresh tokens; Dovecot checks XOAUTH2 logins with its ``oauth2`` passdb against that server's
introspection endpoint, and the aiosmtpd server does the same for ``AUTH XOAUTH2``: a token
the server did not issue, revoked, or let expire is refused by both, as Microsoft's and
Google's servers would. The mailbox is the ``generic`` provider: Microsoft's and Google's are
the same code path with other URLs and scopes.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from http.client import HTTPConnection
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from freezegun import freeze_time
from sqlmodel import select

from outreach.connect import connect as connect_mailbox
from outreach.models import OAuthGrant
from outreach.oauth import ConnectFailed
from outreach.secrets import Vault, new_key
from outreach.workspace import Workspace
from tests.conftest import Cli, edit_config
from tests.oauth_server import AuthServer, Client
from tests.smtp_servers import RecordingSMTP

if TYPE_CHECKING:
    from dovecot import Dovecot

pytest_plugins = ["dovecot"]
pytestmark = pytest.mark.timeout(90)

MONDAY = datetime(2027, 1, 4, 8, 0, tzinfo=UTC)  # 10:00 in Helsinki: inside the window
ANN = "ann@acme.example"
KEY_ENV = "OUTREACH_SECRETS_KEY"


@pytest.fixture(scope="session")
def auth_server() -> Iterator[AuthServer]:
    with AuthServer() as server:
        yield server


@pytest.fixture(scope="session")
def oauth_dovecot(auth_server: AuthServer) -> Iterator[Dovecot]:
    from dovecot import Dovecot, dovecot_binary

    if dovecot_binary() is None:
        pytest.skip("dovecot not installed: apt-get install dovecot-imapd")
    with Dovecot(oauth2_introspection_url=auth_server.introspect_url) as server:
        yield server


@pytest.fixture
def smtp(auth_server: AuthServer) -> Iterator[RecordingSMTP]:
    with RecordingSMTP(xoauth2_introspect=auth_server.introspect_url) as server:
        yield server


class Mailroom:
    """One workspace with an OAuth mailbox, the servers it talks to, and every output seen."""

    def __init__(
        self,
        run: Cli,
        workspace_dir: Path,
        auth: AuthServer,
        dovecot: Dovecot,
        smtp: RecordingSMTP,
        client: Client,
        flow: str,
    ) -> None:
        self.run_cli = run
        self.dir = workspace_dir
        self.auth = auth
        self.dovecot = dovecot
        self.smtp = smtp
        self.client = client
        self.user = dovecot.new_user("oauth")
        dovecot.create_folder(self.user, "Sent")  # what `mailboxes check` looks for
        self.outputs: list[str] = []
        self.database_dir: Path | None = None  # a PostgreSQL cluster's data directory
        auth.device_user = self.user
        fields: dict[str, Any] = {
            "name": "Sanna Lehto",
            "email": self.user,
            "smtp_host": "127.0.0.1",
            "smtp_port": smtp.port,
            "smtp_security": "none",
            "imap_host": "127.0.0.1",
            "imap_port": dovecot.port,
            "imap_security": "none",
            "auth": "oauth2",
            "oauth_provider": "generic",
            "oauth_flow": flow,
            "oauth_client_id": client.client_id,
            "oauth_token_url": auth.token_url,
            "oauth_device_url": auth.device_url,
            "oauth_authorize_url": auth.authorize_url,
            "oauth_scopes": ["mail.send", "mail.read", "offline_access"],
        }
        if client.secret is not None:
            fields["oauth_client_secret_env"] = "OUTREACH_TEST_CLIENT_SECRET"
        if flow == "service_account":
            fields["oauth_client_secret_env"] = "OUTREACH_TEST_SERVICE_KEY"
        config = workspace_dir / "outreach.toml"
        text = config.read_text(encoding="utf-8")
        start, end = text.index("[[mailboxes]]"), text.index("[daemon]")
        block = "".join(f"{key} = {json.dumps(value)}\n" for key, value in fields.items())
        config.write_text(text[:start] + "[[mailboxes]]\n" + block + "\n" + text[end:], "utf-8")
        edit_config(config, min_gap_seconds=0, max_gap_seconds=0)

    def __call__(self, *args: str, input: str | None = None) -> Any:
        result = self.run_cli(*args, input=input)
        self.outputs.append(result.output)
        return result

    def json(self, *args: str) -> Any:
        result = self(*args, "--json")
        return json.loads(result.stdout)

    def enroll(self, *emails: str) -> None:
        csv = self.dir / "people.csv"
        rows = "".join(f"{e},{e.split('@')[0].title()},Acme\n" for e in emails)
        csv.write_text("email,first_name,company\n" + rows, encoding="utf-8")
        result = self("enroll", str(csv), "--sequence", "cold")
        assert result.exit_code == 0, result.output

    def reply_to(self, message: EmailMessage, text: str) -> None:
        reply = EmailMessage()
        reply["From"] = str(message["To"])
        reply["To"] = self.user
        reply["Subject"] = "Re: " + str(message["Subject"])
        reply["Message-ID"] = f"<reply-{len(self.smtp.received)}@acme.example>"
        reply["In-Reply-To"] = str(message["Message-ID"])
        reply["References"] = str(message["Message-ID"])
        reply["Date"] = "Mon, 04 Jan 2027 12:00:00 +0200"
        reply.set_content(text)
        self.dovecot.append(self.user, "INBOX", bytes(reply))

    def grant(self) -> OAuthGrant:
        ws = Workspace.load(self.dir / "outreach.toml")
        try:
            with ws.store.session() as session:
                grant = session.exec(select(OAuthGrant)).one()
                session.expunge(grant)
                return grant
        finally:
            ws.close()

    def mailbox_row(self) -> Any:
        [row] = self.json("mailboxes")
        return row

    def assert_no_token_anywhere(self, log_text: str) -> None:
        """No token this server issued is in a file of the workspace (the database's bytes
        included), in any output, or in the log."""
        tokens = self.auth.issued_tokens()
        assert tokens
        files = [p for p in self.dir.rglob("*") if p.is_file()]
        if self.database_dir is None:
            assert any(p.name.startswith("outreach.db") for p in files)
        else:  # PostgreSQL: the cluster's own files, tables and write-ahead log
            files += [p for p in self.database_dir.rglob("*") if p.is_file()]
            assert any("pg_wal" in p.parts for p in files)
        blobs = [p.read_bytes() for p in files]
        for token in tokens:
            # The token itself, and as it travels in an XOAUTH2 exchange (base64).
            sasl = base64.b64encode(f"user={self.user}\x01auth=Bearer {token}\x01\x01".encode())
            for raw in (token.encode(), sasl):
                assert not any(raw in blob for blob in blobs), "a token is in a file of the store"
                text = raw.decode()
                assert not any(text in out for out in self.outputs), "a token is in the output"
                assert text not in log_text, "a token is in the log"


@pytest.fixture
def mailroom(
    run: Cli,
    workspace_dir: Path,
    auth_server: AuthServer,
    oauth_dovecot: Dovecot,
    smtp: RecordingSMTP,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
    client_options: dict[str, Any],
    database: str,
) -> Mailroom:
    monkeypatch.setenv(KEY_ENV, new_key())
    options = dict(client_options)
    flow = options.pop("flow", "device")
    client_id = f"app-{request.node.name[:40]}-{id(request)}"
    if options.get("secret"):
        monkeypatch.setenv("OUTREACH_TEST_CLIENT_SECRET", options["secret"])
    client = auth_server.register(Client(client_id, **options))
    room = Mailroom(run, workspace_dir, auth_server, oauth_dovecot, smtp, client, flow)
    if database == "postgresql":
        room.database_dir = request.getfixturevalue("postgres_cluster").data
    if client.app_mailbox == "":
        client.app_mailbox = room.user
    return room


@pytest.fixture
def client_options() -> dict[str, Any]:
    """The registered client's options (a test parametrizes it to change them)."""
    return {}


def connect(room: Mailroom) -> Any:
    result = room("mailboxes", "connect", room.user)
    assert result.exit_code == 0, result.output
    return result


def test_device_connect_then_send_and_read_a_reply_over_xoauth2(
    mailroom: Mailroom, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    room = mailroom
    with freeze_time(MONDAY, real_asyncio=True):
        result = connect(room)
        [device_poll] = [g for g in room.auth.grants_seen[-1:]]
        assert device_poll.endswith("device_code")
        assert f"{room.auth.base}/device" in result.output  # the verification URL...
        assert "enter the code " in result.output  # ...and the code the person types there
        assert f"{room.user} connected (generic, device)" in result.output

        check = room("mailboxes", "check", room.user)
        assert check.exit_code == 0, check.output
        for step in ("oauth token: ok", "smtp auth: ok", "imap login: ok", "imap inbox: ok"):
            assert step in check.output
        assert "XOAUTH2 as " + room.user in check.output
        assert not room.smtp.received  # a check sends nothing

        room.enroll(ANN)
        sent = room("send", "--once")
        assert sent.exit_code == 0, sent.output
        [received] = room.smtp.received
        assert received.login == room.user  # AUTH XOAUTH2 as the mailbox, no password
        assert all(accepted for _user, accepted in room.smtp.xoauth2_attempts)

        room.reply_to(received.message, "Yes, tell me more about this.")
        poll = room.json("replies", "--once")
        assert len(poll["replies"]) == 1, poll
        [enrollment] = room.json("prospect", ANN)["enrollments"]
        assert enrollment["state"] == "replied"
    room.assert_no_token_anywhere(caplog.text)


@pytest.mark.parametrize("client_options", [{"access_lifetime": 600, "rotate": True}])
def test_tokens_refresh_before_expiry_through_three_rotations(
    mailroom: Mailroom, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    room = mailroom
    with freeze_time(MONDAY, real_asyncio=True) as frozen:
        connect(room)
        first = room.grant()
        room.enroll(ANN)
        assert room("send", "--once").exit_code == 0  # on the token from connect
        assert room.grant().rotations == 0

        # Each time the 10-minute token is within 5 minutes of expiry: refreshed, rotated.
        frozen.tick(timedelta(minutes=6))
        assert room("replies", "--once").exit_code == 0  # IMAP refreshes: rotation 1
        frozen.tick(timedelta(minutes=6))
        assert room("mailboxes", "check").exit_code == 0  # rotation 2
        frozen.tick(timedelta(minutes=6))
        room.reply_to(room.smtp.received[0].message, "Interesting, call me.")
        poll = room.json("replies", "--once")  # rotation 3, and the reply read with it
        assert len(poll["replies"]) == 1

        grant = room.grant()
        assert grant.rotations == 3
        assert grant.refreshes == 4  # the connect and three refreshes
        assert room.auth.grants_seen.count("refresh_token") == 3
        assert len(room.auth.spent) >= 3 and room.auth.reuse == 0  # no spent token reused
        # What is stored is the one live refresh token, encrypted.
        vault = Vault.from_env(KEY_ENV)
        assert grant.refresh_token and first.refresh_token
        live = vault.decrypt(grant.refresh_token)
        assert live in room.auth.refresh
        assert vault.decrypt(first.refresh_token) in room.auth.spent
    room.assert_no_token_anywhere(caplog.text)


def test_revoked_grant_pauses_the_mailbox_and_connect_resumes_it(mailroom: Mailroom) -> None:
    room = mailroom
    with freeze_time(MONDAY, real_asyncio=True) as frozen:
        connect(room)
        room.enroll(ANN, "bob@acme.example")
        room.auth.revoke(room.user)  # consent withdrawn: access and refresh tokens die
        frozen.tick(timedelta(minutes=1))

        result = room("send", "--once")
        assert result.exit_code == 1
        hint = f"reconnect with: outreach mailboxes connect {room.user}"
        assert hint in result.output
        assert not room.smtp.received
        # The cached token was refused (535), a refresh was tried once: invalid_grant.
        assert [ok for _u, ok in room.smtp.xoauth2_attempts] == [False]
        row = room.mailbox_row()
        assert hint in row["paused"] and "invalid_grant" in row["paused"]
        assert row["sent_today"] == 0  # nothing counted against the day's limit
        assert hint in room("status").output
        messages = room.json("prospect", ANN)["messages"]
        assert all(m["state"] != "bounced" for m in messages)

        # Paused: nothing more is asked of the token endpoint until a person reconnects.
        asked = len(room.auth.grants_seen)
        again = room("send", "--once")
        assert again.exit_code == 1 and hint in again.output
        assert len(room.auth.grants_seen) == asked

        resumed = connect(room)
        assert "resumed" in resumed.output
        assert room.mailbox_row()["paused"] is None
        sent = room("send", "--once")
        assert sent.exit_code == 0, sent.output
        assert len(room.smtp.received) == 2  # both prospects, each once


def test_a_fresh_token_refused_by_smtp_is_retried_once_then_pauses(mailroom: Mailroom) -> None:
    room = mailroom
    with freeze_time(MONDAY, real_asyncio=True):
        connect(room)
        room.enroll(ANN)
        # A revoked access token with a live refresh token: the retry with a new one works.
        room.auth.access.clear()
        result = room("send", "--once")
        assert result.exit_code == 0, result.output
        assert [ok for _u, ok in room.smtp.xoauth2_attempts] == [False, True]
        assert len(room.smtp.received) == 1

        # The server refuses every token (say, SMTP AUTH disabled for the mailbox).
        room.smtp.xoauth2_refuse_all = True
        room.enroll("bob@acme.example")
        before = len(room.smtp.xoauth2_attempts)
        result = room("send", "--once")
        assert result.exit_code == 1
        assert len(room.smtp.xoauth2_attempts) - before == 2  # the cached token, then a new one
        paused = room.mailbox_row()["paused"]
        assert "SMTP 535 5.7.8 Authentication credentials invalid" in paused
        assert "a fresh OAuth token was refused" in paused
        assert len(room.smtp.received) == 1


def test_imap_retries_a_refused_token_once_then_pauses_with_dovecots_words(
    mailroom: Mailroom,
) -> None:
    room = mailroom
    with freeze_time(MONDAY, real_asyncio=True):
        connect(room)
        room.auth.access.clear()  # the cached token was revoked; the refresh token lives
        assert room("replies", "--once").exit_code == 0  # a new token, and Dovecot took it
        assert room.grant().refreshes == 2

        room.auth.refused_users.add(room.user)  # IMAP access withdrawn for the mailbox
        try:
            result = room("replies", "--once")
        finally:
            room.auth.refused_users.discard(room.user)
        assert result.exit_code == 1
        assert "AUTHENTICATIONFAILED" in result.output
        paused = room.mailbox_row()["paused"]
        assert f"IMAP 127.0.0.1:{room.dovecot.port}" in paused
        assert f"reconnect with: outreach mailboxes connect {room.user}" in paused
        assert room.grant().refreshes == 3  # one new token was tried, not more

        resumed = connect(room)
        assert "resumed" in resumed.output
        assert room("replies", "--once").exit_code == 0


def test_token_endpoint_down_loses_nothing(mailroom: Mailroom) -> None:
    room = mailroom
    with freeze_time(MONDAY, real_asyncio=True) as frozen:
        connect(room)
        room.enroll(ANN)
        frozen.tick(timedelta(minutes=8))  # the 10-minute token is due for a refresh
        room.auth.down = True
        result = room("send", "--once")
        assert not room.smtp.received
        row = room.mailbox_row()
        assert row["paused"] is None  # transient: the mailbox waits, it is not paused
        assert "503" in (row["unreachable"] or "")
        assert row["sent_today"] == 0 and row["due_now"] == 1
        [message] = room.json("prospect", ANN)["messages"]
        assert message["state"] == "retry"
        poll = room("replies", "--once")
        assert poll.exit_code == 1 and "503" in poll.output

        room.auth.down = False
        frozen.tick(timedelta(minutes=6))  # past [sending] retry_seconds
        result = room("send", "--once")
        assert result.exit_code == 0, result.output
        assert len(room.smtp.received) == 1
        [message] = room.json("prospect", ANN)["messages"]
        assert message["state"] == "sent"
        assert room.mailbox_row()["unreachable"] is None


@pytest.mark.parametrize(
    "client_options", [{"flow": "client_credentials", "secret": "s3cret-value", "app_mailbox": ""}]
)
def test_client_credentials_need_no_connect_step(
    mailroom: Mailroom, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    room = mailroom
    with freeze_time(MONDAY, real_asyncio=True) as frozen:
        room.enroll(ANN)
        result = room("send", "--once")
        assert result.exit_code == 0, result.output
        [received] = room.smtp.received
        assert received.login == room.user
        room.reply_to(received.message, "Sounds good")
        frozen.tick(timedelta(minutes=20))  # expired: a new app token, no refresh token
        assert len(room.json("replies", "--once")["replies"]) == 1
        assert room.auth.grants_seen.count("client_credentials") == 2
        assert room.grant().refresh_token is None
        said = room("mailboxes", "connect", room.user)
        assert said.exit_code == 0 and "no person needs to connect" in said.output
    outputs = "\n".join(room.outputs)
    assert "s3cret-value" not in outputs and "s3cret-value" not in caplog.text
    room.assert_no_token_anywhere(caplog.text)


def test_not_connected_is_one_line_and_sends_nothing(mailroom: Mailroom) -> None:
    room = mailroom
    with freeze_time(MONDAY, real_asyncio=True):
        room.enroll(ANN)
        result = room("send", "--once")
        assert result.exit_code == 1
        assert f"is not connected to generic yet (run: outreach mailboxes connect {room.user})" in (
            result.output
        )
        assert "Traceback" not in result.output
        check = room("mailboxes", "check", "--json")
        assert check.exit_code == 1
        steps = json.loads(check.stdout)["steps"]
        assert steps[0]["step"] == "oauth token" and steps[0]["ok"] is False
        assert not room.smtp.received


def _browser(url: str) -> None:
    """What the person's browser does: open the URL, sign in (the test server consents at
    once), and follow the redirect back to the loopback listener."""
    with urllib.request.urlopen(url, timeout=10) as response:
        response.read()


@pytest.mark.parametrize(
    "client_options", [{"flow": "authorization_code", "secret": "desktop-secret"}]
)
def test_authorization_code_with_pkce_comes_back_to_the_loopback_listener(
    mailroom: Mailroom,
) -> None:
    room = mailroom
    ws = Workspace.load(room.dir / "outreach.toml")
    said: list[str] = []

    def say(line: str) -> None:
        said.append(line)
        if line.startswith(room.auth.authorize_url):
            assert "code_challenge_method=S256" in line and "redirect_uri=http" in line
            threading.Thread(target=_browser, args=(line,), daemon=True).start()

    try:
        line = connect_mailbox(ws.config.mailboxes[0].token_source, say=say)
    finally:
        ws.close()
    assert line == f"{room.user} connected (generic, authorization_code)"
    # The server checked the PKCE verifier against the challenge before issuing a grant.
    assert room.auth.grants_seen[-1] == "authorization_code"
    assert room.grant().refresh_token
    check = room("mailboxes", "check")
    assert check.exit_code == 0, check.output


@pytest.mark.parametrize(
    "client_options", [{"flow": "authorization_code", "secret": "desktop-secret"}]
)
def test_authorization_code_on_a_headless_server_takes_the_pasted_address(
    mailroom: Mailroom,
) -> None:
    room = mailroom
    process = subprocess.Popen(
        [sys.executable, "-m", "outreach", "--config", str(room.dir / "outreach.toml")]
        + ["mailboxes", "connect", room.user],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None and process.stdin is not None
    try:
        url = ""
        for line in process.stdout:
            if line.startswith(room.auth.authorize_url):
                url = line.strip()
                break
        assert url, "connect printed no authorization URL"
        # The browser is on another machine: its redirect to 127.0.0.1 goes nowhere, and
        # the person copies the address from its address bar instead.
        parts = urllib.parse.urlsplit(url)
        http = HTTPConnection("127.0.0.1", room.auth.port, timeout=10)
        http.request("GET", f"{parts.path}?{parts.query}")
        location = http.getresponse().getheader("Location")
        http.close()
        assert location and location.startswith("http://127.0.0.1:")
        process.stdin.write(location + "\n")
        process.stdin.flush()
        out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, err
    assert f"{room.user} connected (generic, authorization_code)" in out
    assert room.grant().refresh_token


@pytest.mark.parametrize(
    "client_options", [{"flow": "authorization_code", "secret": "desktop-secret"}]
)
def test_a_pasted_address_of_another_request_is_refused(mailroom: Mailroom) -> None:
    ws = Workspace.load(mailroom.dir / "outreach.toml")
    try:
        with pytest.raises(ConnectFailed, match="not the URL this connect sent you to"):
            connect_mailbox(
                ws.config.mailboxes[0].token_source,
                say=lambda line: None,
                read_line=lambda: "http://127.0.0.1:9/?code=stolen&state=another",
            )
        assert ws.config.mailboxes[0].token_source.info() is None
    finally:
        ws.close()


SERVICE_ACCOUNT = "outreach-sender@project.iam.example"


def _service_account_key() -> tuple[str, str]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    public = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    return private, public


_PRIVATE, _PUBLIC = _service_account_key()


@pytest.mark.parametrize(
    "client_options",
    [{"flow": "service_account", "public_key": _PUBLIC, "issuer": SERVICE_ACCOUNT}],
)
def test_service_account_acts_as_the_mailbox_with_a_signed_jwt(
    mailroom: Mailroom, monkeypatch: pytest.MonkeyPatch
) -> None:
    room = mailroom
    key = {"type": "service_account", "client_email": SERVICE_ACCOUNT, "private_key": _PRIVATE}
    monkeypatch.setenv("OUTREACH_TEST_SERVICE_KEY", json.dumps(key))
    with freeze_time(MONDAY, real_asyncio=True):
        check = room("mailboxes", "check", room.user)
        assert check.exit_code == 0, check.output
        assert "generic service_account: access token fetched" in check.output
        assert room.auth.grants_seen[-1] == "urn:ietf:params:oauth:grant-type:jwt-bearer"
        room.enroll(ANN)
        assert room("send", "--once").exit_code == 0
        [received] = room.smtp.received
        assert received.login == room.user  # the JWT's sub: domain-wide delegation
    assert _PRIVATE.splitlines()[1] not in "\n".join(room.outputs)


_RACER = """
import hashlib, pathlib, sys, time
from outreach.workspace import Workspace
ws = Workspace.load(sys.argv[1])
source = ws.config.mailboxes[0].token_source
flags = pathlib.Path(sys.argv[2])
(flags / f"ready-{sys.argv[3]}").touch()
while not (flags / "go").exists():
    time.sleep(0.005)
print(hashlib.sha256(source.access_token().encode()).hexdigest())
"""


@pytest.mark.parametrize("database", ["sqlite", "postgresql"], indirect=True)
def test_three_processes_refresh_a_rotating_token_once(mailroom: Mailroom, tmp_path: Path) -> None:
    room = mailroom
    connect(room)
    ws = Workspace.load(room.dir / "outreach.toml")
    try:
        with ws.store.session() as session:
            grant = session.exec(select(OAuthGrant)).one()
            grant.expires_at = datetime.now(UTC) - timedelta(minutes=1)  # due for a refresh
            session.add(grant)
    finally:
        ws.close()
    flags = tmp_path / "flags"
    flags.mkdir()
    room.auth.delay = 0.5  # a slow provider: the three requests would overlap
    refreshes = room.auth.grants_seen.count("refresh_token")
    config = str(room.dir / "outreach.toml")
    racers = [
        subprocess.Popen(
            [sys.executable, "-c", _RACER, config, str(flags), str(n)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in range(3)
    ]
    try:
        deadline = time.monotonic() + 60
        while len(list(flags.glob("ready-*"))) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        (flags / "go").touch()
        results = [racer.communicate(timeout=60) for racer in racers]
    finally:
        room.auth.delay = 0.0
        for racer in racers:
            if racer.poll() is None:
                racer.kill()
    assert all(racer.returncode == 0 for racer in racers), results
    digests = {out.strip() for out, _err in results}
    assert len(digests) == 1  # all three log in with the one refreshed token
    assert room.auth.grants_seen.count("refresh_token") == refreshes + 1
    assert room.auth.reuse == 0
    assert room.grant().broken is None and room.grant().rotations == 1


def test_the_daemon_sends_over_xoauth2_and_stops_on_the_reply(
    mailroom: Mailroom, caplog: pytest.LogCaptureFixture
) -> None:
    """`outreach run` as a process: it sends with the connected grant, waits in IMAP IDLE
    (logged in with XOAUTH2), reads the reply and stops the sequence; its log names no token."""
    room = mailroom
    connect(room)
    config = room.dir / "outreach.toml"
    edit_config(config, window="00:00-24:00", days="mon-sun", holidays="", dispatch_seconds=1)
    room.enroll(ANN)
    daemon = subprocess.Popen(
        [sys.executable, "-m", "outreach", "--config", str(config), "run"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        deadline = time.monotonic() + 60
        while not room.smtp.received and time.monotonic() < deadline:
            time.sleep(0.2)
        assert room.smtp.received, "the daemon sent nothing"
        room.reply_to(room.smtp.received[0].message, "Please call me next week.")
        state = ""
        while time.monotonic() < deadline:
            [enrollment] = room.json("prospect", ANN)["enrollments"]
            state = enrollment["state"]
            if state == "replied":
                break
            time.sleep(0.3)
        assert state == "replied"
    finally:
        daemon.send_signal(signal.SIGTERM)
        out, err = daemon.communicate(timeout=60)
    assert daemon.returncode == 0, err
    assert len(room.smtp.received) == 1  # and nothing after the reply
    room.outputs.extend([out, err])
    room.assert_no_token_anywhere(caplog.text)
