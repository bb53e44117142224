"""Setting a workspace up: init, validate, the database, the local mail sink."""

from __future__ import annotations

import signal
import threading
from pathlib import Path

import click

from outreach import daemon
from outreach.cli.base import (
    Context,
    cli,
    fail,
    pass_ctx,
    print_json,
)
from outreach.mail.sink import Sink, summarize
from outreach.starter import init_workspace
from outreach.store import Store, database_errors
from outreach.transfer import copy_database
from outreach.validate import validate as validate_workspace


@cli.command()
@click.argument("directory", default=".", type=click.Path(file_okay=False, path_type=Path))
@click.option("--force", is_flag=True, help="Overwrite files that already exist.")
@click.option(
    "--demo",
    is_flag=True,
    help="Send at any hour, seconds apart, to the local sink (for trying it out).",
)
def init(directory: Path, force: bool, demo: bool) -> None:
    """Write a working starter: outreach.toml, the three playbook sequences, their templates
    and a sample prospects CSV."""
    written = init_workspace(directory, force=force, demo=demo)
    click.echo(f"wrote {len(written)} files to {directory}/")
    click.echo(
        "next: cd into it, run `outreach validate`, then "
        "`outreach enroll prospects.csv --sequence cold`"
    )


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@pass_ctx
def validate(ctx: Context, as_json: bool) -> None:
    """Check config, sequences and templates; render every variant against a sample prospect."""
    report = validate_workspace(ctx.ws)
    if as_json:
        print_json(
            {
                "ok": not report.problems,
                "problems": [p.one_line() for p in report.problems],
                "warnings": report.warnings,
                "retired": [r.as_json() for r in report.retired],
                "sequences": report.sequences,
                "templates": report.templates,
                "rendered": report.rendered,
            }
        )
    else:
        for warning in report.warnings:
            click.echo(f"warning: {warning}", err=True)
        for retired in report.retired:
            click.echo(f"retired: {retired.one_line()}")
        if not report.problems:
            click.echo(
                f"ok: {report.sequences} sequences, {report.templates} template files, "
                f"{report.rendered} texts rendered"
            )
    if report.problems:
        fail([p.one_line() for p in report.problems] + [f"{len(report.problems)} problem(s) found"])


@cli.command()
@click.option(
    "--dir",
    "directory",
    default="sink",
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Maildir to keep mail in.",
)
@click.option("--port", default=8025, show_default=True, help="Port on 127.0.0.1.")
@click.option("--show", is_flag=True, help="List what the sink has received, then exit.")
@click.option("--json", "as_json", is_flag=True, help="With --show: one JSON document.")
def sink(directory: Path, port: int, show: bool, as_json: bool) -> None:
    """A local SMTP server that keeps every message it receives (for the demo and trials)."""
    if show:
        rows = summarize(directory)
        if as_json:
            print_json(rows)
            return
        for row in rows:
            click.echo(
                f"From: {row['from']}\nTo: {row['to']}\nSubject: {row['subject']}\n"
                f"Message-ID: {row['message_id']}"
                + (f"\nIn-Reply-To: {row['in_reply_to']}" if row["in_reply_to"] else "")
                + "\n"
            )
        click.echo(f"{len(rows)} message(s) in {directory}/")
        return
    with Sink(directory, port=port) as server:
        click.echo(
            f"mail sink on 127.0.0.1:{server.port}, keeping messages in {directory}/ "
            "(Ctrl-C to stop)"
        )
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        try:
            stop.wait()
        except KeyboardInterrupt:
            pass


@cli.group()
def db() -> None:
    """Database schema: create and migrate."""


@db.command("upgrade")
@pass_ctx
def db_upgrade(ctx: Context) -> None:
    """Create or migrate the schema to this version of outreach."""
    url = ctx.ws.config.database_url
    with database_errors(url):
        store = Store(url)
        before = store.current_revision()
        store.upgrade()
        click.echo(f"schema at {store.current_revision()} (was {before or 'empty'})")


@db.command("copy")
@click.option(
    "--to",
    "target",
    required=True,
    metavar="URL",
    help="The empty database to copy into, e.g. postgresql+psycopg://user@host/outreach.",
)
@pass_ctx
def db_copy(ctx: Context, target: str) -> None:
    """Copy this workspace's database into another, empty one (SQLite to PostgreSQL); the
    row counts of every table are checked after. Stop the daemon first."""
    # The source's lock: no daemon may send (or claim) while its database is copied.
    with daemon.DispatchLock(ctx.ws):
        counts = copy_database(ctx.ws.store, target)
    width = max(len(c.table) for c in counts)
    for count in counts:
        click.echo(f"  {count.table.ljust(width)}  {count.target:>9,}")
    total = sum(c.target for c in counts)
    click.echo(
        f"copied {total:,} rows in {len(counts)} tables; counts checked, equal in both; "
        f"next: set [database] url to the new database"
    )
