"""What one prospect gets at one step: the copy rendered for them and the message built.

The only place that answers it. The dispatcher composes a claimed message here just before
SMTP; enroll's pre-flight composes every step of every row's shape here (the whole message is
built, as send would build it, so a row that could never be sent is rejected at its line);
``preview`` shows every variant rendered here; ``validate`` renders every text here. Nothing
here opens a database transaction: rendering is user code and may be slow, and a stop must
never wait on it.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from jinja2 import Environment, TemplateSyntaxError, meta

from outreach.config import Mailbox
from outreach.errors import TemplateError
from outreach.mail.message import (
    InvalidHeader,
    Outgoing,
    Quote,
    check_header_value,
    check_recipient,
    make_message_id,
    reply_subject,
)
from outreach.mail.tracking import Tracker
from outreach.mail.unsubscribe import make_link, secret_from_env
from outreach.mail.wire import WireMessage, render_message
from outreach.sequences import Sequence, Step
from outreach.templates import Kind, StepTemplate, Variant
from outreach.workspace import Workspace


def starts_thread(step: Step) -> bool:
    """An email step that opens a thread of its own, with a subject of its own (the others
    reply in an earlier step's thread, under ``Re:`` and that step's subject)."""
    return step.is_email and step.thread == "new"


def subject_kinds(step: Step) -> tuple[Kind, ...]:
    """The variant kinds a step's message is made of: a subject only where it starts a thread."""
    return ("subject", "body") if starts_thread(step) else ("body",)


def header_names(sources: Iterable[str]) -> frozenset[str]:
    """The variables a set of subject templates prints (their values reach a header)."""
    names: set[str] = set()
    env = Environment()
    for source in sources:
        try:
            names |= meta.find_undeclared_variables(env.parse(source))
        except TemplateSyntaxError:
            continue  # reported where the template is rendered
    return frozenset(names)


@dataclass(frozen=True)
class Recipient:
    """Who a message is for, as far as composing goes."""

    email: str
    name: str | None
    language: str
    persona: str | None
    timezone: str | None
    variables: Mapping[str, Any]


@dataclass(frozen=True)
class Earlier:
    """A message already sent in the thread a step replies in."""

    message_id: str
    subject: str
    body: str
    sent_at: datetime
    sender: str = ""  # the mailbox it went from (a reassign may change the next one's)


@dataclass(frozen=True)
class Composed:
    """A step composed for one prospect: what to store and what to put on the wire."""

    subject: str
    body: str  # the plain text as sent (with the quoted earlier message, if any)
    html: str | None
    email: WireMessage  # the bytes SMTP sends and the Sent folder keeps
    message_id: str
    in_reply_to: str | None
    references: tuple[str, ...]
    thread_root: str

    def stored(self) -> dict[str, Any]:
        """The outbox columns this fills in."""
        return {
            "subject": self.subject,
            "body": self.body,
            "in_reply_to": self.in_reply_to,
            "references": " ".join(self.references) or None,
            "thread_root": self.thread_root,
        }


class Composer:
    """Renders and builds steps for prospects, with the workspace's settings."""

    def __init__(self, ws: Workspace, *, rehearsal: bool = False) -> None:
        """``rehearsal``: compose only to check (enroll's pre-flight); unsubscribe links are
        signed with a throwaway key, so no secret is needed and none is ever sent."""
        self.ws = ws
        self.settings = ws.config.settings
        self._secret: str | None = None
        sending, tracking = self.settings.sending, self.settings.tracking
        if sending.unsubscribe_url:
            self._secret = (
                secrets.token_urlsafe(32)
                if rehearsal
                else secret_from_env(sending.unsubscribe_secret_env)
            )
        # Opens and clicks (off by default): the tracking links are signed with the same
        # secret, under a salt of their own.
        self.tracker: Tracker | None = None
        if tracking.on and tracking.domain:
            self.tracker = Tracker(
                base_url=tracking.domain,
                secret=self._secret
                or (
                    secrets.token_urlsafe(32)
                    if rehearsal
                    else secret_from_env(
                        sending.unsubscribe_secret_env, "the unsubscribe and tracking links"
                    )
                ),
                opens=tracking.opens,
                clicks=tracking.clicks,
                untouched=(sending.unsubscribe_url.partition("?")[0],)
                if sending.unsubscribe_url
                else (),
            )

    def recipient(self, prospect: Any, box: Mailbox) -> Recipient:
        """A stored prospect (or anything with its fields) as a recipient from ``box``."""
        return Recipient(
            email=prospect.email,
            name=" ".join(p for p in (prospect.first_name, prospect.last_name) if p) or None,
            language=prospect.language or self.settings.sending.language,
            persona=prospect.persona,
            timezone=prospect.timezone,
            variables=self.ws.variables_for(prospect, box),
        )

    def check_headers(self, who: Recipient, names: Iterable[str]) -> str | None:
        """None when the values of ``who`` that reach a header (address, name, and the
        variables ``names`` a subject prints) are fit for one; else the problem in one line."""
        try:
            check_recipient(who.email, who.name)
            for name in names:
                value = who.variables.get(name)
                if isinstance(value, str):
                    check_header_value(value, f"{name} (printed in a subject)")
        except InvalidHeader as exc:
            return exc.one_line()
        return None

    # ------------------------------------------------------------- rendering

    def render(self, template: StepTemplate, variant: Variant, who: Recipient) -> str:
        """One subject variant's text, or one body variant's plain text, for ``who``."""
        renderer = self.ws.renderer
        if variant.kind == "subject":
            return renderer.render_subject(
                variant, who.language, who.persona, who.variables, template.path
            )
        text, _ = renderer.render_body(
            variant, who.language, who.persona, who.variables, template.path
        )
        return text

    def body(
        self, template: StepTemplate, variant_id: str, who: Recipient
    ) -> tuple[str, str | None]:
        """A body variant's plain text and HTML (if it has one) for ``who``."""
        return self.ws.renderer.render_body(
            template.variant("body", variant_id),
            who.language,
            who.persona,
            who.variables,
            template.path,
        )

    # ------------------------------------------------------------- building

    def compose(
        self,
        box: Mailbox,
        sequence: Sequence,
        index: int,
        who: Recipient,
        *,
        subject_variant: str | None,
        body_variant: str,
        thread: list[Earlier],
        message_id: str,
        now: datetime,
    ) -> Composed:
        """The message of step ``index`` for ``who``: rendered, threaded, built. Raises
        :class:`TemplateError` or :class:`outreach.mail.message.InvalidHeader`, never half a
        message."""
        step = sequence.steps[index]
        template = self.ws.templates.get(step.template)
        if starts_thread(step):
            subject = self.render(template, template.variant("subject", subject_variant or ""), who)
            previous = None
        else:
            if not thread:
                raise TemplateError(
                    f"step '{step.name}' replies in a thread that was never sent",
                    file=sequence.source,
                )
            subject, previous = reply_subject(thread[0].subject), thread[-1]
        text, html = self.body(template, body_variant, who)
        if self.tracker is not None:
            # The step's own copy only: the quoted earlier message (added when the message is
            # built) keeps the earlier message's links.
            text, html = self.tracker.apply(text, html, message_id)
        quote = None
        if previous is not None and self.settings.sending.quote_previous:
            # After a reassign the earlier message is quoted under the name it was sent with.
            author_email = previous.sender or box.email
            author = next((b for b in self.ws.config.mailboxes if b.email == author_email), None)
            quote = Quote(
                sent_at=previous.sent_at,
                from_name=author.name if author else "",
                from_email=author_email,
                text=previous.body,
                timezone=who.timezone or box.timezone or self.settings.sending.timezone,
            )
        link = None
        if self.settings.sending.unsubscribe_url and self._secret:
            link = make_link(self.settings.sending.unsubscribe_url, self._secret, who.email)
        outgoing = Outgoing(
            from_name=box.name,
            from_email=box.email,
            to_email=who.email,
            to_name=who.name,
            subject=subject,
            text=text,
            html=html,
            message_id=message_id,
            date=now,
            in_reply_to=previous.message_id if previous else None,
            references=tuple(m.message_id for m in thread) if previous else (),
            unsubscribe_mailto=self.settings.sending.unsubscribe_mailto,
            unsubscribe_url=link,
            quote=quote,
            language=who.language,
        )
        wire = render_message(outgoing)
        return Composed(
            subject=subject,
            body=wire.text,
            html=html,
            email=wire,
            message_id=message_id,
            in_reply_to=outgoing.in_reply_to,
            references=outgoing.references,
            thread_root=thread[0].message_id if thread else message_id,
        )

    def rehearse(
        self,
        box: Mailbox,
        sequence: Sequence,
        who: Recipient,
        eligible: Any,
        now: datetime,
    ) -> str | None:
        """Compose every step of ``sequence`` for ``who`` with every variant that could be
        chosen (``eligible(template, step, kind)`` lists them), as send would, threads
        included; None when all of it builds, else the first problem in one line."""
        try:
            self._rehearse(box, sequence, who, eligible, now)
        except (TemplateError, InvalidHeader) as exc:
            return exc.one_line()
        return None

    def _rehearse(
        self, box: Mailbox, sequence: Sequence, who: Recipient, eligible: Any, now: datetime
    ) -> None:
        threads: dict[int, list[Earlier]] = {}
        for index, step in enumerate(sequence.steps):
            template = self.ws.templates.get(step.template)
            bodies = eligible(template, step, "body")
            if not bodies:
                raise TemplateError(
                    f"step '{step.name}' has no active body in '{who.language}'",
                    file=template.path,
                )
            subjects = eligible(template, step, "subject") if starts_thread(step) else [None]
            if not subjects:
                raise TemplateError(
                    f"step '{step.name}' has no active subject in '{who.language}'",
                    file=template.path,
                )
            if not step.is_email:
                for variant in bodies:
                    self.body(template, variant.id, who)
                continue
            # Every subject and every body is built into a whole message once.
            pairs = [(s, bodies[0]) for s in subjects] + [(subjects[0], b) for b in bodies[1:]]
            root = sequence.thread_root(index)
            thread = threads.get(root, [])
            for subject, variant in pairs:
                composed = self.compose(
                    box,
                    sequence,
                    index,
                    who,
                    subject_variant=subject.id if subject else None,
                    body_variant=variant.id,
                    thread=thread,
                    message_id=make_message_id(box.email),
                    now=now,
                )
            threads[root] = [
                *thread,
                Earlier(composed.message_id, composed.subject, composed.body, now),
            ]
