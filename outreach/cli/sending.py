"""Sending and reading: send, run, replies, schedule, resolve, tasks, CRM hand-offs."""

from __future__ import annotations

import csv
import sys
from dataclasses import asdict
from datetime import date, timedelta

import click

from outreach import clock, daemon, handoff, inbox, localtime, operations, reports
from outreach.cli.base import (
    Context,
    cli,
    pass_ctx,
    print_json,
    table,
    when,
)
from outreach.errors import OutreachError
from outreach.sentiment import REPLY_CLASSES


@cli.command()
@click.option(
    "--date",
    "day",
    default="today",
    show_default=True,
    metavar="today|tomorrow|YYYY-MM-DD",
    help="The day to forecast, each mailbox's own date.",
)
@click.option("--sender", metavar="EMAIL", help="Only this mailbox.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@pass_ctx
def schedule(ctx: Context, day: str, sender: str | None, as_json: bool) -> None:
    """What will really go out on a day: limits, ramp, gaps and windows applied."""
    from outreach import forecast

    now = clock.now()
    config = ctx.ws.config
    if sender is not None and sender not in {b.email for b in config.mailboxes}:
        raise OutreachError(f"no mailbox {sender} in the config", field="--sender")
    zone = localtime.mailbox_zone(config, sender) if sender else localtime.team_zone(config)
    wanted = localtime.parse_day(day, now, zone, "--date", ("today", "tomorrow"))
    today = localtime.parse_day("today", now, zone, "--date", ("today",))
    if not today <= wanted <= today + timedelta(days=forecast.HORIZON_DAYS):
        raise OutreachError(
            f"{wanted} is not between today ({today}) and {forecast.HORIZON_DAYS} days ahead",
            field="--date",
        )
    report = forecast.forecast(ctx.ws, now, wanted, sender)
    if as_json:
        print_json(report)
        return
    _print_forecast(report)


def _print_forecast(report: dict) -> None:  # type: ignore[type-arg]
    day = date.fromisoformat(report["date"])
    messages, tasks = report["messages"], report["tasks"]
    click.echo(
        f"{day:%a %Y-%m-%d}: {len(messages)} email(s) and {len(tasks)} task(s) will go out "
        f"({report['active']} active enrollment(s); assuming {report['assumes']})"
    )
    for box in report["mailboxes"]:
        if box["paused"]:
            reason = box["paused"]
            state = reason if reason.startswith("paused") else f"paused: {reason}"
            state += "; nothing goes out"
        elif not box["sending_day"]:
            state = "not a sending day"
        else:
            limit = f"limit {box['daily_limit']}"
            if box["warming_up"]:
                limit += f" (warming up to {box['full_limit']})"
            state = f"{box['sends']} email(s), {limit}"
        left = box["backlog_after"]
        wait = f"; {left} still due at the day's end" if left else ""
        click.echo(f"mailbox {box['email']} ({box['timezone']}): {state}{wait}")
    several = len(report["mailboxes"]) > 1
    if messages:
        click.echo("")
        table(
            [
                [
                    m["at_local"][11:],
                    *([m["sender"]] if several else []),
                    m["email"],
                    m["company"] or "",
                    f"{m['sequence']}/{m['step']}",
                    m["prospect_local"][11:] if m["prospect_local"] != m["at_local"] else "",
                    "late" if m["late"] else ("next step" if m["follow_up"] else ""),
                ]
                for m in messages
            ],
            [
                "time",
                *(["mailbox"] if several else []),
                "prospect",
                "company",
                "step",
                "their time",
                "",
            ],
            left=True,
        )
    if tasks:
        click.echo("\ntasks for the reps (in `outreach tasks` from then on):")
        table(
            [
                [
                    t["at_local"][11:],
                    *([t["sender"]] if several else []),
                    t["email"],
                    f"{t['sequence']}/{t['step']}",
                    t["channel"],
                ]
                for t in tasks
            ],
            ["due", *(["mailbox"] if several else []), "prospect", "step", "channel"],
            left=True,
        )
    for held in report["held"]:
        click.echo(
            f"held: {held['email']} ({held['sequence']}, step {held['step_index'] + 1}): "
            f"{held['reason']}",
            err=True,
        )
    for name in report["paused_sequences"]:
        click.echo(f"sequence {name} is paused: nothing of it goes out", err=True)


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
    daemon.settle_heap()
    report = daemon.send_once(
        ctx.ws, wait_for_gaps=not no_wait, on_event=None if as_json else click.echo
    )
    unreachable = operations.unreachable_mailboxes(ctx.ws, clock.now())
    # A mailbox paused by hand (a rep on leave) is meant: reported, but not a failure.
    trouble = [r for r in report.paused.values() if not r.startswith(operations.PAUSED_BY_HAND)]
    failing = bool(report.errors or trouble or report.held or unreachable)
    if as_json:
        print_json(
            asdict(report)
            | {"unreachable": {box["email"]: box["unreachable"] for box in unreachable}}
        )
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
    for box in unreachable:
        at = box.get("next_try_at") or box.get("next_send_at")
        next_try = when(at, localtime.mailbox_zone(ctx.ws.config, box["email"]))
        click.echo(
            f"mailbox {box['email']}: SMTP server unreachable: {box['unreachable']}; "
            f"{box['due_now']} message(s) wait, next try at {next_try}",
            err=True,
        )
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
        sys.exit(1)  # a paused or unreachable mailbox, a broken template: cron must notice


@cli.group(invoke_without_command=True)
@click.option("--once", is_flag=True, help="Poll every mailbox once, apply, then exit.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@click.pass_context
def replies(click_ctx: click.Context, once: bool, as_json: bool) -> None:
    """Poll the mailboxes for replies, bounces, auto-replies and unsubscribe requests
    (`replies --once`), or read the replies (`replies list`)."""
    if click_ctx.invoked_subcommand is not None:
        return
    if not once:
        raise click.UsageError(
            "use `outreach replies --once` to poll (`outreach run` polls on its own), "
            "or `outreach replies list` to read them"
        )
    ctx: Context = click_ctx.obj
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


@replies.command("list")
@click.option(
    "--since",
    metavar="today|yesterday|YYYY-MM-DD",
    help="Only replies read from the start of that day (in [sending] timezone) on.",
)
@click.option("--sender", metavar="EMAIL", help="Only replies to this mailbox.")
@click.option(
    "--sentiment",
    "sentiments",
    multiple=True,
    type=click.Choice(REPLY_CLASSES),
    help="Only this class (repeat for several); a rep's --mark correction counts.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@pass_ctx
def replies_list(
    ctx: Context, since: str | None, sender: str | None, sentiments: tuple[str, ...], as_json: bool
) -> None:
    """Who replied and what they said, newest first."""
    config = ctx.ws.config
    start = (
        localtime.day_start(since, clock.now(), localtime.team_zone(config))
        if since is not None
        else None
    )
    if sender is not None:
        sender = config.mailbox(sender).email  # an unknown mailbox is one clear line
    rows = reports.reply_list(ctx.ws, since=start, sender=sender, sentiments=sentiments)
    if as_json:
        print_json(rows)
        return
    for row in rows:
        at = when(row["at"], localtime.mailbox_zone(config, row["sender"]))
        who = " ".join(
            x for x in (row["name"], f"({row['company']})" if row["company"] else "") if x
        )
        where = f"{row['sequence']}/{row['step']}" if row["sequence"] else "-"
        click.echo(
            f"{at}  {row['sentiment']}  {row['email']} {who}".rstrip()
            + f"  to {row['sender'] or '-'}  {where}"
        )
        for line in (row["text"] or "").strip().splitlines() or ["(no text)"]:
            click.echo(f"    | {line}")
    mark = "; `outreach prospect EMAIL --mark CLASS` corrects a sentiment" if rows else ""
    click.echo(f"{len(rows)} repl(ies){mark}")


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
    daemon.configure_logging()
    daemon.settle_heap()
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
        found = operations.evidence(ctx.ws, message)
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
    click.echo(operations.resolve(ctx.ws, message, sent, clock.now(), force=force))


@cli.group(invoke_without_command=True)
@click.option("--sender", help="Only this mailbox's tasks.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@click.option(
    "--csv",
    "as_csv",
    is_flag=True,
    help="Print CSV for a LinkedIn tool: id, sender, prospect, LinkedIn URL, step, due, text.",
)
@click.pass_context
def tasks(click_ctx: click.Context, sender: str | None, as_json: bool, as_csv: bool) -> None:
    """LinkedIn and manual steps that are due, per sender."""
    if click_ctx.invoked_subcommand is not None:
        return
    ctx: Context = click_ctx.obj
    if sender is not None:
        sender = ctx.ws.config.mailbox(sender).email  # an unknown mailbox is one clear line
    daemon.make_due_tasks(ctx.ws)  # due steps listed now, not after the next send pass
    rows = operations.list_tasks(ctx.ws, clock.now(), sender)
    if as_json:
        print_json(rows)
        return
    if as_csv:
        writer = csv.DictWriter(sys.stdout, fieldnames=reports.TASK_CSV_COLUMNS)
        writer.writeheader()
        writer.writerows(reports.task_csv_rows(ctx.ws.config, rows))
        return
    for task in rows:
        zone = localtime.mailbox_zone(ctx.ws.config, task["sender"])
        who = f"{task['name'] or ''} ({task['company'] or '-'})".strip()
        click.echo(
            f"#{task['id']}  {task['channel']} for {task['sender']}: {task['prospect']} "
            f"{who}  {task['sequence']}/{task['step']}  due {when(task['due_since'], zone)}"
            + (
                f", skipped {when(task['skipped_at'], zone)} if not done"
                if task["skipped_at"]
                else ""
            )
        )
        click.echo(f"    {task['linkedin'] or '(no LinkedIn URL: `outreach tasks skip ID`?)'}")
        for line in (task["text"] or "").rstrip().splitlines():
            click.echo(f"    | {line}")
    click.echo(
        f"{len(rows)} open task(s); `outreach tasks done ID` when done, "
        "`outreach tasks skip ID --reason TEXT` when it will not be"
    )


@tasks.command("done")
@click.argument("task_id", metavar="ID", type=int)
@pass_ctx
def tasks_done(ctx: Context, task_id: int) -> None:
    """Mark a task done; the prospect's sequence goes on."""
    click.echo(operations.complete_task(ctx.ws, task_id, clock.now()))


@tasks.command("skip")
@click.argument("task_id", metavar="ID", type=int)
@click.option("--reason", help="Why it will not be done (e.g. no LinkedIn URL).")
@pass_ctx
def tasks_skip(ctx: Context, task_id: int, reason: str | None) -> None:
    """Skip a task that will not be done; the prospect's sequence goes on without it."""
    click.echo(operations.skip_task(ctx.ws, task_id, clock.now(), reason))


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
    zone = localtime.team_zone(ctx.ws.config)
    for row in doc["handoffs"]:
        next_try = when(row["next_attempt_at"], zone)
        state = f"next {next_try}" if row["state"] == "pending" else "FAILED"
        click.echo(
            f"#{row['id']}  {row['reason']}  {row['email']}  {state}, "
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
