"""A real PostgreSQL for the test suite: a throwaway cluster per session, a database per test.

``PostgresCluster`` follows ``/work/shared/testing/README.md``: ``initdb`` into a temp dir
(as the ``postgres`` user when the tests run as root, since PostgreSQL refuses to run as
root), ``pg_ctl start`` on a free port of 127.0.0.1 with ``fsync=off``, and ``pg_ctl stop``
at the end. The newest installed version under ``/usr/lib/postgresql/*/bin`` is used.

The fixtures reach the tests through ``pytest_plugins = ["postgres"]``; this module is not a
conftest itself. ``postgres_cluster`` is session-scoped; ``postgres_url`` gives each test a
fresh, empty database (``postgresql+psycopg://postgres@127.0.0.1:PORT/NAME``), dropped
afterwards. Without PostgreSQL installed the tests that need it fail with the install line:
CI must run them, so they never skip.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

import pytest

INSTALL_HINT = (
    "PostgreSQL is not installed: apt-get install postgresql "
    "(scripts/test.sh does it; /usr/lib/postgresql/*/bin/initdb is looked for)"
)
SUPERUSER = "postgres"


def postgres_bin_dir() -> Path | None:
    """The ``bin`` directory of the newest PostgreSQL installed Debian's way, if any."""
    found = [
        path.parent
        for path in Path("/usr/lib/postgresql").glob("*/bin/initdb")
        if path.parent.parent.name.isdigit()
    ]
    if not found:
        return None
    return max(found, key=lambda path: int(path.parent.name))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PostgresCluster:
    """A private cluster on 127.0.0.1: ``with PostgresCluster() as pg: pg.new_database()``."""

    def __init__(self) -> None:
        bin_dir = postgres_bin_dir()
        if bin_dir is None:
            raise FileNotFoundError(INSTALL_HINT)
        self.bin_dir = bin_dir
        self.tmp = Path(tempfile.mkdtemp(prefix="outreach-pg-"))
        self.data = self.tmp / "data"
        self.log = self.tmp / "postgres.log"
        self.port = _free_port()
        self.host = "127.0.0.1"
        self._running = False

    def _as_owner(self, *command: str) -> list[str]:
        """PostgreSQL will not run as root: run its tools as ``postgres`` then."""
        if os.geteuid() == 0:
            return ["runuser", "-u", SUPERUSER, "--", *command]
        return list(command)

    def _tool(self, name: str, *args: str) -> None:
        command = self._as_owner(str(self.bin_dir / name), *args)
        done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{name} failed: {done.stderr.strip()} {self._log_tail()}")

    def start(self) -> None:
        """initdb, then start and wait until it accepts connections (under a second)."""
        if os.geteuid() == 0:
            shutil.chown(self.tmp, SUPERUSER)
        self._tool("initdb", "-D", str(self.data), "-A", "trust", "-U", SUPERUSER, "-E", "UTF8")
        options = (
            f"-p {self.port} -k {self.tmp} -c listen_addresses={self.host} -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off -c max_connections=300"
        )
        self._tool(
            "pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-o", options, "start"
        )
        self._running = True

    def stop(self) -> None:
        """Stop the cluster (fast shutdown) and remove its directory."""
        if self._running:
            self._tool("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
            self._running = False
        shutil.rmtree(self.tmp, ignore_errors=True)

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://{SUPERUSER}@{self.host}:{self.port}/{database}"

    def _admin(self, sql: str) -> None:
        import psycopg

        with psycopg.connect(
            host=self.host, port=self.port, user=SUPERUSER, dbname="postgres", autocommit=True
        ) as conn:
            conn.execute(sql)

    def new_database(self) -> str:
        """A fresh, empty database; its SQLAlchemy URL."""
        name = "t_" + uuid.uuid4().hex[:12]
        self._admin(f"CREATE DATABASE {name}")
        return self.url(name)

    def drop_database(self, url: str) -> None:
        """Drop it, closing whatever connection a test left open."""
        name = url.rsplit("/", 1)[1]
        self._admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

    def _log_tail(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-2000:]
        except OSError:
            return ""

    def __enter__(self) -> PostgresCluster:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[PostgresCluster]:
    """One cluster for the whole run; a missing PostgreSQL fails the test (never skips)."""
    if postgres_bin_dir() is None:
        pytest.fail(INSTALL_HINT, pytrace=False)
    with PostgresCluster() as cluster:
        yield cluster


@pytest.fixture
def postgres_url(postgres_cluster: PostgresCluster) -> Iterator[str]:
    """A fresh, empty database of the session's cluster, for this test alone."""
    url = postgres_cluster.new_database()
    yield url
    postgres_cluster.drop_database(url)
