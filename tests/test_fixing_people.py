"""Fixing people through the CLI: `unsuppress EMAIL_OR_@DOMAIN` and `prospect EMAIL --set-email
NEW` (the history follows the person; the next email goes to the new address over real SMTP)."""

from __future__ import annotations

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
NUDGES_DUE = datetime(2027, 1, 14, 10, 0, tzinfo=HELSINKI)


def write(path: Path, *emails: str) -> str:
    path.write_text("email,first_name,company\n" + "".join(f"{e},X,Co\n" for e in emails))
    return str(path)


@freeze_time(MONDAY)
def test_unsuppress_lets_a_later_import_enroll_the_address(run: Cli, tmp_path: Path) -> None:
    assert run("suppress", "dan@delta.example").exit_code == 0
    first = run.json("enroll", write(tmp_path / "a.csv", "dan@delta.example"), "--sequence", "cold")
    assert first["enrolled"] == 0 and first["skipped"][0]["reason"] == "suppressed"
    result = run("unsuppress", "Dan@Delta.example")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(
        "dan@delta.example: off the suppression list (was manual since 2027-01-04 10:00 EET)"
    )
    assert run.json("suppressions") == []
    again = run.json("enroll", write(tmp_path / "b.csv", "dan@delta.example"), "--sequence", "cold")
    assert again["enrolled"] == 1
    # A prospect already enrolled: the entry goes, what it stopped stays stopped, on record.
    assert run("suppress", "dan@delta.example").exit_code == 0
    assert run("unsuppress", "dan@delta.example").exit_code == 0
    view = run.json("prospect", "dan@delta.example")
    assert [e["state"] for e in view["enrollments"]] == ["stopped"]
    assert [e["kind"] for e in view["events"]][-2:] == ["suppress", "unsuppress"]


@freeze_time(MONDAY)
def test_unsuppress_a_domain_and_the_refusals(run: Cli) -> None:
    assert run("suppress", "@competitor.example").exit_code == 0
    # An address under a suppressed domain: the line says which entry to take off.
    under = run("unsuppress", "eve@competitor.example")
    assert under.exit_code == 1
    assert under.stderr.strip() == (
        "ADDRESS_OR_@DOMAIN: eve@competitor.example is not on the suppression list "
        "(its domain is: `outreach unsuppress @competitor.example`)"
    )
    assert run("unsuppress", "@competitor.example").exit_code == 0
    assert run.json("suppressions") == []
    # Someone who asked to be removed is not put back by a slip.
    assert run("suppress", "fay@fox.example", "--reason", "unsubscribed").exit_code == 0
    refused = run("unsuppress", "fay@fox.example")
    assert refused.exit_code == 1 and len(refused.stderr.strip().splitlines()) == 1
    assert "asked to be removed" in refused.stderr and "--force" in refused.stderr
    assert [s["value"] for s in run.json("suppressions")] == ["fay@fox.example"]
    assert run("unsuppress", "fay@fox.example", "--force").exit_code == 0
    bad = run("unsuppress", "not an address")
    assert bad.exit_code == 1 and bad.stderr.startswith("ADDRESS_OR_@DOMAIN: 'not an address'")


def test_set_email_moves_the_history_and_the_next_email(
    workspace_dir: Path, run: Cli, tmp_path: Path
) -> None:
    config = workspace_dir / "outreach.toml"
    with RecordingSMTP() as smtp, freeze_time(MONDAY, real_asyncio=True) as clock:
        edit_config(config, smtp_port=smtp.port, min_gap_seconds=0, max_gap_seconds=0)
        csv = write(tmp_path / "list.csv", "ann@acme.example", "bob@acme.example")
        assert run.json("enroll", csv, "--sequence", "cold")["enrolled"] == 2
        assert run("send", "--once").exit_code == 0
        before = run.json("prospect", "ann@acme.example")

        result = run("prospect", "ann@acme.example", "--set-email", "Ann.Smith@NewCo.example")
        assert result.exit_code == 0, result.output
        assert result.stdout.strip() == (
            "ann@acme.example is now ann.smith@newco.example: history kept, "
            "1 live enrollment(s) write to the new address"
        )
        after = run.json("prospect", "ann.smith@newco.example")
        assert after["prospect"]["email"] == "ann.smith@newco.example"
        assert after["enrollments"] == before["enrollments"]
        assert after["messages"] == before["messages"]  # the intro sent to the old address
        assert after["events"][-1]["kind"] == "email_changed"
        assert after["events"][-1]["data"] == {
            "old": "ann@acme.example",
            "new": "ann.smith@newco.example",
        }
        gone = run("prospect", "ann@acme.example")
        assert gone.exit_code == 1 and "no prospect with address ann@acme.example" in gone.stderr

        clock.move_to(NUDGES_DUE)
        assert run("send", "--once").exit_code == 0
        nudges = [r for r in smtp.received[2:]]
        assert sorted(r.rcpt_tos[0] for r in nudges) == [
            "ann.smith@newco.example",
            "bob@acme.example",
        ]


@freeze_time(MONDAY)
def test_set_email_refuses_another_prospect_an_invalid_or_suppressed_address(
    run: Cli, tmp_path: Path
) -> None:
    csv = write(tmp_path / "list.csv", "ann@acme.example", "bob@acme.example")
    assert run.json("enroll", csv, "--sequence", "cold")["enrolled"] == 2
    assert run("suppress", "@blocked.example").exit_code == 0
    cases = {
        "bob@acme.example": "--set-email: bob@acme.example is another prospect",
        "ann@": "--set-email: 'ann@' is not a valid address",
        "ann@blocked.example": "--set-email: ann@blocked.example is suppressed (@blocked.example)",
        "ANN@acme.example": "--set-email: ann@acme.example already has that address",
    }
    for new, line in cases.items():
        result = run("prospect", "ann@acme.example", "--set-email", new)
        assert result.exit_code == 1, new
        assert result.stderr.startswith(line), result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
    assert run.json("prospect", "ann@acme.example")["prospect"]["email"] == "ann@acme.example"
