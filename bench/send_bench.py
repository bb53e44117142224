"""Benchmark: end-to-end sending throughput against a bare aiosmtplib loop.

Both sides send the same number of messages to the same loopback aiosmtpd server (a handler
that counts and drops, so the server is not the bottleneck) over the same number of
connections: one per mailbox, all mailboxes in parallel.

- outreach: `send_once` with limits lifted (no daily limit, no gap, an always-open window):
  claim, render, build, SMTP, record and plan the next step, for every message.
- baseline: the same messages pre-built with `outreach.mail.message.build_message`, sent by a plain
  `aiosmtplib.SMTP.send_message` loop per connection.

Targets (issue #11): outreach >= 70 % of the baseline's messages per second at 4 and at 16
connections on SQLite, >= 50 % on PostgreSQL (one process); CPU ms per message for both.

    python bench/send_bench.py [--messages 2000] [--mailboxes 4] [--postgresql]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import aiosmtplib

from outreach.daemon import send_once
from outreach.enroll import enroll_csv
from outreach.mail.message import Outgoing, build_message, make_message_id
from outreach.mail.sink import LoopbackController
from outreach.starter import init_workspace
from outreach.workspace import Workspace


class Counter:
    def __init__(self) -> None:
        self.count = 0

    async def handle_DATA(self, server, session, envelope) -> str:  # type: ignore[no-untyped-def] # noqa: N802
        self.count += 1
        return "250 2.0.0 Ok"


def workspace(
    tmp: Path,
    port: int,
    mailboxes: int,
    messages: int,
    *,
    url: str | None = None,
    dispatch_seconds: int | None = None,
) -> Workspace:
    """The demo workspace with ``mailboxes`` senders on the loopback server at ``port``, limits
    and gaps lifted, and ``messages`` prospects enrolled over them (also `pg_throughput.py`'s,
    with its database ``url`` and a daemon's ``dispatch_seconds``)."""
    init_workspace(tmp, demo=True)
    config = tmp / "outreach.toml"
    text = config.read_text()
    if url is not None:
        text = text.replace('url = "sqlite:///outreach.db"', f'url = "{url}"')
    if dispatch_seconds is not None:
        text = text.replace("dispatch_seconds = 30", f"dispatch_seconds = {dispatch_seconds}")
    text = text.replace("daily_limit = 50", "daily_limit = 1000000")
    text = text.replace("max_gap_seconds = 1", "max_gap_seconds = 0")
    text = text.replace('holidays = "FI"', 'holidays = ""')
    start = text.index("[[mailboxes]]")
    end = text.index("[daemon]")
    boxes = "".join(
        f'[[mailboxes]]\nname = "Sender {i}"\nemail = "sender{i}@northwind.example"\n'
        f'smtp_host = "127.0.0.1"\nsmtp_port = {port}\nsmtp_security = "none"\n\n'
        for i in range(mailboxes)
    )
    config.write_text(text[:start] + boxes + text[end:])
    ws = Workspace.load(config)
    per_box = messages // mailboxes
    for i in range(mailboxes):
        csv = tmp / f"list{i}.csv"
        rows = "".join(
            f"p{i}x{n}@company{n % 97}.example,P{n},Company {n % 97},en\n" for n in range(per_box)
        )
        csv.write_text("email,first_name,company,language\n" + rows)
        result = enroll_csv(
            ws,
            csv,
            "cold",
            now=datetime.now(UTC),
            sender=f"sender{i}@northwind.example",
            rng=random.Random(i),
        )
        assert result.enrolled == per_box, result.rejected[:2]
    return ws


async def baseline(port: int, mailboxes: int, messages: int) -> tuple[float, float]:
    """Seconds and CPU seconds of the bare loop (the messages are built beforehand)."""
    per_box = messages // mailboxes
    built = [
        [
            build_message(
                Outgoing(
                    from_name=f"Sender {i}",
                    from_email=f"sender{i}@northwind.example",
                    to_email=f"p{i}x{n}@company{n % 97}.example",
                    to_name=f"P{n}",
                    subject="Quick question",
                    text="Hi,\n\nWould you like to hear more?\n\nSanna\n",
                    html=None,
                    message_id=make_message_id(f"sender{i}@northwind.example"),
                    date=datetime.now(UTC),
                    unsubscribe_mailto="unsubscribe@northwind.example",
                )
            )
            for n in range(per_box)
        ]
        for i in range(mailboxes)
    ]

    async def one(batch: list) -> None:  # type: ignore[type-arg]
        smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False)
        await smtp.connect()
        for message in batch:
            await smtp.send_message(message)
        await smtp.quit()

    start, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(one(batch) for batch in built))
    return time.perf_counter() - start, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--mailboxes", type=int, default=4)
    parser.add_argument(
        "--postgresql", action="store_true", help="a throwaway PostgreSQL cluster, not SQLite"
    )
    args = parser.parse_args()
    with contextlib.ExitStack() as stack:
        url = None
        if args.postgresql:
            sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests.postgres
            from tests.postgres import PostgresCluster

            url = stack.enter_context(PostgresCluster()).new_database()
        measure(args, url)


def measure(args: argparse.Namespace, url: str | None) -> None:
    counter = Counter()
    server = LoopbackController(counter, host="127.0.0.1", port=0)
    server.start()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            ws = workspace(Path(tmp), server.port, args.mailboxes, args.messages, url=url)
            start, cpu = time.perf_counter(), time.process_time()
            report = send_once(ws)
            ours = time.perf_counter() - start
            ours_cpu = time.process_time() - cpu
            sent = len(report.sent)
            ws.close()
        assert sent == args.messages, (sent, report.notes)
        base, base_cpu = asyncio.run(baseline(server.port, args.mailboxes, args.messages))
    finally:
        server.stop()
    assert counter.count == 2 * args.messages
    store = "PostgreSQL" if url else "SQLite"
    print(
        f"{args.messages:,} messages over {args.mailboxes} parallel connections, loopback, {store}"
    )
    # CPU: this process, the in-process sink's thread included (the same on both sides).
    print(f"{'':40}{'msg/s':>10}{'seconds':>10}{'CPU ms/msg':>12}")
    print(
        f"{'outreach send --once (end to end)':40}{sent / ours:>10,.0f}{ours:>10.2f}"
        f"{ours_cpu * 1000 / sent:>12.2f}"
    )
    print(
        f"{'baseline: bare aiosmtplib loop':40}{args.messages / base:>10,.0f}{base:>10.2f}"
        f"{base_cpu * 1000 / args.messages:>12.2f}"
    )
    ratio = (sent / ours) / (args.messages / base)
    target = 0.5 if url else 0.7
    verdict = "met" if ratio >= target else "NOT met"
    print(f"outreach / baseline: {ratio:.0%}  (target >= {target:.0%}: {verdict})")


if __name__ == "__main__":
    main()
