"""Dispatch: claim what is due, compose it, send it once, record what happened.

The order of events for one email is the guarantee (each state move is one guarded statement
of :mod:`outreach.lifecycle`):

1. **Claim** (:mod:`outreach.claims`, one short transaction): the mailbox's pace
   (:mod:`outreach.pacing`), the due enrollments still active and not suppressed, their
   outbox rows ``claimed`` under this process's lease, variants assigned, counted against the
   mailbox. Commit. Nothing is rendered while the write lock is held.
2. **Compose** (:mod:`outreach.compose`, no transaction): render and build. A message that
   cannot be built is held (back to the queue, tried again later), never sent with a hole.
3. **Take**: one statement that is the last look and the hand-over: ``claimed`` becomes
   ``sending`` only for the lease holder and only while the enrollment is still active at
   this step; a reply or a stop recorded since the claim cancels the send.
4. **SMTP** (:mod:`outreach.mail.smtp`).
5. **Record** (:mod:`outreach.outcomes`, one transaction for a batch): ``sent`` and the next
   step planned; or a retry with backoff, a bounce, a paused mailbox.

A process that dies between 3 and 5 leaves the message ``sending``; when the next run starts
(or its lease runs out) it becomes ``unknown`` and is never sent again by itself; where the
mailbox has IMAP its Sent folder settles it (:mod:`outreach.recovery`), else ``outreach
resolve``. Several daemons (PostgreSQL): claims are leased (:mod:`outreach.cluster`); a dead
daemon's ``claimed`` rows go back to the queue after the lease.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from datetime import datetime

from sqlalchemy import Connection

from outreach import clock, cluster, lifecycle, recovery, tasks
from outreach.ab.assign import Assigner
from outreach.claims import Claimed, Claimer, hold
from outreach.compose import Composed, Composer
from outreach.compose_worker import ComposeWorker
from outreach.config import Mailbox
from outreach.errors import OutreachError
from outreach.mail.smtp import Outcome, Transport
from outreach.outcomes import Recorder, Report
from outreach.pacing import Pacing, Wait
from outreach.recovery import SentFolder
from outreach.workspace import Workspace

__all__ = ["Claimed", "Dispatcher", "Report", "Wait"]

TROUBLE = ("auth", "unreachable", "retry")  # the server is in trouble: stop this mailbox's run


class Dispatcher:
    """Sends what is due, mailbox by mailbox, in parallel; one failing mailbox stops nobody."""

    def __init__(
        self,
        ws: Workspace,
        transport_for: Callable[[Mailbox], Transport],
        *,
        rng: random.Random | None = None,
        now: Callable[[], datetime] = clock.now,
        on_event: Callable[[str], None] | None = None,
        member: cluster.Member | None = None,
    ) -> None:
        self.ws = ws
        self.now = now
        self.rng = rng or random.Random()
        self.member = member or cluster.Member.for_settings(
            ws.config.settings.daemon.claim_lease_seconds
        )
        self.transport_for = transport_for
        self.on_event = on_event
        self.stopping = asyncio.Event()
        self.composer = Composer(ws)
        self.worker = ComposeWorker(self.composer, on_event)
        self.assigner = Assigner(ws, self.rng, now)
        self.claimer = Claimer(
            ws,
            Pacing(ws.config, self.member, self.rng),
            self.assigner,
            self.member,
            self.composer.recipient,
        )
        self.recorder = Recorder(ws, self.rng, on_event)
        self._sent_folders_checked = False
        self._prepared_at: datetime | None = None
        self._take_conn: Connection | None = None  # the takes' connection, for one run

    def make_due_tasks(self) -> int:
        """Every mailbox's due LinkedIn and manual steps made tasks now, their texts rendered
        (outside the claim's transaction), and tasks left undone too long skipped: what
        ``outreach tasks`` runs before it lists. Returns how many tasks it made."""
        now = self.now()
        made = 0
        for box in self.ws.config.mailboxes:
            result = self.claimer.claim_tasks(box, now)
            tasks.render_new(self.ws, self.composer, result.tasks)
            made += len(result.tasks)
        tasks.expire(self.ws, now, Report(), self.rng)
        return made

    # ----------------------------------------------------------------- the run

    async def run_once(self, *, wait_for_gaps: bool = True, hold: bool = False) -> Report:
        """Send everything due now, within windows and limits; then return. The mailboxes
        served are given up at the end, unless ``hold`` (the daemon keeps them between ticks)."""
        beating = asyncio.create_task(self._beat_while_running())
        try:
            return await self._run_once(wait_for_gaps)
        finally:
            beating.cancel()
            self.worker.stop()
            if self._take_conn is not None:
                self._take_conn.close()
                self._take_conn = None
            if not hold:
                cluster.let_go(self.ws.store, self.member)

    async def _beat_while_running(self) -> None:
        """Renew this process's leases while it sends (waiting out gaps can take long)."""
        while True:
            await asyncio.sleep(self.member.beat_seconds)
            await asyncio.to_thread(cluster.beat, self.ws.store, self.member, self.now())

    def _refresh_if_stale(self) -> None:
        """A run that sends a backlog at its gaps can last long: what a review retired and
        what a marketer edited are read again every ``[daemon] dispatch_seconds``."""
        now = self.now()
        interval = self.ws.config.settings.daemon.dispatch_seconds
        if self._prepared_at is None or (now - self._prepared_at).total_seconds() >= interval:
            if self.assigner.prepare(now):
                self.recorder.event("template files changed: read again")
                self.worker.stop()  # the next batch forks a worker that has them
            self._prepared_at = now

    async def _run_once(self, wait_for_gaps: bool) -> Report:
        report = Report()
        now = self.now()
        self._prepared_at = None
        self._refresh_if_stale()
        # The Sent folders are searched when a message has just become unknown (and once per
        # process), not on every tick: an unknown one not found there waits for the operator.
        if self.recover(now) or not self._sent_folders_checked:
            await asyncio.to_thread(recovery.settle_from_sent_folders, self.ws, report, self.rng)
            self._sent_folders_checked = True
        else:
            report.unknown = recovery.count_unknown(self.ws)
        tasks.expire(self.ws, now, report, self.rng)
        boxes = self.ws.config.mailboxes
        results = await asyncio.gather(
            *(self.drain(box, report, wait_for_gaps) for box in boxes), return_exceptions=True
        )
        for box, result in zip(boxes, results, strict=True):
            if isinstance(result, OutreachError):
                report.errors.append(f"{box.email}: {result.one_line()}")
            elif isinstance(result, BaseException):
                raise result
        return report

    async def drain(self, box: Mailbox, report: Report, wait_for_gaps: bool) -> None:
        """Send this mailbox's due messages, keeping its gap, until none is left."""
        transport = self.transport_for(box)
        transport.check()  # a missing password stops this mailbox before anything is claimed
        sent_folder = SentFolder(box) if box.save_to_sent else None
        batch: list[Claimed] = []
        try:
            while not self.stopping.is_set():
                self._refresh_if_stale()
                claimed = await self.claim_composed(box, self.now(), report)
                if claimed is None:
                    return
                if isinstance(claimed, Wait):
                    delay = (claimed.until - self.now()).total_seconds()
                    if (
                        not wait_for_gaps
                        or delay > self.ws.config.settings.sending.max_gap_seconds + 1
                    ):
                        return
                    try:
                        await asyncio.wait_for(self.stopping.wait(), timeout=max(delay, 0))
                    except TimeoutError:
                        pass
                    continue
                batch = claimed
                done: list[tuple[Claimed, Outcome]] = []
                recorded = 0  # done[:recorded] is written down already
                try:
                    while batch and not self.stopping.is_set():
                        claim = batch.pop(0)
                        if not self.take(claim):
                            self.cancel(claim, report)
                            continue
                        assert claim.composed is not None
                        outcome = await transport.send(
                            claim.composed.email, claim.mail_from, claim.rcpt
                        )
                        done.append((claim, outcome))
                        if outcome.kind in TROUBLE:
                            return  # one try per mailbox per run, not per message
                        if outcome.kind == "bounce":
                            # The bounce pause is decided as the bounce is recorded: at once,
                            # not at the end of the batch, so a bad list costs no more
                            # bounces in batches of 50 than one message at a time would.
                            self.recorder.record(done[recorded:], self.now(), report)
                            recorded = len(done)
                            if box.email in report.paused:
                                return
                finally:
                    self.recorder.record(done[recorded:], self.now(), report)
                    # Every message the server accepted, however the batch ended.
                    if sent_folder is not None:
                        for claim, outcome in done:
                            if outcome.kind == "sent" and claim.composed is not None:
                                await asyncio.to_thread(
                                    sent_folder.append, claim.composed.email, report
                                )
        finally:
            if batch:  # stopping, or the server in trouble: the rest goes back to the queue
                self.release([c.message_row for c in batch])
            await transport.close()
            if sent_folder is not None:
                await asyncio.to_thread(sent_folder.close)

    # ------------------------------------------------------ the steps, by name

    def claim_due(
        self, box: Mailbox, now: datetime, report: Report, limit: int | None = None
    ) -> list[Claimed] | Wait | None:
        """Claim the mailbox's next due emails (creating due tasks on the way), leased to this
        process; or say why nothing can go now."""
        result = self.claimer.claim(box, now, limit)
        for problem, count in result.held.items():
            report.held[problem] = report.held.get(problem, 0) + count
        if result.tasks:
            tasks.render_new(self.ws, self.composer, result.tasks)
            report.tasks_created += len(result.tasks)
            for task in result.tasks:
                step = task.sequence.steps[task.step_index]
                self.recorder.event(
                    f"task for {task.box.email}: {step.channel} {task.recipient.email} "
                    f"({task.sequence.name}/{step.name})"
                )
        if result.paused is not None:
            report.paused[box.email] = result.paused
            return None
        if result.wait is not None:
            return result.wait
        return result.claimed or None

    def claim_batch(
        self, box: Mailbox, now: datetime, report: Report, limit: int | None = None
    ) -> list[Claimed] | Wait | None:
        """Claim the mailbox's next due emails and compose them in this process."""
        claimed = self.claim_due(box, now, report, limit)
        if not isinstance(claimed, list):
            return claimed
        return self._composed(claimed, self.worker.here(claimed, now), now, report)

    async def claim_composed(
        self, box: Mailbox, now: datetime, report: Report
    ) -> list[Claimed] | Wait | None:
        """Claim the mailbox's next due emails and compose them, a large batch in the compose
        worker (:mod:`outreach.compose_worker`) while the other mailboxes send."""
        claimed = self.claim_due(box, now, report)
        if not isinstance(claimed, list):
            return claimed
        return self._composed(claimed, await self.worker.compose(claimed, now), now, report)

    def claim(self, box: Mailbox, now: datetime, report: Report) -> Claimed | Wait | None:
        """Claim, compose and take the mailbox's next due email at once, or say why not."""
        claimed = self.claim_batch(box, now, report, limit=1)
        if isinstance(claimed, list):
            [claim] = claimed
            taken = self.take(claim)
            assert taken
            return claim
        return claimed

    def _composed(
        self, claimed: list[Claimed], results: list[Composed | str], now: datetime, report: Report
    ) -> list[Claimed] | None:
        """The claims whose message was composed; each of the others is held (back to the
        queue, tried again later), never sent with a hole in it, and never the end of its
        sequence for a problem in the copy: the operator is told."""
        kept = []
        for claim, result in zip(claimed, results, strict=True):
            if isinstance(result, str):
                hold(self.ws, claim, self.member, now, result)
                report.held[result] = report.held.get(result, 0) + 1
                continue
            claim.composed = result
            claim.summary = {
                "to": claim.rcpt,
                "subject": result.subject,
                "message_id": result.message_id,
                "sequence": claim.sequence,
                "step": claim.step,
                "in_reply_to": result.in_reply_to or "",
            }
            kept.append(claim)
        return kept or None

    def take(self, claim: Claimed) -> bool:
        """The last look and the hand-over to SMTP (claimed becomes sending): False when the
        enrollment ended since the claim, or the lease lapsed and the message went back to the
        queue (or to another daemon) meanwhile."""
        now = self.now()
        content = claim.composed.stored() if claim.composed is not None else {}
        if self._take_conn is None:
            # One connection for the run's takes (no pool round trip per message), in
            # autocommit: the take is one statement, atomic by itself, so it needs no BEGIN
            # and COMMIT around it (on PostgreSQL one round trip instead of three).
            self._take_conn = self.ws.store.engine.connect().execution_options(
                isolation_level="AUTOCOMMIT"
            )
        return lifecycle.take(
            self._take_conn,
            claim.message_row,
            self.member.id,
            now,
            now + self.member.lease,
            **content,
        )

    def cancel(self, claim: Claimed, report: Report) -> None:
        """A claim not taken: the enrollment ended first (cancel it), or it is no longer ours."""
        with self.ws.store.engine.begin() as conn:
            if lifecycle.cancel(conn, claim.message_row, self.member.id):
                lifecycle.uncount(conn, claim.mail_from, forgive_gap=True)
                report.cancelled += 1

    def release(self, message_rows: list[int]) -> None:
        """Claimed messages this process will not send go back to the queue now."""
        with self.ws.store.engine.begin() as conn:
            lifecycle.release(conn, self.now(), ids=message_rows, owner=self.member.id)

    def record(self, claim: Claimed, outcome: Outcome, now: datetime, report: Report) -> None:
        """Write down what SMTP said about one message."""
        self.recorder.record([(claim, outcome)], now, report)

    def recover(self, now: datetime, *, everything: bool = False) -> int:
        """Lapsed claims back to the queue; interrupted sends become ``unknown``."""
        return recovery.recover(self.ws, now, everything=everything)
