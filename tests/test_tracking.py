"""Open and click tracking, opt-in: the pixel and the redirects in the mail the SMTP server gets,
fetched over real HTTP from the daemon's web app; people counted, machines recorded apart; the
``opened`` audience and ``stop_on: [click]`` driven through the CLI."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Awaitable, Callable, Iterator
from datetime import datetime, timedelta
from email.message import EmailMessage
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp
import pytest
from freezegun import freeze_time
from itsdangerous import URLSafeSerializer
from sqlmodel import select

from outreach import web as outreach_web
from outreach.mail.tracking import SALT
from outreach.models import Event
from outreach.workspace import Workspace
from tests.conftest import Cli, edit_config
from tests.smtp_servers import RecordingSMTP

pytestmark = [pytest.mark.timeout(90), pytest.mark.both_databases]

HELSINKI = ZoneInfo("Europe/Helsinki")
MONDAY = datetime(2027, 1, 11, 10, 0, tzinfo=HELSINKI)
SECRET = "a-tracking-test-secret-long-enough"
DOMAIN = "https://t.northwind.example"
CASE_URL = "https://northwind.example/cases?utm_source=outreach&x=1"
UNSUBSCRIBE_URL = "https://outreach.northwind.example/u"
BROWSER = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36"  # noqa: E501
GMAIL_PROXY = (
    "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)"  # noqa: E501
)

INTRO = """\
subjects:
  - id: hello
    en: "Hello {{ first_name }}"
bodies:
  - id: with-links
    en: |
      Hi {{ first_name }},

      Our case: {{ case_url }}. Write to me: mailto:sanna.lehto@northwind.example
      Unsubscribe page: %(unsubscribe)s

      {{ sender.signature }}
    html:
      en: |
        <html><body><p>Hi {{ first_name }},</p>
        <p>Read <a class="cta" href="{{ case_url }}">our case</a>, or
        <a href="mailto:sanna.lehto@northwind.example">write to me</a>.</p>
        <p><a href="%(unsubscribe)s">Unsubscribe</a></p>
        </body></html>
"""
PLAIN_ONLY = """\
subjects:
  - id: hello
    en: "Hello {{ first_name }}"
bodies:
  - id: plain
    en: |
      Hi {{ first_name }}, our case: {{ case_url }}
"""
NUDGE = """\
bodies:
  - id: bump
    en: |
      Hi {{ first_name }}, bringing this back up: {{ case_url }}
    html:
      en: |
        <p>Hi {{ first_name }}, bringing this back up: <a href="{{ case_url }}">the case</a></p>
"""


def cold_sequence(audience: str = "[no_reply, not_bounced]", stop_on: str = "") -> str:
    return f"""\
steps:
  - name: intro
    channel: email
    wait: 0 days
    template: cold/1-intro.yaml
{stop_on}
  - name: nudge
    channel: email
    wait: 1 days
    thread: reply
    template: cold/2-nudge.yaml
next:
  sequence: reminder
  wait: 1 days
  audience: {audience}
"""


def write_workspace(
    workspace_dir: Path,
    *,
    tracking: bool = True,
    intro: str = INTRO,
    audience: str = "[no_reply, not_bounced]",
    stop_on: str = "",
    **settings: object,
) -> None:
    """The starter workspace with a two-email cold sequence whose copy has an HTML part."""
    (workspace_dir / "templates/cold/1-intro.yaml").write_text(
        intro % {"unsubscribe": UNSUBSCRIBE_URL} if "%(" in intro else intro, encoding="utf-8"
    )
    (workspace_dir / "templates/cold/2-nudge.yaml").write_text(NUDGE, encoding="utf-8")
    (workspace_dir / "sequences/cold.yaml").write_text(
        cold_sequence(audience, stop_on), encoding="utf-8"
    )
    config = workspace_dir / "outreach.toml"
    edit_config(
        config,
        **{"min_gap_seconds": 0, "max_gap_seconds": 0, **settings},
        unsubscribe_url=UNSUBSCRIBE_URL,
        case_url=CASE_URL,
    )
    if tracking:
        edit_config(config, opens=True, clicks=True, domain=DOMAIN, enabled=True)


@pytest.fixture(autouse=True)
def secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OUTREACH_SECRET", SECRET)


def enroll(run: Cli, tmp_path: Path, *people: str) -> None:
    path = tmp_path / "people.csv"
    path.write_text(
        "email,first_name\n" + "".join(f"{p}@acme.example,{p.title()}\n" for p in people),
        encoding="utf-8",
    )
    result = run("enroll", str(path), "--sequence", "cold")
    assert result.exit_code == 0, result.output


def send(run: Cli, smtp: RecordingSMTP, at: datetime) -> list[EmailMessage]:
    """`outreach send --once` at ``at``; the messages the SMTP server got from it."""
    before = len(smtp.received)
    with freeze_time(at, real_asyncio=True):
        result = run("send", "--once")
    assert result.exit_code == 0, result.output
    return [r.message for r in smtp.received[before:]]


def parts(message: EmailMessage) -> tuple[str, str | None]:
    """The plain and HTML parts as text, with "\n" line ends."""
    plain = message.get_body(("plain",))
    html = message.get_body(("html",))
    assert plain is not None
    text = str(plain.get_content()).replace("\r\n", "\n")
    return text, str(html.get_content()).replace("\r\n", "\n") if html is not None else None


def tracking_links(text: str, kind: str) -> list[str]:
    """The tracking links in a text (a token never ends in a dot; a sentence may)."""
    return [
        link.rstrip(".")
        for link in re.findall(rf"{re.escape(DOMAIN)}/{kind}/[A-Za-z0-9_.-]+", text)
    ]


def by_recipient(messages: list[EmailMessage]) -> dict[str, EmailMessage]:
    return {str(m["To"].addresses[0].addr_spec).split("@")[0]: m for m in messages}


Test = Callable[[aiohttp.ClientSession, Callable[[str], str]], Awaitable[None]]


def serve(workspace_dir: Path, at: datetime, test: Test, *, with_secret: str = SECRET) -> None:
    """The daemon's web app on loopback, its clock at ``at``; ``test(session, local)`` gets a
    function turning a public tracking link into the local one (what the proxy does)."""
    ws = Workspace.load(workspace_dir / "outreach.toml")

    async def main() -> None:
        runner = await outreach_web.start(
            ws, "127.0.0.1", 0, secret=None, goal_token=None, now=lambda: at,
            tracking_secret=with_secret,
        )  # fmt: skip
        try:
            host, port = runner.addresses[0][:2]

            def local(link: str) -> str:
                return link.replace(DOMAIN, f"http://{host}:{port}")

            async with aiohttp.ClientSession() as session:
                await test(session, local)
        finally:
            await runner.cleanup()

    try:
        asyncio.run(main())
    finally:
        ws.close()


def fetch_all(
    workspace_dir: Path,
    at: datetime,
    links: list[str],
    *,
    agent: str = BROWSER,
    method: str = "GET",
) -> list[tuple[int, str | None]]:
    """Fetch each link as a mail client would (no redirect followed): status and Location."""
    answers: list[tuple[int, str | None]] = []

    async def test(session: aiohttp.ClientSession, local: Callable[[str], str]) -> None:
        for link in links:
            async with session.request(
                method, local(link), headers={"User-Agent": agent}, allow_redirects=False
            ) as response:
                await response.read()
                answers.append((response.status, response.headers.get("Location")))

    serve(workspace_dir, at, test)
    return answers


def tracking_events(workspace_dir: Path, kind: str | None = None) -> list[Event]:
    ws = Workspace.load(workspace_dir / "outreach.toml")
    try:
        with ws.store.session() as session:
            query = select(Event).where(Event.kind.in_((kind,) if kind else ("open", "click")))  # type: ignore[attr-defined]
            return list(session.exec(query.order_by(Event.id)))  # type: ignore[arg-type]
    finally:
        ws.close()


@pytest.fixture
def smtp() -> Iterator[RecordingSMTP]:
    with RecordingSMTP() as server:
        yield server


@pytest.fixture
def sent(
    workspace_dir: Path, run: Cli, tmp_path: Path, smtp: RecordingSMTP
) -> dict[str, EmailMessage]:
    """Tracking on; Ann, Bob and Carl sent the intro on Monday at 10:00."""
    write_workspace(workspace_dir, smtp_port=smtp.port)
    enroll(run, tmp_path, "ann", "bob", "carl")
    messages = by_recipient(send(run, smtp, MONDAY))
    assert sorted(messages) == ["ann", "bob", "carl"]
    return messages


def status_step(run: Cli, step: str = "intro") -> dict[str, Any]:
    cold = next(s for s in run.json("status")["sequences"] if s["name"] == "cold")
    return next(s for s in cold["steps"] if s["name"] == step)


# --- what goes out ---------------------------------------------------------------------------


def test_off_by_default_nothing_in_the_message_changes(
    workspace_dir: Path, run: Cli, tmp_path: Path, smtp: RecordingSMTP
) -> None:
    write_workspace(workspace_dir, tracking=False, smtp_port=smtp.port)
    enroll(run, tmp_path, "ann")
    [message] = send(run, smtp, MONDAY)
    text, html = parts(message)
    assert html is not None
    assert "t.northwind.example" not in message.as_string()
    assert "<img" not in html
    assert f'href="{CASE_URL.replace("&", "&amp;")}"' in html
    assert f"Our case: {CASE_URL}." in text
    # The copy exactly as the template renders it.
    assert html == (
        "<html><body><p>Hi Ann,</p>\n"
        '<p>Read <a class="cta" href="https://northwind.example/cases?utm_source=outreach&amp;'
        'x=1">our case</a>, or\n'
        '<a href="mailto:sanna.lehto@northwind.example">write to me</a>.</p>\n'
        f'<p><a href="{UNSUBSCRIBE_URL}">Unsubscribe</a></p>\n'
        "</body></html>\n"
    )
    preview = run.json("preview", "ann@acme.example")
    assert text == preview["steps"][0]["bodies"][0]["text"]
    status = run("status")
    assert "tracked" not in status.stdout


def test_on_the_html_part_gets_the_pixel_and_its_links_go_through_the_redirect(
    sent: dict[str, EmailMessage],
) -> None:
    message = sent["ann"]
    text, html = parts(message)
    assert html is not None
    [pixel] = tracking_links(html, "o")
    assert f'<img src="{pixel}" width="1" height="1" alt=""' in html
    assert html.index(pixel) < html.index("</body>")
    [click] = tracking_links(html, "c")
    assert f'<a class="cta" href="{click}">our case</a>' in html
    # mailto: and the unsubscribe page are never rewritten; neither is List-Unsubscribe.
    assert 'href="mailto:sanna.lehto@northwind.example"' in html
    assert f'href="{UNSUBSCRIBE_URL}"' in html
    assert f"Unsubscribe page: {UNSUBSCRIBE_URL}" in text
    assert "mailto:sanna.lehto@northwind.example" in text
    assert UNSUBSCRIBE_URL + "?t=" in message["List-Unsubscribe"]
    assert "t.northwind.example" not in str(message["List-Unsubscribe"])
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    # The plain part's link goes through the same redirect, because the HTML part's does.
    assert tracking_links(text, "c") == [click]
    assert f"Our case: {click}." in text
    # Each message has its own tokens.
    assert tracking_links(parts(sent["bob"])[1] or "", "c") != [click]


def test_a_message_without_an_html_part_is_not_tracked(
    workspace_dir: Path, run: Cli, tmp_path: Path, smtp: RecordingSMTP
) -> None:
    write_workspace(workspace_dir, intro=PLAIN_ONLY, smtp_port=smtp.port)
    enroll(run, tmp_path, "ann")
    [message] = send(run, smtp, MONDAY)
    text, html = parts(message)
    assert html is None
    assert text.strip() == f"Hi Ann, our case: {CASE_URL}"


# --- people and machines ---------------------------------------------------------------------


def test_a_person_opening_and_clicking_is_counted_once_per_message(
    workspace_dir: Path, run: Cli, sent: dict[str, EmailMessage]
) -> None:
    _, html = parts(sent["ann"])
    [pixel], [click] = tracking_links(html or "", "o"), tracking_links(html or "", "c")
    later = MONDAY + timedelta(hours=2)
    answers = fetch_all(workspace_dir, later, [pixel, pixel, click, click])
    assert answers[:2] == [(200, None)] * 2
    assert answers[2:] == [(302, CASE_URL)] * 2
    opened, clicked = (
        tracking_events(workspace_dir, "open"),
        tracking_events(workspace_dir, "click"),
    )
    assert [(e.reason, e.data["count"]) for e in opened] == [("human", 2)]
    assert [(e.reason, e.data["count"], e.data["url"]) for e in clicked] == [("human", 2, CASE_URL)]
    assert opened[0].data["step"] == "intro" and opened[0].enrollment_id is not None
    assert status_step(run)["tracking"] == {
        "opened": 1, "opened_by_machines": 0, "clicked": 1, "clicked_by_machines": 0,
    }  # fmt: skip
    view = run.json("prospect", "ann@acme.example")
    intro = next(m for m in view["messages"] if m["step"] == "intro")
    assert intro["opens"] == {"human": 2, "machine": 0}
    assert intro["clicks"] == {"human": 2, "machine": 0}
    assert [e["reason"] for e in view["events"] if e["kind"] in ("open", "click")] == [
        "human",
        "human",
    ]
    text = run("prospect", "ann@acme.example").stdout
    assert "opened 2x by a person, 0x by machines; clicked 2x by a person, 0x by machines" in text
    assert f"click  human  cold/intro {CASE_URL} (2x)" in text
    status = run("status").stdout
    assert (
        "  tracked 1. intro: opened: 1 by people, 0 by machines (not counted); clicked: 1 by "
        "people, 0 by machines\n"
    ) in status


@pytest.mark.parametrize(
    ("agent", "method", "after", "why"),
    [
        (BROWSER, "GET", timedelta(seconds=10), "10 s after the send (within 60 s)"),
        ("Mozilla/5.0", "GET", timedelta(hours=3), "Apple Mail Privacy Protection"),
        ("Mozilla/5.0 (compatible; Mimecast URL Protect)", "GET", timedelta(hours=3), "Mimecast"),
        (BROWSER, "HEAD", timedelta(hours=3), "a HEAD request"),
        ("", "GET", timedelta(hours=3), "no user agent"),
    ],
    ids=["at-delivery", "apple-mpp", "mimecast", "head", "no-agent"],
)
def test_a_machine_is_recorded_apart_and_does_not_count(
    workspace_dir: Path,
    run: Cli,
    sent: dict[str, EmailMessage],
    agent: str,
    method: str,
    after: timedelta,
    why: str,
) -> None:
    _, html = parts(sent["bob"])
    [pixel], [click] = tracking_links(html or "", "o"), tracking_links(html or "", "c")
    answers = fetch_all(workspace_dir, MONDAY + after, [pixel, click], agent=agent, method=method)
    # Answered as a person would be: the scanner sees a normal pixel and a normal redirect.
    assert answers == [(200, None), (302, CASE_URL)]
    events = tracking_events(workspace_dir)
    assert [(e.kind, e.reason) for e in events] == [("open", "machine"), ("click", "machine")]
    for event in events:
        [(recorded_why, count)] = event.data["why"].items()
        assert recorded_why.startswith(why) and count == 1
    assert status_step(run)["tracking"] == {
        "opened": 0, "opened_by_machines": 1, "clicked": 0, "clicked_by_machines": 1,
    }  # fmt: skip
    intro = next(
        m for m in run.json("prospect", "bob@acme.example")["messages"] if m["step"] == "intro"
    )
    assert intro["opens"] == {"human": 0, "machine": 1}


def test_gmails_image_proxy_is_a_person_opening(
    workspace_dir: Path, run: Cli, sent: dict[str, EmailMessage]
) -> None:
    [pixel] = tracking_links(parts(sent["carl"])[1] or "", "o")
    fetch_all(workspace_dir, MONDAY + timedelta(hours=1), [pixel], agent=GMAIL_PROXY)
    [event] = tracking_events(workspace_dir)
    assert (event.reason, event.data["via"]) == ("human", "Gmail's image proxy")
    assert status_step(run)["tracking"]["opened"] == 1


def test_a_refetch_storm_adds_no_rows(workspace_dir: Path, sent: dict[str, EmailMessage]) -> None:
    [pixel] = tracking_links(parts(sent["ann"])[1] or "", "o")
    answers = fetch_all(workspace_dir, MONDAY + timedelta(hours=1), [pixel] * 40)
    assert answers == [(200, None)] * 40
    [event] = tracking_events(workspace_dir)
    assert event.data["count"] == 40


def forged(payload: list[str], secret: str = SECRET) -> str:
    return f"{DOMAIN}/{payload[0]}/" + URLSafeSerializer(secret, salt=SALT).dumps(payload)


def test_a_tampered_or_forged_token_is_404_and_never_a_redirect(
    workspace_dir: Path, run: Cli, sent: dict[str, EmailMessage]
) -> None:
    _, html = parts(sent["ann"])
    [pixel], [click] = tracking_links(html or "", "o"), tracking_links(html or "", "c")
    message_id = str(sent["ann"]["Message-ID"])
    token = click.rsplit("/", 1)[1]
    payload, signature = token.rsplit(".", 1)
    # A character inside the payload (every bit of it counts there; see the signature below).
    flipped = payload[:9] + ("A" if payload[9] != "A" else "B") + payload[10:]
    bad = [
        f"{DOMAIN}/c/{flipped}.{signature}",  # the target changed, the signature kept
        # The signature changed (its first character: the last one's low bits are padding,
        # which base64 decoding drops, so changing them changes nothing).
        f"{DOMAIN}/c/{payload}.{'B' if signature[0] == 'A' else 'A'}{signature[1:]}",
        forged(["c", message_id, "https://evil.example/"], secret="another-secret-entirely"),
        f"{DOMAIN}/c/" + pixel.rsplit("/", 1)[1],  # an open's token on the click path
        f"{DOMAIN}/o/" + token,  # a click's token on the pixel path
        forged(["c", message_id, "javascript:alert(1)"]),  # signed, but not a web link
        f"{DOMAIN}/c/",
        f"{DOMAIN}/c/not-a-token",
    ]
    answers = fetch_all(workspace_dir, MONDAY + timedelta(hours=1), bad)
    assert answers == [(404, None)] * len(bad)
    assert tracking_events(workspace_dir) == []
    # While the real one still goes where the template pointed.
    assert fetch_all(workspace_dir, MONDAY + timedelta(hours=1), [click]) == [(302, CASE_URL)]


# --- what the sequence does with them ---------------------------------------------------------


def test_an_opened_audience_moves_on_only_the_people_who_opened(
    workspace_dir: Path, run: Cli, tmp_path: Path, smtp: RecordingSMTP
) -> None:
    write_workspace(workspace_dir, audience="[no_reply, not_bounced, opened]", smtp_port=smtp.port)
    assert run("validate").exit_code == 0
    enroll(run, tmp_path, "ann", "bob", "carl", "dora")
    intros = by_recipient(send(run, smtp, MONDAY))
    later = MONDAY + timedelta(hours=2)
    pixel = {name: tracking_links(parts(m)[1] or "", "o")[0] for name, m in intros.items()}
    click = {name: tracking_links(parts(m)[1] or "", "c")[0] for name, m in intros.items()}
    fetch_all(workspace_dir, later, [pixel["ann"]])  # a person opened
    fetch_all(workspace_dir, later, [pixel["bob"]], agent="Mozilla/5.0")  # Apple's proxy
    fetch_all(workspace_dir, MONDAY + timedelta(seconds=5), [click["carl"]])  # a link scanner
    fetch_all(workspace_dir, later, [click["dora"]])  # images off, but she clicked: she opened
    nudges = send(run, smtp, MONDAY + timedelta(days=1))  # the last step: cold finishes
    assert len(nudges) == 4
    moved = {
        name: [e["sequence"] for e in run.json("prospect", f"{name}@acme.example")["enrollments"]]
        for name in ("ann", "bob", "carl", "dora")
    }
    assert moved == {
        "ann": ["cold", "reminder"],
        "bob": ["cold"],
        "carl": ["cold"],
        "dora": ["cold", "reminder"],
    }
    events = run.json("prospect", "bob@acme.example")["events"]
    assert [e["reason"] for e in events if e["kind"] == "next_skipped"] == [
        "cold -> reminder: not opened"
    ]


def test_stop_on_click_ends_the_enrollment_and_nothing_more_is_sent(
    workspace_dir: Path, run: Cli, tmp_path: Path, smtp: RecordingSMTP
) -> None:
    write_workspace(
        workspace_dir,
        stop_on="    stop_on: [click]",
        smtp_port=smtp.port,
        webhook_url="http://127.0.0.1:9/crm",
    )
    enroll(run, tmp_path, "ann", "bob")
    intros = by_recipient(send(run, smtp, MONDAY))
    click = {name: tracking_links(parts(m)[1] or "", "c")[0] for name, m in intros.items()}
    # A scanner following Ann's link at delivery stops nothing; her own click does.
    fetch_all(workspace_dir, MONDAY + timedelta(seconds=3), [click["ann"]])
    assert run.json("prospect", "ann@acme.example")["enrollments"][0]["state"] == "active"
    answers = fetch_all(workspace_dir, MONDAY + timedelta(hours=1), [click["ann"]])
    assert answers == [(302, CASE_URL)]
    ann = run.json("prospect", "ann@acme.example")
    assert ann["enrollments"][0]["state"] == "stopped"
    assert ann["enrollments"][0]["end_reason"] == "goal: a click in intro"
    [stop] = [e for e in ann["events"] if e["kind"] == "stop"]
    assert stop["reason"] == "click" and stop["data"]["url"] == CASE_URL
    [handoff] = run.json("handoffs")["handoffs"]
    assert (handoff["reason"], handoff["email"]) == ("click", "ann@acme.example")
    # The next day only Bob gets the nudge.
    nudges = send(run, smtp, MONDAY + timedelta(days=1))
    assert [str(m["To"].addresses[0].addr_spec) for m in nudges] == ["bob@acme.example"]
    # A click is not a reply: the A/B report still counts no win.
    report = json.dumps(run.json("ab", "report"))
    assert '"replies": 1' not in report and '"wins": 1' not in report


# --- the settings that must go together -------------------------------------------------------


def test_validate_refuses_an_opened_audience_while_opens_are_off(
    workspace_dir: Path, run: Cli
) -> None:
    write_workspace(
        workspace_dir,
        tracking=False,
        audience="[no_reply, opened]",
        stop_on="    stop_on: [click]",
    )
    result = run("validate")
    assert result.exit_code == 1
    lines = result.stderr.splitlines()
    assert any(
        re.match(
            r"sequences/cold\.yaml:15: next\.audience: audience 'opened' needs \[tracking\] "
            r"opens = true, which is off: nobody would move on to reminder",
            line,
        )
        for line in lines
    ), result.stderr
    assert any(
        line.startswith(
            "sequences/cold.yaml:6: steps.0.stop_on: stop_on 'click' needs [tracking] clicks"
        )
        for line in lines
    ), result.stderr
    # Every other command refuses the same way, so nothing runs with a rule that cannot hold.
    send_result = run("send", "--once")
    assert send_result.exit_code == 1
    assert "audience 'opened' needs [tracking] opens" in send_result.stderr


def test_validate_warns_when_no_step_of_the_sequence_has_html(
    workspace_dir: Path, run: Cli
) -> None:
    write_workspace(workspace_dir, intro=PLAIN_ONLY, audience="[opened]")
    (workspace_dir / "templates/cold/2-nudge.yaml").write_text(
        "bodies:\n  - id: bump\n    en: Hi again\n", encoding="utf-8"
    )
    result = run("validate")
    assert result.exit_code == 0, result.output
    assert "sequences/cold.yaml:15: opened: no email step of cold has an HTML body" in (
        result.output
    )


# --- the daemon, whole ------------------------------------------------------------------------


@pytest.mark.sqlite_only
def test_the_daemon_sends_the_tracked_message_and_serves_its_pixel_and_link(
    workspace_dir: Path, run: Cli, tmp_path: Path, smtp: RecordingSMTP
) -> None:
    import http.client
    import signal
    import socket
    import time

    from tests.test_daemon import ALWAYS_OPEN, finish, outreach

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        web_port = probe.getsockname()[1]
    base = f"http://127.0.0.1:{web_port}/t"  # the proxy's path prefix, kept by the daemon
    write_workspace(workspace_dir, smtp_port=smtp.port, **ALWAYS_OPEN)
    config = workspace_dir / "outreach.toml"
    edit_config(config, domain=base, port=web_port, dispatch_seconds=1, machine_seconds=0)
    enroll(run, tmp_path, "ann")
    daemon = outreach(config, "run", env={"OUTREACH_SECRET": SECRET})
    try:
        deadline = time.monotonic() + 60
        while not any(s["sent"] for s in [status_step(run)]):
            assert time.monotonic() < deadline, "the daemon never sent the intro"
            time.sleep(0.5)
        _, html = parts(smtp.received[0].message)
        pixel = re.findall(rf"{re.escape(base)}/o/[A-Za-z0-9_.-]+", html or "")[0]
        click = re.findall(rf"{re.escape(base)}/c/[A-Za-z0-9_.-]+", html or "")[0]
        answers = []
        for link in (pixel, click):
            connection = http.client.HTTPConnection("127.0.0.1", web_port, timeout=10)
            connection.request("GET", link.removeprefix(f"http://127.0.0.1:{web_port}"),
                               headers={"User-Agent": BROWSER})  # fmt: skip
            response = connection.getresponse()
            body = response.read()
            answers.append((response.status, response.getheader("Location"), body[:6]))
            connection.close()
    finally:
        daemon.send_signal(signal.SIGTERM)
        code, _, log = finish(daemon, timeout=30)
    assert code == 0, log
    assert answers == [(200, None, b"GIF89a"), (302, CASE_URL, b"")]
    assert status_step(run)["tracking"] == {
        "opened": 1, "opened_by_machines": 0, "clicked": 1, "clicked_by_machines": 0,
    }  # fmt: skip
    assert "open human: ann@acme.example cold/intro" in log
    assert "click human: ann@acme.example cold/intro" in log
    assert "GET /t/o/<token> 200" in log and "GET /t/c/<token> 302" in log
    for link in (pixel, click):  # the token names the message: never in the log
        assert link.rsplit("/", 1)[1] not in log
