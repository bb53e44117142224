"""Enrolling a prospects CSV: all or nothing, de-duplicated, suppression respected, pre-flighted."""

from __future__ import annotations

import random
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import func, select

from outreach.enroll import enroll_csv
from outreach.errors import ConfigError, SequenceError
from outreach.models import Enrollment, Prospect
from outreach.sequencing import stop, suppress
from outreach.workspace import Workspace

# Monday 2027-01-04 10:00 Helsinki (08:00 UTC): inside the 08-17 window on a working day.
MONDAY_MORNING = datetime(2027, 1, 4, 8, 0, tzinfo=UTC)
HEADER = "email,first_name,last_name,company,persona,language\n"
pytestmark = pytest.mark.both_databases


def count(ws: Workspace, model: type) -> int:
    with ws.store.session() as session:
        return session.exec(select(func.count()).select_from(model)).one()[0]


def enroll(ws: Workspace, path: Path, **kwargs: object):  # type: ignore[no-untyped-def]
    kwargs.setdefault("now", MONDAY_MORNING)
    kwargs.setdefault("rng", random.Random(7))
    return enroll_csv(ws, path, kwargs.pop("sequence", "cold"), **kwargs)  # type: ignore[arg-type]


def test_sample_csv_enrolls_everyone(workspace: Workspace, workspace_dir: Path) -> None:
    result = enroll(workspace, workspace_dir / "prospects.csv")
    assert result.applied and result.rejected == [] and result.skipped == []
    assert result.enrolled == result.created == 10
    assert count(workspace, Enrollment) == 10
    # Wait 0 days at 10:00 local on a Monday: due at once.
    assert result.first_due == MONDAY_MORNING


def test_one_bad_row_imports_nothing(workspace: Workspace, write_csv: Callable[..., Path]) -> None:
    path = write_csv(
        HEADER + "ann@acme.example,Ann,A,Acme,buyer,en\n"
        "not-an-address,Bob,B,Beta,user,en\n"
        "cid@gamma.example,Cid,C,Gamma,user,klingon\n"
    )
    result = enroll(workspace, path)
    assert not result.applied
    assert [(r.line, r.message.split(" ")[0]) for r in result.rejected] == [
        (3, "email"),
        (4, "language"),
    ]
    assert count(workspace, Prospect) == 0 and count(workspace, Enrollment) == 0


def test_skip_invalid_imports_the_good_rows(
    workspace: Workspace, write_csv: Callable[..., Path]
) -> None:
    path = write_csv(HEADER + "ann@acme.example,Ann,A,Acme,buyer,en\nnot-an-address,Bob,,,,\n")
    result = enroll(workspace, path, skip_invalid=True)
    assert result.applied and result.enrolled == 1 and len(result.rejected) == 1
    assert count(workspace, Enrollment) == 1


def test_dry_run_counts_but_writes_nothing(
    workspace: Workspace, write_csv: Callable[..., Path]
) -> None:
    path = write_csv(HEADER + "ann@acme.example,Ann,A,Acme,buyer,en\n")
    result = enroll(workspace, path, dry_run=True)
    assert result.enrolled == 1 and not result.applied
    assert count(workspace, Prospect) == 0


def test_duplicates_in_file_are_skipped_by_normalised_address(
    workspace: Workspace, write_csv: Callable[..., Path]
) -> None:
    path = write_csv(HEADER + "Ann@Acme.example,Ann,A,Acme,,\n ann@ACME.EXAMPLE ,Ann,A,Acme,,\n")
    result = enroll(workspace, path)
    assert result.enrolled == 1
    assert [(s.line, s.reason) for s in result.skipped] == [(3, "duplicate of line 2")]


def test_suppressed_address_and_domain_are_never_enrolled(
    workspace: Workspace, write_csv: Callable[..., Path]
) -> None:
    suppress(workspace.store, "ann@acme.example", MONDAY_MORNING)
    suppress(workspace.store, "@beta.example", MONDAY_MORNING)
    path = write_csv(
        HEADER + "ann@acme.example,Ann,,,,\nbob@beta.example,Bob,,,,\ncid@gamma.example,Cid,,,,\n"
    )
    result = enroll(workspace, path)
    assert result.enrolled == 1
    assert {s.email: s.reason for s in result.skipped} == {
        "ann@acme.example": "suppressed",
        "bob@beta.example": "suppressed",
    }


def test_missing_variable_is_caught_at_enrollment(
    workspace: Workspace, workspace_dir: Path, write_csv: Callable[..., Path]
) -> None:
    intro = workspace_dir / "templates" / "cold" / "1-intro.yaml"
    edited = []
    for line in intro.read_text().splitlines(keepends=True):
        edited.append(line)
        if "{{ sender.signature }}" in line:  # a P.S. under every body's signature
            indent = line[: len(line) - len(line.lstrip())]
            edited.append(f"{indent}P.S. {{{{ favourite_colour }}}}\n")
    intro.write_text("".join(edited))
    path = write_csv(HEADER + "ann@acme.example,Ann,A,Acme,buyer,en\n")
    result = enroll(workspace, path)
    assert not result.applied
    [rejection] = result.rejected
    assert rejection.line == 2
    assert "templates/cold/1-intro.yaml:" in rejection.message
    assert "'favourite_colour' is undefined" in rejection.message
    # With the column present the same file goes in.
    path = write_csv("email,first_name,favourite colour\nann@acme.example,Ann,teal\n")
    assert enroll(workspace, path).enrolled == 1


def test_existing_prospect_is_updated_and_not_enrolled_twice(
    workspace: Workspace, write_csv: Callable[..., Path]
) -> None:
    enroll(workspace, write_csv(HEADER + "ann@acme.example,Ann,A,Acme,buyer,en\n"))
    result = enroll(workspace, write_csv("email,title,company\nann@acme.example,CFO,\n"))
    assert result.updated == 1 and result.enrolled == 0
    assert result.skipped[0].reason == "already in sequence cold (active)"
    with workspace.store.session() as session:
        prospect = session.exec(select(Prospect)).one()[0]
    assert prospect.title == "CFO" and prospect.company == "Acme"  # blank never erases


def test_a_prospect_live_in_another_sequence_is_skipped(
    workspace: Workspace, write_csv: Callable[..., Path]
) -> None:
    path = write_csv(HEADER + "ann@acme.example,Ann,A,Acme,buyer,en\n")
    enroll(workspace, path)
    result = enroll(workspace, path, sequence="reminder")
    assert result.skipped[0].reason == "active in sequence cold"
    stop(workspace.store, "ann@acme.example", "meeting", MONDAY_MORNING)
    # A meeting hands Ann to sales: the engine does not take her back by itself...
    skipped = enroll(workspace, path, sequence="reminder").skipped
    assert skipped[0].reason.startswith("stopped in sequence cold (meeting)")
    # ...unless the rep says so.
    assert enroll(workspace, path, sequence="reminder", include_ended=True).enrolled == 1


def test_unknown_sequence_and_sender(workspace: Workspace, write_csv: Callable[..., Path]) -> None:
    path = write_csv(HEADER + "ann@acme.example,Ann,A,Acme,buyer,en\n")
    with pytest.raises(SequenceError, match="no sequence named 'warm'"):
        enroll(workspace, path, sequence="warm")
    with pytest.raises(ConfigError, match="no mailbox with email bob@x.example"):
        enroll(workspace, path, sender="bob@x.example")


def test_friday_evening_enrollment_is_due_monday_morning(
    workspace: Workspace, write_csv: Callable[..., Path]
) -> None:
    friday_evening = datetime(2027, 1, 8, 18, 0, tzinfo=UTC)  # 20:00 in Helsinki
    result = enroll(workspace, write_csv(HEADER + "ann@acme.example,Ann,,,,\n"), now=friday_evening)
    assert result.first_due == datetime(2027, 1, 11, 6, 0, tzinfo=UTC)  # Mon 08:00 Helsinki


def test_prospect_timezone_sets_the_window(
    workspace: Workspace, write_csv: Callable[..., Path]
) -> None:
    path = write_csv("email,timezone\nann@acme.example,America/New_York\n")
    result = enroll(workspace, path)  # 03:00 in New York
    assert result.first_due == datetime(2027, 1, 4, 13, 0, tzinfo=UTC)  # 08:00 New York


def test_large_file_streams_in_chunks(workspace: Workspace, write_csv: Callable[..., Path]) -> None:
    rows = "".join(f"p{i}@acme{i % 7}.example,P{i},,Acme,,\n" for i in range(2500))
    seen: list[int] = []
    result = enroll(workspace, write_csv(HEADER + rows), on_progress=seen.append)
    assert result.enrolled == 2500 and count(workspace, Enrollment) == 2500
    assert seen and seen == sorted(seen)


def test_a_value_that_steers_a_template_is_checked_row_by_row(
    workspace: Workspace, workspace_dir: Path, write_csv: Callable[..., Path]
) -> None:
    """Two rows with the same columns filled but different values may render differently."""
    linkedin = workspace_dir / "templates" / "cold" / "3-linkedin.yaml"
    edited = []
    for line in linkedin.read_text().splitlines(keepends=True):
        edited.append(line)
        if "{{ sender" in line or "Hi " in line:
            indent = line[: len(line) - len(line.lstrip())]
            edited.append(f'{indent}{{% if industry == "Retail" %}}{{{{ oops }}}}{{% endif %}}\n')
    linkedin.write_text("".join(edited))
    path = write_csv(
        "email,first_name,company,industry\na@x.example,A,Aco,IT\nb@x.example,B,Bco,Retail\n"
    )
    result = enroll(workspace, path)
    assert [(r.line, "'oops' is undefined" in r.message) for r in result.rejected] == [(3, True)]
