"""Open and click tracking in the message itself: the signed pixel and the signed redirects.

Pure: :class:`Tracker` turns a step's rendered plain text and HTML into the tracked ones, and
:func:`read_token` reads a token back. Only a message with an HTML part is tracked; then, with
``clicks`` on, the links of both parts go through the redirect (the plain part's only because
the HTML part's do: a message is tracked whole or not at all). The quoted earlier message is
added after this (``mail.prepare``), so its links stay the earlier message's.

A token is signed with the secret that signs the unsubscribe links (itsdangerous, its own
salt) and carries the message's Message-ID, and for a click the target URL itself: the redirect
goes only where the template pointed, never where a request asks (no open redirect), and a
token that was changed reads as nothing.
"""

from __future__ import annotations

import html as html_lib
import re
from collections.abc import Callable
from dataclasses import dataclass
from html.parser import HTMLParser
from urllib.parse import urlsplit

from itsdangerous import BadSignature, URLSafeSerializer

SALT = "outreach-tracking"
OPEN, CLICK = "open", "click"
_PATHS = {OPEN: "o", CLICK: "c"}
# A link in plain text ends at white space or what usually closes it in prose.
_TEXT_LINK = re.compile(r"\bhttps?://[^\s<>\"'`]+", re.IGNORECASE)
_TRAILING = ".,;:!?"
# A target the redirect may send a browser to: printable ASCII or beyond, nothing that could
# end a header line or hide in one (white space, controls).
_UNSAFE = re.compile(r"[\x00-\x20\x7f-\x9f\u2028\u2029]")
_REWRITTEN_TAGS = ("a", "area")


@dataclass(frozen=True)
class Hit:
    """What a token says: an open or a click of one message (by its Message-ID), and where
    a click goes."""

    kind: str  # "open" | "click"
    message_id: str
    url: str | None = None


def _serializer(secret: str) -> URLSafeSerializer:
    return URLSafeSerializer(secret, salt=SALT)


def read_token(secret: str, token: str) -> Hit | None:
    """The hit a token was made for; None when it is forged, damaged or not ours."""
    try:
        value = _serializer(secret).loads(token)
    except BadSignature:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        return None
    if value[:1] == ["o"] and len(value) == 2:
        return Hit(OPEN, value[1])
    if value[:1] == ["c"] and len(value) == 3 and trackable(value[2]):
        return Hit(CLICK, value[1], value[2])
    return None


def trackable(url: str) -> bool:
    """An absolute http(s) link with a host, fit for a ``Location`` header."""
    if _UNSAFE.search(url):
        return False
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    return parts.scheme.lower() in ("http", "https") and bool(parts.hostname)


@dataclass(frozen=True)
class Tracker:
    """Puts the pixel and the redirects into one message, with the workspace's settings."""

    base_url: str  # ``[tracking] domain``: "https://t.northwind.example" or ".../t"
    secret: str
    opens: bool
    clicks: bool
    # Links left as they are: the unsubscribe page (a person must reach it untracked), and
    # anything already under the tracking base.
    untouched: tuple[str, ...] = ()

    def url(self, kind: str, message_id: str, target: str | None = None) -> str:
        """The signed URL of an open (the pixel) or of a click on ``target``."""
        payload = [_PATHS[kind][0], message_id] + ([target] if target is not None else [])
        return f"{self.base_url}/{_PATHS[kind]}/{_serializer(self.secret).dumps(payload)}"

    def apply(self, text: str, html: str | None, message_id: str) -> tuple[str, str | None]:
        """The plain text and HTML as sent: unchanged without an HTML part; else the links
        of both parts through the redirect (``clicks``) and the pixel at the end of the HTML
        (``opens``)."""
        if html is None or not (self.opens or self.clicks):
            return text, html
        if self.clicks:

            def link(target: str) -> str | None:
                return self.url(CLICK, message_id, target) if self._rewrites(target) else None

            text = rewrite_text_links(text, link)
            html = rewrite_html_links(html, link)
        if self.opens:
            html = add_pixel(html, self.url(OPEN, message_id))
        return text, html

    def _rewrites(self, target: str) -> bool:
        if not trackable(target):
            return False  # mailto:, tel:, #anchors, relative links, anything odd
        lowered = target.lower()
        for prefix in (p.lower() for p in self.untouched):
            if lowered == prefix or lowered.startswith((prefix + "?", prefix + "#")):
                return False
        return not lowered.startswith(self.base_url.lower() + "/")


def rewrite_text_links(text: str, link: Callable[[str], str | None]) -> str:
    """Every http(s) link in plain text replaced by ``link(url)`` (None: kept)."""

    def one(match: re.Match[str]) -> str:
        url = match.group()
        tail = ""
        while url and (
            url[-1] in _TRAILING or (url[-1] == ")" and url.count("(") < url.count(")"))
        ):
            url, tail = url[:-1], url[-1] + tail
        new = link(url)
        return (new if new is not None else url) + tail

    return _TEXT_LINK.sub(one, text)


class _Anchors(HTMLParser):
    """The start tags of links (``<a href>``, ``<area href>``): where each is, and its
    attributes as a browser reads them (entities decoded)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.found: list[tuple[tuple[int, int], str, list[tuple[str, str | None]], bool]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._keep(tag, attrs, closed=False)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._keep(tag, attrs, closed=True)

    def _keep(self, tag: str, attrs: list[tuple[str, str | None]], closed: bool) -> None:
        raw = self.get_starttag_text()
        if tag in _REWRITTEN_TAGS and raw and any(name == "href" for name, _ in attrs):
            self.found.append((self.getpos(), raw, attrs, closed))


def rewrite_html_links(html: str, link: Callable[[str], str | None]) -> str:
    """The ``href`` of every link replaced by ``link(href)`` (None: the tag is kept as it
    is). A rewritten tag is written again from its attributes; the rest of the HTML, and
    every tag left alone, keeps its bytes."""
    parser = _Anchors()
    parser.feed(html)
    parser.close()
    starts = [0]
    for text_line in html.split("\n"):
        starts.append(starts[-1] + len(text_line) + 1)
    out: list[str] = []
    done = 0
    for (line, column), raw, attrs, closed in parser.found:
        at = starts[line - 1] + column
        if html[at : at + len(raw)] != raw:  # the parser's position is not the text's
            continue
        changed = False
        written = []
        for name, value in attrs:
            if name == "href" and value is not None and not changed:
                new = link(value.strip())
                if new is not None:
                    value, changed = new, True
            written.append(name if value is None else f'{name}="{html_lib.escape(value)}"')
        if not changed:
            continue
        tag = re.match(r"<([A-Za-z]+)", raw)
        end = " />" if closed else ">"
        out += [html[done:at], f"<{tag.group(1) if tag else 'a'} {' '.join(written)}{end}"]
        done = at + len(raw)
    out.append(html[done:])
    return "".join(out)


def add_pixel(html: str, url: str) -> str:
    """The 1x1 image at the end of the HTML body (before ``</body>`` when there is one)."""
    pixel = (
        f'<img src="{html_lib.escape(url)}" width="1" height="1" alt="" '
        'style="display:block;width:1px;height:1px;border:0" />'
    )
    end = html.lower().rfind("</body>")
    return html + "\n" + pixel + "\n" if end < 0 else html[:end] + pixel + "\n" + html[end:]
