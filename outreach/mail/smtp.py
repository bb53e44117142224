"""SMTP delivery with aiosmtplib: one reused connection per mailbox, every reply classified.

The dispatcher never sees an exception from here: :meth:`SmtpTransport.send` turns every
server answer and every network failure into an :class:`Outcome` that says what to do next.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Literal, Protocol

import aiosmtplib

from outreach.config import Mailbox, _is_loopback
from outreach.errors import ClientRefused, ConfigError, GrantRevoked, TokenEndpointDown
from outreach.mail.wire import WireMessage

# What a transport sends: the bytes of outreach.mail.wire.render_message (the send path), or an
# EmailMessage (which aiosmtplib flattens itself), or bytes made elsewhere.
Payload = WireMessage | EmailMessage | bytes
_LINE_ENDS = re.compile(rb"\r\n|\r|\n")  # what SMTP sends as CRLF (counted for SIZE)

# sent: accepted. retry: a 4xx, or the connection broke during this message; try it again
# later. unreachable: no session could be opened (refused, timeout, TLS): the mailbox waits,
# the message is untouched. bounce: the recipient does not exist (5.1.x, or a bare 550/551/553
# at RCPT). auth: the mailbox itself is refused (login, sender, relay or policy 5.7.x): pause
# the mailbox. failed: a permanent refusal of this one message.
Kind = Literal["sent", "retry", "unreachable", "bounce", "auth", "failed"]


@dataclass(frozen=True)
class Outcome:
    kind: Kind
    code: int | None
    text: str

    def __str__(self) -> str:
        return f"{self.code} {self.text}" if self.code else self.text


class Transport(Protocol):
    """What the dispatcher needs of a mailbox's outgoing connection."""

    def check(self) -> None: ...

    async def send(self, message: Payload, mail_from: str, rcpt: str) -> Outcome: ...

    async def close(self) -> None: ...


def _status_class(text: str) -> str | None:
    match = re.match(r"\s*([245])\.(\d{1,3})\.\d{1,3}", text)
    return f"{match.group(1)}.{match.group(2)}" if match else None


def classify(code: int, text: str, *, at_rcpt: bool) -> Outcome:
    """What an SMTP error reply means for the message and the mailbox.

    Only an answer about the address is a bounce: a relay or policy refusal (5.7.x) says
    the mailbox is misconfigured or blocked, and marking a whole list invalid for it would be
    a disaster, so it pauses the mailbox instead.
    """
    text = " ".join(text.split())
    status = _status_class(text)
    if code in (530, 534, 535, 538) or status == "5.7":
        return Outcome("auth", code, text)
    if 400 <= code < 500 or status == "5.2" and "5.2.1" not in text:
        return Outcome("retry", code, text)  # 5.2.2 mailbox full: temporary in practice
    if status in ("5.1", "5.2") or (status is None and at_rcpt and code in (550, 551, 553)):
        return Outcome("bounce", code, text)
    return Outcome("failed", code, text)


async def xoauth2(smtp: aiosmtplib.SMTP, box: Mailbox, login: str, *, pause: bool = True) -> str:
    """AUTH XOAUTH2 with the mailbox's access token; a refused token is retried once with a
    new one (it may have been revoked while cached), then the mailbox pauses (unless not
    ``pause``: a check only looks). Returns the server's answer."""
    tokens = box.token_source
    token = await asyncio.to_thread(tokens.access_token)
    try:
        return str((await smtp.auth_xoauth2(login, token)).message)
    except aiosmtplib.SMTPAuthenticationError:
        pass
    fresh = await asyncio.to_thread(tokens.access_token, refused=token)
    try:
        return str((await smtp.auth_xoauth2(login, fresh)).message)
    except aiosmtplib.SMTPAuthenticationError as again:
        text = f"SMTP {again.code} {' '.join(again.message.split())}"
        if not pause:
            raise TokenRefused(text) from None
        raise TokenRefused(await asyncio.to_thread(tokens.refused, text)) from None


class TokenRefused(Exception):
    """A fresh OAuth token was refused too; ``reason`` is what the mailbox is paused with."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class SmtpTransport:
    """One mailbox's SMTP connection, opened on first use and reused until it fails."""

    def __init__(self, mailbox: Mailbox, timeout: float = 60.0) -> None:
        if mailbox.smtp_security == "none" and not _is_loopback(mailbox.smtp_host):
            raise ConfigError(
                "plaintext SMTP is only allowed to a loopback host",
                field=f"mailboxes {mailbox.email}: smtp_security",
            )
        self.mailbox = mailbox
        self.timeout = timeout
        self._smtp: aiosmtplib.SMTP | None = None

    async def _connect(self) -> aiosmtplib.SMTP:
        box = self.mailbox
        self.check()
        password = box.password()
        smtp = aiosmtplib.SMTP(
            hostname=box.smtp_host,
            port=box.smtp_port,
            use_tls=box.smtp_security == "tls",
            start_tls=True if box.smtp_security == "starttls" else False,
            # Certificates are always checked, except on loopback (a local relay or test).
            validate_certs=not _is_loopback(box.smtp_host),
            timeout=self.timeout,
        )
        await smtp.connect()
        if smtp.is_ehlo_or_helo_needed:  # the extensions are known before the first MAIL
            try:
                await smtp.ehlo()
            except aiosmtplib.SMTPHeloError:
                await smtp.helo()
        login = box.smtp_login
        if login:  # a relay that needs no login (a local sink) has no username
            try:
                if box.auth == "oauth2":
                    await xoauth2(smtp, box, login)
                else:
                    await smtp.login(login, password or "")
            except BaseException:
                smtp.close()  # a refused login must not leave the connection open
                raise
        return smtp

    def check(self) -> None:
        """Raise ConfigError now, before anything is claimed, if this mailbox cannot log in."""
        box = self.mailbox
        if box.auth == "oauth2":
            box.token_source.check()
            return
        if box.smtp_username and box.password() is None:
            raise ConfigError(
                f"environment variable {box.password_env} is not set"
                if box.password_env
                else "smtp_username is set but no password_env names its password",
                field=f"mailboxes {box.email}: password_env",
            )

    async def send(self, message: Payload, mail_from: str, rcpt: str) -> Outcome:
        """Send one message to ``rcpt``; every answer and failure comes back as an Outcome."""
        if self._smtp is None or not self._smtp.is_connected:
            try:
                self._smtp = await self._connect()
            except TokenRefused as exc:
                await self._drop()
                return Outcome("auth", None, exc.reason)
            except (GrantRevoked, ClientRefused) as exc:
                # The token source has paused the mailbox already, with these words.
                await self._drop()
                return Outcome("auth", None, exc.one_line())
            except TokenEndpointDown as exc:
                # Transient: the mailbox waits and tries again; the message is untouched.
                await self._drop()
                return Outcome("unreachable", None, exc.one_line())
            except aiosmtplib.SMTPAuthenticationError as exc:
                await self._drop()
                return Outcome("auth", exc.code, " ".join(exc.message.split()))
            except aiosmtplib.SMTPResponseException as exc:
                await self._drop()
                if 500 <= exc.code < 600:
                    return Outcome("auth", exc.code, " ".join(exc.message.split()))
                return Outcome("unreachable", exc.code, " ".join(exc.message.split()))
            except ConfigError:
                raise
            except Exception as exc:  # noqa: BLE001 - refused, timeout, TLS, DNS: all "no session"
                await self._drop()
                return Outcome("unreachable", None, f"cannot connect: {exc or type(exc).__name__}")
        try:
            if isinstance(message, EmailMessage):
                errors, response = await self._smtp.send_message(
                    message, sender=mail_from, recipients=[rcpt]
                )
            else:
                errors, response = {}, await self._envelope(self._smtp, message, mail_from, rcpt)
        except aiosmtplib.SMTPRecipientsRefused as exc:  # send_message's
            refused = exc.recipients[0]
            return classify(refused.code, refused.message, at_rcpt=True)
        except aiosmtplib.SMTPRecipientRefused as exc:  # _envelope's
            return classify(exc.code, exc.message, at_rcpt=True)
        except aiosmtplib.SMTPAuthenticationError as exc:
            await self._drop()
            return Outcome("auth", exc.code, " ".join(exc.message.split()))
        except aiosmtplib.SMTPSenderRefused as exc:
            outcome = classify(exc.code, exc.message, at_rcpt=False)
            return Outcome("auth", exc.code, outcome.text) if exc.code >= 500 else outcome
        except (
            aiosmtplib.SMTPServerDisconnected,
            aiosmtplib.SMTPConnectError,
            aiosmtplib.SMTPTimeoutError,
            OSError,
        ) as exc:
            await self._drop()
            return Outcome("retry", None, f"connection: {exc}")
        except aiosmtplib.SMTPResponseException as exc:
            return classify(exc.code, exc.message, at_rcpt=False)
        except aiosmtplib.SMTPNotSupported:
            # A permanent refusal of this message (its address), not trouble with the server.
            return Outcome("failed", None, "the server takes no non-ASCII address (no SMTPUTF8)")
        except aiosmtplib.SMTPException as exc:
            await self._drop()
            return Outcome("retry", None, f"smtp: {exc}")
        except Exception as exc:  # noqa: BLE001 - never leave a claimed message without an outcome
            await self._drop()
            return Outcome("retry", None, f"{type(exc).__name__}: {exc}")
        if errors:
            code, text = next(iter(errors.values()))
            return classify(code, text, at_rcpt=True)
        return Outcome("sent", 250, " ".join(response.split()))

    @staticmethod
    async def _envelope(
        smtp: aiosmtplib.SMTP, message: WireMessage | bytes, mail_from: str, rcpt: str
    ) -> str:
        """MAIL, RCPT and DATA for one recipient: what ``sendmail`` does, less its second
        pass over the addresses (``mail`` and ``rcpt`` check them, once each) and its second
        pass over the bytes to count them (a WireMessage has CRLF line ends already, so its
        length is its SIZE). Returns the server's answer to DATA."""
        if isinstance(message, WireMessage):
            data, size = message.data, len(message.data)
        else:
            data, size = message, len(_LINE_ENDS.sub(b"\r\n", message))
        # As send_message does: a non-ASCII address needs SMTPUTF8. The bytes are 7-bit, so no
        # BODY=8BITMIME.
        utf8 = not (mail_from.isascii() and rcpt.isascii())
        if utf8 and not smtp.supports_extension("smtputf8"):
            raise aiosmtplib.SMTPNotSupported("SMTPUTF8 is not supported by this server")
        options = ["SMTPUTF8"] if utf8 else []
        if smtp.supports_extension("size"):
            options.insert(0, f"size={size}")
        encoding = "utf-8" if utf8 else "ascii"
        try:
            await smtp.mail(mail_from, options=options, encoding=encoding)
            await smtp.rcpt(rcpt, encoding=encoding)
            return (await smtp.data(data)).message
        except aiosmtplib.SMTPResponseException:
            # As sendmail does: the envelope is reset, so the connection serves the next one.
            try:
                await smtp.rset()
            except (ConnectionError, aiosmtplib.SMTPResponseException):
                pass
            raise

    async def _drop(self) -> None:
        smtp, self._smtp = self._smtp, None
        if smtp is not None:
            try:
                smtp.close()
            except Exception:  # noqa: BLE001 - already broken; nothing more to do
                pass

    async def close(self) -> None:
        smtp, self._smtp = self._smtp, None
        if smtp is not None and smtp.is_connected:
            try:
                await smtp.quit()
            except aiosmtplib.SMTPException:
                smtp.close()
