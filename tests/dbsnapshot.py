"""Every row of every table of a workspace's database: to show a refused input changed nothing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import MetaData, select

from outreach.workspace import Workspace


def snapshot(config: Path) -> dict[str, list[tuple[Any, ...]]]:
    """``{table: rows}`` for every table the database has, read back by reflection."""
    ws = Workspace.load(config)
    try:
        with ws.store.engine.connect() as conn:
            metadata = MetaData()
            metadata.reflect(conn)
            return {
                name: sorted((tuple(row) for row in conn.execute(select(table))), key=repr)
                for name, table in sorted(metadata.tables.items())
            }
    finally:
        ws.close()


def total_rows(config: Path) -> int:
    return sum(len(rows) for rows in snapshot(config).values())
