"""The store: one SQLite file in WAL mode, or PostgreSQL; its schema from Alembic."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import create_engine, inspect, text

from outreach.errors import ConfigError
from outreach.models import Enrollment, Prospect
from outreach.store import Store, bulk_insert, db_datetime, due_enrollment_ids, open_store
from tests.conftest import Cli

NOW = datetime(2027, 1, 4, 8, 0, tzinfo=UTC)
pytestmark = pytest.mark.both_databases


def test_new_database_gets_schema(database_url: str) -> None:
    store = open_store(database_url)
    tables = set(inspect(store.engine).get_table_names())
    assert {"prospects", "enrollments", "messages", "events", "suppressions"} <= tables
    assert store.current_revision() == store.head_revision()
    if database_url.startswith("sqlite"):
        with store.engine.connect() as conn:
            assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
            assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1
    store.dispose()


def test_db_upgrade_command_is_idempotent(run: Cli, database_url: str) -> None:
    head = Store(database_url).head_revision()
    first = run("db", "upgrade")
    assert first.exit_code == 0 and "(was empty)" in first.stdout
    again = run("db", "upgrade")
    assert again.exit_code == 0 and f"schema at {head} (was {head})" in again.stdout


def test_bulk_rows_compare_like_orm_rows(database_url: str) -> None:
    """Rows written by the bulk path and read by ORM queries agree on time and JSON."""
    store = open_store(database_url)
    with store.engine.begin() as conn:
        stamp = db_datetime(conn, NOW)
        [(pid, email)] = bulk_insert(
            conn,
            Prospect.__table__,  # type: ignore[attr-defined]
            ("email", "domain", "fields", "status", "created_at", "updated_at"),
            [("a@b.example", "b.example", '{"industry": "Software"}', "active", stamp, stamp)],
            returning=("id", "email"),
        )
        rows = [
            (
                pid,
                "cold",
                "s@n.example",
                "active",
                0,
                db_datetime(conn, NOW + timedelta(minutes=m)),
                stamp,
                stamp,
            )
            for m in (-5, 5)
        ]
        bulk_insert(
            conn,
            Enrollment.__table__,  # type: ignore[attr-defined]
            (
                "prospect_id",
                "sequence",
                "sender",
                "state",
                "step_index",
                "due_at",
                "enrolled_at",
                "updated_at",
            ),
            rows[:1],
        )
        due = due_enrollment_ids(conn, NOW)
    assert email == "a@b.example" and len(due) == 1
    with store.session() as session:
        prospect = session.get(Prospect, pid)
        assert prospect is not None
        assert prospect.fields == {"industry": "Software"} and prospect.created_at == NOW
    store.dispose()


def test_store_refuses_a_schema_it_does_not_know(database_url: str) -> None:
    url = database_url
    store = Store(url)
    with store.engine.begin() as conn:
        conn.execute(text("CREATE TABLE something_else (id INTEGER)"))
    with pytest.raises(ConfigError, match="outreach db upgrade"):
        open_store(url)
    assert inspect(store.engine).get_table_names() == ["something_else"]  # nothing written
    store.dispose()


def test_schema_behind_is_refused_with_the_command_to_run(run: Cli, database_url: str) -> None:
    assert run("status").exit_code == 0  # creates the database
    engine = create_engine(database_url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '0002'"))
    engine.dispose()
    for command in (("status",), ("run",), ("send", "--once")):
        result = run(*command)
        assert result.exit_code == 1 and "outreach db upgrade" in result.stderr, command


def test_migrations_build_exactly_the_tables_of_the_models(database_url: str) -> None:
    """Alembic's autogenerate finds nothing to add: models and migrations agree."""
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext
    from sqlmodel import SQLModel

    store = open_store(database_url)
    with store.engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        diff = compare_metadata(context, SQLModel.metadata)
    store.dispose()
    assert diff == []


def test_db_upgrade_migrates_a_database_with_rows_from_0003(run: Cli, database_url: str) -> None:
    """A database made by the release before scale-out, with a large IMAP UIDVALIDITY in it,
    goes to the current schema by `outreach db upgrade` and keeps its rows."""
    from alembic import command

    from outreach.store import _alembic_config

    store = Store(database_url)
    config = _alembic_config(database_url)
    with store.engine.begin() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, "0003")
    with store.engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO inbox_cursors (mailbox, folder, uidvalidity, last_uid)"
                " VALUES ('a@b.example', 'INBOX', 2147483000, 7)"
            )
        )
    store.dispose()
    done = run("db", "upgrade")
    assert done.exit_code == 0 and "(was 0003)" in done.stdout
    with store.engine.begin() as conn:
        conn.execute(text("UPDATE inbox_cursors SET uidvalidity = 4294967295"))  # 2**32 - 1
        assert conn.execute(text("SELECT last_uid FROM inbox_cursors")).scalar() == 7
    store.dispose()
