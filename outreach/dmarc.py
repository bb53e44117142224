"""DMARC for ``outreach doctor``: the record (parsed by checkdmarc), its policy and reports,
and whether SPF and DKIM pass aligned with From, which is what DMARC asks of a message."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import dns.resolver

from outreach.dnsauth import BULK_RULES, Finding, fail
from outreach.providers import Provider


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
            fail(
                domain,
                "dmarc",
                f"no DMARC record ({BULK_RULES})",
                f"add TXT at _dmarc.{domain}: {suggestion}",
            )
        ], None
    except dmarc.DMARCError as exc:
        return [
            fail(
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
            fail(
                domain,
                "dmarc",
                f"the DMARC record '{record}' at _dmarc.{location} is not valid: {exc}",
                f"publish at _dmarc.{location}: {suggestion}",
            )
        ], None
    tags = {name: tag["value"] for name, tag in parsed["tags"].items()}
    # Mail from a subdomain without a record of its own follows the parent's sp= (its p=
    # when there is no sp=).
    inherited = location != domain
    tag = "sp" if inherited and parsed["tags"].get("sp", {}).get("explicit") else "p"
    policy = tags[tag]
    data = {
        "record": record,
        "location": f"_dmarc.{location}",
        "policy": policy,
        "adkim": tags.get("adkim"),
        "aspf": tags.get("aspf"),
    }
    at = f"_dmarc.{location}" + (f" (which {domain} follows)" if inherited else "")
    findings: list[Finding] = []
    if policy == "none":
        stronger = re.sub(rf"(?i)\b{tag}\s*=\s*none", f"{tag}=quarantine", record, count=1)
        findings.append(
            Finding(
                domain,
                "dmarc",
                "warning",
                f"policy {tag}=none at {at}: receivers act on no "
                f"mail that fails DMARC, so {domain} can still be spoofed",
                f"once the rua reports show all your mail passing, publish at _dmarc.{location}: "
                f"{stronger}",
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
                f"publish at _dmarc.{location}: {record.rstrip('; ')}; "
                f"rua=mailto:dmarc-reports@{location}",
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
                f"pct={pct}: {tag}={policy} applies to only {pct} % of failing mail",
                f"drop pct= from the record at _dmarc.{location}",
                data,
            )
        )
    if not findings:
        findings.append(Finding(domain, "dmarc", "ok", f"{tag}={policy} at {at}", data=data))
    return findings, tags


def check_alignment(
    domain: str,
    tags: Mapping[str, Any],
    spf_passes: bool,
    dkim_keys: list[str] | None,
    senders: list[Provider],
) -> Finding:
    """Whether SPF and DKIM can pass *aligned* with From: @domain, which is what DMARC asks.

    outreach's envelope sender (MAIL FROM) is the mailbox's own address, so SPF is checked
    for the From domain itself and aligns even under aspf=s, unless the provider replaces the
    envelope sender with its own. A key at ``selector._domainkey.domain`` signs with
    ``d=domain``, which aligns even under adkim=s. ``dkim_keys`` is None when DKIM could not
    be checked (no selector known).
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
    if spf_aligned and dkim_keys is None:
        return Finding(
            domain,
            "alignment",
            "ok",
            f"SPF aligns with From: @{domain} ({modes}); DKIM not checked (see dkim)",
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
