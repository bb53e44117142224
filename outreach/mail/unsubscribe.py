"""Signed unsubscribe links: a token that names the address and cannot be guessed or forged."""

from __future__ import annotations

import os
from urllib.parse import quote

from itsdangerous import BadSignature, URLSafeSerializer

from outreach.errors import ConfigError

SALT = "outreach-unsubscribe"


def _serializer(secret: str) -> URLSafeSerializer:
    return URLSafeSerializer(secret, salt=SALT)


def secret_from_env(variable: str, signs: str = "the unsubscribe links") -> str:
    """The signing secret; a missing one is a configuration error, never a silent default.
    ``signs`` says what it signs, for the message (the tracking links use the same secret)."""
    secret = os.environ.get(variable, "")
    if len(secret) < 16:
        raise ConfigError(
            f"environment variable {variable} must hold a secret of 16 or more characters",
            field="[sending] unsubscribe_secret_env",
            hint=f"it signs {signs}; e.g. export "
            f"{variable}=$(python3 -c 'import secrets; print(secrets.token_urlsafe(32))')",
        )
    return secret


def make_link(base_url: str, secret: str, email: str) -> str:
    """``base_url?t=TOKEN`` for this address."""
    token = _serializer(secret).dumps(email)
    separator = "&" if "?" in base_url else "?"
    return f"{base_url}{separator}t={quote(token)}"


def read_token(secret: str, token: str) -> str | None:
    """The address a token was made for, or None when it is forged or damaged."""
    try:
        value = _serializer(secret).loads(token)
    except BadSignature:
        return None
    return value if isinstance(value, str) else None
