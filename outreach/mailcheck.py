"""``outreach mailboxes check``: can this mailbox log in? Every step, nothing sent.

For every auth kind: the OAuth token (fetched or refreshed when due), SMTP (connect, STARTTLS,
AUTH; no MAIL command), IMAP (login, INBOX, the Sent folder). Each step is one
:class:`Step`; a step that cannot run because an earlier one failed is not attempted. A check
never pauses a mailbox: it only looks.
"""

from __future__ import annotations

import asyncio
from dataclasses import asdict, dataclass
from typing import Any

import aiosmtplib

from outreach.config import Mailbox, _is_loopback
from outreach.errors import OutreachError
from outreach.mail.imap import MailboxImap
from outreach.mail.smtp import TokenRefused, xoauth2


@dataclass(frozen=True)
class Step:
    """One step's outcome: ``ok`` true, false, or None when skipped."""

    mailbox: str
    step: str
    ok: bool | None
    detail: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def line(self) -> str:
        mark = {True: "ok", False: "FAILED", None: "skipped"}[self.ok]
        return f"{self.mailbox}  {self.step}: {mark}  {self.detail}"


def check_mailbox(box: Mailbox, *, timeout: float = 20.0) -> list[Step]:
    """Every step of logging in to ``box``, in order."""
    steps: list[Step] = []
    token_ok = True
    if box.auth == "oauth2":
        token_ok = _token(box, steps)
    asyncio.run(_smtp(box, steps, token_ok, timeout))
    _imap(box, steps, token_ok)
    return steps


def _token(box: Mailbox, steps: list[Step]) -> bool:
    source = box.token_source
    try:
        source.check()
        before = source.info()
        source.access_token()
        after = source.info()
    except OutreachError as exc:
        steps.append(Step(box.email, "oauth token", False, exc.one_line()))
        return False
    assert after is not None and after.expires_at is not None
    fetched = before is None or before.refreshed_at != after.refreshed_at
    steps.append(
        Step(
            box.email,
            "oauth token",
            True,
            f"{source.provider.name} {source.provider.flow}: access token "
            + ("fetched" if fetched else "cached")
            + f", valid until {after.expires_at.strftime('%Y-%m-%d %H:%M UTC')}",
        )
    )
    return True


async def _smtp(box: Mailbox, steps: list[Step], token_ok: bool, timeout: float) -> None:
    where = f"{box.smtp_host}:{box.smtp_port}"
    smtp = aiosmtplib.SMTP(
        hostname=box.smtp_host,
        port=box.smtp_port,
        use_tls=box.smtp_security == "tls",
        start_tls=False,
        validate_certs=not _is_loopback(box.smtp_host),
        timeout=timeout,
    )
    try:
        response = await smtp.connect()
    except (aiosmtplib.SMTPException, OSError) as exc:
        steps.append(Step(box.email, "smtp connect", False, f"{where}: {_text(exc)}"))
        return
    try:
        tls = " (TLS)" if box.smtp_security == "tls" else ""
        steps.append(
            Step(box.email, "smtp connect", True, f"{where}{tls}: {_one_line(response.message)}")
        )
        if box.smtp_security == "starttls":
            try:
                await smtp.starttls()
            except (aiosmtplib.SMTPException, OSError) as exc:
                steps.append(Step(box.email, "smtp starttls", False, _text(exc)))
                return
            steps.append(Step(box.email, "smtp starttls", True, "TLS on"))
        login = box.smtp_login
        if not login:
            steps.append(Step(box.email, "smtp auth", None, "no smtp_username: no login"))
            return
        if box.auth == "oauth2" and not token_ok:
            steps.append(Step(box.email, "smtp auth", None, "no token to log in with"))
            return
        try:
            if box.auth == "oauth2":
                answer = await xoauth2(smtp, box, login, pause=False)
            else:
                password = box.password()
                if password is None:
                    steps.append(
                        Step(box.email, "smtp auth", False, f"{box.password_env} is not set")
                    )
                    return
                answer = (await smtp.login(login, password)).message
        except TokenRefused as exc:
            steps.append(Step(box.email, "smtp auth", False, f"{exc.reason} (twice)"))
            return
        except OutreachError as exc:
            steps.append(Step(box.email, "smtp auth", False, exc.one_line()))
            return
        except (aiosmtplib.SMTPException, OSError) as exc:
            steps.append(Step(box.email, "smtp auth", False, _text(exc)))
            return
        kind = "XOAUTH2" if box.auth == "oauth2" else "password"
        steps.append(Step(box.email, "smtp auth", True, f"{kind} as {login}: {_one_line(answer)}"))
    finally:
        try:
            await smtp.quit()
        except (aiosmtplib.SMTPException, OSError):
            smtp.close()


def _imap(box: Mailbox, steps: list[Step], token_ok: bool) -> None:
    if not box.imap_host:
        steps.append(Step(box.email, "imap", None, "no imap_host: replies are not read"))
        return
    if box.auth == "oauth2" and not token_ok:
        steps.append(Step(box.email, "imap login", None, "no token to log in with"))
        return
    try:
        imap = MailboxImap.for_mailbox(box)
        imap.pause_on_refusal = False
        imap.connect()
    except OutreachError as exc:
        steps.append(Step(box.email, "imap login", False, exc.one_line()))
        return
    try:
        kind = "XOAUTH2" if box.auth == "oauth2" else "password"
        steps.append(
            Step(
                box.email,
                "imap login",
                True,
                f"{kind} as {imap.username} at {imap.host}:{imap.port} ({imap.security})",
            )
        )
        try:
            count = imap.count("INBOX")
            steps.append(Step(box.email, "imap inbox", True, f"{count} message(s)"))
        except OutreachError as exc:
            steps.append(Step(box.email, "imap inbox", False, exc.one_line()))
        try:
            steps.append(Step(box.email, "imap sent folder", True, imap.sent_folder()))
        except OutreachError as exc:
            steps.append(Step(box.email, "imap sent folder", False, exc.one_line()))
    finally:
        imap.close()


def _one_line(text: object) -> str:
    return " ".join(str(text).split())[:200]


def _text(exc: BaseException) -> str:
    return _one_line(exc) or type(exc).__name__
