"""OAuth 2.0 providers as presets: endpoints, scopes, servers and quirks over one code path.

``microsoft`` and ``google`` are what a ``generic`` provider would be with their URLs, scopes
and a few request parameters filled in; the flows (:mod:`outreach.oauth`) never ask which
provider they talk to. So the tests of the generic path, against an authorization server on
loopback, test Microsoft's and Google's as well.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from outreach.config import Mailbox

FLOWS_ALL = ("device", "client_credentials", "authorization_code", "service_account")
# What each provider offers for mail: Google's device flow refuses https://mail.google.com/,
# and Microsoft has no JWT-bearer grant for a mailbox.
FLOWS = {
    "microsoft": ("device", "client_credentials", "authorization_code"),
    "google": ("authorization_code", "service_account"),
    "generic": FLOWS_ALL,
}
DEFAULT_FLOW = {"microsoft": "device", "google": "authorization_code"}
# Flows in which a person consents once (`outreach mailboxes connect`), leaving a refresh token.
DELEGATED = ("device", "authorization_code")

# The provider's mail servers, filled in unless the entry names its own smtp_* / imap_*.
PROVIDER_HOSTS: dict[str, tuple[dict[str, Any], ...]] = {
    "microsoft": (
        {"smtp_host": "smtp.office365.com", "smtp_port": 587, "smtp_security": "starttls"},
        {"imap_host": "outlook.office365.com", "imap_port": 993, "imap_security": "tls"},
    ),
    "google": (
        {"smtp_host": "smtp.gmail.com", "smtp_port": 587, "smtp_security": "starttls"},
        {"imap_host": "imap.gmail.com", "imap_port": 993, "imap_security": "tls"},
    ),
}

_MS = "https://login.microsoftonline.com/{tenant}/oauth2/v2.0"
MICROSOFT_DELEGATED_SCOPES = (
    "https://outlook.office.com/IMAP.AccessAsUser.All",
    "https://outlook.office.com/SMTP.Send",
    "offline_access",  # without it no refresh token comes back
)
MICROSOFT_APP_SCOPES = ("https://outlook.office365.com/.default",)
GOOGLE_SCOPES = ("https://mail.google.com/",)


@dataclass(frozen=True)
class Provider:
    """One mailbox's OAuth set-up, resolved: where to ask, for what, and how."""

    name: str
    flow: str
    client_id: str | None
    token_url: str
    device_url: str | None
    authorize_url: str | None
    scopes: tuple[str, ...]
    # Extra parameters of the authorization request (Google: a refresh token every time).
    authorize_params: dict[str, str] = field(default_factory=dict)

    @property
    def delegated(self) -> bool:
        """A person's consent, kept as a refresh token (needs `outreach mailboxes connect`)."""
        return self.flow in DELEGATED


def provider_for(box: Mailbox) -> Provider:
    """The resolved provider of an OAuth mailbox (the config has been checked already)."""
    name = box.oauth_provider or "generic"
    flow = box.oauth_flow or DEFAULT_FLOW[name]
    token_url = device_url = authorize_url = None
    scopes: tuple[str, ...] = ()
    params: dict[str, str] = {}
    if name == "microsoft":
        tenant = box.oauth_tenant or "organizations"
        token_url = _MS.format(tenant=tenant) + "/token"
        device_url = _MS.format(tenant=tenant) + "/devicecode"
        authorize_url = _MS.format(tenant=tenant) + "/authorize"
        scopes = (
            MICROSOFT_APP_SCOPES if flow == "client_credentials" else MICROSOFT_DELEGATED_SCOPES
        )
    elif name == "google":
        token_url = "https://oauth2.googleapis.com/token"
        authorize_url = "https://accounts.google.com/o/oauth2/v2/auth"
        scopes = GOOGLE_SCOPES
        # Google returns a refresh token only with access_type=offline, and only on the first
        # consent unless prompt=consent asks again (a reconnect must get a new one).
        params = {"access_type": "offline", "prompt": "consent"}
    return Provider(
        name=name,
        flow=flow,
        client_id=box.oauth_client_id,
        token_url=box.oauth_token_url or token_url or "",
        device_url=box.oauth_device_url or device_url,
        authorize_url=box.oauth_authorize_url or authorize_url,
        scopes=tuple(box.oauth_scopes) if box.oauth_scopes is not None else scopes,
        authorize_params=params,
    )


def check_mailbox(box: Mailbox) -> None:
    """Raise ValueError (one sentence naming the setting) for an OAuth set-up that cannot work."""
    oauth_fields = [
        name
        for name in (
            "oauth_provider",
            "oauth_flow",
            "oauth_client_id",
            "oauth_client_secret_env",
            "oauth_tenant",
            "oauth_scopes",
            "oauth_token_url",
            "oauth_device_url",
            "oauth_authorize_url",
        )
        if getattr(box, name) is not None
    ]
    if box.auth == "password":
        if oauth_fields:
            raise ValueError(f'{oauth_fields[0]} needs auth = "oauth2"')
        return
    if box.password_env:
        raise ValueError('password_env is for auth = "password"; an OAuth mailbox has none')
    if box.oauth_provider is None:
        raise ValueError('auth = "oauth2" needs oauth_provider ("microsoft", "google", "generic")')
    name = box.oauth_provider
    flow = box.oauth_flow or DEFAULT_FLOW.get(name)
    if flow is None:
        raise ValueError('oauth_flow is needed with oauth_provider = "generic"')
    if flow not in FLOWS[name]:
        why = (
            " (Google's device flow does not allow the https://mail.google.com/ scope)"
            if name == "google" and flow == "device"
            else ""
        )
        raise ValueError(
            f'oauth_flow = "{flow}" is not offered by {name}{why}; use '
            + " or ".join(f'"{f}"' for f in FLOWS[name])
        )
    if flow != "service_account" and not box.oauth_client_id:
        raise ValueError(f"oauth_client_id is needed (the application's id at {name})")
    if flow in ("client_credentials", "service_account") and not box.oauth_client_secret_env:
        what = "the service account's JSON key" if flow == "service_account" else "its secret"
        raise ValueError(f"oauth_client_secret_env is needed: the environment variable with {what}")
    if (
        name == "microsoft"
        and flow == "client_credentials"
        and (box.oauth_tenant in (None, "common", "organizations", "consumers"))
    ):
        raise ValueError(
            "oauth_tenant is needed for app-only access: the directory (tenant) id or domain"
        )
    if name == "generic":
        needed = {"oauth_token_url": box.oauth_token_url}
        if flow == "device":
            needed["oauth_device_url"] = box.oauth_device_url
        if flow == "authorization_code":
            needed["oauth_authorize_url"] = box.oauth_authorize_url
        for key, value in needed.items():
            if not value:
                raise ValueError(f'{key} is needed with oauth_provider = "generic"')
