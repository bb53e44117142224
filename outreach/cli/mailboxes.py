"""The sending mailboxes: their state, pause and resume, OAuth connect, login check."""

from __future__ import annotations

import sys

import click

from outreach import clock, mailcheck, outbox
from outreach.cli.base import (
    Context,
    cli,
    mailbox_state,
    pass_ctx,
    print_json,
)
from outreach.errors import OutreachError


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


@mailboxes.command("connect")
@click.argument("email")
@pass_ctx
def mailboxes_connect(ctx: Context, email: str) -> None:
    """Grant an OAuth mailbox access, once: prints a URL and a code (device flow) or a URL
    to open, whose redirected address can be pasted back (authorization code)."""
    box = ctx.ws.config.mailbox(email, field="EMAIL")
    if box.auth != "oauth2":
        raise OutreachError(
            f"mailbox {box.email} logs in with a password: nothing to connect",
            field="EMAIL",
            hint='set auth = "oauth2" and its oauth_* settings in outreach.toml',
        )
    from outreach.connect import connect as connect_mailbox  # authlib: only for this

    line = connect_mailbox(box.token_source, say=click.echo, read_line=sys.stdin.readline)
    click.echo(line)


@mailboxes.command("check")
@click.argument("email", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@pass_ctx
def mailboxes_check(ctx: Context, email: str | None, as_json: bool) -> None:
    """Log in to SMTP and IMAP (refreshing the OAuth token) without sending anything; one
    line per step, exit 1 when any step fails."""
    boxes = [ctx.ws.config.mailbox(email, field="EMAIL")] if email else ctx.ws.config.mailboxes
    steps = [step for box in boxes for step in mailcheck.check_mailbox(box)]
    failed = any(step.ok is False for step in steps)
    if as_json:
        print_json({"ok": not failed, "steps": [step.as_dict() for step in steps]})
    else:
        for step in steps:
            click.echo(step.line(), err=step.ok is False)
    if failed:
        sys.exit(1)
