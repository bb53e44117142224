"""Benchmark: end-to-end sending throughput against a bare aiosmtplib loop.

Both sides send the same number of messages to the same loopback aiosmtpd server (a handler
that counts and drops, so the server is not the bottleneck) over the same number of
connections: one per mailbox, all mailboxes in parallel.

- outreach: `send_once` with limits lifted (no daily limit, no gap, an always-open window):
  claim, render, build, SMTP, record and plan the next step, for every message (batches of 50,
  so they are composed in the compose worker; its CPU counts on outreach's side).
- baseline: the same messages pre-built with `outreach.mail.message.build_message`, sent by a plain
  `aiosmtplib.SMTP.send_message` loop per connection.

Targets (issue #11): outreach >= 70 % of the baseline's messages per second at 4 and at 16
connections on SQLite, >= 50 % on PostgreSQL (one process); CPU ms per message for both.

    python bench/send_bench.py [--messages 2000] [--mailboxes 4] [--postgresql] [--server thread]

The server runs in a thread of this process by default (the measure the targets were set
with): it then takes GIL turns from whichever client is measured, and its CPU counts on both
sides. With ``--server process`` it runs in a process of its own, as a real server does, and
the CPU figures are the clients' alone.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
import random
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiosmtplib

from outreach.daemon import send_once, settle_heap
from outreach.enroll import enroll_csv
from outreach.mail.message import Outgoing, build_message, make_message_id
from outreach.mail.sink import LoopbackController
from outreach.starter import init_workspace
from outreach.workspace import Workspace


class Counter:
    def __init__(self, shared: Any = None) -> None:
        self.count = 0
        self.shared = shared  # a multiprocessing.Value when the server runs in its own process

    async def handle_DATA(self, server, session, envelope) -> str:  # type: ignore[no-untyped-def] # noqa: N802
        self.count += 1
        if self.shared is not None:
            with self.shared.get_lock():
                self.shared.value += 1
        return "250 2.0.0 Ok"


def _serve(port: Any, count: Any, stop: Any) -> None:
    """The counting server, in a process of its own (as every real SMTP server is)."""
    server = LoopbackController(Counter(count), host="127.0.0.1", port=0)
    server.start()
    port.value = server.port
    stop.wait()
    server.stop()


class Server:
    """The loopback SMTP server: in its own process (the default), or a thread of this one
    (``--server thread``: then it shares this process's GIL with the client being measured,
    and its CPU counts in the CPU figures)."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        if mode == "thread":
            self.counter = Counter()
            self.thread = LoopbackController(self.counter, host="127.0.0.1", port=0)
            self.thread.start()
            self.port = self.thread.port
            return
        self._port, self._count = multiprocessing.Value("i", 0), multiprocessing.Value("i", 0)
        self._stop = multiprocessing.Event()
        self.process = multiprocessing.Process(
            target=_serve,
            args=(self._port, self._count, self._stop),
            daemon=True,
            name="smtp-server",
        )
        self.process.start()
        while self._port.value == 0:
            time.sleep(0.01)
        self.port = self._port.value

    @property
    def count(self) -> int:
        return self.counter.count if self.mode == "thread" else int(self._count.value)

    def stop(self) -> None:
        if self.mode == "thread":
            self.thread.stop()
        else:
            self._stop.set()
            self.process.join(10)


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
    parser.add_argument(
        "--server",
        choices=("process", "thread"),
        default="thread",
        help="where the counting SMTP server runs: a thread of this process (the issue's "
        "measure), or a process of its own, as a real server",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="rounds of both sides, in alternating order (the machine's speed moves); the "
        "verdict is on the median ratio",
    )
    args = parser.parse_args()
    with contextlib.ExitStack() as stack:
        new_url: Callable[[], str | None] = lambda: None  # noqa: E731
        if args.postgresql:
            sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests.postgres
            from tests.postgres import PostgresCluster

            new_url = stack.enter_context(PostgresCluster()).new_database
        measure(args, new_url)


def one_round(args: argparse.Namespace, url: str | None, ours_first: bool) -> tuple[float, ...]:
    """(outreach msg/s, its CPU ms per message, the baseline's msg/s, its CPU ms per message)."""
    server = Server(args.server)
    try:
        base = base_cpu = 0.0
        if not ours_first:
            base, base_cpu = asyncio.run(baseline(server.port, args.mailboxes, args.messages))
        with tempfile.TemporaryDirectory() as tmp:
            ws = workspace(Path(tmp), server.port, args.mailboxes, args.messages, url=url)
            settle_heap()  # as `outreach send` does before it sends
            start, cpu, forked = time.perf_counter(), time.process_time(), _children_cpu()
            report = send_once(ws)
            ours = time.perf_counter() - start
            ours_cpu = time.process_time() - cpu
            # The compose worker's CPU too (a forked child, ended with the pass).
            ours_cpu += _children_cpu(wait=True) - forked
            sent = len(report.sent)
            ws.close()
        assert sent == args.messages, (sent, report.notes)
        if ours_first:
            base, base_cpu = asyncio.run(baseline(server.port, args.mailboxes, args.messages))
    finally:
        server.stop()
    assert server.count == 2 * args.messages
    n = args.messages
    return n / ours, ours_cpu * 1000 / n, n / base, base_cpu * 1000 / n


def _children_cpu(wait: bool = False) -> float:
    """CPU seconds of this process's children that have ended (the compose worker: it ends
    with the send pass; ``wait`` gives it a moment to)."""
    deadline = time.monotonic() + (2 if wait else 0)
    while wait and time.monotonic() < deadline:
        if not [c for c in multiprocessing.active_children() if c.name != "smtp-server"]:
            break
        time.sleep(0.01)
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def measure(args: argparse.Namespace, new_url: Callable[[], str | None]) -> None:
    store = "PostgreSQL" if args.postgresql else "SQLite"
    where = "in this process" if args.server == "thread" else "in its own process"
    print(
        f"{args.messages:,} messages over {args.mailboxes} parallel connections, loopback, {store}"
        f", the SMTP server {where}"
    )
    # CPU: this process (with --server thread, the server's thread included on both sides),
    # and for outreach its compose worker (a forked process) too.
    print(
        f"{'round':<8}{'outreach msg/s':>16}{'CPU ms/msg':>12}{'bare msg/s':>12}"
        f"{'CPU ms/msg':>12}{'ratio':>8}"
    )
    ratios = []
    for i in range(args.rounds):
        ours, ours_cpu, base, base_cpu = one_round(args, new_url(), ours_first=i % 2 == 0)
        ratios.append(ours / base)
        print(
            f"{i + 1:<8}{ours:>16,.0f}{ours_cpu:>12.2f}{base:>12,.0f}{base_cpu:>12.2f}"
            f"{ours / base:>8.0%}"
        )
    ratio = statistics.median(ratios)
    target = 0.5 if args.postgresql else 0.7
    verdict = "met" if ratio >= target else "NOT met"
    print(
        f"outreach send --once / bare aiosmtplib loop, median of {args.rounds}: {ratio:.0%} "
        f"(range {min(ratios):.0%}-{max(ratios):.0%}; target >= {target:.0%}: {verdict})"
    )


if __name__ == "__main__":
    main()
