"""The outgoing message as the bytes SMTP sends, written directly rather than by ``EmailMessage``.

:func:`render_message` takes the same :class:`~outreach.mail.message.Outgoing` as
:func:`~outreach.mail.message.build_message` and starts from the same checks
(:func:`~outreach.mail.message.prepare`), so it refuses exactly the same input: a line break,
NUL or an
``=?...?=`` in any header value raises :class:`~outreach.mail.message.HeaderInjection` or
:class:`~outreach.mail.message.InvalidHeader`. What it skips is the email package's header registry
(parsing every value back into a tree to fold it) and ``set_content``'s policy machinery; a
property test (``tests/test_wire.py``) holds it to the same decoded headers, parts and bodies as
``build_message``.

The bytes are 7-bit ASCII with CRLF line ends, every header line folded at 78 (a single token
that cannot be folded, such as a long Message-ID, may run to its own length, never past 998),
every body line at most 76 (quoted-printable, RFC 2045).
"""

from __future__ import annotations

import binascii
import re
from dataclasses import dataclass

from outreach.mail.message import Outgoing, Prepared, _display_name_words, _encoded_words, prepare

_LIMIT = 78  # RFC 5322's recommended line length, as policy.SMTP folds
# The longest word that fits on any line of any header, the first ("Subject: ...") included;
# encoded words are made no longer, so that only a token that cannot be split (a long
# Message-ID or URL) ever runs past 78.
_WORD = _LIMIT - len("Subject: ")
_CONTENT_HEADERS = (
    'Content-Type: text/{subtype}; charset="utf-8"\r\n'
    "Content-Transfer-Encoding: quoted-printable\r\n"
)
_LONG_QP_LINE = re.compile(rb"^[^\n]{74,}=(?:20|09)$", re.MULTILINE)  # 77 or more
_NEWLINES = re.compile(r"\r\n?")


@dataclass(frozen=True)
class WireMessage:
    """One outgoing message as it goes on the wire, with what the callers keep of it."""

    data: bytes  # the message: 7-bit ASCII, CRLF line ends; SMTP DATA and IMAP APPEND take it
    text: str  # the plain text part as the outbox stores it ("\n" line ends, quote included)
    message_id: str

    def as_bytes(self) -> bytes:
        """The message bytes (the name ``EmailMessage`` uses, so either can be saved to Sent)."""
        return self.data


def _fold(name: str, words: list[str]) -> str:
    """``Name: w1 w2...`` wrapped at the spaces between words, never inside one."""
    lines = [f"{name}:"]
    for i, word in enumerate(words):
        if i and len(lines[-1]) + 1 + len(word) > _LIMIT:
            lines.append("")
        lines[-1] += " " + word
    return "\r\n".join(lines) + "\r\n"


def _mailbox(name: str, display_name: str, addr: tuple[str, str]) -> str:
    addr_spec = f"{addr[0]}@{addr[1]}"
    if not display_name:
        return _fold(name, [addr_spec])
    return _fold(name, [*_display_name_words(display_name, _WORD), f"<{addr_spec}>"])


def _subject_words(subject: str) -> list[str]:
    """The subject's words, plain where they are short ASCII, else RFC 2047 encoded words.

    Consecutive words that need encoding go into one run of encoded words, spaces included:
    readers drop the white space between two adjacent encoded words, but keep it between an
    encoded word and plain text.
    """
    words: list[str] = []
    run: list[str] = []
    for word in subject.split(" ") if subject else ():
        if word.isascii() and len(word) <= _WORD:
            if run:
                words += _encoded_words(" ".join(run), _WORD)
                run = []
            words.append(word)
        else:
            run.append(word)
    if run:
        words += _encoded_words(" ".join(run), _WORD)
    return words


def _body_text(text: str) -> str:
    """The text as ``set_content`` stores it: every CR, LF or CRLF a "\\n", one at the end."""
    text = _NEWLINES.sub("\n", text)
    return text if text.endswith("\n") else text + "\n"


def _quoted_printable(text: str) -> bytes:
    """``text`` (already ending in "\\n") as quoted-printable lines of at most 76, CRLF ends."""
    encoded = binascii.b2a_qp(text.encode("utf-8"), istext=True)
    if _LONG_QP_LINE.search(encoded):
        # b2a_qp wraps at 76 but then encodes a trailing blank in place ("=20"), which can make
        # that one line 77 or 78 long: move the escape to a line of its own.
        encoded = _LONG_QP_LINE.sub(lambda m: m.group()[:-3] + b"=\n" + m.group()[-3:], encoded)
    return encoded.replace(b"\n", b"\r\n")


def _headers(p: Prepared) -> str:
    head = [
        _mailbox("From", p.from_name, p.from_addr),
        _mailbox("To", p.to_name, p.to_addr),
        _fold("Subject", _subject_words(p.subject)),
        f"Date: {p.date}\r\n",
    ]
    head += (_fold(name, value.split(" ")) for name, value in p.verbatim)
    return "".join(head)


def render_message(o: Outgoing) -> WireMessage:
    """The complete message as bytes: the headers, the plain text, the HTML alternative when
    there is one, the quoted earlier message; the same message :func:`build_message` makes."""
    p = prepare(o)
    text = _body_text(p.text)
    head = _headers(p)
    if p.html is None:
        head += _CONTENT_HEADERS.format(subtype="plain") + "MIME-Version: 1.0\r\n\r\n"
        data = head.encode("ascii") + _quoted_printable(text)
    else:
        delimiter = f"\r\n--{p.boundary}"
        head += (
            "MIME-Version: 1.0\r\n"
            f'Content-Type: multipart/alternative;\r\n boundary="{p.boundary}"\r\n\r\n'
            f"--{p.boundary}\r\n" + _CONTENT_HEADERS.format(subtype="plain") + "\r\n"
        )
        html_head = f"{delimiter}\r\n" + _CONTENT_HEADERS.format(subtype="html") + "\r\n"
        data = b"".join(
            (
                head.encode("ascii"),
                _quoted_printable(text),
                html_head.encode("ascii"),
                _quoted_printable(_body_text(p.html)),
                f"{delimiter}--\r\n".encode("ascii"),
            )
        )
    return WireMessage(data=data, text=text, message_id=o.message_id)
