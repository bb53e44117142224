"""The mail providers ``doctor`` recognises, from a mailbox's ``smtp_host`` or its domain's MX:
which SPF include authorises their servers and where they publish DKIM keys.

Only what each provider documents goes here; an unknown provider is not guessed at.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace


@dataclass(frozen=True)
class Provider:
    """A mail provider a mailbox sends through or receives at."""

    name: str
    # Host names a mailbox's smtp_host may be; one starting with "." matches any host under it.
    smtp_hosts: tuple[str, ...]
    # MX host names (same rule) that say the domain's mail is hosted there.
    mx_hosts: tuple[str, ...]
    # The domain whose SPF record lists the provider's sending servers.
    spf_include: str | None
    # The selectors the provider signs with, where they are fixed.
    dkim_selectors: tuple[str, ...]
    # Where a newcomer creates the DKIM key; {domain} is filled in.
    dkim_howto: str
    # The provider rotates keys between all its selectors, so every one must be published.
    dkim_rotates: bool = False
    # The provider sends with its own envelope sender (Return-Path) unless told otherwise,
    # so SPF passes for its domain and only DKIM can align with From.
    own_envelope: bool = False


MICROSOFT = Provider(
    name="Microsoft 365",
    smtp_hosts=("smtp.office365.com", "smtp-mail.outlook.com", ".mail.protection.outlook.com"),
    mx_hosts=(".mail.protection.outlook.com",),
    spf_include="spf.protection.outlook.com",
    dkim_selectors=("selector1", "selector2"),
    dkim_howto="turn on DKIM for {domain} in Microsoft Defender (Email & collaboration > "
    "Policies > Email authentication settings > DKIM) and publish the two CNAMEs it shows, "
    "selector1._domainkey.{domain} and selector2._domainkey.{domain}",
    dkim_rotates=True,
)
GOOGLE = Provider(
    name="Google Workspace",
    smtp_hosts=("smtp.gmail.com", "smtp-relay.gmail.com", "smtp.googlemail.com"),
    mx_hosts=("smtp.google.com", "aspmx.l.google.com", ".aspmx.l.google.com", ".googlemail.com"),
    spf_include="_spf.google.com",
    dkim_selectors=("google",),
    dkim_howto="generate the key in the Google Admin console (Apps > Google Workspace > Gmail "
    "> Authenticate email), add its TXT at google._domainkey.{domain}, then press Start "
    "authentication",
)
FASTMAIL = Provider(
    name="Fastmail",
    smtp_hosts=("smtp.fastmail.com",),
    mx_hosts=(".messagingengine.com",),
    spf_include="spf.messagingengine.com",
    dkim_selectors=("fm1", "fm2", "fm3"),
    dkim_howto="publish the CNAMEs fm1, fm2 and fm3._domainkey.{domain} that Fastmail's "
    "Settings > Domains page shows",
    dkim_rotates=True,
)
SENDGRID = Provider(
    name="SendGrid",
    smtp_hosts=("smtp.sendgrid.net",),
    mx_hosts=(),
    spf_include="sendgrid.net",
    dkim_selectors=("s1", "s2"),
    dkim_howto="authenticate {domain} in SendGrid (Settings > Sender Authentication) and "
    "publish the CNAMEs it shows, s1._domainkey.{domain} and s2._domainkey.{domain}",
    dkim_rotates=True,
    own_envelope=True,
)
AMAZON_SES = Provider(
    name="Amazon SES",
    smtp_hosts=(".amazonaws.com",),
    mx_hosts=(),
    spf_include="amazonses.com",
    dkim_selectors=(),  # Easy DKIM's selectors are random tokens: set dkim_selector
    dkim_howto="verify {domain} with Easy DKIM in the SES console, publish its three CNAMEs "
    "and set dkim_selector to one of their tokens",
    own_envelope=True,
)
ZOHO = Provider(
    name="Zoho Mail",
    smtp_hosts=("smtp.zoho.com", "smtp.zoho.eu", "smtppro.zoho.com", "smtppro.zoho.eu"),
    mx_hosts=(".zoho.com", ".zoho.eu"),
    spf_include=None,  # zoho.com or zoho.eu by region: the SMTP host tells, see provider_of
    dkim_selectors=(),  # chosen by the admin when the key is made
    dkim_howto="add a DKIM selector for {domain} in the Zoho Mail admin console (Domains > "
    "Email configuration > DKIM), publish its TXT and set dkim_selector to its name",
)

PROVIDERS = (MICROSOFT, GOOGLE, FASTMAIL, SENDGRID, AMAZON_SES, ZOHO)


def _matches(host: str, patterns: Iterable[str]) -> bool:
    host = host.lower().rstrip(".")
    return any(
        host.endswith(pattern) if pattern.startswith(".") else host == pattern
        for pattern in patterns
    )


def provider_of_smtp_host(host: str) -> Provider | None:
    """The provider a mailbox sends through, when its ``smtp_host`` is one we know."""
    return _find(host, lambda provider: provider.smtp_hosts)


def provider_of_mx(host: str) -> Provider | None:
    """The provider hosting a domain's mail, when its MX is one we know."""
    return _find(host, lambda provider: provider.mx_hosts)


def _find(host: str, hosts: Callable[[Provider], tuple[str, ...]]) -> Provider | None:
    for provider in PROVIDERS:
        if _matches(host, hosts(provider)):
            if provider is ZOHO:
                # Zoho's data centres publish their own SPF: zoho.eu for the .eu hosts.
                region = "zoho.eu" if host.lower().rstrip(".").endswith(".eu") else "zoho.com"
                return replace(ZOHO, spf_include=region)
            return provider
    return None
