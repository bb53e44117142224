"""The CRM hand-off: a reply or a goal is POSTed to a real HTTP receiver over loopback."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import random
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from freezegun import freeze_time
from multidict import CIMultiDict
from sqlmodel import select

from outreach import clock, handoff, inbox, sequencing
from outreach import web as outreach_web
from outreach.daemon import send_once
from outreach.enroll import enroll_csv
from outreach.models import Handoff, Message
from outreach.workspace import Workspace
from tests.conftest import Cli, edit_config
from tests.smtp_servers import RecordingSMTP

pytestmark = pytest.mark.timeout(60)

MONDAY_10 = datetime(2027, 1, 4, 8, 0, tzinfo=UTC)  # 10:00 in Helsinki
ANN = "ann@acme.example"
SECRET = "crm-signing-secret-0123456789"
PROSPECTS = (
    "email,first_name,last_name,company,title,linkedin,persona,language,industry\n"
    f"{ANN},Ann,Smith,Acme,CTO,https://www.linkedin.com/in/ann,decision_maker,en,Logistics\n"
)


@dataclass
class Post:
    headers: CIMultiDict[str]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)


class CrmReceiver:
    """A real aiohttp server on 127.0.0.1 in a thread of its own: it keeps every POST to
    ``/hook`` and answers with the scripted (status, text, headers), then 200."""

    def __init__(self) -> None:
        self.posts: list[Post] = []
        self.answers: list[tuple[int, str, dict[str, str]]] = []
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def script(self, *answers: int | tuple[int, str, dict[str, str]]) -> None:
        self.answers = [a if isinstance(a, tuple) else (a, "", {}) for a in answers]

    async def _handle(self, request: web.Request) -> web.Response:
        self.posts.append(Post(request.headers.copy(), await request.read()))
        status, text, headers = self.answers.pop(0) if self.answers else (200, "ok", {})
        return web.Response(status=status, text=text, headers=headers)

    async def _start(self) -> int:
        app = web.Application()
        app.router.add_post("/hook", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        return int(self._runner.addresses[0][1])

    def __enter__(self) -> CrmReceiver:
        self._thread.start()
        self.port = asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


@pytest.fixture
def crm() -> Iterator[CrmReceiver]:
    with CrmReceiver() as receiver:
        yield receiver


@pytest.fixture
def smtp() -> Iterator[RecordingSMTP]:
    with RecordingSMTP() as server:
        yield server


def set_crm(config: Path, **settings: object) -> None:
    """Set keys of the [crm] section, commented out or not (edit_config would find
    [sending]'s max_attempts first)."""
    head, _, section = config.read_text(encoding="utf-8").partition("[crm]\n")
    body, bracket, tail = section.partition("\n[")
    lines = body.splitlines()
    for key, value in settings.items():
        at = next(i for i, line in enumerate(lines) if re.match(rf"#?\s*{key}\s*=", line))
        lines[at] = f"{key} = {json.dumps(value)}"
    config.write_text(f"{head}[crm]\n" + "\n".join(lines) + bracket + tail, encoding="utf-8")


def enrolled(workspace_dir: Path, **crm_settings: object) -> Workspace:
    config = workspace_dir / "outreach.toml"
    if crm_settings:
        set_crm(config, **crm_settings)
    ws = Workspace.load(config)
    (workspace_dir / "list.csv").write_text(PROSPECTS, encoding="utf-8")
    result = enroll_csv(ws, workspace_dir / "list.csv", "cold", now=MONDAY_10)
    assert result.enrolled == 1
    return ws


@pytest.fixture
def ws(workspace_dir: Path, crm: CrmReceiver) -> Iterator[Workspace]:
    """The starter workspace with the webhook pointed at the receiver, Ann enrolled."""
    workspace = enrolled(workspace_dir, webhook_url=crm.url)
    yield workspace
    workspace.close()


def send_intro(ws: Workspace, smtp: RecordingSMTP) -> EmailMessage:
    edit_config(ws.config.path, smtp_port=smtp.port, min_gap_seconds=0, max_gap_seconds=0)
    fresh = Workspace.load(ws.config.path)
    with freeze_time(MONDAY_10, real_asyncio=True):
        assert len(send_once(fresh).sent) == 1
    fresh.close()
    return smtp.received[-1].message


def reply(original: EmailMessage, text: str) -> EmailMessage:
    """Ann's answer as a mail client writes it: new text on top, ours quoted below."""
    msg = EmailMessage()
    msg["From"] = f"Ann Smith <{ANN}>"
    msg["To"] = original["From"]
    msg["Subject"] = "Re: " + original["Subject"]
    msg["Date"] = "Tue, 05 Jan 2027 09:12:00 +0200"
    msg["Message-ID"] = f"<reply-{random.random()}@acme.example>"
    msg["In-Reply-To"] = original["Message-ID"]
    msg["References"] = original["Message-ID"]
    quoted = "\n".join("> " + line for line in original.get_content().splitlines())
    msg.set_content(f"{text}\n\nOn Mon, 4 Jan 2027 at 10:00, Sanna Lehto wrote:\n{quoted}\n")
    return msg


def apply(ws: Workspace, message: EmailMessage, now: datetime) -> str:
    with ws.store.session() as session:
        return inbox.apply_message(ws, session, message, now, inbox.PollReport())


def handoffs(ws: Workspace) -> list[Handoff]:
    with ws.store.session() as session:
        return list(session.exec(select(Handoff).order_by(Handoff.id)))


def test_a_reply_is_posted_once_with_the_prospect_step_variants_and_reply_text(
    ws: Workspace, crm: CrmReceiver, smtp: RecordingSMTP
) -> None:
    intro = send_intro(ws, smtp)
    replied_at = MONDAY_10 + timedelta(days=1)
    assert apply(ws, reply(intro, "Sounds good, let's talk next week."), replied_at) == "reply"

    report = handoff.deliver_once(ws, replied_at)
    assert (report.delivered, report.retrying, report.failed) == (1, 0, 0)
    assert handoff.deliver_once(ws, replied_at + timedelta(hours=1)).delivered == 0

    [post] = crm.posts
    doc = post.json
    assert post.headers["Content-Type"] == "application/json"
    assert post.headers["Idempotency-Key"] == doc["id"] == handoffs(ws)[0].uuid
    assert "X-Outreach-Signature" not in post.headers
    with ws.store.session() as session:
        sent = session.exec(select(Message).where(Message.step_name == "intro")).one()
    assert doc["reason"] == "replied" and doc["occurred_at"] == "2027-01-05T08:00:00Z"
    assert doc["prospect"] == {
        "email": ANN,
        "first_name": "Ann",
        "last_name": "Smith",
        "company": "Acme",
        "title": "CTO",
        "linkedin": "https://www.linkedin.com/in/ann",
        "persona": "decision_maker",
        "language": "en",
        "timezone": None,
        "fields": {"industry": "Logistics"},
    }
    assert doc["sequence"] == "cold" and doc["step"] == {"index": 0, "name": "intro"}
    assert doc["message"]["subject"] == str(intro["Subject"]) == sent.subject
    assert doc["message"]["subject_variant"] == sent.subject_variant is not None
    assert doc["message"]["body_variant"] == sent.body_variant is not None
    assert doc["message"]["message_id"] == intro["Message-ID"]
    assert doc["reply"]["text"].startswith("Sounds good") and "wrote:" not in doc["reply"]["text"]
    assert doc["reply"]["sentiment"] == "positive"
    [row] = handoffs(ws)
    assert (row.state, row.attempts, row.delivered_at) == ("delivered", 1, replied_at)


def test_a_goal_from_stop_is_posted_once(ws: Workspace, crm: CrmReceiver) -> None:
    run = Cli(ws.config.path)
    stopped = run("stop", ANN, "--reason", "meeting")
    assert stopped.exit_code == 0
    assert "hand-off #1 queued for the CRM" in stopped.stdout
    assert crm.posts == []  # stop never waits for the network

    delivered = run("handoffs", "--deliver")
    assert delivered.exit_code == 0, delivered.output
    assert delivered.stdout.splitlines()[-1] == "1 delivered, 0 to retry, 0 failed"
    assert run("handoffs", "--deliver").stdout.strip() == "0 delivered, 0 to retry, 0 failed"
    [post] = crm.posts
    doc = post.json
    assert doc["reason"] == "meeting" and doc["sequence"] == "cold"
    assert doc["step"] is None and doc["message"] is None and doc["reply"] is None
    assert run.json("handoffs")["counts"] == {"pending": 0, "delivered": 1, "failed": 0}


def test_the_same_goal_twice_is_recorded_and_handed_off_once(ws: Workspace) -> None:
    run = Cli(ws.config.path)
    assert run("stop", ANN, "--reason", "meeting").exit_code == 0
    again = run("stop", ANN, "--reason", "meeting")
    assert again.exit_code == 0 and "meeting was already recorded" in again.stdout
    assert "hand-off" not in again.stdout
    # A different goal later is news for the CRM: the meeting led to a webinar.
    assert "hand-off #2 queued" in run("stop", ANN, "--reason", "webinar").stdout
    assert len(run.json("handoffs")["handoffs"]) == 2
    goals = [e for e in run.json("prospect", ANN)["events"] if e["kind"] == "goal"]
    assert [e["reason"] for e in goals] == ["meeting", "webinar"]


def test_a_goal_from_the_web_endpoint_is_queued(ws: Workspace) -> None:
    async def main() -> int:
        runner = await outreach_web.start(
            ws, "127.0.0.1", 0, secret=None, goal_token="t" * 20, now=lambda: MONDAY_10
        )
        try:
            host, port = runner.addresses[0][:2]
            async with aiohttp.ClientSession() as session:
                async with session.post(
                    f"http://{host}:{port}/goal",
                    json={"email": ANN, "reason": "webinar"},
                    headers={"Authorization": "Bearer " + "t" * 20},
                ) as response:
                    return response.status
        finally:
            await runner.cleanup()

    assert asyncio.run(main()) == 200
    [row] = handoffs(ws)
    assert (row.kind, row.state, row.payload["reason"]) == ("webinar", "pending", "webinar")


def test_a_5xx_is_retried_with_backoff_and_delivered_once(ws: Workspace, crm: CrmReceiver) -> None:
    crm.script((500, "database down", {}), 502)
    run = Cli(ws.config.path)
    with freeze_time(MONDAY_10, real_asyncio=True) as frozen:
        sequencing.stop(ws.store, ANN, "webinar", clock.now(), ws.config.settings.crm)
        first = run("handoffs", "--deliver")
        # People read the retry time locally (Helsinki, the team's zone); JSON keeps UTC.
        assert "retry #1 webinar ann@acme.example at 2027-01-04 10:01:00 EET: HTTP 500" in (
            first.stdout
        )
        assert "#1  webinar  ann@acme.example  next 2027-01-04 10:01 EET, 1 attempt(s)" in (
            run("handoffs").stdout
        )
        [row] = run.json("handoffs")["handoffs"]
        assert row["state"] == "pending" and row["attempts"] == 1
        assert row["last_error"] == "HTTP 500: database down"
        assert row["next_attempt_at"] == "2027-01-04T08:01:00Z"
        frozen.tick(timedelta(seconds=59))
        assert run("handoffs", "--deliver").stdout.startswith("0 delivered")  # not yet due
        frozen.tick(timedelta(seconds=1))
        run("handoffs", "--deliver")  # 502: the second wait is twice the first
        assert run.json("handoffs")["handoffs"][0]["next_attempt_at"] == "2027-01-04T08:03:00Z"
        frozen.tick(timedelta(minutes=2))
        assert run("handoffs", "--deliver").stdout.splitlines()[-1].startswith("1 delivered")
        frozen.tick(timedelta(hours=1))
        run("handoffs", "--deliver")
    assert len(crm.posts) == 3
    assert len({p.headers["Idempotency-Key"] for p in crm.posts}) == 1
    assert len({p.body for p in crm.posts}) == 1
    [stored] = handoffs(ws)
    assert (stored.state, stored.attempts, stored.last_error) == ("delivered", 3, None)


def test_a_429_waits_at_least_its_retry_after(ws: Workspace, crm: CrmReceiver) -> None:
    crm.script((429, "slow down", {"Retry-After": "600"}))
    sequencing.stop(ws.store, ANN, "meeting", MONDAY_10, ws.config.settings.crm)
    assert handoff.deliver_once(ws, MONDAY_10).retrying == 1
    [row] = handoffs(ws)
    assert row.next_attempt_at == MONDAY_10 + timedelta(minutes=10)


def test_a_400_fails_at_once_is_listed_and_can_be_retried(ws: Workspace, crm: CrmReceiver) -> None:
    crm.script((400, '{"error": "person.email is required"}', {}))
    run = Cli(ws.config.path)
    run("stop", ANN, "--reason", "meeting")
    out = run("handoffs", "--deliver").stdout
    assert 'FAILED #1 meeting ann@acme.example: HTTP 400: {"error": ' in out
    assert run("handoffs", "--deliver").stdout.startswith("0 delivered")  # not retried
    listing = run("handoffs")
    assert "#1  meeting  ann@acme.example  FAILED, 1 attempt(s): HTTP 400" in listing.stdout
    assert "0 pending, 1 failed, 0 delivered" in listing.stdout
    [row] = run.json("handoffs")["handoffs"]
    assert row["state"] == "failed" and "person.email is required" in row["last_error"]

    again = run("handoffs", "retry", "1")
    assert again.exit_code == 0 and "pending again" in again.stdout
    assert run("handoffs", "--deliver").stdout.splitlines()[-1].startswith("1 delivered")
    assert len(crm.posts) == 2
    twice = run("handoffs", "retry", "1")
    assert twice.exit_code == 1
    assert twice.stderr.strip() == "ID: hand-off 1 is delivered, not failed"
    assert run("handoffs", "retry", "9").exit_code == 1


def test_an_unreachable_crm_is_retried_then_given_up(workspace_dir: Path, dead_port: int) -> None:
    port = dead_port
    ws = enrolled(workspace_dir, webhook_url=f"http://127.0.0.1:{port}/hook", max_attempts=2)
    sequencing.stop(ws.store, ANN, "meeting", MONDAY_10, ws.config.settings.crm)
    assert handoff.deliver_once(ws, MONDAY_10).retrying == 1
    assert "ClientConnectorError" in (handoffs(ws)[0].last_error or "")
    assert handoff.deliver_once(ws, MONDAY_10 + timedelta(minutes=1)).failed == 1
    [row] = handoffs(ws)
    assert row.state == "failed" and row.attempts == 2
    assert (row.last_error or "").startswith("gave up after 2 attempts: ClientConnectorError")
    ws.close()


def test_the_signature_verifies_with_the_secret(
    workspace_dir: Path, crm: CrmReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    ws = enrolled(workspace_dir, webhook_url=crm.url, secret_env="OUTREACH_CRM_SECRET")
    sequencing.stop(ws.store, ANN, "meeting", clock.now(), ws.config.settings.crm)
    run = Cli(ws.config.path)

    missing = run("handoffs", "--deliver")  # the variable is not set: nothing is claimed
    assert missing.exit_code == 1 and crm.posts == []
    assert missing.stderr.count("\n") == 1 and "[crm] secret_env" in missing.stderr
    assert handoffs(ws)[0].attempts == 0

    monkeypatch.setenv("OUTREACH_CRM_SECRET", SECRET)
    assert run("handoffs", "--deliver").exit_code == 0
    [post] = crm.posts
    expected = hmac.new(SECRET.encode(), post.body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(post.headers["X-Outreach-Signature"], "sha256=" + expected)
    forged = hmac.new(b"another secret entirely", post.body, hashlib.sha256).hexdigest()
    assert post.headers["X-Outreach-Signature"] != "sha256=" + forged
    assert SECRET not in ws.config.path.read_text() and SECRET not in run("handoffs").output
    ws.close()


def test_pipedrive_format_is_a_person_a_deal_and_a_note(
    workspace_dir: Path, crm: CrmReceiver, smtp: RecordingSMTP
) -> None:
    ws = enrolled(workspace_dir, webhook_url=crm.url, format="pipedrive")
    intro = send_intro(ws, smtp)
    apply(ws, reply(intro, "Interested <b>indeed</b>, call me."), MONDAY_10 + timedelta(days=1))
    assert handoff.deliver_once(ws, MONDAY_10 + timedelta(days=1)).delivered == 1
    doc = crm.posts[0].json
    assert set(doc) == {"id", "person", "deal", "note"}
    assert crm.posts[0].headers["Idempotency-Key"] == doc["id"]
    assert doc["person"] == {
        "name": "Ann Smith",
        "email": [{"value": ANN, "primary": True, "label": "work"}],
        "first_name": "Ann",
        "last_name": "Smith",
        "org_name": "Acme",
        "job_title": "CTO",
    }
    assert doc["deal"] == {"title": "Acme: replied via outreach", "status": "open"}
    note = doc["note"]["content"]
    assert note.startswith("Interested &lt;b&gt;indeed&lt;/b&gt;, call me.<br>")  # HTML, escaped
    assert "Sequence: cold, step 1 intro" in note and f"Subject: {intro['Subject']}" in note
    assert "industry: Logistics" in note and "Sentiment: positive" in note
    ws.close()


def test_without_a_webhook_nothing_is_queued(workspace_dir: Path, smtp: RecordingSMTP) -> None:
    ws = enrolled(workspace_dir)
    assert ws.config.settings.crm.webhook_url is None
    intro = send_intro(ws, smtp)
    apply(ws, reply(intro, "Yes, let's talk."), MONDAY_10 + timedelta(days=1))
    run = Cli(ws.config.path)
    assert run("stop", ANN, "--reason", "meeting").stdout.count("\n") == 1
    assert handoffs(ws) == []
    deliver = run("handoffs", "--deliver")
    assert deliver.exit_code == 1
    assert deliver.stderr == (
        "[crm] webhook_url: no webhook to deliver to "
        "(set it in the config; queued hand-offs wait for it)\n"
    )
    ws.close()


@pytest.mark.parametrize("reason", ["not-interested", "other"])
def test_other_stops_are_not_handed_off(ws: Workspace, reason: str) -> None:
    sequencing.stop(ws.store, ANN, reason, MONDAY_10, ws.config.settings.crm)
    assert handoffs(ws) == []


def test_an_unsubscribe_reply_is_not_handed_off(ws: Workspace, smtp: RecordingSMTP) -> None:
    intro = send_intro(ws, smtp)
    taken = apply(ws, reply(intro, "Please remove me from your list."), MONDAY_10)
    assert taken == "unsubscribe" and handoffs(ws) == []


@pytest.mark.parametrize(
    "url",
    ["http://example.com/hook", "http://10.0.0.5/hook", "ftp://127.0.0.1/x", "hooks.example.com"],
)
def test_a_webhook_url_in_the_clear_over_a_network_is_refused(
    workspace_dir: Path, url: str
) -> None:
    set_crm(workspace_dir / "outreach.toml", webhook_url=url)
    result = Cli(workspace_dir / "outreach.toml")("status")
    assert result.exit_code == 1 and result.stdout == ""
    [line] = result.stderr.splitlines()
    assert "outreach.toml:" in line and "crm.webhook_url: webhook_url must be" in line


@pytest.mark.parametrize(
    "url", ["https://hooks.example.com/x", "http://127.0.0.1:9/x", "http://localhost/x"]
)
def test_https_or_loopback_webhooks_are_accepted(workspace_dir: Path, url: str) -> None:
    set_crm(workspace_dir / "outreach.toml", webhook_url=url)
    assert Cli(workspace_dir / "outreach.toml")("status").exit_code == 0


def test_the_daemon_delivers_what_is_queued(ws: Workspace, crm: CrmReceiver) -> None:
    sequencing.stop(ws.store, ANN, "meeting", clock.now(), ws.config.settings.crm)
    daemon = subprocess.Popen(
        [sys.executable, "-m", "outreach", "--config", str(ws.config.path), "run"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        for _ in range(200):
            if handoffs(ws)[0].state == "delivered":
                break
            time.sleep(0.1)
    finally:
        daemon.send_signal(signal.SIGTERM)
        _, err = daemon.communicate(timeout=30)
    assert daemon.returncode == 0, err
    assert len(crm.posts) == 1 and handoffs(ws)[0].state == "delivered"
    assert "crm hand-off: delivered #1 meeting ann@acme.example (HTTP 200)" in err
