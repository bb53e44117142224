"""Benchmark: polling a mailbox of 10,000 messages, then one with 10 new ones.

A real Dovecot (as in the tests; `dovecot-imapd` must be installed) holds 10,000 ordinary
messages in the rep's INBOX (none of them from a prospect). The first `outreach replies
--once` reads and matches all of them (none is ours, so none is classified); the second, after
10 new messages arrive, must cost O(new messages), not O(mailbox): that is what the UID cursor
is for. The baseline, measured in the same run, is a bare imapclient fetch of every message of
the folder (BODY.PEEK[]).

    python bench/poll_bench.py [--messages 10000]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from datetime import UTC, datetime
from email.message import EmailMessage
from email.policy import SMTP
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from imapclient import IMAPClient  # noqa: E402

from outreach import inbox  # noqa: E402
from outreach.starter import init_workspace  # noqa: E402
from outreach.workspace import Workspace  # noqa: E402
from tests.conftest import point_at_servers  # noqa: E402
from tests.dovecot import Dovecot  # noqa: E402


def mail(n: int) -> bytes:
    msg = EmailMessage()
    msg["From"] = f"Colleague {n} <colleague{n % 50}@northwind.example>"
    msg["To"] = "rep@northwind.example"
    msg["Subject"] = f"Weekly numbers {n}"
    msg["Date"] = "Mon, 04 Jan 2027 09:00:00 +0200"
    msg["Message-ID"] = f"<bench-{n}@northwind.example>"
    msg.set_content(f"Hi,\n\nthe numbers for week {n % 52} are attached.\n\nBest,\nColleague\n")
    return msg.as_bytes(policy=SMTP)


def fill(dovecot: Dovecot, user: str, first: int, count: int) -> None:
    with IMAPClient(dovecot.host, port=dovecot.port, ssl=False) as client:
        client.login(user, dovecot.password)
        for n in range(first, first + count):
            client.append("INBOX", mail(n))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=10_000)
    args = parser.parse_args()
    with Dovecot() as dovecot, tempfile.TemporaryDirectory() as tmp:
        user = dovecot.new_user()
        fill(dovecot, user, 0, args.messages)
        init_workspace(Path(tmp))
        os.environ["OUTREACH_TEST_IMAP"] = dovecot.password
        point_at_servers(Path(tmp) / "outreach.toml", 2525, dovecot.host, dovecot.port, user)
        ws = Workspace.load(Path(tmp) / "outreach.toml")
        ws.store  # noqa: B018 - the schema, outside the timing
        start = time.perf_counter()
        first = inbox.poll(ws, datetime.now(UTC))
        first_s = time.perf_counter() - start
        fill(dovecot, user, args.messages, 10)
        start = time.perf_counter()
        second = inbox.poll(ws, datetime.now(UTC))
        second_s = time.perf_counter() - start
        with IMAPClient(dovecot.host, port=dovecot.port, ssl=False) as client:
            client.login(user, dovecot.password)
            client.select_folder("INBOX", readonly=True)
            start = time.perf_counter()
            fetched = client.fetch(client.search("ALL"), ["BODY.PEEK[]"])
            bare_s = time.perf_counter() - start
        ws.close()
    assert first.seen == args.messages and second.seen == 10, (first, second)
    assert len(fetched) == args.messages + 10
    print(f"replies --once against a Dovecot INBOX of {args.messages:,} messages")
    print(
        f"first poll (reads and matches all):    {first_s:8.2f} s "
        f"({args.messages / first_s:,.0f} msg/s)"
    )
    print(f"second poll (10 new messages):         {second_s:8.3f} s")
    print(f"baseline, bare UID FETCH of the folder: {bare_s:7.2f} s")
    print(
        f"second / first: {second_s / first_s:.4f} (O(new) would be about {10 / args.messages:.4f})"
    )


if __name__ == "__main__":
    main()
