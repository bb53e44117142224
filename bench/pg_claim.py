"""Benchmark: claim the next 500 due messages among 1,000,000 enrollments on PostgreSQL.

Builds a database with the real schema (Alembic), 1,000,000 prospects and enrollments over
4 sending mailboxes, due times spread over +-90 days around now (about 40 % active and due),
then times the claim's database work for one mailbox, as the dispatcher issues it: the next
500 due enrollments of the mailbox `FOR UPDATE SKIP LOCKED` on the (sender, state, due_at)
index, and the update that takes them out of the due set; rolled back after each run so every
run claims the same 500. The baseline, measured in the same run, is the same transaction with
index scans switched off (`enable_indexscan`, `enable_bitmapscan` off: a full scan and sort).
Target (issue #6): < 50 ms.

Starts a throwaway PostgreSQL cluster (as the tests do; needs Debian's `postgresql`) unless
`--url` names an empty database.

    python bench/pg_claim.py [--rows 1000000] [--url postgresql+psycopg://...]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import Connection, select, text, update

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests.postgres

from outreach.models import Enrollment  # noqa: E402
from outreach.store import Store  # noqa: E402

NOW = datetime(2027, 3, 1, 9, 0, tzinfo=UTC)
SENDER = "sender0@northwind.example"
enrollments = Enrollment.__table__  # type: ignore[attr-defined]


def build(store: Store, rows: int) -> None:
    store.upgrade()
    with store.engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO prospects (id, email, domain, fields, status, created_at, updated_at)"
                " SELECT i, 'p' || i || '@c' || (i % 50000) || '.example',"
                " 'c' || (i % 50000) || '.example', '{}', 'active', :now, :now"
                " FROM generate_series(1, :rows) AS i"
            ),
            {"now": NOW, "rows": rows},
        )
        conn.execute(
            text(
                "INSERT INTO enrollments (prospect_id, sequence, sender, state, step_index,"
                " due_at, enrolled_at, updated_at)"
                " SELECT i, 'cold', 'sender' || (i % 4) || '@northwind.example',"
                " (ARRAY['active','active','active','active','active','active','active',"
                "'active','finished','replied'])[1 + (hashint4(i) & 1023) % 10], 0,"
                " :now + ((hashint4(i * 7) % 129600) * interval '1 minute'), :now, :now"
                " FROM generate_series(1, :rows) AS i"
            ),
            {"now": NOW, "rows": rows},
        )
        conn.execute(text("SELECT setval('prospects_id_seq', :rows)"), {"rows": rows})
    with store.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM ANALYZE"))


def claim_500(conn: Connection) -> list[int]:
    """The claim's database work for one mailbox, rolled back so the next run sees the same."""
    with conn.begin() as transaction:
        ids = list(
            conn.execute(
                select(enrollments.c.id)
                .where(
                    enrollments.c.sender == SENDER,
                    enrollments.c.state == "active",
                    enrollments.c.due_at <= NOW,
                )
                .order_by(enrollments.c.due_at, enrollments.c.id)
                .limit(500)
                .with_for_update(skip_locked=True)
            ).scalars()
        )
        conn.execute(
            update(enrollments).where(enrollments.c.id.in_(ids)).values(due_at=None, updated_at=NOW)
        )
        transaction.rollback()
    return ids


def time_ms(fn, repeat: int = 30) -> float:  # type: ignore[no-untyped-def]
    fn()  # warm the cache
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1000)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--url", help="an empty PostgreSQL database (default: a throwaway one)")
    args = parser.parse_args()
    with ExitStack() as stack:
        url = args.url
        if url is None:
            from tests.postgres import PostgresCluster

            url = stack.enter_context(PostgresCluster()).new_database()
        store = Store(url)
        start = time.perf_counter()
        build(store, args.rows)
        print(f"built {args.rows:,} enrollments in {time.perf_counter() - start:.1f} s")
        with store.engine.connect() as conn:
            [(due,)] = conn.execute(
                text(
                    "SELECT count(*) FROM enrollments"
                    " WHERE sender = :s AND state = 'active' AND due_at <= :now"
                ),
                {"s": SENDER, "now": NOW},
            )
            conn.rollback()
            ids = claim_500(conn)
            assert len(ids) == 500
            ours = time_ms(lambda: claim_500(conn))
            conn.execute(text("SET enable_indexscan = off"))
            conn.execute(text("SET enable_bitmapscan = off"))
            conn.commit()
            assert claim_500(conn) == ids
            scan = time_ms(lambda: claim_500(conn), repeat=5)
        store.dispose()
    print(f"one mailbox's backlog: {due:,} due among {args.rows:,} enrollments")
    print(f"claim the next 500 due (FOR UPDATE SKIP LOCKED + update): {ours:.2f} ms (median of 30)")
    print(f"baseline, same transaction without the index: {scan:.1f} ms; ratio {scan / ours:.0f}x")
    print("target (< 50 ms):", "met" if ours < 50 else "NOT met")


if __name__ == "__main__":
    main()
