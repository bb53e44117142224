"""A real OAuth 2.0 authorization server on 127.0.0.1 for the tests, in the test process.

It implements what Microsoft's and Google's servers do for mail, over HTTP on loopback:

- ``POST /token``: ``refresh_token`` (rotating: each refresh spends the old refresh token and
  hands out a new one; a spent one is ``invalid_grant``), the device grant (RFC 8628, with
  ``authorization_pending`` and ``slow_down``), ``client_credentials``, ``authorization_code``
  with PKCE S256 (RFC 7636), and the JWT bearer grant (RFC 7523) of a service account,
  verified with joserfc against the account's public key;
- ``POST /devicecode``: the device authorization request;
- ``GET /authorize``: consents at once as the ``login_hint`` user and redirects with a code;
- ``POST /introspect`` (RFC 7662): what Dovecot's ``oauth2`` passdb and the test SMTP
  server ask, so a token this server did not issue, or revoked, or that expired, is refused by
  both.

Time is ``datetime.now(UTC)``: freezegun moves token expiry here and in the client together.
``down = True`` makes every endpoint but introspection answer 503 (a provider outage).
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

from joserfc import jwt
from joserfc.jwk import RSAKey

JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
DEVICE = "urn:ietf:params:oauth:grant-type:device_code"


@dataclass
class Client:
    """A registered application."""

    client_id: str
    secret: str | None = None  # None: a public client (device flow)
    access_lifetime: int = 600
    rotate: bool = True
    app_mailbox: str | None = None  # client_credentials: the mailbox the app may use
    public_key: str | None = None  # service_account: PEM of the account's key
    issuer: str | None = None  # service_account: its client_email


@dataclass
class Device:
    client_id: str
    user_code: str
    scope: str
    approve_after_polls: int
    approve_as: str
    slow_down_first: bool
    polls: int = 0


@dataclass
class AuthServer:
    """``with AuthServer() as auth: auth.register(Client(...)) ... auth.token_url``"""

    clients: dict[str, Client] = field(default_factory=dict)
    access: dict[str, tuple[str, datetime]] = field(default_factory=dict)  # token -> user, exp
    refresh: dict[str, tuple[str, str, str]] = field(default_factory=dict)  # rt -> user, cid, sc
    spent: set[str] = field(default_factory=set)  # refresh tokens rotated away
    devices: dict[str, Device] = field(default_factory=dict)
    codes: dict[str, tuple[str, str, str, str]] = field(default_factory=dict)
    grants_seen: list[str] = field(default_factory=list)  # grant_type of each /token call
    reuse: int = 0  # spent refresh tokens presented again
    down: bool = False
    refused_users: set[str] = field(default_factory=set)  # introspection: never active
    delay: float = 0.0  # seconds each /token answer takes (a slow provider; lets races overlap)
    port: int = 0

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._all: set[str] = set()

    # ----------------------------------------------------------- the test's side

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def token_url(self) -> str:
        return self.base + "/token"

    @property
    def device_url(self) -> str:
        return self.base + "/devicecode"

    @property
    def authorize_url(self) -> str:
        return self.base + "/authorize"

    @property
    def introspect_url(self) -> str:
        return self.base + "/introspect"

    def register(self, client: Client) -> Client:
        with self._lock:
            self.clients[client.client_id] = client
        return client

    def revoke(self, user: str) -> None:
        """Consent withdrawn (or the password changed): every token of ``user`` dies."""
        with self._lock:
            self.refresh = {k: v for k, v in self.refresh.items() if v[0] != user}
            self.access = {k: v for k, v in self.access.items() if v[0] != user}

    def issued_tokens(self) -> set[str]:
        """Every token string this server ever handed out (to look for them elsewhere)."""
        with self._lock:
            return set(self.access) | set(self.refresh) | set(self.spent) | set(self._all)

    def active(self, token: str) -> str | None:
        """The user a token is valid for now, else None."""
        with self._lock:
            entry = self.access.get(token)
        if entry is None or entry[1] <= datetime.now(UTC):
            return None
        return entry[0]

    # ------------------------------------------------------------------ serving

    def start(self) -> None:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("Content-Length") or 0)
                form = {k: v[0] for k, v in parse_qs(self.rfile.read(length).decode()).items()}
                path = urlsplit(self.path).path
                if path == "/introspect":
                    self._json(200, server._introspect(form))
                    return
                if server.down:
                    self._json(503, {"error": "temporarily_unavailable"})
                    return
                if path == "/token":
                    time.sleep(server.delay)
                    self._json(*server._token(form, self.headers.get("Authorization")))
                elif path == "/devicecode":
                    self._json(*server._device(form))
                else:
                    self._json(404, {"error": "not_found"})

            def do_GET(self) -> None:  # noqa: N802
                parts = urlsplit(self.path)
                if parts.path != "/authorize" or server.down:
                    self._json(503 if server.down else 404, {"error": "unavailable"})
                    return
                query = {k: v[0] for k, v in parse_qs(parts.query).items()}
                location = server._authorize(query)
                self.send_response(302)
                self.send_header("Location", location)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def _json(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.port = int(self._httpd.server_address[1])
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> AuthServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---------------------------------------------------------------- endpoints

    def _issue(self, user: str, client: Client, scope: str, with_refresh: bool) -> dict[str, Any]:
        token = "at-" + secrets.token_urlsafe(24)
        body: dict[str, Any] = {
            "access_token": token,
            "token_type": "Bearer",
            "expires_in": client.access_lifetime,
            "scope": scope,
        }
        with self._lock:
            self.access[token] = (
                user,
                datetime.now(UTC) + timedelta(seconds=client.access_lifetime),
            )
            self._all.add(token)
            if with_refresh:
                rt = "rt-" + secrets.token_urlsafe(24)
                self.refresh[rt] = (user, client.client_id, scope)
                self._all.add(rt)
                body["refresh_token"] = rt
        return body

    def _client(self, form: dict[str, str], authorization: str | None) -> Client | None:
        cid, secret = form.get("client_id"), form.get("client_secret")
        if authorization and authorization.startswith("Basic "):
            cid, _, secret = base64.b64decode(authorization[6:]).decode().partition(":")
        client = self.clients.get(cid or "")
        if client is None or (client.secret is not None and client.secret != secret):
            return None
        return client

    def _token(self, form: dict[str, str], authorization: str | None) -> tuple[int, dict[str, Any]]:
        grant = form.get("grant_type", "")
        self.grants_seen.append(grant)
        if grant == JWT_BEARER:
            return self._jwt(form)
        client = self._client(form, authorization)
        if client is None:
            return 401, {"error": "invalid_client", "error_description": "unknown client"}
        if grant == "refresh_token":
            rt = form.get("refresh_token", "")
            with self._lock:
                entry = self.refresh.get(rt)
                if entry is None:
                    if rt in self.spent:
                        self.reuse += 1
                    return 400, {"error": "invalid_grant", "error_description": "token revoked"}
                if client.rotate:
                    del self.refresh[rt]
                    self.spent.add(rt)
            user, _cid, scope = entry
            body = self._issue(user, client, scope, with_refresh=client.rotate)
            return 200, body
        if grant == DEVICE:
            device = self.devices.get(form.get("device_code", ""))
            if device is None or device.client_id != client.client_id:
                return 400, {"error": "invalid_grant"}
            device.polls += 1
            if self.device_decline:  # Microsoft's word for RFC 8628's access_denied
                return 400, {"error": "authorization_declined", "error_description": "declined"}
            if device.slow_down_first and device.polls == 1:
                return 400, {"error": "slow_down"}
            if device.polls < device.approve_after_polls:
                return 400, {"error": "authorization_pending"}
            del self.devices[form["device_code"]]
            return 200, self._issue(device.approve_as, client, device.scope, with_refresh=True)
        if grant == "client_credentials":
            if client.app_mailbox is None:
                return 400, {"error": "unauthorized_client"}
            return 200, self._issue(client.app_mailbox, client, form.get("scope", ""), False)
        if grant == "authorization_code":
            code = self.codes.pop(form.get("code", ""), None)
            if code is None:
                return 400, {"error": "invalid_grant", "error_description": "unknown code"}
            user, cid, redirect, challenge = code
            verifier = form.get("code_verifier", "")
            digest = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
            if cid != client.client_id or redirect != form.get("redirect_uri"):
                return 400, {"error": "invalid_grant", "error_description": "redirect_uri"}
            if digest.decode().rstrip("=") != challenge:
                return 400, {"error": "invalid_grant", "error_description": "PKCE verifier"}
            return 200, self._issue(user, client, "mail", with_refresh=True)
        return 400, {"error": "unsupported_grant_type"}

    def _jwt(self, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        assertion = form.get("assertion", "")
        for client in self.clients.values():
            if client.public_key is None:
                continue
            try:
                token = jwt.decode(assertion, RSAKey.import_key(client.public_key))
                claims = token.claims
                jwt.JWTClaimsRegistry(now=int(datetime.now(UTC).timestamp())).validate(claims)
            except Exception:  # noqa: BLE001 - not this account's signature
                continue
            if claims["iss"] != client.issuer or claims["aud"] != self.token_url:
                return 400, {"error": "invalid_grant", "error_description": "iss or aud"}
            return 200, self._issue(str(claims["sub"]), client, str(claims["scope"]), False)
        return 400, {"error": "invalid_grant", "error_description": "bad signature"}

    def _device(self, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        client = self.clients.get(form.get("client_id", ""))
        if client is None:
            return 400, {"error": "invalid_client"}
        code = "dc-" + secrets.token_urlsafe(16)
        user_code = secrets.token_hex(4).upper()
        self.devices[code] = Device(
            client.client_id,
            user_code,
            form.get("scope", ""),
            approve_after_polls=self.device_approve_after,
            approve_as=self.device_user,
            slow_down_first=self.device_slow_down,
        )
        return 200, {
            "device_code": code,
            "user_code": user_code,
            "verification_uri": self.base + "/device",
            "expires_in": 600,
            "interval": 1,
        }

    # Who approves the next device code, and after how many polls (the person at a browser).
    device_user: str = ""
    device_approve_after: int = 2
    device_slow_down: bool = False
    device_decline: bool = False

    def _authorize(self, query: dict[str, str]) -> str:
        code = "code-" + secrets.token_urlsafe(16)
        self.codes[code] = (
            query.get("login_hint", ""),
            query.get("client_id", ""),
            query.get("redirect_uri", ""),
            query.get("code_challenge", ""),
        )
        return query["redirect_uri"] + "?" + urlencode({"code": code, "state": query["state"]})

    def _introspect(self, form: dict[str, str]) -> dict[str, Any]:
        user = self.active(form.get("token", ""))
        if user in self.refused_users:
            user = None
        return {"active": True, "username": user} if user else {"active": False}
