"""The DNS half of ``outreach doctor``: MX, SPF, DKIM, DMARC and their alignment for one
sending domain, each finding one line with the record to publish.

dnspython asks the questions (through the resolver the caller made); checkdmarc parses and
counts SPF and DMARC, so the 10-lookup limit, nested includes, redirects and DMARC's tag
grammar are not re-implemented here.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import dns.exception
import dns.name
import dns.resolver

from outreach.config import Mailbox
from outreach.errors import OutreachError
from outreach.providers import Provider, provider_of_mx, provider_of_smtp_host

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


def check_domain(
    domain: str, boxes: list[Mailbox], resolver: dns.resolver.Resolver
) -> list[Finding]:
    """Every DNS finding for one sending domain and the mailboxes that send from it."""
    mx, mx_hosts = check_mx(domain, resolver)
    if mx_hosts is None:  # the domain does not exist or its servers fail: nothing else can
        return mx
    senders = [p for p in (provider_of_smtp_host(b.smtp_host) for b in boxes) if p]
    providers = _unique([*senders, *(provider_of_mx(host) for host in mx_hosts)])
    spf, spf_passes = check_spf(domain, providers, resolver)
    dkim, dkim_keys = check_dkim(domain, boxes, providers, resolver)
    dmarc, tags = check_dmarc(domain, resolver)
    findings = [*mx, *spf, *dkim, *dmarc]
    if tags is not None:
        findings.append(check_alignment(domain, tags, spf_passes, dkim_keys, senders))
    return findings


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
            _fail(
                domain,
                "mx",
                f"{domain} does not exist in DNS",
                "check the mailboxes' email addresses, or register the domain",
            )
        ], None
    except dns.resolver.NoNameservers as exc:
        return [
            _fail(
                domain,
                "mx",
                f"the DNS servers of {domain} fail ({exc})",
                "check the domain's name servers (NS) at your registrar",
            )
        ], None
    except dns.resolver.NoAnswer:
        return [
            _fail(
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
            _fail(
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
                f"MX {shown}: {', '.join(dead)} has no address",
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
        return [_fail(domain, "spf", "no SPF record", f"add TXT at {domain}: {suggestion}")], False
    except spf.SPFError as exc:
        return [
            _fail(domain, "spf", f"SPF: {exc}", f"keep one TXT record at {domain}: {suggestion}")
        ], False
    try:
        parsed = spf.parse_spf_record(record, domain, ignore_too_many_lookups=True, **options)
    except spf.SPFError as exc:
        return [
            _fail(
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


def check_dkim(
    domain: str, boxes: list[Mailbox], providers: list[Provider], resolver: dns.resolver.Resolver
) -> tuple[list[Finding], list[str]]:
    """The DKIM findings, and the selectors with a usable key (each signs with d=domain)."""
    configured = _unique([b.dkim_selector for b in boxes if b.dkim_selector])
    selectors = configured or _unique([s for p in providers for s in p.dkim_selectors])
    howto = "; ".join(p.dkim_howto.format(domain=domain) for p in providers)
    if not selectors:
        hosts = ", ".join(sorted({b.smtp_host for b in boxes}))
        return [
            Finding(
                domain,
                "dkim",
                "warning",
                f"not checked: no dkim_selector is set and the provider of {hosts} has no "
                "fixed selector",
                f'set dkim_selector = "SELECTOR" on the mailboxes of '
                f"{domain} (the s= tag of the DKIM-Signature header of a message you "
                f"sent){'; ' + howto if howto else ''}",
            )
        ], []
    keys: dict[str, str] = {}
    problems: dict[str, str] = {}
    for selector in selectors:
        problem, description = _dkim_key(f"{selector}._domainkey.{domain}", resolver)
        if problem is None:
            keys[selector] = description
        else:
            problems[selector] = problem
    data = {"selectors": {s: keys.get(s) or problems[s] for s in selectors}}
    generic = "v=DKIM1; k=rsa; p=THE-PUBLIC-KEY-YOUR-MAIL-SERVER-SIGNS-WITH"
    rotating = any(p.dkim_rotates for p in providers) and not configured
    # A configured selector is one the mail is signed with: it must have a key. Of a
    # provider's usual selectors one is enough, unless the provider rotates through all.
    required = selectors if configured or rotating else []

    def fix_at(selector: str) -> str:
        # A selector of our own config is where the mail server signs: publish its key
        # there. The provider's usual ones come from the provider's admin pages.
        if configured or not howto:
            return f"add TXT at {selector}._domainkey.{domain}: {generic}"
        return howto

    findings: list[Finding] = []
    if not keys:
        names = " or ".join(f"{s}._domainkey.{domain}" for s in selectors)
        why = "; ".join(dict.fromkeys(problems.values()))
        findings.append(
            Finding(
                domain,
                "dkim",
                "failure",
                f"no usable DKIM key at {names} ({why})",
                fix_at(selectors[0]),
                data,
            )
        )
    rotators = " and ".join(p.name for p in providers if p.dkim_rotates)
    for selector, problem in problems.items():
        if keys and selector in required:
            name = f"{selector}._domainkey.{domain}"
            text = f"{name}: {problem}"
            if not configured:
                text += f" ({rotators} rotates keys between its selectors)"
            findings.append(
                Finding(
                    domain,
                    "dkim",
                    "failure" if configured else "warning",
                    text,
                    fix_at(selector),
                    data,
                )
            )
    for selector, description in keys.items():
        if description.startswith("RSA 1024"):
            findings.append(
                Finding(
                    domain,
                    "dkim",
                    "warning",
                    f"{selector}._domainkey.{domain} is an RSA "
                    "1024-bit key: still accepted, but 2048 bits is what Google and "
                    "Microsoft recommend",
                    "rotate the key to 2048 bits",
                    data,
                )
            )
    if keys and not any(f.level == "failure" for f in findings):
        shown = ", ".join(f"{s}._domainkey.{domain} ({d})" for s, d in keys.items())
        findings.append(Finding(domain, "dkim", "ok", f"key at {shown}", data=data))
    return findings, list(keys) if not any(f.level == "failure" for f in findings) else []


def _dkim_key(name: str, resolver: dns.resolver.Resolver) -> tuple[str | None, str]:
    try:
        answer = resolver.resolve(name, "TXT")
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return "no DKIM key published", ""
    except dns.resolver.NoNameservers as exc:
        return f"the DNS servers fail ({exc})", ""
    except dns.exception.Timeout as exc:
        raise no_answer(resolver, exc) from None
    texts = [b"".join(r.strings).decode("utf-8", "replace") for r in answer]  # type: ignore[attr-defined]
    keys = [t for t in texts if "p=" in t.replace(" ", "")]
    if not keys:
        return "a TXT record without a key (p=)", ""
    return parse_dkim_key(keys[0])


def parse_dkim_key(record: str) -> tuple[str | None, str]:
    """(problem or None, description such as ``RSA 2048``) of a DKIM key record's tag list
    (RFC 6376 3.6.1); the key itself is loaded by ``cryptography`` to know its size."""
    tags = {
        name.strip(): value.strip()
        for name, _, value in (part.partition("=") for part in record.split(";"))
        if name.strip()
    }
    if tags.get("v", "DKIM1") != "DKIM1":
        return f"v={tags['v']} is not DKIM1", ""
    key = "".join(tags.get("p", "").split())
    if not key:
        return "the key is revoked (p= is empty)", ""
    try:
        raw = base64.b64decode(key, validate=True)
    except (binascii.Error, ValueError):
        return "p= is not base64", ""
    if tags.get("k", "rsa").lower() == "ed25519":
        return (None, "Ed25519") if len(raw) == 32 else ("p= is not an Ed25519 key", "")
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.hazmat.primitives.serialization import load_der_public_key

    try:
        public = load_der_public_key(raw)
    except ValueError:
        return "p= is not an RSA public key", ""
    if not isinstance(public, rsa.RSAPublicKey):
        return "p= is not an RSA public key", ""
    if public.key_size < 1024:  # RFC 8301: verifiers must not accept these
        return f"the RSA key has {public.key_size} bits; receivers ignore keys under 1024", ""
    return None, f"RSA {public.key_size}"


def check_dmarc(
    domain: str, resolver: dns.resolver.Resolver
) -> tuple[list[Finding], dict[str, Any] | None]:
    """The DMARC findings, and the record's tags (None when there is no usable record)."""
    from checkdmarc import dmarc

    report_to = f"mailto:dmarc-reports@{domain}"
    suggestion = f"v=DMARC1; p=none; rua={report_to}"
    options = {"resolver": resolver, "timeout": resolver.lifetime}
    try:
        query = dmarc.query_dmarc_record(domain, **options)
    except dmarc.DMARCRecordNotFound:
        return [
            _fail(
                domain,
                "dmarc",
                f"no DMARC record ({BULK_RULES})",
                f"add TXT at _dmarc.{domain}: {suggestion}",
            )
        ], None
    except dmarc.DMARCError as exc:
        return [
            _fail(
                domain,
                "dmarc",
                f"DMARC: {exc}",
                f"publish one TXT record at _dmarc.{domain}: {suggestion}",
            )
        ], None
    record, location = query["record"], query["location"]
    try:
        parsed = dmarc.parse_dmarc_record(record, location, **options)
    except dmarc.DMARCError as exc:
        return [
            _fail(
                domain,
                "dmarc",
                f"the DMARC record '{record}' at _dmarc.{location} is not valid: {exc}",
                f"publish at _dmarc.{location}: {suggestion}",
            )
        ], None
    tags = {name: tag["value"] for name, tag in parsed["tags"].items()}
    # Mail from a subdomain that has no record of its own follows the parent's sp=.
    policy = tags["p"] if location == domain else tags.get("sp", tags["p"])
    data = {
        "record": record,
        "location": f"_dmarc.{location}",
        "policy": policy,
        "adkim": tags.get("adkim"),
        "aspf": tags.get("aspf"),
    }
    at = f"_dmarc.{location}"
    findings: list[Finding] = []
    if policy == "none":
        stronger = re.sub(r"(?i)\bp\s*=\s*none", "p=quarantine", record, count=1)
        findings.append(
            Finding(
                domain,
                "dmarc",
                "warning",
                f"policy p=none at {at}: receivers act on no "
                f"mail that fails DMARC, so {domain} can still be spoofed",
                f"once the rua reports show all your mail passing, publish at {at}: {stronger}",
                data,
            )
        )
    if not tags.get("rua"):
        findings.append(
            Finding(
                domain,
                "dmarc",
                "warning",
                f"'{record}' at {at} has no rua=: no reports "
                "tell you what fails or who sends as you",
                f"publish at {at}: {record.rstrip('; ')}; rua={report_to}",
                data,
            )
        )
    pct = int(tags.get("pct", 100))
    if policy != "none" and pct < 100:
        findings.append(
            Finding(
                domain,
                "dmarc",
                "warning",
                f"pct={pct}: p={policy} applies to only {pct} % of failing mail",
                f"drop pct= from the record at {at}",
                data,
            )
        )
    if not findings:
        findings.append(Finding(domain, "dmarc", "ok", f"p={policy} at {at}", data=data))
    return findings, tags


def check_alignment(
    domain: str,
    tags: Mapping[str, Any],
    spf_passes: bool,
    dkim_keys: list[str],
    senders: list[Provider],
) -> Finding:
    """Whether SPF and DKIM can pass *aligned* with From: @domain, which is what DMARC asks.

    outreach's envelope sender (MAIL FROM) is the mailbox's own address, so SPF is checked
    for the From domain itself and aligns even under aspf=s, unless the provider replaces the
    envelope sender with its own. A key at ``selector._domainkey.domain`` signs with
    ``d=domain``, which aligns even under adkim=s.
    """
    modes = f"aspf={tags.get('aspf', 'r')}, adkim={tags.get('adkim', 'r')}"
    own = [p.name for p in senders if p.own_envelope]
    spf_aligned = spf_passes and not own
    dkim_aligned = bool(dkim_keys)
    data = {"spf_aligned": spf_aligned, "dkim_aligned": dkim_aligned}
    if spf_aligned and dkim_aligned:
        return Finding(
            domain,
            "alignment",
            "ok",
            f"SPF and DKIM both align with From: @{domain} ({modes})",
            data=data,
        )
    if dkim_aligned:
        why = f"{' and '.join(own)} sends with its own envelope sender" if own else "see spf"
        return Finding(
            domain,
            "alignment",
            "ok",
            f"DKIM aligns with From: @{domain} ({modes}); SPF does not ({why})",
            data=data,
        )
    if spf_aligned:
        return Finding(
            domain,
            "alignment",
            "warning",
            f"only SPF aligns with From: @{domain} "
            f"({modes}): a forwarded message fails SPF and so DMARC",
            "publish the DKIM key (see dkim)",
            data,
        )
    return Finding(
        domain,
        "alignment",
        "failure",
        f"neither SPF nor DKIM aligns with From: @{domain}, so every message fails DMARC",
        "fix spf and dkim above",
        data,
    )


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


def _fail(domain: str, check: str, text: str, fix: str) -> Finding:
    return Finding(domain, check, "failure", text, fix)


def _unique(items: Iterable[Any]) -> list[Any]:
    seen: list[Any] = []
    for item in items:
        if item is not None and item not in seen:
            seen.append(item)
    return seen
