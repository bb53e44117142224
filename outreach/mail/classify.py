"""What an inbound message is: a bounce, an auto-reply, an unsubscribe request or a human reply.

Pure: no I/O and no clock (`now` is passed in). The decisions are taken in that order, and each
verdict names the rule that took it, so a rep can see why. The phrase tables a rep reads and
extends live in `outreach.mail.reply_rules`. Libraries do the format work: flufl.bounce knows the
bounce formats, mail-parser-reply strips quoted history (taught Finnish here), dateparser reads
out-of-office return dates.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from email.header import decode_header, make_header
from email.iterators import typed_subpart_iterator
from email.message import Message
from email.parser import HeaderParser
from email.utils import getaddresses
from html.parser import HTMLParser
from typing import Literal, cast

from dateparser.search import search_dates
from flufl.bounce import all_failures

from outreach.mail.reply_rules import (
    AUTO_REPLY_BODY,
    AUTO_REPLY_SUBJECTS,
    BOUNCE_SENDERS,
    BOUNCE_SUBJECTS,
    DELAY_SUBJECTS,
    NEGATIVE,
    POSITIVE,
    RETURN_DAY_WORDS,
    UNSUBSCRIBE,
    QuotedHistory,
    all_matches,
    first_match,
    negator_near,
)

Kind = Literal["reply", "auto_reply", "bounce", "unsubscribe"]
Sentiment = Literal["positive", "neutral", "negative"]


@dataclass(frozen=True)
class Classified:
    """The verdict on one inbound message, with the rule that decided it."""

    kind: Kind
    # reply (and unsubscribe, auto_reply): the new text, quoted history and signature stripped
    text: str = ""
    sentiment: Sentiment | None = None
    rule: str = ""  # which rule fired, e.g. "fi: 'ei kiinnosta'", shown to the rep
    returns_on: date | None = None  # auto_reply: the return date, if one can be read
    hard: bool | None = None  # bounce: a permanent failure (5.x.x) rather than a temporary one
    failed: tuple[str, ...] = ()  # bounce: the addresses that failed that way


def classify(
    message: Message, *, now: datetime, unsubscribe_addresses: Collection[str] = ()
) -> Classified:
    """Decide what `message` is: bounce, then auto-reply, then unsubscribe, else a reply."""
    report_type = _report_type(message)
    bounce = _bounce(message, report_type)
    if bounce is not None:
        return bounce
    text = reply_text(message)
    subject = _header(message, "Subject")
    rule = _auto_reply_rule(message, report_type, subject, text)
    if rule:
        return Classified(
            "auto_reply", text=text, rule=rule, returns_on=_return_date(f"{subject}\n{text}", now)
        )
    rule = _addressed_to(message, unsubscribe_addresses)
    if not rule and (hit := first_match(UNSUBSCRIBE, text)):
        rule = f"{hit[0]}: '{hit[1]}'"
    if rule:
        return Classified("unsubscribe", text=text, rule=rule)
    sentiment, rule = sentiment_of(text)
    return Classified("reply", text=text, sentiment=sentiment, rule=rule)


def sentiment_of(text: str) -> tuple[Sentiment, str]:
    """Sentiment of a reply's new text and the rule that decided it.

    Negative phrases win; then the first positive phrase that no negator precedes in its clause
    ("not really interested" is negative, not positive); neutral when no rule matches.
    """
    hit = first_match(NEGATIVE, text)
    if hit:
        return "negative", f"{hit[0]}: '{hit[1]}'"
    negated: str | None = None
    for language, phrase, match, clean in all_matches(POSITIVE, text):
        negator = negator_near(clean, match, language)
        if negator is None:
            return "positive", f"{language}: '{phrase}'"
        negated = negated or f"{language}: '{phrase}' negated by '{negator}'"
    if negated:
        return "negative", negated
    return "neutral", "no sentiment rule matched"


# --- referenced ids -------------------------------------------------------------------------

_MSG_ID = re.compile(r"<([^<>]+)>")


def referenced_ids(message: Message) -> list[str]:
    """Message-IDs in In-Reply-To, then References, in order, each once, as "<...>"."""
    ids: list[str] = []
    for name in ("In-Reply-To", "References"):
        for value in message.get_all(name) or []:
            raw = str(value)
            found = _MSG_ID.findall(raw)
            if not found:  # a broken client's bare id
                found = [token for token in raw.split() if "@" in token]
            for item in found:
                normalised = "<" + re.sub(r"\s+", "", item) + ">"
                if normalised != "<>" and normalised not in ids:
                    ids.append(normalised)
    return ids


def returned_ids(message: Message) -> list[str]:
    """The Message-IDs of the original message a bounce returns (its ``message/rfc822`` or
    ``text/rfc822-headers`` part), so a bounce is matched to the message it names."""
    ids: list[str] = []
    for part in message.walk():
        kind = part.get_content_type()
        if kind in ("message/rfc822", "message/global"):
            payload = part.get_payload()
            inner = payload[0] if isinstance(payload, list) and payload else None
            value = inner.get("Message-ID") if isinstance(inner, Message) else None
        elif kind in ("text/rfc822-headers", "message/rfc822-headers"):
            raw = part.get_payload(decode=True)
            text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else ""
            value = HeaderParser().parsestr(text, headersonly=True).get("Message-ID")
        else:
            continue
        for item in _MSG_ID.findall(str(value or "")):
            normalised = "<" + re.sub(r"\s+", "", item) + ">"
            if normalised not in ids:
                ids.append(normalised)
    return ids


# --- the new text of a reply ----------------------------------------------------------------


def reply_text(message: Message) -> str:
    """The new text of a reply: the plain part (or the HTML part as crude text), with quoted
    history (English, Finnish and Swedish client headers, "> " lines) and the "-- " signature
    tail stripped."""
    body = _body_text(message).replace("\r\n", "\n").replace("\r", "\n").replace("\xa0", " ")
    if not body.strip():
        return ""
    fragments = QuotedHistory(text=body, languages=["fi", "sv", "en"]).read()
    first = fragments.replies[0] if fragments.replies else None
    text = str(first.content) if first else body
    if first is not None and first.headers:  # the text opens with quoted history
        text = text.replace(str(first.headers), "", 1)
    lines: list[str] = []
    for line in text.split("\n"):
        if line.rstrip() == "--":  # RFC 3676 signature separator ("-- ", stripped by the parser)
            break
        if not line.lstrip().startswith(">"):
            lines.append(line.rstrip())
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def _body_text(part: Message, top: bool = True) -> str:
    """The readable text of a message: plain preferred to HTML, attachments skipped."""
    if not top and part.get_content_maintype() == "message":
        return ""  # an attached or forwarded message is not the new text
    if part.get_content_disposition() == "attachment":
        return ""
    if part.is_multipart():
        subparts = [p for p in part.get_payload() if isinstance(p, Message)]
        if part.get_content_type() == "multipart/alternative" and subparts:
            plain = [p for p in subparts if p.get_content_type() == "text/plain"]
            return _body_text((plain or subparts[-1:])[0], top=False)
        return "\n".join(t for t in (_body_text(p, top=False) for p in subparts) if t)
    ctype = part.get_content_type()
    if ctype not in ("text/plain", "text/html"):
        return ""
    text = _decoded(part)
    return html_to_text(text) if ctype == "text/html" else text


def _decoded(part: Message) -> str:
    payload = part.get_payload(decode=True)
    if not isinstance(payload, bytes):
        return str(part.get_payload())
    charset = part.get_content_charset()
    try:
        return payload.decode(charset or "utf-8")
    except LookupError:  # a charset Python does not know
        return payload.decode("utf-8", errors="replace")
    except UnicodeDecodeError:  # mislabelled, or 8-bit text with no charset: Windows' is likeliest
        return payload.decode(charset or "cp1252", errors="replace")


class _HtmlText(HTMLParser):
    """Crude HTML to text: block tags end lines, blockquote lines get "> " like plain quoting."""

    BLOCKS = frozenset("p div br tr li ul ol table h1 h2 h3 h4 hr pre blockquote".split())
    HIDDEN = frozenset({"style", "script", "head", "title"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.lines: list[str] = []
        self.current: list[str] = []
        self.depth = self.hidden = 0

    def flush(self) -> None:
        line, self.current = " ".join("".join(self.current).split()), []
        if line or (self.lines and self.lines[-1]):
            self.lines.append("> " * self.depth + line if line else "")

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.hidden += tag in self.HIDDEN
        if tag in self.BLOCKS:
            self.flush()
            self.depth += tag == "blockquote"

    def handle_endtag(self, tag: str) -> None:
        self.hidden -= tag in self.HIDDEN and self.hidden > 0
        if tag in self.BLOCKS:
            self.flush()
            self.depth -= tag == "blockquote" and self.depth > 0

    def handle_data(self, data: str) -> None:
        if not self.hidden:
            self.current.append(data)


def html_to_text(html: str) -> str:
    """HTML as plain lines; quoted (blockquote) lines start with "> "."""
    parser = _HtmlText()
    parser.feed(html)
    parser.close()
    parser.flush()
    return "\n".join(parser.lines).strip()


# --- bounces ----------------------------------------------------------------------------------

_STATUS = re.compile(r"(?<![\d.])([245])\.\d{1,3}\.\d{1,3}(?![\d.])")


def _bounce(message: Message, report_type: str) -> Classified | None:
    hard: dict[str, str] = {}  # address (casefolded) -> as written; dicts keep the order
    soft: dict[str, str] = {}
    codes: list[str] = []
    blocks = _dsn_blocks(message) if report_type == "delivery-status" else []
    for address, action, status in blocks:
        if not action.startswith(("fail", "error", "delayed")):
            continue  # delivered, relayed, expanded: not a failure
        codes.append(status)
        is_hard = status[0] == "5" if status[:1] in ("4", "5") else action != "delayed"
        (hard if is_hard else soft).setdefault(address.casefold(), address)
    subject = _header(message, "Subject")
    from_daemon = _from_mailer_daemon(message)
    failure_subject = first_match(BOUNCE_SUBJECTS, subject)
    temporary, permanent = _flufl_failures(message, from_daemon, failure_subject)
    for found, target in ((permanent, hard), (temporary, soft)):
        for raw in sorted(found):
            address = raw.decode("ascii", "replace")
            if address.casefold() not in hard and address.casefold() not in soft:
                target[address.casefold()] = address
    if hard or soft:
        how = "DSN (RFC 3464)" if blocks else "flufl.bounce"
        rule = f"bounce: {how}" + (f" status {', '.join(dict.fromkeys(codes))}" if codes else "")
        return Classified("bounce", rule=rule, hard=bool(hard), failed=(*(hard or soft).values(),))
    if report_type == "delivery-status" and blocks:
        return None  # a delivery report without a failure (e.g. "delivered")
    if report_type != "delivery-status" and not (from_daemon and failure_subject):
        return None
    # A report we could not read, or a daemon's failure notice in no format flufl knows.
    body = _body_text(message)
    classes = [m.group(1) for m in _STATUS.finditer(body)]
    is_hard = "5" in classes or ("4" not in classes and not first_match(DELAY_SUBJECTS, subject))
    failed = [a for _, a in getaddresses(message.get_all("X-Failed-Recipients") or [])]
    failed += re.findall(r"^\s*<([^<>\s]+@[^<>\s]+)>:", body, re.MULTILINE)
    why = f"'{failure_subject[1]}'" if failure_subject else "delivery-status report"
    rule = f"bounce: {why} from {from_daemon or 'a mail system'}"
    return Classified("bounce", rule=rule, hard=is_hard, failed=(*dict.fromkeys(failed),))


def may_be_bounce(message: Message) -> bool:
    """Whether `message` has a trait of a bounce (a mail system's sender, subject or headers):
    only such a message can be classified as one. Cheap, headers only: it lets the inbox skip
    classifying mail that names none of our messages or prospects."""
    return bool(
        _bounce_headers(message)
        or _from_mailer_daemon(message)
        or first_match(BOUNCE_SUBJECTS, _header(message, "Subject"))
    )


def _bounce_headers(message: Message) -> bool:
    return bool(
        message.get_content_type() in ("multipart/report", "multipart/mixed")
        or str(message.get("Return-Path", "")).strip() == "<>"  # bounces go to the null sender
        or message.get("X-Failed-Recipients")
        or message.get("Auto-Submitted")
    )


def _flufl_failures(message: Message, *traits: object) -> tuple[frozenset[bytes], ...]:
    """flufl.bounce's (temporary, permanent) addresses, asked only of a message with some trait
    of a bounce: its seventeen detectors cost milliseconds, and most inbound mail is replies."""
    if not any(traits) and not _bounce_headers(message):
        return frozenset(), frozenset()
    try:
        return all_failures(message)
    except Exception:  # a heuristic detector tripped on an odd message: that is no verdict
        return frozenset(), frozenset()


def _report_type(message: Message) -> str:
    if message.get_content_type() != "multipart/report":
        return ""
    return str(message.get_param("report-type", "", header="content-type")).lower()


def _dsn_blocks(message: Message) -> list[tuple[str, str, str]]:
    """(recipient, action, status) per recipient block of the delivery-status parts."""
    out: list[tuple[str, str, str]] = []
    for part in typed_subpart_iterator(message, "message", "delivery-status"):
        payload = cast(Message, part).get_payload()
        if isinstance(payload, str):  # not parsed into header blocks: parse them here
            payload = [HeaderParser().parsestr(b.strip()) for b in re.split(r"\n\s*\n", payload)]
        for block in payload:
            if not isinstance(block, Message):
                continue
            recipient = str(block.get("Final-Recipient") or block.get("Original-Recipient") or "")
            if not recipient:
                continue  # the per-message block
            address = recipient.split(";", 1)[-1].strip().strip("<>")
            action = str(block.get("Action", "")).strip().lower()
            status = str(block.get("Status", "")).strip().split(" ")[0]
            out.append((address, action, status))
    return out


def _from_mailer_daemon(message: Message) -> str:
    for name, address in getaddresses([_header(message, "From")]):
        if any(s in f"{name} {address.split('@')[0]}".casefold() for s in BOUNCE_SENDERS):
            return address or name
    return ""


# --- auto-replies -----------------------------------------------------------------------------


def _auto_reply_rule(message: Message, report_type: str, subject: str, text: str) -> str:
    if report_type == "disposition-notification":
        return "read receipt (RFC 8098 disposition notification)"
    if report_type == "delivery-status":
        return "delivery report without a failure"
    submitted = re.split(r"[\s;(]", _header(message, "Auto-Submitted").strip().lower())[0]
    if submitted and submitted != "no":
        return f"header Auto-Submitted: {submitted}"
    for name in ("X-Autoreply", "X-Autorespond"):
        if message.get(name) is not None and _header(message, name).lower() not in ("no", "0"):
            return f"header {name}: {_header(message, name)}".rstrip(": ")
    precedence = _header(message, "Precedence").strip().lower()
    if precedence == "auto_reply":
        return "header Precedence: auto_reply"
    hit = first_match(AUTO_REPLY_SUBJECTS, subject)
    if hit:  # Precedence bulk/junk alone is a newsletter; with such a subject, an auto-reply
        extra = f"Precedence: {precedence} + " if precedence in ("bulk", "junk") else ""
        return f"{extra}subject {hit[0]}: '{hit[1]}'"
    hit = first_match(AUTO_REPLY_BODY, text)
    if hit:
        return f"text {hit[0]}: '{hit[1]}'"
    return ""


_DATE_SHAPE = re.compile(r"\d\s?[./-]\s?\d|[^\W\d_]{3,}")
_MAX_DATE_TEXT = 3000


def _return_date(text: str, now: datetime) -> date | None:
    """The earliest plausible date after `now` (and within a year) written in `text`.

    Each language is searched on its own: given several, dateparser settles on one language for
    the whole text, and a phone number can make it pick the wrong one. The earliest, not the
    first, because a "from 4 January" already past is rolled into next year by the preference
    for future dates.
    """
    base = now.replace(tzinfo=None)
    settings = {"PREFER_DATES_FROM": "future", "DATE_ORDER": "DMY", "RELATIVE_BASE": base}
    best: date | None = None
    for language in ("fi", "sv", "en"):
        try:
            found = search_dates(text[:_MAX_DATE_TEXT], languages=[language], settings=settings)
        except Exception:  # dateparser can trip on odd input; a missing date is the fallback
            found = None
        for written, when in found or []:
            plausible = (
                _DATE_SHAPE.search(written)
                if re.search(r"\d", written)
                else RETURN_DAY_WORDS.search(written)
            )
            day = when.date()
            if plausible and base.date() < day <= (base + timedelta(days=366)).date():
                best = day if best is None else min(best, day)
    return best


# --- unsubscribe by address, headers ---------------------------------------------------------


def _addressed_to(message: Message, unsubscribe_addresses: Collection[str]) -> str:
    wanted = {_bare(a) for a in unsubscribe_addresses if a.strip()}
    if not wanted:
        return ""
    names = ("To", "Cc", "Delivered-To", "X-Original-To")
    for _, address in getaddresses([_header(message, name) for name in names]):
        local, _at, domain = _bare(address).partition("@")
        untagged = f"{local.split('+')[0]}@{domain}"
        if _bare(address) in wanted or untagged in wanted:
            return f"sent to the unsubscribe address {address}"
    return ""


def _bare(address: str) -> str:
    """An address as compared: no "mailto:", no "?subject=...", casefolded."""
    return address.strip().removeprefix("mailto:").split("?")[0].strip("<> ").casefold()


def _header(message: Message, name: str) -> str:
    """A header's decoded, unfolded value (all occurrences joined), or ""."""
    out = []
    for value in message.get_all(name) or []:
        try:
            text = str(make_header(decode_header(str(value))))
        except (LookupError, UnicodeDecodeError, ValueError):
            text = str(value)
        out.append(" ".join(text.split()))
    return ", ".join(out)
