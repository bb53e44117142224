"""CSV for people's spreadsheets, safe to open: every CSV that outreach writes goes through here.

Cells come from strangers (a prospect's company as the list had it, the text of a reply), and
a spreadsheet runs a cell that begins with ``=``, ``+``, ``-`` or ``@`` as a formula
(``=HYPERLINK(...)`` phishes, ``=cmd|...`` once ran programs); a leading tab or carriage
return hides such a start from a glance. OWASP's rule: such a cell gets a leading ``'``, which
spreadsheets read as "this is text" and do not show.

``excel=True`` writes what Finnish and Swedish Excel open by double-click: UTF-8 with a BOM
(without it Excel reads Windows-1252 and garbles "Mäkelä") and ``;`` between cells (their list
separator is ``;``, because ``,`` is the decimal point there).
"""

from __future__ import annotations

import csv
import io
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO

from outreach.errors import OutreachError

FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def neutralise(value: Any) -> str:
    """The cell's text, with a ``'`` in front when a spreadsheet would run it as a formula."""
    text = "" if value is None else str(value)
    return "'" + text if text.startswith(FORMULA_START) else text


def csv_bytes(
    columns: Sequence[str], rows: Iterable[Mapping[str, Any]], *, excel: bool = False
) -> bytes:
    """The whole document: a header of ``columns``, then one neutralised line per row."""
    out = io.StringIO(newline="")
    writer = csv.writer(out, delimiter=";" if excel else ",", lineterminator="\r\n")
    writer.writerow([neutralise(name) for name in columns])
    writer.writerows([neutralise(row.get(name)) for name in columns] for row in rows)
    return out.getvalue().encode("utf-8-sig" if excel else "utf-8")


def write_csv(
    target: Path | BinaryIO,
    columns: Sequence[str],
    rows: Iterable[Mapping[str, Any]],
    *,
    excel: bool = False,
) -> None:
    """Write :func:`csv_bytes` to a stream, or to a file path all at once: the file is
    written beside its final name and renamed into place, so a failure half-way never leaves
    a truncated export where a good one was."""
    data = csv_bytes(columns, rows, excel=excel)
    if not isinstance(target, Path):
        target.write(data)
        target.flush()
        return
    try:
        fd, temporary = tempfile.mkstemp(
            dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"
        )
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(temporary, target)
        except BaseException:
            os.unlink(temporary)
            raise
    except OSError as exc:
        raise OutreachError(
            f"cannot write the export: {exc.strerror or exc}",
            file=target,
            hint="check that the folder exists and is writable",
        ) from None
