"""The command line as a rep uses it: the README's quick start, JSON output, exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from freezegun import freeze_time

from tests.conftest import Cli


@freeze_time("2027-01-04 08:00:00")  # Monday 10:00 in Helsinki
def test_quick_start_steps(tmp_path: Path) -> None:
    """What the README's first command does, step by step, in a fresh folder."""
    from click.testing import CliRunner

    from outreach.cli import cli

    runner = CliRunner()
    result = runner.invoke(cli, ["init", str(tmp_path / "demo")])
    assert result.exit_code == 0, result.output
    run = Cli(tmp_path / "demo" / "outreach.toml")
    assert run("validate").exit_code == 0
    enrolled = run.json("enroll", str(tmp_path / "demo" / "prospects.csv"), "--sequence", "cold")
    assert enrolled["enrolled"] == 10 and enrolled["applied"]
    status = run.json("status")
    cold = next(s for s in status["sequences"] if s["name"] == "cold")
    assert cold["enrollments"]["active"] == 10
    assert cold["steps"][0]["due"] == 10 and cold["steps"][1]["active"] == 0
    schedule = run.json("schedule")
    assert schedule["active"] == 10 and len(schedule["messages"]) == 10
    assert {item["step"] for item in schedule["messages"]} == {"intro"}
    assert run("schedule").stdout.startswith("Mon 2027-01-04: 10 email(s) and 0 task(s)")


def test_init_refuses_to_overwrite(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from outreach.cli import cli

    runner = CliRunner()
    assert runner.invoke(cli, ["init", str(tmp_path)]).exit_code == 0
    again = runner.invoke(cli, ["init", str(tmp_path)])
    assert again.exit_code == 1
    assert "would overwrite an existing file" in again.stderr and "--force" in again.stderr


def test_validate_lists_every_problem_with_file_and_line(run: Cli, workspace_dir: Path) -> None:
    nudge = workspace_dir / "templates" / "cold" / "2-nudge.yaml"
    nudge.write_text(
        nudge.read_text().replace("{{ sender.signature }}", "{{ sender.signature }", 1)
    )
    cold = workspace_dir / "sequences" / "cold.yaml"
    cold.write_text(cold.read_text().replace("3-5 business days", "3-5 fortnights"))
    result = run("validate")
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert any(line.startswith("sequences/cold.yaml:") and "wait" in line for line in lines)
    # the broken nudge template belongs to the broken sequence: reported in the same run
    assert any(line.startswith("templates/cold/2-nudge.yaml:") for line in lines)
    assert lines[-1] == "2 problem(s) found"


def test_enroll_rejection_is_one_line_per_row_and_exit_1(run: Cli, tmp_path: Path) -> None:
    path = tmp_path / "list.csv"
    path.write_text("Sähköposti;Etunimi\naino@rakennus.example;Aino\nrikki@;Rikki\n")
    result = run("enroll", str(path), "--sequence", "cold")
    assert result.exit_code == 1
    assert f"{path}:3: email 'rikki@'" in result.stderr
    assert "nothing imported: 1 row(s) rejected" in result.stderr
    assert run.json("status")["sequences"][0]["enrollments"]["active"] == 0


def test_json_output_is_one_document(run: Cli, workspace_dir: Path) -> None:
    result = run("enroll", str(workspace_dir / "prospects.csv"), "--sequence", "cold", "--json")
    assert result.exit_code == 0
    assert json.loads(result.stdout)["enrolled"] == 10
    view = run.json("prospect", "AINO.KORHONEN@rakennus.example")
    assert view["prospect"]["first_name"] == "Aino"
    assert view["enrollments"][0]["next_step"] == "intro"


def test_stop_and_suppress(run: Cli, workspace_dir: Path) -> None:
    run("enroll", str(workspace_dir / "prospects.csv"), "--sequence", "cold")
    result = run("stop", "aino.korhonen@rakennus.example", "--reason", "meeting")
    assert (
        result.exit_code == 0 and "stopped aino.korhonen@rakennus.example in cold" in result.stdout
    )
    view = run.json("prospect", "aino.korhonen@rakennus.example")
    assert view["enrollments"][0]["state"] == "stopped"
    assert view["events"][0]["kind"] == "goal" and view["events"][0]["reason"] == "meeting"
    result = run("suppress", "@ohjelmisto.example", "--reason", "customer")
    assert "1 active enrollment(s) stopped" in result.stdout
    assert run.json("suppressions")[0]["value"] == "@ohjelmisto.example"
    cold = run.json("status")["sequences"][0]
    assert cold["enrollments"] == {**cold["enrollments"], "active": 8, "stopped": 2}


def test_unknown_prospect_and_bad_reason(run: Cli) -> None:
    result = run("prospect", "nobody@nowhere.example")
    assert result.exit_code == 1
    assert result.stderr.strip() == "EMAIL: no prospect with address nobody@nowhere.example"
    assert run("stop", "x@y.example", "--reason", "bored").exit_code == 2


def test_broken_config_is_one_line(tmp_path: Path) -> None:
    config = tmp_path / "outreach.toml"
    config.write_text('[sending]\ntimezone = "Europe/Helsinky"\n')
    result = Cli(config)("status")
    assert result.exit_code == 1
    assert result.stderr.strip().startswith(f"{config}:2: sending.timezone: unknown time zone")


def test_python_dash_m_and_config_from_environment(workspace_dir: Path) -> None:
    env = {**os.environ, "OUTREACH_CONFIG": str(workspace_dir / "outreach.toml")}
    done = subprocess.run(
        [sys.executable, "-m", "outreach", "validate", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=workspace_dir.parent,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["ok"] is True


def test_preview_renders_every_step_in_the_prospects_language(
    run: Cli, workspace_dir: Path
) -> None:
    run("enroll", str(workspace_dir / "prospects.csv"), "--sequence", "cold")
    doc = run.json("preview", "aino.korhonen@rakennus.example")
    assert doc["language"] == "fi" and doc["persona"] == "decision_maker"
    intro, nudge, linkedin = doc["steps"]
    assert len(intro["subjects"]) >= 3 and len(intro["bodies"]) >= 2
    assert all(body["text"].startswith("Hei Aino") for body in intro["bodies"])
    assert all("Sanna Lehto" in body["text"] for body in intro["bodies"])
    assert nudge["subjects"] == [] and nudge["subject_from"] == "intro"
    assert linkedin["channel"] == "linkedin" and linkedin["bodies"]
    english = run.json("preview", "j.smith@logistics.example")
    assert english["language"] == "en"
    assert all("{{" not in b["text"] for s in english["steps"] for b in s["bodies"])


def test_a_missing_template_is_reported_at_the_sequence_line(run: Cli, workspace_dir: Path) -> None:
    cold = workspace_dir / "sequences" / "cold.yaml"
    text = cold.read_text()
    cold.write_text(text.replace("template: cold/2-nudge.yaml", "template: cold/2-nudgee.yaml"))
    line = next(n for n, row in enumerate(cold.read_text().splitlines(), 1) if "2-nudgee" in row)
    result = run("validate")
    assert result.exit_code == 1
    assert f"sequences/cold.yaml:{line}: step 'nudge': template cold/2-nudgee.yaml" in result.stderr
