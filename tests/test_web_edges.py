"""What a stranger can send to the daemon's HTTP port: a real server over loopback, real
clients (aiohttp's, and a raw socket for what no polite client sends). Each is refused with a
clean HTTP status and one log line, and the database stays as it was."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from outreach import web as outreach_web
from outreach.enroll import enroll_csv
from outreach.workspace import Workspace
from tests.dbsnapshot import snapshot

GOAL_TOKEN = "booking-tool-token-123"
AUTH = {"Authorization": f"Bearer {GOAL_TOKEN}"}
NOW = datetime(2025, 3, 3, 9, 0, tzinfo=UTC)
READ_TIMEOUT = 0.5  # the server's, scaled down from 10 s so the tests wait little
pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def ws(workspace_dir: Path, tmp_path: Path) -> Iterator[Workspace]:
    """The starter workspace with Ann enrolled in the cold sequence."""
    workspace = Workspace.load(workspace_dir / "outreach.toml")
    csv = tmp_path / "ann.csv"
    csv.write_text("email,first_name\nann@acme.example,Ann\n", encoding="utf-8")
    assert enroll_csv(workspace, csv, "cold", now=NOW).enrolled == 1
    yield workspace
    workspace.close()


def serve(ws: Workspace, test: Callable[[str, int], Awaitable[None]]) -> None:
    """Run ``test(host, port)`` against the daemon's endpoints, then stop the server."""

    async def main() -> None:
        runner = await outreach_web.start(
            ws,
            "127.0.0.1",
            0,
            secret="a-test-secret-of-enough-length",
            goal_token=GOAL_TOKEN,
            now=lambda: NOW,
            read_timeout=READ_TIMEOUT,
        )
        try:
            host, port = runner.addresses[0][:2]
            await test(host, port)
        finally:
            await runner.cleanup()

    asyncio.run(main())


def web_log(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    """What the server logged about requests (aiohttp's access and server logs)."""
    return [r for r in caplog.records if r.name.startswith("aiohttp")]


def assert_one_line_each(records: list[logging.LogRecord], count: int, *needles: str) -> None:
    assert len(records) == count, [r.getMessage() for r in records]
    for record in records:
        text = record.getMessage()
        assert "\n" not in text and record.exc_info is None and record.exc_text is None
        for needle in needles:
            assert needle in text, text


async def post_goal(host: str, port: int, data: bytes) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as session:
        async with session.post(
            f"http://{host}:{port}/goal",
            data=data,
            headers={**AUTH, "Content-Type": "application/json"},
        ) as response:
            return response.status, await response.json()


def test_deeply_nested_json_is_a_400_not_a_recursion_error(
    ws: Workspace, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    before = snapshot(ws.config.path)
    deep = b'{"email": "ann@acme.example", "reason": "meeting", "x": ' + b"[" * 2000
    deep += b"]" * 2000 + b"}"
    assert len(deep) < outreach_web.GOAL_MAX_BODY
    answers = []

    async def test(host: str, port: int) -> None:
        answers.append(await post_goal(host, port, deep))

    serve(ws, test)
    assert answers == [(400, {"error": "the JSON nests deeper than 8 levels"})]
    assert_one_line_each(web_log(caplog), 1, "POST /goal 400", "refused: the JSON nests deeper")
    assert snapshot(ws.config.path) == before


def test_a_body_over_the_goal_limit_is_413_without_reading_it(
    ws: Workspace, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    before = snapshot(ws.config.path)
    answers = []

    async def test(host: str, port: int) -> None:
        body = b'{"email": "ann@acme.example", "reason": "meeting", "pad": "%s"}'
        answers.append(await post_goal(host, port, body % (b"x" * 100_000)))

    serve(ws, test)
    assert answers == [(413, {"error": "the body is over 4096 bytes"})]
    assert_one_line_each(web_log(caplog), 1, "POST /goal 413", "refused: the body is over")
    assert snapshot(ws.config.path) == before


async def raw_exchange(host: str, port: int, data: bytes) -> tuple[bytes, float]:
    """Send ``data`` and nothing more; return all the server sends until it closes, and how
    long that took."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(data)
        await writer.drain()
        started = time.monotonic()
        answer = await asyncio.wait_for(reader.read(), 20)
        return answer, time.monotonic() - started
    finally:
        writer.close()


def test_a_body_shorter_than_its_content_length_does_not_hold_the_connection(
    ws: Workspace, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    before = snapshot(ws.config.path)
    results = []
    request = (
        f"POST /goal HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {GOAL_TOKEN}\r\n"
        "Content-Type: application/json\r\nContent-Length: 200\r\n\r\n"
        '{"email": "ann@acme.example",'
    ).encode()

    async def test(host: str, port: int) -> None:
        results.append(await raw_exchange(host, port, request))

    serve(ws, test)
    [(answer, seconds)] = results
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert b"the body did not arrive in time" in answer
    # The read timeout, then at most the lingering time to let the client see the answer.
    assert READ_TIMEOUT <= seconds < READ_TIMEOUT + outreach_web.LINGER_SECONDS + 1.5
    assert_one_line_each(web_log(caplog), 1, "POST /goal 408", "refused: the body did not")
    assert snapshot(ws.config.path) == before


def test_headers_that_never_end_do_not_hold_the_connection(ws: Workspace) -> None:
    results = []

    async def test(host: str, port: int) -> None:
        results.append(await raw_exchange(host, port, b"POST /goal HTTP/1.1\r\nHost: x\r\n"))

    serve(ws, test)
    [(answer, seconds)] = results
    assert answer == b"" and seconds < READ_TIMEOUT + 1.5


def test_over_long_request_lines_are_one_log_line_each(
    ws: Workspace, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    answers: list[bytes] = []

    async def test(host: str, port: int) -> None:
        for _ in range(20):
            answer, _ = await raw_exchange(
                host, port, b"GET /" + b"a" * 20_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"
            )
            answers.append(answer)
        answer, _ = await raw_exchange(
            host, port, b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 20_000 + b"\r\n\r\n"
        )
        answers.append(answer)

    serve(ws, test)
    assert all(answer.startswith(b"HTTP/1.0 400 Bad Request") for answer in answers)
    records = web_log(caplog)
    assert_one_line_each(records, 21, "refused a malformed request from 127.0.0.1: 400")
    assert all(len(r.getMessage()) < 200 and r.levelno == logging.WARNING for r in records)


def test_each_refused_goal_is_one_line_with_its_reason(
    ws: Workspace, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    before = snapshot(ws.config.path)
    statuses = []

    async def test(host: str, port: int) -> None:
        async with aiohttp.ClientSession() as session:
            for headers, body in (
                ({}, b"{}"),
                (AUTH, b"{not json"),
                (AUTH, b'{"email": "ann@acme.example", "reason": "lunch"}'),
                (AUTH, b'{"email": "\xff"}'),
            ):
                async with session.post(
                    f"http://{host}:{port}/goal", data=body, headers=headers
                ) as response:
                    statuses.append(response.status)

    serve(ws, test)
    assert statuses == [401, 400, 400, 400]
    records = web_log(caplog)
    assert_one_line_each(records, 4, "POST /goal 4", "refused: ")
    assert snapshot(ws.config.path) == before


def test_a_bug_in_a_handler_keeps_its_traceback(
    ws: Workspace, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only what strangers send is shortened: our own failure must stay debuggable."""
    caplog.set_level(logging.INFO)

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("a bug of ours")

    monkeypatch.setattr(outreach_web.sequencing, "stop", broken)
    answers = []

    async def test(host: str, port: int) -> None:
        answers.append(
            await post_goal(host, port, b'{"email": "ann@acme.example", "reason": "meeting"}')
        )

    with pytest.raises(aiohttp.ContentTypeError):
        serve(ws, test)
    assert any(r.exc_info and "a bug of ours" in str(r.exc_info[1]) for r in caplog.records)
