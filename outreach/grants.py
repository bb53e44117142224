"""The stored OAuth grant of a mailbox, and the access tokens SMTP and IMAP log in with.

One :class:`TokenSource` per mailbox and workspace. Its access token is cached in the
database (encrypted), so SMTP, IMAP and every daemon share it; it is refreshed shortly before
it expires. The refresh runs with the grant's row locked (``SELECT ... FOR UPDATE`` on
PostgreSQL; a lock file beside the database on SQLite), and the
rotated refresh token is written in the transaction that records the refresh: a refresh
token the server has spent is never kept, and two daemons never spend the same one.

What goes wrong:

- ``invalid_grant``: the grant is marked broken and the mailbox paused with
  "reconnect with: outreach mailboxes connect EMAIL"; the server is not asked again until then.
- the application refused (invalid_client...): the mailbox is paused with the server's text.
- the token endpoint down or slow: :class:`~outreach.oauth.TokenEndpointDown`, nothing
  written; the caller waits and tries again.
"""

from __future__ import annotations

import fcntl
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session

from outreach import clock
from outreach.errors import ClientRefused, ConfigError, GrantRevoked
from outreach.models import MailboxState, OAuthGrant
from outreach.oauth_providers import provider_for
from outreach.secrets import Vault

if TYPE_CHECKING:
    from outreach.config import Mailbox
    from outreach.oauth import OAuthClient, Tokens
    from outreach.store import Store

# Refresh this long before the access token expires: a token that lapses between the check
# and the server's look at it would be a needless refused login.
REFRESH_MARGIN = timedelta(minutes=5)

_LOCKS: dict[tuple[str, str], threading.Lock] = {}
_LOCKS_GUARD = threading.Lock()


@contextmanager
def _refresh_lock(url: str, mailbox: str) -> Iterator[None]:
    """One refresh of a mailbox's token at a time: SMTP (the event loop) and IMAP (worker
    threads) of one process take turns; on SQLite, processes too, by a lock file beside the
    database (on PostgreSQL the grant's row lock does that)."""
    with _LOCKS_GUARD:
        lock = _LOCKS.setdefault((url, mailbox), threading.Lock())
    with lock:
        path = url.removeprefix("sqlite:///") if url.startswith("sqlite:///") else None
        if path is None or ":memory:" in path:
            yield
            return
        fd = os.open(f"{path}.oauth-lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock


def reconnect_hint(email: str) -> str:
    return f"reconnect with: outreach mailboxes connect {email}"


@dataclass(frozen=True)
class GrantInfo:
    """What may be shown of a grant: never a token."""

    mailbox: str
    provider: str
    flow: str
    connected_at: datetime | None
    expires_at: datetime | None
    refreshed_at: datetime | None
    refreshes: int
    rotations: int
    broken: str | None


class TokenSource:
    """Access tokens for one OAuth mailbox, from its grant in ``store``."""

    def __init__(
        self,
        store: Callable[[], Store],
        box: Mailbox,
        key_env: str,
        *,
        client: OAuthClient | None = None,
        now: Callable[[], datetime] = clock.now,
    ) -> None:
        self._store = store
        self.box = box
        self.key_env = key_env
        self.provider = provider_for(box)
        self._client = client
        self.now = now

    @property
    def client(self) -> OAuthClient:
        """The provider's client, made on first use (authlib loads only for OAuth work)."""
        if self._client is None:
            from outreach.oauth import OAuthClient

            self._client = OAuthClient(self.box)
        return self._client

    @property
    def store(self) -> Store:
        return self._store()

    def vault(self) -> Vault:
        return Vault.from_env(self.key_env)

    # ------------------------------------------------------------------ checks

    def check(self) -> None:
        """Raise ConfigError now if this mailbox cannot get a token at all: no key, no
        secret in the environment, or a delegated grant that was never connected."""
        self.vault()
        self.client.check_secrets()
        if self.provider.delegated and self.info() is None:
            raise ConfigError(
                f"mailbox {self.box.email} is not connected to {self.provider.name} yet",
                field=f"mailboxes {self.box.email}: auth",
                hint=f"run: outreach mailboxes connect {self.box.email}",
            )

    def info(self) -> GrantInfo | None:
        with self.store.session() as session:
            grant = session.get(OAuthGrant, self.box.email)
            if grant is None:
                return None
            return GrantInfo(
                mailbox=grant.mailbox,
                provider=grant.provider,
                flow=grant.flow,
                connected_at=_aware(grant.connected_at),
                expires_at=_aware(grant.expires_at),
                refreshed_at=_aware(grant.refreshed_at),
                refreshes=grant.refreshes,
                rotations=grant.rotations,
                broken=grant.broken,
            )

    # ------------------------------------------------------------------ tokens

    def access_token(self, *, refused: str | None = None) -> str:
        """A valid access token. ``refused`` is one the mail server just refused: another
        one is fetched unless another process already did."""
        vault = self.vault()
        now = self.now()
        with self.store.session() as session:  # the cheap path: no lock
            grant = session.get(OAuthGrant, self.box.email)
            token = _usable(grant, vault, now, refused)
            if token is not None:
                return token
        with _refresh_lock(self.store.url, self.box.email):
            return self._refresh(vault, refused)

    def _refresh(self, vault: Vault, refused: str | None) -> str:
        problem: Exception | None = None
        with self.store.session() as session:
            grant = self._locked_grant(session)
            now = self.now()
            token = _usable(grant, vault, now, refused)  # another process may just have
            if token is not None:
                return token
            if grant.broken:
                raise GrantRevoked(grant.broken, hint=reconnect_hint(self.box.email))

            try:
                if self.provider.delegated:
                    if not grant.refresh_token:
                        raise GrantRevoked(
                            "no refresh token is stored", hint=reconnect_hint(self.box.email)
                        )
                    tokens = self.client.refresh(vault.decrypt(grant.refresh_token), now)
                else:
                    tokens = self.client.app_token(now)
            except GrantRevoked as exc:
                # Kept (the transaction commits): no request goes out until a new connect.
                grant.broken = exc.message
                grant.access_token = None
                grant.paused_reason = exc.one_line()
                _pause(session, self.box.email, grant.paused_reason, now)
                problem = exc
            except ClientRefused as exc:
                grant.paused_reason = exc.one_line()
                _pause(session, self.box.email, grant.paused_reason, now)
                problem = exc
            else:
                _save(grant, vault, tokens, now)
                return tokens.access_token
            finally:
                session.add(grant)
        assert problem is not None
        raise problem

    def _locked_grant(self, session: Session) -> OAuthGrant:
        grant = session.get(
            OAuthGrant, self.box.email, with_for_update=True, populate_existing=True
        )
        if grant is not None:
            return grant
        if self.provider.delegated:
            raise ConfigError(
                f"mailbox {self.box.email} is not connected to {self.provider.name} yet",
                field=f"mailboxes {self.box.email}: auth",
                hint=f"run: outreach mailboxes connect {self.box.email}",
            )
        # App-only access needs no connect: the first token makes the row. Two daemons may
        # get here at once; the insert that loses does nothing, and both then lock the row.
        conn = session.connection()
        dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
        conn.execute(
            dialect.insert(OAuthGrant.__table__)  # type: ignore[attr-defined]
            .values(
                mailbox=self.box.email,
                provider=self.provider.name,
                flow=self.provider.flow,
                client_id=self.provider.client_id,
                refreshes=0,
                rotations=0,
            )
            .on_conflict_do_nothing()
        )
        grant = session.get(
            OAuthGrant, self.box.email, with_for_update=True, populate_existing=True
        )
        assert grant is not None
        return grant

    # ------------------------------------------------------------------ connect

    def store_grant(self, tokens: Tokens) -> str | None:
        """Keep the grant a person just gave (``connect``); lift the pause its predecessor
        caused. Returns the pause lifted, if any."""
        vault = self.vault()
        now = self.now()
        with _refresh_lock(self.store.url, self.box.email), self.store.session() as session:
            grant = session.get(
                OAuthGrant, self.box.email, with_for_update=True, populate_existing=True
            )
            if grant is None:
                grant = OAuthGrant(
                    mailbox=self.box.email, provider=self.provider.name, flow=self.provider.flow
                )
            grant.provider, grant.flow = self.provider.name, self.provider.flow
            grant.client_id = self.provider.client_id
            grant.refresh_token = (
                vault.encrypt(tokens.refresh_token) if tokens.refresh_token else None
            )
            grant.connected_at, grant.broken = now, None
            grant.refreshes, grant.rotations = 0, 0
            _save(grant, vault, tokens, now)
            lifted = _lift_pause(session, self.box.email, grant.paused_reason)
            grant.paused_reason = None
            session.add(grant)
            return lifted

    def reset_app_grant(self) -> str | None:
        """App-only access, asked to connect: forget the cached token and a broken mark, and
        lift the pause they caused, so the next token is fetched anew. Returns the pause
        lifted, if any."""
        with _refresh_lock(self.store.url, self.box.email), self.store.session() as session:
            grant = session.get(
                OAuthGrant, self.box.email, with_for_update=True, populate_existing=True
            )
            if grant is None:
                return None
            grant.access_token, grant.expires_at, grant.broken = None, None, None
            lifted = _lift_pause(session, self.box.email, grant.paused_reason)
            grant.paused_reason = None
            session.add(grant)
            return lifted

    def refused(self, server_text: str) -> str:
        """A fresh token was refused by the mail server too: pause the mailbox with the
        server's own words. Returns the reason written."""
        hint = (
            reconnect_hint(self.box.email)
            if self.provider.delegated
            else "check the app's mailbox permission, then: "
            f"outreach mailboxes resume {self.box.email}"
        )
        reason = f"{server_text} (a fresh OAuth token was refused; {hint})"
        now = self.now()
        with self.store.session() as session:
            _pause(session, self.box.email, reason, now)
            grant = session.get(OAuthGrant, self.box.email, with_for_update=True)
            if grant is not None:
                grant.paused_reason = reason
                session.add(grant)
        return reason


def _usable(
    grant: OAuthGrant | None, vault: Vault, now: datetime, refused: str | None
) -> str | None:
    """The cached access token, when it has more than the margin left and is not the one
    just refused."""
    if grant is None or grant.broken or not grant.access_token or grant.expires_at is None:
        return None
    if _aware(grant.expires_at) - REFRESH_MARGIN <= now:  # type: ignore[operator]
        return None
    token = vault.decrypt(grant.access_token)
    return None if token == refused else token


def _save(grant: OAuthGrant, vault: Vault, tokens: Tokens, now: datetime) -> None:
    """Record a refresh: the access token and, when rotated, the new refresh token, in the
    caller's one transaction."""
    grant.access_token = vault.encrypt(tokens.access_token)
    grant.expires_at = tokens.expires_at
    grant.scope = tokens.scope or grant.scope
    if tokens.refresh_token:
        old = vault.decrypt(grant.refresh_token) if grant.refresh_token else None
        if old is not None and old != tokens.refresh_token:
            grant.rotations += 1
        if old != tokens.refresh_token:
            grant.refresh_token = vault.encrypt(tokens.refresh_token)
    grant.refreshed_at = now
    grant.refreshes += 1


def _pause(session: Session, email: str, reason: str, now: datetime) -> None:
    state = session.get(MailboxState, email, with_for_update=True, populate_existing=True)
    if state is None:
        state = MailboxState(email=email)
    state.paused_reason, state.paused_at = reason, now
    session.add(state)


def _lift_pause(session: Session, email: str, reason: str | None) -> str | None:
    state = session.get(MailboxState, email, with_for_update=True, populate_existing=True)
    if state is None or not state.paused_reason:
        return None
    # Only a pause of the login: one for bounces or by an operator stays.
    if state.paused_reason != reason and "mailboxes connect" not in state.paused_reason:
        return None
    lifted = state.paused_reason
    state.paused_reason, state.paused_at = None, None
    session.add(state)
    return lifted


def _aware(value: datetime | None) -> datetime | None:
    """SQLite hands datetimes back without their zone; they were stored in UTC."""
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


def rotate_key(store: Store, vault: Vault) -> int:
    """Re-encrypt every stored token with the vault's first key (after a new key was put in
    front of the old one); returns how many grants were rewritten."""
    from sqlmodel import select

    count = 0
    with store.session() as session:
        for grant in session.exec(select(OAuthGrant).with_for_update()).all():
            if grant.refresh_token:
                grant.refresh_token = vault.rotate(grant.refresh_token)
            if grant.access_token:
                grant.access_token = vault.rotate(grant.access_token)
            session.add(grant)
            count += 1
    return count
