"""The A/B test: report, review, restore."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from outreach import clock
from outreach.ab import attribution, registry
from outreach.ab import html as abhtml
from outreach.ab import report as abreport
from outreach.ab import review as review_module
from outreach.cli.base import (
    Context,
    cli,
    pass_ctx,
    print_json,
)
from outreach.errors import OutreachError


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
    data = abreport.report(ctx.ws, clock.now())
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
        print_json(data)
        return
    _print_report(data)


def _print_report(data: dict[str, Any]) -> None:
    click.echo(f"metric: {data['metric_means']}")
    click.echo(f"attribution: {data['attribution']}")
    click.echo(f"words as {data['sample_prospect']} would read them ([sample_prospect])")
    last = data["last_review"]
    click.echo(
        f"last review: {last['at']} ({last['trigger']})" if last else "last review: none yet"
    )
    unsent = []
    for step in data["steps"]:
        title = f"{step['sequence']}/{step['step']} {registry.plural(step['kind'])}"
        if not step["sends"]:  # folded: a line at the end says which
            unsent.append(title)
            continue
        short = step["active"] < step["wanted"]
        click.echo(
            f"\n{title}  ({step['template']})"
            + (f"  ! {step['active']} active, {step['wanted']} wanted" if short else "")
        )
        click.echo(
            f"  {'variant':<22} {'sends':>6} {'replies':>7} {'rate':>7}  {'95 % interval':<15} "
            f"{'P(best)':>7}  {'status':<8} "
            + ("subject" if step["kind"] == "subject" else "first line")
        )
        for v in step["variants"]:
            status = v["status"] + (f" ({v['retired']})" if v["retired"] else "")
            click.echo(f"  {_row(v)}  {status:<8} {_quote(v['text'])}")
        for segment in step["segments"]:
            who = "/".join(x for x in (segment["language"], segment["persona"]) if x) or "-"
            click.echo(
                f"    {who}:"
                + (
                    ""
                    if segment["enough_data"]
                    else "  (too few sends to call here: the review decides on everyone together)"
                )
            )
            for v in segment["variants"]:
                click.echo(f"    {_row(v)}")
    if unsent:
        click.echo(f"\nnot sent yet: {', '.join(unsent)}")


def _row(v: dict[str, Any]) -> str:
    low, high = v["interval"]
    p_best = f"{v['p_best']:.3f}" if v["p_best"] is not None else "-"
    rate, interval = (
        (f"{100 * v['rate']:>6.1f}%", f"{100 * low:>5.1f}-{100 * high:<5.1f} %")
        if v["sends"]
        else (f"{'-':>7}", f"{'-':<13}")
    )
    return f"{v['variant']:<22} {v['sends']:>6} {v['replies']:>7} {rate}  {interval}   {p_best:>7}"


def _quote(text: str | None) -> str:
    if text is None:
        return "(not in the template file)"
    return f'"{text if len(text) <= 70 else text[:69] + "…"}"'


@ab.command("review")
@click.option("--dry-run", is_flag=True, help="Decide, print, and change nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@pass_ctx
def ab_review(ctx: Context, dry_run: bool, as_json: bool) -> None:
    """The review the daemon runs on `[ab] review`: retire the variants that lose."""
    result = review_module.review(ctx.ws, clock.now(), dry_run=dry_run)
    problems = []
    if not dry_run:
        for line in review_module.publish_digest(ctx.ws, result):
            if line.startswith("digest not"):
                problems.append(line)
            elif not as_json:
                click.echo(line, err=True)
    if as_json:
        print_json(result.to_json())
    else:
        _print_review(result)
    for problem in problems:  # the review itself is recorded; the marketer was not told
        click.echo(f"review {result.review_id} recorded, but {problem}", err=True)
    if problems:
        sys.exit(1)


def _print_review(result: review_module.ReviewResult) -> None:
    click.echo(
        ("dry run: nothing applied" if result.dry_run else f"review {result.review_id}")
        + f"; metric: {attribution.METRICS[result.metric]}"
    )
    for f in result.factors:
        click.echo(f"\n{f.factor.label()}  ({f.factor.template.path})")
        for d in f.decisions:
            verb = "RETIRE" if d.action == "retire" else "keep  "
            click.echo(f"  {verb} {d.variant:<24} {review_module.describe(d)}: {d.reason}")
        for variant in f.retired_before:
            click.echo(f"  (retired before) {variant}")
        if f.missing:
            click.echo(
                f"  ! {f.active_after} active, {f.wanted} wanted: "
                f"write {f.missing} more {registry.plural(f.factor.kind, f.missing)}"
            )


@ab.command("restore")
@click.argument("sequence")
@click.argument("step")
@click.argument("kind", type=click.Choice(["subject", "body"]))
@click.argument("variant")
@pass_ctx
def ab_restore(ctx: Context, sequence: str, step: str, kind: str, variant: str) -> None:
    """Put a variant a review retired back in the test (with an equal share from now on)."""
    registry.restore(ctx.ws, sequence, step, kind, variant, clock.now())
    click.echo(f"{sequence}/{step} {kind} '{variant}' is active again")
