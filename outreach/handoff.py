"""Hand-off to the CRM: one webhook POST per human reply or goal, from a stored outbox.

A hand-off row is written in the transaction that records the reply or the goal, with the
document to POST already built, so nothing is lost to a crash or a CRM outage. Delivery (the
daemon's job, or ``outreach handoffs --deliver``) is at least once: each POST carries the
hand-off's stable id as ``Idempotency-Key`` for the receiver to de-duplicate on.

Each attempt is claimed first by a conditional UPDATE that pushes ``next_attempt_at`` past the
request's timeout, so two processes delivering from one database do not POST the same row at
the same moment, and a process killed mid-POST leaves the row to be retried.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from html import escape
from typing import TYPE_CHECKING, Any

from sqlmodel import Session, col, func, select, update

from outreach import __version__, localtime
from outreach.config import Crm
from outreach.errors import ConfigError, NotFound, OutreachError
from outreach.models import Enrollment, Event, Handoff, Message, Prospect
from outreach.prospect_csv import STANDARD_FIELDS
from outreach.workspace import Workspace

if TYPE_CHECKING:
    import aiohttp

# What is handed off (a click: a person's click on a step with stop_on: [click]); other stops
# are not.
REASONS = ("replied", "meeting", "webinar", "click")
SIGNATURE_HEADER = "X-Outreach-Signature"
FIRST_RETRY = timedelta(minutes=1)
MAX_RETRY_DELAY = timedelta(hours=6)
BATCH = 100  # hand-offs per delivery run; the next run takes the rest
ERROR_CHARS = 300  # of a refusing receiver's answer, kept as the hand-off's last error
# 408 and 429 are the receiver asking us to come back; any other 4xx will not change.
RETRY_STATUSES = frozenset({408, 429})


def _utc(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def enqueue(
    session: Session, crm: Crm, event: Event, prospect: Prospect, reason: str, now: datetime
) -> Handoff | None:
    """Queue the hand-off of ``event`` (a reply or a goal) in the caller's transaction;
    nothing when no ``[crm] webhook_url`` is configured."""
    if not crm.webhook_url or reason not in REASONS:
        return None
    session.flush()  # the event's id
    assert event.id is not None and prospect.id is not None
    key = str(uuid.uuid4())
    document = build_document(session, event, prospect, reason, key)
    if crm.format == "pipedrive":
        document = pipedrive_document(document)
    handoff = Handoff(
        uuid=key,
        prospect_id=prospect.id,
        event_id=event.id,
        kind=reason,
        payload=document,
        next_attempt_at=now,
        created_at=now,
    )
    session.add(handoff)
    return handoff


def build_document(
    session: Session, event: Event, prospect: Prospect, reason: str, key: str
) -> dict[str, Any]:
    """outreach's own hand-off document (``format = "json"``)."""
    message = _answered_message(session, event, prospect)
    sequence = message.sequence if message else _latest_sequence(session, prospect)
    data = event.data or {}
    return {
        "id": key,
        "type": "outreach.handoff",
        "reason": reason,
        "occurred_at": _utc(event.occurred_at),
        "prospect": {
            **{name: getattr(prospect, name) for name in STANDARD_FIELDS},
            "fields": dict(prospect.fields or {}),
        },
        "sequence": sequence,
        "step": {"index": message.step_index, "name": message.step_name} if message else None,
        "message": {
            "subject": message.subject,
            "subject_variant": message.subject_variant,
            "body_variant": message.body_variant,
            "message_id": message.message_id,
            "sender": message.sender,
            "sent_at": _utc(message.sent_at) if message.sent_at else None,
        }
        if message
        else None,
        "reply": {
            "text": data.get("text", ""),
            "sentiment": data.get("sentiment"),
            "rule": data.get("rule"),
        }
        if event.kind == "reply"
        else None,
        **({"click": {"url": data.get("url")}} if reason == "click" else {}),
    }


def _answered_message(session: Session, event: Event, prospect: Prospect) -> Message | None:
    """The email the reply answers, else the last email the prospect was sent."""
    if event.message_id is not None:
        message = session.get(Message, event.message_id)
        if message is not None and message.channel == "email":
            return message
    return session.exec(
        select(Message)
        .where(
            Message.prospect_id == prospect.id,
            Message.channel == "email",
            Message.state == "sent",
        )
        .order_by(col(Message.sent_at).desc(), col(Message.id).desc())
    ).first()


def _latest_sequence(session: Session, prospect: Prospect) -> str | None:
    return session.exec(
        select(Enrollment.sequence)
        .where(Enrollment.prospect_id == prospect.id)
        .order_by(col(Enrollment.enrolled_at).desc(), col(Enrollment.id).desc())
    ).first()


def pipedrive_document(doc: dict[str, Any]) -> dict[str, Any]:
    """The same hand-off in Pipedrive's field shape (``format = "pipedrive"``): a person, a
    deal and a note, for a middleware that creates them through Pipedrive's API. It is posted
    to ``webhook_url`` like the generic document; outreach does not call Pipedrive itself."""
    p = doc["prospect"]
    name = " ".join(part for part in (p["first_name"], p["last_name"]) if part) or p["email"]
    person: dict[str, Any] = {
        "name": name,
        "email": [{"value": p["email"], "primary": True, "label": "work"}],
    }
    for key, value in (
        ("first_name", p["first_name"]),
        ("last_name", p["last_name"]),
        ("org_name", p["company"]),
        ("job_title", p["title"]),
    ):
        if value:
            person[key] = value
    return {
        "id": doc["id"],
        "person": person,
        "deal": {
            "title": f"{p['company'] or name}: {doc['reason']} via outreach",
            "status": "open",
        },
        "note": {"content": _note_html(doc)},
    }


def _note_html(doc: dict[str, Any]) -> str:
    """The reply and its context; Pipedrive notes are HTML."""
    p, reply, message = doc["prospect"], doc["reply"], doc["message"]
    lines: list[str] = []
    if reply:
        lines += [*reply["text"].splitlines(), ""]
        lines.append(f"Sentiment: {reply['sentiment'] or '-'} ({reply['rule'] or '-'})")
    lines.append(f"Reason: {doc['reason']}, {doc['occurred_at']}")
    if doc["sequence"]:
        step = f", step {doc['step']['index'] + 1} {doc['step']['name']}" if doc["step"] else ""
        lines.append(f"Sequence: {doc['sequence']}{step}")
    if message:
        lines.append(f"Subject: {message['subject'] or '-'}")
        lines.append(
            f"Variants: subject {message['subject_variant'] or '-'}, "
            f"body {message['body_variant'] or '-'}; from {message['sender']}"
        )
    for key in ("linkedin", "persona", "language"):
        if p[key]:
            lines.append(f"{key.capitalize()}: {p[key]}")
    lines += [f"{key}: {value}" for key, value in p["fields"].items()]
    return "<br>".join(escape(line) for line in lines)


def body_of(payload: dict[str, Any]) -> bytes:
    """The exact bytes POSTed, and signed."""
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def sign(secret: str, body: bytes) -> str:
    """``sha256=<hex HMAC-SHA256 of the body>``, the X-Outreach-Signature header."""
    return "sha256=" + hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


def signing_secret(crm: Crm) -> str | None:
    """The secret named by ``[crm] secret_env``; a named but empty variable is an error."""
    if not crm.secret_env:
        return None
    secret = os.environ.get(crm.secret_env, "")
    if len(secret) < 16:
        raise ConfigError(
            f"environment variable {crm.secret_env} must hold a secret of 16 or more characters",
            field="[crm] secret_env",
            hint="the receiver checks X-Outreach-Signature with the same secret",
        )
    return secret


@dataclass
class Outcome:
    kind: str  # delivered | retry | failed
    detail: str
    retry_after: float | None = None


@dataclass
class DeliveryReport:
    """What one delivery run did; ``lines`` says it per hand-off."""

    delivered: int = 0
    retrying: int = 0
    failed: int = 0
    lines: list[str] = field(default_factory=list)


@dataclass
class _Claimed:
    id: int
    uuid: str
    payload: dict[str, Any]
    label: str  # "#3 meeting ann@acme.example", for people


async def deliver_due(ws: Workspace, now: datetime, *, limit: int = BATCH) -> DeliveryReport:
    """POST every hand-off that is due at ``now`` (at most ``limit``), one after another, and
    record each outcome."""
    crm = ws.config.settings.crm
    if not crm.webhook_url:
        raise ConfigError(
            "no webhook to deliver to",
            field="[crm] webhook_url",
            hint="set it in the config; queued hand-offs wait for it",
        )
    secret = signing_secret(crm)  # before anything is claimed
    report = DeliveryReport()
    with ws.store.session() as session:
        due = session.exec(
            select(Handoff.id)
            .where(Handoff.state == "pending", col(Handoff.next_attempt_at) <= now)
            .order_by(col(Handoff.next_attempt_at), col(Handoff.id))
            .limit(limit)
        ).all()
    if not due:
        return report
    import aiohttp  # only to deliver: queueing a hand-off (stop, a reply) needs no HTTP client

    lease = timedelta(seconds=2 * crm.timeout_seconds + 60)
    timeout = aiohttp.ClientTimeout(total=crm.timeout_seconds)
    headers = {"User-Agent": f"outreach/{__version__}"}
    async with aiohttp.ClientSession(timeout=timeout, headers=headers) as http:
        for handoff_id in due:
            assert handoff_id is not None
            claimed = _claim(ws, handoff_id, now, lease)
            if claimed is None:
                continue  # another process has it, or a rep changed it meanwhile
            outcome = await _post(http, crm, claimed, secret)
            _record(ws, claimed, outcome, now, crm.max_attempts, report)
    return report


def deliver_once(ws: Workspace, now: datetime) -> DeliveryReport:
    """``outreach handoffs --deliver``: deliver what is due now, then return."""
    return asyncio.run(deliver_due(ws, now))


def _claim(ws: Workspace, handoff_id: int, now: datetime, lease: timedelta) -> _Claimed | None:
    with ws.store.session() as session:
        taken = session.exec(
            update(Handoff)
            .where(
                col(Handoff.id) == handoff_id,
                col(Handoff.state) == "pending",
                col(Handoff.next_attempt_at) <= now,
            )
            .values(attempts=col(Handoff.attempts) + 1, next_attempt_at=now + lease)
        )
        if taken.rowcount != 1:
            return None
        handoff, prospect = session.exec(
            select(Handoff, Prospect)
            .join(Prospect, col(Prospect.id) == Handoff.prospect_id)
            .where(Handoff.id == handoff_id)
        ).one()
        return _Claimed(
            id=handoff_id,
            uuid=handoff.uuid,
            payload=handoff.payload,
            label=f"#{handoff_id} {handoff.kind} {prospect.email}",
        )


async def _post(
    http: aiohttp.ClientSession, crm: Crm, claimed: _Claimed, secret: str | None
) -> Outcome:
    import aiohttp

    assert crm.webhook_url is not None
    body = body_of(claimed.payload)
    headers = {"Content-Type": "application/json", "Idempotency-Key": claimed.uuid}
    if secret is not None:
        headers[SIGNATURE_HEADER] = sign(secret, body)
    try:
        # No redirects: a signed body goes to the configured URL and nowhere else.
        async with http.post(
            crm.webhook_url, data=body, headers=headers, allow_redirects=False
        ) as response:
            status = response.status
            answer = (await response.content.read(ERROR_CHARS)).decode("utf-8", "replace")
            retry_after = response.headers.get("Retry-After", "")
            location = response.headers.get("Location", "elsewhere")
    except TimeoutError:
        return Outcome("retry", f"no answer within {crm.timeout_seconds} s")
    except aiohttp.ClientError as exc:
        return Outcome("retry", f"{type(exc).__name__}: {exc}".splitlines()[0][:ERROR_CHARS])
    detail = f"HTTP {status}" + (f": {' '.join(answer.split())}" if answer.strip() else "")
    if 200 <= status < 300:
        return Outcome("delivered", f"HTTP {status}")
    if 300 <= status < 400:
        return Outcome("failed", f"HTTP {status}: redirected to {location} (configure that URL)")
    if 400 <= status < 500 and status not in RETRY_STATUSES:
        return Outcome("failed", detail)
    seconds = float(retry_after) if retry_after.strip().isdigit() else None
    return Outcome("retry", detail, retry_after=seconds)


def _record(
    ws: Workspace,
    claimed: _Claimed,
    outcome: Outcome,
    now: datetime,
    max_attempts: int,
    report: DeliveryReport,
) -> None:
    with ws.store.session() as session:
        handoff = session.get(Handoff, claimed.id)
        assert handoff is not None
        if outcome.kind == "delivered":
            handoff.state, handoff.delivered_at = "delivered", now
            handoff.next_attempt_at, handoff.last_error = None, None
            report.delivered += 1
            report.lines.append(f"delivered {claimed.label} ({outcome.detail})")
        elif outcome.kind == "failed" or handoff.attempts >= max_attempts:
            handoff.state, handoff.next_attempt_at = "failed", None
            handoff.last_error = (
                outcome.detail
                if outcome.kind == "failed"
                else f"gave up after {handoff.attempts} attempts: {outcome.detail}"
            )
            report.failed += 1
            report.lines.append(f"FAILED {claimed.label}: {handoff.last_error}")
        else:
            delay = min(FIRST_RETRY * 2 ** (handoff.attempts - 1), MAX_RETRY_DELAY)
            if outcome.retry_after is not None:
                delay = max(delay, min(timedelta(seconds=outcome.retry_after), MAX_RETRY_DELAY))
            handoff.next_attempt_at, handoff.last_error = now + delay, outcome.detail
            report.retrying += 1
            at = localtime.local(now + delay, localtime.team_zone(ws.config), seconds=True)
            report.lines.append(f"retry {claimed.label} at {at}: {outcome.detail}")
        session.add(handoff)


def listing(ws: Workspace) -> dict[str, Any]:
    """The hand-offs waiting (pending) or given up (failed), oldest first, and every count."""
    with ws.store.session() as session:
        counts = dict(
            session.exec(select(Handoff.state, func.count()).group_by(Handoff.state)).all()
        )
        rows = session.exec(
            select(Handoff, Prospect)
            .join(Prospect, col(Prospect.id) == Handoff.prospect_id)
            .where(col(Handoff.state).in_(("pending", "failed")))
            .order_by(col(Handoff.created_at), col(Handoff.id))
        ).all()
    return {
        "counts": {state: counts.get(state, 0) for state in ("pending", "delivered", "failed")},
        "handoffs": [
            {
                "id": handoff.id,
                "uuid": handoff.uuid,
                "email": prospect.email,
                "reason": handoff.kind,
                "state": handoff.state,
                "attempts": handoff.attempts,
                "next_attempt_at": _utc(handoff.next_attempt_at)
                if handoff.next_attempt_at
                else None,
                "last_error": handoff.last_error,
                "created_at": _utc(handoff.created_at),
            }
            for handoff, prospect in rows
        ],
    }


def retry(ws: Workspace, handoff_id: int, now: datetime) -> str:
    """A failed hand-off goes back to pending, due now, with a fresh set of attempts."""
    with ws.store.session() as session:
        handoff = session.get(Handoff, handoff_id)
        if handoff is None:
            raise NotFound(
                f"no hand-off with id {handoff_id}",
                field="ID",
                hint="`outreach handoffs` lists the pending and failed ones",
            )
        if handoff.state != "failed":
            raise OutreachError(f"hand-off {handoff_id} is {handoff.state}, not failed", field="ID")
        handoff.state, handoff.attempts, handoff.next_attempt_at = "pending", 0, now
        session.add(handoff)
        return f"hand-off {handoff_id} is pending again; it is delivered on the next run"
