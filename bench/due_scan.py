"""Benchmark: find the next 500 due enrollments among 1,000,000 on SQLite.

Builds a database with the real schema (Alembic), 1,000,000 prospects and enrollments whose
due times spread over +-90 days around now (about half are due), then times
`store.due_enrollment_ids` (the global due scan; the dispatcher runs the same query per
mailbox on the (sender, state, due_at) index). The baseline, measured in the same
run, is the same query forced to ignore the index (a full scan). Target (issue #2): < 20 ms.

    python bench/due_scan.py [--rows 1000000]
"""

from __future__ import annotations

import argparse
import random
import sqlite3
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from outreach.store import Store, due_enrollment_ids

NOW = datetime(2027, 3, 1, 9, 0, tzinfo=UTC)


def build(path: Path, rows: int) -> None:
    store = Store(f"sqlite:///{path}")
    store.upgrade()
    store.dispose()
    rng = random.Random(1)
    fmt = "%Y-%m-%d %H:%M:%S.%f"
    now_text = NOW.strftime(fmt)
    db = sqlite3.connect(path)
    with db:
        db.executemany(
            "INSERT INTO prospects (id, email, domain, fields, status, created_at, updated_at)"
            " VALUES (?, ?, ?, '{}', 'active', ?, ?)",
            (
                (i, f"p{i}@c{i % 50000}.example", f"c{i % 50000}.example", now_text, now_text)
                for i in range(1, rows + 1)
            ),
        )
        states = ["active"] * 8 + ["finished", "replied"]
        db.executemany(
            "INSERT INTO enrollments (prospect_id, sequence, sender, state, step_index, due_at,"
            " enrolled_at, updated_at) VALUES (?, 'cold', 'a@n.example', ?, 0, ?, ?, ?)",
            (
                (
                    i,
                    rng.choice(states),
                    (NOW + timedelta(minutes=rng.randint(-90 * 1440, 90 * 1440))).strftime(fmt),
                    now_text,
                    now_text,
                )
                for i in range(1, rows + 1)
            ),
        )
    db.execute("ANALYZE")
    db.close()


def time_ms(fn, repeat: int = 30) -> float:  # type: ignore[no-untyped-def]
    fn()  # warm the page cache
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1000)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.db"
        start = time.perf_counter()
        build(path, args.rows)
        print(f"built {args.rows:,} enrollments in {time.perf_counter() - start:.1f} s")
        store = Store(f"sqlite:///{path}")
        with store.engine.connect() as conn:
            ids = due_enrollment_ids(conn, NOW, 500)
            assert len(ids) == 500
            ours = time_ms(lambda: due_enrollment_ids(conn, NOW, 500))
        raw = sqlite3.connect(path)
        scan_sql = (
            "SELECT id FROM enrollments NOT INDEXED WHERE state = 'active' AND due_at <= ?"
            " ORDER BY due_at, id LIMIT 500"
        )
        now_text = NOW.strftime("%Y-%m-%d %H:%M:%S.%f")
        assert [r[0] for r in raw.execute(scan_sql, (now_text,))] == ids
        scan = time_ms(lambda: raw.execute(scan_sql, (now_text,)).fetchall(), repeat=5)
        store.dispose()
    print(f"next 500 due among {args.rows:,}: {ours:.2f} ms (median of 30)")
    print(f"baseline, same query without the index: {scan:.1f} ms; ratio {scan / ours:.0f}x")
    print("target (< 20 ms):", "met" if ours < 20 else "NOT met")


if __name__ == "__main__":
    main()
