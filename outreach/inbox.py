"""Watch the mailboxes: match inbound mail to prospects and apply replies, auto-replies,
bounces and unsubscribe requests.

Each folder is read incrementally by UID (its UIDVALIDITY remembered), read-only, so the rep's
mail is never marked read or moved. Each message is applied in one transaction together with
the folder's cursor, so it is applied exactly once whatever stops the process. A reply is
applied in a transaction that ends the prospect's enrollments; the dispatcher's last look
before SMTP reads that state, so a reply processed before a send stops it.
"""

from __future__ import annotations

import email
import email.policy
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from email.message import EmailMessage
from email.utils import getaddresses, parsedate_to_datetime
from typing import Any

from sqlmodel import Session, col, func, select

from outreach import handoff, lifecycle, reputation
from outreach.config import Mailbox, SendingDefaults
from outreach.errors import OutreachError
from outreach.mail.classify import (
    Classified,
    classify,
    may_be_bounce,
    referenced_ids,
    returned_ids,
)
from outreach.mail.imap import MailboxImap
from outreach.models import Enrollment, Event, InboxCursor, Message, Prospect
from outreach.prospect_csv import normalize_email
from outreach.sequencing import (
    end_enrollment,
    live_enrollments,
    stop_for_bounce,
    suppress_in,
    suppression_value,
)
from outreach.workspace import Workspace

# Colleagues are found by e-mail domain, except on these shared ones, where by company name.
FREEMAIL = frozenset(
    {
        "gmail.com",
        "googlemail.com",
        "outlook.com",
        "hotmail.com",
        "live.com",
        "msn.com",
        "yahoo.com",
        "icloud.com",
        "me.com",
        "proton.me",
        "protonmail.com",
        "gmx.com",
        "luukku.com",
        "suomi24.fi",
        "kolumbus.fi",
        "telia.com",
        "elisanet.fi",
    }
)
# Automatic messages that say nothing about the prospect being away.
NOT_AN_ABSENCE = ("read receipt", "delivery report without a failure")
HEADERS_KEPT = (
    "From",
    "To",
    "Cc",
    "Date",
    "Subject",
    "Message-ID",
    "In-Reply-To",
    "References",
    "Auto-Submitted",
    "X-Autoreply",
    "X-Autorespond",
    "Precedence",
    "Content-Type",
)


@dataclass
class PollReport:
    """What one poll applied, per kind, and what it could not read."""

    seen: int = 0
    replies: list[dict[str, str]] = field(default_factory=list)
    auto_replies: int = 0
    bounces: int = 0
    unsubscribes: int = 0
    paused_colleagues: int = 0
    ignored: int = 0
    notes: list[str] = field(default_factory=list)
    # One line per message applied, naming the mailbox and the prospect (the daemon's log).
    events: list[str] = field(default_factory=list)
    mailbox: str = ""  # the mailbox being read, for those lines

    def event(self, line: str) -> None:
        self.events.append(f"{self.mailbox}: {line}" if self.mailbox else line)


def poll(ws: Workspace, now: datetime) -> PollReport:
    """Read every configured mailbox's watched folders once and apply what is new."""
    report = PollReport()
    for box in ws.config.mailboxes:
        if not box.imap_host:
            continue
        try:
            poll_mailbox(ws, box, now, report)
        except OutreachError as exc:
            report.notes.append(f"{box.email}: {exc.one_line()}")
    return report


def poll_mailbox(ws: Workspace, box: Mailbox, now: datetime, report: PollReport) -> None:
    report.mailbox = box.email
    with MailboxImap.for_mailbox(box) as imap:
        for folder in ws.config.settings.replies.folders:
            with ws.store.session() as session:
                cursor = session.get(InboxCursor, (box.email, folder))
                uidvalidity = cursor.uidvalidity if cursor else None
                last_uid = cursor.last_uid if cursor else 0
            current, items = imap.fetch_new(folder, uidvalidity, last_uid)
            if uidvalidity is not None and current != uidvalidity:
                report.notes.append(
                    f"{box.email} {folder}: UIDVALIDITY changed; read again from the start "
                    "(messages already applied are recognised and not applied twice)"
                )
            if not items:
                with ws.store.session() as session:
                    _advance_cursor(session, box.email, folder, current, last_uid, now)
            for uid, raw in items:
                message = email.message_from_bytes(raw, policy=email.policy.default)
                assert isinstance(message, EmailMessage)
                with ws.store.session() as session:
                    apply_message(ws, session, message, now, report)
                    _advance_cursor(session, box.email, folder, current, uid, now)
                report.seen += 1


def _advance_cursor(
    session: Session, mailbox: str, folder: str, uidvalidity: int, last_uid: int, now: datetime
) -> None:
    cursor = session.get(InboxCursor, (mailbox, folder)) or InboxCursor(
        mailbox=mailbox, folder=folder
    )
    if cursor.uidvalidity != uidvalidity:
        cursor.last_uid = 0
    cursor.uidvalidity = uidvalidity
    cursor.last_uid = max(cursor.last_uid, last_uid)
    cursor.polled_at = now
    session.add(cursor)


def apply_message(
    ws: Workspace, session: Session, message: EmailMessage, now: datetime, report: PollReport
) -> str:
    """Apply one inbound message; returns what it was taken for."""
    own = {box.email for box in ws.config.mailboxes}
    sender = _address(message.get("From", ""))
    if sender in own:
        report.ignored += 1
        return "own"  # a copy of our own mail (it carries our Message-ID): never a reply
    # Match before classifying: the classifier costs milliseconds a message, and most of a
    # mailbox is not ours. Only a bounce can be ours without naming us: its failed addresses
    # are what the classifier reads.
    ours = _our_message(session, referenced_ids(message))
    prospect = (
        session.get(Prospect, ours.prospect_id) if ours else _prospect_by_address(session, sender)
    )
    if prospect is None and not may_be_bounce(message):
        report.ignored += 1
        return "unmatched"
    message_id = str(message.get("Message-ID", "")).strip()
    if (
        message_id
        and session.exec(
            select(Event.id).where(
                col(Event.kind).in_(("reply", "auto_reply", "bounce", "unsubscribe")),
                col(Event.data)["message_id"].as_string() == message_id,
            )
        ).first()
    ):
        report.ignored += 1
        return "already applied"
    unsubscribe_to = [ws.config.settings.sending.unsubscribe_mailto or ""]
    verdict = classify(message, now=now, unsubscribe_addresses=[a for a in unsubscribe_to if a])
    if verdict.kind == "bounce":
        returned = _our_message(session, returned_ids(message))
        return _apply_bounce(
            session, message, verdict, returned or ours, now, report, ws.config.settings.sending
        )
    if prospect is None:
        report.ignored += 1
        return "unmatched"
    if ours is None and _older_than_enrollment(session, message, prospect):
        report.ignored += 1
        return "older than the enrollment"
    data = _event_data(message, verdict)
    if verdict.kind == "auto_reply" and verdict.rule.startswith(NOT_AN_ABSENCE):
        report.ignored += 1  # a read receipt or a delivery report: nobody is away
        return "receipt"
    if verdict.kind == "auto_reply":
        _apply_auto_reply(ws, session, prospect, verdict, now)
        session.add(
            Event(
                prospect_id=_pid(prospect),
                kind="auto_reply",
                reason=str(
                    verdict.returns_on or f"+{ws.config.settings.replies.auto_reply_days} days"
                ),
                data=data,
                occurred_at=now,
            )
        )
        report.auto_replies += 1
        report.event(f"out-of-office from {prospect.email}: the next step waits")
        return "auto_reply"
    if verdict.kind == "unsubscribe":
        # Suppressed everywhere, now; the unsubscribe event below says why.
        suppress_in(session, suppression_value(prospect.email), "unsubscribed", now, events=False)
        session.add(
            Event(
                prospect_id=_pid(prospect),
                kind="unsubscribe",
                reason=verdict.rule,
                message_id=ours.id if ours else None,
                data=data,
                occurred_at=now,
            )
        )
        report.unsubscribes += 1
        report.event(f"unsubscribe request from {prospect.email}: suppressed everywhere")
        return "unsubscribe"
    for enrollment in live_enrollments(session, _pid(prospect)):
        end_enrollment(session, enrollment, "replied", verdict.sentiment or "reply", now)
    reply = Event(
        prospect_id=_pid(prospect),
        kind="reply",
        reason=verdict.sentiment,
        message_id=ours.id if ours else None,
        data=data,
        occurred_at=now,
    )
    session.add(reply)
    # The CRM hears of it from the same transaction: applied once, handed off once.
    handoff.enqueue(session, ws.config.settings.crm, reply, prospect, "replied", now)
    report.replies.append(
        {"from": prospect.email, "sentiment": verdict.sentiment or "", "rule": verdict.rule}
    )
    report.event(f"reply from {prospect.email} ({verdict.sentiment}): sequences stopped")
    if ws.config.settings.replies.company_stop:
        report.paused_colleagues += _pause_colleagues(session, prospect, now)
    return "reply"


def _apply_bounce(
    session: Session,
    message: EmailMessage,
    verdict: Classified,
    ours: Message | None,
    now: datetime,
    report: PollReport,
    sending: SendingDefaults,
) -> str:
    targets: list[Message] = [ours] if ours else []
    for address in verdict.failed:
        try:
            normalised = normalize_email(address)
        except ValueError:
            continue
        prospect = _prospect_by_address(session, normalised)
        if prospect is None:
            continue
        latest = session.exec(
            select(Message)
            .where(Message.prospect_id == prospect.id)
            .order_by(col(Message.id).desc())
        ).first()
        if latest is not None and all(t.prospect_id != latest.prospect_id for t in targets):
            targets.append(latest)  # one bounce per prospect: the message it names, else the last
    if not targets:
        report.ignored += 1
        return "unmatched bounce"
    for target in targets:
        bounced = session.get(Prospect, target.prospect_id)
        kind = "hard bounce: the address is invalid" if verdict.hard else "soft bounce"
        report.event(f"{kind} for {bounced.email if bounced else target.prospect_id}")
        if verdict.hard:
            assert target.id is not None
            lifecycle.bounced_later(session, target.id)
            # The event keeps the report's Message-ID and headers, so a re-read of this report
            # (UIDVALIDITY changed) is recognised as already applied.
            stop_for_bounce(
                session,
                target,
                f"bounce: {', '.join(verdict.failed)}",
                now,
                data=_event_data(message, verdict),
            )
            # A DSN counts against the sending mailbox's bounce rate like a 5.1.1 at SMTP time.
            if paused := reputation.after_hard_bounce(session, sending, target.sender, now):
                report.notes.append(f"mailbox {target.sender} PAUSED: {paused}")
        else:
            session.add(
                Event(
                    prospect_id=target.prospect_id,
                    kind="bounce",
                    reason="soft",
                    message_id=target.id,
                    data=_event_data(message, verdict),
                    occurred_at=now,
                )
            )
    report.bounces += 1
    return "bounce"


def _apply_auto_reply(
    ws: Workspace, session: Session, prospect: Prospect, verdict: Classified, now: datetime
) -> None:
    """Do not stop: move the next step past the return date (or by the configured days)."""
    for enrollment in live_enrollments(session, _pid(prospect)):
        if enrollment.state != "active" or enrollment.due_at is None:
            continue
        box = next((b for b in ws.config.mailboxes if b.email == enrollment.sender), None)
        if box is None:
            continue
        cal = ws.config.calendar(box, prospect.timezone)
        if verdict.returns_on is not None:
            back = datetime.combine(verdict.returns_on, datetime.min.time(), cal.timezone)
        else:
            back = now + timedelta(days=ws.config.settings.replies.auto_reply_days)
        # One working day after the return, so the message is not the first thing waiting.
        later = cal.next_open(back + timedelta(days=1))
        if later > enrollment.due_at:
            enrollment.due_at = later
            enrollment.updated_at = now
            session.add(enrollment)


def _pause_colleagues(session: Session, prospect: Prospect, now: datetime) -> int:
    """Colleagues at the same company wait for a rep's decision (`outreach resume`)."""
    if prospect.domain not in FREEMAIL:
        same: Any = Prospect.domain == prospect.domain
    elif prospect.company:
        same = func.lower(Prospect.company) == prospect.company.lower()
    else:
        return 0
    paused = 0
    for enrollment, colleague in session.exec(
        select(Enrollment, Prospect)
        .join(Prospect, col(Prospect.id) == Enrollment.prospect_id)
        .where(same, Prospect.id != prospect.id, Enrollment.state == "active")
    ):
        enrollment.state = "paused"
        enrollment.end_reason = f"colleague {prospect.email} replied"
        enrollment.updated_at = now
        session.add(enrollment)
        session.add(
            Event(
                prospect_id=_pid(colleague),
                enrollment_id=enrollment.id,
                kind="paused",
                reason=f"colleague {prospect.email} replied",
                occurred_at=now,
            )
        )
        paused += 1
    return paused


def resume(ws: Workspace, email_address: str, now: datetime) -> list[str]:
    """A rep lets a paused prospect's sequences go on (due at once, inside the window)."""
    from outreach.sequencing import find_prospect

    with ws.store.session() as session:
        prospect = find_prospect(session, email_address)
        resumed = []
        for enrollment in session.exec(
            select(Enrollment).where(
                Enrollment.prospect_id == prospect.id, Enrollment.state == "paused"
            )
        ):
            enrollment.state, enrollment.end_reason = "active", None
            if enrollment.due_at is None or enrollment.due_at < now:
                enrollment.due_at = now
            enrollment.updated_at = now
            session.add(enrollment)
            resumed.append(enrollment.sequence)
        if resumed:  # nothing was paused: nothing happened, nothing to record
            session.add(
                Event(
                    prospect_id=_pid(prospect),
                    kind="resumed",
                    data={"sequences": resumed},
                    occurred_at=now,
                )
            )
        return resumed


def _our_message(session: Session, ids: Iterable[str]) -> Message | None:
    ids = list(ids)
    if not ids:
        return None
    return session.exec(
        select(Message).where(col(Message.message_id).in_(ids)).order_by(col(Message.id).desc())
    ).first()


def _prospect_by_address(session: Session, address: str) -> Prospect | None:
    if not address:
        return None
    return session.exec(select(Prospect).where(Prospect.email == address)).first()


def _older_than_enrollment(session: Session, message: EmailMessage, prospect: Prospect) -> bool:
    """Mail from a prospect that predates their first enrollment is not an answer to us."""
    try:
        sent = parsedate_to_datetime(str(message.get("Date", "")))
    except (TypeError, ValueError):
        return False
    if sent.tzinfo is None:
        return False
    first = session.exec(
        select(func.min(Enrollment.enrolled_at)).where(Enrollment.prospect_id == prospect.id)
    ).one()
    return first is not None and sent < first


def _address(header: str) -> str:
    for _, address in getaddresses([header]):
        try:
            return normalize_email(address)
        except ValueError:
            continue
    return ""


def _event_data(message: EmailMessage, verdict: Classified) -> dict[str, object]:
    return {
        "message_id": str(message.get("Message-ID", "")).strip(),
        "text": verdict.text[:4000],
        "sentiment": verdict.sentiment,
        "rule": verdict.rule,
        "headers": {name: str(message.get(name)) for name in HEADERS_KEPT if message.get(name)},
    }


def _pid(prospect: Prospect) -> int:
    assert prospect.id is not None
    return prospect.id
