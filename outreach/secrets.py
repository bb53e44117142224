"""Secrets kept in the database (OAuth grants), encrypted with a key from the environment.

Fernet (AES-128-CBC with HMAC-SHA256, from ``cryptography``): nothing hand-made. The key is
named by ``[secrets] key_env``; the variable may hold several keys separated by commas, the
first encrypting and all decrypting, so a key is rotated by putting the new one first and
running ``outreach secrets rotate``.
"""

from __future__ import annotations

import os

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from outreach.errors import ConfigError

FIELD = "[secrets] key_env"


class Vault:
    """Encrypts and decrypts short secrets (tokens) with the workspace's key(s)."""

    def __init__(self, keys: list[str], env: str = "") -> None:
        self.env = env
        try:
            self._fernet = MultiFernet([Fernet(key.strip().encode()) for key in keys])
        except (ValueError, TypeError):
            raise ConfigError(
                f"environment variable {env} does not hold a Fernet key",
                field=FIELD,
                hint="make one with `outreach secrets key`",
            ) from None

    @classmethod
    def from_env(cls, env: str) -> Vault:
        """The vault of the key(s) in ``$env``; a missing or malformed key is one line."""
        value = os.environ.get(env, "").strip()
        if not value:
            raise ConfigError(
                f"environment variable {env} is not set: it holds the key that encrypts the "
                "stored OAuth grants",
                field=FIELD,
                hint=f"make one with `outreach secrets key`, then export {env}=...",
            )
        return cls([key for key in value.split(",") if key.strip()], env)

    def encrypt(self, secret: str) -> str:
        return self._fernet.encrypt(secret.encode()).decode("ascii")

    def decrypt(self, stored: str) -> str:
        try:
            return self._fernet.decrypt(stored.encode("ascii")).decode()
        except InvalidToken:
            raise ConfigError(
                f"a stored grant cannot be decrypted with the key in {self.env}",
                field=FIELD,
                hint="the key changed: put the old key after the new one (comma-separated), "
                "or connect the mailbox again",
            ) from None

    def rotate(self, stored: str) -> str:
        """The same secret encrypted with the first key."""
        try:
            return self._fernet.rotate(stored.encode("ascii")).decode("ascii")
        except InvalidToken:
            raise ConfigError(
                f"a stored grant cannot be decrypted with the key(s) in {self.env}", field=FIELD
            ) from None


def new_key() -> str:
    """A fresh random Fernet key (32 bytes, URL-safe base64)."""
    return Fernet.generate_key().decode("ascii")
