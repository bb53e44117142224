"""The daemon's HTTP endpoints, over loopback with a real HTTP client against a real workspace."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from sqlmodel import select

from outreach import web as outreach_web
from outreach.enroll import enroll_csv
from outreach.mail.unsubscribe import make_link
from outreach.models import Enrollment, Event, Prospect, Suppression
from outreach.workspace import Workspace
from tests.conftest import edit_config

SECRET = "a-test-secret-of-enough-length"
GOAL_TOKEN = "booking-tool-token-123"
NOW = datetime(2025, 3, 3, 9, 0, tzinfo=UTC)
UNSUBSCRIBE_URL = "https://outreach.northwind.example/unsubscribe"


@pytest.fixture
def ws(workspace_dir: Path, tmp_path: Path) -> Iterator[Workspace]:
    """A starter workspace with one-click unsubscribe on, and Ann enrolled in the cold sequence."""
    edit_config(workspace_dir / "outreach.toml", unsubscribe_url=UNSUBSCRIBE_URL)
    workspace = Workspace.load(workspace_dir / "outreach.toml")
    csv = tmp_path / "ann.csv"
    csv.write_text("email,first_name\nann@acme.example,Ann\n", encoding="utf-8")
    result = enroll_csv(workspace, csv, "cold", now=NOW)
    assert result.enrolled == 1
    yield workspace
    workspace.close()


def serve(ws: Workspace, test: Callable[[aiohttp.ClientSession, str], Awaitable[None]]) -> None:
    """Start the server on a free loopback port, run ``test(session, base_url)``, stop it."""

    async def main() -> None:
        runner = await outreach_web.start(
            ws, "127.0.0.1", 0, secret=SECRET, goal_token=GOAL_TOKEN, now=lambda: NOW
        )
        try:
            host, port = runner.addresses[0][:2]
            async with aiohttp.ClientSession() as session:
                await test(session, f"http://{host}:{port}")
        finally:
            await runner.cleanup()

    asyncio.run(main())


def local(link: str, base: str) -> str:
    """The public https link, as the proxy in front of the daemon forwards it."""
    return link.replace("https://outreach.northwind.example", base)


def enrollment_state(ws: Workspace, email: str = "ann@acme.example") -> str:
    with ws.store.session() as session:
        enrollment, _ = session.exec(
            select(Enrollment, Prospect).join(Prospect).where(Prospect.email == email)
        ).one()
        return enrollment.state


def suppressed(ws: Workspace) -> list[str]:
    with ws.store.session() as session:
        return [row.value for row in session.exec(select(Suppression))]


def events(ws: Workspace, kind: str) -> list[Event]:
    with ws.store.session() as session:
        return list(session.exec(select(Event).where(Event.kind == kind)))


def test_one_click_post_unsubscribes_and_ends_the_enrollment(ws: Workspace) -> None:
    link = make_link(UNSUBSCRIBE_URL, SECRET, "ann@acme.example")

    async def test(session: aiohttp.ClientSession, base: str) -> None:
        for _ in range(2):  # a second click (or a provider retry) is answered the same way
            async with session.post(
                local(link, base), data={"List-Unsubscribe": "One-Click"}
            ) as response:
                assert response.status == 200
                assert "unsubscribed" in await response.text()

    serve(ws, test)
    assert enrollment_state(ws) == "unsubscribed"
    assert suppressed(ws) == ["ann@acme.example"]
    assert len(events(ws, "suppress")) == 1


def test_one_click_post_without_a_body_is_accepted(ws: Workspace) -> None:
    link = make_link(UNSUBSCRIBE_URL, SECRET, "ann@acme.example")

    async def test(session: aiohttp.ClientSession, base: str) -> None:
        async with session.post(local(link, base)) as response:
            assert response.status == 200

    serve(ws, test)
    assert enrollment_state(ws) == "unsubscribed"


def test_unknown_address_gets_the_same_answer(ws: Workspace) -> None:
    known = make_link(UNSUBSCRIBE_URL, SECRET, "ann@acme.example")
    unknown = make_link(UNSUBSCRIBE_URL, SECRET, "nobody@else.example")
    answers = []

    async def test(session: aiohttp.ClientSession, base: str) -> None:
        for link in (unknown, known):
            async with session.post(local(link, base)) as response:
                answers.append((response.status, await response.text()))

    serve(ws, test)
    assert answers[0] == answers[1]


def test_get_shows_a_form_and_does_not_unsubscribe(ws: Workspace) -> None:
    link = make_link(UNSUBSCRIBE_URL, SECRET, "ann@acme.example")

    async def test(session: aiohttp.ClientSession, base: str) -> None:
        async with session.get(local(link, base)) as response:
            assert response.status == 200
            assert response.content_type == "text/html"
            page = await response.text()
        assert '<form method="post"' in page
        assert "<script" not in page and "http" not in page.split("<body>")[1]
        for line in ("stop receiving", "Haluatko lopettaa", "Vill du sluta"):
            assert line in page
        # The button posts back to the same URL: that is what unsubscribes.
        token = link.split("?t=")[1]
        assert f'action="?t={token}"' in page

    serve(ws, test)
    assert enrollment_state(ws) == "active"
    assert suppressed(ws) == []


def test_the_confirmation_form_unsubscribes_with_an_html_answer(ws: Workspace) -> None:
    link = make_link(UNSUBSCRIBE_URL, SECRET, "ann@acme.example")

    async def test(session: aiohttp.ClientSession, base: str) -> None:
        async with session.post(
            local(link, base),
            data={"List-Unsubscribe": "One-Click"},
            headers={"Accept": "text/html"},
        ) as response:
            assert response.status == 200
            assert response.content_type == "text/html"
            assert "Tilaus on peruttu" in await response.text()

    serve(ws, test)
    assert enrollment_state(ws) == "unsubscribed"


@pytest.mark.parametrize(
    "link",
    [
        make_link(UNSUBSCRIBE_URL, SECRET, "ann@acme.example")[:-3] + "abc",  # damaged
        make_link(UNSUBSCRIBE_URL, "another-secret-entirely-123", "ann@acme.example"),
        UNSUBSCRIBE_URL + "?t=" + "ann@acme.example",  # forged
        UNSUBSCRIBE_URL,  # no token at all
    ],
    ids=["damaged", "other-secret", "forged", "missing"],
)
def test_bad_token_is_refused_and_changes_nothing(ws: Workspace, link: str) -> None:
    async def test(session: aiohttp.ClientSession, base: str) -> None:
        async with session.post(local(link, base)) as response:
            assert response.status == 400
            assert "not valid" in await response.text()
        async with session.get(local(link, base)) as response:
            assert response.status == 400
            assert "<form" not in await response.text()

    serve(ws, test)
    assert enrollment_state(ws) == "active"
    assert suppressed(ws) == []
    assert events(ws, "suppress") == []


def test_default_path_is_u_when_no_url_is_configured(workspace: Workspace) -> None:
    assert workspace.config.settings.sending.unsubscribe_url is None
    assert outreach_web.unsubscribe_path(workspace) == "/u"
    link = make_link("https://x.example/u", SECRET, "nobody@acme.example")

    async def test(session: aiohttp.ClientSession, base: str) -> None:
        async with session.get(link.replace("https://x.example", base)) as response:
            assert response.status == 200

    serve(workspace, test)


def goal(
    ws: Workspace, body: Any, headers: dict[str, str] | None = None, raw: bytes | None = None
) -> tuple[int, Any]:
    """POST /goal and return (status, JSON answer)."""
    answer: list[tuple[int, Any]] = []

    async def test(session: aiohttp.ClientSession, base: str) -> None:
        kwargs: dict[str, Any] = {"data": raw} if raw is not None else {"json": body}
        async with session.post(f"{base}/goal", headers=headers, **kwargs) as response:
            answer.append((response.status, await response.json()))

    serve(ws, test)
    return answer[0]


AUTH = {"Authorization": f"Bearer {GOAL_TOKEN}"}
MEETING = {"email": "Ann@Acme.example", "reason": "meeting"}


def test_goal_webhook_without_a_token_is_refused(ws: Workspace) -> None:
    status, answer = goal(ws, MEETING)
    assert status == 401 and "token" in answer["error"]
    assert enrollment_state(ws) == "active"


@pytest.mark.parametrize(
    "value", [f"Bearer {GOAL_TOKEN}x", "Bearer wrong", f"Basic {GOAL_TOKEN}", "Bearer ä"]
)
def test_goal_webhook_with_a_wrong_token_is_refused(ws: Workspace, value: str) -> None:
    status, _ = goal(ws, MEETING, headers={"Authorization": value})
    assert status == 401
    assert enrollment_state(ws) == "active"
    assert events(ws, "goal") == []


def test_goal_webhook_stops_the_prospect_with_the_reason(ws: Workspace) -> None:
    status, answer = goal(ws, MEETING, headers=AUTH)
    assert status == 200
    assert answer == {
        "email": "ann@acme.example",
        "reason": "meeting",
        "stopped": ["cold"],
        "already_recorded": False,
    }
    assert enrollment_state(ws) == "stopped"
    # The booking tool retries (it did not see our answer): nothing new is recorded.
    status, answer = goal(ws, MEETING, headers=AUTH)
    assert status == 200 and answer["already_recorded"] is True and answer["stopped"] == []
    (event,) = events(ws, "goal")
    assert event.reason == "meeting"


def test_goal_webhook_for_an_unknown_prospect_is_404(ws: Workspace) -> None:
    status, answer = goal(ws, {"email": "nobody@acme.example", "reason": "webinar"}, AUTH)
    assert status == 404
    assert "no prospect" in answer["error"]


@pytest.mark.parametrize(
    "body, raw",
    [
        ({"email": "ann@acme.example", "reason": "lunch"}, None),
        ({"email": "ann@acme.example"}, None),
        (["ann@acme.example"], None),
        ({"email": "not an address", "reason": "meeting"}, None),
        (None, b"{not json"),
    ],
    ids=["bad-reason", "no-reason", "not-an-object", "bad-address", "not-json"],
)
def test_goal_webhook_with_a_bad_body_is_400(ws: Workspace, body: Any, raw: bytes | None) -> None:
    status, answer = goal(ws, body, AUTH, raw=raw)
    assert status == 400
    assert "\n" not in answer["error"]
    assert enrollment_state(ws) == "active"


def test_routes_that_are_off_answer_404(ws: Workspace) -> None:
    async def main() -> list[int]:
        runner = web.AppRunner(outreach_web.make_app(ws, secret=None, goal_token=None))
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        host, port = runner.addresses[0][:2]
        statuses = []
        try:
            async with aiohttp.ClientSession() as session:
                link = make_link(f"http://{host}:{port}/unsubscribe", SECRET, "ann@acme.example")
                for method, url in (("POST", f"http://{host}:{port}/goal"), ("POST", link)):
                    async with session.request(method, url, headers=AUTH) as response:
                        statuses.append(response.status)
        finally:
            await runner.cleanup()
        return statuses

    assert asyncio.run(main()) == [404, 404]
    assert enrollment_state(ws) == "active"


def test_health(ws: Workspace) -> None:
    async def test(session: aiohttp.ClientSession, base: str) -> None:
        async with session.get(f"{base}/health") as response:
            assert response.status == 200
            assert await response.text() == "ok"

    serve(ws, test)
