"""`send --once` as cron sees it: exit 1 naming the mailbox and the reason when its SMTP server
cannot be reached, and a line saying when it waits out a gap, and until when (local time)."""

from __future__ import annotations

import json
import re
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from freezegun import freeze_time

from tests.conftest import Cli, edit_config
from tests.smtp_servers import RecordingSMTP

pytestmark = pytest.mark.timeout(60)

HELSINKI = ZoneInfo("Europe/Helsinki")
MONDAY = datetime(2027, 1, 4, 10, 0, tzinfo=HELSINKI)
SANNA = "sanna.lehto@northwind.example"


def enroll(run: Cli, tmp_path: Path, *emails: str) -> None:
    path = tmp_path / "list.csv"
    path.write_text("email,first_name\n" + "".join(f"{e},X\n" for e in emails))
    assert run.json("enroll", str(path), "--sequence", "cold")["enrolled"] == len(emails)


@freeze_time(MONDAY, real_asyncio=True)
def test_unreachable_smtp_server_exits_1_naming_the_mailbox_and_the_reason(
    workspace_dir: Path, run: Cli, tmp_path: Path, dead_port: int
) -> None:
    edit_config(workspace_dir / "outreach.toml", smtp_port=dead_port, max_gap_seconds=0)
    edit_config(workspace_dir / "outreach.toml", min_gap_seconds=0)
    enroll(run, tmp_path, "ann@acme.example", "bob@beta.example")
    result = run("send", "--once")
    assert result.exit_code == 1
    lines = [line for line in result.stderr.splitlines() if line.startswith("mailbox ")]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"mailbox {SANNA}: SMTP server unreachable: cannot connect: ")
    # retry_seconds (300) after the failed try, in the mailbox's local time
    assert lines[0].endswith("2 message(s) wait, next try at 2027-01-04 10:05 EET")
    assert result.stdout.splitlines()[-1].startswith("0 sent")

    doc = run("send", "--once", "--json")
    assert doc.exit_code == 1
    parsed = json.loads(doc.stdout)  # still one JSON document on stdout
    assert list(parsed["unreachable"]) == [SANNA]
    assert parsed["unreachable"][SANNA].startswith("cannot connect: ")


@freeze_time(MONDAY, real_asyncio=True)
def test_a_mailbox_with_nothing_due_is_not_failing(
    workspace_dir: Path, run: Cli, tmp_path: Path, dead_port: int
) -> None:
    edit_config(workspace_dir / "outreach.toml", smtp_port=dead_port)
    result = run("send", "--once")
    assert result.exit_code == 0, result.output


def test_send_once_says_it_waits_out_a_gap_and_until_when(
    workspace_dir: Path, run: Cli, tmp_path: Path
) -> None:
    config = workspace_dir / "outreach.toml"
    with RecordingSMTP() as smtp, freeze_time(MONDAY, tick=True, real_asyncio=True):
        edit_config(config, smtp_port=smtp.port, min_gap_seconds=2, max_gap_seconds=2)
        enroll(run, tmp_path, "ann@acme.example", "bob@beta.example")
        result = run("send", "--once")
        assert result.exit_code == 0, result.output
        assert len(smtp.received) == 2
    # One gap, between the two sends; after the last one nothing is due, so nothing to wait for.
    waits = [line for line in result.stdout.splitlines() if "waiting out the gap" in line]
    assert len(waits) == 1, result.stdout
    assert result.stdout.splitlines().index(waits[0]) == 1
    assert re.fullmatch(
        rf"{SANNA}: waiting out the gap between two sends, until 2027-01-04 10:00:0\d EET",
        waits[0],
    )


def test_send_once_no_wait_says_when_the_next_send_may_go(
    workspace_dir: Path, run: Cli, tmp_path: Path
) -> None:
    config = workspace_dir / "outreach.toml"
    with RecordingSMTP() as smtp, freeze_time(MONDAY, real_asyncio=True):
        edit_config(config, smtp_port=smtp.port, min_gap_seconds=120, max_gap_seconds=120)
        enroll(run, tmp_path, "ann@acme.example", "bob@beta.example")
        result = run("send", "--once", "--no-wait")
        assert result.exit_code == 0, result.output
        assert len(smtp.received) == 1
    assert f"{SANNA}: next send at 2027-01-04 10:02:00 EET (the gap); not waiting for it" in (
        result.stdout
    )
