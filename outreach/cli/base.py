"""What every command shares: the group, the workspace context, one-line errors, tables."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from outreach import __version__
from outreach.errors import OutreachError, Problems
from outreach.workspace import Workspace


def print_json(document: Any) -> None:
    click.echo(json.dumps(document, ensure_ascii=False, indent=2, default=str))


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
            self._ws = Workspace.load(self.config_path)
        return self._ws


pass_ctx = click.make_pass_decorator(Context)


class OutreachGroup(click.Group):
    """Turns a user error anywhere below into one line on stderr and exit code 1."""

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


def table(rows: list[list[Any]], header: list[str]) -> None:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=False)]
    for row in [header, *rows]:
        click.echo(
            "  ".join(
                str(v).ljust(w) if i == 0 else str(v).rjust(w)
                for i, (v, w) in enumerate(zip(row, widths, strict=False))
            ).rstrip()
        )
