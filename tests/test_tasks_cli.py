"""The rep's LinkedIn tasks through the CLI: `tasks` in local time, `tasks --csv` for a LinkedIn
tool, `tasks skip ID --reason`, and a skipped last step that never reads "every step done"."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
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
NUDGES_DUE = datetime(2027, 1, 14, 10, 0, tzinfo=HELSINKI)  # 3-5 business days (+ Epiphany)
TASKS_DUE = datetime(2027, 2, 10, 10, 0, tzinfo=HELSINKI)  # 10-14 days after the nudge
PROSPECTS = (
    "email,first_name,last_name,company,linkedin,language\n"
    "ann@acme.example,Ann,Smith,Acme,https://www.linkedin.com/in/ann,en\n"
    "bob@beta.example,Bob,Berg,=1+2 Oy,,en\n"
)


@pytest.fixture
def tasks_due(workspace_dir: Path, run: Cli) -> Iterator[Cli]:
    """Ann and Bob through the cold sequence's two emails (a real SMTP server), on the day
    its LinkedIn step (the last one) falls due for both."""
    config = workspace_dir / "outreach.toml"
    with RecordingSMTP() as smtp, freeze_time(MONDAY, real_asyncio=True) as clock:
        edit_config(config, smtp_port=smtp.port, min_gap_seconds=0, max_gap_seconds=0)
        (workspace_dir / "list.csv").write_text(PROSPECTS)
        assert (
            run.json("enroll", str(workspace_dir / "list.csv"), "--sequence", "cold")["enrolled"]
            == 2
        )
        for moment in (MONDAY, NUDGES_DUE, TASKS_DUE):
            clock.move_to(moment)
            assert run("send", "--once").exit_code == 0
        assert len(smtp.received) == 4  # two intros, two nudges; the LinkedIn step sends nothing
        yield run


def test_tasks_list_shows_due_time_locally_and_the_missing_linkedin_url(tasks_due: Cli) -> None:
    result = tasks_due("tasks")
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "linkedin for sanna.lehto@northwind.example: ann@acme.example Ann Smith (Acme)" in out
    assert "due 2027-02-10 10:00 EET, skipped 2027-02-17 10:00 EET if not done" in out
    assert "    https://www.linkedin.com/in/ann" in out
    assert "(no LinkedIn URL: `outreach tasks skip ID`?)" in out  # Bob has none
    assert out.splitlines()[-1].startswith("2 open task(s)")


def test_tasks_csv_for_a_linkedin_tool(tasks_due: Cli) -> None:
    result = tasks_due("tasks", "--csv")
    assert result.exit_code == 0, result.output
    rows = {r["prospect"]: r for r in csv.DictReader(io.StringIO(result.stdout))}
    assert sorted(rows) == ["ann@acme.example", "bob@beta.example"]
    ann, bob = rows["ann@acme.example"], rows["bob@beta.example"]
    assert list(ann) == [
        "id",
        "sender",
        "prospect",
        "first_name",
        "last_name",
        "company",
        "linkedin",
        "channel",
        "sequence",
        "step",
        "due",
        "text",
    ]
    assert ann["linkedin"] == "https://www.linkedin.com/in/ann" and ann["step"] == "linkedin"
    assert ann["sender"] == "sanna.lehto@northwind.example" and ann["channel"] == "linkedin"
    assert ann["due"] == "2027-02-10T10:00+02:00"  # ISO 8601, in the sender's zone
    assert "Ann" in ann["text"] and "{{" not in ann["text"]
    assert bob["linkedin"] == "" and bob["company"] == "'=1+2 Oy"  # never run as a formula
    by_prospect = {t["prospect"]: t["id"] for t in tasks_due.json("tasks")}
    assert int(ann["id"]) == by_prospect["ann@acme.example"]


def test_skipping_the_last_task_never_reads_every_step_done(tasks_due: Cli) -> None:
    bob = next(t for t in tasks_due.json("tasks") if t["prospect"] == "bob@beta.example")
    result = tasks_due("tasks", "skip", str(bob["id"]), "--reason", "no LinkedIn URL")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == f"task {bob['id']} skipped (cold/linkedin)"
    assert [t["prospect"] for t in tasks_due.json("tasks")] == ["ann@acme.example"]

    view = tasks_due.json("prospect", "bob@beta.example")
    cold = next(e for e in view["enrollments"] if e["sequence"] == "cold")
    assert cold["state"] == "finished"
    assert cold["end_reason"] == "last step linkedin skipped by the rep (no LinkedIn URL)"
    assert any(
        e["kind"] == "task_skipped" and e["reason"] == "no LinkedIn URL" for e in view["events"]
    )
    text = tasks_due("prospect", "bob@beta.example").stdout
    assert "every step done" not in text and "last step linkedin skipped" in text
    # Bob still moves on to the reminder sequence, as the playbook wants for the silent.
    assert {e["sequence"] for e in view["enrollments"]} == {"cold", "reminder"}

    # Ann's task done: her sequence did every step.
    ann = tasks_due.json("tasks")[0]
    assert tasks_due("tasks", "done", str(ann["id"])).exit_code == 0
    ann_cold = next(
        e
        for e in tasks_due.json("prospect", "ann@acme.example")["enrollments"]
        if e["sequence"] == "cold"
    )
    assert ann_cold["end_reason"] == "every step done"

    status = tasks_due.json("status")
    seq = next(s for s in status["sequences"] if s["name"] == "cold")
    assert seq["enrollments"]["finished"] == 2 and seq["last_step_skipped"] == 1
    assert seq["steps"][2]["skipped"] == 1 and seq["steps"][2]["finished"] == 2
    text = tasks_due("status").stdout
    assert "finished 2 (1 with the last step skipped)" in text
    assert "every step done" not in text


def test_tasks_skip_and_done_refuse_in_one_line(tasks_due: Cli) -> None:
    task = tasks_due.json("tasks")[0]
    assert tasks_due("tasks", "skip", str(task["id"])).exit_code == 0
    again = tasks_due("tasks", "done", str(task["id"]))
    assert again.exit_code == 1
    assert again.stderr.strip() == f"ID: task {task['id']} is already skipped"
    missing = tasks_due("tasks", "skip", "999")
    assert missing.exit_code == 1
    assert (
        missing.stderr.strip() == "ID: no task with id 999 (`outreach tasks` lists the open ones)"
    )
    unknown = tasks_due("tasks", "--sender", "nobody@northwind.example")
    assert unknown.exit_code == 1 and len(unknown.stderr.strip().splitlines()) == 1


def test_tasks_appear_when_due_without_a_send_pass(workspace_dir: Path, run: Cli) -> None:
    """The rep asks `outreach tasks` on the morning the LinkedIn step falls due: it is there,
    with its text, though nothing has run `send` since the nudges; not before it is due, and
    not while its sequence is paused by hand."""
    config = workspace_dir / "outreach.toml"
    with RecordingSMTP() as smtp, freeze_time(MONDAY, real_asyncio=True) as clock:
        edit_config(config, smtp_port=smtp.port, min_gap_seconds=0, max_gap_seconds=0)
        (workspace_dir / "list.csv").write_text(PROSPECTS)
        assert run.json("enroll", str(workspace_dir / "list.csv"), "--sequence", "cold")
        for moment in (MONDAY, NUDGES_DUE):
            clock.move_to(moment)
            assert run("send", "--once").exit_code == 0
        assert len(smtp.received) == 4
        assert run.json("tasks") == []  # the LinkedIn step is 10-14 days away
        clock.move_to(TASKS_DUE)
        assert run("sequence", "pause", "cold").exit_code == 0
        assert run.json("tasks") == []
        assert run("sequence", "resume", "cold").exit_code == 0
        tasks = run.json("tasks")
        assert sorted(t["prospect"] for t in tasks) == ["ann@acme.example", "bob@beta.example"]
        assert all(t["text"] and "Ann" in t["text"] for t in tasks if t["first_name"] == "Ann")
        assert run.json("tasks") == tasks  # asked again: the same tasks, none twice
        assert len(smtp.received) == 4  # making tasks sends nothing
        assert run("send", "--once").exit_code == 0
        assert run.json("tasks") == tasks
