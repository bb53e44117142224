"""The use cases that change a prospect's course: stop, suppress."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlmodel import Session, col, select

from outreach.errors import NotFound, OutreachError
from outreach.models import Enrollment, Event, Message, Prospect, Suppression
from outreach.prospects import normalize_email
from outreach.store import Store

STOP_REASONS = ("replied", "meeting", "webinar", "not-interested", "other")
GOALS = ("meeting", "webinar")
LIVE_STATES = ("active", "paused")


def _id(row: Prospect | Enrollment | Message) -> int:
    """The primary key of a stored row (SQLModel types it as optional)."""
    assert row.id is not None
    return row.id


def find_prospect(session: Session, email: str) -> Prospect:
    """The prospect with this address (in any letter case), or NotFound."""
    try:
        address = normalize_email(email)
    except ValueError as exc:
        raise OutreachError(f"'{email}' is not a valid address: {exc}", field="EMAIL") from None
    prospect = session.exec(select(Prospect).where(Prospect.email == address)).first()
    if prospect is None:
        raise NotFound(f"no prospect with address {address}", field="EMAIL")
    return prospect


def _end(session: Session, enrollment: Enrollment, state: str, reason: str, now: datetime) -> None:
    enrollment.state = state
    enrollment.end_reason = reason
    enrollment.ended_at = now
    enrollment.updated_at = now
    enrollment.due_at = None
    session.add(enrollment)
    # A planned message that has not started sending is never sent now.
    for message in session.exec(
        select(Message).where(Message.enrollment_id == enrollment.id, Message.state == "planned")
    ):
        message.state = "skipped"
        message.error = f"enrollment {state}: {reason}"
        session.add(message)


@dataclass
class StopResult:
    email: str
    reason: str
    stopped: list[str]


def stop(store: Store, email: str, reason: str, now: datetime) -> StopResult:
    """Stop every live enrollment of a prospect now, and record why."""
    if reason not in STOP_REASONS:
        raise OutreachError(
            f"unknown reason '{reason}'", field="--reason", hint="one of " + ", ".join(STOP_REASONS)
        )
    with store.session() as session:
        prospect = find_prospect(session, email)
        state = "replied" if reason == "replied" else "stopped"
        stopped = []
        for enrollment in session.exec(
            select(Enrollment).where(
                Enrollment.prospect_id == prospect.id, col(Enrollment.state).in_(LIVE_STATES)
            )
        ):
            _end(session, enrollment, state, reason, now)
            stopped.append(enrollment.sequence)
        session.add(
            Event(
                prospect_id=_id(prospect),
                kind="goal" if reason in GOALS else "stop",
                reason=reason,
                data={"sequences": stopped},
                occurred_at=now,
            )
        )
        return StopResult(email=prospect.email, reason=reason, stopped=stopped)


def suppression_value(value: str) -> str:
    """``person@domain`` normalised, or ``@domain`` for a whole domain."""
    value = value.strip()
    if value.startswith("@"):
        domain = normalize_email("postmaster" + value).rpartition("@")[2]
        return "@" + domain
    return normalize_email(value)


@dataclass
class SuppressResult:
    value: str
    added: bool
    stopped: int


def suppress(store: Store, value: str, now: datetime, reason: str = "manual") -> SuppressResult:
    """Never write to an address or a domain again, and stop what is under way there now."""
    try:
        normalised = suppression_value(value)
    except ValueError as exc:
        raise OutreachError(
            f"'{value}' is neither an address nor @domain: {exc}", field="ADDRESS_OR_@DOMAIN"
        ) from None
    with store.session() as session:
        existing = session.exec(select(Suppression).where(Suppression.value == normalised)).first()
        if existing is None:
            session.add(Suppression(value=normalised, reason=reason, created_at=now))
        if normalised.startswith("@"):
            match = Prospect.domain == normalised[1:]
        else:
            match = Prospect.email == normalised
        state = "unsubscribed" if reason == "unsubscribed" else "stopped"
        stopped = 0
        for enrollment, prospect in session.exec(
            select(Enrollment, Prospect)
            .join(Prospect)
            .where(match, col(Enrollment.state).in_(LIVE_STATES))
        ):
            _end(session, enrollment, state, f"suppressed: {reason}", now)
            session.add(
                Event(
                    prospect_id=_id(prospect),
                    enrollment_id=enrollment.id,
                    kind="suppress",
                    reason=reason,
                    data={"value": normalised},
                    occurred_at=now,
                )
            )
            stopped += 1
        return SuppressResult(value=normalised, added=existing is None, stopped=stopped)


def suppressions(store: Store) -> list[Suppression]:
    with store.session() as session:
        return list(session.exec(select(Suppression).order_by(Suppression.value)))
