"""Quiet, fast commands: `outreach --help` and `outreach status` import only what they need,
the lazy group's table matches the real commands, and the schema check needs no Alembic."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import click

from outreach.cli import COMMANDS, cli
from outreach.starter import init_workspace

# What the everyday read-only commands must not load: the daemon's, the mailbox poll's, the
# CRM POST's and the statistics' libraries.
HEAVY = (
    "aiohttp",
    "imapclient",
    "flufl.bounce",
    "dateparser",
    "mailparser_reply",
    "numpy",
    "scipy",
    "aiosmtplib",
    "aiosmtpd",
    "alembic",
)
CLI_MODULES = ("abtest", "mailboxes", "people", "sending", "setup")


def modules_after(args: list[str], cwd: Path) -> set[str]:
    """Run ``outreach ARGS`` in a fresh interpreter; the modules it had imported at the end."""
    code = (
        "import json, sys\n"
        "from outreach.cli import cli\n"
        f"try: cli({args!r}, prog_name='outreach')\n"
        "except SystemExit as exit: assert not exit.code, exit.code\n"
        "print(json.dumps(sorted(sys.modules)), file=sys.stderr)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return set(json.loads(done.stderr.strip().splitlines()[-1]))


def loaded(modules: set[str], package: str) -> bool:
    return package in modules or any(m.startswith(package + ".") for m in modules)


def test_the_lazy_table_names_every_command_its_module_and_its_help() -> None:
    for module in CLI_MODULES:
        importlib.import_module(f"outreach.cli.{module}")
    real = {
        name: (command.callback.__module__.rpartition(".")[2], command.get_short_help_str(1000))
        for name, command in cli.commands.items()
        if command.callback is not None
    }
    assert real == COMMANDS


def test_help_loads_no_command_module(tmp_path: Path) -> None:
    modules = modules_after(["--help"], tmp_path)
    assert not any(m.startswith("outreach.cli.") and m != "outreach.cli.base" for m in modules)
    for package in (*HEAVY, "apscheduler", "sqlalchemy", "sqlmodel", "pydantic", "jinja2"):
        assert not loaded(modules, package), package


def test_help_lists_every_command_as_click_would(tmp_path: Path) -> None:
    def help_text(preload: bool) -> str:
        code = (
            "import importlib\n"
            + "".join(
                f"importlib.import_module('outreach.cli.{m}')\n" for m in CLI_MODULES if preload
            )
            + "from outreach.cli import main\nimport sys\nsys.argv = ['outreach', '--help']\nmain()"
        )
        done = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "COLUMNS": "100"},
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    lazy_help = help_text(preload=False)
    assert lazy_help == help_text(preload=True)
    assert "unsuppress" in lazy_help and "replies" in lazy_help


def test_status_loads_none_of_the_heavy_libraries(tmp_path: Path) -> None:
    init_workspace(tmp_path / "ws")
    assert loaded(modules_after(["status"], tmp_path / "ws"), "alembic")  # creates the schema
    modules = modules_after(["status"], tmp_path / "ws")
    assert "outreach.cli.people" in modules and "outreach.cli.sending" not in modules
    for package in HEAVY:  # (apscheduler's cron parser checks `[ab] review`: it may load)
        assert not loaded(modules, package), package


def test_an_unlisted_command_name_still_resolves(tmp_path: Path) -> None:
    """A command a module registers but the table forgot: found by loading every module."""
    context = click.Context(cli)
    assert cli.get_command(context, "no-such-command") is None
    assert cli.get_command(context, "status") is not None


def test_schema_head_read_from_the_migration_files_is_alembics() -> None:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    from outreach.store import MIGRATIONS, migrations_head

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    assert migrations_head() == ScriptDirectory.from_config(config).get_current_head()


def test_holiday_country_check_knows_what_the_holidays_package_supports() -> None:
    import holidays

    from outreach.config import _holiday_countries

    assert _holiday_countries() == set(holidays.list_supported_countries())
    assert {"FI", "SE", "US", "UK"} <= _holiday_countries()
