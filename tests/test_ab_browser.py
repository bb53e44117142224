"""The HTML A/B report in a real headless Chromium (Debian's `chromium`): it renders, it loads
with nothing from elsewhere (every request the browser makes goes through a recording proxy),
and the numbers a marketer reads on it are the ones `outreach ab report --json` prints."""

from __future__ import annotations

import shutil
import subprocess
import threading
from collections.abc import Iterator
from html.parser import HTMLParser
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from freezegun import freeze_time

from outreach import clock
from outreach.ab import review as ab_review
from outreach.workspace import Workspace
from tests.conftest import Cli
from tests.test_ab import MONDAY_10, seed_results, smtp, ws  # noqa: F401 - fixtures

INSTALL_HINT = "Chromium is not installed: apt-get install chromium (scripts/test.sh does)"
WIDTH, HEIGHT = 1200, 1600


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.skip(INSTALL_HINT)
    return found


class Recorder(BaseHTTPRequestHandler):
    """Serves the report at /report.html and records every request; as the browser's proxy
    it also sees any request to another host (absolute URL, or CONNECT for https), and refuses
    it: for the page, the network is this one file."""

    page = b""
    seen: list[tuple[str, str]] = []  # (request line, Referer)

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self.seen.append((f"GET {self.path}", self.headers.get("Referer", "")))
        if self.path.endswith("/report.html"):
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(self.page)))
            self.end_headers()
            self.wfile.write(self.page)
        else:
            self.send_error(404)

    def do_CONNECT(self) -> None:  # noqa: N802
        self.seen.append((f"CONNECT {self.path}", self.headers.get("Referer", "")))
        self.send_error(403)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[tuple[ThreadingHTTPServer, type[Recorder]]]:
    handler = type("Handler", (Recorder,), {"seen": [], "page": b""})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd, handler
    httpd.shutdown()
    httpd.server_close()


def browse(url: str, proxy: str, profile: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """Chromium headless, with no background traffic of its own and everything via ``proxy``
    (loopback included: `<-loopback>` takes loopback off the implicit bypass list)."""
    return subprocess.run(
        [
            chromium(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-features=MediaRouter,OptimizationHints,Translate",
            f"--user-data-dir={profile}",
            f"--proxy-server=http://{proxy}",
            "--proxy-bypass-list=<-loopback>",
            f"--window-size={WIDTH},{HEIGHT}",
            *extra,
            url,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


class Tables(HTMLParser):
    """The variant tables: factor -> variant -> {cell class: text}."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, dict[str, dict[str, str]]] = {}
        self.factor: str | None = None
        self.row: dict[str, str] | None = None
        self.cell: str | None = None
        self.scripts = 0
        self.outside: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.scripts += tag == "script"
        for name in ("src", "href"):
            if a.get(name) and not str(a[name]).startswith("data:"):  # inline is not elsewhere
                self.outside.append(str(a[name]))
        if tag == "table" and a.get("data-factor"):
            self.factor = a["data-factor"]
            self.tables[self.factor or ""] = {}
        elif tag == "tr" and self.factor and a.get("data-variant"):
            self.row = self.tables[self.factor].setdefault(str(a["data-variant"]), {})
        elif tag == "td" and self.row is not None:
            self.cell = a.get("class")
            if self.cell:
                self.row[self.cell] = ""

    def handle_endtag(self, tag: str) -> None:
        if tag == "table":
            self.factor = None
        elif tag == "tr":
            self.row = None
        elif tag == "td":
            self.cell = None

    def handle_data(self, data: str) -> None:
        if self.row is not None and self.cell:
            self.row[self.cell] += data


def test_the_html_report_renders_offline_in_chromium_with_the_json_numbers(
    ws: Workspace,  # noqa: F811 - the fixture imported above
    tmp_path: Path,
    run: Cli,
    server: tuple[ThreadingHTTPServer, type[Recorder]],
) -> None:
    chromium()
    with freeze_time(MONDAY_10, real_asyncio=True) as frozen:
        seed_results(ws, tmp_path, frozen, {"quick-question": 7, "same-numbers": 1})
        ab_review.review(ws, clock.now())
        out = tmp_path / "report.html"
        assert run("ab", "report", "--html", str(out)).exit_code == 0
        data = run.json("ab", "report")
    httpd, handler = server
    handler.page = out.read_bytes()
    address = f"127.0.0.1:{httpd.server_address[1]}"
    url = f"http://{address}/report.html"

    shot = tmp_path / "report.png"
    result = browse(url, address, tmp_path / "profile-1", f"--screenshot={shot}")
    assert shot.exists(), result.stderr[-2000:]
    png = shot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert int.from_bytes(png[16:20], "big") == WIDTH
    assert int.from_bytes(png[20:24], "big") == HEIGHT
    assert len(png) > 12_000  # tables and charts, not an empty page (that is ~5 kB)

    dom = browse(url, address, tmp_path / "profile-2", "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    # The page was fetched through the proxy, and nothing was fetched for it (a script, a
    # style sheet, a font or an image would name the page as its Referer); the browser's own
    # update and sign-in pings are its business and were refused like anything else.
    assert any(line.endswith("/report.html") for line, _ in handler.seen)
    for_the_page = [line for line, referer in handler.seen if referer.endswith("/report.html")]
    assert for_the_page == [], for_the_page
    tables = Tables()
    tables.feed(dom.stdout)
    assert tables.scripts == 0 and tables.outside == []
    # The numbers shown are the JSON's, for every variant of every step sent.
    shown = 0
    for step in data["steps"]:
        factor = f"{step['sequence']}/{step['step']}/{step['kind']}"
        if not step["sends"]:
            assert factor not in tables.tables  # folded away
            continue
        for v in step["variants"]:
            cells = tables.tables[factor][v["variant"]]
            assert int(cells["sends"]) == v["sends"]
            assert int(cells["replies"]) == v["replies"]
            if v["sends"]:
                assert cells["rate"] == f"{100 * v['rate']:.1f} %"
            p_best = "–" if v["p_best"] is None else f"{v['p_best']:.3f}"
            assert cells["p_best"] == p_best
            shown += 1
    assert shown == sum(len(s["variants"]) for s in data["steps"] if s["sends"]) >= 6
