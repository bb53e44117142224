"""The long-running loop and ``send --once``: APScheduler is the clock, the database the truth.

One interval job dispatches due work every ``[daemon] dispatch_seconds``; within a run each
mailbox sends its due messages one after another at its random gap, so the pace is the gap,
not the interval; nothing is scheduled per message. SIGTERM or SIGINT lets the message in
flight finish and be recorded, then the process exits 0. A lock file stops two processes from
dispatching from one SQLite database. On PostgreSQL several daemons share the work
(``outreach/cluster.py``): each writes a heartbeat that renews what it holds, claims with
``FOR UPDATE SKIP LOCKED``, serves its share of the mailboxes, and the mailbox poll runs in
one of them at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import gc
import logging
import os
import signal
import sys
import threading
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any

from aiohttp.web import AppRunner
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.cron import CronTrigger
from sqlalchemy.exc import SQLAlchemyError

from outreach import clock, cluster, handoff, inbox, localtime, web
from outreach.ab import review as ab_review
from outreach.claims import Claimed
from outreach.config import Mailbox
from outreach.dispatch import Dispatcher
from outreach.errors import OutreachError
from outreach.mail.imap import ImapError, MailboxImap
from outreach.mail.smtp import SmtpTransport, Transport
from outreach.mail.unsubscribe import secret_from_env
from outreach.outcomes import Report
from outreach.pacing import Wait
from outreach.sequencing import check_no_orphans
from outreach.workspace import Workspace

log = logging.getLogger("outreach")

# Libraries that log at INFO what is routine for us (flufl.bounce names every detector it
# runs on every inbound message; APScheduler every job run; Alembic its context): only their
# warnings reach the daemon's log. (aiohttp.access stays: one line per web request is ours.)
QUIET_LOGGERS = ("apscheduler", "alembic", "flufl.bounce", "asyncio")
# syslog priorities, for journald's "<N>" line prefix (`journalctl -p warning` then works).
_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3}
# The mailbox a dispatcher task is draining, so that its log lines can name it.
current_mailbox: ContextVar[str | None] = ContextVar("current_mailbox", default=None)


class JournalFormatter(logging.Formatter):
    """One line per event, ``<priority>LEVEL message``: journald stamps the time itself and
    reads the priority from the prefix."""

    def format(self, record: logging.LogRecord) -> str:
        line = " ".join(super().format(record).split("\n"))
        return f"<{_PRIORITY.get(record.levelno, 3)}>{record.levelname} {line}"


def configure_logging(*, journald: bool | None = None) -> None:
    """The daemon's log on stderr, one line per event. Under systemd (``$JOURNAL_STREAM`` set,
    or ``journald``) without a timestamp and with a syslog priority prefix; elsewhere with the
    time."""
    if journald is None:
        journald = bool(os.environ.get("JOURNAL_STREAM"))
    handler = logging.StreamHandler()
    handler.setFormatter(
        JournalFormatter("%(message)s")
        if journald
        else logging.Formatter("%(asctime)s %(levelname)s %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


def log_event(line: str) -> None:
    """A dispatcher's event as one log line, naming the mailbox it happened in."""
    mailbox = current_mailbox.get()
    if mailbox and not line.startswith(mailbox):
        line = f"{mailbox}: {line}"
    log.info("%s", line)


class MailboxNamingDispatcher(Dispatcher):
    """A dispatcher whose events know their mailbox: each mailbox is drained in a task of its
    own, which carries the mailbox in ``current_mailbox``."""

    async def drain(self, box: Mailbox, report: Report, wait_for_gaps: bool) -> None:
        token = current_mailbox.set(box.email)
        try:
            await super().drain(box, report, wait_for_gaps)
        finally:
            current_mailbox.reset(token)


_HELD_LOCKS: set[int] = set()  # the file descriptors of the DispatchLocks this process holds


def _drop_locks_in_child() -> None:
    # A forked child (the compose worker) must not keep the lock alive: if this process died,
    # its restart would find the lock held by the orphan. Closing the child's copy of the
    # descriptor leaves this process's lock as it is.
    for fd in _HELD_LOCKS:
        with contextlib.suppress(OSError):
            os.close(fd)
    _HELD_LOCKS.clear()


os.register_at_fork(after_in_child=_drop_locks_in_child)


class DispatchLock:
    """One dispatching process per SQLite database, held for the life of the process."""

    def __init__(self, ws: Workspace) -> None:
        url = ws.config.database_url
        self.path: Path | None = None
        if url.startswith("sqlite:///") and ":memory:" not in url:
            self.path = Path(url[len("sqlite:///") :] + ".lock")
        self._fd: int | None = None

    @property
    def exclusive(self) -> bool:
        """Held on a SQLite file: no other process can be dispatching, alive or half-dead."""
        return self._fd is not None

    def __enter__(self) -> DispatchLock:
        if self.path is None:
            return self
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise OutreachError(
                f"another outreach process (pid {holder}) is sending from this database",
                file=self.path,
                hint="stop it first; one daemon per SQLite file",
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._fd = fd
        _HELD_LOCKS.add(fd)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._fd is not None:
            _HELD_LOCKS.discard(self._fd)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


class OnceDispatcher(Dispatcher):
    """``send --once``'s dispatcher: it also says when it waits out a mailbox's gap, and until
    when (in the mailbox's local time), so a run that sits still is not taken for a hang."""

    def __init__(self, *args: Any, wait_for_gaps: bool = True, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.wait_for_gaps = wait_for_gaps

    def claim_due(
        self, box: Mailbox, now: datetime, report: Report, limit: int | None = None
    ) -> list[Claimed] | Wait | None:
        claimed = super().claim_due(box, now, report, limit)
        if isinstance(claimed, Wait) and self.on_event is not None:
            until = localtime.local(
                claimed.until, localtime.mailbox_zone(self.ws.config, box.email), seconds=True
            )
            waits = self.wait_for_gaps and (
                (claimed.until - now).total_seconds()
                <= self.ws.config.settings.sending.max_gap_seconds + 1
            )
            self.on_event(
                f"{box.email}: waiting out the gap between two sends, until {until}"
                if waits
                else f"{box.email}: next send at {until} (the gap); not waiting for it"
            )
        return claimed


def make_due_tasks(ws: Workspace, now: Callable[[], datetime] = clock.now) -> int | None:
    """Make the due LinkedIn and manual steps tasks now (``outreach tasks`` before it lists),
    and skip those left undone too long. None when a daemon is running on this SQLite file:
    it makes them itself at its next tick, and two writers would only race."""
    try:
        lock = DispatchLock(ws).__enter__()
    except OutreachError:
        return None
    try:
        return Dispatcher(ws, _no_transport, now=now).make_due_tasks()
    finally:
        lock.__exit__(None, None, None)


def _no_transport(box: Mailbox) -> Transport:
    raise AssertionError("making tasks sends nothing")


def settle_heap() -> None:
    """What a sending process has loaded by now (modules, the config, the templates) lives as
    long as the process: it leaves the cyclic garbage collector's sight (``gc.freeze``), so a
    full collection walks only what sending makes since. Without it one came every couple of
    thousand messages in `bench/send_bench.py`, 0.11 s each here. `outreach send` and
    `outreach run` call it once the workspace is loaded."""
    gc.freeze()


def send_once(
    ws: Workspace,
    *,
    transport_for: Callable[[Mailbox], Transport] = SmtpTransport,
    wait_for_gaps: bool = True,
    now: Callable[[], datetime] = clock.now,
    on_event: Callable[[str], None] | None = None,
) -> Report:
    """Send everything due now, within windows and limits; then return what happened.

    SIGTERM or SIGINT lets the message in flight finish and be recorded, then returns.
    """
    check_no_orphans(ws)  # a removed mailbox with live enrollments: reassign them first
    with DispatchLock(ws) as lock:
        dispatcher = OnceDispatcher(
            ws, transport_for, now=now, on_event=on_event, wait_for_gaps=wait_for_gaps
        )
        if lock.exclusive:
            recover_after_crash(ws, dispatcher)

        async def run() -> Report:
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                try:
                    loop.add_signal_handler(sig, dispatcher.stopping.set)
                except (RuntimeError, ValueError):  # not the main thread (tests)
                    pass
            return await dispatcher.run_once(wait_for_gaps=wait_for_gaps)

        return asyncio.run(run())


def recover_after_crash(ws: Workspace, dispatcher: Dispatcher) -> None:
    """We hold the SQLite lock: whatever another process held, it died holding it. A message
    still "sending" becomes unknown; claimed ones and the mailboxes are free again."""
    dispatcher.recover(dispatcher.now(), everything=True)
    cluster.let_go(ws.store, dispatcher.member, everything=True)


class Daemon:
    """``outreach run``."""

    def __init__(
        self, ws: Workspace, transport_for: Callable[[Mailbox], Transport] = SmtpTransport
    ) -> None:
        self.ws = ws
        self.member = cluster.Member.for_settings(
            ws.config.settings.daemon.claim_lease_seconds, daemon=True
        )
        self.dispatcher = MailboxNamingDispatcher(
            ws, transport_for, on_event=log_event, member=self.member
        )
        self._tick: asyncio.Task[None] | None = None
        self._handoffs: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self._poll_lock = asyncio.Lock()  # one poll at a time; a wake-up during one waits
        self._wake = asyncio.Event()  # set from an IDLE thread when mail arrives
        self._unwatch = threading.Event()  # set to stop the IDLE threads
        self._watchers: list[threading.Thread] = []
        self.reload_requested = False
        self._held_logged: set[str] = set()

    async def tick(self) -> None:
        self._tick = asyncio.current_task()
        try:
            # A mailbox keeps sending at its gap within one tick (precise pacing); a backlog
            # that outlasts the tick interval holds the tick, and the next one waits.
            report = await self.dispatcher.run_once(wait_for_gaps=True, hold=True)
        except OutreachError as exc:
            log.error("dispatch: %s", exc.one_line())
            return
        for mailbox, reason in report.paused.items():
            log.warning(
                "mailbox %s is paused: %s (outreach mailboxes resume %s)", mailbox, reason, mailbox
            )
        for note in report.notes + report.errors:
            log.warning("%s", note)
        # A held step is logged once, not on every try (`outreach status` lists what is held).
        for problem in sorted(report.held.keys() - self._held_logged):
            log.error("held, not sent until fixed (see outreach status): %s", problem)
        self._held_logged |= set(report.held)
        if report.unknown:
            log.warning("%d message(s) in unknown state; see outreach status", report.unknown)

    async def _start_web(self) -> AppRunner | None:
        """The one-click unsubscribe, goal and tracking endpoints, when ``[web] enabled``."""
        settings = self.ws.config.settings
        if not settings.web.enabled:
            return None
        secret = (
            secret_from_env(settings.sending.unsubscribe_secret_env)
            if settings.sending.unsubscribe_url
            else None
        )
        goal_token = os.environ.get(settings.web.goal_token_env) or None
        tracking_secret = (
            secret
            or secret_from_env(
                settings.sending.unsubscribe_secret_env, "the unsubscribe and tracking links"
            )
            if settings.tracking.on
            else None
        )
        return await web.start(
            self.ws,
            settings.web.host,
            settings.web.port,
            secret=secret,
            goal_token=goal_token,
            tracking_secret=tracking_secret,
        )

    async def beat(self) -> None:
        """The heartbeat: this daemon is alive, and keeps what it holds."""
        try:
            await asyncio.to_thread(cluster.beat, self.ws.store, self.member, clock.now())
        except OutreachError as exc:
            log.error("heartbeat: %s", exc.one_line())

    async def once_per_cluster(self, job: str) -> bool:
        """True in the one daemon of the cluster that runs ``job`` (the mailbox poll, a cron
        job such as the A/B review) while it is alive; the others skip it."""
        return await asyncio.to_thread(
            cluster.hold_singleton, self.ws.store, job, self.member, clock.now()
        )

    async def poll(self) -> None:
        """The mailbox poll: replies stop sequences before the next dispatch can send. One
        daemon of the cluster polls; the others skip while it is alive."""
        if not await self.once_per_cluster("replies"):
            return
        async with self._poll_lock:
            report = await asyncio.to_thread(inbox.poll, self.ws, clock.now())
        for line in report.events:  # one line per message applied: mailbox and prospect
            log.info("%s", line)
        for note in report.notes:
            log.warning("%s", note)

    def _start_watching(self) -> None:
        """One IMAP IDLE connection per mailbox folder, each in a thread of its own: new mail
        wakes the poll at once instead of at its next interval."""
        loop = asyncio.get_running_loop()

        def wake() -> None:
            loop.call_soon_threadsafe(self._wake.set)

        for box in self.ws.config.mailboxes:
            if not box.imap_host:
                continue
            for folder in self.ws.config.settings.replies.folders:
                thread = threading.Thread(
                    target=self._watch,
                    args=(box, folder, wake),
                    name=f"idle {box.email} {folder}",
                    daemon=True,
                )
                thread.start()
                self._watchers.append(thread)

    def _watch(self, box: Mailbox, folder: str, wake: Callable[[], None]) -> None:
        while not self._unwatch.is_set():
            try:
                with MailboxImap.for_mailbox(box) as imap:
                    if not imap.supports_idle():
                        log.info("%s: the IMAP server offers no IDLE; polling only", box.email)
                        return
                    log.info("%s: waiting for new mail in %s (IMAP IDLE)", box.email, folder)
                    imap.watch(folder, self._unwatch, wake)
            except ImapError as exc:
                log.warning("%s: IDLE: %s; trying again in a minute", box.email, exc.one_line())
                self._unwatch.wait(60)

    async def _polls_on_wake(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            await self.poll()

    def _stop_watching(self) -> None:
        self._unwatch.set()
        for thread in self._watchers:
            thread.join(timeout=10)

    async def review(self) -> None:
        """The A/B review on its cron, by one daemon of the cluster; the next dispatch sees
        what it retired."""
        if not await self.once_per_cluster("ab-review"):
            return
        try:
            result = await asyncio.to_thread(ab_review.review, self.ws, clock.now(), trigger="cron")
            notes = await asyncio.to_thread(ab_review.publish_digest, self.ws, result)
        except OutreachError as exc:
            log.error("A/B review: %s", exc.one_line())
            return
        log.info(
            "A/B review %s: %d variant(s) retired, %d step(s) need new copy",
            result.review_id,
            len(result.retired),
            len(result.needs_copy),
        )
        for factor, decision in result.retired:
            log.info(
                "retired %s '%s': %s", factor.factor.label(), decision.variant, decision.reason
            )
        for note in notes:
            log.info("%s", note)

    async def deliver_handoffs(self) -> None:
        """The CRM hand-offs that are due; a CRM outage only delays them."""
        self._handoffs = asyncio.current_task()
        try:
            report = await handoff.deliver_due(self.ws, clock.now())
        except OutreachError as exc:
            log.error("crm hand-off: %s", exc.one_line())
            return
        for line in report.lines:
            (log.warning if line.startswith("FAILED") else log.info)("crm hand-off: %s", line)

    def reload(self) -> None:
        """SIGHUP: stop cleanly, then start again in this process with the config re-read."""
        log.info("SIGHUP: finishing the message in flight, then reading the config again")
        self.reload_requested = True
        self.stop()

    def stop(self) -> None:
        log.info("stopping: finishing the message in flight")
        self._stop.set()
        self.dispatcher.stopping.set()

    async def main(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop)
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        settings = self.ws.config.settings
        scheduler = AsyncIOScheduler(timezone=settings.sending.timezone)
        await self.beat()  # seen alive before the first claim: the others share with it

        def every(
            seconds: float, job: Callable[[], Awaitable[None]], name: str, **now: Any
        ) -> None:
            """An interval job that never overlaps itself and runs once after a pause."""
            scheduler.add_job(
                guarded(name, job),
                "interval",
                seconds=seconds,
                max_instances=1,
                coalesce=True,
                id=name,
                **now,
            )

        at_once = {"next_run_time": clock.now()}
        every(self.member.beat_seconds, self.beat, "heartbeat")
        every(settings.daemon.dispatch_seconds, self.tick, "dispatch", **at_once)
        if any(box.imap_host for box in self.ws.config.mailboxes):
            every(settings.replies.poll_seconds, self.poll, "replies", **at_once)
        if settings.crm.webhook_url:
            every(settings.crm.deliver_seconds, self.deliver_handoffs, "handoffs", **at_once)
        scheduler.add_job(
            guarded("ab-review", self.review),
            review_trigger(self.ws),
            max_instances=1,
            coalesce=True,
            misfire_grace_time=3600,
            id="ab-review",
        )
        scheduler.start()
        log.info(
            "outreach running: %d mailbox(es), dispatch every %ss (kill -HUP %d reloads %s)",
            len(self.ws.config.mailboxes),
            settings.daemon.dispatch_seconds,
            os.getpid(),
            self.ws.config.path.name,
        )
        runner = await self._start_web()
        woken: asyncio.Task[None] | None = None
        if settings.replies.idle and any(box.imap_host for box in self.ws.config.mailboxes):
            self._start_watching()
            woken = asyncio.create_task(self._polls_on_wake())
        await self._stop.wait()
        if woken is not None:
            woken.cancel()
            await asyncio.to_thread(self._stop_watching)
        if runner is not None:
            await runner.cleanup()
        scheduler.pause()  # no new tick; the one in flight finishes (shutdown would cancel it)
        in_flight = [t for t in (self._tick, self._handoffs) if t is not None and not t.done()]
        if in_flight:
            await asyncio.wait(in_flight)
        scheduler.shutdown(wait=False)
        cluster.let_go(self.ws.store, self.member)
        log.info("stopped cleanly")


def guarded(name: str, job: Callable[[], Awaitable[None]]) -> Callable[[], Awaitable[None]]:
    """The job, with a database that is away (PostgreSQL restarting, a network cut) logged as
    one line per run instead of a traceback; the next run tries again."""

    async def run() -> None:
        try:
            await job()
        except SQLAlchemyError as exc:
            reason = str(getattr(exc, "orig", None) or exc).splitlines()[0]
            log.error("%s: the database is not answering (%s); trying again next run", name, reason)

    return run


def review_trigger(ws: Workspace) -> CronTrigger:
    """``[ab] review`` as a trigger in the workspace's time zone (``[sending] timezone``)."""
    settings = ws.config.settings
    return CronTrigger.from_crontab(settings.ab.review, timezone=settings.sending.timezone)


def run(ws: Workspace, transport_for: Callable[[Mailbox], Transport] = SmtpTransport) -> None:
    """Run the daemon until SIGTERM or SIGINT."""
    ws.store  # noqa: B018 - a schema that is behind stops the daemon here, with the command
    check_no_orphans(ws)  # a removed mailbox with live enrollments: reassign them first
    with DispatchLock(ws) as lock:
        daemon = Daemon(ws, transport_for)
        if lock.exclusive:
            recover_after_crash(ws, daemon.dispatcher)
        asyncio.run(daemon.main())
    if daemon.reload_requested:
        # The same process (pid, systemd unit) starts again and reads the config afresh; the
        # warm-up's days, the limits and the bounce windows live in the database, so nothing
        # restarts from zero. A config that no longer loads stops here with its one line.
        ws.close()
        os.execv(sys.executable, [sys.executable, "-m", "outreach", *sys.argv[1:]])
