"""Check a whole workspace: config, every sequence, every template, every variant rendered.

Every problem is listed in one run, each once, at its line: a broken sequence file still has
its templates checked, a broken template file still has its good variants rendered, and a
template that several steps share is checked once.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from types import SimpleNamespace
from typing import Any

from sqlalchemy import func
from sqlmodel import col, select

from outreach.ab import registry
from outreach.ab import review as ab_review
from outreach.compose import Composer
from outreach.config import Mailbox
from outreach.errors import OutreachError, TemplateError
from outreach.models import Prospect
from outreach.models import Variant as VariantRow
from outreach.prospect_csv import STANDARD_FIELDS
from outreach.sequences import TRACKED_RULES, Sequence, read_sequences
from outreach.sequencing import orphan_problems
from outreach.templates import Kind, StepTemplate, Variant
from outreach.workspace import Workspace

SAMPLE_PROSPECT = {
    "email": "aino.korhonen@rakennus.example",
    "first_name": "Aino",
    "last_name": "Korhonen",
    "company": "Rakennus Oy",
    "title": "Head of Sales",
    "linkedin": "https://www.linkedin.com/in/example-aino",
}
PLACEHOLDER_SENDER = Mailbox(name="Sample Sender", email="sender@example.com")


@dataclass
class Retired:
    """A variant kept in its file but out of the test: by ``retired: true`` or by a review."""

    file: str
    line: int
    sequence: str
    step: str
    kind: str
    variant: str
    by: str  # "the template file", or the review: "review 3"
    date: str | None = None  # the review's, YYYY-MM-DD

    def one_line(self) -> str:
        how = "retired: true in the file" if self.date is None else f"{self.by}, {self.date}"
        return (
            f"{self.file}:{self.line}: {self.sequence}/{self.step} {self.kind} "
            f"'{self.variant}' ({how})"
        )

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Report:
    problems: list[OutreachError] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    retired: list[Retired] = field(default_factory=list)
    rendered: int = 0
    sequences: int = 0
    templates: int = 0

    def problem(self, error: OutreachError) -> None:
        """Add ``error`` unless the same line is already listed."""
        if all(p.one_line() != error.one_line() for p in self.problems):
            self.problems.append(error)

    def warn(self, text: str) -> None:
        if text not in self.warnings:
            self.warnings.append(text)


def validate(ws: Workspace) -> Report:
    """Everything wrong with the workspace, each problem with its file and line."""
    report = Report()
    for problem in ws.sequence_problems:
        report.problem(problem)
    sequences, _ = ws._sequences
    report.sequences = len(sequences)
    try:  # what the A/B registry says: texts edited after they were sent, retired variants
        state, edited = registry.check_variants(ws)
    except OutreachError:  # a broken sequence or template: reported file by file below
        state, edited = registry.AssignmentState(), []
    for problem in edited:
        report.problem(problem)
    reviewed, languages = _stored(ws)

    references = _template_references(ws, sequences)
    for relative, source, line, step_name in references:
        template, problems = ws.templates.check(relative)
        for problem in problems:
            if problem.line is None:  # missing, or outside templates/: the sequence names it
                report.problem(
                    TemplateError(
                        f"step '{step_name}': template {relative}: {problem.message}",
                        file=source,
                        line=line,
                    )
                )
    try:
        files = list(ws.templates.files())
    except OSError:
        files = []
    report.templates = len(files)
    used = {relative for relative, *_ in references}
    for relative in dict.fromkeys([*files, *(r for r, *_ in references)]):
        template, problems = ws.templates.check(relative)
        for problem in problems:
            if problem.line is not None or relative not in used:
                report.problem(problem)
        if template is not None:
            _render_every_text(ws, template, report)
        if relative not in used and not ws.sequence_problems:  # else maybe a false alarm
            report.warn(f"{ws.templates.display(relative)}: not used by any sequence")

    for sequence in sequences.values():
        for index, step in enumerate(sequence.steps):
            template, problems = ws.templates.check(step.template)
            if template is None or problems:  # its own problems are listed already
                continue
            _check_step(ws, report, sequence, index, template, state)
            _check_languages(report, sequence, step.name, template, state, languages)
            _list_retired(report, sequence, step.name, template, reviewed)
        _check_tracked_audience(ws, report, sequence)

    for orphan in orphan_problems(ws):  # a removed mailbox with live enrollments
        report.problem(orphan)
    for box in ws.config.mailboxes:
        if box.password_env and box.password() is None and box.smtp_security != "none":
            report.warn(
                f"mailboxes {box.email}: environment variable {box.password_env} is not set "
                "(needed to send)"
            )
    return report


def _check_tracked_audience(ws: Workspace, report: Report, sequence: Sequence) -> None:
    """A warning when an ``opened``/``clicked`` audience or ``stop_on`` can never be met:
    only a message with an HTML part is tracked, and no active body of the sequence has one."""
    tracked = [r for r in (sequence.next.audience if sequence.next else []) if r in TRACKED_RULES]
    tracked += [f"stop_on {r}" for step in sequence.steps for r in step.stop_on]
    if not tracked or not ws.config.settings.tracking.on:
        return  # with tracking off, it is a problem of its own (Sequence.tracking_problems)
    for step in sequence.steps:
        template, problems = ws.templates.check(step.template)
        if not step.is_email or template is None or problems:
            if template is None or problems:
                return  # a broken template: it is listed already, and we cannot tell
            continue
        if any(variant.html and not variant.retired for variant in template.bodies):
            return
    line = sequence.audience_line if sequence.next else None
    report.warn(
        f"{sequence.source}:{line or 1}: {', '.join(tracked)}: no email step of "
        f"{sequence.name} has an HTML body, and only a message with an HTML part is tracked: "
        "nobody can meet it (add html: to a body)"
    )


def _template_references(
    ws: Workspace, sequences: dict[str, Sequence]
) -> list[tuple[str, str, int | None, str]]:
    """(template, sequence file, line, step) for every step of every sequence file, the
    broken ones included."""
    references = [
        (
            step.template,
            sequence.source,
            sequence.template_lines[i] if i < len(sequence.template_lines) else None,
            step.name,
        )
        for sequence in sequences.values()
        for i, step in enumerate(sequence.steps)
    ]
    if ws.sequence_problems and ws.config.sequences_dir.is_dir():
        for result in read_sequences(ws.config.sequences_dir, ws.config.root):
            if result.sequence is None:
                references.extend(
                    (ref.template, result.source, ref.line, ref.step) for ref in result.templates
                )
    return references


def _render_every_text(ws: Workspace, template: StepTemplate, report: Report) -> None:
    """Render each text of the file, every language and persona, for the sample prospect,
    through the composer that dispatch, enroll's pre-flight and preview use."""
    settings = ws.config.settings
    mailbox = ws.config.mailboxes[0] if ws.config.mailboxes else PLACEHOLDER_SENDER
    sample = {**SAMPLE_PROSPECT, **settings.sample_prospect}
    extra = {k: v for k, v in sample.items() if k not in STANDARD_FIELDS}
    composer = Composer(ws, rehearsal=True)
    for variant in template.subjects + template.bodies:
        for language, persona in sorted(variant.texts):
            prospect = SimpleNamespace(
                **{key: sample.get(key) for key in STANDARD_FIELDS},
                fields=extra,
            )
            prospect.language = language
            prospect.persona = None if persona == "default" else persona
            try:
                composer.render(template, variant, composer.recipient(prospect, mailbox))
                report.rendered += 1
            except TemplateError as exc:
                report.problem(exc)


def _check_step(
    ws: Workspace,
    report: Report,
    sequence: Sequence,
    index: int,
    template: StepTemplate,
    state: registry.AssignmentState,
) -> None:
    """What the step needs of its template: subjects where it starts a thread, a body, and
    enough variants left in the A/B test."""
    step = sequence.steps[index]
    where = f"step '{step.name}' of {sequence.source}"
    starts_thread = step.is_email and step.thread == "new"
    if starts_thread and not template.active("subject"):
        report.problem(
            TemplateError(
                f"{where} starts a thread but has no active subject",
                file=template.path,
                line=template.subjects[0].line if template.subjects else 1,
            )
        )
    if not starts_thread and template.subjects:
        report.problem(
            TemplateError(
                "subjects are never used here: the step "
                + (
                    "replies in a thread and inherits its subject"
                    if step.is_email
                    else f"is a {step.channel} step"
                ),
                file=template.path,
                line=template.subjects[0].line,
            )
        )
    if not template.active("body"):
        report.problem(TemplateError(f"{where} has no active body", file=template.path))
    if not step.is_email:
        return
    for kind in ("subject", "body") if starts_thread else ("body",):
        active = state.active(template, sequence.name, step.name, kind)
        in_file = template.active(kind)
        if in_file and not active:  # the file has some, reviews retired them all
            report.problem(
                TemplateError(
                    f"{where}: every active {kind} in the file was retired by an "
                    f"A/B review ({', '.join(v.id for v in in_file)}); nothing "
                    "can be sent",
                    file=template.path,
                    line=in_file[0].line,
                    hint="add a new variant, or `outreach ab restore "
                    f"{sequence.name} {step.name} {kind} ID`",
                )
            )
        elif len(active) < ab_review.wanted(ws, kind):
            report.warn(
                f"{template.path}: {sequence.name}/{step.name} has "
                f"{len(active)} active {registry.plural(kind, len(active))}, fewer than "
                f"[ab] min_active_{registry.plural(kind)} = {ab_review.wanted(ws, kind)}: "
                "write new copy"
            )


def _kinds(sequence: Sequence, step_name: str) -> tuple[Kind, ...]:
    step = next(s for s in sequence.steps if s.name == step_name)
    return ("subject", "body") if step.is_email and step.thread == "new" else ("body",)


def _check_languages(
    report: Report,
    sequence: Sequence,
    step: str,
    template: StepTemplate,
    state: registry.AssignmentState,
    languages: Counter[str],
) -> None:
    """Warn where the workspace's prospects speak a language that an active variant (or
    every active variant) of the step has no text in."""
    for kind in _kinds(sequence, step):
        active = state.active(template, sequence.name, step, kind)
        if not active:
            continue
        for language, count in sorted(languages.items()):
            people = f"{count} prospect{'s' if count != 1 else ''} in '{language}'"
            lacking = [v for v in active if language not in v.languages]
            if len(lacking) == len(active):
                report.warn(
                    f"{template.path}:{active[0].line}: {sequence.name}/{step}: no active "
                    f"{kind} has a text in '{language}'; {people} cannot be sent this step"
                )
                continue
            for variant in lacking:
                report.warn(
                    f"{template.path}:{variant.line}: {sequence.name}/{step} {kind} "
                    f"'{variant.id}' has no text in '{language}'; {people} get only the other "
                    f"{registry.plural(kind)}"
                )


def _list_retired(
    report: Report,
    sequence: Sequence,
    step: str,
    template: StepTemplate,
    reviewed: dict[tuple[str, str, str, str], VariantRow],
) -> None:
    """The variants of the step out of the test, by the file or by a review, one way."""
    variants: list[Variant] = template.subjects + template.bodies
    for variant in variants:
        if variant.kind == "subject" and "subject" not in _kinds(sequence, step):
            continue
        row = reviewed.get((sequence.name, step, variant.kind, variant.id))
        if variant.retired:
            by, date = "the template file", None
        elif row is not None and row.retired_at is not None:
            by, date = row.retired_by or "a review", f"{row.retired_at:%Y-%m-%d}"
        else:
            continue
        report.retired.append(
            Retired(
                template.path, variant.line, sequence.name, step, variant.kind, variant.id, by, date
            )
        )


def _stored(ws: Workspace) -> tuple[dict[tuple[str, str, str, str], VariantRow], Counter[str]]:
    """What the database says, read only: the variants a review retired, and how many
    prospects speak each language (theirs, else ``[sending] language``). Nothing before the
    database exists: validate must not create it."""
    if not registry._database_exists(ws):
        return {}, Counter()
    default = ws.config.settings.sending.language
    language = func.coalesce(func.nullif(Prospect.language, ""), default)
    with ws.store.session() as session:
        rows = {
            (r.sequence, r.step, r.kind, r.variant): r
            for r in session.exec(
                select(VariantRow).where(col(VariantRow.retired_at).is_not(None))
            ).all()
        }
        counts = Counter(
            {
                str(lang): int(n)
                for lang, n in session.exec(
                    select(language, func.count()).select_from(Prospect).group_by(language)
                ).all()
            }
        )
    return rows, counts
