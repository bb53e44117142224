"""Workspace files cannot hang or crash a command: runaway templates and hostile YAML.

Each hostile file is put into a real starter workspace and the real command is run through the
CLI. Each must end in one line naming the file and line, exit 1, and finish within a bound:
a runaway text stops after 1 s of CPU or 1,000,000 steps, so a whole command that meets one
stays under BOUND_CPU seconds of CPU (and BOUND_WALL of wall time on a loaded machine).
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from click.testing import Result
from freezegun import freeze_time
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from outreach.errors import TemplateError
from outreach.templates import MAX_BODY_CHARS, Renderer, Text, Variant
from tests.conftest import Cli, edit_config
from tests.smtp_servers import RecordingSMTP

INTRO = "templates/cold/1-intro.yaml"
COLD = "sequences/cold.yaml"
BOUND_CPU = 6.0
BOUND_WALL = 40.0
MONDAY_10 = datetime(2027, 1, 4, 8, 0, tzinfo=UTC)  # Mon 4 Jan 2027 10:00 in Helsinki

LOOPS = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
RUNAWAY = [
    (LOOPS, "stopped after 1,000,000 loop iterations and calls (a loop that never ends?)"),
    (
        "{{ 'x' * 10**9 }}",
        "builds a value of 1,000,000,000 characters or items; at most 1,000,000",
    ),
    ("{{ 'x' * 10**8 }}", "builds a value of 100,000,000 characters or items; at most 1,000,000"),
    (
        "{{ lipsum(10**6) }}",
        "builds placeholder text of 100,000,000 characters or items; at most 1,000,000",
    ),
    (
        "{% macro f(n) %}{% if n %}{{ f(n - 1) }}{{ f(n - 1) }}{% endif %}{% endmacro %}"
        "{{ f(40) }}",
        re.compile(
            r"stopped after (1,000,000 loop iterations and calls|1 s of rendering) "
            r"\(a loop that never ends\?\)"
        ),
    ),
    (
        "{% for i in range(3000) %}{{ 'word ' * 10 }}{% endfor %}",
        "renders to more than 100,000 characters, the most a body may have",
    ),
    (
        "{% set ns = namespace(items=[]) %}{% for i in range(40) %}"
        "{% set ns.items = [ns.items, ns.items] %}{% endfor %}{{ ns.items }}",
        "builds a value of 1,048,575 characters or items; at most 1,000,000",
    ),
]


def add_body(workspace_dir: Path, source: str) -> int:
    """Add an English body variant 'runaway' with ``source`` on its second line; the file
    line of ``source``."""
    path = workspace_dir / INTRO
    text = path.read_text(encoding="utf-8")
    variant = f"  - id: runaway\n    en: |\n      Hi,\n      {source}\n"
    path.write_text(text.replace("bodies:\n", "bodies:\n" + variant, 1), encoding="utf-8")
    return path.read_text(encoding="utf-8").splitlines().index(f"      {source}") + 1


def timed(run: Cli, *args: str) -> tuple[Result, float, float]:
    cpu, wall = time.process_time(), time.monotonic()
    result = run(*args)
    return result, time.process_time() - cpu, time.monotonic() - wall


def problems(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if not line.startswith("warning: ")]


def matches(line: str, expected: str | re.Pattern[str]) -> bool:
    if isinstance(expected, str):
        return line.endswith(expected)
    return expected.search(line) is not None


@pytest.mark.parametrize(("source", "expected"), RUNAWAY, ids=range(len(RUNAWAY)))
def test_validate_stops_a_runaway_text_at_its_line(
    run: Cli, workspace_dir: Path, source: str, expected: str | re.Pattern[str]
) -> None:
    line = add_body(workspace_dir, source)
    result, cpu, wall = timed(run, "validate")
    assert result.exit_code == 1
    lines = problems(result.stderr)
    assert len(lines) == 2 and lines[1] == "1 problem(s) found", lines
    assert lines[0].startswith(f"{INTRO}:{line}: body 'runaway' [en/default]: "), lines
    assert matches(lines[0], expected), lines
    assert "Traceback" not in result.output
    assert cpu < BOUND_CPU and wall < BOUND_WALL, (cpu, wall)


def test_a_subject_longer_than_250_characters_is_refused(run: Cli, workspace_dir: Path) -> None:
    path = workspace_dir / INTRO
    text = path.read_text(encoding="utf-8")
    variant = "  - id: too-long\n    en: \"{{ 'Long ' * 60 }}\"\n"
    path.write_text(text.replace("subjects:\n", "subjects:\n" + variant, 1), encoding="utf-8")
    result = run("validate")
    assert result.exit_code == 1
    assert problems(result.stderr) == [
        f"{INTRO}:16: subject 'too-long' [en/default]: renders to a subject of 299 characters; "
        "at most 250",
        "1 problem(s) found",
    ]


def test_enroll_preflight_refuses_the_rows_a_runaway_text_would_hold(
    run: Cli, workspace_dir: Path
) -> None:
    line = add_body(workspace_dir, LOOPS)
    result, cpu, wall = timed(
        run, "enroll", str(workspace_dir / "prospects.csv"), "--sequence", "cold"
    )
    assert result.exit_code == 1
    rejected = [
        row
        for row in result.stderr.splitlines()
        if f"{INTRO}:{line}: body 'runaway' [en/" in row and "]: stopped after 1,000,000" in row
    ]
    assert len(rejected) == 4  # the four English rows; the Finnish ones never get that body
    assert "nothing imported" in result.stderr
    # The text ran away once; every later row was refused at once, not after a second each.
    assert cpu < BOUND_CPU and wall < BOUND_WALL, (cpu, wall)
    assert run.json("status")["sequences"][0]["enrollments"]["active"] == 0


def test_preview_names_the_line_of_a_runaway_text(run: Cli, workspace_dir: Path) -> None:
    assert run("enroll", str(workspace_dir / "prospects.csv"), "--sequence", "cold").exit_code == 0
    line = add_body(workspace_dir, "{{ 'x' * 10**9 }}")
    result, cpu, wall = timed(run, "preview", "j.smith@logistics.example")
    assert result.exit_code == 1
    assert result.stderr.strip() == (
        f"{INTRO}:{line}: body 'runaway' [en/buyer]: builds a value of 1,000,000,000 "
        "characters or items; at most 1,000,000"
    )
    assert cpu < BOUND_CPU and wall < BOUND_WALL


@pytest.fixture
def smtp() -> Iterator[RecordingSMTP]:
    with RecordingSMTP() as server:
        yield server


def test_send_holds_a_runaway_text_and_sends_the_rest(
    run: Cli, workspace_dir: Path, smtp: RecordingSMTP
) -> None:
    edit_config(
        workspace_dir / "outreach.toml",
        smtp_port=smtp.port,
        min_gap_seconds=0,
        max_gap_seconds=0,
        daily_limit=1000,
    )
    with freeze_time(MONDAY_10, real_asyncio=True):
        assert (
            run("enroll", str(workspace_dir / "prospects.csv"), "--sequence", "cold").exit_code == 0
        )
        # Edited in after the enrollment: the pre-flight never saw it.
        path = workspace_dir / INTRO
        text = path.read_text(encoding="utf-8")
        # Every text of the first body runs away; the second body ('read-case') is intact.
        first, second = text.split("  - id: read-case\n")
        first = first.replace("{{ sender.signature }}", LOOPS)
        path.write_text(first + "  - id: read-case\n" + second, encoding="utf-8")
        lines = {
            n
            for n, row in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
            if LOOPS in row
        }
        result, cpu, wall = timed(run, "send", "--once", "--no-wait")
    assert result.exit_code == 1
    held = [
        row
        for row in result.stderr.splitlines()
        if any(f"{INTRO}:{line}: body 'direct-question' " in row for line in lines)
    ]
    assert held and all("stopped after 1,000,000 loop iterations and calls" in row for row in held)
    assert "Traceback" not in result.output
    assert cpu < BOUND_CPU and wall < BOUND_WALL, (cpu, wall)
    sent = run.json("status")["sequences"][0]["steps"][0]["sent"]
    assert sent == len(smtp.received) and 0 < sent < 10  # the other body went out


# --------------------------------------------------------------------------- hostile YAML

LAUGHS = "lol: &a ['lol', 'lol', 'lol', 'lol', 'lol', 'lol', 'lol', 'lol', 'lol']\n" + "".join(
    f"l{i}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 9)}]\n" for i in range(9)
)
HOSTILE = [
    (
        "subjects: []\n" + LAUGHS,
        2,
        "YAML anchors and aliases (&a) are not allowed here: write the value out",
    ),
    (
        "bodies: &loop\n  - *loop\n",
        1,
        "YAML anchors and aliases (&loop) are not allowed here: write the value out",
    ),
    (
        "bodies:\n  - id: x\n    en: " + "[" * 5000 + "]" * 5000 + "\n",
        3,
        "nested deeper than 32 levels",
    ),
    (
        "".join("  " * depth + f"level{depth}:\n" for depth in range(100)),
        32,
        "nested deeper than 32 levels",
    ),
]


@pytest.mark.parametrize(
    ("text", "line", "message"), HOSTILE, ids=["laughs", "recursive", "flow", "block"]
)
def test_hostile_template_yaml_is_refused_at_its_line(
    run: Cli, workspace_dir: Path, text: str, line: int, message: str
) -> None:
    (workspace_dir / INTRO).write_text(text, encoding="utf-8")
    result, cpu, wall = timed(run, "validate")
    assert result.exit_code == 1
    assert problems(result.stderr) == [f"{INTRO}:{line}: {message}", "1 problem(s) found"]
    assert cpu < BOUND_CPU and wall < BOUND_WALL, (cpu, wall)
    status, cpu, wall = timed(run, "status")  # never reads templates: unaffected
    assert status.exit_code == 0 and cpu < BOUND_CPU


@pytest.mark.parametrize(
    ("text", "line", "message"), HOSTILE, ids=["laughs", "recursive", "flow", "block"]
)
def test_hostile_sequence_yaml_is_one_line_for_every_command(
    run: Cli, workspace_dir: Path, text: str, line: int, message: str
) -> None:
    (workspace_dir / COLD).write_text(text, encoding="utf-8")
    for command in (
        ["status"],
        ["validate"],
        ["enroll", str(workspace_dir / "prospects.csv"), "--sequence", "cold"],
    ):
        result, cpu, wall = timed(run, *command)
        assert result.exit_code == 1, command
        assert problems(result.stderr)[0] == f"{COLD}:{line}: {message}", command
        assert "Traceback" not in result.output
        assert cpu < BOUND_CPU and wall < BOUND_WALL, (command, cpu, wall)


def test_a_file_over_a_megabyte_is_refused_unread(run: Cli, workspace_dir: Path) -> None:
    (workspace_dir / INTRO).write_text("# padding\n" * 110_000, encoding="utf-8")
    result = run("validate")
    assert result.exit_code == 1
    assert problems(result.stderr)[0] == (
        f"{COLD}:17: step 'intro': template cold/1-intro.yaml: the file is 1,100,000 bytes; "
        "a sequence or template file is at most 1,000,000"
    )


# ------------------------------------------------------------ any mix of the known amplifiers

SIZES = st.sampled_from([0, 3, 1000, 10**5, 10**6, 10**9])
ATOMS = [
    lambda n: f"'x' * {n}",
    lambda n: f"lipsum({n})",
    lambda n: f"(range({min(n, 10**5)})|list)",
    lambda n: f"'ab'|center({n})",
    lambda n: f"'%{n}s' % 'y'",
    lambda n: f"'{{:>{n}}}'.format('z')",
    lambda n: f"('a b ' * 50)|indent({n})",
    lambda n: f"['q'] * {n}",
    lambda n: f"'c'.ljust({n})",
    lambda n: f"('d' * 100).replace('', 'e' * {min(n, 10**6)})",
]


@st.composite
def hostile_templates(draw: st.DrawFn) -> str:
    """A text of 1-3 expressions built from the amplifiers, joined with ``~`` or printed
    side by side, inside 0-3 nested loops."""
    parts = [draw(st.sampled_from(ATOMS))(draw(SIZES)) for _ in range(draw(st.integers(1, 3)))]
    joined = " ~ ".join(f"({part})|string" for part in parts)
    body = (
        "{{ " + joined + " }}"
        if draw(st.booleans())
        else "".join("{{ " + part + " }}" for part in parts)
    )
    for _ in range(draw(st.integers(0, 3))):
        count = draw(SIZES) if draw(st.booleans()) else 10**5
        body = f"{{% for i in range({count}) %}}{body}{{% endfor %}}"
    return body


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(hostile_templates())
def test_any_mix_of_amplifiers_ends_in_one_error_or_a_bounded_body(source: str) -> None:
    renderer = Renderer()
    cpu = time.process_time()
    try:
        body, _ = renderer.render_body(
            Variant(kind="body", id="mix", line=3, texts={("en", "default"): Text(source, 7)}),
            "en",
            None,
            {"sender": {}},
            "templates/mix.yaml",
        )
    except TemplateError as exc:
        assert exc.file == "templates/mix.yaml" and exc.line == 7
        assert "\n" not in exc.one_line()
    else:
        assert len(body) <= MAX_BODY_CHARS + 1
    # One rendering: at most 1 s of CPU plus the one operation that was running.
    assert time.process_time() - cpu < 2.5


def test_a_template_that_is_not_utf8_names_the_line_of_the_byte(
    run: Cli, workspace_dir: Path
) -> None:
    path = workspace_dir / INTRO
    raw = path.read_bytes()
    assert raw.split(b"\n")[23].strip().startswith(b'fi: "Markkinointi')
    # A UTF-8 file (its earlier lines have \xc3\xa5 and the like) with one Windows-1252 byte.
    path.write_bytes(raw.replace(b'fi: "Markkinointi', b'fi: "M\xe4rkkinointi', 1))
    result = run("validate")
    assert result.exit_code == 1
    assert problems(result.stderr)[0] == (
        f"{INTRO}:24: not UTF-8: byte 0xe4 (save the file as UTF-8)"
    )
