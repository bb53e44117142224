"""The SQLModel tables, and nothing else. Times are aware datetimes, stored and returned in UTC."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, BigInteger, Column, Index, String, Text, UniqueConstraint
from sqlmodel import Field, SQLModel


class Prospect(SQLModel, table=True):
    """A person we may write to, keyed by their normalised address."""

    __tablename__ = "prospects"

    id: int | None = Field(default=None, primary_key=True)
    email: str = Field(unique=True, index=True)
    domain: str = Field(index=True)
    first_name: str | None = None
    last_name: str | None = None
    company: str | None = None
    title: str | None = None
    linkedin: str | None = None
    persona: str | None = None
    language: str | None = None
    timezone: str | None = None
    fields: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    # "active", or "invalid" once a hard bounce proved the address dead.
    status: str = Field(default="active")
    created_at: datetime
    updated_at: datetime


class Enrollment(SQLModel, table=True):
    """A prospect in a sequence: where they are in it and when the next step is due."""

    __tablename__ = "enrollments"
    __table_args__ = (
        UniqueConstraint("prospect_id", "sequence", name="uq_enrollment_prospect_sequence"),
        Index("ix_enrollments_due", "state", "due_at"),
        # The per-mailbox claim: a mailbox's due work, oldest first, without walking another
        # mailbox's backlog.
        Index("ix_enrollments_sender_due", "sender", "state", "due_at"),
    )

    id: int | None = Field(default=None, primary_key=True)
    # Indexed by the unique (prospect_id, sequence) constraint, whose first column it is.
    prospect_id: int = Field(foreign_key="prospects.id")
    sequence: str
    sender: str
    # active | paused | finished | stopped | replied | bounced | unsubscribed
    state: str = Field(default="active")
    step_index: int = 0  # the next step to run
    due_at: datetime | None = None
    wait_drawn: int | None = None  # the random wait drawn for the next step, kept across restarts
    enrolled_at: datetime
    updated_at: datetime
    ended_at: datetime | None = None
    end_reason: str | None = None
    previous_id: int | None = Field(default=None, foreign_key="enrollments.id")
    # Why the current step cannot be sent (a template problem at file:line, a header that
    # cannot be built), since when; cleared once its message is claimed.
    held_reason: str | None = Field(default=None, sa_column=Column(Text))
    held_at: datetime | None = None


class MessageState(StrEnum):
    """Where an outbox row is, stored as its value. Every move between them is a function of
    :mod:`outreach.lifecycle`, the only writer of ``Message.state``."""

    RETRY = "retry"  # waiting for its (next) attempt, at ``next_attempt_at`` / the enrollment's due
    CLAIMED = "claimed"  # taken from the queue under a lease, not yet on the wire
    SENDING = "sending"  # handed to SMTP: the only state in which it may leave
    SENT = "sent"  # the server accepted it
    UNKNOWN = "unknown"  # the process ended in SMTP: never resent by itself (resolve it)
    FAILED = "failed"  # refused for good, or retried until max_attempts
    BOUNCED = "bounced"  # the address is dead (at SMTP time, or a DSN later)
    SKIPPED = "skipped"  # not sent: the enrollment ended first, or a task not done in time
    TASK = "task"  # a LinkedIn or manual step waiting for the rep
    DONE = "done"  # the rep did the task


class Message(SQLModel, table=True):
    """The outbox: one row per step a prospect is given (an email, or a task for the rep)."""

    __tablename__ = "messages"
    __table_args__ = (
        UniqueConstraint("enrollment_id", "step_index", name="uq_message_enrollment_step"),
        Index("ix_messages_state_next_attempt", "state", "next_attempt_at"),
    )

    id: int | None = Field(default=None, primary_key=True)
    enrollment_id: int = Field(foreign_key="enrollments.id")  # indexed by the unique constraint
    prospect_id: int = Field(foreign_key="prospects.id", index=True)
    sequence: str
    step_index: int
    step_name: str
    channel: str
    sender: str
    language: str | None = None
    persona: str | None = None
    subject_variant: str | None = None
    body_variant: str | None = None
    subject: str | None = None
    body: str | None = Field(default=None, sa_column=Column(Text))
    message_id: str | None = Field(default=None, unique=True)
    thread_root: str | None = None
    in_reply_to: str | None = None
    references: str | None = Field(default=None, sa_column=Column(Text))
    state: MessageState = Field(default=MessageState.RETRY, sa_type=String)
    attempts: int = 0
    next_attempt_at: datetime | None = None
    created_at: datetime
    claimed_at: datetime | None = None
    sent_at: datetime | None = None
    smtp_response: str | None = None
    error: str | None = None
    # Scale-out: the daemon that claimed it ("claimed", then "sending") and until when that
    # holds unless its heartbeat renews it. A lapsed "claimed" row goes back to the queue; a
    # lapsed "sending" row becomes "unknown".
    lease_owner: str | None = None
    lease_until: datetime | None = None


class Event(SQLModel, table=True):
    """Something that happened to a prospect: reply, bounce, unsubscribe, goal, stop; an open
    or a click (``reason`` human or machine)."""

    __tablename__ = "events"
    __table_args__ = (
        # An open or click is one row per message, kind, target and human-or-machine, whatever
        # the number of fetches (counted in ``data``): a refetch storm adds no rows.
        UniqueConstraint("dedup_key", name="uq_events_dedup_key"),
        # status counts the opens and clicks per step without reading every other event.
        Index("ix_events_kind_message", "kind", "message_id"),
    )

    id: int | None = Field(default=None, primary_key=True)
    prospect_id: int = Field(foreign_key="prospects.id", index=True)
    enrollment_id: int | None = Field(default=None, foreign_key="enrollments.id")
    message_id: int | None = Field(default=None, foreign_key="messages.id")
    kind: str
    reason: str | None = None
    data: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    occurred_at: datetime
    dedup_key: str | None = None  # "open:<message>:human", "click:<message>:<url hash>:machine"


class Suppression(SQLModel, table=True):
    """An address, or a whole ``@domain``, that is never written to again."""

    __tablename__ = "suppressions"

    id: int | None = Field(default=None, primary_key=True)
    value: str = Field(unique=True, index=True)
    reason: str | None = None
    created_at: datetime


class MailboxState(SQLModel, table=True):
    """What the database knows of a sending mailbox: its pace, its count today, a pause.

    Kept here, not in memory, so that limits and gaps hold across restarts (and, on
    PostgreSQL, across daemons: it is updated in the claim's transaction).
    """

    __tablename__ = "mailbox_states"

    email: str = Field(primary_key=True)
    day: str | None = None  # the mailbox's local date that sent_on_day counts
    sent_on_day: int = 0
    last_sent_at: datetime | None = None
    next_send_at: datetime | None = None  # the random gap, drawn once after each send
    paused_reason: str | None = None
    paused_at: datetime | None = None
    # The last time no SMTP session could be opened, and why; it waits until next_send_at.
    unreachable: str | None = None
    # Scale-out: the one daemon serving this mailbox, until its lease lapses.
    owner: str | None = None
    owner_until: datetime | None = None
    # The mailbox's local date of its first send: the warm-up ramp counts from it, so a
    # restart or a config reload never starts the ramp again.
    first_send_day: str | None = None
    # The bounce rate counts sends claimed from then on (set by `mailboxes resume`, so the
    # bounces that paused the mailbox do not pause it again at the next one).
    bounces_counted_from: datetime | None = None


class SequencePause(SQLModel, table=True):
    """A sequence paused by hand: nothing of it is sent or created as a task until resumed."""

    __tablename__ = "sequence_pauses"

    sequence: str = Field(primary_key=True)
    reason: str | None = None
    paused_at: datetime


class InboxCursor(SQLModel, table=True):
    """How far a mailbox folder has been read: its UIDVALIDITY and the last UID handled.

    Advanced in the same transaction that applies the message, so each inbound message is
    applied once, whatever stops the process.
    """

    __tablename__ = "inbox_cursors"

    mailbox: str = Field(primary_key=True)
    folder: str = Field(primary_key=True)
    # IMAP's UIDVALIDITY and UIDs are unsigned 32-bit: past PostgreSQL's integer.
    uidvalidity: int | None = Field(default=None, sa_column=Column(BigInteger))
    last_uid: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))
    polled_at: datetime | None = None


class Variant(SQLModel, table=True):
    """A subject or body variant of one sequence step, as the A/B test knows it.

    Registered when the dispatcher first loads it. ``fingerprints`` keeps, per language, a hash
    of the texts that language's messages were sent with: an edit in place of a text that was
    already sent is refused, so statistics never mix two texts under one id. ``active_since``
    is when the variant (re-)entered the test; a review that retires it sets ``retired_at``.
    """

    __tablename__ = "variants"

    sequence: str = Field(primary_key=True)
    step: str = Field(primary_key=True)  # the step's name in the sequence
    kind: str = Field(primary_key=True)  # subject | body
    variant: str = Field(primary_key=True)
    fingerprints: dict[str, str] = Field(
        default_factory=dict, sa_column=Column(JSON, nullable=False)
    )
    active_since: datetime
    retired_at: datetime | None = None
    retired_by: str | None = None  # "review 12"; once restored: "restored (was review 12)"


class Review(SQLModel, table=True):
    """One A/B review: when, why (cron or a person), under which settings."""

    __tablename__ = "ab_reviews"

    id: int | None = Field(default=None, primary_key=True)
    ran_at: datetime
    trigger: str  # cron | manual
    metric: str
    settings: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))


class Decision(SQLModel, table=True):
    """What a review decided about one variant, with the numbers it decided on."""

    __tablename__ = "ab_decisions"

    id: int | None = Field(default=None, primary_key=True)
    review_id: int = Field(foreign_key="ab_reviews.id", index=True)
    sequence: str
    step: str
    step_index: int
    kind: str
    variant: str
    sends: int
    wins: int
    rate: float
    low: float
    high: float
    p_best: float
    action: str  # keep | retire
    reason: str


class Handoff(SQLModel, table=True):
    """The CRM outbox: one POST to ``[crm] webhook_url`` per reply or goal event.

    Written in the transaction that records the event, delivered later (at least once) by the
    daemon or ``outreach handoffs --deliver``, so a crash or a CRM outage loses nothing.
    """

    __tablename__ = "handoffs"
    __table_args__ = (Index("ix_handoffs_state_next_attempt", "state", "next_attempt_at"),)

    id: int | None = Field(default=None, primary_key=True)
    # The document's "id" and the Idempotency-Key header: the receiver de-duplicates on it.
    uuid: str = Field(unique=True)
    prospect_id: int = Field(foreign_key="prospects.id", index=True)
    event_id: int = Field(foreign_key="events.id", unique=True)  # one hand-off per event
    kind: str  # replied | meeting | webinar | click
    payload: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    state: str = Field(default="pending")  # pending | delivered | failed
    attempts: int = 0
    next_attempt_at: datetime | None = None
    last_error: str | None = None
    created_at: datetime
    delivered_at: datetime | None = None


class DaemonBeat(SQLModel, table=True):
    """An ``outreach run`` process and its heartbeat: alive while ``beat_at`` is recent."""

    __tablename__ = "daemons"

    id: str = Field(primary_key=True)  # host:pid:random, the owner name on what it holds
    host: str
    pid: int
    started_at: datetime
    beat_at: datetime
    mailboxes: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))


class Singleton(SQLModel, table=True):
    """A job that runs once per cluster (the mailbox poll, a cron job): who holds it, until."""

    __tablename__ = "singletons"

    name: str = Field(primary_key=True)
    owner: str | None = None
    owner_until: datetime | None = None


class OAuthGrant(SQLModel, table=True):
    """An OAuth mailbox's grant: its refresh token and the cached access token, both
    encrypted (``outreach.secrets``), shared by SMTP and IMAP and by every daemon.

    A refresh (and a rotated refresh token) is written in one transaction, under a row lock
    on PostgreSQL, so two daemons never spend the same rotating refresh token.
    """

    __tablename__ = "oauth_grants"

    mailbox: str = Field(primary_key=True)
    provider: str
    flow: str
    client_id: str | None = None
    scope: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    refresh_token: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    access_token: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    expires_at: datetime | None = None
    connected_at: datetime | None = None
    refreshed_at: datetime | None = None
    refreshes: int = 0  # access tokens fetched since the last connect
    rotations: int = 0  # times the server handed back a new refresh token
    # Why the grant no longer works (invalid_grant): nothing is asked of the server until
    # `outreach mailboxes connect` stores a new one.
    broken: str | None = None
    # The mailbox pause this grant's failure caused; `connect` lifts exactly that one.
    paused_reason: str | None = None
