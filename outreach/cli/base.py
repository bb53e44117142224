"""What every command shares: the group, the workspace context, one-line errors, tables."""

from __future__ import annotations

import importlib
import json
import sys
from datetime import datetime
from typing import TYPE_CHECKING, Any

import click

from outreach import __version__
from outreach.errors import OutreachError, Problems

if TYPE_CHECKING:
    from outreach.workspace import Workspace


def print_json(document: Any) -> None:
    click.echo(json.dumps(document, ensure_ascii=False, indent=2, default=str))


def when(iso: str | None, zone: str, missing: str = "-") -> str:
    """An ISO 8601 time from a report (UTC), as people read it: local, with the zone."""
    from outreach import localtime

    return localtime.local(datetime.fromisoformat(iso) if iso else None, zone, missing)


def fail(lines: list[str]) -> None:
    for line in lines:
        click.echo(line, err=True)
    sys.exit(1)


class Context:
    def __init__(self, config: str | None) -> None:
        self.config_path = config
        self._ws: Workspace | None = None

    @property
    def ws(self) -> Workspace:
        if self._ws is None:
            from outreach.workspace import Workspace  # the config, the store: not for --help

            self._ws = Workspace.load(self.config_path)
        return self._ws


pass_ctx = click.make_pass_decorator(Context)


def _short_help(text: str, limit: int) -> str:
    """Click's own shortening of a help text to ``limit`` characters."""
    return click.Command(None, help=text).get_short_help_str(limit)


class OutreachGroup(click.Group):
    """Turns a user error anywhere below into one line on stderr and exit code 1, and loads
    a command's module only when that command runs.

    ``lazy`` maps each command to the ``outreach.cli`` module that registers it and its short
    help, so that ``outreach --help`` imports no command module and ``outreach status`` only
    ``people`` (the libraries behind the others, aiohttp, IMAP, the A/B statistics, cost a
    second or more on a busy machine). A test checks the table against the real commands.
    """

    lazy: dict[str, tuple[str, str]] = {}

    def _load(self, module: str) -> None:
        importlib.import_module(f"outreach.cli.{module}")  # registers its commands on `cli`

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(self.lazy) | set(self.commands))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands:
            if cmd_name in self.lazy:
                self._load(self.lazy[cmd_name][0])
            else:  # a command the table does not know yet: load everything, then look
                for module in sorted({module for module, _ in self.lazy.values()}):
                    self._load(module)
        return super().get_command(ctx, cmd_name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The command list of ``--help``, as click writes it, from the table for the commands
        whose module is not loaded."""
        names = [
            n for n in self.list_commands(ctx) if not getattr(self.commands.get(n), "hidden", False)
        ]
        if not names:
            return
        limit = formatter.width - 6 - max(len(name) for name in names)
        rows = []
        for name in names:
            command = self.commands.get(name)
            if command is None:
                text = _short_help(self.lazy[name][1], limit)
            else:
                text = command.get_short_help_str(limit)
            rows.append((name, text))
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except Problems as exc:
            fail([p.one_line() for p in exc.problems])
        except OutreachError as exc:
            fail([exc.one_line()])


@click.group(cls=OutreachGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    "config",
    type=click.Path(dir_okay=False),
    envvar="OUTREACH_CONFIG",
    help="Configuration file (default: $OUTREACH_CONFIG, else ./outreach.toml).",
)
@click.version_option(__version__, prog_name="outreach")
@click.pass_context
def cli(ctx: click.Context, config: str | None) -> None:
    """outreach: cold, reminder and network email sequences, sent on time, stopped on reply."""
    ctx.obj = Context(config)


def mailbox_state(row: dict[str, Any]) -> str:
    if row["paused"]:
        return f"PAUSED: {row['paused']}"
    if row.get("unreachable"):
        return f"UNREACHABLE: {row['unreachable']}"
    return "ok"


def table(rows: list[list[Any]], header: list[str], *, left: bool = False) -> None:
    """Columns in the widths of their longest cell: the first (or, with ``left``, every one)
    aligned left, the others right."""
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=False)]
    for row in [header, *rows]:
        click.echo(
            "  ".join(
                str(v).ljust(w) if i == 0 or left else str(v).rjust(w)
                for i, (v, w) in enumerate(zip(row, widths, strict=False))
            ).rstrip()
        )
