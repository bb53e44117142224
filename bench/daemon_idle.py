"""Benchmark: the daemon idle between ticks, with 1,000,000 enrollments in the database.

Builds a workspace whose SQLite database holds 1,000,000 prospects and active enrollments,
all due in the next 1-180 days (so nothing is due now), starts `outreach run` on it with the
default 30-second dispatch interval, lets it settle, then samples its CPU time and resident
memory from /proc over 60 seconds (two ticks). The baseline, measured the same way in the
same run, is an idle `python -c "import time; time.sleep(...)"` process.
Targets (issue #3): under 1 % CPU and under 150 MB resident.

    python bench/daemon_idle.py [--rows 1000000] [--seconds 60]
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from outreach.starter import init_workspace
from outreach.store import Store

TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")


def build(workdir: Path, rows: int) -> Path:
    init_workspace(workdir)
    config = workdir / "outreach.toml"
    store = Store(f"sqlite:///{workdir / 'outreach.db'}")
    store.upgrade()
    store.dispose()
    rng = random.Random(1)
    fmt = "%Y-%m-%d %H:%M:%S.%f"
    now = datetime.now(UTC)
    now_text = now.strftime(fmt)
    db = sqlite3.connect(workdir / "outreach.db")
    with db:
        db.executemany(
            "INSERT INTO prospects (id, email, domain, fields, status, created_at, updated_at)"
            " VALUES (?, ?, ?, '{}', 'active', ?, ?)",
            (
                (i, f"p{i}@c{i % 50000}.example", f"c{i % 50000}.example", now_text, now_text)
                for i in range(1, rows + 1)
            ),
        )
        db.executemany(
            "INSERT INTO enrollments (prospect_id, sequence, sender, state, step_index, due_at,"
            " enrolled_at, updated_at) VALUES (?, 'cold', 'sanna.lehto@northwind.example',"
            " 'active', 0, ?, ?, ?)",
            (
                (
                    i,
                    (now + timedelta(minutes=rng.randint(1440, 180 * 1440))).strftime(fmt),
                    now_text,
                    now_text,
                )
                for i in range(1, rows + 1)
            ),
        )
    db.execute("ANALYZE")
    db.close()
    return config


def sample(pid: int) -> tuple[float, float]:
    """(CPU seconds so far, resident MB now) of a process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / TICKS_PER_SECOND
    rss_kb = next(
        int(line.split()[1])
        for line in Path(f"/proc/{pid}/status").read_text().splitlines()
        if line.startswith("VmRSS:")
    )
    return cpu, rss_kb / 1024


def measure(command: list[str], settle: float, seconds: float) -> tuple[float, float]:
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        time.sleep(settle)
        assert process.poll() is None, process.stderr.read().decode() if process.stderr else ""
        cpu0, _ = sample(process.pid)
        start = time.monotonic()
        peak = 0.0
        while time.monotonic() - start < seconds:
            time.sleep(1)
            peak = max(peak, sample(process.pid)[1])
        cpu1, _ = sample(process.pid)
        return 100 * (cpu1 - cpu0) / (time.monotonic() - start), peak
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--seconds", type=float, default=60)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        config = build(Path(tmp), args.rows)
        daemon_cpu, daemon_rss = measure(
            [sys.executable, "-m", "outreach", "--config", str(config), "run"],
            settle=10,
            seconds=args.seconds,
        )
    idle_cpu, idle_rss = measure(
        [sys.executable, "-c", "import time; time.sleep(3600)"], settle=1, seconds=10
    )
    print(
        f"outreach run, idle, {args.rows:,} enrollments, dispatch every 30 s, "
        f"sampled {args.seconds:.0f} s"
    )
    print(f"{'':32}{'CPU %':>8}{'peak RSS':>12}")
    print(f"{'outreach run':32}{daemon_cpu:>8.2f}{daemon_rss:>9.0f} MB")
    print(f"{'baseline: sleeping python':32}{idle_cpu:>8.2f}{idle_rss:>9.0f} MB")
    ok = daemon_cpu < 1 and daemon_rss < 150
    print("target (< 1 % CPU, < 150 MB):", "met" if ok else "NOT met")


if __name__ == "__main__":
    main()
