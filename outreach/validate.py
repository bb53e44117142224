"""Check a whole workspace: config, every sequence, every template, every variant rendered."""

from __future__ import annotations

from dataclasses import dataclass, field

from outreach import ab
from outreach.config import Mailbox
from outreach.engine import orphan_problems
from outreach.errors import OutreachError, TemplateError
from outreach.workspace import Workspace, template_variables

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
class Report:
    problems: list[OutreachError] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    rendered: int = 0
    sequences: int = 0
    templates: int = 0


def validate(ws: Workspace) -> Report:
    """Everything wrong with the workspace, each problem with its file and line."""
    report = Report(problems=list(ws.sequence_problems))
    sequences, _ = ws._sequences
    report.sequences = len(sequences)
    settings = ws.config.settings
    mailbox = ws.config.mailboxes[0] if ws.config.mailboxes else PLACEHOLDER_SENDER
    sender = ws.sender_variables(mailbox)
    sample = {**SAMPLE_PROSPECT, **settings.sample_prospect}
    standard = {
        k: v
        for k, v in sample.items()
        if k in SAMPLE_PROSPECT or k in ("persona", "language", "timezone")
    }
    extra = {k: v for k, v in sample.items() if k not in standard}
    try:  # what the A/B registry says: texts edited after they were sent, retired variants
        retired, edited = ab.check_variants(ws)
    except OutreachError:  # a broken sequence or template: reported below, file by file
        retired, edited = ab.AssignmentState(), []
    report.problems.extend(edited)
    report.problems.extend(orphan_problems(ws))  # a removed mailbox with live enrollments
    used: set[str] = set()
    for sequence in sequences.values():
        for index, step in enumerate(sequence.steps):
            used.add(step.template)
            where = f"step '{step.name}' of {sequence.source}"
            try:
                template = ws.templates.get(step.template)
            except TemplateError as exc:
                if exc.line is not None:  # a problem inside the template file
                    report.problems.append(exc)
                else:  # the file is missing or outside templates/: the sequence names it
                    report.problems.append(
                        TemplateError(
                            f"step '{step.name}': template {step.template}: {exc.message}",
                            file=sequence.source,
                            line=sequence.template_lines[index]
                            if index < len(sequence.template_lines)
                            else None,
                        )
                    )
                continue
            starts_thread = step.is_email and step.thread == "new"
            if starts_thread and not template.active("subject"):
                report.problems.append(
                    TemplateError(
                        f"{where} starts a thread but has no active subject",
                        file=template.path,
                        line=template.subjects[0].line if template.subjects else 1,
                    )
                )
            if not starts_thread and template.subjects:
                report.problems.append(
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
                report.problems.append(
                    TemplateError(f"{where} has no active body", file=template.path)
                )
            if step.is_email:
                for kind in ("subject", "body") if starts_thread else ("body",):
                    active = retired.active(template, sequence.name, step.name, kind)
                    in_file = template.active(kind)
                    if in_file and not active:  # the file has some, reviews retired them all
                        report.problems.append(
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
                    elif len(active) < ab.wanted(ws, kind):
                        report.warnings.append(
                            f"{template.path}: {sequence.name}/{step.name} has "
                            f"{len(active)} active {ab.plural(kind, len(active))}, fewer than "
                            f"[ab] min_active_{ab.plural(kind)} = {ab.wanted(ws, kind)}: "
                            "write new copy"
                        )
            for variant in template.subjects + template.bodies:
                for language, persona in sorted(variant.texts):
                    variables = template_variables(
                        {
                            **standard,
                            "language": language,
                            "persona": None if persona == "default" else persona,
                        },
                        extra,
                        sender,
                        settings.variables,
                    )
                    who = None if persona == "default" else persona
                    try:
                        if variant.kind == "subject":
                            ws.renderer.render_subject(
                                variant, language, who, variables, template.path
                            )
                        else:
                            ws.renderer.render_body(
                                variant, language, who, variables, template.path
                            )
                        report.rendered += 1
                    except TemplateError as exc:
                        report.problems.append(exc)
    try:
        files = list(ws.templates.files())
    except OSError:
        files = []
    report.templates = len(files)
    for relative in files:
        if relative not in used:
            try:
                ws.templates.get(relative)
            except TemplateError as exc:
                report.problems.append(exc)
            if not ws.sequence_problems:  # a broken sequence file would make this a false alarm
                report.warnings.append(
                    f"{ws.templates.display(relative)}: not used by any sequence"
                )
    for box in ws.config.mailboxes:
        if box.password_env and box.password() is None and box.smtp_security != "none":
            report.warnings.append(
                f"mailboxes {box.email}: environment variable {box.password_env} is not set "
                "(needed to send)"
            )
    return report
