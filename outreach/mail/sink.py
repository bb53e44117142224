"""The local mail sink: a real SMTP server on loopback that keeps every message in a Maildir.

For the demo and for trying outreach without a mailbox: point a mailbox's ``smtp_host`` and
``smtp_port`` at the sink (``smtp_security = "none"``, no username) and every message that
outreach sends arrives as one file under ``DIRECTORY/new/``, byte for byte as it was sent, so a
newcomer sees real messages leave and any mail program can open them.

The sink accepts every sender and recipient, offers no AUTH and no TLS, and listens on loopback
only: it is a window on what outreach sends, never a relay.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import mailbox
import re
import socket
import weakref
from email import policy
from email.message import Message
from email.parser import BytesParser
from pathlib import Path
from types import TracebackType
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from outreach.errors import OutreachError

DEFAULT_PORT = 8025

#: The headers :func:`summarize` reports, as (key in the summary, header name).
SUMMARY_HEADERS = (
    ("date", "Date"),
    ("from", "From"),
    ("to", "To"),
    ("subject", "Subject"),
    ("message_id", "Message-ID"),
    ("in_reply_to", "In-Reply-To"),
    ("references", "References"),
)

# The unique names Python's mailbox.Maildir gives new files: SECONDS.MMICROSECONDSPpidQcount.host
_MAILDIR_NAME = re.compile(r"^(\d+)\.M(\d+)P\d+Q(\d+)\.")
_FOLD = re.compile(r"\r?\n(?=[ \t])")


class PortInUse(OutreachError, OSError):
    """Another program already listens on the port the sink (or a test server) wants."""

    def __init__(self, host: str, port: int, cause: OSError) -> None:
        super().__init__(
            f"port {port} is in use: another program listens on {host}:{port}",
            hint="stop that program, or choose another port",
        )
        self.errno = cause.errno
        self.host = host
        self.port = port


def loopback_host(host: str) -> str:
    """Return ``host`` as a loopback address to bind, or raise ValueError for any other host.

    ``localhost`` becomes ``127.0.0.1``, so that the sink never depends on name resolution.
    """
    if host == "localhost":
        return "127.0.0.1"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        address = None
    if address is None or not address.is_loopback:
        raise ValueError(
            f"{host!r} is not a loopback address: the sink listens on 127.0.0.1, ::1 or"
            " localhost only, so that it can never be used as a relay"
        )
    return str(address)


class LoopbackController(Controller):
    """An aiosmtpd ``Controller`` that binds its socket itself, before the server thread starts.

    aiosmtpd's own ``Controller`` binds inside its thread: with ``port=0`` it then tries to
    reach the server on port 0 and fails, and a taken port surfaces only after its whole
    ``ready_timeout`` (5 s). Binding here makes both immediate: ``port`` is the real port as
    soon as :meth:`start` returns, and a taken port raises :class:`PortInUse` at once.
    """

    def __init__(self, handler: Any, *, host: str, port: int, **kwargs: Any) -> None:
        # server_hostname: without it every connection's SMTP object calls socket.getfqdn(),
        # which can wait for DNS.
        kwargs.setdefault("server_hostname", "localhost")
        super().__init__(handler, hostname=loopback_host(host), port=port, **kwargs)
        self._socket: socket.socket | None = None
        self._sessions: weakref.WeakSet[SMTP] = weakref.WeakSet()

    def start(self) -> None:
        """Bind ``hostname:port``, then run the SMTP server in its thread."""
        family = socket.AF_INET6 if ":" in self.hostname else socket.AF_INET
        try:
            self._socket = socket.create_server((self.hostname, self.port), family=family)
        except OSError as error:
            self.loop.close()  # made in __init__; only the server thread would close it
            if error.errno == errno.EADDRINUSE:
                raise PortInUse(self.hostname, self.port, error) from error
            raise
        self.port = self._socket.getsockname()[1]
        try:
            super().start()
        except BaseException:
            if self._thread is not None:
                super().stop()
            else:
                self._socket.close()
                self.loop.close()
            self._socket = None
            raise

    def stop(self, no_assert: bool = False) -> None:
        """Stop the server thread; the listening socket is closed with the server."""
        super().stop(no_assert=no_assert)
        self._socket = None

    def factory(self) -> SMTP:
        """One SMTP protocol object per connection, remembered so that stop can close it."""
        smtp = super().factory()
        self._sessions.add(smtp)
        return smtp

    def cancel_tasks(self, stop_loop: bool = True) -> None:
        """Close the connections still open, then stop the loop (runs in the server thread).

        aiosmtpd only cancels the sessions' tasks: a client still connected when the server
        stops would leave its socket open (a ResourceWarning at the next garbage collection).
        abort() closes at the loop's next turn, which aiosmtpd's shutdown still runs.
        """
        for smtp in list(self._sessions):
            transport = smtp.transport  # after STARTTLS, the TLS transport over the socket
            if isinstance(transport, asyncio.Transport) and not transport.is_closing():
                transport.abort()
        super().cancel_tasks(stop_loop=stop_loop)

    def _create_server(self) -> Any:
        assert self._socket is not None, "start() binds the socket first"
        return self.loop.create_server(
            self._factory_invoker, sock=self._socket, ssl=self.ssl_context
        )


class MaildirDelivery:
    """The aiosmtpd handler of the sink: every message becomes one file in the Maildir."""

    def __init__(self, maildir: mailbox.Maildir) -> None:
        self.maildir = maildir

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        """Store the message exactly as received (after SMTP dot-unstuffing) and accept it."""
        content = envelope.original_content or b""
        # Maildir.add writes into tmp/ and renames into new/, so a reader never sees half a
        # message; on POSIX it keeps the bytes as they are (CRLF line ends included). It is
        # synchronous, so two sessions of the server's one event loop never interleave in it.
        key = self.maildir.add(content)
        return f"250 2.0.0 OK stored as {key}"


class Sink:
    """An aiosmtpd server on host:port that keeps every message in a Maildir."""

    def __init__(self, directory: Path, host: str = "127.0.0.1", port: int = DEFAULT_PORT) -> None:
        if not 0 <= port <= 65535:
            raise ValueError(f"port must be between 0 and 65535, not {port}")
        self.directory = Path(directory)
        self.host = loopback_host(host)
        self._port = port
        self._controller: LoopbackController | None = None

    @property
    def port(self) -> int:
        """The port the sink listens on: the real one once started, even when asked for 0."""
        return self._controller.port if self._controller is not None else self._port

    @property
    def running(self) -> bool:
        """True between :meth:`start` and :meth:`stop`."""
        return self._controller is not None

    def start(self) -> None:
        """Create the Maildir if needed and start listening (in a background thread).

        Raises :class:`PortInUse` (an ``OSError``) when another program holds the port.
        """
        if self._controller is not None:
            raise RuntimeError(f"the sink is already running on {self.host}:{self.port}")
        # mailbox.Maildir(create=True) makes tmp/new/cur only when the folder itself is new;
        # an existing empty folder (made by hand, or by a test) would be left without them.
        for sub in ("tmp", "new", "cur"):
            (self.directory / sub).mkdir(parents=True, exist_ok=True)
        handler = MaildirDelivery(mailbox.Maildir(self.directory, create=False))
        controller = LoopbackController(handler, host=self.host, port=self._port)
        controller.start()
        self._controller = controller

    def stop(self) -> None:
        """Stop listening. Messages already stored stay where they are."""
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def __enter__(self) -> Sink:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


def _header(message: Message, name: str) -> str:
    """The header's value decoded to one str ('' when missing), never an exception."""
    try:
        value = message.get(name)
    except (ValueError, TypeError, IndexError, LookupError):
        # A header the modern parser cannot make sense of: show it as it stands.
        raw = message.get_all(name, failobj=[])
        value = raw[0] if raw else None
    # Unfold (RFC 5322 2.2.3): a line break before white space is not part of the value.
    return "" if value is None else _FOLD.sub("", str(value)).strip()


def _age(path: Path) -> tuple[int, int, int, int, str]:
    """Sort key, oldest first: the delivery time mailbox.Maildir put into the file name.

    File times are too coarse (several messages land within one clock tick); the name holds
    seconds, microseconds and a per-process counter. Files named by another program fall
    back to their modification time.
    """
    match = _MAILDIR_NAME.match(path.name)
    if match:
        seconds, micro, count = (int(group) for group in match.groups())
        return (seconds, micro, 0, count, path.name)
    mtime_ns = path.stat().st_mtime_ns
    return (mtime_ns // 1_000_000_000, mtime_ns // 1000 % 1_000_000, 1, 0, path.name)


def message_files(directory: Path) -> list[Path]:
    """Every message file of the Maildir (``new/`` and ``cur/``), oldest first."""
    files = [
        path
        for sub in ("new", "cur")
        if (directory / sub).is_dir()
        for path in (directory / sub).iterdir()
        if path.is_file() and not path.name.startswith(".")
    ]
    return sorted(files, key=_age)


def summarize(directory: Path) -> list[dict[str, str]]:
    """One dict per stored message, oldest first, with its file and its main headers.

    Keys: ``file`` (the message file's path), ``date``, ``from``, ``to``, ``subject``,
    ``message_id``, ``in_reply_to``, ``references``; encoded words are decoded, a missing
    header is ``""``. A directory that does not exist yet (no sink has run) has no messages.
    """
    summaries = []
    for path in message_files(Path(directory)):
        with path.open("rb") as handle:
            message = BytesParser(policy=policy.default).parse(handle, headersonly=True)
        summary = {"file": str(path)}
        for key, name in SUMMARY_HEADERS:
            summary[key] = _header(message, name)
        summaries.append(summary)
    return summaries
