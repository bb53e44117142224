"""`outreach doctor` through the CLI, against a real DNS server on loopback (dnslib in the test
process): each record a newcomer gets wrong is one line that says what to publish."""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import Result
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from outreach.config import Mailbox
from outreach.dkim import parse_dkim_key
from tests.conftest import Cli, edit_config
from tests.dns_server import LoopbackDns, Zone

DOMAIN = "northwind.example"  # the starter's mailbox: sanna.lehto@northwind.example
SECRET = "a-signing-secret-of-32-characters"
MARKS = ("ok      ", "warning ", "FAIL    ")


def dkim_record(bits: int = 2048) -> str:
    if bits >= 1024:
        public = rsa.generate_private_key(public_exponent=65537, key_size=bits).public_key()
    else:  # cryptography makes no key this weak, but a record can still carry one
        public = rsa.RSAPublicNumbers(65537, (1 << (bits - 1)) | 0xF00D).public_key()
    der = public.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return f"v=DKIM1; k=rsa; p={base64.b64encode(der).decode()}"


@pytest.fixture(scope="module")
def dkim_2048() -> str:
    return dkim_record(2048)


def microsoft_365(zone: Zone, dkim: str) -> None:
    """A domain set up the way Microsoft 365's admin pages ask for."""
    tenant = "northwind.onmicrosoft.com"
    mx = "northwind-example.mail.protection.outlook.com"
    zone.mx(DOMAIN, mx, 0)
    zone.a(mx, "52.101.68.5")
    zone.txt(DOMAIN, "v=spf1 include:spf.protection.outlook.com -all")
    zone.txt("spf.protection.outlook.com", "v=spf1 ip4:40.92.0.0/15 ip4:52.100.0.0/15 -all")
    for selector in ("selector1", "selector2"):
        target = f"{selector}-northwind-example._domainkey.{tenant}"
        zone.cname(f"{selector}._domainkey.{DOMAIN}", target)
        zone.txt(target, dkim)
    zone.txt(f"_dmarc.{DOMAIN}", f"v=DMARC1; p=quarantine; rua=mailto:dmarc@{DOMAIN}")
    zone.a(f"outreach.{DOMAIN}", "198.51.100.7")


@pytest.fixture
def dns() -> Iterator[LoopbackDns]:
    with LoopbackDns() as server:
        yield server


@pytest.fixture
def ms365(
    dns: LoopbackDns, run: Cli, workspace_dir: Path, dkim_2048: str, monkeypatch: pytest.MonkeyPatch
) -> LoopbackDns:
    """The starter workspace sending through Microsoft 365, with one-click unsubscribe served
    by `outreach run`, and a domain whose records are all right."""
    edit_config(
        workspace_dir / "outreach.toml",
        smtp_host="smtp.office365.com",
        smtp_port=587,
        smtp_security="starttls",
        unsubscribe_url=f"https://outreach.{DOMAIN}/u",
        enabled=True,
    )
    monkeypatch.setenv("OUTREACH_SECRET", SECRET)
    microsoft_365(dns.zone, dkim_2048)
    return dns


def doctor(run: Cli, dns: LoopbackDns, *args: str) -> Result:
    """`outreach doctor` against the loopback DNS server; DNS only, since the mailboxes here
    name real providers' SMTP hosts that a test cannot log in to."""
    return run("doctor", "--nameserver", dns.nameserver, "--timeout", "2", "--no-login", *args)


def lines(result: Result, mark: str) -> list[str]:
    """The finding lines of one level ("ok", "warning" or "FAIL")."""
    return [line for line in result.stdout.splitlines() if line.split(" ", 1)[0] == mark]


def assert_one_line_per_finding(result: Result) -> None:
    *findings, summary = result.stdout.splitlines() or [""]
    assert findings, result.output
    for line in findings:
        assert line.startswith(MARKS), line
    assert "Traceback" not in result.output


def set_mailbox(config: Path, **settings: str) -> None:
    """Add ``key = "value"`` lines to the (first) [[mailboxes]] table."""
    text = config.read_text(encoding="utf-8")
    added = "".join(f'{key} = "{value}"\n' for key, value in settings.items())
    config.write_text(text.replace("[[mailboxes]]\n", "[[mailboxes]]\n" + added, 1), "utf-8")


def test_a_domain_set_up_right_passes_every_check(run: Cli, ms365: LoopbackDns) -> None:
    result = doctor(run, ms365)

    assert result.exit_code == 0, result.output
    assert_one_line_per_finding(result)
    assert lines(result, "warning") == lines(result, "FAIL") == []
    checks = [line.split()[2] for line in lines(result, "ok")]
    assert checks == ["mx:", "spf:", "dkim:", "dmarc:", "alignment:", "unsubscribe:"]
    out = result.stdout
    assert f"{DOMAIN} mx: MX 0 northwind-example.mail.protection.outlook.com" in out
    assert "(1 of 10 DNS lookups, authorises Microsoft 365)" in out
    assert f"selector1._domainkey.{DOMAIN} (RSA 2048), selector2._domainkey.{DOMAIN}" in out
    assert f"p=quarantine at _dmarc.{DOMAIN}" in out
    assert "SPF and DKIM both align" in out
    assert result.stdout.splitlines()[-1] == "doctor: 0 failures, 0 warnings, 6 ok"
    # It really asked the server on loopback, CNAMEs and includes followed.
    assert (f"selector1._domainkey.{DOMAIN}", "TXT") in ms365.questions
    assert ("spf.protection.outlook.com", "TXT") in ms365.questions


def test_a_starter_domain_that_does_not_exist_is_one_failure(run: Cli, dns: LoopbackDns) -> None:
    result = doctor(run, dns)

    assert result.exit_code == 1
    assert lines(result, "FAIL") == [
        f"FAIL     {DOMAIN} mx: {DOMAIN} does not exist in DNS. Fix: check the mailboxes' "
        "email addresses, or register the domain"
    ]
    # The starter has only unsubscribe_mailto: a warning, not a failure.
    assert len(lines(result, "warning")) == 1
    assert "only mailto:unsubscribe@northwind.example" in lines(result, "warning")[0]
    assert result.stderr.strip() == (
        "doctor: 1 failure, 1 warning, 0 ok: fix the FAIL lines, then run it again"
    )


def test_missing_spf_fails_with_the_record_to_add(run: Cli, ms365: LoopbackDns) -> None:
    ms365.zone.remove(DOMAIN, "TXT")

    result = doctor(run, ms365)

    assert result.exit_code == 1
    assert_one_line_per_finding(result)
    assert lines(result, "FAIL") == [
        f"FAIL     {DOMAIN} spf: no SPF record. Fix: add TXT at {DOMAIN}: "
        "v=spf1 include:spf.protection.outlook.com -all"
    ]
    # DKIM still aligns, so DMARC can pass: alignment is not a second failure.
    assert "DKIM aligns with From" in result.stdout


def test_spf_over_ten_lookups_fails_with_the_count(run: Cli, ms365: LoopbackDns) -> None:
    zone = ms365.zone
    zone.remove(DOMAIN, "TXT")
    for i in range(10):
        zone.txt(f"spf{i}.vendors.example", f"v=spf1 ip4:192.0.2.{i} -all")
    vendors = " ".join(f"include:spf{i}.vendors.example" for i in range(10))
    zone.txt(DOMAIN, f"v=spf1 include:spf.protection.outlook.com {vendors} -all")

    result = doctor(run, ms365)

    assert result.exit_code == 1
    [line] = lines(result, "FAIL")
    assert line.startswith(
        f"FAIL     {DOMAIN} spf: SPF needs 11 DNS lookups, over the limit of 10: receivers "
        "answer permerror"
    )
    assert "Fix: remove the includes of services you no longer send through" in line


def test_spf_without_the_smtp_provider_fails_with_the_corrected_record(
    run: Cli, ms365: LoopbackDns
) -> None:
    zone = ms365.zone
    zone.remove(DOMAIN, "TXT")
    zone.txt(DOMAIN, "v=spf1 include:mailer.vendors.example ~all")
    zone.txt("mailer.vendors.example", "v=spf1 ip4:192.0.2.10 -all")

    result = doctor(run, ms365)

    assert result.exit_code == 1
    assert lines(result, "FAIL") == [
        f"FAIL     {DOMAIN} spf: SPF 'v=spf1 include:mailer.vendors.example ~all' does not "
        f"authorise Microsoft 365, so its mail fails SPF. Fix: publish at {DOMAIN}: "
        "v=spf1 include:mailer.vendors.example include:spf.protection.outlook.com ~all"
    ]


def test_spf_reaching_the_provider_through_a_nested_include_passes(
    run: Cli, ms365: LoopbackDns
) -> None:
    zone = ms365.zone
    zone.remove(DOMAIN, "TXT")
    zone.txt(DOMAIN, f"v=spf1 include:_spf.{DOMAIN} -all")
    zone.txt(f"_spf.{DOMAIN}", "v=spf1 include:spf.protection.outlook.com -all")

    result = doctor(run, ms365)

    assert result.exit_code == 0, result.output
    assert "(2 of 10 DNS lookups, authorises Microsoft 365)" in result.stdout


def test_missing_dkim_fails_with_where_to_turn_it_on(run: Cli, ms365: LoopbackDns) -> None:
    for selector in ("selector1", "selector2"):
        ms365.zone.remove(f"{selector}._domainkey.{DOMAIN}")

    result = doctor(run, ms365)

    assert result.exit_code == 1
    assert_one_line_per_finding(result)
    [line] = lines(result, "FAIL")
    assert line.startswith(
        f"FAIL     {DOMAIN} dkim: no usable DKIM key at selector1._domainkey.{DOMAIN} or "
        f"selector2._domainkey.{DOMAIN} (nothing published). Fix: turn on DKIM for "
        f"{DOMAIN} in Microsoft Defender"
    )
    # Without DKIM only SPF aligns: forwarding breaks DMARC, a warning of its own.
    [warning] = lines(result, "warning")
    assert f"{DOMAIN} alignment: only SPF aligns" in warning


def test_one_of_microsofts_two_selectors_missing_is_a_warning(run: Cli, ms365: LoopbackDns) -> None:
    ms365.zone.remove(f"selector2._domainkey.{DOMAIN}")

    result = doctor(run, ms365)

    assert result.exit_code == 0, result.output
    [warning] = lines(result, "warning")
    assert f"selector2._domainkey.{DOMAIN}: nothing published (Microsoft 365 rotates" in (warning)


def test_the_configured_dkim_selector_is_where_the_key_is_looked_for(
    run: Cli, ms365: LoopbackDns, workspace_dir: Path, dkim_2048: str
) -> None:
    set_mailbox(workspace_dir / "outreach.toml", dkim_selector="mail2027")

    missing = doctor(run, ms365)
    ms365.zone.txt(f"mail2027._domainkey.{DOMAIN}", dkim_2048)
    found = doctor(run, ms365)

    assert missing.exit_code == 1
    [line] = lines(missing, "FAIL")
    assert f"no usable DKIM key at mail2027._domainkey.{DOMAIN}" in line
    assert found.exit_code == 0, found.output
    assert f"key at mail2027._domainkey.{DOMAIN} (RSA 2048)" in found.stdout
    assert "selector1" not in found.stdout


def test_a_revoked_or_short_dkim_key_fails(run: Cli, ms365: LoopbackDns) -> None:
    tenant = "northwind.onmicrosoft.com"
    for selector in ("selector1", "selector2"):
        target = f"{selector}-northwind-example._domainkey.{tenant}"
        ms365.zone.remove(target)
        ms365.zone.txt(target, "v=DKIM1; k=rsa; p=")

    result = doctor(run, ms365)

    assert result.exit_code == 1
    [line] = lines(result, "FAIL")
    assert "(the key is revoked (p= is empty))" in line
    assert parse_dkim_key(dkim_record(512))[0] == (
        "the RSA key has 512 bits; receivers ignore keys under 1024"
    )
    assert parse_dkim_key(dkim_record(1024)) == (None, "RSA 1024")


def test_dmarc_p_none_is_a_warning_with_the_next_record(run: Cli, ms365: LoopbackDns) -> None:
    ms365.zone.remove(f"_dmarc.{DOMAIN}")
    ms365.zone.txt(f"_dmarc.{DOMAIN}", f"v=DMARC1; p=none; rua=mailto:dmarc@{DOMAIN}")

    result = doctor(run, ms365)

    assert result.exit_code == 0, result.output
    assert lines(result, "warning") == [
        f"warning  {DOMAIN} dmarc: policy p=none at _dmarc.{DOMAIN}: receivers act on no mail "
        f"that fails DMARC, so {DOMAIN} can still be spoofed. Fix: once the rua reports show "
        f"all your mail passing, publish at _dmarc.{DOMAIN}: v=DMARC1; p=quarantine; "
        f"rua=mailto:dmarc@{DOMAIN}"
    ]
    assert result.stdout.splitlines()[-1] == "doctor: 0 failures, 1 warning, 5 ok"


def test_missing_dmarc_fails_with_the_record_to_add(run: Cli, ms365: LoopbackDns) -> None:
    ms365.zone.remove(f"_dmarc.{DOMAIN}")

    result = doctor(run, ms365)

    assert result.exit_code == 1
    assert lines(result, "FAIL") == [
        f"FAIL     {DOMAIN} dmarc: no DMARC record (Gmail, Yahoo and Microsoft require it from "
        f"bulk senders). Fix: add TXT at _dmarc.{DOMAIN}: v=DMARC1; p=none; "
        f"rua=mailto:dmarc-reports@{DOMAIN}"
    ]


def test_dmarc_strict_alignment_is_reported(run: Cli, ms365: LoopbackDns) -> None:
    ms365.zone.remove(f"_dmarc.{DOMAIN}")
    ms365.zone.txt(
        f"_dmarc.{DOMAIN}", f"v=DMARC1; p=reject; adkim=s; aspf=s; rua=mailto:dmarc@{DOMAIN}"
    )

    result = doctor(run, ms365)

    assert result.exit_code == 0, result.output
    assert f"ok       {DOMAIN} dmarc: p=reject at _dmarc.{DOMAIN}" in result.stdout
    assert "SPF and DKIM both align with From: @northwind.example (aspf=s, adkim=s)" in (
        result.stdout
    )


def test_an_http_unsubscribe_url_is_refused_with_its_line(
    run: Cli, ms365: LoopbackDns, workspace_dir: Path
) -> None:
    config = workspace_dir / "outreach.toml"
    edit_config(config, unsubscribe_url=f"http://outreach.{DOMAIN}/u")
    line = next(
        n
        for n, text in enumerate(config.read_text().splitlines(), 1)
        if text.startswith("unsubscribe_url")
    )

    result = doctor(run, ms365)

    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        f"{config.resolve()}:{line}: sending.unsubscribe_url: unsubscribe_url must be an "
        "https:// URL"
    ] or result.stderr.splitlines() == [
        f"{config}:{line}: sending.unsubscribe_url: unsubscribe_url must be an https:// URL"
    ]


def test_one_click_needs_its_host_in_dns_and_its_secret(
    run: Cli, ms365: LoopbackDns, monkeypatch: pytest.MonkeyPatch
) -> None:
    ms365.zone.remove(f"outreach.{DOMAIN}")
    monkeypatch.delenv("OUTREACH_SECRET")

    result = doctor(run, ms365)

    assert result.exit_code == 1
    failures = lines(result, "FAIL")
    assert len(failures) == 2
    assert failures[0].startswith(
        f"FAIL     [sending] unsubscribe: outreach.{DOMAIN} (of unsubscribe_url) has no "
        "address in DNS"
    )
    assert "$OUTREACH_SECRET does not hold a secret" in failures[1]
    assert SECRET not in result.output


def test_mailto_only_unsubscribe_is_a_warning(
    run: Cli, ms365: LoopbackDns, workspace_dir: Path
) -> None:
    config = workspace_dir / "outreach.toml"
    config.write_text(
        re.sub(r"(?m)^unsubscribe_url = .*$", "", config.read_text(encoding="utf-8")), "utf-8"
    )

    result = doctor(run, ms365)

    assert result.exit_code == 0, result.output
    [warning] = lines(result, "warning")
    assert warning.startswith(
        "warning  [sending] unsubscribe: only mailto:unsubscribe@northwind.example, no "
        "one-click link (Gmail, Yahoo and Microsoft expect one-click unsubscribe from bulk "
        'senders). Fix: set [sending] unsubscribe_url = "https://YOUR-HOST/u"'
    )


def test_json_is_one_document_with_the_records(run: Cli, ms365: LoopbackDns) -> None:
    ms365.zone.remove(f"_dmarc.{DOMAIN}")

    result = doctor(run, ms365, "--json")

    assert result.exit_code == 1
    document = json.loads(result.stdout)
    assert result.stderr == ""
    assert (document["ok"], document["failures"], document["warnings"]) == (False, 1, 0)
    assert document["domains"] == {DOMAIN: ["sanna.lehto@northwind.example"]}
    by_check = {f["check"]: f for f in document["findings"]}
    assert by_check["spf"]["record"] == "v=spf1 include:spf.protection.outlook.com -all"
    assert by_check["spf"]["dns_lookups"] == 1
    assert by_check["mx"]["mx"] == [
        {"preference": 0, "host": "northwind-example.mail.protection.outlook.com"}
    ]
    assert by_check["dmarc"]["level"] == "failure"
    assert by_check["dmarc"]["fix"].startswith(f"add TXT at _dmarc.{DOMAIN}: v=DMARC1; p=none")
    assert set(by_check) == {"mx", "spf", "dkim", "dmarc", "unsubscribe"}


def test_a_google_workspace_mailbox_is_checked_against_google(
    run: Cli,
    dns: LoopbackDns,
    workspace_dir: Path,
    dkim_2048: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    edit_config(
        workspace_dir / "outreach.toml",
        smtp_host="smtp.gmail.com",
        smtp_port=587,
        smtp_security="starttls",
    )
    zone = dns.zone
    zone.mx(DOMAIN, "smtp.google.com", 1)
    zone.a("smtp.google.com", "142.250.150.26")
    zone.txt(DOMAIN, "v=spf1 include:spf.protection.outlook.com ~all")  # left from before
    zone.txt("spf.protection.outlook.com", "v=spf1 ip4:40.92.0.0/15 -all")
    zone.txt(f"google._domainkey.{DOMAIN}", dkim_2048)
    zone.txt(f"_dmarc.{DOMAIN}", f"v=DMARC1; p=reject; rua=mailto:dmarc@{DOMAIN}")

    result = doctor(run, dns)

    assert result.exit_code == 1
    [spf] = lines(result, "FAIL")
    assert spf.endswith(
        f"does not authorise Google Workspace, so its mail fails SPF. Fix: publish at {DOMAIN}: "
        "v=spf1 include:spf.protection.outlook.com include:_spf.google.com ~all"
    )
    assert f"ok       {DOMAIN} dkim: key at google._domainkey.{DOMAIN} (RSA 2048)" in (
        result.stdout
    )


def test_a_dns_server_that_does_not_answer_is_one_line(run: Cli, workspace_dir: Path) -> None:
    with LoopbackDns() as dead:
        port = dead.port
    result = run("doctor", "--nameserver", f"127.0.0.1:{port}", "--timeout", "0.5")

    assert result.exit_code == 1
    [line] = result.stderr.splitlines()
    assert line.startswith(f"--nameserver: no answer from the DNS server 127.0.0.1:{port}")
    assert result.stdout == ""


@pytest.mark.parametrize("value", ["dns.example", "127.0.0.1:99999", "1.2.3.4:x"])
def test_a_bad_nameserver_is_a_usage_line(run: Cli, value: str) -> None:
    result = run("doctor", "--nameserver", value)

    assert result.exit_code == 1
    assert result.stderr.splitlines() == [
        f"--nameserver: '{value}' is not IP[:PORT] (e.g. 127.0.0.1:5353, 1.1.1.1 or [::1]:53)"
    ]


def test_a_bad_dkim_selector_is_a_config_error(run: Cli, workspace_dir: Path) -> None:
    set_mailbox(workspace_dir / "outreach.toml", dkim_selector="-not a selector")

    result = run("doctor", "--nameserver", "127.0.0.1:9")

    assert result.exit_code == 1
    [line] = result.stderr.splitlines()
    assert re.search(
        r"outreach\.toml:\d+: mailboxes\[0\]\.dkim_selector: '-not a selector' is "
        r"not a DKIM selector",
        line,
    ), line


def test_each_sending_domain_is_checked_once_with_its_own_lines(
    run: Cli, ms365: LoopbackDns, workspace_dir: Path
) -> None:
    config = workspace_dir / "outreach.toml"
    text = config.read_text(encoding="utf-8")
    colleagues = (
        '[[mailboxes]]\nname = "Olli Virta"\nemail = "olli.virta@northwind.example"\n'
        'smtp_host = "smtp.office365.com"\n\n'
        '[[mailboxes]]\nname = "Eva Berg"\nemail = "eva.berg@northwind-sales.example"\n'
        'smtp_host = "smtp.office365.com"\n\n'
    )
    config.write_text(text.replace("[daemon]\n", colleagues + "[daemon]\n", 1), "utf-8")

    result = doctor(run, ms365)

    assert result.exit_code == 1
    assert lines(result, "FAIL") == [
        "FAIL     northwind-sales.example mx: northwind-sales.example does not exist in DNS. "
        "Fix: check the mailboxes' email addresses, or register the domain"
    ]
    # Two mailboxes at northwind.example: one set of its lines, all ok.
    checked = [line.split()[1:3] for line in lines(result, "ok")]
    assert checked.count([DOMAIN, "spf:"]) == checked.count([DOMAIN, "dkim:"]) == 1


def test_an_international_domain_names_its_records_in_ascii(
    run: Cli, dns: LoopbackDns, workspace_dir: Path
) -> None:
    edit_config(
        workspace_dir / "outreach.toml",
        email="myyjä@kauppa-ä.example",
        smtp_host="smtp.office365.com",
        smtp_security="starttls",
    )
    ascii_name = "xn--kauppa--cxa.example"  # what DNS (and the registrar's panel) calls it
    dns.zone.mx(ascii_name, f"mx.{ascii_name}")
    dns.zone.a(f"mx.{ascii_name}", "192.0.2.25")
    dns.zone.txt(ascii_name, "v=spf1 include:spf.protection.outlook.com -all")
    dns.zone.txt("spf.protection.outlook.com", "v=spf1 ip4:40.92.0.0/15 -all")

    result = doctor(run, dns)

    assert result.exit_code == 1
    assert "ok       kauppa-ä.example spf: v=spf1 include:spf.protection.outlook.com" in (
        result.stdout
    )
    assert (
        "FAIL     kauppa-ä.example dmarc: no DMARC record (Gmail, Yahoo and Microsoft require "
        f"it from bulk senders). Fix: add TXT at _dmarc.{ascii_name}: v=DMARC1; p=none; "
        f"rua=mailto:dmarc-reports@{ascii_name}"
    ) in result.stdout


def test_an_unknown_smtp_host_without_dkim_selector_is_a_warning(
    run: Cli, ms365: LoopbackDns, workspace_dir: Path
) -> None:
    edit_config(workspace_dir / "outreach.toml", smtp_host="mail.northwind.example")

    result = doctor(run, ms365)

    # The MX still says Microsoft 365: its selectors are tried, and they have keys.
    assert result.exit_code == 0, result.output
    assert f"key at selector1._domainkey.{DOMAIN}" in result.stdout
    ms365.zone.remove(DOMAIN, "MX")
    ms365.zone.mx(DOMAIN, f"mx.{DOMAIN}")
    ms365.zone.a(f"mx.{DOMAIN}", "192.0.2.25")

    result = doctor(run, ms365)

    assert result.exit_code == 0, result.output
    [warning] = lines(result, "warning")
    assert warning == (
        f"warning  {DOMAIN} dkim: not checked: no dkim_selector is set, and which selectors "
        f'mail.northwind.example signs with is not known. Fix: set dkim_selector = "SELECTOR" '
        f"on the mailboxes of {DOMAIN} (the s= tag of the DKIM-Signature header of a message "
        "you sent)"
    )


def test_the_login_step_is_one_hook_whose_failure_fails_doctor(
    ms365: LoopbackDns, workspace_dir: Path
) -> None:
    from outreach.doctor import Finding, diagnose, make_resolver
    from outreach.workspace import Workspace

    ws = Workspace.load(workspace_dir / "outreach.toml")
    asked: list[str] = []

    def login(box: Mailbox) -> list[Finding]:
        asked.append(box.email)
        return [Finding(box.email, "login", "failure", "smtp auth: 535 5.7.139 refused")]

    resolver = make_resolver(ms365.nameserver, 2)
    without = diagnose(ws.config, resolver, {"OUTREACH_SECRET": SECRET})
    report = diagnose(ws.config, resolver, {"OUTREACH_SECRET": SECRET}, login=login)

    assert not without.failed
    assert asked == ["sanna.lehto@northwind.example"]
    assert report.failed and report.findings[-1].check == "login"
    assert report.summary() == "1 failure, 0 warnings, 6 ok"


def test_two_spf_records_fail_because_receivers_then_ignore_both(
    run: Cli, ms365: LoopbackDns
) -> None:
    ms365.zone.txt(DOMAIN, "v=spf1 include:_spf.google.com ~all")

    result = doctor(run, ms365)

    assert result.exit_code == 1
    [line] = lines(result, "FAIL")
    assert line.startswith(f"FAIL     {DOMAIN} spf: SPF: ")
    assert line.endswith(
        f"Fix: keep one TXT record at {DOMAIN}: v=spf1 include:spf.protection.outlook.com -all"
    )


def test_a_relay_with_its_own_envelope_sender_must_align_by_dkim(
    run: Cli, ms365: LoopbackDns, workspace_dir: Path, dkim_2048: str
) -> None:
    edit_config(workspace_dir / "outreach.toml", smtp_host="smtp.sendgrid.net")
    zone = ms365.zone
    zone.remove(DOMAIN, "TXT")
    zone.txt(DOMAIN, "v=spf1 include:spf.protection.outlook.com include:sendgrid.net -all")
    zone.txt("sendgrid.net", "v=spf1 ip4:167.89.0.0/17 -all")

    missing = doctor(run, ms365)
    for selector in ("s1", "s2"):
        zone.txt(f"{selector}._domainkey.{DOMAIN}", dkim_2048)
    zone.remove(f"selector1._domainkey.{DOMAIN}")
    zone.remove(f"selector2._domainkey.{DOMAIN}")
    signed = doctor(run, ms365)

    # SendGrid and the Microsoft 365 MX: both in SPF. SendGrid signs outreach's mail, so its
    # selectors are the ones that count, and with its own envelope sender only DKIM can align.
    assert "authorises SendGrid and Microsoft 365" in missing.stdout
    assert missing.exit_code == 1
    assert [line.split()[2] for line in lines(missing, "FAIL")] == ["dkim:", "alignment:"]
    assert f"no usable DKIM key at s1._domainkey.{DOMAIN} or s2._domainkey.{DOMAIN}" in (
        missing.stdout
    )
    assert "Fix: authenticate northwind.example in SendGrid" in missing.stdout
    assert signed.exit_code == 0, signed.output
    assert (
        f"key at s1._domainkey.{DOMAIN} (RSA 2048), s2._domainkey.{DOMAIN} (RSA 2048)"
        in signed.stdout
    )
    assert (
        "DKIM aligns with From: @northwind.example (aspf=r, adkim=r); SPF does not "
        "(SendGrid sends with its own envelope sender)"
    ) in signed.stdout


def test_a_subdomain_without_dmarc_follows_the_parents_sp(
    run: Cli, ms365: LoopbackDns, workspace_dir: Path
) -> None:
    sub = f"sales.{DOMAIN}"
    edit_config(workspace_dir / "outreach.toml", email=f"sanna.lehto@{sub}")
    zone = ms365.zone
    zone.mx(sub, "northwind-example.mail.protection.outlook.com", 0)
    zone.txt(sub, "v=spf1 include:spf.protection.outlook.com -all")
    for selector in ("selector1", "selector2"):
        zone.cname(f"{selector}._domainkey.{sub}", f"{selector}._domainkey.{DOMAIN}")
    zone.remove(f"_dmarc.{DOMAIN}")
    zone.txt(f"_dmarc.{DOMAIN}", f"v=DMARC1; p=reject; sp=none; rua=mailto:dmarc@{DOMAIN}")

    result = doctor(run, ms365)

    assert result.exit_code == 0, result.output
    assert lines(result, "warning") == [
        f"warning  {sub} dmarc: policy sp=none at _dmarc.{DOMAIN} (which {sub} follows): "
        f"receivers act on no mail that fails DMARC, so {sub} can still be spoofed. Fix: once "
        f"the rua reports show all your mail passing, publish at _dmarc.{DOMAIN}: v=DMARC1; "
        f"p=reject; sp=quarantine; rua=mailto:dmarc@{DOMAIN}"
    ]


def test_dmarc_without_reports_is_a_warning_with_the_rua_to_add(
    run: Cli, ms365: LoopbackDns
) -> None:
    ms365.zone.remove(f"_dmarc.{DOMAIN}")
    ms365.zone.txt(f"_dmarc.{DOMAIN}", "v=DMARC1; p=reject;")

    result = doctor(run, ms365)

    assert result.exit_code == 0, result.output
    assert lines(result, "warning") == [
        f"warning  {DOMAIN} dmarc: 'v=DMARC1; p=reject;' at _dmarc.{DOMAIN} has no rua=: no "
        "reports tell you what fails or who sends as you. Fix: publish at "
        f"_dmarc.{DOMAIN}: v=DMARC1; p=reject; rua=mailto:dmarc-reports@{DOMAIN}"
    ]


def test_mx_that_cannot_take_replies_fails(run: Cli, ms365: LoopbackDns) -> None:
    zone = ms365.zone
    zone.remove(DOMAIN, "MX")
    no_mx = doctor(run, ms365)
    zone.mx(DOMAIN, f"gone.{DOMAIN}")
    dangling = doctor(run, ms365)
    zone.remove(DOMAIN, "MX")
    zone.mx(DOMAIN, ".", 0)
    null_mx = doctor(run, ms365)

    for result in (no_mx, dangling, null_mx):
        assert result.exit_code == 1
        assert [line.split()[2] for line in lines(result, "FAIL")] == ["mx:"]
    assert f"{DOMAIN} mx: no MX record: replies and bounces to @{DOMAIN} cannot be" in (
        no_mx.stdout
    )
    assert f"{DOMAIN} mx: MX 10 gone.{DOMAIN}: gone.{DOMAIN} has no address" in dangling.stdout
    assert f"{DOMAIN} publishes a null MX (RFC 7505): it accepts no mail" in null_mx.stdout


def test_a_login_checks_steps_become_login_lines() -> None:
    from dataclasses import dataclass

    from outreach.doctor import login_findings

    @dataclass
    class Step:  # the shape of `outreach mailboxes check`'s steps
        mailbox: str
        step: str
        ok: bool | None
        detail: str

    box = "sanna.lehto@northwind.example"
    findings = login_findings(
        [
            Step(box, "smtp connect", True, "smtp.office365.com:587: ready"),
            Step(box, "smtp auth", False, "535 5.7.139 Authentication unsuccessful"),
            Step(box, "imap", None, "no imap_host: replies are not read"),
        ]
    )

    assert [(f.check, f.level) for f in findings] == [
        ("login", "ok"),
        ("login", "failure"),
        ("login", "warning"),
    ]
    assert findings[1].one_line() == (
        f"{box} login: smtp auth: 535 5.7.139 Authentication unsuccessful. Fix: fix the "
        f"mailbox's settings in outreach.toml (or its secret), then `outreach mailboxes check "
        f"{box}`"
    )


def test_the_login_step_logs_in_without_sending(
    run: Cli, dns: LoopbackDns, workspace_dir: Path
) -> None:
    """Without --no-login doctor ends with each mailbox's login steps (as `mailboxes check`
    does them): a real SMTP server is connected to, and nothing is sent."""
    from tests.smtp_servers import RecordingSMTP

    with RecordingSMTP() as smtp:
        edit_config(workspace_dir / "outreach.toml", smtp_port=smtp.port)
        result = run("doctor", "--nameserver", dns.nameserver, "--timeout", "2")
        assert smtp.received == []
    login = [line for line in result.stdout.splitlines() if " login: " in line]
    assert login, result.output
    assert any(line.startswith("ok") and "smtp" in line.lower() for line in login), login
    assert "Traceback" not in result.output


def test_tracking_off_is_not_checked(run: Cli, ms365: LoopbackDns) -> None:
    result = doctor(run, ms365)
    assert "tracking" not in result.stdout


def test_a_tracking_domain_that_resolves_under_the_sending_domain_passes(
    run: Cli, workspace_dir: Path, ms365: LoopbackDns
) -> None:
    ms365.zone.cname(f"t.{DOMAIN}", f"outreach.{DOMAIN}")
    edit_config(workspace_dir / "outreach.toml", opens=True, clicks=True, domain=f"t.{DOMAIN}")
    result = doctor(run, ms365)
    assert result.exit_code == 0, result.output
    assert lines(result, "ok")[-1] == (
        f"ok       [tracking] tracking: opens and clicks tracked at https://t.{DOMAIN} "
        f"(t.{DOMAIN} resolves; a fetch within 60 s of the send is a machine's)"
    )
    assert lines(result, "warning") == lines(result, "FAIL") == []


def test_an_unresolvable_tracking_domain_fails(
    run: Cli, workspace_dir: Path, ms365: LoopbackDns
) -> None:
    edit_config(workspace_dir / "outreach.toml", opens=True, domain=f"https://t.{DOMAIN}/t")
    result = doctor(run, ms365)
    assert result.exit_code == 1
    assert_one_line_per_finding(result)
    assert lines(result, "FAIL") == [
        f"FAIL     [tracking] tracking: t.{DOMAIN} (of [tracking] domain) has no address in "
        "DNS: every tracked link in the mail would lead nowhere, and no open could be seen. "
        f"Fix: add an A, AAAA or CNAME record for t.{DOMAIN} pointing at your https proxy (or "
        "turn [tracking] off)"
    ]
    ms365.zone.a(f"t.{DOMAIN}", "198.51.100.8")  # published: the next run passes
    assert doctor(run, ms365).exit_code == 0


def test_a_tracking_domain_outside_the_sending_domain_is_a_warning(
    run: Cli, workspace_dir: Path, ms365: LoopbackDns
) -> None:
    ms365.zone.a("links.tracker.example", "198.51.100.9")
    edit_config(workspace_dir / "outreach.toml", clicks=True, domain="links.tracker.example")
    result = doctor(run, ms365)
    assert result.exit_code == 0, result.output
    [warning] = lines(result, "warning")
    assert warning.startswith(
        f"warning  [tracking] tracking: links.tracker.example is not under a sending domain "
        f"({DOMAIN}): links to another domain than the From's look like phishing to filters. "
        f"Fix: use a subdomain such as t.{DOMAIN}"
    )
