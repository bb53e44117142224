"""Load and validate the YAML sequence definitions (``sequences/*.yaml``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from outreach.errors import OutreachError, SequenceError
from outreach.planner import Wait
from outreach.yamlfile import YamlDoc, load_yaml

NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]*$"

# The conditions a sequence's `next.audience` may combine. Each names a fact the store knows
# about an enrollment that ended without a reaction. "opened" and "clicked" count people only
# (outreach/mail/scanners.py), and need [tracking] opens / clicks on.
AUDIENCE_RULES = {
    "no_reply": "the prospect did not reply to any message of the sequence",
    "not_bounced": "no message of the sequence bounced",
    "opened": "a person opened (or clicked in) an email of the sequence",
    "clicked": "a person clicked a link in an email of the sequence",
}
# What each tracked rule needs on in [tracking], and the step rule stop_on likewise.
TRACKED_RULES = {"opened": "opens", "clicked": "clicks"}
STOP_ON = {"click": "clicks"}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Step(_Strict):
    """One touch of a sequence: an email, a LinkedIn message or another manual task."""

    name: str = Field(pattern=NAME_PATTERN)
    channel: Literal["email", "linkedin", "task"]
    wait: Wait
    template: str
    thread: Literal["new", "reply"] = "new"
    reply_to: str | None = None
    # A person's click on a link of this step's email ends the enrollment like a goal.
    stop_on: list[str] = Field(default_factory=list)

    @field_validator("stop_on")
    @classmethod
    def _known_stops(cls, value: list[str]) -> list[str]:
        for rule in value:
            if rule not in STOP_ON:
                raise ValueError(
                    f"unknown stop_on '{rule}' (known: click; an open is not reliable enough "
                    "to stop on: privacy proxies open every message)"
                )
        return value

    @field_validator("wait", mode="before")
    @classmethod
    def _parse_wait(cls, value: object) -> Wait:
        if isinstance(value, Wait):
            return value
        if isinstance(value, int):
            value = f"{value} days"
        if not isinstance(value, str):
            raise ValueError("wait must be text such as '3-5 business days'")
        return Wait.parse(value)

    @property
    def is_email(self) -> bool:
        return self.channel == "email"


class Next(_Strict):
    """What follows the sequence for those who did not react."""

    sequence: str
    wait: Wait
    audience: list[str] = Field(default_factory=lambda: ["no_reply", "not_bounced"])

    _parse_wait = field_validator("wait", mode="before")(Step._parse_wait.__func__)  # type: ignore[attr-defined]

    @field_validator("audience")
    @classmethod
    def _known_rules(cls, value: list[str]) -> list[str]:
        for rule in value:
            if rule not in AUDIENCE_RULES:
                raise ValueError(
                    f"unknown audience rule '{rule}' (known: {', '.join(AUDIENCE_RULES)})"
                )
        return value


class Sequence(_Strict):
    """A named cadence: its steps in order and the sequence that follows it."""

    name: str
    description: str = ""
    steps: list[Step] = Field(min_length=1)
    next: Next | None = None
    source: str = ""
    next_line: int | None = None
    template_lines: list[int | None] = Field(default_factory=list)  # where each step names it
    audience_line: int | None = None  # next.audience
    stop_on_lines: list[int | None] = Field(default_factory=list)  # each step's stop_on

    @model_validator(mode="after")
    def _threads(self) -> Sequence:
        seen: dict[str, Step] = {}
        for index, step in enumerate(self.steps):
            if step.name in seen:
                raise _StepError(index, "name", f"step name '{step.name}' is used twice")
            if step.thread == "reply":
                if not step.is_email:
                    raise _StepError(index, "thread", "only an email step can reply in a thread")
                target = step.reply_to
                if target is None:
                    if not any(s.is_email for s in seen.values()):
                        raise _StepError(
                            index, "thread", "thread: reply needs an earlier email step"
                        )
                elif target not in seen or not seen[target].is_email:
                    raise _StepError(
                        index, "reply_to", f"reply_to '{target}' is not an earlier email step"
                    )
            elif step.reply_to is not None:
                raise _StepError(index, "reply_to", "reply_to needs thread: reply")
            if step.stop_on and not step.is_email:
                raise _StepError(index, "stop_on", "stop_on is for email steps (their links)")
            seen[step.name] = step
        return self

    def step(self, index: int) -> Step:
        return self.steps[index]

    def tracking_problems(self, opens: bool, clicks: bool) -> list[SequenceError]:
        """An audience rule or ``stop_on`` that needs a kind of tracking that is off: nobody
        would ever move on (or stop), so it is a problem, not a warning."""
        on = {"opens": opens, "clicks": clicks}
        problems = []
        for rule in self.next.audience if self.next else []:
            needs = TRACKED_RULES.get(rule)
            if needs and not on[needs]:
                problems.append(
                    SequenceError(
                        f"audience '{rule}' needs [tracking] {needs} = true, which is off: "
                        f"nobody would move on to {self.next.sequence if self.next else '-'}",
                        file=self.source,
                        line=self.audience_line,
                        field="next.audience",
                        hint=f"turn on [tracking] {needs} (and domain) in outreach.toml, or "
                        f"take '{rule}' out",
                    )
                )
        for index, step in enumerate(self.steps):
            for rule in step.stop_on:
                needs = STOP_ON[rule]
                if not on[needs]:
                    problems.append(
                        SequenceError(
                            f"stop_on '{rule}' needs [tracking] {needs} = true, which is off: "
                            "nothing would ever stop on it",
                            file=self.source,
                            line=self.stop_on_lines[index]
                            if index < len(self.stop_on_lines)
                            else None,
                            field=f"steps.{index}.stop_on",
                            hint=f"turn on [tracking] {needs} in outreach.toml, or take it out",
                        )
                    )
        return problems

    def thread_root(self, index: int) -> int:
        """The index of the step whose message starts the thread that step ``index`` is in."""
        step = self.steps[index]
        while step.thread == "reply":
            if step.reply_to is not None:
                index = next(i for i, s in enumerate(self.steps) if s.name == step.reply_to)
            else:
                index = max(i for i in range(index) if self.steps[i].is_email)
            step = self.steps[index]
        return index


class _StepError(ValueError):
    def __init__(self, index: int, key: str, message: str) -> None:
        super().__init__(message)
        self.loc = ("steps", index, key)


@dataclass
class TemplateRef:
    """A step's template as its sequence file names it: read even from a broken file, so that
    ``validate`` checks the templates of a sequence it also reports problems in."""

    step: str
    template: str
    line: int | None


@dataclass
class SequenceFile:
    """One file of ``sequences/``: the sequence, when it is valid, and every problem in it."""

    source: str
    sequence: Sequence | None
    problems: list[OutreachError] = field(default_factory=list)
    templates: list[TemplateRef] = field(default_factory=list)


def load_sequence(path: Path, display: str | None = None) -> Sequence:
    """Load one sequence file; its name is the file name without ``.yaml``. A broken file
    raises its first problem."""
    result = read_sequence(path, display)
    if result.sequence is None:
        raise result.problems[0]
    return result.sequence


def read_sequence(path: Path, display: str | None = None) -> SequenceFile:
    """Read one sequence file with every problem in it, each at its line."""
    name = display or str(path)
    try:
        doc = load_yaml(path, SequenceError, name)
    except SequenceError as exc:
        return SequenceFile(name, None, [exc])
    result = SequenceFile(name, None, list(doc.problems))
    if not isinstance(doc.data, dict):
        result.problems.append(
            SequenceError("a sequence file is a mapping with `steps:`", file=name, line=1)
        )
        return result
    data = dict(doc.data)
    steps = data.get("steps")
    if isinstance(steps, list):
        result.templates = [
            TemplateRef(
                str(step.get("name", i + 1)), step["template"], doc.line(("steps", i, "template"))
            )
            for i, step in enumerate(steps)
            if isinstance(step, dict) and isinstance(step.get("template"), str)
        ]
    stem = path.stem
    if data.setdefault("name", stem) != stem:
        result.problems.append(
            SequenceError(
                f"name '{data['name']}' differs from the file name '{stem}'",
                file=name,
                line=doc.line(("name",)),
            )
        )
        data["name"] = stem
    try:
        sequence = Sequence.model_validate(
            {
                **data,
                "source": name,
                "next_line": doc.line(("next", "sequence")),
                "template_lines": [doc.line(("steps", i, "template")) for i in range(len(steps))]
                if isinstance(steps, list)
                else [],
                "audience_line": doc.line(("next", "audience")),
                "stop_on_lines": [doc.line(("steps", i, "stop_on")) for i in range(len(steps))]
                if isinstance(steps, list)
                else [],
            }
        )
    except ValidationError as exc:
        for problem in _to_sequence_errors(exc, doc, name):
            if problem.one_line() not in {p.one_line() for p in result.problems}:
                result.problems.append(problem)
        return result
    if not result.problems:
        result.sequence = sequence
    return result


def _to_sequence_errors(exc: ValidationError, doc: YamlDoc, name: str) -> list[SequenceError]:
    errors = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        cause = err.get("ctx", {}).get("error")
        if isinstance(cause, _StepError):
            loc = cause.loc
        message = str(err["msg"]).removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            message = f"unknown key '{loc[-1]}'"
        elif err["type"] == "missing":
            message = f"'{loc[-1]}' is required"
        field_name = ".".join(str(part) for part in loc)
        errors.append(
            SequenceError(message, file=name, line=doc.line(loc), field=field_name or None)
        )
    return errors


def read_sequences(directory: Path, root: Path | None = None) -> list[SequenceFile]:
    """Every ``*.yaml`` in ``directory``, good or broken, in name order."""
    files = []
    for path in sorted(directory.glob("*.y*ml")):
        display = str(path.relative_to(root)) if root and path.is_relative_to(root) else str(path)
        files.append(read_sequence(path, display))
    return files


def load_sequences(
    directory: Path,
    root: Path | None = None,
    tracking: tuple[bool, bool] = (False, False),
) -> tuple[dict[str, Sequence], list[OutreachError]]:
    """Every ``*.yaml`` in ``directory``; returns the good ones and every problem of the bad.
    ``tracking``: whether opens and clicks are tracked (an ``opened`` audience needs opens)."""
    sequences: dict[str, Sequence] = {}
    problems: list[OutreachError] = []
    if not directory.is_dir():
        return {}, [SequenceError("sequences folder not found", file=directory)]
    files = read_sequences(directory, root)
    for result in files:
        problems.extend(result.problems)
        if result.sequence is not None:
            sequences[result.sequence.name] = result.sequence
    # A file that is there but broken has its own problems; naming it is not one more.
    written = {Path(result.source).stem for result in files}
    for sequence in sequences.values():
        problems.extend(sequence.tracking_problems(*tracking))
        if sequence.next and sequence.next.sequence not in written:
            problems.append(
                SequenceError(
                    f"next.sequence '{sequence.next.sequence}' does not exist",
                    file=sequence.source,
                    line=sequence.next_line,
                )
            )
    return sequences, problems


def playbook_order(sequences: dict[str, Sequence]) -> list[str]:
    """Sequence names in the order a prospect moves through them (cold, reminder, network),
    each chain from its start; sequences outside any chain keep their alphabetical place."""
    targets = {s.next.sequence for s in sequences.values() if s.next}
    order: list[str] = []
    for name in sorted(sequences, key=lambda n: (n in targets, n)):
        while name in sequences and name not in order:
            order.append(name)
            nxt = sequences[name].next
            if nxt is None:
                break
            name = nxt.sequence
    return order
