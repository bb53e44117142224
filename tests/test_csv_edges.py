"""Hostile prospects CSVs: each is one line naming the file and line, exit 1, nothing written,
and a bad record never lets a line from inside one of its cells through as a prospect."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from outreach import csvfile
from outreach.errors import ImportError_
from outreach.prospect_csv import ProspectRow, RowError, read_prospects
from tests.conftest import Cli
from tests.dbsnapshot import snapshot

GOOD = "email,first_name\nann@acme.example,Ann\n"


@pytest.fixture
def enrolled(run: Cli, tmp_path: Path) -> Path:
    """A workspace with Ann enrolled already, so 'unchanged' means something."""
    path = tmp_path / "good.csv"
    path.write_text(GOOD, encoding="utf-8")
    result = run("enroll", str(path), "--sequence", "cold")
    assert result.exit_code == 0, result.output
    return run.config


def refused(run: Cli, path: Path, *options: str) -> str:
    """Enroll ``path``; assert exit 1, one line on stderr and nothing written; return the line."""
    before = snapshot(run.config)
    result = run("enroll", str(path), "--sequence", "cold", *options)
    assert result.exit_code == 1, result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.output
    assert snapshot(run.config) == before
    return lines[0]


def test_a_header_cell_over_128_kb_is_one_line(run: Cli, enrolled: Path, tmp_path: Path) -> None:
    path = tmp_path / "wide.csv"
    path.write_text("email,notes " + "x" * 200_000 + "\nbob@acme.example,1\n", encoding="utf-8")
    line = refused(run, path)
    assert line.startswith(f"{path}:1: the header row is longer than 65,536 characters")


def test_a_file_without_a_newline_is_one_line(run: Cli, enrolled: Path, tmp_path: Path) -> None:
    one_line = tmp_path / "one-line.csv"
    one_line.write_text("email," + ",".join(f"c{i}" for i in range(40_000)), encoding="utf-8")
    assert refused(run, one_line).startswith(f"{one_line}:1: the header row is longer than")
    header_only = tmp_path / "header-only.csv"
    header_only.write_text("email,first_name", encoding="utf-8")
    assert refused(run, header_only) == (
        f"{header_only}:1: the file has a header but no rows: nothing to import"
    )


def test_the_last_row_without_a_newline_is_imported(run: Cli, tmp_path: Path) -> None:
    path = tmp_path / "no-final-newline.csv"
    path.write_text("email,first_name\r\nann@acme.example,Ann", encoding="utf-8")
    assert run.json("enroll", str(path), "--sequence", "cold")["enrolled"] == 1


def test_a_header_only_file_says_it_imported_nothing(
    run: Cli, enrolled: Path, tmp_path: Path
) -> None:
    path = tmp_path / "header.csv"
    path.write_text("\ufeffsep=;\nSähköposti;Etunimi\n\n;\n", encoding="utf-8")
    line = refused(run, path, "--dry-run")
    assert line == f"{path}:2: the file has a header but no rows: nothing to import"


def test_a_200_kb_quoted_cell_does_not_desynchronise_skip_invalid(
    run: Cli, enrolled: Path, tmp_path: Path
) -> None:
    cell = ("filler " * 140 + "\n") * 200 + "mallory@evil.example,Mallory\n" + "z" * 1000
    path = tmp_path / "big-cell.csv"
    path.write_text(
        f'email,first_name,notes\nbob@acme.example,Bob,"{cell}"\ncid@acme.example,Cid,short\n',
        encoding="utf-8",
    )
    spans = 1 + cell.count("\n")
    result = run("enroll", str(path), "--sequence", "cold", "--skip-invalid", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["enrolled"] == 1
    assert report["rejected"] == [
        {
            "line": 2,
            "reason": "a cell is longer than 131,072 characters "
            f"(the row spans lines 2-{1 + spans})",
        }
    ]
    emails = {p[1] for p in snapshot(run.config)["prospects"]}
    assert emails == {"ann@acme.example", "cid@acme.example"}


def test_one_windows_1252_byte_in_a_utf8_file_is_refused_at_its_line(
    run: Cli, enrolled: Path, tmp_path: Path
) -> None:
    path = tmp_path / "mixed.csv"
    path.write_bytes(
        "email,first_name\nbob@acme.example,Mäkelä\n".encode()
        + b"cid@acme.example,Bj\xf6rk\n"
        + "dan@acme.example,Åsa\n".encode()
    )
    line = refused(run, path, "--skip-invalid")
    assert line.startswith(f"{path}:3: byte 0xf6 is not UTF-8, unlike the rest of the file")


def test_a_file_all_in_windows_1252_is_still_read_as_such(run: Cli, tmp_path: Path) -> None:
    path = tmp_path / "excel.csv"
    path.write_bytes("email;etunimi\nbob@acme.example;Mäkelä\n".encode("cp1252"))
    assert run.json("enroll", str(path), "--sequence", "cold")["enrolled"] == 1
    assert run.json("prospect", "bob@acme.example")["prospect"]["first_name"] == "Mäkelä"


# --- the reader's resynchronisation, as properties ----------------------------------------------

FIELD_LIMIT = 400  # csv's field size limit during the property tests (131,072 by default)
RECORD_LIMIT = 1500  # and csvfile.MAX_RECORD


@pytest.fixture
def small_limits(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The reader's limits, scaled down so that hypothesis can try many files quickly."""
    monkeypatch.setattr(csvfile, "MAX_RECORD", RECORD_LIMIT)
    old = csv.field_size_limit(FIELD_LIMIT)
    try:
        yield
    finally:
        csv.field_size_limit(old)


_TEXT = st.text(alphabet=st.sampled_from(list("ab ä\"\n\r,;\t'x")), max_size=40)
_NAME = st.text(alphabet=st.sampled_from(list("abcÄö -'")), max_size=12)


def _intruder(n: int, d: str) -> str:
    """A line that would be a prospect if it were read as a record of its own."""
    return f"mallory{n}@evil.example{d}Mallory\n"


@st.composite
def _bad_record(draw: st.DrawFn, n: int, d: str) -> str:
    """A record the reader must refuse whole, with intruder lines inside its cells."""
    kind = draw(st.sampled_from(["long cell", "stray quote", "long record", "long line"]))
    email = f"bad{n}@acme.example"
    if kind == "long cell":  # over the field size limit, the intruder past the limit
        filler = draw(st.sampled_from(["x", "y\n", '""', f"z{d}"]))  # each at least 1 character
        body = filler * (FIELD_LIMIT + 5) + "\n" + _intruder(n, d) + "tail"
        return f'{email}{d}x{d}"{body}"\n'
    if kind == "stray quote":  # strict csv stops at the x; the next cell spans lines
        return f'{email}{d}"abc"x{d}"one\n{_intruder(n, d)}two"\n'
    if kind == "long record":  # each cell under the field limit, all of them over the record's
        cell = '"' + ("w" * 60 + "\n") * 5 + _intruder(n, d) + '"'
        return d.join([email, "x", *[cell] * (RECORD_LIMIT // 300 + 1)]) + "\n"
    return email + d + d.join(["v"] * RECORD_LIMIT) + "\n"  # one physical line, cut


def _row(cells: list[str], delimiter: str, terminator: str) -> str:
    """One CSV record. csv.writer quotes a cell only for the characters of its own line
    terminator, so it writes with CRLF (quoting a CR or an LF alike), then ends as asked."""
    out = io.StringIO()
    csv.writer(out, delimiter=delimiter, lineterminator="\r\n").writerow(cells)
    return out.getvalue()[:-2] + terminator


@st.composite
def _files(draw: st.DrawFn) -> tuple[str, str, list[tuple[int, str, str | None]]]:
    """A CSV text, its line terminator, and per record (start line, email, notes or None=bad)."""
    d = draw(st.sampled_from([",", ";"]))
    terminator = draw(st.sampled_from(["\n", "\r\n"]))
    out = io.StringIO()
    out.write(_row(["email", "first_name", "notes"], d, terminator))
    expected: list[tuple[int, str, str | None]] = []
    line = 2
    for n in range(draw(st.integers(1, 8))):
        start = out.tell()
        if draw(st.booleans()):
            email, notes = f"p{n}@acme.example", draw(_TEXT)
            out.write(_row([email, draw(_NAME), notes], d, terminator))
            expected.append((line, email, notes))
        else:
            bad = draw(_bad_record(n, d))
            out.write(bad.replace("\n", terminator))
            expected.append((line, f"bad{n}@acme.example", None))
        line += csvfile.line_breaks(out.getvalue()[start:])
    return out.getvalue(), terminator, expected


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(_files())
def test_a_bad_record_is_skipped_whole_and_the_next_is_read_from_its_start(
    small_limits: None, tmp_path: Path, case: tuple[str, str, list[tuple[int, str, str | None]]]
) -> None:
    text, _, expected = case
    path = tmp_path / "prospects.csv"
    path.write_bytes(text.encode("utf-8"))
    items = list(read_prospects(path))
    got = [
        (item.line, item.email, item.extra.get("notes", ""))
        if isinstance(item, ProspectRow)
        else (item.line, None, None)
        for item in items
    ]
    assert got == [
        (line, email, notes.strip()) if notes is not None else (line, None, None)
        for line, email, notes in expected
    ]
    assert not any("evil" in item.email for item in items if isinstance(item, ProspectRow))
    assert all(
        isinstance(item, RowError) and "\n" not in item.message
        for item in items
        if not isinstance(item, ProspectRow)
    )


@settings(max_examples=500, deadline=None)
@given(
    st.lists(st.lists(_TEXT, min_size=1, max_size=5), min_size=1, max_size=6),
    st.sampled_from([",", ";"]),
    st.sampled_from(["\n", "\r\n", "\r"]),
)
def test_following_the_quotes_ends_each_record_where_csv_does(
    rows: list[list[str]], delimiter: str, terminator: str
) -> None:
    """On valid CSV, the scan that finds a bad record's end agrees with csv.reader."""
    lines = io.StringIO("".join(_row(row, delimiter, terminator) for row in rows), newline="")
    for row in rows:
        state, ended = csvfile._FIELD_START, False
        pieces = []
        while not ended:
            piece = lines.readline()
            assert piece, "the scan ran past the end of the file"
            pieces.append(piece)
            state, ended = csvfile._follow(state, piece, delimiter)
        parsed = list(csv.reader(pieces, delimiter=delimiter, skipinitialspace=True))
        assert len(parsed) == 1
        assert [cell.lstrip(" ") for cell in parsed[0]] == [cell.lstrip(" ") for cell in row]
    assert lines.readline() == ""


_NORDIC = st.text(alphabet=st.sampled_from(list("abcxyzäöåÄÖÅé -")), min_size=1, max_size=10)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(_NORDIC, min_size=1, max_size=6), st.integers(0, 5), st.booleans())
def test_an_encoding_is_decided_for_the_whole_file_or_the_file_is_refused(
    tmp_path: Path, names: list[str], odd_one: int, all_cp1252: bool
) -> None:
    """A file in one encoding reads back exactly; one line in Windows-1252 among UTF-8 lines
    with letters of their own is refused at that line."""
    lines = ["email,first_name"] + [f"p{i}@acme.example,{name}" for i, name in enumerate(names)]
    odd = 1 + odd_one % len(names)  # the index of one data line
    data = b"".join(
        (line + "\n").encode("cp1252" if all_cp1252 or n == odd else "utf-8")
        for n, line in enumerate(lines)
    )
    path = tmp_path / "names.csv"
    path.write_bytes(data)
    utf8_elsewhere = any(not line.isascii() for n, line in enumerate(lines) if n != odd)
    if not all_cp1252 and not lines[odd].isascii() and utf8_elsewhere:
        with pytest.raises(ImportError_) as info:
            read_prospects(path)
        assert info.value.line == odd + 1 and "not UTF-8" in info.value.message
        return
    rows = list(read_prospects(path))
    assert [row.first_name for row in rows if isinstance(row, ProspectRow)] == [
        name.strip() or None for name in names
    ]
