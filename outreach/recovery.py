"""After a crash or a lapsed lease: claims back to the queue, interrupted sends made
``unknown``, and unknown ones settled from the mailbox's Sent folder where it has one."""

from __future__ import annotations

import random
from datetime import datetime, timedelta
from email.message import EmailMessage

from sqlmodel import func, select

from outreach import clock, lifecycle
from outreach.config import Mailbox
from outreach.errors import OutreachError
from outreach.mail.imap import MailboxImap
from outreach.mail.wire import WireMessage
from outreach.models import Message, MessageState
from outreach.outcomes import Report
from outreach.sequencing import step_done
from outreach.workspace import Workspace


def recover(ws: Workspace, now: datetime, *, everything: bool = False) -> int:
    """Claims never handed to SMTP go back to the queue; messages handed to SMTP that never
    got an answer become ``unknown`` (never resent by themselves). ``everything``: the caller
    holds the SQLite lock, so every other process is dead. Returns how many became unknown."""
    lease = timedelta(seconds=ws.config.settings.daemon.unknown_after_seconds)
    with ws.store.engine.begin() as conn:
        lifecycle.release(conn, now, expired=not everything)
        return lifecycle.mark_unknown(conn, now, lease, everything=everything)


def count_unknown(ws: Workspace) -> int:
    with ws.store.session() as session:
        return session.exec(
            select(func.count()).select_from(Message).where(Message.state == MessageState.UNKNOWN)
        ).one()


def settle_from_sent_folders(ws: Workspace, report: Report, rng: random.Random) -> None:
    """An ``unknown`` message found in its mailbox's Sent folder did leave: mark it sent and
    let the sequence go on. One not found stays unknown (it may have left without a copy being
    kept), for the operator to resolve."""
    with ws.store.session() as session:
        unknown = session.exec(select(Message).where(Message.state == MessageState.UNKNOWN)).all()
    by_box: dict[str, list[Message]] = {}
    for message in unknown:
        by_box.setdefault(message.sender, []).append(message)
    for email, messages in by_box.items():
        box = next((b for b in ws.config.mailboxes if b.email == email), None)
        if box is None or not box.imap_host:
            report.unknown += len(messages)
            continue
        try:
            with MailboxImap.for_mailbox(box) as imap:
                folder = imap.sent_folder()
                found = [m for m in messages if imap.has_message_id(folder, m.message_id or "")]
        except OutreachError as exc:
            report.notes.append(f"{email}: cannot check the Sent folder: {exc.one_line()}")
            report.unknown += len(messages)
            continue
        for message in found:
            with ws.store.session() as session:
                assert message.id is not None
                if lifecycle.settle_from_sent_folder(session, message.id):
                    settled = session.get(Message, message.id)
                    assert settled is not None
                    step_done(ws, session, settled, clock.now(), rng)
        report.settled += len(found)
        report.unknown += len(messages) - len(found)


class SentFolder:
    """A mailbox's Sent folder over IMAP, opened on first use (in a worker thread)."""

    def __init__(self, box: Mailbox) -> None:
        self.box = box
        self._imap: MailboxImap | None = None
        self._folder: str | None = None

    def append(self, email: WireMessage | EmailMessage, report: Report) -> None:
        """Keep a copy; a failure is reported, never fatal: the message has already left."""
        try:
            if self._imap is None:
                self._imap = MailboxImap.for_mailbox(self.box)
                self._imap.connect()
                self._folder = self._imap.sent_folder()
            assert self._folder is not None
            self._imap.append(self._folder, email.as_bytes(), clock.now())
        except OutreachError as exc:
            report.notes.append(f"{self.box.email}: not saved to Sent: {exc.one_line()}")
            self.close()

    def close(self) -> None:
        imap, self._imap = self._imap, None
        if imap is not None:
            try:
                imap.close()
            except OutreachError:
                pass
