"""The HTTP endpoints the daemon serves: one-click unsubscribe (RFC 8058), a goal webhook, health,
and, with ``[tracking]`` on, the pixel and the tracked links (:mod:`outreach.webtrack`).

The handlers are thin: they read the request, call :mod:`outreach.sequencing` in a worker thread
(the
store is synchronous and must not block the daemon's event loop) and answer in one line. The
unsubscribe endpoint sits at the path of ``[sending] unsubscribe_url``; a TLS-terminating proxy in
front of the daemon maps that public https URL to it.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import re
import sys
from collections.abc import Awaitable, Callable
from datetime import datetime
from html import escape
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import ERROR as UNPARSED

from outreach import clock, sequencing
from outreach.errors import ConfigError, NotFound, OutreachError
from outreach.mail.unsubscribe import read_token
from outreach.workspace import Workspace

log = logging.getLogger(__name__)

DEFAULT_UNSUBSCRIBE_PATH = "/u"
MAX_BODY = 64 * 1024  # a one-click POST or a goal webhook is a few hundred bytes
GOAL_MAX_BODY = 4 * 1024  # {"email": ..., "reason": ...}, with room for a tool's extra fields
GOAL_MAX_DEPTH = 8  # nesting of the goal's JSON: json.loads recurses once per level
# Seconds a client has to send its request line and headers (from connecting, or from its
# previous request), and then its body: a stalled or slow client cannot hold a connection.
READ_TIMEOUT = 10.0
# After answering a request whose body never came whole, the server reads (and drops) what
# still arrives for this long, so that the client sees the answer, then closes.
LINGER_SECONDS = 2.0
READ_TIMEOUT_KEY = web.AppKey("read_timeout", float)
_REJECTED = web.ResponseKey("rejected", str)  # why a handler refused the request
_SHOWN_PATH = web.ResponseKey("shown_path", str)  # the path as logged (a token hidden)
_UNPRINTABLE = re.compile(r"[^\x20-\x7e]")

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
    read_timeout: float = READ_TIMEOUT,
    tracking_secret: str | None = None,
) -> web.Application:
    """The application: the unsubscribe endpoint when ``secret`` is set, ``/goal`` when
    ``goal_token`` is set, the pixel and the tracked links when ``tracking_secret`` is set and
    ``[tracking]`` is on, and ``/health`` always; a route that is off answers 404.
    A body must arrive whole within ``read_timeout`` seconds."""
    app = web.Application(client_max_size=MAX_BODY)
    app[READ_TIMEOUT_KEY] = read_timeout
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
    tracking = ws.config.settings.tracking
    if tracking_secret is not None and tracking.on:
        from outreach.webtrack import Endpoints

        prefix = tracking.path_prefix
        endpoints = Endpoints(ws, tracking_secret, now)
        # GET, and HEAD with it (recorded as a machine's: browsers GET).
        if tracking.opens:
            app.router.add_get(f"{prefix}/o/{{token}}", _answering(endpoints.pixel, prefix + "/o"))
        if tracking.clicks:
            app.router.add_get(
                f"{prefix}/c/{{token}}", _answering(endpoints.redirect, prefix + "/c")
            )
    return app


def _answering(
    handler: Callable[[web.Request], Awaitable[tuple[web.StreamResponse, str | None]]], path: str
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """A tracking handler as a route: its path logged without the token (which names the
    message), and why it refused, if it did."""

    async def handle(request: web.Request) -> web.StreamResponse:
        response, rejected = await handler(request)
        response[_SHOWN_PATH] = f"{path}/<token>"
        if rejected:
            response[_REJECTED] = rejected
        return response

    return handle


async def start(
    ws: Workspace,
    host: str,
    port: int,
    *,
    secret: str | None,
    goal_token: str | None,
    now: Callable[[], datetime] = clock.now,
    read_timeout: float = READ_TIMEOUT,
    tracking_secret: str | None = None,
) -> web.AppRunner:
    """Serve :func:`make_app` on ``host:port`` (0 picks a free port; see ``runner.addresses``).
    The caller stops it with ``await runner.cleanup()``.

    Every request is logged in one line (``_AccessLogger``), a rejected one with the reason; a
    request too malformed to parse (an over-long line, bad headers) is one line too, never a
    traceback: anyone who can reach the port can send those."""
    app = make_app(
        ws,
        secret=secret,
        goal_token=goal_token,
        now=now,
        read_timeout=read_timeout,
        tracking_secret=tracking_secret,
    )
    runner = web.AppRunner(
        app,
        access_log_class=_AccessLogger,
        handle_signals=False,
        # aiohttp closes a connection that has not sent a whole request within this long.
        keepalive_timeout=read_timeout,
        lingering_time=LINGER_SECONDS,
        logger=_ServerLog(logging.getLogger("aiohttp.server"), {}),
    )
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except OSError as exc:
        await runner.cleanup()
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    log.info("serving HTTP on %s", ", ".join(f"{a[0]}:{a[1]}" for a in runner.addresses))
    return runner


def _short(text: str, limit: int = 120) -> str:
    """One line of printable ASCII, at most ``limit`` characters: safe for any log."""
    text = _UNPRINTABLE.sub("?", text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class _AccessLogger(AbstractAccessLogger):
    """One line per request: method, path (without the query: it holds the token, which names
    the address) and status, and why when it was refused."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        reason = response.get(_REJECTED)
        if reason is None and response.status == 400 and request.method == UNPARSED.method:
            return  # aiohttp's stand-in for a request it could not parse: _ServerLog said why
        self.logger.info(
            "%s %s %s %.3fs%s",
            _short(request.method, 20),
            _short(response.get(_SHOWN_PATH) or request.rel_url.raw_path),
            response.status,
            time,
            f" refused: {reason}" if reason else "",
        )

    @property
    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.INFO)


class _ServerLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """aiohttp's server log. A request it cannot parse (a line over 8 KB, a bad header) is
    logged as one warning line with the reason; any other exception keeps its traceback,
    because that is a bug of ours."""

    def exception(self, msg: object, *args: Any, exc_info: Any = True, **kwargs: Any) -> None:
        exc = exc_info if isinstance(exc_info, BaseException) else sys.exc_info()[1]
        if isinstance(exc, HttpProcessingError):
            remote = args[0] if args else "?"
            self.warning(
                "refused a malformed request from %s: %s %s",
                remote,
                exc.code,
                _short(exc.message.strip()),
            )
            return
        super().exception(msg, *args, exc_info=exc_info, **kwargs)


async def _read_body(request: web.Request, limit: int) -> bytes | web.Response:
    """The whole body, or the answer refusing it: 413 over ``limit`` bytes (before reading,
    when Content-Length says so), 408 when it does not arrive whole in time."""
    if request.content_length is not None and request.content_length > limit:
        return _error(413, f"the body is over {limit} bytes")
    try:
        async with asyncio.timeout(request.app[READ_TIMEOUT_KEY]):
            body = await request.read()
    except TimeoutError:
        response = _error(408, "the body did not arrive in time")
        response.force_close()
        return response
    except web.HTTPRequestEntityTooLarge:
        return _error(413, f"the body is over {limit} bytes")
    if len(body) > limit:
        return _error(413, f"the body is over {limit} bytes")
    return body


_JSON_NESTING = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]')


def _json_depth(text: str) -> int:
    """How deeply the arrays and objects of a JSON text nest (brackets in strings aside)."""
    depth = deepest = 0
    for token in _JSON_NESTING.finditer(text):
        char = token.group()
        if char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    return deepest


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
            response = _html(_INVALID, status=400)
            response[_REJECTED] = "no valid token"
            return response
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
        body = await _read_body(request, MAX_BODY)
        if isinstance(body, web.Response):
            return body
        email = self._email(request)
        if email is None:
            return _reply(request, _INVALID, 400, "no valid token")
        try:
            await asyncio.to_thread(
                sequencing.suppress, self.ws.store, email, self.now(), reason="unsubscribed"
            )
        except OutreachError as exc:
            # Our own signature on an address we cannot parse: refuse without details.
            return _reply(request, _INVALID, 400, _short(exc.one_line()))
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
        raw = await _read_body(request, GOAL_MAX_BODY)
        if isinstance(raw, web.Response):
            return raw
        try:
            text = raw.decode("utf-8")
            if _json_depth(text) > GOAL_MAX_DEPTH:
                return _error(400, f"the JSON nests deeper than {GOAL_MAX_DEPTH} levels")
            body = json.loads(text)
        except ValueError:  # UnicodeDecodeError and json.JSONDecodeError are ValueErrors
            return _error(400, "the body is not JSON (in UTF-8)")
        if not isinstance(body, dict) or not isinstance(body.get("email"), str):
            return _error(400, 'expected {"email": "...", "reason": "meeting"|"webinar"}')
        reason = body.get("reason")
        if reason not in sequencing.GOALS:
            return _error(400, "reason must be one of " + ", ".join(sequencing.GOALS))
        try:
            result = await asyncio.to_thread(
                sequencing.stop,
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
    """A JSON error; the access log's line for the request gives the message too."""
    response = web.json_response({"error": message}, status=status, headers=headers)
    response[_REJECTED] = message
    return response


def _reply(
    request: web.Request, lines: list[tuple[str, str]], status: int, rejected: str | None = None
) -> web.Response:
    """HTML for a browser (the confirmation form), one line of text for a mail provider."""
    if "text/html" in request.headers.get("Accept", ""):
        response = _html(lines, status=status)
    else:
        response = web.Response(text=lines[0][1], status=status, headers=_HEADERS)
    if rejected:
        response[_REJECTED] = rejected
    return response


def _html(lines: list[tuple[str, str]], *, status: int = 200, extra: str = "") -> web.Response:
    body = "\n".join(f'<p lang="{lang}">{escape(text)}</p>' for lang, text in lines) + extra
    text = _PAGE.format(title=escape(lines[0][1]), body=body)
    return web.Response(text=text, status=status, content_type="text/html", headers=_HEADERS)
