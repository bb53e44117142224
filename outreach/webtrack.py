"""The tracking endpoints of the daemon's web app: the pixel (``/o/TOKEN``) and the redirect
(``/c/TOKEN``), under the path of ``[tracking] domain``.

Each answers at once from the token alone: the pixel is served and the redirect goes to the
URL signed into the token, even when the database cannot be reached (the fetch is then only
lost, never the reader's click). A token that is not ours is a 404, never a redirect. The
fetch is recorded in a worker thread (:mod:`outreach.engagement`): a person or a machine
(:mod:`outreach.mail.scanners`), counted once per message, kind, target and verdict.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import Callable
from datetime import datetime

from aiohttp import web
from sqlalchemy.exc import SQLAlchemyError
from yarl import URL

from outreach import engagement
from outreach.errors import OutreachError
from outreach.mail.tracking import CLICK, OPEN, Hit, read_token
from outreach.workspace import Workspace

log = logging.getLogger(__name__)

# A transparent 1x1 GIF (43 bytes).
PIXEL = base64.b64decode("R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7")
_NO_CACHE = {
    # Every open should reach us (Gmail's image proxy caches anyway).
    "Cache-Control": "no-store, no-cache, must-revalidate, max-age=0, private",
    "Pragma": "no-cache",
    "Expires": "0",
    "Referrer-Policy": "no-referrer",  # the token names the message: not for the target site
    "X-Robots-Tag": "noindex",
}

RECORD_WAIT = 3.0  # seconds a fetch waits for its record before it is answered anyway
Answer = tuple[web.StreamResponse, str | None]  # the response, and why it refused (for the log)


class Endpoints:
    """The pixel and the redirect, for one workspace and its tracking secret."""

    def __init__(self, ws: Workspace, secret: str, now: Callable[[], datetime]) -> None:
        self.ws = ws
        self.secret = secret
        self.now = now

    def _hit(self, request: web.Request, kind: str) -> Hit | None:
        hit = read_token(self.secret, request.match_info.get("token", ""))
        return hit if hit is not None and hit.kind == kind else None

    async def _record(self, request: web.Request, hit: Hit) -> None:
        agent = request.headers.get("User-Agent", "")
        recording = asyncio.to_thread(
            engagement.record, self.ws, hit, request.method, agent, self.now()
        )
        try:
            # The reader never waits long for our bookkeeping; a slow write still finishes.
            done = await asyncio.wait_for(recording, RECORD_WAIT)
        except TimeoutError:
            log.warning("%s: recording took over %s s; answered first", hit.kind, RECORD_WAIT)
            return
        except (SQLAlchemyError, OutreachError) as exc:
            reason = str(getattr(exc, "orig", None) or exc).splitlines()[0][:200]
            log.error("%s not recorded: the database is not answering (%s)", hit.kind, reason)
            return
        if done is not None:
            log.info("%s", done.one_line())

    async def pixel(self, request: web.Request) -> Answer:
        hit = self._hit(request, OPEN)
        if hit is None:
            return _not_found(), "no valid token"
        await self._record(request, hit)
        return web.Response(body=PIXEL, content_type="image/gif", headers=_NO_CACHE), None

    async def redirect(self, request: web.Request) -> Answer:
        hit = self._hit(request, CLICK)
        if hit is None or hit.url is None:
            return _not_found(), "no valid token"
        try:
            # A link with non-ASCII in it goes out as a browser would ask for it.
            location = hit.url if hit.url.isascii() else str(URL(hit.url))
        except ValueError:
            return _not_found(), "the signed link is not a URL"
        await self._record(request, hit)
        headers = {**_NO_CACHE, "Location": location}
        return web.Response(status=302, text="", headers=headers), None


def _not_found() -> web.Response:
    return web.Response(status=404, text="not found", headers={"Cache-Control": "no-store"})
