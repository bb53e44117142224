"""Sending and reading: send, run, replies, schedule, resolve, tasks, CRM hand-offs."""

from __future__ import annotations

import logging
import sys
from dataclasses import asdict

import click

from outreach import clock, daemon, handoff, inbox, outbox, reports
from outreach.cli.base import (
    Context,
    cli,
    pass_ctx,
    print_json,
    table,
)


@cli.command()
@click.option(
    "--limit",
    default=20,
    show_default=True,
    type=click.IntRange(min=1),
    help="How many upcoming steps to show.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@pass_ctx
def schedule(ctx: Context, limit: int, as_json: bool) -> None:
    """What is due next, and when, in the prospect's own time zone."""
    report = reports.schedule(ctx.ws, clock.now(), limit)
    if as_json:
        print_json(report)
        return
    click.echo(f"{report['active']} active enrollment(s), {report['due_now']} due now")
    table(
        [
            [i["email"], i["sequence"], f"{i['step']} ({i['channel']})", i["due_local"]]
            for i in report["upcoming"]
        ],
        ["prospect", "sequence", "next step", "due (local)"],
    )


@cli.command()
@click.option("--once", is_flag=True, help="Send what is due now, then exit.")
@click.option(
    "--no-wait", is_flag=True, help="Do not wait out a mailbox's gap; stop at the first one."
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@pass_ctx
def send(ctx: Context, once: bool, no_wait: bool, as_json: bool) -> None:
    """Send everything that is due now, within windows and limits, then exit."""
    if not once:
        raise click.UsageError("use `outreach send --once`, or `outreach run` for the daemon")
    report = daemon.send_once(
        ctx.ws, wait_for_gaps=not no_wait, on_event=None if as_json else click.echo
    )
    # A mailbox paused by hand (a rep on leave) is meant: reported, but not a failure.
    trouble = [r for r in report.paused.values() if not r.startswith(outbox.PAUSED_BY_HAND)]
    failing = bool(report.errors or trouble or report.held)
    if as_json:
        print_json(asdict(report))
        if failing:
            sys.exit(1)
        return
    click.echo(
        f"{len(report.sent)} sent, {report.retried} to retry, {report.bounced} bounced, "
        f"{report.failed} failed, {report.tasks_created} task(s) created, "
        f"{report.tasks_skipped} skipped, {report.cancelled} cancelled"
    )
    for mailbox, reason in report.paused.items():
        click.echo(
            f"mailbox {mailbox} is paused: {reason} "
            f"(fix it, then `outreach mailboxes resume {mailbox}`)",
            err=True,
        )
    for note in report.notes + report.errors:
        click.echo(note, err=True)
    for problem, count in report.held.items():
        click.echo(
            f"{count} message(s) held, not sent: {problem} "
            "(their sequences wait; fix it and they go at a later run)",
            err=True,
        )
    if report.settled:
        click.echo(f"{report.settled} interrupted send(s) found in the Sent folder: marked sent")
    if report.unknown:
        click.echo(
            f"{report.unknown} message(s) in unknown state: see `outreach status` "
            "and `outreach resolve`",
            err=True,
        )
    if failing:
        sys.exit(1)  # a paused mailbox or a broken template: cron and CI must notice


@cli.command()
@click.option("--once", is_flag=True, help="Poll every mailbox once, apply, then exit.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@pass_ctx
def replies(ctx: Context, once: bool, as_json: bool) -> None:
    """Poll the mailboxes for replies, bounces, auto-replies and unsubscribe requests."""
    if not once:
        raise click.UsageError("use `outreach replies --once`; `outreach run` polls on its own")
    report = inbox.poll(ctx.ws, clock.now())
    if as_json:
        print_json(asdict(report))
    else:
        for reply in report.replies:
            click.echo(
                f"reply from {reply['from']}: {reply['sentiment']} ({reply['rule']}); "
                "sequences stopped"
            )
        click.echo(
            f"{report.seen} new message(s): {len(report.replies)} repl(ies), "
            f"{report.auto_replies} auto-repl(ies), {report.bounces} bounce(s), "
            f"{report.unsubscribes} unsubscribe(s), {report.paused_colleagues} "
            f"colleague enrollment(s) paused, {report.ignored} not ours"
        )
        for note in report.notes:
            click.echo(note, err=True)
    if report.notes and not report.seen:
        sys.exit(1)


@cli.command()
@click.argument("email")
@pass_ctx
def resume(ctx: Context, email: str) -> None:
    """Let a paused prospect (a colleague replied) go on with their sequences."""
    resumed = inbox.resume(ctx.ws, email, clock.now())
    click.echo(f"resumed {', '.join(resumed)}" if resumed else "nothing was paused")


@cli.command()
@pass_ctx
def run(ctx: Context) -> None:
    """The daemon: sends on schedule; stops cleanly on SIGTERM/SIGINT."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    daemon.run(ctx.ws)


@cli.command()
@click.argument("message", metavar="MESSAGE")
@click.option(
    "--sent/--not-sent",
    default=None,
    help="It did leave, or it did not. Without either: show the evidence and change nothing.",
)
@click.option("--force", is_flag=True, help="--not-sent even though the Sent folder has it.")
@click.option("--json", "as_json", is_flag=True, help="With no answer: the evidence as JSON.")
@pass_ctx
def resolve(ctx: Context, message: str, sent: bool | None, force: bool, as_json: bool) -> None:
    """Settle a message whose fate is unknown after a crash (outbox id or Message-ID): first
    see what is known (the Sent folder searched, the SMTP answer), then answer."""
    if sent is None:
        found = outbox.evidence(ctx.ws, message)
        if as_json:
            print_json(found)
            return
        click.echo(
            f"message {found['id']} {found['message_id']} to {found['to']} from "
            f"{found['mailbox']} ({found['sequence']}/{found['step']}): {found['state']}"
        )
        click.echo(f"  subject: {found['subject'] or '-'}")
        click.echo(f"  claimed {found['claimed_at'] or '-'}, attempt {found['attempts']}")
        click.echo(f"  last SMTP answer: {found['smtp_response'] or 'none recorded'}")
        click.echo(f"  Sent folder: {found['sent_folder']}")
        click.echo(f"  {found['advice']}")
        return
    click.echo(outbox.resolve(ctx.ws, message, sent, clock.now(), force=force))


@cli.group(invoke_without_command=True)
@click.option("--sender", help="Only this mailbox's tasks.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@click.pass_context
def tasks(click_ctx: click.Context, sender: str | None, as_json: bool) -> None:
    """LinkedIn and manual steps that are due, per sender."""
    if click_ctx.invoked_subcommand is not None:
        return
    ctx: Context = click_ctx.obj
    rows = outbox.list_tasks(ctx.ws, clock.now(), sender)
    if as_json:
        print_json(rows)
        return
    for task in rows:
        who = f"{task['name'] or ''} ({task['company'] or '-'})".strip()
        click.echo(
            f"#{task['id']}  {task['channel']} for {task['sender']}: {task['prospect']} "
            f"{who}  {task['sequence']}/{task['step']}"
        )
        if task["linkedin"]:
            click.echo(f"    {task['linkedin']}")
        for line in (task["text"] or "").rstrip().splitlines():
            click.echo(f"    | {line}")
    click.echo(f"{len(rows)} open task(s); `outreach tasks done ID` when done")


@tasks.command("done")
@click.argument("task_id", metavar="ID", type=int)
@pass_ctx
def tasks_done(ctx: Context, task_id: int) -> None:
    """Mark a task done; the prospect's sequence goes on."""
    click.echo(outbox.complete_task(ctx.ws, task_id, clock.now()))


@cli.group(invoke_without_command=True)
@click.option("--deliver", is_flag=True, help="POST what is due now to the CRM, then exit.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@click.pass_context
def handoffs(click_ctx: click.Context, deliver: bool, as_json: bool) -> None:
    """CRM hand-offs (a POST per reply or goal): the pending and failed ones."""
    if click_ctx.invoked_subcommand is not None:
        return
    ctx: Context = click_ctx.obj
    if deliver:
        report = handoff.deliver_once(ctx.ws, clock.now())
        if as_json:
            print_json(asdict(report))
            if report.failed:
                sys.exit(1)
            return
        for line in report.lines:
            click.echo(line)
        click.echo(
            f"{report.delivered} delivered, {report.retrying} to retry, {report.failed} failed"
        )
        if report.failed:
            click.echo(
                f"{report.failed} hand-off(s) failed for good: see `outreach handoffs`, "
                "then `outreach handoffs retry ID`",
                err=True,
            )
            sys.exit(1)  # cron must notice a CRM that refuses what we send
        return
    doc = handoff.listing(ctx.ws)
    if as_json:
        print_json(doc)
        return
    for row in doc["handoffs"]:
        when = f"next {row['next_attempt_at']}" if row["state"] == "pending" else "FAILED"
        click.echo(
            f"#{row['id']}  {row['reason']}  {row['email']}  {when}, "
            f"{row['attempts']} attempt(s)"
            + (f": {row['last_error']}" if row["last_error"] else "")
        )
    counts = doc["counts"]
    click.echo(
        f"{counts['pending']} pending, {counts['failed']} failed, {counts['delivered']} delivered"
        + ("; `outreach handoffs retry ID` sends a failed one again" if counts["failed"] else "")
    )


@handoffs.command("retry")
@click.argument("handoff_id", metavar="ID", type=int)
@pass_ctx
def handoffs_retry(ctx: Context, handoff_id: int) -> None:
    """Put a failed hand-off back in the queue."""
    click.echo(handoff.retry(ctx.ws, handoff_id, clock.now()))
