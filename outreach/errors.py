"""The exceptions a user can cause, each able to say where (file, line or field) and what to do."""

from __future__ import annotations

from pathlib import Path


class OutreachError(Exception):
    """Bad input or configuration. The CLI prints :meth:`one_line` on stderr and exits 1."""

    def __init__(
        self,
        message: str,
        *,
        file: str | Path | None = None,
        line: int | None = None,
        field: str | None = None,
        hint: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.file = str(file) if file is not None else None
        self.line = line
        self.field = field
        self.hint = hint

    def where(self) -> str:
        """``file:line``, ``file: field`` or just the field, whichever is known."""
        parts = []
        if self.file:
            parts.append(f"{self.file}:{self.line}" if self.line else self.file)
        if self.field:
            parts.append(self.field)
        return ": ".join(parts)

    def one_line(self) -> str:
        where = self.where()
        text = f"{where}: {self.message}" if where else self.message
        if self.hint:
            text += f" ({self.hint})"
        return text.replace("\n", " ")

    def __str__(self) -> str:
        return self.one_line()


class ConfigError(OutreachError):
    """outreach.toml is missing, malformed or inconsistent."""


class SequenceError(OutreachError):
    """A sequence YAML file is malformed or refers to something that does not exist."""


class TemplateError(OutreachError):
    """A template file is malformed, or a variant does not render."""


class ImportError_(OutreachError):  # noqa: N801 - the trailing underscore avoids the builtin
    """A prospects CSV cannot be read as a whole (no header, no email column...)."""


class NotFound(OutreachError):
    """A prospect, task or other named thing does not exist."""


class Problems(OutreachError):
    """Several problems found at once (validate); each is an OutreachError of its own."""

    def __init__(self, problems: list[OutreachError]) -> None:
        super().__init__(f"{len(problems)} problem(s)")
        self.problems = problems

    def one_line(self) -> str:
        return self.problems[0].one_line() if self.problems else self.message


class TemplateProblems(TemplateError):
    """Every problem of one template file. It reads as its first problem (what a command that
    needs the file says); ``validate`` lists :attr:`problems`."""

    def __init__(self, problems: list[TemplateError]) -> None:
        first = problems[0]
        super().__init__(
            first.message, file=first.file, line=first.line, field=first.field, hint=first.hint
        )
        self.problems = problems
