"""``outreach db copy``: move a workspace's database (typically SQLite) into another (PostgreSQL).

Table by table in foreign-key order, rows in primary-key order, in one transaction on the
target: a failure half-way leaves the target as it was. The target must be empty (its schema
is created when it has none); afterwards PostgreSQL's id sequences are moved past the copied
ids, and every table's row count is compared between the two databases.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import Connection, Integer, func, select, text
from sqlmodel import SQLModel

import outreach.models  # noqa: F401 - registers the tables on SQLModel.metadata
from outreach.errors import OutreachError
from outreach.store import Store, _safe, open_store

CHUNK = 5_000


@dataclass
class TableCount:
    table: str
    source: int
    target: int


# Who was alive and what it held describe the source's processes, not the data: a daemon on
# the new database starts with none of them.
OPERATIONAL = ("daemons", "singletons")


def _tables() -> list:  # type: ignore[type-arg]
    return [t for t in SQLModel.metadata.sorted_tables if t.name not in OPERATIONAL]


def _count(conn: Connection, table) -> int:  # type: ignore[no-untyped-def]
    return int(conn.execute(select(func.count()).select_from(table)).scalar_one())


def copy_database(
    source: Store, target_url: str, on_table: Callable[[str, int], None] | None = None
) -> list[TableCount]:
    """Copy every row of ``source`` into the empty database at ``target_url``; the counts of
    both sides per table. Raises OutreachError (nothing written) when the target has rows."""
    if not target_url.startswith(("sqlite:///", "postgresql+psycopg://")):
        raise OutreachError(
            f"not a database URL outreach can use: {_safe(target_url)}",
            field="--to",
            hint="postgresql+psycopg://USER@HOST/DB (or sqlite:///FILE)",
        )
    target = open_store(target_url, field="--to")
    try:
        with source.engine.connect() as src, target.engine.begin() as dst:
            for table in _tables():
                rows = _count(dst, table)
                if rows:
                    raise OutreachError(
                        f"the target database {_safe(target_url)} is not empty "
                        f"({table.name} has {rows} row(s))",
                        field="--to",
                        hint="copy into a new, empty database",
                    )
            counts = []
            for table in _tables():
                order = list(table.primary_key.columns)
                result = src.execution_options(stream_results=True).execute(
                    select(table).order_by(*order)
                )
                copied = 0
                while chunk := result.fetchmany(CHUNK):
                    dst.execute(table.insert(), [dict(row._mapping) for row in chunk])
                    copied += len(chunk)
                _move_sequence(dst, table)
                counts.append(TableCount(table.name, _count(src, table), _count(dst, table)))
                if on_table is not None:
                    on_table(table.name, copied)
            wrong = [c for c in counts if c.source != c.target]
            if wrong:
                raise OutreachError(
                    "row counts differ after the copy: "
                    + ", ".join(f"{c.table} {c.source} -> {c.target}" for c in wrong),
                    field="--to",
                    hint="nothing was kept; is a daemon still writing to the source?",
                )
            return counts
    finally:
        target.dispose()


def _move_sequence(conn: Connection, table) -> None:  # type: ignore[no-untyped-def]
    """PostgreSQL hands out ids from a sequence that knows nothing of copied rows."""
    if conn.dialect.name != "postgresql":
        return
    key = list(table.primary_key.columns)
    if len(key) != 1 or not isinstance(key[0].type, Integer) or not key[0].autoincrement:
        return
    conn.execute(
        text(
            f"SELECT setval(pg_get_serial_sequence('{table.name}', '{key[0].name}'), "
            f"COALESCE(MAX({key[0].name}), 1), MAX({key[0].name}) IS NOT NULL) FROM {table.name}"
        )
    )
