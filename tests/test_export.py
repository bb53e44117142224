"""`outreach export --replied`: what the CRM and a spreadsheet get, with strangers' formulas
neutralised, and `--excel` as Finnish and Swedish Excel open it."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from freezegun import freeze_time
from hypothesis import given, settings
from hypothesis import strategies as st

from outreach.export import FORMULA_START, csv_bytes, neutralise
from outreach.reports import EXPORT_COLUMNS
from tests.conftest import Cli, point_at_servers
from tests.dbsnapshot import snapshot
from tests.smtp_servers import RecordingSMTP
from tests.test_replies import reply_to, sent_to

if TYPE_CHECKING:
    from dovecot import Dovecot

pytest_plugins = ["dovecot"]
pytestmark = pytest.mark.timeout(90)

MONDAY_10 = datetime(2027, 1, 4, 8, 0, tzinfo=UTC)  # 10:00 in Helsinki
TUESDAY_10 = datetime(2027, 1, 5, 8, 0, tzinfo=UTC)
PHISH = '=HYPERLINK("http://evil.example/login","Your invoice")'
# Column values a list (or a stranger who filled in a web form) can carry.
HOSTILE = {
    "first_name": "@SUM(1+1)",
    "last_name": "Mäkelä",
    "company": "=cmd|' /C calc'!A0",
    "title": "-2+3",
}


@pytest.fixture
def smtp() -> RecordingSMTP:
    with RecordingSMTP() as server:
        yield server


@pytest.fixture
def replied(
    run: Cli,
    smtp: RecordingSMTP,
    dovecot_server: Dovecot,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> Cli:
    """Eve (hostile cells) and Ann were sent the cold intro; both replied, Eve with a formula."""
    rep = dovecot_server.new_user()
    monkeypatch.setenv("OUTREACH_TEST_IMAP", dovecot_server.password)
    point_at_servers(run.config, smtp.port, dovecot_server.host, dovecot_server.port, rep)
    rows = tmp_path / "list.csv"
    rows.write_text(
        "email,first_name,last_name,company,title,language\n"
        f"eve@acme.example,{HOSTILE['first_name']},{HOSTILE['last_name']},"
        f'"{HOSTILE["company"]}",{HOSTILE["title"]},en\n'
        "ann@beta.example,Ann,Öberg,Beta Ab,CTO,en\n",
        encoding="utf-8",
    )
    with freeze_time(MONDAY_10, real_asyncio=True):
        assert run("enroll", str(rows), "--sequence", "cold").exit_code == 0
        assert run("send", "--once").exit_code == 0
    with freeze_time(TUESDAY_10, real_asyncio=True):
        dovecot_server.append(rep, "INBOX", reply_to(sent_to(smtp, "eve@acme.example"), PHISH))
        dovecot_server.append(
            rep,
            "INBOX",
            reply_to(
                sent_to(smtp, "ann@beta.example"),
                "+358 40 123 4567, call me",
                sender="Ann <ann@beta.example>",
            ),
        )
        assert run("replies", "--once").exit_code == 0
    return run


def read_back(data: bytes, *, excel: bool) -> list[dict[str, str]]:
    text = data.decode("utf-8-sig" if excel else "utf-8")
    return list(csv.DictReader(io.StringIO(text, newline=""), delimiter=";" if excel else ","))


def test_export_for_excel_is_utf8_with_bom_and_semicolons(replied: Cli, tmp_path: Path) -> None:
    out = tmp_path / "replies.csv"
    before = snapshot(replied.config)
    result = replied("export", "--replied", "--excel", "-o", str(out))
    assert result.exit_code == 0, result.output
    assert result.stderr == f"2 row(s) written to {out}\n"
    data = out.read_bytes()
    assert data.startswith(b"\xef\xbb\xbf" + ";".join(EXPORT_COLUMNS).encode() + b"\r\n")
    rows = read_back(data, excel=True)
    assert [(r["email"], r["last_name"]) for r in rows] == [
        ("eve@acme.example", "Mäkelä"),
        ("ann@beta.example", "Öberg"),
    ]
    assert snapshot(replied.config) == before  # an export only reads


def test_formulas_from_prospect_data_and_reply_text_are_neutralised(
    replied: Cli, tmp_path: Path
) -> None:
    for excel in (False, True):
        out = tmp_path / f"replies-{excel}.csv"
        options = ["--excel"] if excel else []
        assert replied("export", "--replied", *options, "-o", str(out)).exit_code == 0
        eve, ann = read_back(out.read_bytes(), excel=excel)
        for column, value in HOSTILE.items():
            expected = value if column == "last_name" else "'" + value
            assert eve[column] == expected, column
        assert eve["reply_text"] == "'" + PHISH
        assert ann["reply_text"].startswith("'+358 40 123 4567")
        cells = [cell for row in (eve, ann) for cell in row.values()]
        assert not [cell for cell in cells if cell.startswith(FORMULA_START)]
    # --json is for programs, not spreadsheets: the data as it is.
    rows = replied.json("export", "--replied")
    assert rows[0]["company"] == HOSTILE["company"] and rows[0]["reply_text"] == PHISH


def test_export_to_standard_output(replied: Cli) -> None:
    result = replied("export", "--replied", "--excel")
    assert result.exit_code == 0
    assert result.stdout_bytes.startswith(b"\xef\xbb\xbfemail;first_name;")
    assert len(read_back(result.stdout_bytes, excel=True)) == 2


def test_export_into_a_missing_folder_is_one_line_and_keeps_nothing_half_written(
    run: Cli, tmp_path: Path
) -> None:
    target = tmp_path / "no-such-folder" / "replies.csv"
    result = run("export", "--replied", "-o", str(target))
    assert result.exit_code == 1
    assert result.stderr == (
        f"{target}: cannot write the export: No such file or directory "
        "(check that the folder exists and is writable)\n"
    )
    assert list(tmp_path.iterdir()) == [tmp_path / "ws"]  # no stray temporary file


def test_an_export_replaces_the_previous_file_whole(replied: Cli, tmp_path: Path) -> None:
    out = tmp_path / "replies.csv"
    out.write_text("a longer previous export\n" * 10_000, encoding="utf-8")
    assert replied("export", "--replied", "-o", str(out)).exit_code == 0
    assert [r["email"] for r in read_back(out.read_bytes(), excel=False)] == [
        "eve@acme.example",
        "ann@beta.example",
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["list.csv", "replies.csv", "ws"]


# --- the rule itself, as a property ------------------------------------------------------------


@settings(max_examples=500, deadline=None)
@given(
    st.lists(
        st.text(alphabet=st.sampled_from(list("=+-@\t\r\n ;,\"'aä1(")), max_size=12) | st.none(),
        min_size=1,
        max_size=4,
    ),
    st.booleans(),
)
def test_no_cell_read_back_starts_a_formula_and_each_keeps_its_text(
    cells: list[str | None], excel: bool
) -> None:
    columns = [f"c{i}" for i in range(len(cells))]
    data = csv_bytes(columns, [dict(zip(columns, cells, strict=True))], excel=excel)
    [row] = read_back(data, excel=excel)
    for column, original in zip(columns, cells, strict=True):
        got = row[column]
        assert not got.startswith(FORMULA_START)
        text = original or ""
        assert got == ("'" + text if text[:1] and text[0] in "=+-@\t\r" else text)
        assert neutralise(original) == got
