"""Hostile or careless outreach.toml files: one line naming the file, the line and the field,
exit 1, the secret never echoed, and the database as it was."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import Cli
from tests.dbsnapshot import snapshot


@pytest.fixture
def enrolled(run: Cli, workspace_dir: Path) -> str:
    """The starter workspace with its sample prospects enrolled; returns its good config."""
    result = run("enroll", str(workspace_dir / "prospects.csv"), "--sequence", "cold")
    assert result.exit_code == 0, result.output
    return run.config.read_text(encoding="utf-8")


def refused(run: Cli, good: str, bad: bytes) -> str:
    """With ``bad`` as the config, `status` and `send --once` exit 1 with one line and touch
    nothing; returns the line."""
    before = snapshot(run.config)
    run.config.write_bytes(bad)
    lines = set()
    for command in (["status"], ["send", "--once"]):
        result = run(*command)
        assert result.exit_code == 1, result.output
        assert len(result.stderr.splitlines()) == 1 and "Traceback" not in result.output
        lines.add(result.stderr.strip())
    run.config.write_text(good, encoding="utf-8")
    assert snapshot(run.config) == before
    assert len(lines) == 1
    return lines.pop()


def line_of(text: str, needle: str) -> int:
    return next(n for n, line in enumerate(text.splitlines(), 1) if needle in line)


def test_a_config_that_is_not_utf8_is_one_line(run: Cli, enrolled: str) -> None:
    bad = enrolled.replace('title = "Head of Growth"', 'title = "Myyntijohtaja, Mäkelä Oy"')
    line = refused(run, enrolled, bad.encode("cp1252"))
    assert line == (
        f"{run.config}:{line_of(bad, 'Myyntijohtaja')}: byte 0xe4 is not UTF-8 text "
        "(TOML files are UTF-8: save it as UTF-8)"
    )


def test_a_config_saved_by_notepad_with_a_bom_loads(run: Cli, enrolled: str) -> None:
    run.config.write_bytes(b"\xef\xbb\xbf" + enrolled.encode("utf-8"))
    assert run("status").exit_code == 0


SECRET = "Tr0ub4dor&3-hunter2"


@pytest.mark.parametrize(
    "after, setting, field",
    [
        ("[crm]", f'api_token = "{SECRET}"', "crm.api_token"),
        ("smtp_port = 8025", f'smtp_pass = "{SECRET}"', "mailboxes[0].smtp_pass"),
        ("smtp_port = 8025", f'imapPassword = "{SECRET}"', "mailboxes[0].imapPassword"),
        ("[variables]", f'hubspot_api_key = "{SECRET}"', "variables.hubspot_api_key"),
        ("[variables]", f'stripe_secret = "{SECRET}"', "variables.stripe_secret"),
        ("[crm]", f'webhook_url = "https://outreach:{SECRET}@crm.example/hook"', "crm.webhook_url"),
        ("[crm]", f'webhook_url = "https://{SECRET}@crm.example/hook"', "crm.webhook_url"),
        (
            "[variables]",
            f'calendar = "see ftp://anna:{SECRET}@files.example/"',
            "variables.calendar",
        ),
        ("smtp_port = 8025", f'password_env = "{SECRET}"', "mailboxes[0].password_env"),
    ],
    ids=[
        "api_token",
        "smtp_pass",
        "camelCase",
        "variable-api-key",
        "variable-secret",
        "url-password",
        "url-token-as-user",
        "url-inside-text",
        "secret-in-place-of-its-variable",
    ],
)
def test_a_secret_in_the_config_is_refused_without_echoing_it(
    run: Cli, enrolled: str, after: str, setting: str, field: str
) -> None:
    key = setting.split(" =")[0]
    # Replace a line that sets the key already (webhook_url is commented out), else add one.
    lines = [line for line in enrolled.splitlines() if not line.lstrip("# ").startswith(key)]
    at = next(n for n, line in enumerate(lines) if line.startswith(after)) + 1
    bad = "\n".join([*lines[:at], setting, *lines[at:]]) + "\n"
    line = refused(run, enrolled, bad.encode("utf-8"))
    assert line.startswith(f"{run.config}:{at + 1}: {field}: ")
    assert SECRET not in line
    assert "environment" in line


def test_names_of_variables_and_urls_are_not_secrets(run: Cli, enrolled: str) -> None:
    good = enrolled.replace(
        "[variables]",
        '[variables]\nbooking_token_url = "https://cal.example/book"\n'
        'passenger_count = "3"\nsecretary = "Anna"',
    )
    run.config.write_text(good, encoding="utf-8")
    result = run("status")
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize(
    "value", ["[" * 5000 + "]" * 5000, "{a = " * 3000 + "1" + "}" * 3000], ids=["array", "table"]
)
def test_deep_nesting_is_one_line_not_a_recursion_error(
    run: Cli, enrolled: str, value: str
) -> None:
    bad = enrolled.replace("[variables]", f'[variables]\nnote = """a [ in a string"""\nx = {value}')
    line = refused(run, enrolled, bad.encode("utf-8"))
    assert line == (
        f"{run.config}:{line_of(bad, 'x = ')}: arrays or inline tables nested more than 32 "
        "deep (a setting needs a few levels at most)"
    )
