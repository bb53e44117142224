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
