"""The ``outreach`` command: parse, call the library, print. No business logic lives here.

One module per area registers its commands on the one group, ``outreach.cli.base.cli``; the
group imports a module only when one of its commands runs (``COMMANDS`` says which, with the
short help ``outreach --help`` shows without importing it).
"""

from outreach.cli.base import cli

# command -> (the outreach.cli module that registers it, its short help)
COMMANDS: dict[str, tuple[str, str]] = {
    "ab": (
        "abtest",
        "The A/B test of subjects and bodies: its report and its twice-weekly review.",
    ),
    "db": ("setup", "Database schema: create and migrate."),
    "doctor": (
        "doctor",
        "MX, SPF, DKIM and DMARC of every mailbox's domain, one-click unsubscribe, the "
        "tracking domain and the logins: one line per finding with what to do; exit 1 on a "
        "failure, 0 with warnings only.",
    ),
    "enroll": (
        "people",
        "Import prospects from a CSV (creating or updating them) and enroll them in a sequence.",
    ),
    "export": (
        "people",
        "Export for the CRM: every reply and goal, with the prospect and what was sent.",
    ),
    "handoffs": (
        "sending",
        "CRM hand-offs (a POST per reply or goal): the pending and failed ones.",
    ),
    "init": (
        "setup",
        "Write a working starter: outreach.toml, the three playbook sequences, their templates "
        "and a sample prospects CSV.",
    ),
    "mailboxes": (
        "mailboxes",
        "Each sending mailbox: today's limit (with the warm-up), sent today, backlog, paused or "
        "waiting and why.",
    ),
    "preview": (
        "people",
        "Render every step a prospect will get, with every subject and body variant.",
    ),
    "prospect": ("people", "One prospect's enrollments, every message sent and every event."),
    "reassign": (
        "mailboxes",
        "Move a mailbox's live enrollments (a rep leaves) to another mailbox.",
    ),
    "replies": (
        "sending",
        "Poll the mailboxes for replies, bounces, auto-replies and unsubscribe requests "
        "(`replies --once`), or read the replies (`replies list`).",
    ),
    "resolve": (
        "sending",
        "Settle a message whose fate is unknown after a crash (outbox id or Message-ID): "
        "first see what is known (the Sent folder searched, the SMTP answer), then answer.",
    ),
    "resume": (
        "sending",
        "Let a paused prospect (a colleague replied) go on with their sequences.",
    ),
    "run": ("sending", "The daemon: sends on schedule; stops cleanly on SIGTERM/SIGINT."),
    "schedule": (
        "sending",
        "What will really go out on a day: limits, ramp, gaps and windows applied.",
    ),
    "secrets": ("secrets", "The key that encrypts the stored OAuth grants ([secrets] key_env)."),
    "sequence": ("mailboxes", "Pause or resume a whole sequence."),
    "send": ("sending", "Send everything that is due now, within windows and limits, then exit."),
    "sink": (
        "setup",
        "A local SMTP server that keeps every message it receives (for the demo and trials).",
    ),
    "status": (
        "people",
        "Per sequence and step: active, waiting, sent, replied, bounced, unsubscribed, finished.",
    ),
    "stop": ("people", "Stop every active enrollment of a prospect now."),
    "suppress": (
        "people",
        "Never write to an address, or to a whole @domain, again, in any sequence.",
    ),
    "suppressions": ("people", "List the suppressed addresses and domains."),
    "tasks": ("sending", "LinkedIn and manual steps that are due, per sender."),
    "unsuppress": ("people", "Take an address, or a whole @domain, off the suppression list."),
    "validate": (
        "setup",
        "Check config, sequences and templates; render every variant against a sample prospect.",
    ),
}
cli.lazy = COMMANDS  # type: ignore[attr-defined]

__all__ = ["COMMANDS", "cli", "load_all", "main"]


def load_all() -> None:
    """Import every command module now (tests do, before freezegun fakes the clock: SQLModel
    cannot build its tables' schemas with freezegun's datetime class)."""
    import importlib

    for module in sorted({module for module, _ in COMMANDS.values()}):
        importlib.import_module(f"outreach.cli.{module}")


def main() -> None:
    """Entry point of the ``outreach`` console script and ``python -m outreach``."""
    cli(prog_name="outreach")
