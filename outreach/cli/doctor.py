"""``outreach doctor``: the DNS records and logins that decide whether mail is trusted."""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

import click

from outreach.cli.base import Context, cli, pass_ctx, print_json

if TYPE_CHECKING:
    from outreach.doctor import LoginCheck

MARK = {"ok": "ok     ", "warning": "warning", "failure": "FAIL   "}


def login_check(ctx: Context) -> LoginCheck | None:
    """The login step: each mailbox logged in to over SMTP and IMAP (and its token refreshed)
    as ``outreach mailboxes check`` does, without sending."""
    from outreach import doctor, mailcheck

    return lambda box: doctor.login_findings(mailcheck.check_mailbox(box))


@cli.command("doctor")
@click.option(
    "--nameserver",
    metavar="IP[:PORT]",
    help="Ask this DNS server only (default: the system's resolvers).",
)
@click.option(
    "--timeout",
    default=5.0,
    show_default=True,
    type=click.FloatRange(min=0.1, max=60),
    help="Seconds to wait for one DNS answer.",
)
@click.option("--no-login", is_flag=True, help="Check DNS only; do not log in to the mailboxes.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@pass_ctx
def doctor_command(
    ctx: Context, nameserver: str | None, timeout: float, no_login: bool, as_json: bool
) -> None:
    """MX, SPF, DKIM and DMARC of every mailbox's domain, one-click unsubscribe, the tracking
    domain and the logins: one line per finding with what to do; exit 1 on a failure, 0 with
    warnings only."""
    # dnspython and checkdmarc load here, not with every other command.
    from outreach import doctor

    resolver = doctor.make_resolver(nameserver, timeout)
    login = None if no_login else login_check(ctx)
    report = doctor.diagnose(ctx.ws.config, resolver, os.environ, login=login)
    if as_json:
        print_json(report.as_json())
    else:
        for finding in report.findings:
            click.echo(f"{MARK[finding.level]}  {finding.one_line()}")
        if report.failed:
            click.echo(
                f"doctor: {report.summary()}: fix the FAIL lines, then run it again", err=True
            )
        else:
            click.echo(f"doctor: {report.summary()}")
    if report.failed:
        sys.exit(1)
