"""Render what one prospect will get at every step of a sequence, every variant shown."""

from __future__ import annotations

from typing import Any

from sqlmodel import col, select

from outreach.ab import registry
from outreach.compose import Composer, starts_thread
from outreach.errors import OutreachError
from outreach.models import Enrollment
from outreach.sequencing import find_prospect
from outreach.workspace import Workspace


def preview(ws: Workspace, email: str, sequence_name: str | None = None) -> dict[str, Any]:
    """Every step of the prospect's live sequence (or ``sequence_name``), rendered for them."""
    with ws.store.session() as session:
        prospect = find_prospect(session, email)
        enrollment = session.exec(
            select(Enrollment)
            .where(Enrollment.prospect_id == prospect.id)
            .order_by(col(Enrollment.id).desc())
        ).first()
    name = sequence_name or (enrollment.sequence if enrollment else None)
    if name is None:
        raise OutreachError(
            f"{prospect.email} is in no sequence", field="--sequence", hint="name one"
        )
    sequence = ws.sequence(name)
    mailbox = ws.config.mailbox(
        enrollment.sender if enrollment and enrollment.sequence == name else None
    )
    composer = Composer(ws)
    who = composer.recipient(prospect, mailbox)
    language = who.language
    steps = []
    state = registry.stored_state(ws)  # what a review retired is not eligible
    for index, step in enumerate(sequence.steps):
        template = ws.templates.get(step.template)
        root = sequence.thread_root(index)
        entry: dict[str, Any] = {
            "step": step.name,
            "channel": step.channel,
            "wait": str(step.wait),
            "template": template.path,
            "thread": step.thread,
            "subjects": [],
            "bodies": [],
        }
        if step.thread == "reply":
            entry["subject_from"] = sequence.steps[root].name
        elif starts_thread(step):
            entry["subjects"] = [
                {"id": v.id, "text": composer.render(template, v, who)}
                for v in state.eligible(
                    template, sequence.name, step.name, "subject", language, prospect.persona
                )
            ]
        for variant in state.eligible(
            template, sequence.name, step.name, "body", language, prospect.persona
        ):
            entry["bodies"].append(
                {"id": variant.id, "text": composer.render(template, variant, who)}
            )
        steps.append(entry)
    return {
        "prospect": prospect.email,
        "sequence": sequence.name,
        "sender": f"{mailbox.name} <{mailbox.email}>",
        "language": language,
        "persona": prospect.persona,
        "steps": steps,
    }
