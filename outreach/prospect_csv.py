"""Read a prospects CSV into validated, normalised rows: pure parsing, no database.

The file is streamed (constant memory at any size). Problems with the file as a whole raise
:class:`ImportError_` before any row is produced; problems with one row come out as a
:class:`RowError` in the stream, so the caller can report every bad line at once.
"""

from __future__ import annotations

import csv
import io
import re
import unicodedata
import zoneinfo
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from outreach.csvfile import detect_encoding, records
from outreach.errors import ImportError_

PERSONAS = ("decision_maker", "buyer", "user")
LANGUAGES = ("en", "fi", "sv")
# What we know of a prospect besides the address, in the order people read it.
PROSPECT_FIELDS = (
    "first_name",
    "last_name",
    "company",
    "title",
    "linkedin",
    "persona",
    "language",
    "timezone",
)
STANDARD_FIELDS = ("email", *PROSPECT_FIELDS)
# Template variables the engine provides itself; a column may not shadow them.
RESERVED_VARIABLES = (*STANDARD_FIELDS, "sender")


@dataclass(slots=True)
class ProspectRow:
    """One accepted row. Blank cells are ``None`` (or absent from ``extra``), never ``""``."""

    line: int  # physical line where the row starts; the header is line 1
    email: str  # as returned by normalize_email
    first_name: str | None = None
    last_name: str | None = None
    company: str | None = None
    title: str | None = None
    linkedin: str | None = None
    persona: str | None = None  # one of PERSONAS
    language: str | None = None  # one of LANGUAGES
    timezone: str | None = None  # an IANA zone name, spelled canonically
    extra: dict[str, str] = field(default_factory=dict)  # other columns, keyed by slug
    # The mailbox the row asks for (a `sender` / `owner` column): an email or a mailbox's name,
    # as written; enroll matches it against the configured mailboxes.
    sender: str | None = None


@dataclass(slots=True)
class RowError:
    """A rejected row. ``message`` names the field and the value, not the line."""

    line: int
    message: str


# --- email addresses ---------------------------------------------------------------------------

# The fast path accepts only addresses that are plainly valid ASCII: a dot-atom local part
# (RFC 5322 atext) and lower-case-able letter-digit-hyphen labels with a letters-only TLD, no
# "--" anywhere in the domain (so no Punycode and no R-LDH labels), no special-use domain, at
# most 254 characters. For these email-validator returns the input unchanged apart from the
# domain's case; everything else is handed to email-validator itself, so its verdict and its
# messages are the ones we give. tests/test_prospects.py checks the agreement with hypothesis.
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_FAST_EMAIL = re.compile(rf"{_ATEXT}+(?:\.{_ATEXT}+)*@((?:{_LABEL}\.)+[A-Za-z]{{2,63}})")


@lru_cache(maxsize=1)
def _special_use() -> tuple[frozenset[str], tuple[str, ...]]:
    """email-validator's special-use domains (imported on the first address: a command that
    reads no address never loads it)."""
    import email_validator

    names = email_validator.SPECIAL_USE_DOMAIN_NAMES
    return frozenset(names), tuple("." + name for name in names)


def normalize_email(address: str) -> str:
    """Validate ``address`` and return it stripped and lower-cased.

    The domain is IDNA-normalised the way email-validator does it (``ValidatedEmail.domain``).
    Raises ``ValueError`` with email-validator's explanation when the address is not valid.
    """
    address = address.strip()
    match = _FAST_EMAIL.fullmatch(address) if len(address) <= 254 else None
    if match is not None:
        domain = match.group(1).lower()
        special, suffixes = _special_use()
        if "--" not in domain and domain not in special and not domain.endswith(suffixes):
            return address.lower()
    from email_validator import EmailNotValidError, validate_email

    try:
        valid = validate_email(address, check_deliverability=False)
    except EmailNotValidError as e:
        raise ValueError(str(e)) from None
    return valid.local_part.lower() + "@" + valid.domain


# --- headers -----------------------------------------------------------------------------------

_ALIASES = {
    "email": (
        "email",
        "e-mail",
        "email address",
        "e-mail address",
        "mail",
        "sähköposti",
        "sähköpostiosoite",
        "e-post",
        "e-postadress",
    ),
    "first_name": ("first_name", "firstname", "given name", "etunimi", "förnamn"),
    "last_name": ("last_name", "lastname", "surname", "family name", "sukunimi", "efternamn"),
    "company": (
        "company",
        "company name",
        "organization",
        "organisation",
        "yritys",
        "organisaatio",
        "företag",
    ),
    "title": ("title", "job title", "titteli", "tehtävänimike", "titel"),
    "linkedin": ("linkedin", "linkedin url", "linkedin profile"),
    "persona": ("persona",),
    "language": ("language", "lang", "kieli", "språk"),
    "timezone": ("timezone", "time zone", "tz", "aikavyöhyke"),
    # Not a prospect field: which mailbox writes to this row (enroll's rotation).
    "sender": ("sender", "owner", "owner email", "omistaja", "lähettäjä", "avsändare"),
}


def _alias_key(text: str) -> str:
    """Lower case, NFC, and runs of spaces, ``-`` and ``_`` as one space: "E-Mail" -> "e mail"."""
    return " ".join(re.split(r"[\s_-]+", unicodedata.normalize("NFC", text).lower())).strip()


_ALIAS_TO_FIELD = {_alias_key(a): name for name, aliases in _ALIASES.items() for a in aliases}


def header_key(header: str) -> str:
    """The standard field a header cell names, or else the slug of its template variable.

    ``"Sähköposti"`` -> ``"email"``, ``"Case Study"`` -> ``"case_study"``, ``"Kotisivu (URL)"``
    -> ``"kotisivu_url"``, ``"2nd line"`` -> ``"col_2nd_line"``; ``""`` when the cell has no
    letter or digit at all.
    """
    standard = _ALIAS_TO_FIELD.get(_alias_key(header))
    if standard is not None:
        return standard
    slug = re.sub(r"\W+", "_", unicodedata.normalize("NFC", header).lower()).strip("_")
    return "col_" + slug if slug[:1].isdigit() else slug


@dataclass(slots=True)
class _Layout:
    encoding: str
    delimiter: str
    header_end: int  # reader.line_num once the header row has been read
    width: int  # number of header cells, empty ones included
    standard: dict[str, int]  # field -> column index
    extras: list[tuple[str, int]]  # (slug, column index)


def _columns(
    cells: list[str], path: Path, line: int
) -> tuple[dict[str, int], list[tuple[str, int]]]:
    standard: dict[str, int] = {}
    extras: dict[str, int] = {}
    for index, cell in enumerate(cells):
        if not cell.strip():
            continue  # an unnamed column carries no variable
        key = header_key(cell) or f"col_{index + 1}"
        if _ALIAS_TO_FIELD.get(_alias_key(cell)) is not None:
            if key in standard:
                raise ImportError_(
                    f"columns {cells[standard[key]].strip()!r} and {cell.strip()!r} both mean "
                    f"{key}",
                    file=path,
                    line=line,
                    hint="keep one of them",
                )
            standard[key] = index
        elif key in RESERVED_VARIABLES:
            raise ImportError_(
                f"column {cell.strip()!r} would be the template variable {key!r}, which is "
                "reserved",
                file=path,
                line=line,
                hint="rename the column",
            )
        elif key in extras:
            raise ImportError_(
                f"columns {cells[extras[key]].strip()!r} and {cell.strip()!r} both become the "
                f"template variable {key!r}",
                file=path,
                line=line,
                hint="rename one of them",
            )
        else:
            extras[key] = index
    if "email" not in standard:
        raise ImportError_(
            "no email column",
            file=path,
            line=line,
            hint="name one column email, e-mail or sähköposti",
        )
    return standard, list(extras.items())


# --- the file ----------------------------------------------------------------------------------

# A header names columns: a few KB even with hundreds of them. Anything longer is not a header
# (a binary file, one huge line), and reading it whole would only cost memory.
MAX_HEADER = 64 * 1024


def _header(path: Path, encoding: str) -> tuple[str, int, list[str], int]:
    """Find the header: (delimiter, line where it starts, its cells, line where it ends)."""
    too_long = ImportError_(
        f"the header row is longer than {MAX_HEADER:,} characters",
        file=path,
        hint="is this a CSV file? The first row must name the columns",
    )
    with path.open(encoding=encoding, newline="") as f:
        line = 0
        text = ""
        delimiter = None
        while not text.strip():
            text = f.readline(MAX_HEADER + 1)
            if not text:
                raise ImportError_("no header row", file=path, line=max(line, 1))
            line += 1
            if len(text) > MAX_HEADER:
                too_long.line = line
                raise too_long
            if delimiter is None and re.fullmatch(r"\s*sep=[,;]\s*", text, re.I):
                delimiter = text.strip()[-1]  # Excel's "sep=;" hint line
                text = ""
        start = line
        too_long.line = start
        # A quoted cell with a line break in it.
        while text.count('"') % 2 and (more := f.readline(MAX_HEADER + 1 - len(text))):
            text += more
            line += 1
            if len(text) > MAX_HEADER:
                raise too_long
    if delimiter is None:
        outside = re.sub(r'"[^"]*"', "", text)
        delimiter = ";" if outside.count(";") > outside.count(",") else ","
    cells = next(csv.reader(io.StringIO(text, newline=""), delimiter=delimiter), [])
    return delimiter, start, cells, line


def _layout(path: Path) -> _Layout:
    if not path.is_file():
        what = "no such file" if not path.exists() else "not a file"
        raise ImportError_(what, file=path)
    encoding = detect_encoding(path)
    delimiter, start, cells, end = _header(path, encoding)
    standard, extras = _columns(cells, path, start)
    return _Layout(encoding, delimiter, end, len(cells), standard, extras)


# --- values ------------------------------------------------------------------------------------

_PERSONA_WORDS = {
    "decision_maker": (
        "decision_maker",
        "decision maker",
        "dm",
        "päättäjä",
        "päätöksentekijä",
        "beslutsfattare",
    ),
    "buyer": ("buyer", "ostaja", "köpare"),
    "user": ("user", "käyttäjä", "användare"),
}
_PERSONA = {_alias_key(w): p for p, words in _PERSONA_WORDS.items() for w in words}
_LANGUAGE_WORDS = {
    "en": ("en", "eng", "english", "englanti", "engelska"),
    "fi": ("fi", "fin", "finnish", "suomi", "finska"),
    "sv": ("sv", "swe", "swedish", "svenska", "ruotsi"),
}
_LANGUAGE = {w: code for code, words in _LANGUAGE_WORDS.items() for w in words}
_LANGUAGE_TAG = re.compile(r"(en|fi|sv)(?:[-_][a-z0-9]{1,8})+")
# A line break or control character in a name would end up inside a mail header.
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029]")


@lru_cache(maxsize=512)
def _persona(value: str) -> str | None:
    return _PERSONA.get(_alias_key(value))


@lru_cache(maxsize=512)
def _language(value: str) -> str | None:
    value = unicodedata.normalize("NFC", value).lower()
    tag = _LANGUAGE_TAG.fullmatch(value)
    return _LANGUAGE.get(value) or (tag.group(1) if tag else None)


@lru_cache(maxsize=1)
def _zones() -> dict[str, str]:
    names = zoneinfo.available_timezones() - {"localtime", "Factory"}
    return {name.lower(): name for name in names}


@lru_cache(maxsize=1024)
def _zone(value: str) -> str | None:
    return _zones().get(value.lower())


def columns(path: Path) -> set[str]:
    """The standard fields (and ``sender``) the file's header names; raises like the reader."""
    return set(_layout(Path(path)).standard)


def _show(value: str, limit: int = 60) -> str:
    return repr(value if len(value) <= limit else value[: limit - 3] + "...")


# --- the rows ----------------------------------------------------------------------------------


def read_prospects(
    path: Path, *, on_progress: Callable[[int], None] | None = None
) -> Iterator[ProspectRow | RowError]:
    """Stream the rows of the prospects CSV at ``path``.

    Raises :class:`ImportError_` at once (before any row) if the file cannot be used at all.
    ``on_progress`` gets the number of bytes read so far every 1000 rows and at the end.
    """
    path = Path(path)
    layout = _layout(path)
    return _rows(path, layout, on_progress)


def _rows(
    path: Path, layout: _Layout, on_progress: Callable[[int], None] | None
) -> Iterator[ProspectRow | RowError]:
    width = layout.width
    # Absent fields point at the blank cell appended to every row.
    col = {name: layout.standard.get(name, width) for name in STANDARD_FIELDS}
    i_email, i_first, i_last, i_company, i_title, i_linkedin, i_persona, i_language, i_tz = (
        col[name] for name in STANDARD_FIELDS
    )
    extras = layout.extras
    i_sender = layout.standard.get("sender", width)
    pad = [""] * (width + 1)
    with path.open("rb") as raw, io.TextIOWrapper(raw, encoding=layout.encoding, newline="") as f:
        count = 0
        data = 0  # rows that are not blank, good or bad
        for line, row in records(f, layout.delimiter):
            if line <= layout.header_end:
                continue
            count += 1
            if on_progress is not None and count % 1000 == 0:
                on_progress(raw.tell())
            if isinstance(row, str):
                data += 1
                yield RowError(line, row)
                continue
            problems: list[str] = []
            n = len(row)
            if n > width:
                if any(cell.strip() for cell in row[width:]):
                    problems.append(f"the row has {n} cells but the header has {width}")
                del row[width:]
                n = width
            row += pad[n:]
            email = row[i_email].strip()
            first = row[i_first].strip()
            last = row[i_last].strip()
            company = row[i_company].strip()
            title = row[i_title].strip()
            linkedin = row[i_linkedin].strip()
            persona = row[i_persona].strip()
            language = row[i_language].strip()
            tz = row[i_tz].strip()
            if not email:
                if not any(cell.strip() for cell in row):
                    continue  # a blank row
                problems.append("email is missing")
            else:
                try:
                    email = normalize_email(email)
                except ValueError as e:
                    problems.append(f"email {_show(email)} is not a valid address: {e}")
            data += 1
            if _CONTROL.search(
                f"{first}\t{last}\t{company}\t{title}\t{linkedin}\t{persona}\t{language}\t{tz}"
            ):
                values = (first, last, company, title, linkedin, persona, language, tz)
                for name, value in zip(STANDARD_FIELDS[1:], values, strict=True):
                    if _CONTROL.search(value):
                        problems.append(
                            f"{name} {_show(value)} contains a line break or control character"
                        )
            if persona:
                canonical = _persona(persona)
                if canonical is None:
                    problems.append(
                        f"persona {_show(persona)} is not recognised "
                        "(use decision_maker, buyer or user)"
                    )
                persona = canonical or ""
            if language:
                code = _language(language)
                if code is None:
                    problems.append(
                        f"language {_show(language)} is not supported (use en, fi or sv)"
                    )
                language = code or ""
            if tz:
                zone = _zone(tz)
                if zone is None:
                    problems.append(
                        f"timezone {_show(tz)} is not an IANA time zone (like Europe/Helsinki)"
                    )
                tz = zone or ""
            if problems:
                yield RowError(line, "; ".join(problems))
                continue
            yield ProspectRow(
                line,
                email,
                first or None,
                last or None,
                company or None,
                title or None,
                linkedin or None,
                persona or None,
                language or None,
                tz or None,
                {slug: value for slug, i in extras if (value := row[i].strip())},
                row[i_sender].strip() or None,
            )
        if on_progress is not None:
            on_progress(raw.tell())
    if not data:
        raise ImportError_(
            "the file has a header but no rows: nothing to import",
            file=path,
            line=layout.header_end,
        )
