"""DKIM for ``outreach doctor``: is there a usable key where the mail is signed? At the
mailbox's ``dkim_selector``, else at the provider's usual selectors (``selector1`` and
``selector2`` for Microsoft 365, ``google`` for Google Workspace)."""

from __future__ import annotations

import base64
import binascii

import dns.exception
import dns.resolver

from outreach.config import Mailbox
from outreach.dnsauth import Finding, no_answer, unique
from outreach.providers import Provider


def check_dkim(
    domain: str, boxes: list[Mailbox], providers: list[Provider], resolver: dns.resolver.Resolver
) -> tuple[list[Finding], list[str] | None]:
    """The DKIM findings, and the selectors with a usable key (each signs with d=domain);
    None when no selector is known, so nothing could be checked."""
    configured = unique([b.dkim_selector for b in boxes if b.dkim_selector])
    selectors = configured or unique([s for p in providers for s in p.dkim_selectors])
    howto = "; ".join(p.dkim_howto.format(domain=domain) for p in providers)
    if not selectors:
        hosts = ", ".join(sorted({b.smtp_host for b in boxes}))
        return [
            Finding(
                domain,
                "dkim",
                "warning",
                f"not checked: no dkim_selector is set, and which selectors {hosts} signs "
                "with is not known",
                f'set dkim_selector = "SELECTOR" on the mailboxes of '
                f"{domain} (the s= tag of the DKIM-Signature header of a message you "
                f"sent){'; ' + howto if howto else ''}",
            )
        ], None
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
        return "nothing published", ""
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
