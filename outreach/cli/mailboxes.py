"""The sending mailboxes: their state, pause, resume and retry, OAuth connect, login check;
reassigning a rep's prospects; pausing a sequence."""

from __future__ import annotations

import sys

import click

from outreach import clock, mailcheck, operations, sequencing
from outreach.cli.base import (
    Context,
    cli,
    fail,
    mailbox_state,
    pass_ctx,
    print_json,
)
from outreach.errors import OutreachError


@cli.group(invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@click.pass_context
def mailboxes(click_ctx: click.Context, as_json: bool) -> None:
    """Each sending mailbox: today's limit (with the warm-up), sent today, backlog, paused or
    waiting and why."""
    if click_ctx.invoked_subcommand is not None:
        return
    ctx: Context = click_ctx.obj
    rows = operations.mailbox_report(ctx.ws, clock.now())
    if as_json:
        print_json(rows)
        return
    for name in operations.paused_sequence_names(ctx.ws):
        click.echo(
            f"sequence {name} is paused: nothing of it goes out (`outreach sequence resume {name}`)"
        )
    for row in rows:
        click.echo(
            f"{row['email']}: {row['sent_today']}/{row['daily_limit']} today, "
            f"{row['due_now']} due now, {row['retrying']} retrying, {_state(row)}"
        )
        if row["warming_up"]:
            click.echo(
                f"  warming up: {row['daily_limit']} today, the full {row['full_limit']} "
                f"from {row['full_limit_on']}"
                + (f" (first send {row['first_send_day']})" if row["first_send_day"] else "")
            )
        bounces = row["bounces"]
        if bounces["hard_bounces"]:
            click.echo(
                f"  bounces: {bounces['hard_bounces']} hard in the last {bounces['sends']} "
                f"sends, {bounces['rate']:.1%}".replace("%", " %")
            )


def _state(row: dict[str, object]) -> str:
    if row["paused"]:
        return f"{mailbox_state(row)} (`outreach mailboxes resume {row['email']}`)"
    if row["next_try_at"]:
        return f"UNREACHABLE: {row['unreachable']}; next try at {row['waiting_until_local']}"
    if row["next_send_at"]:
        return f"ok, next send at {row['waiting_until_local']} (its gap)"
    if row["due_now"] and row["sent_today"] >= row["daily_limit"]:  # type: ignore[operator]
        return "at today's limit: the backlog waits for the next sending day, in due order"
    return mailbox_state(row)


@mailboxes.command("resume")
@click.argument("email")
@pass_ctx
def mailboxes_resume(ctx: Context, email: str) -> None:
    """Let a paused mailbox send again (after fixing its login, or cleaning a list that
    bounced: the bounce rate then counts afresh)."""
    click.echo(operations.resume_mailbox(ctx.ws, email, clock.now()))


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


@mailboxes.command("pause")
@click.argument("email")
@click.option("--reason", help="Why, for the others (shown by `mailboxes` and `status`).")
@pass_ctx
def mailboxes_pause(ctx: Context, email: str, reason: str | None) -> None:
    """Stop a mailbox's sending until `outreach mailboxes resume`; its due work waits."""
    click.echo(operations.pause_mailbox(ctx.ws, email, clock.now(), reason))


@mailboxes.command("retry")
@click.argument("email")
@pass_ctx
def mailboxes_retry(ctx: Context, email: str) -> None:
    """Try a waiting mailbox (an unreachable server, or its gap) now, once."""
    text, report = operations.retry_mailbox(ctx.ws, email, clock.now(), on_event=click.echo)
    click.echo(text)
    if report is None:
        return
    click.echo(
        f"{len(report.sent)} sent, {report.retried} to retry, {report.bounced} bounced, "
        f"{report.failed} failed"
    )
    problems = [f"{box}: paused: {why}" for box, why in report.paused.items()]
    problems += report.errors + report.notes
    if problems:
        fail(problems)


@cli.command()
@click.option("--from", "source", required=True, help="The mailbox the prospects leave.")
@click.option("--to", "target", required=True, help="The configured mailbox they move to.")
@click.option("--sequence", help="Only this sequence's enrollments.")
@pass_ctx
def reassign(ctx: Context, source: str, target: str, sequence: str | None) -> None:
    """Move a mailbox's live enrollments (a rep leaves) to another mailbox."""
    result = sequencing.reassign(ctx.ws, source, target, clock.now(), sequence)
    per = ", ".join(f"{name} {count}" for name, count in sorted(result.by_sequence.items()))
    click.echo(
        f"moved {result.enrollments} live enrollment(s) from {result.source} to "
        f"{result.target}" + (f" ({per})" if per else "")
    )
    if result.messages:
        click.echo(f"  with {result.messages} retry(ies) and open task(s)")


@cli.group()
def sequence() -> None:
    """Pause or resume a whole sequence."""


@sequence.command("pause")
@click.argument("name")
@click.option("--reason", help="Why (kept with the pause).")
@pass_ctx
def sequence_pause(ctx: Context, name: str, reason: str | None) -> None:
    """Nothing of the sequence is sent or becomes a task until `sequence resume`."""
    click.echo(sequencing.pause_sequence(ctx.ws, name, clock.now(), reason))


@sequence.command("resume")
@click.argument("name")
@pass_ctx
def sequence_resume(ctx: Context, name: str) -> None:
    """What fell due while paused goes out in due order, within the limits."""
    click.echo(sequencing.resume_sequence(ctx.ws, name, clock.now()))
