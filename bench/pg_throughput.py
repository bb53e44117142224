"""Benchmark: end-to-end throughput of 1, 2 and 4 `outreach run` daemons on one PostgreSQL.

Each run gets a fresh database of a throwaway PostgreSQL cluster (as the tests start it;
needs Debian's `postgresql`), the same messages enrolled over 8 mailboxes with limits lifted
(no daily limit, no gap, an always-open window), and N daemon processes sending to one
loopback aiosmtpd sink (a handler that counts and drops). The rate is taken from the
database: messages sent between the first and the last `sent_at`, so process start-up is
not counted. The ratio 4 daemons / 1 daemon shows whether the claim scales or serialises;
on a machine with C cores, daemons beyond C share the CPU (the sink and PostgreSQL too), so
the CPU time the daemons spent per message is printed beside it: flat while msg/s stops
growing means the cores ran out, not that the daemons waited on each other.

The control runs the same number of daemons each on a database and a workspace of its own (its
share of the messages and mailboxes): nothing there can wait on another daemon, so what the
CPU per message rises by there is the machine's; the rise of the shared run over the control
is the contention.

    python bench/pg_throughput.py [--messages 4000] [--mailboxes 8] [--daemons 1,2,4] [--no-control]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, text

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests.postgres

from send_bench import Counter, workspace  # noqa: E402 - this script's folder is on sys.path

from outreach.mail.sink import LoopbackController  # noqa: E402
from tests.postgres import PostgresCluster  # noqa: E402


def run(
    cluster: PostgresCluster,
    port: int,
    daemons: int,
    args: argparse.Namespace,
    *,
    apart: bool = False,
) -> tuple[float, float, float]:
    """Messages per second of ``daemons`` processes, first to last send; their CPU ms per
    message while sending (their CPU from the poll that first saw a message sent to the one
    that saw the last, over the messages sent in between: start-up, imports and shutdown,
    which every daemon pays once, left out); and per message over their whole life.

    ``apart``: the control. Each daemon gets a database and a workspace of its own (its share
    of the messages and mailboxes), so nothing they do can wait on another's rows or locks:
    what its CPU per message still rises by is the machine's (processes sharing the cores),
    not the claim's."""
    cpu_before = _children_cpu()
    total = args.messages // args.mailboxes * args.mailboxes
    shares = daemons if apart else 1
    with tempfile.TemporaryDirectory() as tmp:
        urls, configs = [], []
        for n in range(shares):
            url = cluster.new_database()
            home = Path(tmp) / f"w{n}"
            home.mkdir()
            ws = workspace(
                home, port, args.mailboxes // shares, total // shares, url=url, dispatch_seconds=1
            )
            urls.append(url)
            configs.append(ws.config.path)
            ws.close()
        engines = [create_engine(url) for url in urls]
        logs = [open(Path(tmp) / f"d{n}.log", "w") for n in range(daemons)]  # noqa: SIM115
        processes = [
            subprocess.Popen(
                [sys.executable, "-m", "outreach", "--config", str(configs[n % shares]), "run"],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
            for n, log in enumerate(logs)
        ]
        try:
            deadline = time.monotonic() + 600
            started: tuple[int, float] | None = None  # (sent, daemons' CPU) at the first send
            while True:
                sent = sum(_count_sent(engine) for engine in engines)
                if started is None and sent > 0:
                    started = (sent, _cpu_of(processes))
                if sent >= total:
                    assert started is not None
                    sending_cpu = _cpu_of(processes) - started[1]
                    sending_ms = sending_cpu * 1000 / max(1, total - started[0])
                    break
                assert time.monotonic() < deadline, f"only {sent} of {total} sent"
                time.sleep(0.2)
            spans = []
            for engine in engines:
                with engine.connect() as conn:
                    spans.append(
                        conn.execute(
                            text(
                                "SELECT min(sent_at), max(sent_at) FROM messages"
                                " WHERE state = 'sent'"
                            )
                        ).one()
                    )
            first, last = min(span[0] for span in spans), max(span[1] for span in spans)
        finally:
            for process in processes:
                process.send_signal(signal.SIGTERM)
            for process in processes:
                process.wait(60)
            for log in logs:
                log.close()
            for engine in engines:
                engine.dispose()
    for url in urls:
        cluster.drop_database(url)
    cpu_ms = (_children_cpu() - cpu_before) * 1000 / total
    return (total - 1) / (last - first).total_seconds(), sending_ms, cpu_ms


def _count_sent(engine: Any) -> int:
    with engine.connect() as conn:
        return int(
            conn.execute(text("SELECT count(*) FROM messages WHERE state = 'sent'")).scalar_one()
        )


def _cpu_of(processes: list[subprocess.Popen]) -> float:  # type: ignore[type-arg]
    """The processes' CPU seconds so far (user + system, from /proc), their children's
    included (each daemon's compose worker: live ones read directly, ended ones as the
    daemon's waited-for children)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for process in processes:
        fields = _stat(process.pid)
        total += sum(int(fields[i]) for i in (11, 12, 13, 14))  # utime, stime, cutime, cstime
        children = Path(f"/proc/{process.pid}/task/{process.pid}/children")
        for child in children.read_text().split() if children.exists() else ():
            with contextlib.suppress(FileNotFoundError):  # it ended meanwhile: in cutime next
                total += sum(int(f) for f in _stat(int(child))[11:13])
    return total / ticks


def _stat(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=4000)
    parser.add_argument("--mailboxes", type=int, default=8)
    parser.add_argument("--daemons", default="1,2,4")
    parser.add_argument(
        "--no-control",
        action="store_true",
        help="skip the control (each daemon on a database of its own)",
    )
    args = parser.parse_args()
    counts = [int(n) for n in args.daemons.split(",")]
    counter = Counter()
    server = LoopbackController(counter, host="127.0.0.1", port=0)
    server.start()
    rates: dict[int, tuple[float, float, float]] = {}
    control: dict[int, tuple[float, float, float]] = {}
    try:
        with PostgresCluster() as cluster:
            for daemons in counts:
                rates[daemons] = run(cluster, server.port, daemons, args)
                if daemons > 1 and not args.no_control:
                    control[daemons] = run(cluster, server.port, daemons, args, apart=True)
    finally:
        server.stop()
    print(
        f"{args.messages:,} messages over {args.mailboxes} mailboxes, loopback sink, "
        f"limits lifted, {os.cpu_count()} CPU cores"
    )
    print(
        f"{'daemons':>8}{'msg/s':>10}{'CPU ms/msg sending':>20}{'whole life':>12}"
        f"{'control: apart, CPU ms/msg sending':>38}"
    )
    for daemons, (rate, sending_ms, cpu_ms) in rates.items():
        apart = f"{control[daemons][1]:.2f}" if daemons in control else ""
        print(f"{daemons:>8}{rate:>10,.0f}{sending_ms:>20.2f}{cpu_ms:>12.2f}{apart:>38}")
    if 1 in rates and 4 in rates:
        print(f"ratio 4 daemons / 1 daemon: {rates[4][0] / rates[1][0]:.2f} msg/s")
    if 1 in rates:
        one = rates[1][1]
        for daemons, (_, sending_ms, _) in rates.items():
            if daemons != 1:
                rise = sending_ms / one - 1
                verdict = "met" if rise <= 0.2 else "NOT met"
                print(
                    f"CPU per message, {daemons} daemons vs 1: {rise:+.0%} "
                    f"(target within +20 %: {verdict})"
                )
                if daemons in control:
                    # What sharing one database adds over the same processes kept apart.
                    shared = sending_ms / control[daemons][1] - 1
                    verdict = "met" if shared <= 0.2 else "NOT met"
                    print(
                        f"  the same {daemons} daemons on one database vs each on its own: "
                        f"{shared:+.0%} (contention; within +20 %: {verdict})"
                    )


if __name__ == "__main__":
    main()
