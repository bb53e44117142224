"""The message lifecycle as a state machine: random interleavings never send twice, never send
after a stop.

Hypothesis drives two processes (two dispatchers with their own lease names) through claims,
takes, SMTP outcomes, stops, replies, crashes (a process forgets everything it held in memory),
restarts, lapsed leases and operators resolving unknown messages, on a real database (SQLite
and PostgreSQL). The SMTP exchange itself is the one thing not performed: a take that succeeds
puts the message "on the wire", and the rule then says what the server answered (or that the
process died in the middle, having delivered it or not). After every step:

- no message was delivered twice, and no message left again after a delivery;
- nothing went on the wire for a prospect after their stop was recorded;
- every row is in a state of :class:`MessageState`, and a row is ``sending`` only while some
  process has it on the wire or died with it there.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import freezegun
import pytest
from freezegun import freeze_time
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from sqlmodel import select

from outreach import clock, cluster, operations, sequencing
from outreach.dispatch import Claimed, Dispatcher, Report
from outreach.enroll import enroll_csv
from outreach.mail.smtp import Outcome, SmtpTransport
from outreach.models import Message, MessageState
from outreach.starter import init_workspace
from outreach.workspace import Workspace
from tests.conftest import edit_config

pytestmark = pytest.mark.both_databases
# Hypothesis times itself (and its garbage-collection hook) with the real clock.
freezegun.configure(extend_ignore_list=["hypothesis"])
MONDAY_10 = datetime(2027, 1, 4, 8, 0, tzinfo=UTC)
LEASE = 30
PEOPLE = [f"p{i}@acme{i}.example" for i in range(3)]
ANSWERS = {
    "sent": Outcome("sent", 250, "2.0.0 Ok"),
    "retry": Outcome("retry", 451, "4.3.0 try later"),
    "bounce": Outcome("bounce", 550, "5.1.1 no such user"),
    "auth": Outcome("auth", 535, "5.7.8 bad credentials"),
    "failed": Outcome("failed", 554, "5.6.0 refused"),
    "unreachable": Outcome("unreachable", None, "connection refused"),
}


@dataclass
class Process:
    """One sending process: its dispatcher and what it holds in memory."""

    dispatcher: Dispatcher
    claimed: list[Claimed] = field(default_factory=list)
    on_wire: list[Claimed] = field(default_factory=list)


class Lifecycle(RuleBasedStateMachine):
    def __init__(self, make_workspace: Any) -> None:
        super().__init__()
        self.frozen = freeze_time(MONDAY_10 + timedelta(days=1), real_asyncio=True)
        self.clock = self.frozen.start()
        self.ws: Workspace = make_workspace()
        self.processes = [self._process(), self._process()]
        self.delivered: dict[int, int] = {}  # message row -> deliveries
        self.stopped_at: dict[str, int] = {}  # prospect -> wire sends counted when stopped
        self.wire_sends: dict[str, int] = {p: 0 for p in PEOPLE}
        self.dead_on_wire: dict[int, bool] = {}  # row -> delivered before the crash?

    def _process(self) -> Process:
        member = cluster.Member.for_settings(LEASE, daemon=True)
        return Process(Dispatcher(self.ws, SmtpTransport, member=member, rng=random.Random(7)))

    def teardown(self) -> None:
        self.ws.close()
        self.frozen.stop()

    # ------------------------------------------------------------- the rules

    @rule(p=st.integers(0, 1))
    def claim(self, p: int) -> None:
        process = self.processes[p]
        box = self.ws.config.mailboxes[0]
        got = process.dispatcher.claim_batch(box, clock.now(), Report())
        if isinstance(got, list):
            process.claimed.extend(got)

    @precondition(lambda self: any(p.claimed for p in self.processes))
    @rule(data=st.data())
    def take(self, data: st.DataObject) -> None:
        process = data.draw(st.sampled_from([p for p in self.processes if p.claimed]))
        claim = process.claimed.pop(data.draw(st.integers(0, len(process.claimed) - 1)))
        if process.dispatcher.take(claim):
            # On the wire now.
            assert claim.rcpt not in self.stopped_at, f"{claim.rcpt} got a message after a stop"
            self.wire_sends[claim.rcpt] += 1
            assert self.delivered.get(claim.message_row, 0) == 0, "sent again after delivery"
            process.on_wire.append(claim)
        else:
            process.dispatcher.cancel(claim, Report())

    @precondition(lambda self: any(p.on_wire for p in self.processes))
    @rule(data=st.data(), answer=st.sampled_from(sorted(ANSWERS)))
    def answer(self, data: st.DataObject, answer: str) -> None:
        process = data.draw(st.sampled_from([p for p in self.processes if p.on_wire]))
        claim = process.on_wire.pop(0)
        if answer == "sent":
            self.delivered[claim.message_row] = self.delivered.get(claim.message_row, 0) + 1
        process.dispatcher.record(claim, ANSWERS[answer], clock.now(), Report())

    @rule(p=st.integers(0, 1), delivered=st.booleans())
    def crash(self, p: int, delivered: bool) -> None:
        """The process dies: claims and messages in SMTP stay in the database as they are."""
        process = self.processes[p]
        for claim in process.on_wire:
            self.dead_on_wire[claim.message_row] = delivered
            if delivered:
                self.delivered[claim.message_row] = self.delivered.get(claim.message_row, 0) + 1
        self.processes[p] = self._process()

    @rule(who=st.sampled_from(PEOPLE), reason=st.sampled_from(["replied", "meeting", "other"]))
    def stop(self, who: str, reason: str) -> None:
        sequencing.stop(self.ws.store, who, reason, clock.now())
        self.stopped_at.setdefault(who, self.wire_sends[who])

    @rule()
    def resume_mailbox(self) -> None:
        operations.resume_mailbox(self.ws, self.ws.config.mailboxes[0].email)

    @rule(seconds=st.sampled_from([1, LEASE + 1, 3600, 8 * 86400]))
    def time_passes(self, seconds: int) -> None:
        self.clock.tick(timedelta(seconds=seconds))

    @rule(p=st.integers(0, 1))
    def restart_recovery(self, p: int) -> None:
        """A process starts a run: lapsed claims go back, interrupted sends become unknown."""
        self.processes[p].dispatcher.recover(clock.now())

    @precondition(lambda self: bool(self.dead_on_wire))
    @rule(data=st.data())
    def operator_resolves(self, data: st.DataObject) -> None:
        """A person who checked the mailbox says truthfully whether it left."""
        with self.ws.store.session() as session:
            unknown = session.exec(
                select(Message.id).where(Message.state == MessageState.UNKNOWN)
            ).all()
        candidates = [row for row in unknown if row in self.dead_on_wire]
        if not candidates:
            return
        row = data.draw(st.sampled_from(sorted(c for c in candidates if c is not None)))
        operations.resolve(self.ws, str(row), self.dead_on_wire.pop(row), clock.now())

    # ------------------------------------------------------------- invariants

    @invariant()
    def delivered_at_most_once(self) -> None:
        assert all(count <= 1 for count in self.delivered.values()), self.delivered

    @invariant()
    def states_are_known_and_sending_means_on_the_wire(self) -> None:
        on_wire = {c.message_row for p in self.processes for c in p.on_wire}
        with self.ws.store.session() as session:
            rows = session.exec(select(Message.id, Message.state)).all()
        for row, state in rows:
            assert state in {s.value for s in MessageState}, state
            if state == MessageState.SENDING:
                assert row in on_wire or row in self.dead_on_wire, (row, state)


def _workspace_factory(tmp_path: Path, database: str, request: pytest.FixtureRequest) -> Any:
    counter = iter(range(10_000))
    cluster_fixture = (
        request.getfixturevalue("postgres_cluster") if database == "postgresql" else None
    )

    def make() -> Workspace:
        directory = tmp_path / f"ws{next(counter)}"
        init_workspace(directory)
        config = directory / "outreach.toml"
        edit_config(config, min_gap_seconds=0, max_gap_seconds=0, claim_lease_seconds=LEASE)
        if cluster_fixture is not None:
            edit_config(config, url=cluster_fixture.new_database())
        ws = Workspace.load(config)
        path = directory / "list.csv"
        rows = "".join(f"{p},P,Acme,en\n" for p in PEOPLE)
        path.write_text("email,first_name,company,language\n" + rows, encoding="utf-8")
        with freeze_time(MONDAY_10):
            assert enroll_csv(ws, path, "cold", now=clock.now(), rng=random.Random(1)).applied
        return ws

    return make


@pytest.mark.timeout(900)  # a few hundred real transactions per example
def test_no_interleaving_sends_twice_or_after_a_stop(
    tmp_path: Path, database: str, request: pytest.FixtureRequest
) -> None:
    make = _workspace_factory(tmp_path, database, request)
    run_state_machine_as_test(
        lambda: Lifecycle(make),
        settings=settings(
            max_examples=30 if database == "sqlite" else 10,
            stateful_step_count=25,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        ),
    )


def test_only_the_lifecycle_module_writes_a_message_state() -> None:
    """Every write of ``Message.state`` is a transition of ``outreach/lifecycle.py``."""
    import ast

    package = Path(__file__).parent.parent / "outreach"
    offenders = []
    for path in sorted(package.rglob("*.py")):
        if path.name in ("lifecycle.py", "models.py") or "migrations" in path.parts:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets = []
            if isinstance(node, ast.Assign):
                targets = node.targets
            elif isinstance(node, ast.AugAssign | ast.AnnAssign):
                targets = [node.target]
            for target in targets:
                for leaf in ast.walk(target):
                    if (
                        isinstance(leaf, ast.Attribute)
                        and leaf.attr == "state"
                        and isinstance(leaf.value, ast.Name)
                        and leaf.value.id in ("message", "task", "target", "m", "row")
                    ):
                        offenders.append(f"{path.name}:{node.lineno}")
            if isinstance(node, ast.Call) and any(k.arg == "state" for k in node.keywords):
                called = ast.unparse(node.func)
                if called == "Message" or "messages" in called:
                    offenders.append(f"{path.name}:{node.lineno}")
    assert offenders == []
