"""Engine and session creation, schema migrations, and the queries other modules share."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    Connection,
    CursorResult,
    Engine,
    Table,
    create_engine,
    event,
    inspect,
    select,
    text,
)
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session

from outreach.errors import ConfigError

if TYPE_CHECKING:  # Alembic loads only to migrate: checking the schema needs no more than SQL
    from alembic.config import Config as AlembicConfig

MIGRATIONS = Path(__file__).parent / "migrations"


def make_engine(url: str) -> Engine:
    """An engine for ``url``; SQLite gets WAL, foreign keys and a busy timeout."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30})

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_connection, _record):  # type: ignore[no-untyped-def]
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            # 32 MB of page cache keeps the indexes of a large import in memory.
            cursor.execute("PRAGMA cache_size=-32000")
            cursor.close()

        return engine
    # A host that accepts the connection and never answers must not hang a command.
    return create_engine(url, pool_pre_ping=True, connect_args={"connect_timeout": 10})


MAX_PARAMETERS = 30_000  # under SQLite's 32,766 and PostgreSQL's 65,535 bind parameters


def bulk_insert(
    conn: Connection,
    table: Table,
    columns: Sequence[str],
    rows: Sequence[Sequence[Any]],
    returning: Sequence[str] = (),
) -> list[tuple[Any, ...]]:
    """Insert many rows with multi-row ``INSERT ... VALUES (...), (...)`` statements.

    The Core ``insert()`` path runs every value through SQLAlchemy's type processors, which
    was most of the cost of a 100,000-row import. Here the caller passes values already in
    the driver's form: datetimes through :func:`db_datetime`, dicts through :func:`db_json`.
    With ``returning``, the named columns of the new rows come back (in no promised order).
    """
    if not rows:
        return []
    mark = "?" if conn.dialect.paramstyle == "qmark" else "%s"
    one = "(" + ", ".join(mark for _ in columns) + ")"
    tail = f" RETURNING {', '.join(returning)}" if returning else ""
    per_statement = max(1, MAX_PARAMETERS // len(columns))
    out: list[tuple[Any, ...]] = []
    for start in range(0, len(rows), per_statement):
        batch = rows[start : start + per_statement]
        sql = (
            f"INSERT INTO {table.name} ({', '.join(columns)}) "
            f"VALUES {', '.join(one for _ in batch)}{tail}"
        )
        params = tuple(value for row in batch for value in row)
        result = conn.exec_driver_sql(sql, params)
        if returning:
            out.extend(tuple(r) for r in result)
    return out


class Prepared:
    """A Core statement compiled once per dialect and run as the driver's own SQL.

    Building a statement and running it through SQLAlchemy's compiled cache and type
    processors made the take, the send path's one statement per message, cost 666 µs with its
    transaction here; as the driver's own SQL with the same bound values, 158 µs. The statement is
    built by ``build`` (bound values as ``bindparam``s, literals as usual) and compiled on
    first use with each dialect; a call passes the bound values by name, datetimes aware (as
    :func:`db_datetime` stores them). Only for statements without expanding ``IN`` lists.
    """

    def __init__(self, build: Callable[[], Any]) -> None:
        self._build = build
        self._compiled: dict[str, tuple[str, tuple[str, ...] | None, dict[str, Any]]] = {}

    def __call__(self, conn: Connection, **params: Any) -> CursorResult[Any]:
        sql, values = self._driver(conn, [params])
        return conn.exec_driver_sql(sql, values[0])

    def many(self, conn: Connection, rows: Sequence[dict[str, Any]]) -> None:
        """The statement once per row of bound values, as one ``executemany``."""
        if rows:
            sql, values = self._driver(conn, rows)
            conn.exec_driver_sql(sql, values)  # type: ignore[arg-type]

    def _driver(self, conn: Connection, rows: Sequence[dict[str, Any]]) -> tuple[str, list[Any]]:
        name = conn.dialect.name
        compiled = self._compiled.get(name)
        if compiled is None:
            done = self._build().compile(dialect=conn.dialect)
            order = tuple(done.positiontup) if done.positiontup is not None else None
            compiled = self._compiled[name] = (done.string, order, dict(done.params))
        sql, order, literals = compiled
        out: list[Any] = []
        for params in rows:
            values = {**literals, **params}
            for key, value in values.items():
                if isinstance(value, datetime):
                    values[key] = db_datetime(conn, value)
            out.append(values if order is None else tuple(values[key] for key in order))
        return sql, out


def expire_loaded(session: Session, model: type, ids: Collection[Any], keys: Iterable[str]) -> None:
    """Rows a Core statement changed under the session: its loaded ``model`` objects among
    ``ids`` disagree with the database in ``keys``, and read them again on use."""
    names = list(keys)
    for obj in list(session.identity_map.values()):
        if isinstance(obj, model) and getattr(obj, "id", None) in ids:
            session.expire(obj, names)


def due_enrollment_ids(conn: Connection, now: datetime, limit: int = 500) -> list[int]:
    """The active enrollments whose next step is due at ``now``, soonest first.

    Served by the ``(state, due_at)`` index: the cost does not grow with the number of
    enrollments that are not due.
    """
    from outreach.models import Enrollment  # the store knows the tables, not the reverse

    table = Enrollment.__table__  # type: ignore[attr-defined]
    query = (
        select(table.c.id)
        .where(table.c.state == "active", table.c.due_at <= now)
        .order_by(table.c.due_at, table.c.id)
        .limit(limit)
    )
    return list(conn.execute(query).scalars())


def db_datetime(conn: Connection, value: datetime) -> Any:
    """An aware datetime as the column type would store it: UTC, and on SQLite the text form
    SQLAlchemy writes, so that comparisons with ORM-written rows stay right."""
    value = value.astimezone(UTC)
    if conn.dialect.name == "sqlite":
        return value.strftime("%Y-%m-%d %H:%M:%S.%f")
    return value


def db_json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def _alembic_config(engine_url: str) -> AlembicConfig:
    from alembic.config import Config as AlembicConfig

    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", engine_url.replace("%", "%%"))
    return cfg


_REVISION = re.compile(r"^(down_revision|revision)\s*=\s*(?:\"([^\"]*)\"|None)", re.MULTILINE)


def migrations_head() -> str | None:
    """The newest revision of ``migrations/versions``, read from the files' ``revision`` and
    ``down_revision`` lines (every command checks the schema, and Alembic's own script
    directory costs most of a short command's start); None when the history is not one line,
    and Alembic decides (``_alembic_head``)."""
    revisions: set[str] = set()
    parents: set[str] = set()
    for path in (MIGRATIONS / "versions").glob("*.py"):
        found = dict((key, value) for key, value in _REVISION.findall(path.read_text("utf-8")))
        if "revision" not in found:
            return None
        revisions.add(found["revision"])
        if found.get("down_revision"):
            parents.add(found["down_revision"])
    heads = revisions - parents
    return heads.pop() if len(heads) == 1 else None


def _alembic_head(url: str) -> str | None:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(_alembic_config(url)).get_current_head()


class Store:
    """The database behind one configuration."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session whose work commits on success and rolls back on any error."""
        with Session(self.engine, expire_on_commit=False) as session:
            try:
                yield session
                session.commit()
            except BaseException:
                session.rollback()
                raise

    def head_revision(self) -> str | None:
        return migrations_head() or _alembic_head(self.url)

    def current_revision(self) -> str | None:
        """The revision in Alembic's ``alembic_version`` table; None for an empty database."""
        with self.engine.connect() as connection:
            if not inspect(connection).has_table("alembic_version"):
                return None
            versions = connection.execute(text("SELECT version_num FROM alembic_version")).all()
        return str(versions[0][0]) if len(versions) == 1 else None

    def upgrade(self) -> None:
        """Create or migrate the schema to the newest revision."""
        from alembic import command

        cfg = _alembic_config(self.url)
        with self.engine.begin() as connection:
            if connection.dialect.name == "postgresql":
                # Several daemons started at once on an empty database: one migrates, the
                # others wait here and then find the schema at head.
                connection.execute(text("SELECT pg_advisory_xact_lock(7100815)"))
            cfg.attributes["connection"] = connection
            command.upgrade(cfg, "head")

    def ensure_schema(self) -> None:
        """A new, empty database gets the schema; one that is behind is refused."""
        current = self.current_revision()
        if current == self.head_revision():
            return
        if current is None and not inspect(self.engine).get_table_names():
            self.upgrade()
            return
        raise ConfigError(
            f"the database schema is at {current or 'an unknown version'}, "
            f"this outreach needs {self.head_revision()}",
            field="[database] url",
            hint="run `outreach db upgrade`",
        )

    def dispose(self) -> None:
        self.engine.dispose()


def open_store(url: str, *, migrate: bool = True, field: str = "[database] url") -> Store:
    """The store at ``url``, its schema checked; any database failure is one ConfigError that
    names ``field``."""
    with database_errors(url, field):
        store = Store(url)
        if migrate:
            store.ensure_schema()
    return store


@contextmanager
def database_errors(url: str, field: str = "[database] url") -> Iterator[None]:
    """Turn "cannot open", "not a database", a missing driver and the like into one line that
    names ``field``, where the URL came from."""
    try:
        yield
    except (SQLAlchemyError, ModuleNotFoundError, OSError) as exc:
        reason = str(getattr(exc, "orig", None) or exc).splitlines()[0]
        raise ConfigError(f"cannot use the database {_safe(url)}: {reason}", field=field) from None


def _safe(url: str) -> str:
    """The URL without its password, for messages and logs."""
    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", url)
