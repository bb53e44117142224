"""The OAuth 2.0 client of a mailbox: the four flows and the refresh, over authlib.

authlib's ``OAuth2Session`` speaks RFC 6749 (authorization code, client credentials,
refresh), RFC 7636 (PKCE), RFC 7523 (the JWT bearer grant of a Google service account, its
assertion signed with joserfc, authlib's JOSE library) and the RFC 8628 device grant; the
device authorization request itself is one POST on that session. Nothing here is stored:
:mod:`outreach.grants` keeps what comes back, encrypted.

Every failure is one :class:`OAuthProblem` naming the endpoint's host, never a token:
:class:`GrantRevoked` (invalid_grant: reconnect), :class:`ClientRefused` (the app's
registration or secret: fix and resume) or :class:`TokenEndpointDown` (transient: wait).
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

import requests
from authlib.integrations.requests_client import OAuth2Session, OAuthError
from joserfc import jwt
from joserfc.jwk import RSAKey

from outreach.errors import (
    ClientRefused,
    ConfigError,
    ConnectFailed,
    GrantRevoked,
    OAuthProblem,
    OutreachError,
    TokenEndpointDown,
)
from outreach.oauth_providers import Provider, provider_for

if TYPE_CHECKING:
    from outreach.config import Mailbox

DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
JWT_BEARER_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"  # RFC 7523
DEFAULT_LIFETIME = 3600  # seconds, when a token response gives no expires_in
TIMEOUT = 15.0  # seconds: a slow token endpoint is a transient failure, not a hang

__all__ = [
    "AuthorizationRequest",
    "ClientRefused",
    "ConnectFailed",
    "DeviceCode",
    "GrantRevoked",
    "OAuthClient",
    "OAuthProblem",
    "TokenEndpointDown",
    "Tokens",
]


@dataclass(frozen=True)
class Tokens:
    """What a token endpoint handed out."""

    access_token: str
    expires_at: datetime
    refresh_token: str | None
    scope: str | None

    def __repr__(self) -> str:  # never a token in a log line or a traceback
        return f"Tokens(expires_at={self.expires_at.isoformat()}, scope={self.scope!r})"


@dataclass(frozen=True)
class DeviceCode:
    """An RFC 8628 device authorization: what the person types where, and how to poll."""

    device_code: str
    user_code: str
    verification_uri: str
    verification_uri_complete: str | None
    interval: int
    expires_at: datetime

    def __repr__(self) -> str:
        return f"DeviceCode(user_code={self.user_code!r}, uri={self.verification_uri!r})"


@dataclass(frozen=True)
class AuthorizationRequest:
    """A PKCE authorization request (RFC 7636) with a loopback redirect (RFC 8252)."""

    url: str
    state: str
    code_verifier: str
    redirect_uri: str


class OAuthClient:
    """One mailbox's conversation with its provider's token endpoint."""

    def __init__(self, box: Mailbox, *, timeout: float = TIMEOUT) -> None:
        self.box = box
        self.provider: Provider = provider_for(box)
        self.timeout = timeout

    # ------------------------------------------------------------------ the grants

    def refresh(self, refresh_token: str, now: datetime) -> Tokens:
        """A new access token for a refresh token (and, where the server rotates them, a new
        refresh token: keep it, the old one is spent)."""
        with self._errors("refresh"):
            token = self._session().refresh_token(
                self.provider.token_url, refresh_token=refresh_token, timeout=self.timeout
            )
        return _tokens(token, now, keep_refresh=refresh_token)

    def app_token(self, now: datetime) -> Tokens:
        """An access token without a person: client credentials, or a service account's JWT."""
        if self.provider.flow == "service_account":
            return self._service_account(now)
        with self._errors("client credentials"):
            token = self._session().fetch_token(
                self.provider.token_url,
                grant_type="client_credentials",
                scope=" ".join(self.provider.scopes),
                timeout=self.timeout,
            )
        return _tokens(token, now)

    def _service_account(self, now: datetime) -> Tokens:
        issuer, pem = self._service_account_key()
        try:
            key = RSAKey.import_key(pem)
        except (ValueError, TypeError):
            raise ConfigError(
                f"environment variable {self.box.oauth_client_secret_env} holds no RSA private key",
                field=self._field("oauth_client_secret_env"),
            ) from None
        issued = int(now.timestamp())
        claims = {
            "iss": issuer,
            "sub": self.box.email,  # domain-wide delegation: act as this mailbox
            "aud": self.provider.token_url,
            "scope": " ".join(self.provider.scopes),
            "iat": issued,
            "exp": issued + 3600,
        }
        assertion = jwt.encode({"alg": "RS256", "typ": "JWT"}, claims, key)
        with self._errors("service account"):
            token = OAuth2Session(token_endpoint_auth_method="none").fetch_token(
                self.provider.token_url,
                grant_type=JWT_BEARER_GRANT,
                assertion=assertion,
                timeout=self.timeout,
            )
        return _tokens(token, now)

    def _service_account_key(self) -> tuple[str, str]:
        """(issuer, PEM private key) from the environment: a Google JSON key, or a PEM key
        whose issuer is ``oauth_client_id``."""
        raw = self._secret()
        if raw.lstrip().startswith("{"):
            try:
                document = json.loads(raw)
                return str(document["client_email"]), str(document["private_key"])
            except (ValueError, KeyError, TypeError):
                raise ConfigError(
                    f"environment variable {self.box.oauth_client_secret_env} is not a service "
                    "account key (JSON with client_email and private_key)",
                    field=self._field("oauth_client_secret_env"),
                ) from None
        if not self.box.oauth_client_id:
            raise ConfigError(
                "a PEM key needs oauth_client_id (the service account's address) as issuer",
                field=self._field("oauth_client_id"),
            )
        return self.box.oauth_client_id, raw

    # ------------------------------------------------------------- device (RFC 8628)

    def device_start(self, now: datetime) -> DeviceCode:
        """Ask for a user code; the person enters it at the verification URL."""
        url = self.provider.device_url
        if not url:
            raise ConfigError("no device authorization URL", field=self._field("oauth_device_url"))
        session = self._session()
        data = {"client_id": self.provider.client_id or "", "scope": " ".join(self.provider.scopes)}
        secret = self._client_secret()
        if secret:
            data["client_secret"] = secret
        with self._errors("device authorization"):
            response = session.post(url, data=data, timeout=self.timeout, withhold_token=True)
            if response.status_code >= 500 or response.status_code == 429:
                response.raise_for_status()
            body = response.json()
            if not isinstance(body, dict):
                raise ValueError("not a JSON object")
            if "error" in body:
                raise OAuthError(error=body["error"], description=body.get("error_description"))
            # Google (and Microsoft's v1 endpoint) say verification_url.
            uri = body.get("verification_uri") or body.get("verification_url")
            return DeviceCode(
                device_code=str(body["device_code"]),
                user_code=str(body["user_code"]),
                verification_uri=str(uri),
                verification_uri_complete=body.get("verification_uri_complete"),
                interval=int(body.get("interval", 5)),
                expires_at=now + timedelta(seconds=int(body.get("expires_in", 900))),
            )

    def device_poll(self, device: DeviceCode, now: datetime) -> Tokens | str:
        """One poll of the token endpoint: the tokens, or ``"authorization_pending"`` or
        ``"slow_down"`` (then poll 5 s less often, RFC 8628 3.5)."""
        try:
            token = self._session().fetch_token(
                self.provider.token_url,
                grant_type=DEVICE_GRANT,
                device_code=device.device_code,
                timeout=self.timeout,
            )
        except OAuthError as exc:
            if exc.error in ("authorization_pending", "slow_down"):
                return str(exc.error)
            # Microsoft says authorization_declined where RFC 8628 says access_denied.
            if exc.error in (
                "access_denied",
                "authorization_declined",
                "expired_token",
                "bad_verification_code",
            ):
                raise ConnectFailed(
                    f"{self._host()} answered {exc.error}"
                    + (f": {_one_line(exc.description)}" if exc.description else ""),
                    hint="run `outreach mailboxes connect` again",
                ) from None
            with self._errors("device token"):
                raise
        except Exception:  # noqa: BLE001 - network and HTTP failures, translated below
            with self._errors("device token"):
                raise
        return _tokens(token, now)

    # ------------------------------------------ authorization code (RFC 7636, 8252)

    def authorization_request(self, redirect_uri: str) -> AuthorizationRequest:
        """The URL to open in a browser, with a fresh PKCE verifier and state."""
        url = self.provider.authorize_url
        if not url:
            raise ConfigError("no authorization URL", field=self._field("oauth_authorize_url"))
        verifier = secrets.token_urlsafe(64)[:96]
        session = self._session(redirect_uri=redirect_uri, code_challenge_method="S256")
        full, state = session.create_authorization_url(
            url, code_verifier=verifier, login_hint=self.box.email, **self.provider.authorize_params
        )
        return AuthorizationRequest(str(full), str(state), verifier, redirect_uri)

    def exchange_code(
        self, request: AuthorizationRequest, redirected: str, now: datetime
    ) -> Tokens:
        """Trade the code in the redirected URL (state checked) for the tokens."""
        from urllib.parse import parse_qs

        query = parse_qs(urlsplit(redirected.strip()).query)
        if "error" in query:
            raise ConnectFailed(
                f"the provider answered {query['error'][0]}"
                + (f": {query['error_description'][0]}" if "error_description" in query else ""),
                hint="run `outreach mailboxes connect` again",
            )
        if query.get("state", [""])[0] != request.state or "code" not in query:
            raise ConnectFailed(
                "that is not the URL this connect sent you to (no code, or another state)",
                hint="paste the whole address the browser was sent to after signing in",
            )
        with self._errors("authorization code"):
            token = self._session(redirect_uri=request.redirect_uri).fetch_token(
                self.provider.token_url,
                grant_type="authorization_code",
                code=query["code"][0],
                code_verifier=request.code_verifier,
                redirect_uri=request.redirect_uri,
                timeout=self.timeout,
            )
        return _tokens(token, now)

    # ------------------------------------------------------------------- helpers

    def _session(self, **kwargs: Any) -> OAuth2Session:
        secret = self._client_secret()
        return OAuth2Session(
            client_id=self.provider.client_id,
            client_secret=secret,
            # A public client (Microsoft's device flow) sends only its id; a confidential one
            # its secret in the body, which both Microsoft and Google accept.
            token_endpoint_auth_method="client_secret_post" if secret else "none",
            scope=" ".join(self.provider.scopes),
            **kwargs,
        )

    def check_secrets(self) -> None:
        """Raise ConfigError when the environment lacks the secret (or the service account's
        key) this flow needs."""
        if self.provider.flow == "service_account":
            self._service_account_key()
        else:
            self._client_secret()

    def _client_secret(self) -> str | None:
        """The client secret, when the config names one (a service account has a key)."""
        if self.provider.flow == "service_account" or not self.box.oauth_client_secret_env:
            return None
        return self._secret()

    def _secret(self) -> str:
        env = self.box.oauth_client_secret_env
        value = os.environ.get(env) if env else None
        if not value:
            raise ConfigError(
                f"environment variable {env} is not set",
                field=self._field("oauth_client_secret_env"),
            )
        return value

    def _field(self, name: str) -> str:
        return f"mailboxes {self.box.email}: {name}"

    def _host(self) -> str:
        return urlsplit(self.provider.token_url).hostname or self.provider.token_url

    def _errors(self, action: str) -> _Translate:
        return _Translate(self, action)


class _Translate:
    """``with client._errors("refresh"):`` turns what authlib and requests raise into one
    OAuthProblem line."""

    def __init__(self, client: OAuthClient, action: str) -> None:
        self.client = client
        self.action = action

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: Any
    ) -> Literal[False]:
        if exc is None or isinstance(exc, OutreachError):
            return False
        host = self.client._host()
        email = self.client.box.email
        if isinstance(exc, OAuthError):
            text = f"{exc.error}" + (f": {_one_line(exc.description)}" if exc.description else "")
            if exc.error == "invalid_grant":
                raise GrantRevoked(
                    f"{host} refused the grant: {text}",
                    hint=f"reconnect with: outreach mailboxes connect {email}",
                ) from None
            if exc.error in ("temporarily_unavailable", "server_error"):
                raise TokenEndpointDown(f"{host}: {self.action}: {text}") from None
            raise ClientRefused(
                f"{host} refused the application: {text}",
                hint="check oauth_client_id, its secret, scopes and consent at the provider",
            ) from None
        if isinstance(exc, requests.HTTPError) and exc.response is not None:
            code = exc.response.status_code
            if 400 <= code < 500 and code not in (408, 429):
                raise ClientRefused(
                    f"{host}: {self.action}: HTTP {code}",
                    hint="check the token URL and the application's registration",
                ) from None
            raise TokenEndpointDown(f"{host}: {self.action}: HTTP {code}") from None
        if isinstance(exc, requests.Timeout):
            raise TokenEndpointDown(
                f"{host}: {self.action}: no answer within {self.client.timeout:g} s"
            ) from None
        if isinstance(exc, requests.RequestException | OSError | ValueError | KeyError | TypeError):
            reason = type(exc).__name__
            raise TokenEndpointDown(f"{host}: {self.action}: cannot reach it ({reason})") from None
        return False


def _tokens(token: dict[str, Any], now: datetime, keep_refresh: str | None = None) -> Tokens:
    try:
        access = str(token["access_token"])
    except (KeyError, TypeError):
        raise TokenEndpointDown("the token endpoint answered without an access_token") from None
    lifetime = token.get("expires_in")
    try:
        seconds = int(lifetime) if lifetime is not None else DEFAULT_LIFETIME
    except (TypeError, ValueError):
        seconds = DEFAULT_LIFETIME
    return Tokens(
        access_token=access,
        expires_at=now + timedelta(seconds=seconds),
        refresh_token=token.get("refresh_token") or keep_refresh,
        scope=token.get("scope"),
    )


def _one_line(text: str | None) -> str:
    return " ".join(str(text or "").split())[:300]
