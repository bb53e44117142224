"""The DNS checks of ``outreach doctor``: what a finding is, and MX and SPF for one sending
domain (DKIM is in :mod:`outreach.dkim`, DMARC in :mod:`outreach.dmarc`).

dnspython asks the questions, through the resolver the caller made; checkdmarc parses and
counts SPF (and DMARC), so the 10-lookup limit, nested includes, redirects and the records'
grammar are not re-implemented here.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import dns.exception
import dns.name
import dns.resolver

from outreach.errors import OutreachError
from outreach.providers import Provider

Level = Literal["ok", "warning", "failure"]
LEVELS: tuple[Level, ...] = ("ok", "warning", "failure")
SPF_LOOKUP_LIMIT = 10  # RFC 7208 4.6.4: one more and receivers return permerror
BULK_RULES = "Gmail, Yahoo and Microsoft require it from bulk senders"


@dataclass(frozen=True)
class Finding:
    """One thing ``doctor`` found: where, which check, how bad, and what to do about it."""

    subject: str  # a domain, a mailbox's address, or "[sending]"
    check: str  # mx, spf, dkim, dmarc, alignment, unsubscribe, login
    level: Level
    text: str  # what was found
    fix: str | None = None  # what to do, when something should be done
    data: Mapping[str, Any] = field(default_factory=dict)  # the records behind it, for --json

    def one_line(self) -> str:
        found = self.text.rstrip(".")  # checkdmarc's messages end in a full stop of their own
        text = f"{found}. Fix: {self.fix}" if self.fix else found
        return f"{self.subject} {self.check}: {text}".replace("\n", " ")

    def as_json(self) -> dict[str, Any]:
        return {
            "subject": self.subject,
            "check": self.check,
            "level": self.level,
            "text": self.text,
            "fix": self.fix,
            **dict(self.data),
        }


def no_answer(resolver: dns.resolver.Resolver, exc: Exception) -> OutreachError:
    """DNS did not answer at all: nothing can be checked, so one line and exit 1."""
    servers = ", ".join(f"{ns}:{resolver.port}" for ns in resolver.nameservers)
    return OutreachError(
        f"no answer from the DNS server {servers} ({exc})",
        field="--nameserver",
        hint="check the network, or name a resolver that answers",
    )


def forget_cached_answers() -> None:
    """checkdmarc keeps answers in a process-wide cache; a check must see DNS as it is now
    (the operator just fixed a record), so each run starts without it."""
    from checkdmarc import utils

    utils.DNS_CACHE.clear()


def resolves(host: str, resolver: dns.resolver.Resolver) -> bool:
    """Whether ``host`` has an IPv4 or IPv6 address (through CNAMEs)."""
    for rdtype in ("A", "AAAA"):
        try:
            resolver.resolve(host, rdtype)
            return True
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer, dns.resolver.NoNameservers):
            continue
        except dns.exception.Timeout as exc:
            raise no_answer(resolver, exc) from None
    return False


def check_mx(
    domain: str, resolver: dns.resolver.Resolver
) -> tuple[list[Finding], list[str] | None]:
    """The MX finding and the MX hosts (None when the domain itself cannot be checked)."""
    example = (
        f"Microsoft 365: 0 {domain.replace('.', '-')}.mail.protection.outlook.com; "
        "Google: 1 smtp.google.com"
    )
    try:
        answer = resolver.resolve(domain, "MX")
    except dns.resolver.NXDOMAIN:
        return [
            fail(
                domain,
                "mx",
                f"{domain} does not exist in DNS",
                "check the mailboxes' email addresses, or register the domain",
            )
        ], None
    except dns.resolver.NoNameservers as exc:
        return [
            fail(
                domain,
                "mx",
                f"the DNS servers of {domain} fail ({exc})",
                "check the domain's name servers (NS) at your registrar",
            )
        ], None
    except dns.resolver.NoAnswer:
        return [
            fail(
                domain,
                "mx",
                f"no MX record: replies and bounces to @{domain} cannot be delivered",
                f"add MX at {domain} pointing at your mail host ({example})",
            )
        ], []
    except dns.exception.Timeout as exc:
        raise no_answer(resolver, exc) from None
    records = sorted((r.preference, r.exchange) for r in answer)  # type: ignore[attr-defined]
    if any(exchange == dns.name.root for _, exchange in records):
        return [
            fail(
                domain,
                "mx",
                f"{domain} publishes a null MX (RFC 7505): it accepts no mail, "
                "so replies cannot reach the mailboxes",
                f"replace it with your mail host's MX ({example})",
            )
        ], []
    hosts = [exchange.to_text(omit_final_dot=True) for _, exchange in records]
    shown = ", ".join(f"{pref} {host}" for (pref, _), host in zip(records, hosts, strict=True))
    data = {
        "mx": [
            {"preference": pref, "host": host}
            for (pref, _), host in zip(records, hosts, strict=True)
        ]
    }
    dead = [host for host in hosts if not resolves(host, resolver)]
    if dead:
        level: Level = "failure" if len(dead) == len(hosts) else "warning"
        return [
            Finding(
                domain,
                "mx",
                level,
                f"MX {shown}: {', '.join(dead)} {'has' if len(dead) == 1 else 'have'} no address",
                "point the MX at a host that exists, or add its A/AAAA record",
                data,
            )
        ], hosts
    return [Finding(domain, "mx", "ok", f"MX {shown}", data=data)], hosts


def check_spf(
    domain: str, providers: list[Provider], resolver: dns.resolver.Resolver
) -> tuple[list[Finding], bool]:
    """The SPF findings, and whether SPF can pass for the mail outreach sends."""
    from checkdmarc import spf

    needed = [p for p in providers if p.spf_include]
    includes = " ".join(f"include:{p.spf_include}" for p in needed)
    suggestion = f"v=spf1 {includes or 'include:YOUR-PROVIDERS-SPF-DOMAIN'} -all"
    options = {"resolver": resolver, "timeout": resolver.lifetime}
    try:
        record = spf.query_spf_record(domain, **options)["record"]
    except spf.SPFRecordNotFound as exc:
        if isinstance(exc.error, dns.exception.Timeout):
            raise no_answer(resolver, exc.error) from None
        return [fail(domain, "spf", "no SPF record", f"add TXT at {domain}: {suggestion}")], False
    except spf.MultipleSPFRTXTRecords as exc:
        # Two v=spf1 records are a permerror: receivers ignore both.
        return [
            fail(domain, "spf", f"SPF: {exc}", f"keep one TXT record at {domain}: {suggestion}")
        ], False
    except spf.SPFError as exc:
        return [fail(domain, "spf", f"SPF: {exc}", f"publish at {domain}: {suggestion}")], False
    try:
        parsed = spf.parse_spf_record(record, domain, ignore_too_many_lookups=True, **options)
    except spf.SPFError as exc:
        return [
            fail(
                domain,
                "spf",
                f"the SPF record '{record}' is not valid: {exc}",
                f"publish at {domain}: {suggestion}",
            )
        ], False
    lookups = parsed["dns_lookups"]
    data = {"record": record, "dns_lookups": lookups, "includes": sorted(_includes(parsed))}
    if lookups > SPF_LOOKUP_LIMIT:
        return [
            Finding(
                domain,
                "spf",
                "failure",
                f"SPF needs {lookups} DNS lookups, over the limit of {SPF_LOOKUP_LIMIT}: "
                "receivers answer permerror and SPF fails for every message",
                "remove the includes of services you no longer send through, or replace "
                "some with their ip4:/ip6: ranges",
                data,
            )
        ], False
    if parsed.get("error"):
        return [
            Finding(
                domain,
                "spf",
                "failure",
                f"SPF: {parsed['error']}",
                f"publish at {domain}: {suggestion}",
                data,
            )
        ], False
    findings: list[Finding] = []
    missing = [p for p in needed if p.spf_include not in data["includes"]]
    if missing:
        names = " and ".join(p.name for p in missing)
        fixed = _with_includes(record, [str(p.spf_include) for p in missing])
        findings.append(
            Finding(
                domain,
                "spf",
                "failure",
                f"SPF '{record}' does not authorise {names}, so its mail fails SPF",
                f"publish at {domain}: {fixed}",
                data,
            )
        )
    qualifier = parsed["parsed"].get("all")
    if qualifier == "pass":
        findings.append(
            Finding(
                domain,
                "spf",
                "failure",
                f"SPF '{record}' ends in +all: any server on the internet may send as {domain}",
                "end it in -all (or ~all)",
                data,
            )
        )
    elif qualifier in (None, "neutral") and not parsed["parsed"].get("redirect"):
        findings.append(
            Finding(
                domain,
                "spf",
                "warning",
                f"SPF '{record}' has no -all or ~all: mail "
                "from any other server is neutral, not suspect",
                "end it in -all",
                data,
            )
        )
    findings += [
        Finding(domain, "spf", "warning", f"SPF: {w}", data=data)
        for w in parsed.get("warnings", [])
    ]
    if not findings:
        authorised = f", authorises {' and '.join(p.name for p in needed)}" if needed else ""
        findings.append(
            Finding(
                domain,
                "spf",
                "ok",
                f"{record} ({lookups} of {SPF_LOOKUP_LIMIT} DNS lookups{authorised})",
                data=data,
            )
        )
    return findings, not any(f.level == "failure" for f in findings)


def _includes(parsed: Any) -> set[str]:
    """Every domain an SPF record reaches by include: or redirect=, at any depth."""
    found: set[str] = set()
    if isinstance(parsed, dict):
        if parsed.get("mechanism") == "include" and parsed.get("value"):
            found.add(str(parsed["value"]).lower().rstrip("."))
        redirect = parsed.get("redirect")
        if isinstance(redirect, dict) and redirect.get("domain"):
            found.add(str(redirect["domain"]).lower().rstrip("."))
        for value in parsed.values():
            found |= _includes(value)
    elif isinstance(parsed, list):
        for item in parsed:
            found |= _includes(item)
    return found


def _with_includes(record: str, includes: list[str]) -> str:
    """``record`` with ``include:`` terms added before its ``all`` (or redirect)."""
    terms = record.split()
    at = next(
        (
            i
            for i, term in enumerate(terms)
            if term.lower().lstrip("+-~?") == "all" or term.lower().startswith("redirect=")
        ),
        len(terms),
    )
    return " ".join([*terms[:at], *(f"include:{name}" for name in includes), *terms[at:]])


def fail(domain: str, check: str, text: str, fix: str) -> Finding:
    return Finding(domain, check, "failure", text, fix)


def unique(items: Iterable[Any]) -> list[Any]:
    seen: list[Any] = []
    for item in items:
        if item is not None and item not in seen:
            seen.append(item)
    return seen
