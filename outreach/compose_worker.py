"""Where a claimed batch is composed: in a second process when it is worth it, so the second
core renders and builds while this one claims, sends and records.

The worker is this process forked: it starts with the configuration, the sequences, the
templates and the secrets this process has in memory, reads nothing again from disk, and so
composes exactly what this process would (the same :class:`~outreach.compose.Composer`). It
lives for one send pass (started at the pass's first batch of :data:`MIN_BATCH` or more, ended
with the pass; started again when the templates are read again), never opens the database and
cannot send: it returns each message's :class:`~outreach.compose.Composed`, or the one-line
problem that holds it, and the dispatcher goes on as if it had composed them itself. If the
worker fails, this process composes the batch itself, and every later one of the pass.

Where ``fork`` does not exist (Windows), or on one core, everything is composed here.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from datetime import datetime
from typing import TYPE_CHECKING

from outreach.compose import Composed, Composer
from outreach.errors import TemplateError
from outreach.mail.message import InvalidHeader

if TYPE_CHECKING:
    from outreach.claims import Claimed

# Fewer messages than this are composed here. Composing costs about 0.11 ms a message here,
# the trip to the worker about 0.007 ms a message (pickling the claims and the results) and a
# fixed cost per batch (the executor's threads waking on both sides): worth it for a batch.
MIN_BATCH = 10


def compose_claim(composer: Composer, claim: Claimed, now: datetime) -> Composed | str:
    """The claimed message composed, or the problem (one line) that holds it: a template that
    does not render, a value that cannot be a header."""
    ws = composer.ws
    try:
        return composer.compose(
            ws.config.mailbox(claim.mail_from),
            ws.sequences[claim.sequence],
            claim.step_index,
            claim.recipient,
            subject_variant=claim.subject_variant,
            body_variant=claim.body_variant,
            thread=claim.thread,
            message_id=claim.message_id,
            now=now,
        )
    except (TemplateError, InvalidHeader) as exc:
        return exc.one_line()


class ComposeWorker:
    """Composes batches for one dispatcher; in a forked worker process for large batches."""

    def __init__(self, composer: Composer, on_event: Callable[[str], None] | None = None) -> None:
        self.composer = composer
        self.on_event = on_event
        self.forks = 0  # worker processes started (a test and the benchmark read it)
        self._pool: ProcessPoolExecutor | None = None
        self.enabled = "fork" in multiprocessing.get_all_start_methods() and (
            (os.cpu_count() or 1) > 1
        )

    def here(self, claims: list[Claimed], now: datetime) -> list[Composed | str]:
        return _compose_all(self.composer, claims, now)

    async def compose(self, claims: list[Claimed], now: datetime) -> list[Composed | str]:
        """Each claim's message or problem, in order."""
        if not self.enabled or len(claims) < MIN_BATCH:
            return self.here(claims, now)
        try:
            pool = self._pool or self._start()
            return await asyncio.wrap_future(pool.submit(_compose_batch, claims, now))
        except Exception as exc:  # noqa: BLE001 - a dead worker, or a value it cannot take
            self.enabled = False
            self.stop()
            if self.on_event is not None:
                problem = f"{type(exc).__name__}: {exc}"
                self.on_event(f"the compose worker failed ({problem}): composing here")
            return self.here(claims, now)

    def _start(self) -> ProcessPoolExecutor:
        ws = self.composer.ws
        ws.sequences, ws.templates  # noqa: B018 - loaded here, so the fork has them as they are
        self._pool = ProcessPoolExecutor(
            max_workers=1,
            mp_context=multiprocessing.get_context("fork"),
            initializer=_adopt,
            initargs=(self.composer,),  # inherited by the fork, never pickled
        )
        self.forks += 1
        return self._pool

    def stop(self) -> None:
        """End the worker (at the end of a pass, or when the templates were read again: the
        next batch forks one that has them)."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)


_composer: Composer | None = None  # the worker process's own


def _adopt(composer: Composer) -> None:
    """The worker's start: the composer it inherited, and signals of its own (the dispatcher's
    handlers and its event loop's wakeup pipe came with the fork: a Ctrl-C or a SIGTERM ends
    the worker, and the dispatcher composes the rest itself)."""
    global _composer
    _composer = composer
    signal.set_wakeup_fd(-1)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_DFL)
    # A dispatcher killed outright (SIGKILL, the OOM killer) cannot end its worker: the
    # worker ends itself when it finds its parent gone, so no orphan keeps what the fork gave
    # it (sockets, database connections).
    threading.Thread(target=_exit_with, args=(os.getppid(),), daemon=True).start()


def _exit_with(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(0.2)
    os._exit(0)


def _compose_all(composer: Composer, claims: list[Claimed], now: datetime) -> list[Composed | str]:
    return [compose_claim(composer, claim, now) for claim in claims]


def _compose_batch(claims: list[Claimed], now: datetime) -> list[Composed | str]:
    """The worker's side of :meth:`ComposeWorker.compose`."""
    assert _composer is not None
    return _compose_all(_composer, claims, now)
