"""The A/B test's variant registry: the factors (a step's subjects, its bodies), which
variants are in the test, a text fixed once it was sent, retire and restore.

Two independent factors per email step: the subject (only on a step that starts a thread; a
``thread: reply`` step inherits its thread's subject) and the body.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlmodel import Session, col, select

from outreach import clock
from outreach.errors import NotFound, OutreachError, Problems, TemplateError
from outreach.models import Message
from outreach.models import Variant as VariantRow
from outreach.templates import Kind, StepTemplate, Variant
from outreach.workspace import Workspace

# numpy and scipy load only when statistics are asked for (not at idle), aiosmtplib only to
# mail a digest.
if TYPE_CHECKING:
    pass

# ------------------------------------------------------------------------------ the factors


@dataclass(frozen=True)
class Factor:
    """The subjects, or the bodies, of one email step of one sequence."""

    sequence: str
    step: str
    step_index: int
    kind: Kind  # subject | body
    template: StepTemplate

    @property
    def variants(self) -> list[Variant]:
        return self.template.subjects if self.kind == "subject" else self.template.bodies

    @property
    def key(self) -> tuple[str, int, str]:
        return (self.sequence, self.step_index, self.kind)

    def label(self) -> str:
        return f"{self.sequence}/{self.step} {plural(self.kind)}"


def plural(kind: str, n: int = 2) -> str:
    """ "subjects", "bodies" (or the singular when ``n`` is 1)."""
    if n == 1:
        return kind
    return "subjects" if kind == "subject" else "bodies"


def factors(ws: Workspace) -> Iterator[Factor]:
    """Every tested factor, in playbook order: each email step's subjects (when the step starts
    a thread) and bodies."""
    for name in sorted(ws.sequences):
        sequence = ws.sequences[name]
        for index, step in enumerate(sequence.steps):
            if not step.is_email:
                continue
            template = ws.templates.get(step.template)
            kinds: tuple[Kind, ...] = ("subject", "body") if step.thread == "new" else ("body",)
            for kind in kinds:
                yield Factor(name, step.name, index, kind, template)


def variant_column(kind: str) -> Any:
    return Message.subject_variant if kind == "subject" else Message.body_variant


# ------------------------------------------------------------------------------ the registry


@dataclass
class AssignmentState:
    """What the dispatcher needs from the registry: which variants a review retired, and since
    when each factor's set of active variants has been what it is (balance is counted from
    then)."""

    retired: set[tuple[str, str, str, str]] = field(default_factory=set)
    since: dict[tuple[str, str, str], datetime] = field(default_factory=dict)
    restored: dict[tuple[str, str, str, str], datetime] = field(default_factory=dict)

    def is_retired(self, sequence: str, step: str, kind: str, variant: str) -> bool:
        return (sequence, step, kind, variant) in self.retired

    def active(self, template: StepTemplate, sequence: str, step: str, kind: Kind) -> list[Variant]:
        """The variants in the test: active in the file and not retired by a review."""
        return [v for v in template.active(kind) if not self.is_retired(sequence, step, kind, v.id)]

    def eligible(
        self,
        template: StepTemplate,
        sequence: str,
        step: str,
        kind: Kind,
        language: str,
        persona: str | None,
    ) -> list[Variant]:
        """The variants a prospect can get: in the test, with a text in their language."""
        return [
            v
            for v in self.active(template, sequence, step, kind)
            if v.text_for(language, persona) is not None
        ]


def sync_variants(ws: Workspace, session: Session, now: datetime) -> AssignmentState:
    """Register new variants and languages; refuse a text edited in place after it was sent.

    A variant's text in a language is fixed once a message carried it: the edit must go under
    a new id (the old one can be retired), so a reply is never counted for a text it did not
    answer. An edit before the first send is simply taken.
    """
    rows = {
        (r.sequence, r.step, r.kind, r.variant): r for r in session.exec(select(VariantRow)).all()
    }
    problems: list[OutreachError] = []
    for factor in factors(ws):
        for variant in factor.variants:
            key = (factor.sequence, factor.step, factor.kind, variant.id)
            current = {language: variant.fingerprint(language) for language in variant.languages}
            row = rows.get(key)
            if row is None:
                row = VariantRow(
                    sequence=factor.sequence,
                    step=factor.step,
                    kind=factor.kind,
                    variant=variant.id,
                    fingerprints=current,
                    active_since=now,
                )
                session.add(row)
                rows[key] = row
                continue
            changed = [
                language
                for language, fingerprint in current.items()
                if row.fingerprints.get(language) not in (None, fingerprint)
            ]
            edited = [
                language
                for language in sorted(changed)
                if _was_sent(session, factor, variant.id, language)
            ]
            if edited:
                problems.append(
                    TemplateError(
                        f"{factor.kind} '{variant.id}' was edited after it was sent "
                        f"({', '.join(edited)}); its replies would mix two texts",
                        file=factor.template.path,
                        line=variant.line,
                        hint="restore the sent text, or give the new text a new id "
                        "and mark the old one `retired: true`",
                    )
                )
            elif current != row.fingerprints:
                row.fingerprints = {**row.fingerprints, **current}
                session.add(row)
    if problems:
        raise Problems(problems)
    return assignment_state(rows.values())


def check_variants(ws: Workspace) -> tuple[AssignmentState, list[OutreachError]]:
    """What ``validate`` needs, changing nothing: the retired variants, and the texts edited
    after they were sent. A database that does not exist yet has neither."""
    if not _database_exists(ws):
        return AssignmentState(), []
    with ws.store.session() as session:
        try:
            return sync_variants(ws, session, clock.now()), []
        except Problems as exc:
            return assignment_state(session.exec(select(VariantRow)).all()), exc.problems
        finally:
            session.rollback()


def stored_state(ws: Workspace) -> AssignmentState:
    """The reviews' retirements as stored, read only (none before the database exists)."""
    if not _database_exists(ws):
        return AssignmentState()
    with ws.store.session() as session:
        return assignment_state(session.exec(select(VariantRow)).all())


def _database_exists(ws: Workspace) -> bool:
    """False for a SQLite file not yet made: asking would create it (validate must not)."""
    url = ws.config.database_url
    return not url.startswith("sqlite:///") or Path(url[len("sqlite:///") :]).exists()


def assignment_state(rows: Iterable[VariantRow]) -> AssignmentState:
    state = AssignmentState()
    for row in rows:
        factor = (row.sequence, row.step, row.kind)
        moments = [row.active_since] + ([row.retired_at] if row.retired_at else [])
        if row.retired_at is not None:
            state.retired.add((row.sequence, row.step, row.kind, row.variant))
        elif row.retired_by:  # "restored (was review 12)"
            state.restored[(row.sequence, row.step, row.kind, row.variant)] = row.active_since
        latest = max(moments)
        if factor not in state.since or latest > state.since[factor]:
            state.since[factor] = latest
    return state


def _was_sent(session: Session, factor: Factor, variant: str, language: str) -> bool:
    """Whether a message carried this variant's text in ``language`` (asked only when the
    text changed, which is rare: the dispatcher checks every tick)."""
    column = variant_column(factor.kind)
    return (
        session.exec(
            select(Message.id).where(
                Message.sequence == factor.sequence,
                Message.step_index == factor.step_index,
                column == variant,
                Message.language == language,
                col(Message.state).in_(("sending", "sent", "unknown", "bounced")),
            )
        ).first()
        is not None
    )


def restore(
    ws: Workspace, sequence: str, step: str, kind: str, variant: str, now: datetime
) -> None:
    """Put a retired variant back in the test, from now on with an equal share."""
    factor = next(
        (f for f in factors(ws) if (f.sequence, f.step, f.kind) == (sequence, step, kind)), None
    )
    if factor is None:
        raise NotFound(
            f"no email step '{step}' with {plural(kind)} in sequence '{sequence}'",
            hint="`outreach ab report` lists the steps and their variants",
        )
    in_file = next((v for v in factor.variants if v.id == variant), None)
    if in_file is not None and in_file.retired:
        raise OutreachError(
            f"{kind} '{variant}' is retired in the template file, not by a review",
            file=factor.template.path,
            line=in_file.line,
            hint="remove its `retired: true` there",
        )
    with ws.store.session() as session:
        row = session.get(VariantRow, (sequence, step, kind, variant))
        if row is None or in_file is None:
            raise NotFound(
                f"no {kind} variant '{variant}' in {sequence}/{step}",
                hint="`outreach ab report` lists them",
            )
        if row.retired_at is None:
            raise OutreachError(f"{kind} '{variant}' of {sequence}/{step} is not retired")
        row.retired_at = None
        row.retired_by = f"restored (was {row.retired_by})"
        row.active_since = now
        session.add(row)
