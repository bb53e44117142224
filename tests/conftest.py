"""Shared fixtures: a real workspace on disk, a real database, the real CLI.

The database is the starter's SQLite file, unless a test module is marked
``pytestmark = pytest.mark.both_databases``: its tests then run twice, on SQLite and on a
fresh database of a throwaway PostgreSQL cluster (``tests/postgres.py``).
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from outreach.cli import cli, load_all
from outreach.starter import init_workspace
from outreach.workspace import Workspace

# The CLI loads a command's module when the command runs; the tests load them all now, before
# any test fakes the clock (SQLModel cannot build its schemas with freezegun's datetime).
load_all()

pytest_plugins = ["postgres"]
DATABASES = ("sqlite", "postgresql")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "both_databases: run the module's tests on SQLite and on PostgreSQL"
    )
    config.addinivalue_line("markers", "sqlite_only: a test about the SQLite file itself")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    marked = metafunc.definition.get_closest_marker
    if (
        "database" in metafunc.fixturenames
        and marked("both_databases")
        and not marked("sqlite_only")
    ):
        metafunc.parametrize("database", DATABASES, indirect=True)


@pytest.fixture
def database(request: pytest.FixtureRequest) -> str:
    """``sqlite`` or ``postgresql``: which store the test runs on. SQLite unless the module is
    marked, or ``$OUTREACH_TEST_DATABASE=postgresql`` runs every test on PostgreSQL."""
    if request.node.get_closest_marker("sqlite_only"):
        return "sqlite"
    return str(getattr(request, "param", os.environ.get("OUTREACH_TEST_DATABASE", "sqlite")))


@pytest.fixture
def database_url(database: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A URL of an empty database of that kind, for this test alone: the one the workspace
    below uses (on SQLite, the file the starter config names)."""
    if database == "postgresql":
        return str(request.getfixturevalue("postgres_url"))
    (tmp_path / "ws").mkdir(exist_ok=True)
    return f"sqlite:///{tmp_path / 'ws' / 'outreach.db'}"


@dataclass
class Cli:
    """Runs ``outreach --config <workspace>/outreach.toml ...`` in-process."""

    config: Path

    def __call__(self, *args: str, input: str | None = None) -> Result:
        runner = CliRunner()
        return runner.invoke(
            cli, ["--config", str(self.config), *args], input=input, catch_exceptions=False
        )

    def json(self, *args: str) -> Any:
        result = self(*args, "--json")
        assert result.exit_code == 0, result.output + result.stderr
        return json.loads(result.stdout)


@pytest.fixture
def workspace_dir(tmp_path: Path, database: str, request: pytest.FixtureRequest) -> Path:
    """A fresh starter workspace, exactly as `outreach init` writes it (on PostgreSQL, with
    its ``[database] url`` pointed at a fresh database)."""
    directory = tmp_path / "ws"
    init_workspace(directory)
    if database == "postgresql":
        edit_config(directory / "outreach.toml", url=request.getfixturevalue("database_url"))
    return directory


@pytest.fixture
def run(workspace_dir: Path) -> Cli:
    return Cli(workspace_dir / "outreach.toml")


@pytest.fixture
def workspace(workspace_dir: Path) -> Workspace:
    ws = Workspace.load(workspace_dir / "outreach.toml")
    yield ws
    ws.close()


@pytest.fixture
def write_csv(tmp_path: Path) -> Callable[..., Path]:
    """Write text to a CSV file in the given encoding (UTF-8 by default)."""

    def write(text: str, name: str = "prospects.csv", encoding: str = "utf-8") -> Path:
        path = tmp_path / name
        path.write_bytes(text.encode(encoding))
        return path

    return write


def edit_config(path: Path, **settings: object) -> None:
    """Set ``key = value`` where the TOML file assigns ``key`` (first match)."""
    import re

    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    for key, value in settings.items():
        rendered = json.dumps(value) if isinstance(value, str | bool) else str(value)
        rendered = rendered.lower() if isinstance(value, bool) else rendered
        # The line that sets it, else a commented-out line to switch on.
        at = next(
            (i for i, line in enumerate(lines) if re.match(rf"\s*{key}\s*=", line)),
            next((i for i, line in enumerate(lines) if re.match(rf"\s*#\s*{key}\s*=", line)), None),
        )
        assert at is not None, f"{key} is not in {path}"
        lines[at] = f"{key} = {rendered}\n"
    path.write_text("".join(lines), encoding="utf-8")


def point_at_servers(
    config: Path, smtp_port: int, imap_host: str, imap_port: int, imap_user: str, **settings: object
) -> None:
    """A starter config sending to a test SMTP server and reading a test IMAP user, with no
    gaps; the password comes from $OUTREACH_TEST_IMAP (the test sets it)."""
    edit_config(
        config,
        smtp_port=smtp_port,
        min_gap_seconds=0,
        max_gap_seconds=0,
        password_env="OUTREACH_TEST_IMAP",
        imap_host=imap_host,
        imap_port=imap_port,
        imap_security="none",
        imap_username=imap_user,
        **settings,
    )


@pytest.fixture
def dead_port() -> Iterator[int]:
    """A loopback port where nothing listens, for the whole test: bound and never listening, it
    refuses every connection, and no other test (the workers run in parallel) can take it
    meanwhile, as it could a port probed and closed."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        yield int(probe.getsockname()[1])
