"""The prospects: enroll, status, one prospect, stop, suppress, preview, export."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from outreach import clock, localtime, reports, sequencing
from outreach.cli.base import (
    Context,
    cli,
    fail,
    mailbox_state,
    pass_ctx,
    print_json,
    table,
    when,
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
@click.option(
    "--sender",
    "senders",
    multiple=True,
    help="Mailbox the messages go out from (default: the only one); repeat it, or give "
    "'all', to spread the file over several.",
)
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
    senders: tuple[str, ...],
    dry_run: bool,
    skip_invalid: bool,
    include_ended: bool,
    as_json: bool,
) -> None:
    """Import prospects from a CSV (creating or updating them) and enroll them in a sequence."""
    with _progress(file) as on_progress:
        from outreach.enroll import enroll_csv, format_rejection  # not for `status`

        result = enroll_csv(
            ctx.ws,
            file,
            sequence,
            now=clock.now(),
            senders=senders,
            dry_run=dry_run,
            skip_invalid=skip_invalid,
            include_ended=include_ended,
            on_progress=on_progress,
        )
    if as_json:
        print_json(result.as_json())
    else:
        would = "" if result.applied else "would be "
        click.echo(f"{file} -> sequence {result.sequence}, sender {result.sender}")
        click.echo(f"  {would}enrolled  {result.enrolled}")
        if len(result.split) > 1 or result.capacity:
            for email in result.capacity or result.split:
                count, room = result.split.get(email, 0), result.capacity.get(email)
                can = f"  (can send {room} in the next 5 sending days)" if room is not None else ""
                click.echo(f"    {email:<40} {count:>6}{can}")
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
                "first step due "
                f"{localtime.local(result.first_due, localtime.team_zone(ctx.ws.config))} "
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
                fail(lines)
            sys.exit(1)
        if not as_json:
            for line in lines:
                click.echo(line, err=True)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@pass_ctx
def status(ctx: Context, as_json: bool) -> None:
    """Per sequence and step: active, waiting, sent, replied, bounced, unsubscribed, finished."""

    report = reports.status(ctx.ws, clock.now())
    if as_json:
        print_json(report)
        return
    zone = localtime.team_zone(ctx.ws.config)
    for seq in report["sequences"]:
        totals = ", ".join(
            f"{k} {v}"
            + (
                f" ({seq['last_step_skipped']} with the last step skipped)"
                if k == "finished" and seq["last_step_skipped"]
                else ""
            )
            for k, v in seq["enrollments"].items()
            if v
        )
        totals = totals or "empty"
        click.echo(f"{seq['name']}: {totals}")
        table(
            [
                [
                    f"{s['index'] + 1}. {s['name']} ({s['channel']})",
                    *(s[k] for k in reports.STEP_COUNTS),
                ]
                for s in seq["steps"]
            ],
            ["  step", *reports.STEP_COUNTS],
        )
        tracking_on = any(report["tracking"].values())
        for s in seq["steps"]:
            if any(s["tracking"].values()) or (
                tracking_on and s["channel"] == "email" and s["sent"]
            ):
                click.echo(f"  tracked {s['index'] + 1}. {s['name']}: {_tracked(s['tracking'])}")
        click.echo()
    for box in report["mailboxes"]:
        state = mailbox_state(box)
        click.echo(
            f"mailbox {box['email']}: {box['sent_today']}/{box['daily_limit']} sent today, "
            f"{box['due_now']} due now (backlog), {box['retrying']} retrying, {state}"
        )
    for message in report["unknown"]:
        claimed = when(message["claimed_at"], zone)
        if message["state"] == "sending":
            click.echo(
                f"SENDING #{message['id']} to {message['to']} ({message['sequence']}/"
                f"{message['step']}, claimed {claimed}): in flight, or its "
                "process died; the next send or run will tell"
            )
            continue
        click.echo(
            f"UNKNOWN #{message['id']} to {message['to']} {message['message_id']} "
            f"({message['sequence']}/{message['step']}, claimed {claimed}): "
            "did it leave? Look for it in the Sent folder, then "
            f"`outreach resolve {message['id']} --sent|--not-sent`"
        )
    for member in report["daemons"]:
        held = ", ".join(member["mailboxes"]) or "no mailbox"
        life = "alive" if member["alive"] else "NOT BEATING (dead? its work is taken over)"
        click.echo(
            f"daemon {member['host']} pid {member['pid']}: {life}, since "
            f"{when(member['started_at'], zone)}, last beat {when(member['beat_at'], zone)}, "
            f"holds {held}"
        )
    for held in report["held"]:
        click.echo(
            f"HELD {held['prospects']} prospect(s) in {held['sequence']}, not sent: "
            f"{held['reason']} (tried again every 15 minutes; fix it, or `outreach validate`)"
        )
    click.echo(f"backlog: {report['backlog']} due now")
    click.echo(f"suppressed addresses and domains: {report['suppressed']}")


def _tracked(counts: dict[str, int]) -> str:
    """One step's opens and clicks: people's, then machines' apart (never counted)."""
    return (
        f"opened: {counts['opened']} by people, {counts['opened_by_machines']} by machines "
        f"(not counted); clicked: {counts['clicked']} by people, "
        f"{counts['clicked_by_machines']} by machines"
    )


def _fetched(message: dict[str, Any]) -> str | None:
    """A message's opens and clicks, people's first; None when there were none."""
    parts = []
    for key, label in (("opens", "opened"), ("clicks", "clicked")):
        human, machine = message[key]["human"], message[key]["machine"]
        if human or machine:
            parts.append(f"{label} {human}x by a person, {machine}x by machines")
    return "; ".join(parts) or None


def _event_detail(ev: dict[str, Any]) -> str:
    """What an open or a click event says beyond its kind: where, why, how often."""
    data = ev["data"]
    where = f"{data.get('sequence')}/{data.get('step')}"
    why = "; ".join(data.get("why") or ()) or data.get("via") or ""
    url = f" {data['url']}" if data.get("url") else ""
    return f"{where}{url}{': ' + why if why else ''} ({data.get('count', 1)}x)"


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
@click.option(
    "--set-email",
    "new_email",
    metavar="NEW",
    help="The prospect's new address; their history and live sequences follow them.",
)
@pass_ctx
def prospect(
    ctx: Context, email: str, as_json: bool, mark: str | None, new_email: str | None
) -> None:
    """One prospect's enrollments, every message sent and every event."""
    if new_email is not None:
        change = sequencing.set_email(ctx.ws.store, email, new_email, clock.now())
        if not as_json:
            click.echo(
                f"{change.old} is now {change.new}: history kept, "
                f"{change.live} live enrollment(s) write to the new address"
                + (
                    "; the bounced address's ended sequences stay ended"
                    if change.reactivated
                    else ""
                )
            )
            return
        email = change.new
    if mark is not None:
        result = sequencing.mark_reply(ctx.ws.store, email, mark, clock.now())
        if not as_json:
            click.echo(
                f"{result.email}: the reply of "
                f"{localtime.local(result.at, localtime.team_zone(ctx.ws.config))} is now "
                f"{result.reply_class} (was {result.was})"
            )
            return
    view = reports.prospect_view(ctx.ws, email)
    if as_json:
        print_json(view)
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
    zone = localtime.team_zone(ctx.ws.config)
    click.echo("enrollments:")
    for e in view["enrollments"] or []:
        tail = (
            f"next {e['next_step']} due {when(e['due_at'], zone)}"
            if e["next_step"] and e["due_at"]
            else f"next {e['next_step']}: a task for the rep (`outreach tasks`)"
            if e["next_step"] and e["state"] == "active"
            else f"ended {when(e['ended_at'], zone)} ({e['end_reason']})"
            if e["ended_at"]
            else ""
        )
        click.echo(f"  {e['sequence']}: {e['state']}, from {e['sender']}, {tail}".rstrip(", "))
        if e["held"]:
            click.echo(f"    HELD since {e['held_since']}, not sent: {e['held']}")
    click.echo("messages:" if view["messages"] else "messages: none yet")
    for m in view["messages"]:
        click.echo(
            f"  {when(m['sent_at'], zone)}  {m['sequence']}/{m['step']}  {m['state']}  "
            f"subject={m['subject_variant'] or '-'} body={m['body_variant'] or '-'}  "
            f"{m['message_id'] or ''}".rstrip()
        )
        if fetched := _fetched(m):
            click.echo(f"    {fetched}")
    click.echo("events:" if view["events"] else "events: none")
    for ev in view["events"]:
        detail = f"  {_event_detail(ev)}" if ev["kind"] in reports.TRACKED else ""
        click.echo(f"  {when(ev['at'], zone)}  {ev['kind']}  {ev['reason'] or ''}{detail}".rstrip())
        if ev["kind"] in reports.REPLY_KINDS and ev["data"].get("text"):
            for line in str(ev["data"]["text"]).strip().splitlines():
                click.echo(f"    | {line}")


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
    result = sequencing.stop(ctx.ws.store, email, reason, clock.now(), ctx.ws.config.settings.crm)
    if result.stopped:
        click.echo(f"stopped {result.email} in {', '.join(result.stopped)} ({reason})")
    elif result.already is not None:
        click.echo(
            f"{result.email} had no active enrollment and {reason} was already recorded "
            f"({localtime.local(result.already, localtime.team_zone(ctx.ws.config))}); "
            "nothing new recorded"
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
    result = sequencing.suppress(ctx.ws.store, value, clock.now(), reason)
    state = "added" if result.added else "already suppressed"
    click.echo(f"{result.value}: {state}; {result.stopped} active enrollment(s) stopped")


@cli.command()
@click.argument("value", metavar="ADDRESS_OR_@DOMAIN")
@click.option(
    "--force",
    is_flag=True,
    help="Also when the person asked to be removed (only if they asked to hear again).",
)
@pass_ctx
def unsuppress(ctx: Context, value: str, force: bool) -> None:
    """Take an address, or a whole @domain, off the suppression list."""
    result = sequencing.unsuppress(ctx.ws.store, value, clock.now(), force=force)
    since = localtime.local(result.since, localtime.team_zone(ctx.ws.config))
    click.echo(
        f"{result.value}: off the suppression list (was {result.reason or 'suppressed'} "
        f"since {since}); a new `outreach enroll` may write to it, what it stopped stays stopped"
    )


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@pass_ctx
def suppressions(ctx: Context, as_json: bool) -> None:
    """List the suppressed addresses and domains."""
    rows = [
        {"value": s.value, "reason": s.reason, "since": s.created_at.isoformat()}
        for s in sequencing.suppressions(ctx.ws.store)
    ]
    if as_json:
        print_json(rows)
        return
    zone = localtime.team_zone(ctx.ws.config)
    for row in rows:
        click.echo(f"{row['value']}  {row['reason'] or ''}  {when(row['since'], zone)}")
    click.echo(f"{len(rows)} suppressed")


@cli.command()
@click.argument("email")
@click.option("--sequence", help="Preview this sequence (default: the prospect's latest).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@pass_ctx
def preview(ctx: Context, email: str, sequence: str | None, as_json: bool) -> None:
    """Render every step a prospect will get, with every subject and body variant."""
    from outreach.preview import preview as render_preview

    doc = render_preview(ctx.ws, email, sequence)
    if as_json:
        print_json(doc)
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
@click.option(
    "--replied",
    is_flag=True,
    required=True,
    help="Prospects who replied or reached a goal (meeting, webinar).",
)
@click.option(
    "--excel",
    is_flag=True,
    help="For Excel in Finland and Sweden: UTF-8 with a BOM, cells separated by ';'.",
)
@click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the CSV here (default: standard output).",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document instead.")
@pass_ctx
def export(ctx: Context, replied: bool, excel: bool, output: Path | None, as_json: bool) -> None:
    """Export for the CRM: every reply and goal, with the prospect and what was sent.

    Cells a spreadsheet would run as formulas (starting with =, +, -, @) get a leading '.
    """
    rows = reports.replied(ctx.ws)
    if as_json:
        print_json(rows)
        return
    from outreach.export import write_csv

    write_csv(output or sys.stdout.buffer, reports.EXPORT_COLUMNS, rows, excel=excel)
    if output:
        click.echo(f"{len(rows)} row(s) written to {output}", err=True)
