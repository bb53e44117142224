"""`outreach validate` as a marketer uses it: every problem in one run, each once, at its line;
warnings for languages the prospects speak; the variants out of the test."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import Cli

INTRO = "templates/cold/1-intro.yaml"
NUDGE = "templates/cold/2-nudge.yaml"
COLD = "sequences/cold.yaml"


def edit_lines(path: Path, edits: dict[int, tuple[str, str]]) -> None:
    """Replace text on numbered lines (1-based), keeping every other line where it is."""
    lines = path.read_text(encoding="utf-8").split("\n")
    for number, (old, new) in edits.items():
        assert old in lines[number - 1], (number, lines[number - 1])
        lines[number - 1] = lines[number - 1].replace(old, new)
    path.write_text("\n".join(lines), encoding="utf-8")


def problems(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if not line.startswith("warning: ")]


def test_every_problem_is_listed_once_in_one_run(run: Cli, workspace_dir: Path) -> None:
    edit_lines(
        workspace_dir / INTRO,
        {
            22: ("note:", "nte:"),  # an unknown key
            27: ("idea-for-company", "same-numbers"),  # a duplicate id
            38: ("from the same", "from {{ the same"),  # a Jinja syntax error
            75: ("{{ company }}", "{{ company_size }}"),  # an undefined variable
        },
    )
    edit_lines(
        workspace_dir / COLD,
        {
            24: ("3-5 business days", "3-5 fortnights"),  # a bad wait
            34: ("cold/3-linkedin.yaml", "cold/3-linkedn.yaml"),  # a missing template
        },
    )
    result = run("validate")
    assert result.exit_code == 1
    lines = problems(result.stderr)
    assert lines[0].startswith(
        f"{COLD}:24: steps.1.wait: cannot read wait '3-5 fortnights'; accepted forms: "
    )
    assert lines[1:] == [
        f"{COLD}:34: step 'linkedin': template cold/3-linkedn.yaml: file not found",
        f"{INTRO}:22: unknown key 'nte' in subject 'same-numbers' "
        "(languages: en, fi, sv; also id, note, retired)",
        f"{INTRO}:27: subject id 'same-numbers' is used twice (first on line 21)",
        f"{INTRO}:38: subject 'persona-outcome' [en/buyer]: "
        "expected token 'end of print statement', got 'same'",
        f"{INTRO}:75: body 'direct-question' [en/decision_maker]: 'company_size' is undefined "
        "(give the prospect that field, or a default in the template: "
        "{{ company_size | default('...') }})",
        "6 problem(s) found",
    ]
    doc = json.loads(run("validate", "--json").stdout)
    assert doc["ok"] is False and doc["problems"] == lines[:-1]


def test_a_template_shared_by_two_steps_is_reported_once(run: Cli, workspace_dir: Path) -> None:
    reminder = workspace_dir / "sequences" / "reminder.yaml"
    text = reminder.read_text(encoding="utf-8")
    # The reminder's nudge uses the cold nudge's template too.
    reminder.write_text(
        text.replace("template: reminder/2-nudge.yaml", f"template: {NUDGE[10:]}"),
        encoding="utf-8",
    )
    nudge = workspace_dir / NUDGE
    nudge.write_text(
        nudge.read_text(encoding="utf-8").replace(
            "{{ sender.signature }}", "{{ sender.signature }", 1
        ),
        encoding="utf-8",
    )
    result = run("validate")
    assert result.exit_code == 1
    lines = problems(result.stderr)
    assert len(lines) == 2 and lines[0].startswith(f"{NUDGE}:") and lines[1] == "1 problem(s) found"


def test_a_key_written_twice_in_a_sequence_is_listed_with_the_rest(
    run: Cli, workspace_dir: Path
) -> None:
    edit_lines(
        workspace_dir / COLD,
        {
            18: ("", ""),
            24: ("3-5 business days", "3-5 fortnights"),
        },
    )
    cold = workspace_dir / COLD
    lines = cold.read_text(encoding="utf-8").split("\n")
    lines.insert(17, "    wait: 1 day")  # line 18: the intro's wait, again
    cold.write_text("\n".join(lines), encoding="utf-8")
    result = run("validate")
    assert result.exit_code == 1
    found = problems(result.stderr)
    assert found[0] == f"{COLD}:18: 'wait' appears twice (first on line 16); the first is used"
    assert found[1].startswith(f"{COLD}:25: steps.1.wait: cannot read wait '3-5 fortnights'")
    assert found[2:] == ["2 problem(s) found"]


@pytest.mark.parametrize(
    ("edit", "line", "message"),
    [
        # The quote of line 17 is closed by the next quote, on line 18; PyYAML trips there.
        (
            (17, ('"Quick question', '"Quick question {{ first_name }}'), ('}}"', "}}")),
            17,
            "YAML syntax: the quoted text that starts here runs on to line 18, where expected "
            "<block end>, but found '<scalar>' (is its closing quote missing?)",
        ),
        # The last quote of the file never closes: PyYAML names the quote in its context.
        (
            (None, None, None),
            None,
            "YAML syntax: found unexpected end of stream while scanning a quoted scalar",
        ),
    ],
    ids=["closed-later", "end-of-file"],
)
def test_an_unclosed_quote_is_reported_at_the_quote(
    run: Cli,
    workspace_dir: Path,
    edit: tuple[int | None, tuple[str, str] | None, tuple[str, str] | None],
    line: int | None,
    message: str,
) -> None:
    path = workspace_dir / INTRO
    number, first, second = edit
    if number is not None:
        assert first is not None and second is not None
        text = path.read_text(encoding="utf-8").split("\n")
        text[number - 1] = text[number - 1].replace(*first)
        # Drop the closing quote only: the line keeps its opening one.
        text[number - 1] = text[number - 1][::-1].replace('"', "", 1)[::-1]
        path.write_text("\n".join(text), encoding="utf-8")
    else:
        text = path.read_text(encoding="utf-8").rstrip("\n")
        path.write_text(text + '\n  - id: last\n    en: "Never closed\n', encoding="utf-8")
        line = len(text.split("\n")) + 2
    result = run("validate")
    assert result.exit_code == 1
    assert problems(result.stderr) == [f"{INTRO}:{line}: {message}", "1 problem(s) found"]


def test_warns_where_prospects_speak_a_language_an_active_variant_lacks(
    run: Cli, workspace_dir: Path
) -> None:
    assert run("validate").stderr == ""  # the starter: every variant in en, fi and sv
    assert run("enroll", str(workspace_dir / "prospects.csv"), "--sequence", "cold").exit_code == 0
    # One subject loses its Finnish text; the six Finnish prospects get the other three.
    edit_lines(workspace_dir / INTRO, {24: ('fi: "Markkinointi', '# fi: "Markkinointi')})
    result = run("validate")
    assert result.exit_code == 0, result.stderr
    assert result.stderr.splitlines() == [
        f"warning: {INTRO}:21: cold/intro subject 'same-numbers' has no text in 'fi'; "
        "6 prospects in 'fi' get only the other subjects"
    ]


def test_every_active_body_lacking_a_language_is_one_warning(run: Cli, workspace_dir: Path) -> None:
    assert run("enroll", str(workspace_dir / "prospects.csv"), "--sequence", "cold").exit_code == 0
    linkedin = workspace_dir / "templates" / "cold" / "3-linkedin.yaml"
    lines = linkedin.read_text(encoding="utf-8").split("\n")
    kept, skipping = [], False
    for row in lines:  # take every English text out of the LinkedIn step's bodies
        if row.startswith("    en:"):
            skipping = True
            continue
        if skipping and row.startswith("      ") or (skipping and row.strip() == ""):
            continue
        skipping = False
        kept.append(row)
    linkedin.write_text("\n".join(kept), encoding="utf-8")
    first = next(n for n, row in enumerate(kept, 1) if row.startswith("  - id:"))
    result = run("validate")
    assert result.exit_code == 0, result.stderr
    assert result.stderr.splitlines() == [
        f"warning: templates/cold/3-linkedin.yaml:{first}: cold/linkedin: no active body has "
        "a text in 'en'; 4 prospects in 'en' cannot be sent this step"
    ]


def test_retired_variants_are_listed_with_their_line(run: Cli, workspace_dir: Path) -> None:
    edit_lines(workspace_dir / INTRO, {22: ("    note:", "    retired: true\n    note:")})
    result = run("validate")
    assert result.exit_code == 0, result.stderr
    assert (
        f"retired: {INTRO}:21: cold/intro subject 'same-numbers' (retired: true in the file)"
        in result.stdout.splitlines()
    )
    doc = json.loads(run("validate", "--json").stdout)
    assert doc["retired"] == [
        {
            "file": INTRO,
            "line": 21,
            "sequence": "cold",
            "step": "intro",
            "kind": "subject",
            "variant": "same-numbers",
            "by": "the template file",
            "date": None,
        }
    ]
