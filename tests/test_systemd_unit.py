"""The shipped systemd unit for `outreach run`: systemd's own checker accepts it, it restarts on
failure, takes its secrets from a root-only EnvironmentFile and is sandboxed."""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNIT = Path(__file__).parent.parent / "deploy" / "outreach.service"
ENV_EXAMPLE = UNIT.parent / "outreach.env.example"


def unit_options() -> dict[str, list[str]]:
    """``Key`` -> every value it is given in the unit (systemd allows repeats)."""
    options: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.lstrip().startswith(("#", "[")):
            key, _, value = line.partition("=")
            options.setdefault(key.strip(), []).append(value.strip())
    return options


def test_unit_restarts_on_failure_reads_secrets_from_a_file_and_is_sandboxed() -> None:
    options = unit_options()
    assert options["ExecStart"] == ["/opt/outreach/.venv/bin/outreach run"]
    assert options["Restart"] == ["on-failure"]
    assert options["EnvironmentFile"] == ["/etc/outreach/outreach.env"]
    assert options["KillSignal"] == ["SIGTERM"]
    for key, value in {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ReadWritePaths": "/srv/outreach",
        "PrivateTmp": "yes",
        "ProtectHome": "yes",
        "UMask": "0077",
    }.items():
        assert options[key] == [value], key
    # The secrets are names and placeholders, never in the unit itself.
    assert not any("PASSWORD" in v for values in options.values() for v in values)
    assert "OUTREACH_SANNA_PASSWORD=" in ENV_EXAMPLE.read_text()
    sections = configparser.ConfigParser(strict=False, interpolation=None)
    sections.read_string(UNIT.read_text())
    assert sections.sections() == ["Unit", "Service", "Install"]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path) -> None:
    """The unit with its paths pointed at this checkout, as systemd-analyze checks that the
    executable exists; a misspelt key would fail it (it exits 1 and names the line)."""
    outreach = Path(sys.executable).parent / "outreach"
    text = (
        UNIT.read_text()
        .replace("/opt/outreach/.venv/bin/outreach", str(outreach))
        .replace("/srv/outreach", str(tmp_path))
        .replace("/etc/outreach/outreach.env", str(tmp_path / "outreach.env"))
    )
    (tmp_path / "outreach.env").write_text(ENV_EXAMPLE.read_text())
    unit = tmp_path / "outreach.service"
    unit.write_text(text)
    done = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip() == ""
    unit.write_text(text.replace("NoNewPrivileges=", "NoNewPrivilegs="))
    broken = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    assert "Unknown key 'NoNewPrivilegs'" in broken.stderr
