"""The HTTP endpoints the daemon serves: one-click unsubscribe (RFC 8058), a goal webhook, health.

The handlers are thin: they read the request, call :mod:`outreach.engine` in a worker thread (the
store is synchronous and must not block the daemon's event loop) and answer in one line. The
unsubscribe endpoint sits at the path of ``[sending] unsubscribe_url``; a TLS-terminating proxy in
front of the daemon maps that public https URL to it.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
from collections.abc import Callable
from datetime import datetime
from html import escape
from urllib.parse import urlsplit

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from outreach import clock, engine
from outreach.errors import ConfigError, NotFound, OutreachError
from outreach.unsubscribe import read_token
from outreach.workspace import Workspace

log = logging.getLogger(__name__)

DEFAULT_UNSUBSCRIBE_PATH = "/u"
MAX_BODY = 64 * 1024  # a one-click POST or a goal webhook is a few hundred bytes

# A page for people, not for mail scanners: following the link (GET) only shows this form, so a
# scanner that fetches every link cannot unsubscribe anyone; the button POSTs to the same URL.
_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="robots" content="noindex"><title>{title}</title>
<style>body{{font-family:sans-serif;max-width:32rem;margin:3rem auto;padding:0 1rem}}
p{{margin:.4rem 0}}button{{font-size:1rem;padding:.5rem 1.2rem;margin-top:1rem}}</style>
</head><body>
{body}
</body></html>
"""
_CONFIRM = [
    ("en", "Do you want to stop receiving these emails?"),
    ("fi", "Haluatko lopettaa näiden viestien vastaanottamisen?"),
    ("sv", "Vill du sluta ta emot de här mejlen?"),
]
_BUTTON = "Unsubscribe · Peru tilaus · Avsluta prenumeration"
_DONE = [
    ("en", "You are unsubscribed. You will not receive these emails again."),
    ("fi", "Tilaus on peruttu. Et saa näitä viestejä enää."),
    ("sv", "Du har avslutat prenumerationen. Du får inte de här mejlen igen."),
]
_INVALID = [
    ("en", "This unsubscribe link is not valid. Please reply to the email instead."),
    ("fi", "Tämä peruutuslinkki ei ole voimassa. Vastaa viestiin, niin poistamme sinut."),
    ("sv", "Den här länken är inte giltig. Svara på mejlet i stället."),
]
_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
    "form-action 'self'; frame-ancestors 'none'",
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Robots-Tag": "noindex",
}

GOAL_TOKEN_HEADER = "Authorization"


def unsubscribe_path(ws: Workspace) -> str:
    """The path of ``[sending] unsubscribe_url``, else ``/u``."""
    url = ws.config.settings.sending.unsubscribe_url
    path = urlsplit(url).path if url else DEFAULT_UNSUBSCRIBE_PATH
    return path or "/"


def make_app(
    ws: Workspace,
    *,
    secret: str | None,
    goal_token: str | None,
    now: Callable[[], datetime] = clock.now,
) -> web.Application:
    """The application: the unsubscribe endpoint when ``secret`` is set, ``/goal`` when
    ``goal_token`` is set, and ``/health`` always; a route that is off answers 404."""
    app = web.Application(client_max_size=MAX_BODY)
    app.router.add_get("/health", _health)
    if secret is not None:
        path = unsubscribe_path(ws)
        if path in ("/health", "/goal"):
            raise ConfigError(
                f"the path {path} is taken by another endpoint",
                field="[sending] unsubscribe_url",
                hint="use a path such as /u",
            )
        handlers = _Unsubscribe(ws, secret, now)
        app.router.add_get(path, handlers.page)
        app.router.add_post(path, handlers.one_click)
    if goal_token is not None:
        app.router.add_post("/goal", _Goal(ws, goal_token, now).handle)
    return app


async def start(
    ws: Workspace,
    host: str,
    port: int,
    *,
    secret: str | None,
    goal_token: str | None,
    now: Callable[[], datetime] = clock.now,
) -> web.AppRunner:
    """Serve :func:`make_app` on ``host:port`` (0 picks a free port; see ``runner.addresses``).
    The caller stops it with ``await runner.cleanup()``."""
    app = make_app(ws, secret=secret, goal_token=goal_token, now=now)
    runner = web.AppRunner(app, access_log_class=_AccessLogger, handle_signals=False)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except OSError as exc:
        await runner.cleanup()
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    log.info("serving HTTP on %s", ", ".join(f"{a[0]}:{a[1]}" for a in runner.addresses))
    return runner


class _AccessLogger(AbstractAccessLogger):
    """Method, path and status only: the query holds the token, which names the address."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        self.logger.info("%s %s %s %.3fs", request.method, request.path, response.status, time)

    @property
    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.INFO)


async def _health(request: web.Request) -> web.Response:
    return web.Response(text="ok")


class _Unsubscribe:
    """``GET`` shows a confirmation form; ``POST`` (RFC 8058 one-click, or the form) suppresses."""

    def __init__(self, ws: Workspace, secret: str, now: Callable[[], datetime]) -> None:
        self.ws = ws
        self.secret = secret
        self.now = now

    def _email(self, request: web.Request) -> str | None:
        token = request.query.get("t", "")
        return read_token(self.secret, token) if token else None

    async def page(self, request: web.Request) -> web.Response:
        if self._email(request) is None:
            return _html(_INVALID, status=400)
        token = escape(request.query["t"], quote=True)
        # A relative action keeps the public path whatever proxy sits in front of us.
        form = (
            f'<form method="post" action="?t={token}">'
            '<input type="hidden" name="List-Unsubscribe" value="One-Click">'
            f'<button type="submit">{escape(_BUTTON)}</button></form>'
        )
        return _html(_CONFIRM, extra=form)

    async def one_click(self, request: web.Request) -> web.Response:
        # The body (List-Unsubscribe=One-Click) is accepted, not required: the token decides.
        await request.read()
        email = self._email(request)
        if email is None:
            return _reply(request, _INVALID, 400)
        try:
            await asyncio.to_thread(
                engine.suppress, self.ws.store, email, self.now(), reason="unsubscribed"
            )
        except OutreachError as exc:
            # Our own signature on an address we cannot parse: refuse without details.
            log.warning("unsubscribe refused: %s", exc.one_line())
            return _reply(request, _INVALID, 400)
        # The same answer whether or not the address was ever enrolled.
        return _reply(request, _DONE, 200)


class _Goal:
    """``POST /goal`` from a booking tool: ``{"email": ..., "reason": "meeting"|"webinar"}``."""

    def __init__(self, ws: Workspace, token: str, now: Callable[[], datetime]) -> None:
        self.ws = ws
        self.token = token.encode()
        self.now = now

    async def handle(self, request: web.Request) -> web.Response:
        scheme, _, given = request.headers.get(GOAL_TOKEN_HEADER, "").partition(" ")
        # Compare as bytes: compare_digest refuses non-ASCII str, and a header may carry any.
        matches = hmac.compare_digest(given.strip().encode("utf-8", "replace"), self.token)
        if scheme.lower() != "bearer" or not matches:
            return _error(401, "missing or wrong bearer token", {"WWW-Authenticate": "Bearer"})
        try:
            body = json.loads(await request.read())
        except (ValueError, UnicodeDecodeError):
            return _error(400, "the body is not JSON")
        if not isinstance(body, dict) or not isinstance(body.get("email"), str):
            return _error(400, 'expected {"email": "...", "reason": "meeting"|"webinar"}')
        reason = body.get("reason")
        if reason not in engine.GOALS:
            return _error(400, "reason must be one of " + ", ".join(engine.GOALS))
        try:
            result = await asyncio.to_thread(
                engine.stop,
                self.ws.store,
                body["email"],
                reason,
                self.now(),
                self.ws.config.settings.crm,
            )
        except NotFound as exc:
            return _error(404, exc.message)
        except OutreachError as exc:
            return _error(400, exc.message)
        log.info("goal %s: %s stopped in %s", reason, result.email, result.stopped)
        return web.json_response(
            {
                "email": result.email,
                "reason": result.reason,
                "stopped": result.stopped,
                # A retried call (the booking tool did not see our answer): nothing new.
                "already_recorded": result.already is not None,
            }
        )


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers)


def _reply(request: web.Request, lines: list[tuple[str, str]], status: int) -> web.Response:
    """HTML for a browser (the confirmation form), one line of text for a mail provider."""
    if "text/html" in request.headers.get("Accept", ""):
        return _html(lines, status=status)
    return web.Response(text=lines[0][1], status=status, headers=_HEADERS)


def _html(lines: list[tuple[str, str]], *, status: int = 200, extra: str = "") -> web.Response:
    body = "\n".join(f'<p lang="{lang}">{escape(text)}</p>' for lang, text in lines) + extra
    text = _PAGE.format(title=escape(lines[0][1]), body=body)
    return web.Response(text=text, status=status, content_type="text/html", headers=_HEADERS)
