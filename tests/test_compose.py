"""One composer: what enroll's pre-flight accepts is what send can build, and rendering never
holds the database's write lock."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import freezegun
import pytest
from sqlmodel import select

from outreach import clock, sequencing
from outreach.models import Enrollment, Message
from outreach.workspace import Workspace
from tests.conftest import Cli, edit_config
from tests.smtp_servers import RecordingSMTP

HEADER = "email,first_name,last_name,company,title,language\n"


def test_rows_that_could_never_be_sent_are_rejected_at_their_line(
    run: Cli, write_csv: object, workspace_dir: Path
) -> None:
    path = write_csv(  # type: ignore[operator]
        HEADER
        + "matti.mäkelä@firma.example,Matti,Mäkelä,Firma,CEO,fi\n"
        + "eve@evil.example,Eve,,=?utf-8?q?Evil?=,CEO,en\n"
        + f"long@name.example,{'A' * 300},,Acme,CEO,en\n"
        + "ann@acme.example,Ann,,Acme,CEO,en\n"
    )
    result = run("enroll", str(path), "--sequence", "cold")
    assert result.exit_code == 1
    lines = result.stderr.splitlines()
    assert any(":2:" in line and "ASCII" in line for line in lines), lines
    assert any(":3:" in line and "=?...?=" in line for line in lines), lines
    assert any(":4:" in line and "256" in line for line in lines), lines
    assert not any(":5:" in line for line in lines), lines
    with Workspace.load(workspace_dir / "outreach.toml").store.session() as session:
        assert session.exec(select(Enrollment)).all() == []  # all or nothing

    result = run("enroll", str(path), "--sequence", "cold", "--skip-invalid")
    assert result.exit_code == 0, result.output
    with Workspace.load(workspace_dir / "outreach.toml").store.session() as session:
        assert len(session.exec(select(Enrollment)).all()) == 1


@pytest.mark.sqlite_only
def test_a_stop_takes_effect_while_a_slow_template_renders(
    run: Cli, write_csv: object, workspace_dir: Path
) -> None:
    """A template edited after enrollment into a long loop: `send --once` renders it with no
    transaction open, so `stop` goes through at once, and the message never leaves."""
    with RecordingSMTP() as smtp:
        config = workspace_dir / "outreach.toml"
        edit_config(config, smtp_port=smtp.port, min_gap_seconds=0, max_gap_seconds=0)
        # `send --once` runs in its own process on the real clock: open at any hour, any day.
        edit_config(config, window="00:00-24:00", days="mon-sun", holidays="")
        path = write_csv(HEADER + "ann@acme.example,Ann,,Acme,CEO,en\n")  # type: ignore[operator]
        assert run("enroll", str(path), "--sequence", "cold").exit_code == 0
        slow = "{% for i in range(4000) %}{% for j in range(4000) %}{% endfor %}{% endfor %}"
        (workspace_dir / "templates" / "cold" / "1-intro.yaml").write_text(
            f'subjects:\n  - id: slow-s\n    en: "Slow"\n'
            f'bodies:\n  - id: slow\n    en: "{slow}Hi"\n',
            encoding="utf-8",
        )
        env = {**os.environ, "OUTREACH_CONFIG": str(config)}
        ws = Workspace.load(config)
        sender = subprocess.Popen(
            [sys.executable, "-m", "outreach", "send", "--once"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            database = workspace_dir / "outreach.db"
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and sender.poll() is None:
                with sqlite3.connect(database) as db:  # WAL: reading waits for nobody
                    if db.execute("SELECT 1 FROM messages WHERE state = 'claimed'").fetchone():
                        break
                time.sleep(0.1)
            assert sender.poll() is None, "send --once ended before the render"
            started = time.monotonic()
            stopped = sequencing.stop(ws.store, "ann@acme.example", "meeting", clock.now())
            took = time.monotonic() - started
        finally:
            sender.wait(timeout=600)
        assert stopped.stopped == ["cold"]
        assert took < 5, took  # never the 30 s of SQLite's busy timeout (1.35 s seen under load)
        assert smtp.received == []
    with Workspace.load(config).store.session() as session:
        [enrollment] = session.exec(select(Enrollment)).all()
        states = [m.state for m in session.exec(select(Message))]
    assert enrollment.state == "stopped" and states in ([], ["skipped"]), states


def test_a_broken_template_holds_its_step_and_status_and_prospect_say_why(
    run: Cli, write_csv: object, workspace_dir: Path
) -> None:
    """A template broken after enrollment: the step is held with its file:line, shown by
    `status` and `prospect`; once fixed, the message goes and the hold is gone."""
    with RecordingSMTP() as smtp:
        config = workspace_dir / "outreach.toml"
        edit_config(
            config,
            smtp_port=smtp.port,
            min_gap_seconds=0,
            max_gap_seconds=0,
            window="00:00-24:00",
            days="mon-sun",
            holidays="",
        )
        path = write_csv(HEADER + "ann@acme.example,Ann,,Acme,CEO,en\n")  # type: ignore[operator]
        assert run("enroll", str(path), "--sequence", "cold").exit_code == 0
        template = workspace_dir / "templates" / "cold" / "1-intro.yaml"
        good = template.read_text(encoding="utf-8")
        template.write_text(
            'subjects:\n  - id: s\n    en: "Hi"\nbodies:\n  - id: b\n    en: "{{ nope }}"\n',
            encoding="utf-8",
        )
        sent = run("send", "--once", "--no-wait")
        assert sent.exit_code == 1 and smtp.received == []
        status = run("status")
        assert "HELD 1 prospect(s) in cold" in status.stdout and "1-intro.yaml:6" in status.stdout
        shown = run("prospect", "ann@acme.example")
        assert "HELD since" in shown.stdout and "'nope' is undefined" in shown.stdout
        template.write_text(good, encoding="utf-8")
        with freezegun.freeze_time(timedelta(minutes=16), tick=True, real_asyncio=True):
            again = run("send", "--once", "--no-wait")
            assert again.exit_code == 0, again.output + again.stderr
        assert len(smtp.received) == 1
        assert "HELD" not in run("status").stdout
