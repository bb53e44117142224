"""``outreach doctor``: will receivers trust the mail of each mailbox's domain?

For every domain the mailboxes send from, the DNS checks (MX and SPF in
:mod:`outreach.dnsauth`, DKIM in :mod:`outreach.dkim`, DMARC and alignment in
:mod:`outreach.dmarc`); then one-click unsubscribe; then, when ``[tracking]`` is on, the
tracking domain; then each mailbox's login, through the one hook :data:`LoginCheck`. Every
finding is one line that says what to do; a failure makes the command exit 1, warnings alone do
not.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Protocol
from urllib.parse import urlsplit

import dns.exception
import dns.name
import dns.resolver

from outreach import dkim, dmarc
from outreach.config import Config, Mailbox
from outreach.dnsauth import (
    Finding,
    Level,
    check_mx,
    check_spf,
    forget_cached_answers,
    resolves,
    unique,
)
from outreach.errors import OutreachError
from outreach.providers import provider_of_mx, provider_of_smtp_host

__all__ = ["Finding", "Level", "LoginCheck", "Report", "diagnose", "make_resolver"]

DEFAULT_TIMEOUT = 5.0  # seconds for one DNS question, retries included

# The one hook for the login step: given a mailbox, log in to SMTP and IMAP (and refresh an
# OAuth token) without sending, and say how each step went, as findings with check="login".
LoginCheck = Callable[[Mailbox], Iterable[Finding]]


class LoginStep(Protocol):
    """One step of a mailbox login check (``outreach mailboxes check``): True ok, False
    failed, None skipped."""

    @property
    def mailbox(self) -> str: ...

    @property
    def step(self) -> str: ...

    @property
    def ok(self) -> bool | None: ...

    @property
    def detail(self) -> str: ...


def login_findings(steps: Iterable[LoginStep]) -> list[Finding]:
    """A login check's steps as doctor's findings: a failed step fails doctor, a skipped one
    (no IMAP configured, nothing to log in with) is a warning."""
    level: dict[bool | None, Level] = {True: "ok", False: "failure", None: "warning"}
    return [
        Finding(
            step.mailbox,
            "login",
            level[step.ok],
            f"{step.step}: {step.detail}",
            f"fix the mailbox's settings in outreach.toml (or its secret), then "
            f"`outreach mailboxes check {step.mailbox}`"
            if step.ok is False
            else None,
        )
        for step in steps
    ]


@dataclass
class Report:
    """Every finding of one ``doctor`` run, in the order they were found."""

    findings: list[Finding] = field(default_factory=list)
    # Each domain checked, with the addresses of the mailboxes that send from it.
    domains: dict[str, list[str]] = field(default_factory=dict)

    def count(self, level: Level) -> int:
        return sum(1 for finding in self.findings if finding.level == level)

    @property
    def failed(self) -> bool:
        return self.count("failure") > 0

    def summary(self) -> str:
        failures, warnings = self.count("failure"), self.count("warning")
        return (
            f"{failures} failure{'s' * (failures != 1)}, "
            f"{warnings} warning{'s' * (warnings != 1)}, {self.count('ok')} ok"
        )

    def as_json(self) -> dict[str, Any]:
        return {
            "ok": not self.failed,
            "failures": self.count("failure"),
            "warnings": self.count("warning"),
            "domains": self.domains,
            "findings": [finding.as_json() for finding in self.findings],
        }


def parse_nameserver(value: str) -> tuple[str, int]:
    """``IP``, ``IP:PORT`` or ``[IPv6]:PORT`` as (address, port); anything else is an error
    that names ``--nameserver``."""
    host, port = value.strip(), "53"
    if host.startswith("["):
        host, _, rest = host[1:].partition("]")
        port = rest.removeprefix(":") or port
    elif host.count(":") == 1:
        host, port = host.split(":")
    try:
        ipaddress.ip_address(host)
        number = int(port)
        if not 0 < number < 65536:
            raise ValueError(port)
    except ValueError:
        raise OutreachError(
            f"'{value}' is not IP[:PORT]",
            field="--nameserver",
            hint="e.g. 127.0.0.1:5353, 1.1.1.1 or [::1]:53",
        ) from None
    return host, number


def make_resolver(
    nameserver: str | None, timeout: float = DEFAULT_TIMEOUT
) -> dns.resolver.Resolver:
    """A resolver that asks ``nameserver`` alone, else the system's (``/etc/resolv.conf``)."""
    if nameserver is None:
        try:
            resolver = dns.resolver.Resolver()
        except dns.resolver.NoResolverConfiguration:
            raise OutreachError(
                "this machine has no DNS resolver configured (/etc/resolv.conf)",
                field="--nameserver",
                hint="name one, e.g. --nameserver 1.1.1.1",
            ) from None
    else:
        address, port = parse_nameserver(nameserver)
        resolver = dns.resolver.Resolver(configure=False)
        resolver.nameservers = [address]
        resolver.port = port
    resolver.lifetime = timeout
    resolver.timeout = min(timeout, 2.0)  # per try: a lost UDP packet is asked again
    return resolver


def mailbox_domains(mailboxes: Iterable[Mailbox]) -> dict[str, list[Mailbox]]:
    """The sending domains, each with its mailboxes, in the config's order."""
    domains: dict[str, list[Mailbox]] = {}
    for box in mailboxes:
        domains.setdefault(box.email.rpartition("@")[2], []).append(box)
    return domains


def diagnose(
    config: Config,
    resolver: dns.resolver.Resolver,
    environ: Mapping[str, str],
    login: LoginCheck | None = None,
) -> Report:
    """Check every mailbox domain, the unsubscribe set-up and, given ``login``, each login.

    ``environ`` is where secrets are looked for (only whether they are set, never printed).
    """
    if not config.mailboxes:
        raise OutreachError("no [[mailboxes]] configured: nothing to check", file=config.path)
    forget_cached_answers()
    report = Report()
    for domain, boxes in mailbox_domains(config.mailboxes).items():
        report.domains[domain] = [box.email for box in boxes]
        report.findings += check_domain(domain, boxes, resolver)
    report.findings += check_unsubscribe(config, resolver, environ)
    report.findings += check_tracking(config, resolver, environ)
    if login is not None:
        for box in config.mailboxes:
            report.findings += login(box)
    return report


def check_domain(
    domain: str, boxes: list[Mailbox], resolver: dns.resolver.Resolver
) -> list[Finding]:
    """Every DNS finding for one sending domain and the mailboxes that send from it."""
    # The records are named in their ASCII form (xn--...), as DNS admin panels want them; the
    # lines still start with the domain as the mailboxes spell it.
    name = _ascii(domain)
    findings = _check_records(name, boxes, resolver)
    if name != domain:
        findings = [replace(f, subject=domain) for f in findings]
    return findings


def _check_records(
    domain: str, boxes: list[Mailbox], resolver: dns.resolver.Resolver
) -> list[Finding]:
    mx, mx_hosts = check_mx(domain, resolver)
    if mx_hosts is None:  # the domain does not exist or its servers fail: nothing else can
        return mx
    senders = unique([provider_of_smtp_host(b.smtp_host) for b in boxes])
    hosts = unique([provider_of_mx(host) for host in mx_hosts])
    # SPF must let both send: outreach's relay, and the mail host the rep writes from.
    spf, spf_passes = check_spf(domain, unique([*senders, *hosts]), resolver)
    # outreach's mail is signed by the relay it goes through; only when that is not one we
    # know is the mail host's usual selectors the best guess.
    dkim_found, dkim_keys = dkim.check_dkim(domain, boxes, senders or hosts, resolver)
    dmarc_found, tags = dmarc.check_dmarc(domain, resolver)
    findings = [*mx, *spf, *dkim_found, *dmarc_found]
    if tags is not None:
        findings.append(dmarc.check_alignment(domain, tags, spf_passes, dkim_keys, senders))
    return findings


def _ascii(domain: str) -> str:
    try:
        return dns.name.from_text(domain).to_text(omit_final_dot=True)
    except dns.exception.DNSException:  # not a name DNS can carry; the lookup will say so
        return domain


def check_unsubscribe(
    config: Config, resolver: dns.resolver.Resolver, environ: Mapping[str, str]
) -> list[Finding]:
    """One-click unsubscribe (RFC 8058): Gmail's and Yahoo's bulk-sender rules (February
    2024) and Microsoft's (May 2025) ask for ``List-Unsubscribe-Post`` with an https link."""
    sending, subject = config.settings.sending, "[sending]"
    rules = "Gmail, Yahoo and Microsoft expect one-click unsubscribe from bulk senders"
    setting = 'set [sending] unsubscribe_url = "https://YOUR-HOST/u" and [web] enabled = true'
    url = sending.unsubscribe_url
    if url is None:
        if sending.unsubscribe_mailto:
            return [
                Finding(
                    subject,
                    "unsubscribe",
                    "warning",
                    f"only mailto:{sending.unsubscribe_mailto}, no one-click link ({rules})",
                    setting + " (behind your https proxy)",
                )
            ]
        return [
            Finding(
                subject,
                "unsubscribe",
                "failure",
                f"no List-Unsubscribe at all: recipients cannot opt out ({rules})",
                setting + ", or at least [sending] unsubscribe_mailto",
            )
        ]
    # The config already refuses anything but https://, so the scheme is right here.
    findings: list[Finding] = []
    host = urlsplit(url).hostname or ""
    if not resolves(host, resolver):
        findings.append(
            Finding(
                subject,
                "unsubscribe",
                "failure",
                f"{host} (of unsubscribe_url) has no address in DNS: the one-click POST "
                "cannot reach it",
                f"add an A, AAAA or CNAME record for {host} pointing at your https proxy",
            )
        )
    variable = sending.unsubscribe_secret_env
    if len(environ.get(variable, "")) < 16:
        findings.append(
            Finding(
                subject,
                "unsubscribe",
                "failure",
                f"${variable} does not hold a secret of 16 or more characters, so no link "
                "can be signed and nothing is sent",
                f"export {variable}=$(python3 -c 'import secrets; "
                "print(secrets.token_urlsafe(32))') where outreach runs",
            )
        )
    if not config.settings.web.enabled:
        findings.append(
            Finding(
                subject,
                "unsubscribe",
                "warning",
                f"[web] enabled = false: `outreach run` does not answer the one-click POST "
                f"to {url}",
                "set [web] enabled = true behind your https proxy, or make "
                "sure another service applies the POST",
            )
        )
    if not findings:
        findings.append(
            Finding(subject, "unsubscribe", "ok", f"one-click (List-Unsubscribe-Post) to {url}")
        )
    return findings


def check_tracking(
    config: Config, resolver: dns.resolver.Resolver, environ: Mapping[str, str]
) -> list[Finding]:
    """With ``[tracking]`` on: the tracking domain resolves (else every pixel and tracked
    link in the mail points nowhere), sits under a sending domain (links to a stranger's
    domain look like phishing to filters), and the links can be signed."""
    tracking, subject = config.settings.tracking, "[tracking]"
    if not tracking.on or tracking.domain is None:
        return []
    host = urlsplit(tracking.domain).hostname or ""
    kinds = " and ".join(k for k in ("opens", "clicks") if getattr(tracking, k))
    findings: list[Finding] = []
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        address = None
    if address is not None or host == "localhost":
        findings.append(
            Finding(
                subject,
                "tracking",
                "warning",
                f"domain {tracking.domain} is an address, not a name: "
                + (
                    "no recipient's mail client can reach it"
                    if host == "localhost" or (address is not None and address.is_loopback)
                    else "links to a bare IP address look like phishing to filters"
                ),
                "set [tracking] domain to a host under your sending domain, served by your "
                "https proxy",
            )
        )
    elif not resolves(host, resolver):
        findings.append(
            Finding(
                subject,
                "tracking",
                "failure",
                f"{host} (of [tracking] domain) has no address in DNS: every tracked link in "
                "the mail would lead nowhere, and no open could be seen",
                f"add an A, AAAA or CNAME record for {host} pointing at your https proxy (or "
                "turn [tracking] off)",
            )
        )
    else:
        domains = list(mailbox_domains(config.mailboxes))
        if not any(host == d or host.endswith("." + d) for d in domains):
            findings.append(
                Finding(
                    subject,
                    "tracking",
                    "warning",
                    f"{host} is not under a sending domain ({', '.join(domains)}): links to "
                    "another domain than the From's look like phishing to filters",
                    f"use a subdomain such as t.{domains[0]}" if domains else None,
                )
            )
    variable = config.settings.sending.unsubscribe_secret_env
    if len(environ.get(variable, "")) < 16 and not config.settings.sending.unsubscribe_url:
        # (with unsubscribe_url set, the unsubscribe check above already says so)
        findings.append(
            Finding(
                subject,
                "tracking",
                "failure",
                f"${variable} does not hold a secret of 16 or more characters, so no tracking "
                "link can be signed and nothing is sent",
                f"export {variable}=$(python3 -c 'import secrets; "
                "print(secrets.token_urlsafe(32))') where outreach runs",
            )
        )
    if not findings:
        findings.append(
            Finding(
                subject,
                "tracking",
                "ok",
                f"{kinds} tracked at {tracking.domain} ({host} resolves; a fetch within "
                f"{tracking.machine_seconds} s of the send is a machine's)",
            )
        )
    return findings
