"""A loaded workspace: the configuration, the sequences, the templates and the store they name."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from outreach.config import Config, Mailbox, find_config_path, load_config
from outreach.errors import OutreachError, Problems, SequenceError
from outreach.prospect_csv import STANDARD_FIELDS
from outreach.sequences import Sequence, load_sequences
from outreach.store import Store, open_store

if TYPE_CHECKING:  # Jinja loads with the first template: `status` never needs it
    from outreach.templates import Renderer, TemplateLibrary


@dataclass
class Workspace:
    """Everything a command needs, loaded on first use."""

    config: Config
    _store: Store | None = field(default=None, repr=False)
    _templates_stamp: tuple[tuple[str, int, int], ...] = field(default=(), repr=False)

    def __post_init__(self) -> None:
        # An OAuth mailbox's tokens live in this workspace's database: SMTP and IMAP find
        # them through the mailbox.
        oauth = [box for box in self.config.mailboxes if box.auth == "oauth2"]
        if not oauth:
            return
        from outreach.grants import TokenSource

        key_env = self.config.settings.secrets.key_env
        for box in oauth:
            box.bind_token_source(TokenSource(lambda: self.store, box, key_env))

    @classmethod
    def load(cls, config_path: str | Path | None = None) -> Workspace:
        return cls(load_config(find_config_path(config_path)))

    @cached_property
    def _sequences(self) -> tuple[dict[str, Sequence], list[OutreachError]]:
        tracking = self.config.settings.tracking
        return load_sequences(
            self.config.sequences_dir, self.config.root, (tracking.opens, tracking.clicks)
        )

    @property
    def sequences(self) -> dict[str, Sequence]:
        """The valid sequences; raises the first problem when any file is broken."""
        sequences, problems = self._sequences
        if problems:
            raise Problems(problems)
        return sequences

    @property
    def sequence_problems(self) -> list[OutreachError]:
        return self._sequences[1]

    @property
    def loaded_sequences(self) -> dict[str, Sequence]:
        """The sequences that loaded, even while another file is broken (what a web request
        about a message already sent may still read)."""
        return self._sequences[0]

    def sequence(self, name: str) -> Sequence:
        sequences = self.sequences
        if name not in sequences:
            raise SequenceError(
                f"no sequence named '{name}'",
                file=self.config.sequences_dir / f"{name}.yaml",
                hint="known: " + ", ".join(sorted(sequences)) if sequences else None,
            )
        return sequences[name]

    @cached_property
    def templates(self) -> TemplateLibrary:
        from outreach.templates import TemplateLibrary

        self._templates_stamp = self._stamp_templates()
        return TemplateLibrary(self.config.templates_dir, self.config.root)

    def refresh_templates(self) -> bool:
        """Forget the loaded templates if a file under ``templates/`` changed since they were
        read, so a long-running daemon takes a marketer's edit at its next dispatch."""
        if "templates" not in self.__dict__ or self._stamp_templates() == self._templates_stamp:
            return False
        del self.__dict__["templates"]
        return True

    def _stamp_templates(self) -> tuple[tuple[str, int, int], ...]:
        try:
            return tuple(
                sorted(
                    (str(path), stat.st_mtime_ns, stat.st_size)
                    for path in self.config.templates_dir.rglob("*.y*ml")
                    for stat in (path.stat(),)
                )
            )
        except OSError:
            return ()

    @cached_property
    def renderer(self) -> Renderer:
        from outreach.templates import Renderer

        return Renderer()

    @property
    def store(self) -> Store:
        if self._store is None:
            self._store = open_store(self.config.database_url)
        return self._store

    def close(self) -> None:
        if self._store is not None:
            self._store.dispose()
            self._store = None

    def variables_for(self, prospect: Any, mailbox: Mailbox) -> dict[str, Any]:
        """What the templates see for a stored prospect sent from ``mailbox``."""
        fields = {key: getattr(prospect, key) for key in STANDARD_FIELDS}
        return template_variables(
            fields, prospect.fields, self.sender_variables(mailbox), self.config.settings.variables
        )

    def sender_variables(self, mailbox: Mailbox) -> dict[str, str]:
        """What templates see as ``sender``: name, first_name, email, title, company, signature."""
        company = mailbox.company or self.config.settings.sending.company
        signature = mailbox.signature
        if signature is None:
            signature = "\n".join(part for part in (mailbox.name, mailbox.title, company) if part)
        values = {
            "name": mailbox.name,
            "first_name": mailbox.first_name,
            "email": mailbox.email,
            "title": mailbox.title,
            "company": company,
            "signature": signature.strip("\n"),
        }
        return {key: value for key, value in values.items() if value}


def template_variables(
    prospect: Mapping[str, Any],
    extra: Mapping[str, Any],
    sender: Mapping[str, str],
    workspace: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The variables a template sees: the workspace's ``[variables]``, overridden by the
    prospect's extra CSV columns and fields, and ``sender``. A blank value is left out, so it
    is undefined, never empty."""
    variables: dict[str, Any] = {}
    for source in (workspace or {}, extra):
        variables.update((key, value) for key, value in source.items() if value not in (None, ""))
    for key in STANDARD_FIELDS:
        value = prospect.get(key)
        if value not in (None, ""):
            variables[key] = value
    variables["sender"] = dict(sender)
    return variables
