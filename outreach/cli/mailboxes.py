"""The sending mailboxes: their state, pause and resume."""

from __future__ import annotations

import click

from outreach import clock, outbox
from outreach.cli.base import (
    Context,
    cli,
    mailbox_state,
    pass_ctx,
    print_json,
)


@cli.group(invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@click.pass_context
def mailboxes(click_ctx: click.Context, as_json: bool) -> None:
    """Each sending mailbox: sent today, limit, backlog, paused."""
    if click_ctx.invoked_subcommand is not None:
        return
    ctx: Context = click_ctx.obj
    rows = outbox.mailbox_report(ctx.ws, clock.now())
    if as_json:
        print_json(rows)
        return
    for row in rows:
        state = mailbox_state(row)
        click.echo(
            f"{row['email']}: {row['sent_today']}/{row['daily_limit']} today, "
            f"{row['due_now']} due now, {row['retrying']} retrying, {state}"
        )


@mailboxes.command("resume")
@click.argument("email")
@pass_ctx
def mailboxes_resume(ctx: Context, email: str) -> None:
    """Let a paused mailbox send again (after fixing its login)."""
    click.echo(outbox.resume_mailbox(ctx.ws, email))
