"""Build the outgoing email: headers, threading, unsubscribe links, the quoted earlier message.

Pure: everything, the ``Date`` included, comes in through :class:`Outgoing`; the sender module
only puts the result on the wire. Header text is checked before it reaches a header
(:func:`prepare`), so a line break in a name or subject raises :class:`HeaderInjection` instead
of being folded in. :func:`build_message` writes the message with the email package; the send
path's :func:`outreach.mail.wire.render_message` writes the same message as bytes, faster.
"""

from __future__ import annotations

import hashlib
import html as html_lib
import re
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime
from email import policy as email_policy
from email.headerregistry import Address, BaseHeader, UniqueAddressHeader, UnstructuredHeader
from email.message import EmailMessage
from email.policy import Policy
from email.utils import format_datetime
from typing import Any
from zoneinfo import ZoneInfo

import idna

from outreach.errors import OutreachError


@dataclass(frozen=True)
class Quote:
    """The earlier message quoted below a reply, the way mail clients do."""

    sent_at: datetime  # aware
    from_name: str
    from_email: str
    text: str  # the earlier message's plain text (which may itself end with a quote)
    timezone: str = "Europe/Helsinki"  # zone to show sent_at in


@dataclass(frozen=True)
class Outgoing:
    """Everything one outgoing message needs; :func:`build_message` turns it into MIME."""

    from_name: str
    from_email: str
    to_email: str
    to_name: str | None
    subject: str
    text: str  # plain-text body (always sent)
    html: str | None  # optional HTML alternative (already rendered and escaped by the caller)
    message_id: str  # "<...@domain>" as made by make_message_id
    date: datetime  # aware
    in_reply_to: str | None = None
    references: tuple[str, ...] = ()
    unsubscribe_mailto: str | None = None  # e.g. "unsubscribe@northwind.example"
    unsubscribe_url: str | None = None  # full https URL incl. token, made by the caller
    quote: Quote | None = None
    language: str = "en"  # for the quote attribution line: en, fi, sv


class InvalidHeader(OutreachError, ValueError):
    """A value cannot go into a mail header as given (bad address, message id, URL...)."""


class HeaderInjection(InvalidHeader):
    """A header value contains a line break or control character (CR, LF, NUL...)."""


# Characters that end a header line (str.splitlines() breaks on all of them, and so does the
# email package), plus the other C0/C1 controls and DEL: never allowed in header text.
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029]")
# Text that a mail client would decode as an RFC 2047 encoded word instead of showing it.
_ENCODED_WORD = re.compile(r"=\?[^?]*\?[bBqQ]\?[^?]*\?=")
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_DOT_ATOM = re.compile(rf"{_ATEXT}(?:\.{_ATEXT})*")
_PHRASE = re.compile(rf"{_ATEXT}(?: {_ATEXT})*")
_DOMAIN = re.compile(r"[a-z0-9_](?:[a-z0-9_-]*[a-z0-9_])?(?:\.[a-z0-9_](?:[a-z0-9_-]*[a-z0-9_])?)*")
# More than one bare address: a list, a display name, a quoted part, a comment, white space
# (``\s`` is exactly ``str.isspace``).
_NOT_BARE = re.compile(r'[,;<>"()\[\]\\\s]')
_MSG_ID = re.compile(r"<[!-;=?A-~]+@[!-;=?A-~]+>")  # printable ASCII, no < > @ inside the parts
_HTTPS_URL = re.compile(r"https://[!#-;=?-~]+")  # printable ASCII but " < >
_MAX_NAME, _MAX_TOKEN = 256, 900  # keep every serialized line well under 998 octets
_REPLY_PREFIX = re.compile(r"^\s*(?:(?:re|vs|sv|aw)\s*:\s*)+", re.IGNORECASE)


def _no_controls(value: str, field: str) -> None:
    match = _CONTROL.search(value)
    if match:
        raise HeaderInjection(
            f"contains a line break or control character ({match.group()!r})",
            field=field,
            hint="header values must be a single line",
        )


def _no_encoded_word(value: str, field: str) -> None:
    # Readers decode encoded words even where RFC 2047 forbids them (inside an address, a
    # URL): "=?utf-8?q?=0D=0ABcc:...?=" would come out as a line break and a header.
    if _ENCODED_WORD.search(value):
        raise InvalidHeader(
            "contains RFC 2047 '=?...?=' syntax, which mail clients would decode", field=field
        )


def _header_text(value: str, field: str) -> str:
    """Subject or display name on one line, trimmed, with runs of blanks made one space.

    Folding would not keep runs of blanks anyway. Names go further: any white space (no-break
    spaces included) becomes one plain space, which is also how parsers read a display name.
    """
    _no_controls(value, field)
    is_name = field.endswith("name")
    text = " ".join(value.split()) if is_name else re.sub(r"[ \t]+", " ", value).strip()
    _no_encoded_word(text, field)
    if is_name and len(text) > _MAX_NAME:
        raise InvalidHeader(f"is longer than {_MAX_NAME} characters", field=field)
    return text


def _ascii_domain(domain: str, field: str) -> str:
    if not domain.isascii():
        try:
            domain = idna.encode(domain, uts46=True).decode("ascii")
        except UnicodeError as e:  # idna.IDNAError included
            raise InvalidHeader(f"has an invalid domain: {e}", field=field) from None
    domain = domain.lower()
    if len(domain) > 253 or not _DOMAIN.fullmatch(domain):
        raise InvalidHeader(f"has an invalid domain {domain!r}", field=field)
    return domain


def _addr_spec(value: str, field: str) -> tuple[str, str]:
    """Split a bare ``local@domain`` into (local part, ASCII domain); nothing else is accepted."""
    _no_controls(value, field)
    if _NOT_BARE.search(value):
        raise HeaderInjection(f"must be one bare address, got {value!r}", field=field)
    _no_encoded_word(value, field)
    local, at, domain = value.rpartition("@")
    if not at or not _DOT_ATOM.fullmatch(local):
        raise InvalidHeader(
            f"{value!r} is not a plain ASCII local@domain address",
            field=field,
            hint="non-ASCII local parts need SMTPUTF8, which outreach does not use",
        )
    return local, _ascii_domain(domain, field)


def _msg_id(value: str, field: str) -> str:
    _no_controls(value, field)
    _no_encoded_word(value, field)
    if len(value) > _MAX_TOKEN or not _MSG_ID.fullmatch(value):
        raise InvalidHeader(f"{value!r} is not a message id like <token@domain>", field=field)
    return value


def _fold(name: str, words: list[str], policy: Policy) -> str:
    """``Name: w1 w2...``, wrapped at the spaces between words, never inside one."""
    limit = policy.max_line_length or 78
    lines = [f"{name}:"]
    for i, word in enumerate(words):
        if i and len(lines[-1]) + 1 + len(word) > limit:
            lines.append("")
        lines[-1] += " " + word
    return policy.linesep.join(lines) + policy.linesep


_Q_LITERAL = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789!*+-/")


def _encoded_words(text: str, limit: int = 75) -> list[str]:
    """RFC 2047 Q encoded words (at most ``limit`` characters each) that decode to ``text``.

    Every character, spaces included, sits inside a word, and words split only between
    characters, so a reader that drops the white space between adjacent words gets ``text``.
    """
    words, chunk = [], ""
    for char in text:
        encoded = "_" if char == " " else char
        if char not in _Q_LITERAL and char != " ":
            encoded = "".join(f"={b:02X}" for b in char.encode("utf-8"))
        if chunk and len(chunk) + len(encoded) > limit - len("=?utf-8?q??="):
            words.append(f"=?utf-8?q?{chunk}?=")
            chunk = ""
        chunk += encoded
    return [*words, f"=?utf-8?q?{chunk}?="]


class _VerbatimHeader(UnstructuredHeader, BaseHeader):
    """An ASCII header (message ids, URLs) folded only at its spaces, never re-encoded.

    The email package may turn a long word of an unstructured header into RFC 2047 encoded
    words to wrap it, which would break a long unsubscribe URL or message id.
    """

    @classmethod
    def parse(cls, value: str, kwds: dict[str, Any]) -> None:
        super().parse(value, kwds)
        kwds["decoded"] = value

    def fold(self, *, policy: Policy) -> str:
        return _fold(self.name, str(self).split(" "), policy)


def _display_name_words(name: str, limit: int = 75) -> list[str]:
    """The display name as a phrase: plain atoms, one quoted string, or encoded words (at
    most ``limit`` characters each)."""
    if _PHRASE.fullmatch(name):
        return name.split(" ")
    quoted = '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if name.isascii() and len(quoted) <= 60:
        return [quoted]
    return _encoded_words(name, limit)  # no long quoted string: it could only be folded inside


class _MailboxHeader(UniqueAddressHeader, BaseHeader):  # type: ignore[misc]  # typeshed
    """From/To with one address, read as usual but written by :func:`_display_name_words`.

    The email package's own folding (CPython 3.11) can write a long display name without its
    quotes, so that a comma in it splits the address, or drop a space between two encoded
    words; this header never lets it fold the name.
    """

    def fold(self, *, policy: Policy) -> str:
        (address,) = self.addresses
        if not address.display_name:
            return _fold(self.name, [address.addr_spec], policy)
        words = [*_display_name_words(address.display_name), f"<{address.addr_spec}>"]
        return _fold(self.name, words, policy)


def make_message_id(sender_email: str, token: str | None = None) -> str:
    """A globally unique ``<token@domain>`` under the sender's (ASCII, lowercased) domain."""
    _, domain = _addr_spec(sender_email, "sender_email")
    if token is None:
        token = f"{uuid.uuid4().hex}.{secrets.token_hex(4)}"
    _no_controls(token, "token")
    if not _DOT_ATOM.fullmatch(token):
        raise InvalidHeader(f"{token!r} is not a valid message id token", field="token")
    return _msg_id(f"<{token}@{domain}>", "message_id")


def reply_subject(first_subject: str) -> str:
    """``Re: `` plus the thread's first subject, with any Re:/Vs:/Sv:/AW: prefixes dropped."""
    return "Re: " + _REPLY_PREFIX.sub("", first_subject)


_EN_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_EN_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_FI_DAYS = ("ma", "ti", "ke", "to", "pe", "la", "su")
_SV_DAYS = ("mån", "tis", "ons", "tors", "fre", "lör", "sön")
_SV_MONTHS = (
    "jan.", "feb.", "mars", "apr.", "maj", "juni", "juli", "aug.", "sep.", "okt.", "nov.", "dec.",
)  # fmt: skip


def _attribution(quote: Quote, language: str) -> str:
    if quote.sent_at.tzinfo is None or quote.sent_at.utcoffset() is None:
        raise ValueError("quote.sent_at must be timezone-aware")
    t = quote.sent_at.astimezone(ZoneInfo(quote.timezone))
    name = " ".join(quote.from_name.split())
    who = f"{name} <{quote.from_email}>" if name else quote.from_email
    day, month = t.weekday(), t.month - 1
    lang = language.lower().replace("_", "-").split("-")[0]
    if lang == "fi":
        date = f"{_FI_DAYS[day]} {t.day}.{t.month}.{t.year}"
        return f"{date} klo {t.hour}.{t.minute:02d} {who} kirjoitti:"
    if lang == "sv":
        date = f"{_SV_DAYS[day]} {t.day} {_SV_MONTHS[month]} {t.year}"
        return f"{date} kl. {t:%H:%M} skrev {who}:"
    date = f"{_EN_DAYS[day]}, {t.day} {_EN_MONTHS[month]} {t.year}"  # English is the fallback
    return f"On {date} at {t:%H:%M}, {who} wrote:"


def _lines(text: str) -> list[str]:
    return text.replace("\r\n", "\n").replace("\r", "\n").rstrip("\n").split("\n")


def quote_text(quote: Quote, language: str) -> str:
    """The attribution line, then every line of the earlier message prefixed with ``> ``."""
    quoted = ["> " + line if line else ">" for line in _lines(quote.text)]
    return "\n".join([_attribution(quote, language), *quoted]) + "\n"


def _html_with_quote(html: str, quote: Quote, language: str) -> str:
    body = "<br>\n".join(html_lib.escape(line) for line in _lines(quote.text))
    block = (
        f'\n<div class="outreach-quote"><p>{html_lib.escape(_attribution(quote, language))}</p>\n'
        '<blockquote style="margin:0 0 0 .8ex;border-left:1px solid #ccc;padding-left:1ex">\n'
        f"{body}\n</blockquote></div>\n"
    )
    end = html.lower().rfind("</body>")
    return html + block if end < 0 else html[:end] + block + html[end:]


def _list_unsubscribe(o: Outgoing) -> str | None:
    links = []
    if o.unsubscribe_mailto is not None:
        address = o.unsubscribe_mailto.removeprefix("mailto:")
        local, domain = _addr_spec(address, "unsubscribe_mailto")
        links.append(f"<mailto:{local}@{domain}?subject=unsubscribe>")
    if o.unsubscribe_url is not None:
        url, field = o.unsubscribe_url, "unsubscribe_url"
        _no_controls(url, field)
        _no_encoded_word(url, field)
        if len(url) > _MAX_TOKEN or not _HTTPS_URL.fullmatch(url):
            raise InvalidHeader(f"{url!r} is not a percent-encoded https:// URL", field=field)
        links.append(f"<{url}>")
    return ", ".join(links) or None


@dataclass(frozen=True)
class Prepared:
    """An :class:`Outgoing` checked and normalised: what every serialiser of it writes.

    :func:`build_message` (the email package) and :func:`outreach.mail.wire.render_message` (bytes
    written directly) both start from here, so they refuse exactly the same input.
    """

    from_name: str
    from_addr: tuple[str, str]  # local part, ASCII domain
    to_name: str  # "" when there is none
    to_addr: tuple[str, str]
    subject: str
    date: str  # RFC 5322 date-time
    verbatim: tuple[tuple[str, str], ...]  # Message-ID, threading, unsubscribe: never re-encoded
    text: str  # the plain text, quote included
    html: str | None  # the HTML alternative, quote included
    boundary: str  # the multipart boundary, when there is HTML


def prepare(o: Outgoing) -> Prepared:
    """Check every header value of ``o`` (raising :class:`InvalidHeader` or
    :class:`HeaderInjection`) and add the quoted earlier message to the bodies."""
    if o.date.tzinfo is None or o.date.utcoffset() is None:
        raise ValueError("Outgoing.date must be timezone-aware")
    from_addr = _addr_spec(o.from_email, "from_email")
    to_addr = _addr_spec(o.to_email, "to_email")
    from_name = _header_text(o.from_name, "from_name")
    to_name = _header_text(o.to_name, "to_name") if o.to_name is not None else ""
    subject = _header_text(o.subject, "subject")
    verbatim: list[tuple[str, str]] = [("Message-ID", _msg_id(o.message_id, "message_id"))]
    if o.in_reply_to is not None:
        verbatim.append(("In-Reply-To", _msg_id(o.in_reply_to, "in_reply_to")))
    if o.references:
        verbatim.append(("References", " ".join(_msg_id(r, "references") for r in o.references)))
    unsubscribe = _list_unsubscribe(o)
    if unsubscribe is not None:
        verbatim.append(("List-Unsubscribe", unsubscribe))
        if o.unsubscribe_url is not None:  # RFC 8058 one-click needs the https URL
            verbatim.append(("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"))
    text, html = o.text, o.html
    if o.quote is not None:
        text = text.rstrip("\r\n") + "\n\n" + quote_text(o.quote, o.language)
        if html is not None:
            html = _html_with_quote(html, o.quote, o.language)
    return Prepared(
        from_name=from_name,
        from_addr=from_addr,
        to_name=to_name,
        to_addr=to_addr,
        subject=subject,
        date=format_datetime(o.date),
        verbatim=tuple(verbatim),
        text=text,
        html=html,
        # Fixed here, not at each flattening; "=_" never occurs in quoted-printable text.
        boundary="=_" + hashlib.sha256(o.message_id.encode()).hexdigest()[:32],
    )


def build_message(o: Outgoing) -> EmailMessage:
    """The complete message as an ``EmailMessage``: headers, plain text (plus the HTML
    alternative), quote. The send path uses :func:`outreach.mail.wire.render_message`, which writes
    the same message as bytes several times faster; this one is the reference it is tested
    against, and what callers that want an ``EmailMessage`` use."""
    p = prepare(o)
    msg = EmailMessage(policy=email_policy.SMTP)
    sender = Address(display_name=p.from_name, username=p.from_addr[0], domain=p.from_addr[1])
    recipient = Address(display_name=p.to_name, username=p.to_addr[0], domain=p.to_addr[1])
    msg["From"] = _MailboxHeader("From", sender)
    msg["To"] = _MailboxHeader("To", recipient)
    msg["Subject"] = p.subject
    msg["Date"] = p.date
    for name, value in p.verbatim:
        msg[name] = _VerbatimHeader(name, value)
    # Quoted-printable keeps every line short and 7-bit clean on any relay, whatever the body.
    msg.set_content(p.text, subtype="plain", charset="utf-8", cte="quoted-printable")
    if p.html is not None:
        msg.add_alternative(p.html, subtype="html", charset="utf-8", cte="quoted-printable")
        for part in msg.iter_parts():  # set_content on a new part adds one; the top one is enough
            del part["MIME-Version"]
        msg.set_boundary(p.boundary)
    return msg


def check_recipient(email: str, name: str | None) -> None:
    """Raise :class:`InvalidHeader` unless ``email`` and ``name`` can go into a ``To`` header
    as :func:`build_message` writes it (a plain ASCII local part: no SMTPUTF8)."""
    _addr_spec(email, "to_email")
    if name is not None:
        _header_text(name, "to_name")


def check_header_value(value: str, field: str) -> None:
    """Raise :class:`InvalidHeader` unless ``value`` may be printed into a header's text
    (no line break or control character, no RFC 2047 syntax)."""
    _header_text(value, field)
