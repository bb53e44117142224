"""Import a prospects CSV and enroll it into a sequence, all or nothing.

The whole file is written in one transaction: when any row is rejected (and ``skip_invalid``
is off), or on ``dry_run``, the transaction is rolled back and nothing is kept. Rows stream
through in chunks with bulk statements, so a 100,000-row file needs neither the memory nor the
time of one ORM object per row.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, select, update

from outreach import clock, planner
from outreach.ab import registry
from outreach.compose import Composer, Recipient, header_names
from outreach.config import Mailbox
from outreach.errors import OutreachError
from outreach.models import Enrollment, Prospect, Suppression
from outreach.prospect_csv import (
    PROSPECT_FIELDS,
    ProspectRow,
    RowError,
    columns,
    read_prospects,
)
from outreach.rotation import FREE_MAIL, SenderChoice
from outreach.sequences import Sequence as SequenceDef
from outreach.store import bulk_insert, db_datetime, db_json
from outreach.templates import steering_names
from outreach.workspace import Workspace, template_variables

CHUNK = 1000
LIVE_STATES = ("active", "paused")
HANDED_OVER = ("replied", "stopped")

PROSPECT_COLUMNS = (
    "email",
    "domain",
    *PROSPECT_FIELDS,
    "fields",
    "status",
    "created_at",
    "updated_at",
)
ENROLLMENT_COLUMNS = (
    "prospect_id",
    "sequence",
    "sender",
    "state",
    "step_index",
    "due_at",
    "wait_drawn",
    "enrolled_at",
    "updated_at",
)

prospects_t = Prospect.__table__  # type: ignore[attr-defined]
enrollments_t = Enrollment.__table__  # type: ignore[attr-defined]
suppressions_t = Suppression.__table__  # type: ignore[attr-defined]


@dataclass
class Skipped:
    line: int
    email: str
    reason: str


@dataclass
class EnrollResult:
    """What an import did (or, on a dry run or a rejection, would have done)."""

    file: str
    sequence: str
    sender: str
    dry_run: bool
    enrolled: int = 0
    created: int = 0
    updated: int = 0
    skipped: list[Skipped] = field(default_factory=list)
    rejected: list[RowError] = field(default_factory=list)
    applied: bool = False
    first_due: datetime | None = None
    # Enrolled per mailbox, and (when rotating) the weight each was given: what it can still
    # send over the next sending days.
    split: dict[str, int] = field(default_factory=dict)
    capacity: dict[str, int] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "sequence": self.sequence,
            "sender": self.sender,
            "split": self.split,
            "capacity": self.capacity,
            "dry_run": self.dry_run,
            "applied": self.applied,
            "enrolled": self.enrolled,
            "prospects_created": self.created,
            "prospects_updated": self.updated,
            "skipped": [vars(s) for s in self.skipped],
            "rejected": [{"line": r.line, "reason": r.message} for r in self.rejected],
            "first_due": self.first_due.isoformat() if self.first_due else None,
        }


class Preflight:
    """Composes every step a prospect will get, as send would: once per distinct shape of
    prospect data, every variant built into a whole message (threads included); and, for
    every row, the values that reach a header (the address, the name, what a subject prints)
    checked as the message builder checks them."""

    def __init__(self, ws: Workspace, sequence: SequenceDef, mailbox: Mailbox) -> None:
        self.ws = ws
        self.sequence = sequence
        self.mailbox = mailbox
        self.composer = Composer(ws, rehearsal=True)
        self.sender = ws.sender_variables(mailbox)
        self.default_language = ws.config.settings.sending.language
        self._verdicts: dict[tuple[Any, ...], str | None] = {}
        # Load every template now: a broken file stops the import before any row is read.
        self.steps = [(step, ws.templates.get(step.template)) for step in sequence.steps]
        self.ab = registry.stored_state(ws)  # variants a review retired are not eligible either
        sources = [
            source
            for _, template in self.steps
            for variant in template.subjects + template.bodies
            for source in variant.sources()
        ]
        self.steering = sorted({name for source in sources for name in steering_names(source)})
        self.in_headers = header_names(
            source
            for _, template in self.steps
            for variant in template.subjects
            for source in variant.sources()
        )

    def check(self, row: ProspectRow) -> str | None:
        """None when every step composes for this row, else the first problem, in one line."""
        who = self._recipient(row)
        problem = self.composer.check_headers(who, self.in_headers)
        if problem is not None:
            return problem
        # Whether a template renders depends on which variables are defined and on the values
        # of those that steer an {% if %} or a {% for %}: memoise the verdict on that shape.
        shape = (
            row.language,
            row.persona,
            tuple(getattr(row, key) is None for key in PROSPECT_FIELDS),
            frozenset(row.extra),
            tuple(_value(row, name) for name in self.steering),
        )
        if shape not in self._verdicts:
            self._verdicts[shape] = self.composer.rehearse(
                self.mailbox, self.sequence, who, self._eligible(who), clock.now()
            )
        return self._verdicts[shape]

    def _recipient(self, row: ProspectRow) -> Recipient:
        fields = {key: getattr(row, key) for key in PROSPECT_FIELDS}
        fields["email"] = row.email
        variables = template_variables(
            fields, row.extra, self.sender, self.ws.config.settings.variables
        )
        return Recipient(
            email=row.email,
            name=" ".join(p for p in (row.first_name, row.last_name) if p) or None,
            language=row.language or self.default_language,
            persona=row.persona,
            timezone=row.timezone,
            variables=variables,
        )

    def _eligible(self, who: Recipient) -> Callable[..., list[Any]]:
        def eligible(template: Any, step: Any, kind: Any) -> list[Any]:
            return self.ab.eligible(
                template, self.sequence.name, step.name, kind, who.language, who.persona
            )

        return eligible


def enroll_csv(
    ws: Workspace,
    path: Path,
    sequence_name: str,
    *,
    now: datetime,
    sender: str | None = None,
    senders: Sequence[str] = (),
    dry_run: bool = False,
    skip_invalid: bool = False,
    include_ended: bool = False,
    rng: random.Random | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> EnrollResult:
    """Import ``path`` and enroll its prospects in ``sequence_name``, due from ``now``.

    ``senders`` (or ``sender``) are the mailboxes to write from; several, or ``all``, spread
    the file over them (:class:`SenderChoice`). A ``sender`` column chooses per row.
    """
    sequence = ws.sequence(sequence_name)
    given = [*senders, *([sender] if sender else [])]
    has_column = "sender" in columns(path)
    choice = SenderChoice.make(ws, given, now, has_column=has_column)
    rng = rng or random.Random()
    result = EnrollResult(
        file=str(path),
        sequence=sequence.name,
        sender=", ".join(b.email for b in choice.pool) or "from the sender column",
        dry_run=dry_run,
        capacity=dict(choice.capacity),
    )
    rows = read_prospects(path, on_progress=on_progress)
    with ws.store.engine.connect() as conn:
        transaction = conn.begin()
        try:
            writer = _Writer(conn, ws, sequence, choice, now, rng, result)
            writer.include_ended = include_ended
            for chunk in _accepted_chunks(rows, choice, writer.suppressed, result):
                writer.write(chunk)
            result.rejected.sort(key=lambda r: r.line)
            keep = not dry_run and (skip_invalid or not result.rejected)
            if keep:
                transaction.commit()
            else:
                transaction.rollback()
            result.applied = keep
        except BaseException:
            transaction.rollback()
            raise
    return result


def _value(row: ProspectRow, name: str) -> Any:
    if name in PROSPECT_FIELDS or name == "email":
        return getattr(row, name)
    return row.extra.get(name)


def _accepted_chunks(
    rows: Iterable[ProspectRow | RowError],
    choice: SenderChoice,
    suppressed: Callable[[str], bool],
    result: EnrollResult,
) -> Iterable[list[ProspectRow]]:
    seen: dict[str, int] = {}
    chunk: list[ProspectRow] = []
    for row in rows:
        if isinstance(row, RowError):
            result.rejected.append(row)
            continue
        first = seen.setdefault(row.email, row.line)
        if first != row.line:
            result.skipped.append(Skipped(row.line, row.email, f"duplicate of line {first}"))
            continue
        if row.sender is not None and choice.named(row.sender) is None:
            known = ", ".join(dict.fromkeys(b.email for b in choice.by_name.values()))
            result.rejected.append(
                RowError(row.line, f"sender {row.sender!r} is not a configured mailbox ({known})")
            )
            continue
        if row.sender is None and not choice.pool:
            result.rejected.append(
                RowError(row.line, "the sender cell is empty (fill it in, or give --sender)")
            )
            continue
        if suppressed(row.email):
            result.skipped.append(Skipped(row.line, row.email, "suppressed"))
            continue
        chunk.append(row)
        if len(chunk) >= CHUNK:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


class _Writer:
    """Upserts prospects and inserts enrollments, a chunk at a time, in the caller's transaction."""

    def __init__(
        self,
        conn: Connection,
        ws: Workspace,
        sequence: SequenceDef,
        choice: SenderChoice,
        now: datetime,
        rng: random.Random,
        result: EnrollResult,
    ) -> None:
        self.conn = conn
        self.ws = ws
        self.sequence = sequence
        self.choice = choice
        self._preflights: dict[str, Preflight] = {}
        for box in choice.pool:  # a broken template stops the import before any row is read
            self._preflight(box)
        self.now = now
        self.rng = rng
        self.result = result
        self.first_step = sequence.steps[0]
        self._calendars: dict[tuple[str, str | None], planner.SendingCalendar] = {}
        self._dues: dict[tuple[int, str | None, str], tuple[datetime, Any]] = {}
        self._now = db_datetime(conn, now)
        self.include_ended = False
        self._extra_json: dict[tuple[tuple[str, str], ...], str] = {}
        values = conn.execute(select(suppressions_t.c.value)).scalars().all()
        self._suppressed = set(values)

    def suppressed(self, email: str) -> bool:
        return email in self._suppressed or "@" + email.rpartition("@")[2] in self._suppressed

    def _calendar(self, box: Mailbox, timezone: str | None) -> planner.SendingCalendar:
        key = (box.email, timezone)
        if key not in self._calendars:
            self._calendars[key] = self.ws.config.calendar(box, timezone)
        return self._calendars[key]

    def _due(self, drawn: int, timezone: str | None, box: Mailbox) -> tuple[datetime, Any]:
        """The due time, and its database form. Every row of one import shares `now`, so it
        depends only on the draw, the zone and the mailbox: each is planned once."""
        key = (drawn, timezone, box.email)
        if key not in self._dues:
            cal = self._calendar(box, timezone)
            due = planner.plan_due(self.now, self.first_step.wait, drawn, cal)
            self._dues[key] = (due, db_datetime(self.conn, due))
        return self._dues[key]

    def _preflight(self, box: Mailbox) -> Preflight:
        """Every step rendered with this mailbox's sender variables (memoised per mailbox)."""
        if box.email not in self._preflights:
            self._preflights[box.email] = Preflight(self.ws, self.sequence, box)
        return self._preflights[box.email]

    def _senders(self, chunk: list[ProspectRow]) -> list[tuple[ProspectRow, Mailbox]]:
        """Each row with its mailbox, for the rows whose first messages render from it."""
        earlier: dict[str, str] = {}
        colleagues: dict[str, str] = {}
        if self.choice.rotating:
            # The latest sender each prospect had, and the first sender writing to each company
            # domain now: a prospect keeps one person, a company hears from one.
            for email, sender in self.conn.execute(
                select(prospects_t.c.email, enrollments_t.c.sender)
                .join(enrollments_t, enrollments_t.c.prospect_id == prospects_t.c.id)
                .where(prospects_t.c.email.in_([r.email for r in chunk]))
                .order_by(enrollments_t.c.id)
            ):
                earlier[email] = sender
            domains = {r.email.rpartition("@")[2] for r in chunk} - FREE_MAIL
            for domain, sender in self.conn.execute(
                select(prospects_t.c.domain, enrollments_t.c.sender)
                .join(enrollments_t, enrollments_t.c.prospect_id == prospects_t.c.id)
                .where(
                    prospects_t.c.domain.in_(domains),
                    enrollments_t.c.state.in_(LIVE_STATES),
                )
                .order_by(enrollments_t.c.id)
            ):
                colleagues.setdefault(domain, sender)
        out = []
        for row in chunk:
            if row.sender is not None:
                box = self.choice.named(row.sender)
                assert box is not None  # checked before the chunk was made
            else:
                domain = row.email.rpartition("@")[2]
                box = self.choice.pick(row, earlier.get(row.email), colleagues.get(domain))
            problem = self._preflight(box).check(row)
            if problem is not None:
                self.result.rejected.append(RowError(row.line, f"cannot be sent: {problem}"))
                continue
            out.append((row, box))
        return out

    def write(self, rows: list[ProspectRow]) -> None:
        accepted = self._senders(rows)
        chunk = [row for row, _ in accepted]
        ids = self._upsert_prospects(chunk)
        taken = self._already_enrolled([pid for pid, _ in ids.values()])
        new_rows = []
        for row, box in accepted:
            prospect_id, status = ids[row.email]
            if status != "active":
                self.result.skipped.append(
                    Skipped(row.line, row.email, "address is invalid (bounced)")
                )
                continue
            reason = taken.get(prospect_id)
            if reason:
                self.result.skipped.append(Skipped(row.line, row.email, reason))
                continue
            drawn = self.first_step.wait.draw(self.rng)
            due, stored_due = self._due(drawn, row.timezone, box)
            if self.result.first_due is None or due < self.result.first_due:
                self.result.first_due = due
            new_rows.append(
                (
                    prospect_id,
                    self.sequence.name,
                    box.email,
                    "active",
                    0,
                    stored_due,
                    drawn,
                    self._now,
                    self._now,
                )
            )
            self.result.split[box.email] = self.result.split.get(box.email, 0) + 1
        bulk_insert(self.conn, enrollments_t, ENROLLMENT_COLUMNS, new_rows)
        self.result.enrolled += len(new_rows)

    def _upsert_prospects(self, chunk: list[ProspectRow]) -> dict[str, tuple[int, str]]:
        emails = [row.email for row in chunk]
        existing = {r.email: r for r in self._select_prospects(emails)}
        fresh = [self._prospect_values(row) for row in chunk if row.email not in existing]
        inserted = bulk_insert(
            self.conn, prospects_t, PROSPECT_COLUMNS, fresh, returning=("id", "email")
        )
        self.result.created += len(fresh)
        ids: dict[str, tuple[int, str]] = {e: (r.id, r.status) for e, r in existing.items()}
        ids.update((email, (prospect_id, "active")) for prospect_id, email in inserted)
        for row in chunk:
            old = existing.get(row.email)
            if old is None:
                continue
            # A blank cell never erases what the store already knows.
            changes: dict[str, Any] = {
                key: getattr(row, key) for key in PROSPECT_FIELDS if getattr(row, key) is not None
            }
            if row.extra:
                fields = self.conn.execute(
                    select(prospects_t.c.fields).where(prospects_t.c.id == old.id)
                ).scalar_one()
                changes["fields"] = {**(fields or {}), **row.extra}
            if changes:
                changes["updated_at"] = self.now
                self.conn.execute(
                    update(prospects_t).where(prospects_t.c.id == old.id).values(**changes)
                )
                self.result.updated += 1
        return ids

    def _select_prospects(self, emails: list[str]) -> Any:
        return self.conn.execute(
            select(prospects_t.c.id, prospects_t.c.email, prospects_t.c.status).where(
                prospects_t.c.email.in_(emails)
            )
        )

    def _json(self, extra: dict[str, str]) -> str:
        # Lists repeat the same extra columns (industry, country...): serialise each once.
        key = tuple(extra.items())
        text = self._extra_json.get(key)
        if text is None:
            text = self._extra_json[key] = db_json(extra)
        return text

    def _prospect_values(self, row: ProspectRow) -> tuple[Any, ...]:
        return (
            row.email,
            row.email.rpartition("@")[2],
            row.first_name,
            row.last_name,
            row.company,
            row.title,
            row.linkedin,
            row.persona,
            row.language,
            row.timezone,
            self._json(row.extra),
            "active",
            self._now,
            self._now,
        )

    def _already_enrolled(self, prospect_ids: list[int]) -> dict[int, str]:
        reasons: dict[int, str] = {}
        rows = self.conn.execute(
            select(
                enrollments_t.c.prospect_id,
                enrollments_t.c.sequence,
                enrollments_t.c.state,
                enrollments_t.c.end_reason,
            ).where(enrollments_t.c.prospect_id.in_(prospect_ids))
        )
        for prospect_id, sequence, state, end_reason in rows:
            if sequence == self.sequence.name:
                reasons[prospect_id] = f"already in sequence {sequence} ({state})"
            elif prospect_id in reasons:
                continue
            elif state in LIVE_STATES:
                reasons[prospect_id] = f"{state} in sequence {sequence}"
            elif state in HANDED_OVER and not self.include_ended:
                # A reply or a goal hands the prospect to people; the engine does not take
                # them back unless the rep says so.
                reasons[prospect_id] = (
                    f"{state} in sequence {sequence} ({end_reason}); --include-ended to enroll"
                )
        return reasons


def format_rejection(path: Path | str, error: RowError) -> str:
    return f"{path}:{error.line}: {error.message}"


__all__ = ["EnrollResult", "OutreachError", "enroll_csv", "format_rejection", "Preflight"]
