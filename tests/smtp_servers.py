"""Real SMTP servers for the test suite: aiosmtpd on 127.0.0.1, a free port, every envelope kept.

``RecordingSMTP`` is what the sender is tested against: plain, with AUTH, with STARTTLS or
implicit TLS (a self-signed certificate made here with ``cryptography``), and able to answer
the next commands with scripted failures (a 451, a refused recipient, a dropped connection).

Its fixtures (``smtp_server``, ``smtp_server_auth_starttls``, ``make_smtp_server``) reach the
tests through ``pytest_plugins = ["smtp_servers"]`` in ``conftest.py`` (or in a test module);
this module is not a conftest itself. Registered that way, pytest also rewrites its asserts.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import ipaddress
import json
import re
import secrets
import shutil
import ssl
import tempfile
import threading
import urllib.parse
import urllib.request
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, cast

import pytest
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from outreach.mail.sink import LoopbackController

SMTP_USERNAME = "sanna.lehto@northwind.example"
SMTP_PASSWORD = "correct horse battery staple"

# "451 4.7.1 Try again later", "rcpt:550 5.1.1 User unknown", "drop"
_SCRIPTED = re.compile(r"^(?:(?P<rcpt>rcpt:)?(?P<reply>[245]\d\d(?:[ -].*)?)|(?P<drop>drop))$")


@dataclass
class Received:
    """One message the server accepted: the SMTP envelope and the bytes after DATA."""

    mail_from: str
    rcpt_tos: list[str]
    data: bytes
    login: str | None = None  # the AUTH user name, when the client logged in

    @property
    def message(self) -> EmailMessage:
        """The data parsed with ``email.policy.default``."""
        return cast(EmailMessage, BytesParser(policy=policy.default).parsebytes(self.data))


def make_self_signed_cert(directory: Path) -> tuple[Path, Path]:
    """Write ``cert.pem`` and ``key.pem`` for 127.0.0.1 and localhost; return their paths.

    The certificate is its own issuer, so a client can trust exactly it (``cert_bundle=``)
    and verify the server's name, as it would against a real mail server.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    public_key = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        # Fixed and wide: OpenSSL checks against the real clock, which freezegun does not move
        # (tests freeze the time in 2026 or 2027; a window around that would fail today).
        .not_valid_before(datetime.datetime(2000, 1, 1, tzinfo=datetime.UTC))
        .not_valid_after(datetime.datetime(2100, 1, 1, tzinfo=datetime.UTC))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                ]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(public_key), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    cert_path = directory / "cert.pem"
    key_path = directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


class _Recorder:
    """The aiosmtpd handler behind RecordingSMTP."""

    def __init__(self, owner: RecordingSMTP) -> None:
        self.owner = owner

    async def handle_MAIL(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        mail_options: list[str],
    ) -> str:
        if self.owner.username is not None and not session.authenticated:
            # Same reply as aiosmtpd's own auth_required check (see RecordingSMTP).
            return "530 5.7.0 Authentication required"
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        scripted = self.owner._next_reply(self.owner._rcpt_replies)
        if scripted is not None:
            return scripted
        if address.lower() in self.owner.unknown_users:
            return "550 5.1.1 User unknown"
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        scripted = self.owner._next_reply(self.owner._data_replies)
        if scripted == "drop":
            # Close without a reply, the way a server that crashes after the data does. The
            # close makes aiosmtpd cancel this session's task, which ends the wait below.
            assert server.transport is not None
            server.transport.close()
            await asyncio.Event().wait()
        if scripted is not None and not scripted.startswith("2"):
            return scripted
        # session.auth_data, not session.login_data: that one logs a deprecation on each read.
        auth = session.auth_data
        self.owner.received.append(
            Received(
                mail_from=envelope.mail_from or "",
                rcpt_tos=list(envelope.rcpt_tos),
                data=envelope.original_content or b"",
                login=auth.login.decode() if isinstance(auth, LoginPassword) else None,
            )
        )
        return scripted or "250 OK"

    def authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
    ) -> AuthResult:
        """aiosmtpd's ``authenticator``: PLAIN and LOGIN against the one user name and password."""
        expected = (self.owner.username, self.owner.password)
        if (
            isinstance(auth_data, LoginPassword)
            and (
                auth_data.login.decode(errors="replace"),
                auth_data.password.decode(errors="replace"),
            )
            == expected
        ):
            return AuthResult(success=True, auth_data=auth_data)
        # handled=False makes aiosmtpd answer "535 5.7.8 Authentication credentials invalid";
        # with the default handled=True it would answer nothing and the client would hang.
        return AuthResult(success=False, handled=False)


class _OAuthRecorder(_Recorder):
    """The handler with an ``AUTH XOAUTH2`` mechanism asking an RFC 7662 introspection
    endpoint (the test's authorization server), the way Microsoft's and Google's SMTP servers
    check a bearer token: one it does not call active gets the error challenge, then 535."""

    async def auth_XOAUTH2(self, server: SMTP, args: list[str]) -> AuthResult:  # noqa: N802
        if len(args) > 1:
            initial = args[1]
        else:
            answer = await server.challenge_auth("", encode_to_b64=False)
            if not isinstance(answer, bytes):
                return AuthResult(success=False, handled=True)
            initial = answer.decode()
        try:
            fields = dict(
                part.split("=", 1)
                for part in base64.b64decode(initial).decode().split("\x01")
                if part
            )
            user, token = fields["user"], fields["auth"].removeprefix("Bearer ")
        except (ValueError, KeyError):
            return AuthResult(success=False, handled=False)
        active = await asyncio.to_thread(_introspect, self.owner.xoauth2_introspect or "", token)
        if self.owner.xoauth2_refuse_all:
            active = None
        self.owner.xoauth2_attempts.append((user, active == user))
        if active != user:
            # XOAUTH2 (as Gmail does it): a 334 with a JSON error, the client's empty line,
            # then the failure.
            error = json.dumps({"status": "401", "schemes": "bearer"})
            await server.challenge_auth(error)
            return AuthResult(success=False, handled=False)
        return AuthResult(success=True, auth_data=LoginPassword(user.encode(), b""))


def _introspect(url: str, token: str) -> str | None:
    body = urllib.parse.urlencode({"token": token}).encode()
    with urllib.request.urlopen(url, data=body, timeout=10) as response:  # noqa: S310
        answer = json.loads(response.read())
    return str(answer["username"]) if answer.get("active") else None


class RecordingSMTP:
    """aiosmtpd Controller on 127.0.0.1, free port, keeps every envelope; optional AUTH and
    STARTTLS; scriptable failures.

    ``auth=(user, password)`` requires AUTH (PLAIN or LOGIN) before MAIL; a wrong password gets
    535. With ``starttls=True`` aiosmtpd enforces it itself (``auth_required=True``,
    ``require_starttls=True``): AUTH is offered only after STARTTLS, and every command but
    EHLO, NOOP, STARTTLS and QUIT is refused with 530 before it. Without STARTTLS, AUTH is
    allowed in the clear (``auth_require_tls=False``, loopback only, for clients configured
    with ``smtp_security = "none"``) and over implicit TLS (aiosmtpd does not count an
    implicit-TLS connection as encrypted, so it would refuse AUTH there with 538); in both,
    the MAIL hook requires the login, because aiosmtpd's ``auth_required`` without
    ``auth_require_tls`` warns on every connection.

    ``implicit_tls=True`` makes the whole connection TLS from the first byte (SMTPS, what
    ``smtp_security = "tls"`` connects to). ``cert_path`` is the server's self-signed
    certificate (for 127.0.0.1 and localhost) when either TLS mode is on.
    """

    host = "127.0.0.1"

    def __init__(
        self,
        *,
        auth: tuple[str, str] | None = None,
        starttls: bool = False,
        implicit_tls: bool = False,
        xoauth2_introspect: str | None = None,
        smtputf8: bool = True,
    ) -> None:
        """``xoauth2_introspect``: require AUTH XOAUTH2 with a bearer token this RFC 7662
        endpoint calls active for the user named in it (PLAIN and LOGIN are refused).
        ``smtputf8=False``: the server does not offer SMTPUTF8 (non-ASCII addresses)."""
        self.smtputf8 = smtputf8
        if starttls and implicit_tls:
            raise ValueError("choose starttls or implicit_tls, not both")
        self.xoauth2_introspect = xoauth2_introspect
        self.xoauth2_attempts: list[tuple[str, bool]] = []  # (user, accepted) per AUTH XOAUTH2
        self.xoauth2_refuse_all = False  # refuse every token (SMTP AUTH off for the mailbox)
        if xoauth2_introspect is not None and auth is None:
            auth = ("(xoauth2 only)", secrets.token_hex(16))  # MAIL then requires the login
        self.username: str | None = auth[0] if auth is not None else None
        self.password: str | None = auth[1] if auth is not None else None
        self.starttls = starttls
        self.implicit_tls = implicit_tls
        self.port = 0
        self.received: list[Received] = []
        # Recipients answered "550 5.1.1 User unknown" at RCPT, every time (a bad list).
        self.unknown_users: set[str] = set()
        self.cert_path: Path | None = None
        self._key_path: Path | None = None
        self._tmp: Path | None = None
        self._data_replies: deque[str] = deque()
        self._rcpt_replies: deque[str] = deque()
        self._lock = threading.Lock()
        self._controller: LoopbackController | None = None

    def script(self, *responses: str) -> None:
        """Queue replies for the next commands instead of the normal ``250 OK``.

        ``"451 4.7.1 Try again later"`` answers the next DATA with that line and does not
        keep the message; ``"rcpt:550 5.1.1 User unknown"`` refuses the next RCPT;
        ``"drop"`` closes the connection after the next DATA's message, without a reply.
        DATA and RCPT replies are two queues, each used in order; a scripted 2xx DATA reply
        keeps the message. When a queue is empty, the command is answered normally.
        """
        for response in responses:
            match = _SCRIPTED.match(response)
            if match is None:
                raise ValueError(
                    f"cannot script {response!r}: use a reply line like '451 4.7.1 Try again"
                    " later', 'rcpt:550 5.1.1 User unknown', or 'drop'"
                )
            with self._lock:
                if match["rcpt"]:
                    self._rcpt_replies.append(match["reply"])
                else:
                    self._data_replies.append(response)

    def _next_reply(self, queue: deque[str]) -> str | None:
        with self._lock:
            return queue.popleft() if queue else None

    def start(self) -> None:
        """Make the certificate if TLS is on, then listen on a free port of 127.0.0.1."""
        if self._controller is not None:
            raise RuntimeError("the server is already running")
        handler = _OAuthRecorder(self) if self.xoauth2_introspect else _Recorder(self)
        kwargs: dict[str, Any] = {"enable_SMTPUTF8": self.smtputf8}
        tls: ssl.SSLContext | None = None
        if self.starttls or self.implicit_tls:
            self._tmp = Path(tempfile.mkdtemp(prefix="recording-smtp-"))
            self.cert_path, self._key_path = make_self_signed_cert(self._tmp)
            tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            tls.load_cert_chain(self.cert_path, self._key_path)
        if self.starttls:
            kwargs.update(tls_context=tls, require_starttls=True)
        if self.implicit_tls:
            kwargs.update(ssl_context=tls)
        if self.username is not None:
            kwargs.update(authenticator=handler.authenticate)
            if self.starttls:
                kwargs.update(auth_required=True, auth_require_tls=True)
            else:
                kwargs.update(auth_require_tls=False)
        controller = LoopbackController(handler, host=self.host, port=0, **kwargs)
        try:
            controller.start()
        except BaseException:
            self._remove_cert()
            raise
        self._controller = controller
        self.port = controller.port

    def stop(self) -> None:
        """Stop listening and remove the certificate; ``received`` stays readable."""
        if self._controller is not None:
            self._controller.stop()
            self._controller = None
        self._remove_cert()

    def _remove_cert(self) -> None:
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def __enter__(self) -> RecordingSMTP:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


@pytest.fixture
def smtp_server() -> Iterator[RecordingSMTP]:
    """A plain SMTP server (no TLS, no AUTH) on 127.0.0.1, started and stopped per test."""
    with RecordingSMTP() as server:
        yield server


@pytest.fixture
def smtp_server_auth_starttls() -> Iterator[RecordingSMTP]:
    """An SMTP server that requires STARTTLS, then AUTH as SMTP_USERNAME / SMTP_PASSWORD."""
    with RecordingSMTP(auth=(SMTP_USERNAME, SMTP_PASSWORD), starttls=True) as server:
        yield server


class MakeSMTPServer(Protocol):
    """The ``make_smtp_server`` fixture: start a RecordingSMTP with these options."""

    def __call__(
        self,
        *,
        auth: tuple[str, str] | None = None,
        starttls: bool = False,
        implicit_tls: bool = False,
    ) -> RecordingSMTP: ...


@pytest.fixture
def make_smtp_server() -> Iterator[MakeSMTPServer]:
    """Start a RecordingSMTP with any options, e.g. ``make_smtp_server(implicit_tls=True)``;
    every server it started is stopped after the test."""
    servers: list[RecordingSMTP] = []

    def make(
        *, auth: tuple[str, str] | None = None, starttls: bool = False, implicit_tls: bool = False
    ) -> RecordingSMTP:
        server = RecordingSMTP(auth=auth, starttls=starttls, implicit_tls=implicit_tls)
        server.start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()
