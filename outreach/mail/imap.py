"""One mailbox over IMAP: log in, find the Sent folder, append, search and fetch by UID.

Synchronous (imapclient); the daemon runs it in a worker thread, one ``MailboxImap`` per
thread. Reading never changes the rep's mail: folders are selected read-only (EXAMINE) and
bodies fetched with ``BODY.PEEK[]``, so nothing becomes ``\\Seen``. New mail is found
incrementally by UID, and a changed UIDVALIDITY means the caller starts over.

Every failure is an :class:`ImapError`, one line naming the server, never the password.
"""

from __future__ import annotations

import imaplib
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any

from imapclient import IMAPClient
from imapclient.exceptions import IMAPClientError, LoginError

from outreach.config import _is_loopback
from outreach.errors import OutreachError

if TYPE_CHECKING:
    from outreach.config import Mailbox
    from outreach.grants import TokenSource

SECURITIES = ("starttls", "tls", "none")
# Tried in this order when no folder carries the \Sent SPECIAL-USE flag (RFC 6154).
SENT_NAMES = ("Sent", "Sent Items", "Sent Messages", "INBOX.Sent", "Lähetetyt", "Skickat")
_FETCH_BATCH = 200  # UIDs per FETCH: keeps command lines short on big first runs


class ImapError(OutreachError):
    """The IMAP server could not be reached, refused the login, or refused a command."""


class MailboxImap:
    """A connection to one mailbox's IMAP server.

    ``with MailboxImap.for_mailbox(box) as imap: imap.append(imap.sent_folder(), raw, when)``
    """

    def __init__(
        self,
        host: str,
        port: int,
        security: str,
        username: str,
        password: str | None,
        *,
        timeout: float = 30,
        ssl_context: ssl.SSLContext | None = None,
        tokens: TokenSource | None = None,
    ) -> None:
        """Nothing is sent until ``with`` (or :meth:`connect`).

        Certificates are verified unless ``host`` is loopback (a local relay or test server);
        pass ``ssl_context`` to trust something else, e.g. exactly one self-signed certificate.
        With ``tokens`` the login is ``AUTHENTICATE XOAUTH2`` with its access token.
        """
        if security not in SECURITIES:
            raise ImapError(f"unknown IMAP security '{security}'", hint="use starttls, tls or none")
        if security == "none" and not _is_loopback(host):
            raise ImapError(
                f"plaintext IMAP is only allowed to a loopback host, not {host}",
                hint="use imap_security = starttls or tls",
            )
        self.host = host
        self.port = port
        self.security = security
        self.username = username
        self._password = password
        self._tokens = tokens
        self._sent_tokens: list[str] = []  # masked in error texts, like the password
        # A token refused twice pauses the mailbox; `outreach mailboxes check` only looks.
        self.pause_on_refusal = True
        self.timeout = timeout
        self.ssl_context = ssl_context or _default_context(host)
        self._client: IMAPClient | None = None

    @classmethod
    def for_mailbox(cls, mailbox: Mailbox) -> MailboxImap:
        """The IMAP connection a ``[[mailboxes]]`` entry describes (not yet connected)."""
        if not mailbox.imap_host:
            raise ImapError(
                f"mailbox {mailbox.email} has no imap_host",
                hint="set imap_host in its [[mailboxes]] entry",
            )
        security = mailbox.imap_security
        port = mailbox.imap_port or (993 if security == "tls" else 143)
        if mailbox.auth == "oauth2":
            return cls(
                mailbox.imap_host,
                port,
                security,
                mailbox.imap_username or mailbox.email,
                None,
                tokens=mailbox.token_source,
            )
        password = mailbox.password()
        if password is None:
            raise ImapError(
                f"no IMAP password for {mailbox.email}",
                hint=f"set the environment variable {mailbox.password_env}"
                if mailbox.password_env
                else "name an environment variable with password_env",
            )
        return cls(
            mailbox.imap_host,
            port,
            security,
            mailbox.imap_username or mailbox.email,
            password,
        )

    # Connection

    def connect(self) -> None:
        """Connect (TLS or STARTTLS as configured) and log in."""
        if self._client is not None:
            return
        with self._errors("connect"):
            client = IMAPClient(
                self.host,
                port=self.port,
                ssl=self.security == "tls",
                ssl_context=self.ssl_context,
                timeout=self.timeout,
            )
        try:
            if self.security == "starttls":
                with self._errors("STARTTLS"):
                    # Never fall back to plaintext when the server does not offer it.
                    if not client.has_capability("STARTTLS"):
                        raise ImapError(
                            f"IMAP {self.host}:{self.port} does not offer STARTTLS",
                            hint="use imap_security = tls (port 993)",
                        )
                    client.starttls(self.ssl_context)
            with self._errors("login"):
                if self._tokens is not None:
                    self._xoauth2(client)
                else:
                    try:
                        client.login(self.username, self._password or "")
                    except LoginError as exc:
                        raise ImapError(
                            f"IMAP login as {self.username} at {self.host}:{self.port} failed: "
                            f"{self._scrub(exc)}",
                            hint="check imap_username and the password in the environment",
                        ) from None
        except BaseException:
            _quietly_shutdown(client)
            raise
        self._client = client

    def _xoauth2(self, client: IMAPClient) -> None:
        """AUTHENTICATE XOAUTH2; a refused token is retried once with a new one, then the
        mailbox is paused with the server's words."""
        assert self._tokens is not None
        refused: str | None = None
        for attempt in (1, 2):
            try:
                token = self._tokens.access_token(refused=refused)
            except OutreachError as exc:  # no token: the endpoint, the key, no grant yet
                raise ImapError(exc.message, hint=exc.hint) from None
            self._sent_tokens.append(token)
            try:
                client.oauth2_login(self.username, token)
                return
            except LoginError as exc:
                if attempt == 2:
                    text = f"IMAP {self.host}:{self.port} {self._scrub(exc)}"
                    if not self.pause_on_refusal:
                        raise ImapError(f"{text} (a fresh token too)") from None
                    raise ImapError(self._tokens.refused(text)) from None
                refused = token

    def close(self) -> None:
        """Log out; a connection that already broke is just dropped."""
        client, self._client = self._client, None
        if client is not None:
            try:
                client.logout()
            except (IMAPClientError, imaplib.IMAP4.error, OSError):
                _quietly_shutdown(client)

    def __enter__(self) -> MailboxImap:
        self.connect()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # Folders and messages

    def sent_folder(self) -> str:
        """The folder the rep's sent mail goes to.

        The one with the ``\\Sent`` SPECIAL-USE flag when the server lists one, else the first
        existing of :data:`SENT_NAMES` (exact name first, then ignoring case).
        """
        client = self._connected
        with self._errors("LIST"):
            folders = client.list_folders()
        for flags, _delimiter, name in folders:
            if any(_text(flag).lower() == "\\sent" for flag in flags):
                return str(name)
        names = [str(name) for _flags, _delimiter, name in folders]
        for wanted in SENT_NAMES:
            if wanted in names:
                return wanted
        folded = {name.casefold(): name for name in names}
        for wanted in SENT_NAMES:
            if wanted.casefold() in folded:
                return folded[wanted.casefold()]
        raise ImapError(
            f"no Sent folder on {self.host} for {self.username}",
            hint="none has the \\Sent flag, and none is named " + ", ".join(SENT_NAMES),
        )

    def count(self, folder: str) -> int:
        """How many messages ``folder`` holds (selected read-only)."""
        client = self._connected
        with self._errors(f"EXAMINE {folder}"):
            status = client.select_folder(folder, readonly=True)
        return int(status[b"EXISTS"])

    def append(self, folder: str, message: bytes, when: datetime) -> None:
        """APPEND ``message`` to ``folder``, already ``\\Seen``, with ``when`` as internal date.

        ``when`` should be timezone-aware (the send time); a naive one is taken as local time.
        """
        client = self._connected
        with self._errors(f"APPEND to {folder}"):
            client.append(folder, message, flags=(b"\\Seen",), msg_time=when)

    def has_message_id(self, folder: str, message_id: str) -> bool:
        """Whether ``folder`` holds a message with this Message-ID (read-only; flags untouched)."""
        # HEADER search matches substrings: the angle brackets make it the whole id.
        bare = message_id.strip().removeprefix("<").removesuffix(">")
        if not bare or any(ch in bare for ch in "<>\r\n\0"):
            raise ImapError(f"not a Message-ID: {message_id!r}")
        wanted = f"<{bare}>"
        client = self._connected
        with self._errors(f"SEARCH in {folder}"):
            client.select_folder(folder, readonly=True)
            return bool(client.search(["HEADER", "Message-ID", wanted]))

    def fetch_new(
        self, folder: str, uidvalidity: int | None, last_uid: int
    ) -> tuple[int, list[tuple[int, bytes]]]:
        """Messages with a UID above ``last_uid``: ``(UIDVALIDITY, [(uid, raw RFC 822 bytes)])``.

        When the folder's UIDVALIDITY is not ``uidvalidity`` (and that is not None), the old
        UIDs mean nothing any more: every message is returned and the caller starts over.
        Bodies are read with ``BODY.PEEK[]`` in a read-only selection, so nothing is marked
        ``\\Seen``.
        """
        client = self._connected
        with self._errors(f"FETCH from {folder}"):
            status = client.select_folder(folder, readonly=True)
            current = int(status[b"UIDVALIDITY"])
            if uidvalidity is not None and uidvalidity != current:
                last_uid = 0
            # "N:*" always matches the highest UID, even when it is below N: filter again.
            uids = sorted(
                uid for uid in client.search(["UID", f"{last_uid + 1}:*"]) if uid > last_uid
            )
            out: list[tuple[int, bytes]] = []
            for start in range(0, len(uids), _FETCH_BATCH):
                batch = uids[start : start + _FETCH_BATCH]
                fetched = client.fetch(batch, ["BODY.PEEK[]"])
                for uid in batch:
                    data = fetched.get(uid)
                    if data is None:  # expunged between SEARCH and FETCH
                        continue
                    out.append((uid, bytes(data[b"BODY[]"])))
            return current, out

    def thread_references(self, folder: str) -> list[list[int]]:
        """``UID THREAD REFERENCES UTF-8 ALL``: the UIDs of each thread, as mail clients group
        them (RFC 5256), in the server's order; a thread's nested branches are flattened."""
        client = self._connected
        with self._errors(f"THREAD in {folder}"):
            client.select_folder(folder, readonly=True)
            threads = client.thread("REFERENCES", "ALL", "UTF-8")
        return [_flatten(thread) for thread in threads]

    # Waiting for new mail

    def supports_idle(self) -> bool:
        with self._errors("CAPABILITY"):
            return b"IDLE" in self._connected.capabilities()

    def watch(
        self,
        folder: str,
        stop: threading.Event,
        on_new: Callable[[], None],
        *,
        renew_seconds: float = 24 * 60,
        check_seconds: float = 1.0,
    ) -> None:
        """Wait in IDLE (RFC 2177) on ``folder``, selected read-only, until ``stop`` is set;
        call ``on_new`` each time the server announces new mail. IDLE is renewed well inside
        the 29 minutes after which a server may drop an idle client."""
        client = self._connected
        with self._errors(f"IDLE {folder}"):
            client.select_folder(folder, readonly=True)
            client.idle()
            started = time.monotonic()
            try:
                while not stop.is_set():
                    responses = client.idle_check(timeout=check_seconds)
                    if any(_announces_mail(r) for r in responses):
                        on_new()
                    if time.monotonic() - started > renew_seconds:
                        client.idle_done()
                        client.idle()
                        started = time.monotonic()
            finally:
                _quietly(client.idle_done)  # leave IDLE so that the logout is answered

    # Helpers

    @property
    def _connected(self) -> IMAPClient:
        if self._client is None:
            raise ImapError(
                f"not connected to IMAP {self.host}", hint="use `with MailboxImap(...) as imap`"
            )
        return self._client

    @contextmanager
    def _errors(self, action: str) -> Iterator[None]:
        """Run IMAP commands; any failure becomes one ImapError line naming the server."""
        try:
            yield
        except ImapError:
            raise
        except ssl.SSLCertVerificationError as exc:
            raise ImapError(
                f"IMAP {self.host}:{self.port}: certificate not trusted ({exc.verify_message})",
                hint="the server's certificate must be valid for this host name",
            ) from None
        except TimeoutError:
            raise ImapError(
                f"IMAP {action} at {self.host}:{self.port} timed out after {self.timeout:g} s"
            ) from None
        except (IMAPClientError, imaplib.IMAP4.error, OSError) as exc:
            raise ImapError(
                f"IMAP {action} at {self.host}:{self.port} failed: {self._scrub(exc)}"
            ) from None

    def _scrub(self, exc: BaseException) -> str:
        """The error text on one line, the password masked should a server echo it."""
        text = " ".join(str(exc).split()) or type(exc).__name__
        for secret in (self._password, *self._sent_tokens):
            if secret:
                text = text.replace(secret, "***")
        return text


def _announces_mail(response: Any) -> bool:
    """``* 3 EXISTS`` (or ``RECENT``): a message arrived in the selected folder."""
    return (
        isinstance(response, tuple)
        and len(response) > 1
        and response[1]
        in (
            b"EXISTS",
            b"RECENT",
        )
    )


def _quietly(action: Callable[[], Any]) -> None:
    try:
        action()
    except (IMAPClientError, imaplib.IMAP4.error, OSError):
        pass


def _default_context(host: str) -> ssl.SSLContext:
    context = ssl.create_default_context()
    if _is_loopback(host):
        # A local relay or test server with a self-signed certificate: the traffic never
        # leaves the machine, so there is nothing a certificate could protect.
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _flatten(thread: Any) -> list[int]:
    if isinstance(thread, int):
        return [thread]
    return [uid for item in thread for uid in _flatten(item)]


def _quietly_shutdown(client: IMAPClient) -> None:
    try:
        client.shutdown()
    except (IMAPClientError, imaplib.IMAP4.error, OSError):
        pass
