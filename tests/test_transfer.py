"""`outreach db copy --to URL`: an existing SQLite workspace moved into PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import pytest
from freezegun import freeze_time

from outreach.daemon import send_once
from outreach.workspace import Workspace
from tests.conftest import Cli, edit_config
from tests.smtp_servers import RecordingSMTP

MONDAY_10 = "2027-01-04 08:00:00"


@pytest.mark.sqlite_only
def test_sqlite_database_is_copied_into_postgresql_and_goes_on_there(
    run: Cli, workspace_dir: Path, postgres_url: str
) -> None:
    config = workspace_dir / "outreach.toml"
    with RecordingSMTP() as smtp, freeze_time(MONDAY_10, real_asyncio=True):
        edit_config(config, smtp_port=smtp.port, min_gap_seconds=0, max_gap_seconds=0)
        assert (
            run("enroll", str(workspace_dir / "prospects.csv"), "--sequence", "cold").exit_code == 0
        )
        assert run("suppress", "@logistics.example").exit_code == 0
        ws = Workspace.load(config)
        assert send_once(ws).sent
        ws.close()
        before = run.json("status")
        prospect = run.json("prospect", "aino.korhonen@rakennus.example")

        copied = run("db", "copy", "--to", postgres_url)
        assert copied.exit_code == 0, copied.stderr
        assert "counts checked, equal in both" in copied.stdout
        lines = dict(line.split() for line in copied.stdout.splitlines() if line.startswith("  "))
        sent = sum(step["sent"] for seq in before["sequences"] for step in seq["steps"])
        assert int(lines["messages"]) == sent and int(lines["prospects"]) == 10

        # The same workspace on PostgreSQL reports the same, and goes on (ids continue).
        edit_config(config, url=postgres_url)
        assert run.json("status") == before
        assert run.json("prospect", "aino.korhonen@rakennus.example") == prospect
        more = workspace_dir / "more.csv"
        more.write_text("email,first_name,company\nnew@new.example,New,Newco\n", encoding="utf-8")
        assert run("enroll", str(more), "--sequence", "cold").exit_code == 0
        assert run("suppress", "late@other.example").exit_code == 0

        # A second copy into a database that now has rows is refused, in one line.
        edit_config(config, url=f"sqlite:///{workspace_dir / 'outreach.db'}")
        again = run("db", "copy", "--to", postgres_url)
    assert again.exit_code == 1
    assert again.stderr.count("\n") == 1 and "is not empty" in again.stderr


@pytest.mark.sqlite_only
def test_no_copy_while_a_daemon_holds_the_database(
    run: Cli, workspace_dir: Path, postgres_url: str
) -> None:
    """A daemon sending during the copy would leave its claims in both databases."""
    from outreach.daemon import DispatchLock

    ws = Workspace.load(workspace_dir / "outreach.toml")
    ws.store  # noqa: B018 - the SQLite file exists
    with DispatchLock(ws):
        refused = run("db", "copy", "--to", postgres_url)
    ws.close()
    assert refused.exit_code == 1
    assert "another outreach process" in refused.stderr and refused.stderr.count("\n") == 1
    assert run("db", "copy", "--to", postgres_url).exit_code == 0  # the lock is free again


@pytest.mark.sqlite_only
@pytest.mark.parametrize(
    "target, says",
    [
        ("not a url", "--to: not a database URL outreach can use"),
        ("mysql://x@y/z", "--to: not a database URL outreach can use"),
        ("postgresql+psycopg://nobody@127.0.0.1:1/none", "--to: cannot use the database"),
    ],
)
def test_a_bad_copy_target_is_named_as_the_to_option(run: Cli, target: str, says: str) -> None:
    result = run("db", "copy", "--to", target)
    assert result.exit_code == 1 and says in result.stderr
    assert "[database] url" not in result.stderr


def test_daemons_starting_together_on_an_empty_database_create_the_schema_once(
    postgres_url: str,
) -> None:
    import threading

    from outreach.store import open_store

    errors: list[BaseException] = []

    def start() -> None:
        try:
            open_store(postgres_url).dispose()
        except BaseException as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    store = open_store(postgres_url)
    assert store.current_revision() == store.head_revision()
    store.dispose()
