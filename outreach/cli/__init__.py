"""The ``outreach`` command: parse, call the library, print. No business logic lives here.

One module per area registers its commands on the one group, ``outreach.cli.base.cli``.
"""

from outreach.cli import abtest, doctor, mailboxes, people, sending, setup  # noqa: F401  (registers)
from outreach.cli.base import cli

__all__ = ["cli", "main"]


def main() -> None:
    """Entry point of the ``outreach`` console script and ``python -m outreach``."""
    cli(prog_name="outreach")
