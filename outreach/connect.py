"""``outreach mailboxes connect``: a person grants the mailbox's OAuth access, once.

- ``device`` (RFC 8628, Microsoft delegated): the verification URL and a code are printed;
  the person enters the code in any browser, and the token endpoint is polled at the
  server's interval (5 s slower after each ``slow_down``) until they have.
- ``authorization_code`` (PKCE, RFC 7636, with a loopback redirect, RFC 8252; Google
  delegated): the URL is printed; the browser comes back to a listener on 127.0.0.1, or, on
  a headless server, the person pastes the address the browser was sent to.
- ``client_credentials`` and ``service_account`` need no person: connect fetches a token to
  show that it works, and lifts a pause a refused token caused.

The interaction is passed in (``say``, ``read_line``, ``sleep``), so tests drive it.
"""

from __future__ import annotations

import http.server
import queue
import threading
import time
from collections.abc import Callable
from datetime import datetime

from outreach import clock
from outreach.grants import TokenSource
from outreach.oauth import ConnectFailed, TokenEndpointDown, Tokens

WAIT_FOR_BROWSER = 900.0  # seconds a person has to sign in and consent


def connect(
    source: TokenSource,
    *,
    say: Callable[[str], None],
    read_line: Callable[[], str] | None = None,
    sleep: Callable[[float], None] = time.sleep,
    now: Callable[[], datetime] = clock.now,
) -> str:
    """Run the mailbox's flow and store the grant; returns the line to print at the end."""
    source.vault()  # no key, nothing to store it with: say so before the person signs in
    flow = source.provider.flow
    if flow == "device":
        tokens = _device(source, say, sleep, now)
    elif flow == "authorization_code":
        tokens = _authorization_code(source, say, read_line, now)
    else:
        return _app_only(source)
    lifted = source.store_grant(tokens)
    line = f"{source.box.email} connected ({source.provider.name}, {flow})"
    if lifted:
        line += f"; resumed (it was paused: {lifted})"
    return line


def _device(
    source: TokenSource,
    say: Callable[[str], None],
    sleep: Callable[[float], None],
    now: Callable[[], datetime],
) -> Tokens:
    client = source.client
    device = client.device_start(now())
    say(f"To connect {source.box.email}, open {device.verification_uri} in a browser,")
    say(f"sign in as {source.box.email} and enter the code {device.user_code}")
    say("Waiting for you to finish there...")
    interval = max(device.interval, 1)
    while now() < device.expires_at:
        sleep(interval)
        try:
            result = client.device_poll(device, now())
        except TokenEndpointDown as exc:
            say(f"{exc.one_line()}; asking again")
            continue
        if result == "slow_down":
            interval += 5  # RFC 8628 3.5: every later poll waits 5 s longer
        elif isinstance(result, Tokens):
            return result
    raise ConnectFailed(
        "the code expired before it was entered", hint="run `outreach mailboxes connect` again"
    )


def _authorization_code(
    source: TokenSource,
    say: Callable[[str], None],
    read_line: Callable[[], str] | None,
    now: Callable[[], datetime],
) -> Tokens:
    redirected: queue.Queue[str] = queue.Queue()
    listener = _Listener(redirected)
    try:
        request = source.client.authorization_request(listener.redirect_uri)
        say(f"To connect {source.box.email}, open this address in a browser, sign in as")
        say(f"{source.box.email} and allow access:")
        say(request.url)
        say(
            "Waiting for the browser to come back. On a machine without one, paste here the "
            f"whole address the browser ends up at (it starts with {listener.redirect_uri}):"
        )
        if read_line is not None:

            def paste() -> None:
                try:
                    line = read_line()
                except (EOFError, OSError, ValueError):
                    return
                if line.strip():
                    redirected.put(line.strip())

            threading.Thread(target=paste, name="connect paste", daemon=True).start()
        try:
            answer = redirected.get(timeout=WAIT_FOR_BROWSER)
        except queue.Empty:
            raise ConnectFailed(
                f"no answer from the browser within {WAIT_FOR_BROWSER:g} s",
                hint="run `outreach mailboxes connect` again",
            ) from None
    finally:
        listener.close()
    return source.client.exchange_code(request, answer, now())


def _app_only(source: TokenSource) -> str:
    lifted = source.reset_app_grant()
    source.access_token()  # raises with the provider's words when it does not work
    info = source.info()
    expires = info.expires_at.strftime("%Y-%m-%d %H:%M UTC") if info and info.expires_at else "?"
    line = (
        f"{source.box.email} uses {source.provider.flow}: no person needs to connect; "
        f"a token was issued (valid until {expires})"
    )
    if lifted:
        line += f"; resumed (it was paused: {lifted})"
    return line


class _Listener:
    """The loopback redirect target (RFC 8252 7.3): one GET with the code, on 127.0.0.1."""

    def __init__(self, into: queue.Queue[str]) -> None:
        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the http.server name
                port = int(self.server.server_address[1])  # type: ignore[index]
                into.put(f"http://127.0.0.1:{port}{self.path}")
                body = b"outreach: you can close this window and go back to the terminal.\n"
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass  # the query carries the code: not for the terminal

        self._server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
        self.redirect_uri = f"http://127.0.0.1:{self._server.server_address[1]}/"  # type: ignore[index]
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="connect redirect", daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
