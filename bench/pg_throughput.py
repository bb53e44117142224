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

    python bench/pg_throughput.py [--messages 4000] [--mailboxes 8] [--daemons 1,2,4]
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import signal
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import create_engine, text

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests.postgres

from outreach.enroll import enroll_csv  # noqa: E402
from outreach.sink import LoopbackController  # noqa: E402
from outreach.starter import init_workspace  # noqa: E402
from outreach.workspace import Workspace  # noqa: E402
from tests.postgres import PostgresCluster  # noqa: E402


class Counter:
    def __init__(self) -> None:
        self.count = 0

    async def handle_DATA(self, server, session, envelope) -> str:  # type: ignore[no-untyped-def] # noqa: N802
        self.count += 1
        return "250 2.0.0 Ok"


def workspace(tmp: Path, url: str, port: int, mailboxes: int, messages: int) -> Path:
    init_workspace(tmp, demo=True)
    config = tmp / "outreach.toml"
    text_ = config.read_text()
    text_ = text_.replace('url = "sqlite:///outreach.db"', f'url = "{url}"')
    text_ = text_.replace("daily_limit = 50", "daily_limit = 1000000")
    text_ = text_.replace("max_gap_seconds = 1", "max_gap_seconds = 0")
    text_ = text_.replace('holidays = "FI"', 'holidays = ""')
    text_ = text_.replace("dispatch_seconds = 30", "dispatch_seconds = 1")
    start = text_.index("[[mailboxes]]")
    end = text_.index("[daemon]")
    boxes = "".join(
        f'[[mailboxes]]\nname = "Sender {i}"\nemail = "sender{i}@northwind.example"\n'
        f'smtp_host = "127.0.0.1"\nsmtp_port = {port}\nsmtp_security = "none"\n\n'
        for i in range(mailboxes)
    )
    config.write_text(text_[:start] + boxes + text_[end:])
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
    ws.close()
    return config


def run(
    cluster: PostgresCluster, port: int, daemons: int, args: argparse.Namespace
) -> tuple[float, float]:
    """Messages per second of ``daemons`` processes, first to last send; their CPU ms per
    message (whole life, start-up included)."""
    cpu_before = _children_cpu()
    url = cluster.new_database()
    total = args.messages // args.mailboxes * args.mailboxes
    with tempfile.TemporaryDirectory() as tmp:
        config = workspace(Path(tmp), url, port, args.mailboxes, args.messages)
        engine = create_engine(url)
        logs = [open(Path(tmp) / f"d{n}.log", "w") for n in range(daemons)]  # noqa: SIM115
        processes = [
            subprocess.Popen(
                [sys.executable, "-m", "outreach", "--config", str(config), "run"],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
            for log in logs
        ]
        try:
            deadline = time.monotonic() + 600
            while True:
                with engine.connect() as conn:
                    sent = conn.execute(
                        text("SELECT count(*) FROM messages WHERE state = 'sent'")
                    ).scalar_one()
                if sent >= total:
                    break
                assert time.monotonic() < deadline, f"only {sent} of {total} sent"
                time.sleep(0.5)
            with engine.connect() as conn:
                first, last = conn.execute(
                    text("SELECT min(sent_at), max(sent_at) FROM messages WHERE state = 'sent'")
                ).one()
        finally:
            for process in processes:
                process.send_signal(signal.SIGTERM)
            for process in processes:
                process.wait(60)
            for log in logs:
                log.close()
            engine.dispose()
    cluster.drop_database(url)
    cpu_ms = (_children_cpu() - cpu_before) * 1000 / total
    return (total - 1) / (last - first).total_seconds(), cpu_ms


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=4000)
    parser.add_argument("--mailboxes", type=int, default=8)
    parser.add_argument("--daemons", default="1,2,4")
    args = parser.parse_args()
    counts = [int(n) for n in args.daemons.split(",")]
    counter = Counter()
    server = LoopbackController(counter, host="127.0.0.1", port=0)
    server.start()
    rates: dict[int, tuple[float, float]] = {}
    try:
        with PostgresCluster() as cluster:
            for daemons in counts:
                rates[daemons] = run(cluster, server.port, daemons, args)
    finally:
        server.stop()
    print(
        f"{args.messages:,} messages over {args.mailboxes} mailboxes, loopback sink, "
        f"limits lifted, {os.cpu_count()} CPU cores"
    )
    print(f"{'daemons':>8}{'msg/s':>10}{'daemon CPU ms/msg':>20}")
    for daemons, (rate, cpu_ms) in rates.items():
        print(f"{daemons:>8}{rate:>10,.0f}{cpu_ms:>20.1f}")
    if 1 in rates and 4 in rates:
        print(f"ratio 4 daemons / 1 daemon: {rates[4][0] / rates[1][0]:.2f}")


if __name__ == "__main__":
    main()
