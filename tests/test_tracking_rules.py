"""The pure parts of tracking: which links are rewritten and how they read back, the pixel, the
token, and who a fetch is taken for (scanners.py)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from outreach.mail.scanners import classify
from outreach.mail.tracking import CLICK, OPEN, Hit, Tracker, read_token

SECRET = "a-rules-test-secret-long-enough"
BASE = "https://t.northwind.example"
MID = "<abc.1@northwind.example>"
TRACKER = Tracker(BASE, SECRET, True, True, untouched=("https://outreach.northwind.example/u",))
TOKEN = re.compile(rf"{re.escape(BASE)}/([oc])/([A-Za-z0-9_.-]*[A-Za-z0-9_-])")


def hits(text: str) -> list[Hit | None]:
    return [read_token(SECRET, token) for _, token in TOKEN.findall(text)]


class _Hrefs(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.hrefs: list[str | None] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            self.hrefs.append(dict(attrs).get("href"))


def hrefs(html: str) -> list[str | None]:
    parser = _Hrefs()
    parser.feed(html)
    parser.close()
    return parser.hrefs


def untracked(value: str) -> str:
    """Every tracking link put back to the URL its token carries."""

    def back(match: re.Match[str]) -> str:
        hit = read_token(SECRET, match.group(2))
        assert hit is not None and hit.kind == CLICK and hit.url is not None
        return hit.url

    return TOKEN.sub(back, value)


def test_links_go_through_the_redirect_and_read_back_to_the_template_url() -> None:
    html = (
        '<p>Hi <a  title="see href=x" HREF="https://northwind.example/?a=1&amp;b=2">case</a> '
        "<a href='mailto:sanna@northwind.example'>me</a> <a href=\"#top\">top</a> "
        '<a href="/relative">rel</a> <a href="https://outreach.northwind.example/u?t=1">u</a> '
        '<a href=" https://northwind.example/spaced ">s</a></p>'
        '<!-- <a href="https://x.example"> -->'
    )
    text, tracked = TRACKER.apply("See https://northwind.example/cases.", html, MID)
    assert hrefs(tracked or "")[1:5] == [
        "mailto:sanna@northwind.example",
        "#top",
        "/relative",
        "https://outreach.northwind.example/u?t=1",
    ]
    assert [
        hit.url if hit else None for hit in hits(tracked or "") if hit and hit.kind == CLICK
    ] == [
        "https://northwind.example/?a=1&b=2",
        "https://northwind.example/spaced",
    ]
    assert '<a title="see href=x" href="' in (tracked or "")  # the tag written again, whole
    assert '<!-- <a href="https://x.example"> -->' in (tracked or "")  # a comment is no link
    assert [h.url for h in hits(text) if h] == ["https://northwind.example/cases"]
    assert text.endswith(".")  # the sentence's full stop stays outside the link


def test_the_pixel_goes_before_the_end_of_the_body_and_names_the_message() -> None:
    _, html = TRACKER.apply("x", "<html><body><p>Hi</p></BODY></html>", MID)
    assert html is not None
    assert re.search(r'<p>Hi</p><img src="[^"]+/o/[^"]+" width="1" height="1" alt=""', html)
    assert html.endswith("</BODY></html>")
    [hit] = hits(html)
    assert hit == Hit(OPEN, MID)
    _, fragment = TRACKER.apply("x", "<p>Hi</p>", MID)  # no <body>: at the end
    assert fragment is not None and fragment.startswith("<p>Hi</p>\n<img ")


@pytest.mark.parametrize(("opens", "clicks"), [(True, False), (False, True), (False, False)])
def test_each_kind_alone(opens: bool, clicks: bool) -> None:
    tracker = Tracker(BASE, SECRET, opens, clicks)
    text, html = tracker.apply("https://a.example/", '<a href="https://a.example/">a</a>', MID)
    assert ("<img" in (html or "")) is opens
    assert (f"{BASE}/c/" in (html or "")) is clicks
    assert (f"{BASE}/c/" in text) is clicks


def test_without_an_html_part_nothing_is_tracked() -> None:
    assert TRACKER.apply("https://a.example/ here", None, MID) == ("https://a.example/ here", None)


def test_a_token_from_another_secret_or_salt_or_shape_reads_as_nothing() -> None:
    from itsdangerous import URLSafeSerializer

    good = TRACKER.url(CLICK, MID, "https://a.example/").rsplit("/", 1)[1]
    assert read_token(SECRET, good) == Hit(CLICK, MID, "https://a.example/")
    assert read_token("another-secret-entirely!", good) is None
    assert read_token(SECRET, URLSafeSerializer(SECRET, salt="outreach-unsubscribe").dumps(
        ["c", MID, "https://a.example/"]
    )) is None  # an unsubscribe token is not a tracking one  # fmt: skip
    for payload in (["c", MID], ["o"], ["c", MID, "data:text/html,x"], {"o": MID}, ["x", MID]):
        forged = URLSafeSerializer(SECRET, salt="outreach-tracking").dumps(payload)
        assert read_token(SECRET, forged) is None, payload
    assert read_token(SECRET, "") is None


urls = st.from_regex(
    r"https?://[a-z]{1,10}\.example(/[a-zA-Z0-9_~%()-]{0,12}){0,3}(\?[a-z=&]{0,10})?",
    fullmatch=True,
)  # noqa: E501
prose = st.text(st.sampled_from("ab .,;:!?()<>\"'\n\täö"), max_size=20)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(prose, urls), max_size=6), prose)
def test_plain_text_reads_back_exactly_once_the_links_are_put_back(
    pieces: list[tuple[str, str]], tail: str
) -> None:
    text = "".join(f"{before} {url} " for before, url in pieces) + tail
    tracked, _ = TRACKER.apply(text, "<p></p>", MID)
    assert untracked(tracked) == text
    assert len(TOKEN.findall(tracked)) == len(pieces)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(prose, urls, st.sampled_from(['"', "'", ""])), max_size=6))
def test_html_links_read_back_as_the_browser_would_follow_them(
    pieces: list[tuple[str, str, str]],
) -> None:
    html = "".join(
        f"<p>{before.replace('<', '&lt;')}<a href={q}{url.replace('&', '&amp;')}{q}>x</a></p>"
        for before, url, q in pieces
    )
    _, tracked = Tracker(BASE, SECRET, opens=False, clicks=True).apply("", html, MID)
    assert tracked is not None
    followed = [read_token(SECRET, TOKEN.match(h or "").group(2)) for h in hrefs(tracked)]  # type: ignore[union-attr]
    assert [hit.url if hit else None for hit in followed] == [url for _, url, _ in pieces]
    # Outside the rewritten tags, not a character changed.
    assert re.sub(r"<a [^>]*>", "<a>", tracked) == re.sub(r"<a [^>]*>", "<a>", html)


SENT = datetime(2027, 1, 11, 8, 0, tzinfo=UTC)
BROWSER = "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_2) AppleWebKit/605.1.15 (KHTML, like Gecko)"


@pytest.mark.parametrize(
    ("method", "agent", "after", "machine", "why"),
    [
        ("GET", BROWSER, timedelta(minutes=5), False, "a person"),
        ("GET", BROWSER, timedelta(seconds=59), True, "59 s after the send (within 60 s)"),
        ("HEAD", BROWSER, timedelta(hours=1), True, "a HEAD request"),
        ("GET", "Mozilla/5.0", timedelta(hours=1), True, "Apple Mail Privacy Protection"),
        ("GET", "Barracuda Sentinel (EE)", timedelta(hours=1), True, "Barracuda"),
        ("GET", "Mozilla/5.0 Proofpoint URL Defense", timedelta(hours=1), True, "Proofpoint"),
        ("GET", "python-requests/2.31", timedelta(hours=1), True, "a program"),
        ("GET", "Slackbot-LinkExpanding 1.0", timedelta(hours=1), True, "a link preview"),
        ("GET", "Mozilla/5.0 (compatible; bingbot/2.0)", timedelta(hours=1), True, "a bot"),
        ("GET", "  ", timedelta(hours=1), True, "no user agent"),
    ],
)
def test_who_fetched(method: str, agent: str, after: timedelta, machine: bool, why: str) -> None:
    verdict = classify(method, agent, SENT, SENT + after, 60)
    assert verdict.machine is machine
    assert verdict.why.startswith(why) or why in verdict.why


def test_a_fetch_before_the_send_was_recorded_is_a_machine() -> None:
    verdict = classify("GET", BROWSER, None, SENT, 60)
    assert verdict.machine and "before the send was recorded" in verdict.why


def test_gmail_and_yahoo_image_proxies_open_for_a_person() -> None:
    gmail = (
        "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)"  # noqa: E501
    )
    verdict = classify("GET", gmail, SENT, SENT + timedelta(hours=2), 60)
    assert (verdict.machine, verdict.via) == (False, "Gmail's image proxy")
    verdict = classify(
        "GET", "YahooMailProxy; https://help.yahoo.com", SENT, SENT + timedelta(hours=2), 60
    )  # noqa: E501
    assert (verdict.machine, verdict.via) == (False, "Yahoo Mail's image proxy")
    # ... but not at delivery: then it is a prefetch like any other.
    assert classify("GET", gmail, SENT, SENT + timedelta(seconds=2), 60).machine
