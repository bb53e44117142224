"""The ``outreach`` command: parse, call the library, print. No business logic lives here."""

from __future__ import annotations

import csv
import json
import logging
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

import click

from outreach import __version__, abhtml, clock, daemon, engine, handoff, inbox, outbox, reports
from outreach import ab as ab_module
from outreach.enroll import enroll_csv, format_rejection
from outreach.errors import OutreachError, Problems
from outreach.preview import preview as render_preview
from outreach.sink import Sink, summarize
from outreach.starter import init_workspace
from outreach.store import Store, database_errors
from outreach.transfer import copy_database
from outreach.validate import validate as validate_workspace
from outreach.workspace import Workspace


def _print_json(document: Any) -> None:
    click.echo(json.dumps(document, ensure_ascii=False, indent=2, default=str))


def _fail(lines: list[str]) -> None:
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
            _fail([p.one_line() for p in exc.problems])
        except OutreachError as exc:
            _fail([exc.one_line()])


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
        _print_json(
            {
                "ok": not report.problems,
                "problems": [p.one_line() for p in report.problems],
                "warnings": report.warnings,
                "sequences": report.sequences,
                "templates": report.templates,
                "rendered": report.rendered,
            }
        )
    else:
        for warning in report.warnings:
            click.echo(f"warning: {warning}", err=True)
        if not report.problems:
            click.echo(
                f"ok: {report.sequences} sequences, {report.templates} template files, "
                f"{report.rendered} texts rendered"
            )
    if report.problems:
        _fail(
            [p.one_line() for p in report.problems] + [f"{len(report.problems)} problem(s) found"]
        )


@contextmanager
def _progress(path: Path) -> Iterator[Callable[[int], None] | None]:
    size = path.stat().st_size if path.is_file() else 0
    if not sys.stderr.isatty() or size < 1_000_000:
        yield None
        return
    with click.progressbar(length=size, label=f"importing {path.name}", file=sys.stderr) as bar:
        done = [0]

        def update(bytes_read: int) -> None:
            bar.update(bytes_read - done[0])
            done[0] = bytes_read

        yield update


@cli.command()
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--sequence", required=True, help="The sequence to enroll into (e.g. cold).")
@click.option("--sender", help="Mailbox email the messages go out from (default: the only one).")
@click.option("--dry-run", is_flag=True, help="Check and count everything, write nothing.")
@click.option(
    "--skip-invalid", is_flag=True, help="Import the good rows even if some are rejected."
)
@click.option(
    "--include-ended",
    is_flag=True,
    help="Also enroll prospects whose earlier sequence ended in a reply or a stop.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@pass_ctx
def enroll(
    ctx: Context,
    file: Path,
    sequence: str,
    sender: str | None,
    dry_run: bool,
    skip_invalid: bool,
    include_ended: bool,
    as_json: bool,
) -> None:
    """Import prospects from a CSV (creating or updating them) and enroll them in a sequence."""
    with _progress(file) as on_progress:
        result = enroll_csv(
            ctx.ws,
            file,
            sequence,
            now=clock.now(),
            sender=sender,
            dry_run=dry_run,
            skip_invalid=skip_invalid,
            include_ended=include_ended,
            on_progress=on_progress,
        )
    if as_json:
        _print_json(result.as_json())
    else:
        would = "" if result.applied else "would be "
        click.echo(f"{file} -> sequence {result.sequence}, sender {result.sender}")
        click.echo(f"  {would}enrolled  {result.enrolled}")
        click.echo(
            f"  prospects {result.created} new, {result.updated} updated"
            + ("" if result.applied else " (not written)")
        )
        click.echo(f"  skipped   {len(result.skipped)}")
        for skip in result.skipped[:50]:
            click.echo(f"    line {skip.line}: {skip.email}: {skip.reason}")
        if len(result.skipped) > 50:
            click.echo(f"    ... and {len(result.skipped) - 50} more (--json lists all)")
        click.echo(f"  rejected  {len(result.rejected)}")
        if result.first_due and result.applied:
            click.echo(
                f"first step due {result.first_due:%Y-%m-%d %H:%M} UTC "
                "(`outreach schedule` shows what comes next)"
            )
        if dry_run:
            click.echo("dry run: nothing was written")
    if result.rejected:
        lines = [format_rejection(file, r) for r in result.rejected[:50]]
        if len(result.rejected) > 50:
            lines.append(f"... and {len(result.rejected) - 50} more rejected rows")
        if not skip_invalid:
            lines.append(
                f"nothing imported: {len(result.rejected)} row(s) rejected "
                "(fix them, or pass --skip-invalid to import the good rows)"
            )
            if not as_json:
                _fail(lines)
            sys.exit(1)
        if not as_json:
            for line in lines:
                click.echo(line, err=True)


def _mailbox_state(row: dict[str, Any]) -> str:
    if row["paused"]:
        return f"PAUSED: {row['paused']}"
    if row.get("unreachable"):
        return f"UNREACHABLE: {row['unreachable']}"
    return "ok"


def _table(rows: list[list[Any]], header: list[str]) -> None:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=False)]
    for row in [header, *rows]:
        click.echo(
            "  ".join(
                str(v).ljust(w) if i == 0 else str(v).rjust(w)
                for i, (v, w) in enumerate(zip(row, widths, strict=False))
            ).rstrip()
        )


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@pass_ctx
def status(ctx: Context, as_json: bool) -> None:
    """Per sequence and step: active, waiting, sent, replied, bounced, unsubscribed, finished."""

    report = reports.status(ctx.ws, clock.now())
    if as_json:
        _print_json(report)
        return
    for seq in report["sequences"]:
        totals = ", ".join(f"{k} {v}" for k, v in seq["enrollments"].items() if v) or "empty"
        click.echo(f"{seq['name']}: {totals}")
        _table(
            [
                [
                    f"{s['index'] + 1}. {s['name']} ({s['channel']})",
                    *(s[k] for k in reports.STEP_COUNTS),
                ]
                for s in seq["steps"]
            ],
            ["  step", *reports.STEP_COUNTS],
        )
        click.echo()
    for box in report["mailboxes"]:
        state = _mailbox_state(box)
        click.echo(
            f"mailbox {box['email']}: {box['sent_today']}/{box['daily_limit']} sent today, "
            f"{box['due_now']} due now (backlog), {box['retrying']} retrying, {state}"
        )
    for message in report["unknown"]:
        if message["state"] == "sending":
            click.echo(
                f"SENDING #{message['id']} to {message['to']} ({message['sequence']}/"
                f"{message['step']}, claimed {message['claimed_at']}): in flight, or its "
                "process died; the next send or run will tell"
            )
            continue
        click.echo(
            f"UNKNOWN #{message['id']} to {message['to']} {message['message_id']} "
            f"({message['sequence']}/{message['step']}, claimed {message['claimed_at']}): "
            "did it leave? Look for it in the Sent folder, then "
            f"`outreach resolve {message['id']} --sent|--not-sent`"
        )
    for member in report["daemons"]:
        held = ", ".join(member["mailboxes"]) or "no mailbox"
        life = "alive" if member["alive"] else "NOT BEATING (dead? its work is taken over)"
        click.echo(
            f"daemon {member['host']} pid {member['pid']}: {life}, since "
            f"{member['started_at']}, last beat {member['beat_at']}, holds {held}"
        )
    click.echo(f"backlog: {report['backlog']} due now")
    click.echo(f"suppressed addresses and domains: {report['suppressed']}")


@cli.command()
@click.argument("email")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@click.option(
    "--mark",
    "mark",
    metavar="CLASS",
    help="Correct the class of the latest reply: positive, neutral, negative or unsubscribe "
    "(the next A/B review counts it so).",
)
@pass_ctx
def prospect(ctx: Context, email: str, as_json: bool, mark: str | None) -> None:
    """One prospect's enrollments, every message sent and every event."""
    if mark is not None:
        result = engine.mark_reply(ctx.ws.store, email, mark, clock.now())
        if not as_json:
            click.echo(
                f"{result.email}: the reply of {result.at:%Y-%m-%d %H:%M} UTC is now "
                f"{result.reply_class} (was {result.was})"
            )
            return
    view = reports.prospect_view(ctx.ws, email)
    if as_json:
        _print_json(view)
        return
    p = view["prospect"]
    name = " ".join(x for x in (p["first_name"], p["last_name"]) if x)
    click.echo(f"{p['email']}  {name}  {p['company'] or ''}  {p['title'] or ''}".rstrip())
    click.echo(
        f"  persona {p['persona'] or '-'}, language {p['language'] or '-'}, address "
        + ("ok" if p["status"] == "active" else f"{p['status']} (a hard bounce)")
    )
    for key, value in p["fields"].items():
        click.echo(f"  {key}: {value}")
    click.echo("enrollments:")
    for e in view["enrollments"] or []:
        tail = (
            f"next {e['next_step']} due {e['due_at']}"
            if e["next_step"]
            else f"ended {e['ended_at']} ({e['end_reason']})"
            if e["ended_at"]
            else ""
        )
        click.echo(f"  {e['sequence']}: {e['state']}, from {e['sender']}, {tail}".rstrip(", "))
    click.echo("messages:" if view["messages"] else "messages: none yet")
    for m in view["messages"]:
        click.echo(
            f"  {m['sent_at'] or '-'}  {m['sequence']}/{m['step']}  {m['state']}  "
            f"subject={m['subject_variant'] or '-'} body={m['body_variant'] or '-'}  "
            f"{m['message_id'] or ''}".rstrip()
        )
    click.echo("events:" if view["events"] else "events: none")
    for ev in view["events"]:
        click.echo(f"  {ev['at']}  {ev['kind']}  {ev['reason'] or ''}".rstrip())


@cli.command()
@click.argument("email")
@click.option(
    "--reason",
    required=True,
    type=click.Choice(["replied", "meeting", "webinar", "not-interested", "other"]),
)
@pass_ctx
def stop(ctx: Context, email: str, reason: str) -> None:
    """Stop every active enrollment of a prospect now."""
    result = engine.stop(ctx.ws.store, email, reason, clock.now(), ctx.ws.config.settings.crm)
    if result.stopped:
        click.echo(f"stopped {result.email} in {', '.join(result.stopped)} ({reason})")
    elif result.already is not None:
        click.echo(
            f"{result.email} had no active enrollment and {reason} was already recorded "
            f"({result.already:%Y-%m-%d %H:%M} UTC); nothing new recorded"
        )
    else:
        click.echo(f"{result.email} had no active enrollment; recorded {reason}")
    if result.handoff is not None:
        click.echo(f"hand-off #{result.handoff} queued for the CRM (`outreach handoffs`)")


@cli.command()
@click.argument("value", metavar="ADDRESS_OR_@DOMAIN")
@click.option(
    "--reason",
    default="manual",
    show_default=True,
    help="Why (e.g. unsubscribed, customer, competitor).",
)
@pass_ctx
def suppress(ctx: Context, value: str, reason: str) -> None:
    """Never write to an address, or to a whole @domain, again, in any sequence."""
    result = engine.suppress(ctx.ws.store, value, clock.now(), reason)
    state = "added" if result.added else "already suppressed"
    click.echo(f"{result.value}: {state}; {result.stopped} active enrollment(s) stopped")


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@pass_ctx
def suppressions(ctx: Context, as_json: bool) -> None:
    """List the suppressed addresses and domains."""
    rows = [
        {"value": s.value, "reason": s.reason, "since": s.created_at.isoformat()}
        for s in engine.suppressions(ctx.ws.store)
    ]
    if as_json:
        _print_json(rows)
        return
    for row in rows:
        click.echo(f"{row['value']}  {row['reason'] or ''}  {row['since']}")
    click.echo(f"{len(rows)} suppressed")


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
        _print_json(report)
        return
    click.echo(f"{report['active']} active enrollment(s), {report['due_now']} due now")
    _table(
        [
            [i["email"], i["sequence"], f"{i['step']} ({i['channel']})", i["due_local"]]
            for i in report["upcoming"]
        ],
        ["prospect", "sequence", "next step", "due (local)"],
    )


@cli.command()
@click.argument("email")
@click.option("--sequence", help="Preview this sequence (default: the prospect's latest).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@pass_ctx
def preview(ctx: Context, email: str, sequence: str | None, as_json: bool) -> None:
    """Render every step a prospect will get, with every subject and body variant."""
    doc = render_preview(ctx.ws, email, sequence)
    if as_json:
        _print_json(doc)
        return
    click.echo(
        f"{doc['prospect']} in {doc['sequence']}, from {doc['sender']}, "
        f"{doc['language']}/{doc['persona'] or 'default'}"
    )
    for n, step in enumerate(doc["steps"], 1):
        click.echo(
            f"\n== {n}. {step['step']} ({step['channel']}, after {step['wait']}) {step['template']}"
        )
        if step.get("subject_from"):
            click.echo(f"subject: Re: <the subject sent at step {step['subject_from']}>")
        for subject in step["subjects"]:
            click.echo(f"subject [{subject['id']}]: {subject['text']}")
        for body in step["bodies"]:
            click.echo(f"--- body [{body['id']}]")
            click.echo(body["text"].rstrip("\n"))


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
    failing = bool(report.errors or report.paused or report.held)
    if as_json:
        _print_json(asdict(report))
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
        _print_json(asdict(report))
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
        _print_json(rows)
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
            _print_json(asdict(report))
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
        _print_json(doc)
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


@cli.command()
@click.argument("message", metavar="MESSAGE")
@click.option(
    "--sent/--not-sent",
    required=True,
    help="It did leave (look in the Sent folder), or it did not.",
)
@pass_ctx
def resolve(ctx: Context, message: str, sent: bool) -> None:
    """Settle a message whose fate is unknown after a crash (outbox id or Message-ID)."""
    click.echo(outbox.resolve(ctx.ws, message, sent, clock.now()))


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
        _print_json(rows)
        return
    for row in rows:
        state = _mailbox_state(row)
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
            _print_json(rows)
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


@cli.command()
@click.option(
    "--replied",
    is_flag=True,
    required=True,
    help="Prospects who replied or reached a goal (meeting, webinar).",
)
@click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the CSV here (default: standard output).",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document instead.")
@pass_ctx
def export(ctx: Context, replied: bool, output: Path | None, as_json: bool) -> None:
    """Export for the CRM: every reply and goal, with the prospect and what was sent."""
    rows = reports.replied(ctx.ws)
    if as_json:
        _print_json(rows)
        return
    target = output.open("w", encoding="utf-8", newline="") if output else sys.stdout
    try:
        writer = csv.DictWriter(target, fieldnames=reports.EXPORT_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    finally:
        if output:
            target.close()
    if output:
        click.echo(f"{len(rows)} row(s) written to {output}", err=True)


@cli.group()
def ab() -> None:
    """The A/B test of subjects and bodies: its report and its twice-weekly review."""


@ab.command("report")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@click.option(
    "--html",
    "html_path",
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    help="Also write a one-file HTML report with charts to this path.",
)
@pass_ctx
def ab_report(ctx: Context, as_json: bool, html_path: Path | None) -> None:
    """Per sequence, step and variant: sends, replies, rate, interval, P(best), status."""
    data = ab_module.report(ctx.ws, clock.now())
    if html_path is not None:
        try:
            html_path.write_text(abhtml.render(data), encoding="utf-8")
        except OSError as exc:
            raise OutreachError(
                f"cannot write the HTML report: {exc.strerror}", file=html_path
            ) from None
        if not as_json:
            click.echo(f"HTML report written to {html_path}")
            return
    if as_json:
        _print_json(data)
        return
    click.echo(f"metric: {data['metric_means']}")
    click.echo(f"attribution: {data['attribution']}")
    last = data["last_review"]
    click.echo(
        f"last review: {last['at']} ({last['trigger']})" if last else "last review: none yet"
    )
    for step in data["steps"]:
        short = step["active"] < step["wanted"]
        click.echo(
            f"\n{step['sequence']}/{step['step']} {ab_module.plural(step['kind'])}"
            f"  ({step['template']})"
            + (f"  ! {step['active']} active, {step['wanted']} wanted" if short else "")
        )
        click.echo(
            f"  {'variant':<24} {'sends':>6} {'replies':>7} {'rate':>7}  {'95 % interval':<15} "
            f"{'P(best)':>7}  status"
        )
        for v in step["variants"]:
            low, high = v["interval"]
            p_best = f"{v['p_best']:.3f}" if v["p_best"] is not None else "-"
            status = v["status"] + (f" ({v['retired']})" if v["retired"] else "")
            rate, interval = (
                (f"{100 * v['rate']:>6.1f}%", f"{100 * low:>5.1f}-{100 * high:<5.1f} %")
                if v["sends"]
                else (f"{'-':>7}", f"{'-':<13}")
            )
            click.echo(
                f"  {v['variant']:<24} {v['sends']:>6} {v['replies']:>7} {rate}"
                f"  {interval}   {p_best:>7}  {status}"
            )


@ab.command("review")
@click.option("--dry-run", is_flag=True, help="Decide, print, and change nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@pass_ctx
def ab_review(ctx: Context, dry_run: bool, as_json: bool) -> None:
    """The review the daemon runs on `[ab] review`: retire the variants that lose."""
    result = ab_module.review(ctx.ws, clock.now(), dry_run=dry_run)
    problems = []
    if not dry_run:
        for line in ab_module.publish_digest(ctx.ws, result):
            if line.startswith("digest not"):
                problems.append(line)
            elif not as_json:
                click.echo(line, err=True)
    if as_json:
        _print_json(result.to_json())
    else:
        _print_review(result)
    for problem in problems:  # the review itself is recorded; the marketer was not told
        click.echo(f"review {result.review_id} recorded, but {problem}", err=True)
    if problems:
        sys.exit(1)


def _print_review(result: ab_module.ReviewResult) -> None:
    click.echo(
        ("dry run: nothing applied" if result.dry_run else f"review {result.review_id}")
        + f"; metric: {ab_module.METRICS[result.metric]}"
    )
    for f in result.factors:
        click.echo(f"\n{f.factor.label()}  ({f.factor.template.path})")
        for d in f.decisions:
            verb = "RETIRE" if d.action == "retire" else "keep  "
            click.echo(f"  {verb} {d.variant:<24} {ab_module.describe(d)}: {d.reason}")
        for variant in f.retired_before:
            click.echo(f"  (retired before) {variant}")
        if f.missing:
            click.echo(
                f"  ! {f.active_after} active, {f.wanted} wanted: "
                f"write {f.missing} more {ab_module.plural(f.factor.kind, f.missing)}"
            )


@ab.command("restore")
@click.argument("sequence")
@click.argument("step")
@click.argument("kind", type=click.Choice(["subject", "body"]))
@click.argument("variant")
@pass_ctx
def ab_restore(ctx: Context, sequence: str, step: str, kind: str, variant: str) -> None:
    """Put a variant a review retired back in the test (with an equal share from now on)."""
    ab_module.restore(ctx.ws, sequence, step, kind, variant, clock.now())
    click.echo(f"{sequence}/{step} {kind} '{variant}' is active again")


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


def main() -> None:
    """Entry point of the ``outreach`` console script and ``python -m outreach``."""
    cli(prog_name="outreach")
