"""Reading a CSV file that anyone may have written: its encoding, and its records.

Two things the stdlib :mod:`csv` module leaves to its caller:

- **Which encoding.** UTF-8 when every byte is UTF-8, Windows-1252 when none of the non-ASCII
  bytes is; a file that is both (one line pasted in from another export) is refused at the
  line of its first byte that is not UTF-8, because read either way some names come out
  garbled ("MÃ¤kelÃ¤").
- **Where a bad record ends.** After a ``csv.Error`` (a cell over the field size limit, a
  stray character after a closing quote) the reader goes on at the next physical line, which
  may be inside the quoted cell that failed: a line of that cell would then be read as a
  record of its own, and imported. :func:`records` follows the quotes from the start of the
  bad record, the way the reader would have without the error, and goes on after its true end.
"""

from __future__ import annotations

import codecs
import csv
import re
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

from outreach.errors import ImportError_

# Characters in one record (all its lines). Longer is refused without keeping it in memory.
MAX_RECORD = 1 << 20
_CHUNK = 1 << 20
_CP1252_UNDEFINED = re.compile(rb"[\x81\x8d\x8f\x90\x9d]")
# Decoded with surrogateescape, a byte that is not UTF-8 becomes one of these code points.
_NOT_UTF8 = re.compile("[\udc80-\udcff]")
_UTF8_NON_ASCII = re.compile("[^\x00-\x7f\udc80-\udcff]")


def line_breaks(text: str, end: int | None = None) -> int:
    """How many lines end in ``text[:end]``, counted as the reader counts them (LF, CRLF, CR)."""
    text = text[:end] if end is not None else text
    return text.count("\n") + text.count("\r") - text.count("\r\n")


def detect_encoding(path: Path) -> str:
    """``utf-8-sig`` or ``utf-8`` if the whole file is UTF-8, ``cp1252`` if no part of it is.

    Raises :class:`ImportError_` for an empty or UTF-16 file, for a mix of UTF-8 and other
    bytes (at the line of the first byte that is not UTF-8), and for a byte that Windows-1252
    leaves undefined (up front, rather than halfway through the rows).
    """
    try:
        with path.open("rb") as f:
            head = f.read(4)
            if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
                raise ImportError_(
                    "the file is UTF-16 text", file=path, hint="save it as CSV UTF-8"
                )
            if not head.removeprefix(codecs.BOM_UTF8):
                raise ImportError_("the file is empty", file=path, line=1)
            f.seek(0)
            decoder = codecs.getincrementaldecoder("utf-8")(errors="surrogateescape")
            line = 1
            utf8_seen = False  # a valid non-ASCII UTF-8 sequence (a BOM counts)
            first_bad: tuple[int, int] | None = None  # (line, byte) of the first non-UTF-8
            while True:
                chunk = f.read(_CHUNK)
                text = decoder.decode(chunk, final=not chunk)
                utf8_seen = utf8_seen or _UTF8_NON_ASCII.search(text) is not None
                if first_bad is None:
                    bad = _NOT_UTF8.search(text)
                    if bad is None:
                        line += line_breaks(text)
                    else:
                        byte = ord(text[bad.start()]) - 0xDC00
                        first_bad = (line + line_breaks(text, bad.start()), byte)
                if utf8_seen and first_bad is not None:
                    raise ImportError_(
                        f"byte 0x{first_bad[1]:02x} is not UTF-8, unlike the rest of the file",
                        file=path,
                        line=first_bad[0],
                        hint="a mix of encodings would garble names: retype that line, or save "
                        "the whole file as CSV UTF-8",
                    )
                if not chunk:
                    break
            if first_bad is None:
                return "utf-8-sig" if head.startswith(codecs.BOM_UTF8) else "utf-8"
            f.seek(0)
            line = 1
            while chunk := f.read(_CHUNK):
                undefined = _CP1252_UNDEFINED.search(chunk)
                if undefined is not None:
                    line += chunk.count(b"\n", 0, undefined.start())
                    raise ImportError_(
                        f"byte 0x{chunk[undefined.start()]:02x} is neither UTF-8 nor "
                        "Windows-1252 text",
                        file=path,
                        line=line,
                        hint="save the file as CSV UTF-8",
                    )
                line += chunk.count(b"\n")
            return "cp1252"
    except OSError as e:
        raise ImportError_(f"cannot read the file: {e.strerror or e}", file=path) from None


# --- records -----------------------------------------------------------------------------------


class _TooLong(Exception):
    """The record being read has passed MAX_RECORD characters."""


class _Lines:
    """The physical lines handed to ``csv.reader``: counted, and those of the current record
    kept (at most MAX_RECORD characters) so that a bad record's end can be found."""

    __slots__ = ("_readline", "cut", "line", "record", "size")

    def __init__(self, f: TextIO) -> None:
        self._readline = f.readline
        self.line = 0  # physical lines read completely
        self.record: list[str] = []
        self.size = 0
        self.cut = False  # the last line kept was cut at MAX_RECORD

    def __iter__(self) -> _Lines:
        return self

    def __next__(self) -> str:
        room = MAX_RECORD - self.size
        text = self._readline(room + 1)
        if not text:
            raise StopIteration
        self.record.append(text)
        if len(text) > room:  # a line this long is cut; the rest is skipped with the record
            self.cut = True
            raise _TooLong
        self.size += len(text)
        self.line += 1
        return text


# States of the quote-following scan, as csv.reader's own (Modules/_csv.c).
_FIELD_START, _IN_FIELD, _IN_QUOTES, _QUOTE_IN_QUOTES = range(4)


def _follow(state: int, text: str, delimiter: str) -> tuple[int, bool]:
    """Scan one piece of a line from ``state``: (the state after it, whether the record ended).

    ``text`` is a line or a piece of one (readline never returns a line break in the middle),
    so the record can only end at its last character. Quotes open a cell only at its start
    (after spaces: the reader skips initial spaces); ``""`` inside quotes is a quote; anything
    else after a closing quote is an error for the strict reader, and the scan goes on as a
    lenient reader would, with the rest as part of the cell.
    """
    if text.endswith("\r\n"):
        body, ends = text[:-2], True
    elif text.endswith(("\r", "\n")):
        body, ends = text[:-1], True
    else:
        body, ends = text, False
    i, n = 0, len(body)
    while i < n:
        if state == _IN_QUOTES:
            quote = body.find('"', i)
            if quote < 0:
                break
            state, i = _QUOTE_IN_QUOTES, quote + 1
        elif state == _QUOTE_IN_QUOTES:
            char = body[i]
            state = _IN_QUOTES if char == '"' else _FIELD_START if char == delimiter else _IN_FIELD
            i += char in ('"', delimiter)
        elif state == _FIELD_START:
            while i < n and body[i] == " ":
                i += 1
            if i < n and body[i] == '"':
                state, i = _IN_QUOTES, i + 1
            elif i < n:
                state = _IN_FIELD
        else:
            end = body.find(delimiter, i)
            if end < 0:
                break
            state, i = _FIELD_START, end + 1
    if ends and state != _IN_QUOTES:
        return _FIELD_START, True
    return state, False


def _skip_rest(lines: _Lines, f: TextIO, delimiter: str) -> None:
    """Read past the end of the record whose lines so far are ``lines.record``."""
    state, ended = _FIELD_START, False
    for text in lines.record:
        state, ended = _follow(state, text, delimiter)
    partial = lines.cut  # the last piece kept is the start of a line not yet counted
    while not ended:
        text = f.readline(_CHUNK)
        if not text:
            lines.line += partial  # the unfinished line at the end of the file
            return
        state, ended = _follow(state, text, delimiter)
        partial = text[-1] not in "\r\n"
        lines.line += not partial


def _explain(error: csv.Error) -> str:
    message = str(error)
    if message.startswith("field larger than field limit"):
        return f"a cell is longer than {csv.field_size_limit():,} characters"
    if message == "unexpected end of data":
        return "a quoted cell is not closed before the end of the file"
    return f"the row is not valid CSV: {message}"


def records(f: TextIO, delimiter: str) -> Iterator[tuple[int, list[str] | str]]:
    """``(line, cells)`` for each record of ``f``, or ``(line, problem)`` for one that is not
    valid CSV; ``line`` is the physical line where the record starts (the first is 1).

    A bad record is skipped whole, to its true end, however many lines it spans; no record
    keeps more than MAX_RECORD characters in memory.
    """
    lines = _Lines(f)
    reader = csv.reader(lines, delimiter=delimiter, strict=True, skipinitialspace=True)
    while True:
        lines.record.clear()
        lines.size = 0
        lines.cut = False
        start = lines.line + 1
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            problem = _explain(e)
        except _TooLong:
            problem = f"the row is longer than {MAX_RECORD:,} characters"
        else:
            yield start, cells
            continue
        _skip_rest(lines, f, delimiter)
        if lines.line > start:
            problem += f" (the row spans lines {start}-{lines.line})"
        yield start, problem
