"""Mail on the wire: each message is built, serialised and parsed back as a client reads it.

Every test that looks at a message runs twice (the ``build`` fixture): against
``mail.build_message`` (the email package) and ``wire.render_message`` (the bytes the send path
uses); ``tests/test_wire.py`` holds the two to the same message for generated input.
"""

from __future__ import annotations

import email
import email.policy
import re
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from email.message import EmailMessage, MIMEPart

import pytest
from aiosmtplib.email import extract_recipients, extract_sender, flatten_message
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from outreach.errors import OutreachError
from outreach.mail.message import (
    HeaderInjection,
    Outgoing,
    Quote,
    build_message,
    make_message_id,
    quote_text,
    reply_subject,
)
from outreach.mail.wire import render_message

SANNA = "sanna.lehto@northwind.example"
AINO = "aino.korhonen@rakennus.example"
FIRST_ID = "<first.1@northwind.example>"
SECOND_ID = "<second.2@northwind.example>"
UNSUBSCRIBE_URL = "https://northwind.example/unsubscribe?token=" + "k" * 64
# Monday 4 January 2027, 10:00 in Helsinki (UTC+2 in winter).
MONDAY_10_HELSINKI = datetime(2027, 1, 4, 8, 0, tzinfo=UTC)


def outgoing(**changes: object) -> Outgoing:
    """A first cold email from Sanna to Aino; tests change what they are about."""
    base = Outgoing(
        from_name="Sanna Lehto",
        from_email=SANNA,
        to_email=AINO,
        to_name="Aino Korhonen",
        subject="Työmaiden aikataulut",
        text="Hei Aino,\n\nehtisitkö jutella ensi viikolla?\n\nSanna\n",
        html=None,
        message_id=make_message_id(SANNA),
        date=datetime(2027, 1, 5, 9, 30, tzinfo=timezone(timedelta(hours=2))),
    )
    return replace(base, **changes)  # type: ignore[arg-type]


Build = Callable[[Outgoing], bytes]
BUILDERS: dict[str, Build] = {
    "email": lambda o: build_message(o).as_bytes(),
    "wire": lambda o: render_message(o).data,
}


@pytest.fixture(scope="module", params=sorted(BUILDERS))
def build(request: pytest.FixtureRequest) -> Build:
    """The message's bytes as one of the two builders writes them."""
    return BUILDERS[request.param]


def parse(raw: bytes) -> EmailMessage:
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(parsed, EmailMessage)
    return parsed


def sent(build: Build, o: Outgoing) -> EmailMessage:
    """What the recipient's server receives, parsed back with the modern policy."""
    return parse(build(o))


def display_name(raw: bytes, header: str) -> str:
    """The display name as RFC 2047 section 6.2 reads it.

    The white space between two adjacent encoded words is not part of the text. CPython's
    policy.default parser keeps it (python/cpython#128110), so drop it before parsing; the
    bytes we send are already correct, and mail clients read them so.
    """
    parsed = parse(re.sub(rb"\?=\r\n =\?", b"?==?", raw))
    (address,) = parsed[header].addresses
    return address.display_name


def content(part: MIMEPart | None) -> str:
    """A text part's decoded content, with the wire's CRLF line ends read back as newlines."""
    assert part is not None
    text = part.get_content()
    assert isinstance(text, str)
    return text.replace("\r\n", "\n")


def assert_lines_fit(raw: bytes) -> None:
    for line in raw.split(b"\r\n"):
        assert len(line) <= 998, line[:80]


def quote(**changes: object) -> Quote:
    base = Quote(
        sent_at=MONDAY_10_HELSINKI,
        from_name="Sanna Lehto",
        from_email="sanna@northwind.example",
        text="Hei Aino,\n\nehtisitkö jutella?\n",
    )
    return replace(base, **changes)  # type: ignore[arg-type]


# --- From, To, Subject, Date -------------------------------------------------------------------


def test_finnish_sender_name_is_encoded_and_reads_back(build: Build) -> None:
    raw = build(outgoing(from_name="Sanna Mäkelä"))
    headers = raw.split(b"\r\n\r\n", 1)[0]
    assert headers.isascii()
    assert b"=?utf-8?" in headers
    (sender,) = parse(raw)["From"].addresses
    assert (sender.display_name, sender.addr_spec) == ("Sanna Mäkelä", SANNA)


@pytest.mark.parametrize(
    "name",
    [
        'Korhonen, Aino "AK"',
        "Lehto (Northwind), Sanna",
        'Mäkelä, "Sanna" <CEO>',
        'Back\\slash, "Quoted"',
        # Long enough that CPython 3.11 would fold it without its quotes: two addresses.
        "Korhonen, Aino, Rakennus Oy, evil@attacker.example, Helsinki, Finland",
    ],
)
def test_name_with_comma_and_quotes_stays_one_address(name: str, build: Build) -> None:
    raw = build(outgoing(from_name=name, to_name=name))
    for header, addr_spec in (("From", SANNA), ("To", AINO)):
        (address,) = parse(raw)[header].addresses
        assert address.addr_spec == addr_spec
        assert display_name(raw, header) == name


def test_long_accented_name_is_sent_as_rfc2047_says(build: Build) -> None:
    name = "Bérénice-Amélie Rosemonde Dûbois-Bénard"
    raw = build(outgoing(to_name=name))
    assert display_name(raw, "To") == name


def test_recipient_without_name_is_a_bare_address(build: Build) -> None:
    message = sent(build, outgoing(to_name=None))
    (recipient,) = message["To"].addresses
    assert (recipient.display_name, recipient.addr_spec) == ("", AINO)


def test_subject_date_and_mime_headers(build: Build) -> None:
    o = outgoing()
    message = sent(build, o)
    assert message["Subject"] == "Työmaiden aikataulut"
    assert message["Date"].datetime == o.date
    assert message["MIME-Version"] == "1.0"
    assert message.get_content_type() == "text/plain"
    assert message.get_content_charset() == "utf-8"


def test_idn_recipient_domain_goes_out_in_ascii(build: Build) -> None:
    message = sent(build, outgoing(to_email="aino@pörssi.example"))
    assert message["To"].addresses[0].addr_spec == "aino@xn--prssi-jua.example"


def test_runs_of_blanks_in_header_text_collapse_to_one_space(build: Build) -> None:
    message = sent(build, outgoing(subject="  Hei \t Aino  ", to_name=" Aino\tKorhonen "))
    assert message["Subject"] == "Hei Aino"
    assert message["To"].addresses[0].display_name == "Aino Korhonen"


def test_naive_date_is_refused(build: Build) -> None:
    with pytest.raises(ValueError, match="aware"):
        build(outgoing(date=datetime(2027, 1, 5, 9, 30)))


# --- Message-ID and threading --------------------------------------------------------------------


def test_message_id_is_under_the_senders_domain(build: Build) -> None:
    message_id = make_message_id("Sanna.Lehto@NorthWind.EXAMPLE")
    assert re.fullmatch(r"<[0-9a-f]{32}\.[0-9a-f]{8}@northwind\.example>", message_id)
    assert sent(build, outgoing(message_id=message_id))["Message-ID"] == message_id


def test_message_id_uses_the_ascii_form_of_an_idn_domain() -> None:
    assert make_message_id("myynti@pörssi.example", "abc.1") == "<abc.1@xn--prssi-jua.example>"


def test_message_ids_are_unique() -> None:
    ids = {make_message_id(SANNA) for _ in range(10_000)}
    assert len(ids) == 10_000


@pytest.mark.parametrize("token", ["two words", "a@b", "<x>", ".leading", ""])
def test_message_id_token_must_be_an_atom(token: str) -> None:
    with pytest.raises(ValueError):
        make_message_id(SANNA, token)


def test_first_email_has_no_threading_headers(build: Build) -> None:
    message = sent(build, outgoing())
    assert "In-Reply-To" not in message
    assert "References" not in message


@pytest.mark.parametrize(
    "chain",
    [(FIRST_ID, SECOND_ID), (FIRST_ID, SECOND_ID, "<third.3@northwind.example>")],
    ids=["second-email", "third-email"],
)
def test_follow_up_threads_as_reply(chain: tuple[str, ...], build: Build) -> None:
    message = sent(build, outgoing(in_reply_to=chain[-1], references=chain))
    assert message["In-Reply-To"] == chain[-1]
    assert message["References"].split() == list(chain)


def test_long_reference_chain_folds_between_ids_only(build: Build) -> None:
    chain = tuple(f"<{'x' * 90}.{n}@northwind.example>" for n in range(30))
    raw = build(outgoing(in_reply_to=chain[-1], references=chain))
    assert_lines_fit(raw)
    raw_references = email.message_from_bytes(raw, policy=email.policy.compat32)["References"]
    assert "=?" not in raw_references
    assert parse(raw)["References"].split() == list(chain)


@pytest.mark.parametrize(
    ("first", "expected"),
    [
        ("Työmaiden aikataulut", "Re: Työmaiden aikataulut"),
        ("Re: Työmaiden aikataulut", "Re: Työmaiden aikataulut"),
        ("RE: Re: x", "Re: x"),
        ("re:x", "Re: x"),
        ("Vs: VS: x", "Re: x"),
        ("SV: Sv: x", "Re: x"),
        ("AW: Re : x", "Re: x"),
        ("Report for Q1", "Re: Report for Q1"),
        ("Resurssit: x", "Re: Resurssit: x"),
    ],
)
def test_reply_subject_has_exactly_one_re(first: str, expected: str) -> None:
    assert reply_subject(first) == expected


# --- the quoted earlier message -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("language", "attribution"),
    [
        ("en", "On Mon, 4 Jan 2027 at 10:00, Sanna Lehto <sanna@northwind.example> wrote:"),
        ("fi", "ma 4.1.2027 klo 10.00 Sanna Lehto <sanna@northwind.example> kirjoitti:"),
        ("sv", "mån 4 jan. 2027 kl. 10:00 skrev Sanna Lehto <sanna@northwind.example>:"),
    ],
)
def test_quote_attribution_per_language(language: str, attribution: str) -> None:
    assert quote_text(quote(), language).splitlines() == [
        attribution,
        "> Hei Aino,",
        ">",
        "> ehtisitkö jutella?",
    ]


@pytest.mark.parametrize(
    ("language", "attribution"),
    [
        ("en", "On Fri, 9 Jul 2027 at 09:05, Sanna Lehto <sanna@northwind.example> wrote:"),
        ("fi", "pe 9.7.2027 klo 9.05 Sanna Lehto <sanna@northwind.example> kirjoitti:"),
        ("sv", "fre 9 juli 2027 kl. 09:05 skrev Sanna Lehto <sanna@northwind.example>:"),
    ],
)
def test_quote_attribution_in_summer_time(language: str, attribution: str) -> None:
    q = quote(sent_at=datetime(2027, 7, 9, 6, 5, tzinfo=UTC))  # 09:05 EEST
    assert quote_text(q, language).splitlines()[0] == attribution


def test_quote_in_another_time_zone_and_unknown_language_falls_back_to_english() -> None:
    q = quote(timezone="Europe/Stockholm")
    assert quote_text(q, "de").startswith("On Mon, 4 Jan 2027 at 09:00, ")


def test_quoted_quote_gets_a_second_marker() -> None:
    earlier = quote_text(quote(), "fi")
    second = quote(text="Muistutan vielä.\n\n" + earlier)
    lines = quote_text(second, "fi").splitlines()
    assert lines[1:4] == [
        "> Muistutan vielä.",
        ">",
        "> ma 4.1.2027 klo 10.00 Sanna Lehto <sanna@northwind.example> kirjoitti:",
    ]
    assert lines[4:] == ["> > Hei Aino,", "> >", "> > ehtisitkö jutella?"]


def test_reply_body_is_text_blank_line_and_quote(build: Build) -> None:
    q = quote()
    message = sent(build, outgoing(text="Hei taas!\n", quote=q, language="fi"))
    assert content(message.get_body(("plain",))) == "Hei taas!\n\n" + quote_text(q, "fi")


def test_html_reply_quotes_in_a_blockquote_with_escaped_text(build: Build) -> None:
    q = quote(text="<b>hi</b> & bye\n", from_name="Sanna <Boss>")
    html = "<html><body><p>Hei taas!</p></body></html>"
    message = sent(build, outgoing(html=html, quote=q))
    html_part = content(message.get_body(("html",)))
    assert html_part.startswith("<html><body><p>Hei taas!</p>")
    assert html_part.rstrip().endswith("</body></html>")
    assert "<blockquote" in html_part
    assert "&lt;b&gt;hi&lt;/b&gt; &amp; bye" in html_part
    assert "Sanna &lt;Boss&gt; &lt;sanna@northwind.example&gt; wrote:" in html_part


# --- List-Unsubscribe ----------------------------------------------------------------------------


def test_mailto_unsubscribe_only_has_no_one_click(build: Build) -> None:
    message = sent(build, outgoing(unsubscribe_mailto="unsubscribe@northwind.example"))
    expected = "<mailto:unsubscribe@northwind.example?subject=unsubscribe>"
    assert message["List-Unsubscribe"] == expected
    assert "List-Unsubscribe-Post" not in message


def test_mailto_and_https_unsubscribe_with_one_click(build: Build) -> None:
    raw = build(
        outgoing(
            unsubscribe_mailto="unsubscribe@northwind.example", unsubscribe_url=UNSUBSCRIBE_URL
        )
    )
    message = parse(raw)
    assert message["List-Unsubscribe"] == (
        f"<mailto:unsubscribe@northwind.example?subject=unsubscribe>, <{UNSUBSCRIBE_URL}>"
    )
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert UNSUBSCRIBE_URL.encode() in raw  # long, but never turned into an encoded word


def test_https_unsubscribe_only(build: Build) -> None:
    message = sent(build, outgoing(unsubscribe_url=UNSUBSCRIBE_URL))
    assert message["List-Unsubscribe"] == f"<{UNSUBSCRIBE_URL}>"
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"


def test_no_unsubscribe_configured_means_no_header(build: Build) -> None:
    message = sent(build, outgoing())
    assert "List-Unsubscribe" not in message
    assert "List-Unsubscribe-Post" not in message


@pytest.mark.parametrize(
    "url",
    ["http://northwind.example/u", "https://x.example/a b", "https://x.example/ä", "mailto:a@b"],
)
def test_unsubscribe_url_must_be_plain_https(url: str, build: Build) -> None:
    with pytest.raises(ValueError, match="unsubscribe_url"):
        build(outgoing(unsubscribe_url=url))


# --- bodies ---------------------------------------------------------------------------------------


def test_html_is_a_multipart_alternative_after_the_text(build: Build) -> None:
    html = "<p>Hei Aino, <b>tervetuloa</b> työmaalle!</p>\n"
    message = sent(build, outgoing(html=html))
    assert message.get_content_type() == "multipart/alternative"
    plain, rich = message.iter_parts()
    assert (plain.get_content_type(), rich.get_content_type()) == ("text/plain", "text/html")
    assert plain.get_content_charset() == rich.get_content_charset() == "utf-8"
    assert content(plain) == outgoing().text
    assert content(rich) == html
    assert message["MIME-Version"] == "1.0"


def test_the_smtp_client_sends_these_bytes_even_without_8bitmime() -> None:
    message = build_message(
        outgoing(
            from_name="Sanna Mäkelä", html="<p>Hyvää päivää</p>", unsubscribe_url=UNSUBSCRIBE_URL
        )
    )
    assert flatten_message(message) == message.as_bytes()
    assert flatten_message(message, cte_type="7bit") == message.as_bytes()
    assert extract_sender(message) == SANNA
    assert extract_recipients(message) == [AINO]


def test_longest_name_and_address_still_fit_the_line_limit(build: Build) -> None:
    address = "a" * 64 + "@" + ".".join(["b" * 60] * 3) + ".example"
    for name in ["ä" * 256, ", " * 128, "x" * 256]:
        raw = build(outgoing(to_name=name, to_email=address, from_name=name))
        assert_lines_fit(raw)
        assert parse(raw)["To"].addresses[0].addr_spec == address
        assert display_name(raw, "To") == name.strip().replace("  ", " ")


def test_long_finnish_lines_survive(build: Build) -> None:
    line = "Hyvä Aino, tässä on pitkä rivi ääkkösiä: äöå ÄÖÅ — “lainaus” € 🙂 " * 40
    text = f"{line}\n  sisennetty rivi ja välilyöntejä lopussa   \n\n{'ä' * 3000}\n"
    raw = build(outgoing(text=text))
    assert_lines_fit(raw)
    assert content(parse(raw)) == text


# --- header injection -----------------------------------------------------------------------------

INJECTIONS = ["x\r\nBcc: victim@evil.example", "x\nBcc: victim@evil.example", "x\rX", "x\x00y"]
FIELDS = [
    "from_name",
    "to_name",
    "subject",
    "from_email",
    "to_email",
    "message_id",
    "in_reply_to",
    "references",
    "unsubscribe_mailto",
    "unsubscribe_url",
]


@pytest.mark.parametrize("payload", INJECTIONS, ids=["crlf", "lf", "cr", "nul"])
@pytest.mark.parametrize("field", FIELDS)
def test_line_break_in_any_header_field_is_refused(field: str, payload: str, build: Build) -> None:
    values = {
        "from_email": f"sanna{payload}@northwind.example",
        "to_email": f"aino@rakennus.example{payload}",
        "message_id": f"<abc{payload}@northwind.example>",
        "in_reply_to": f"<abc@northwind.example>{payload}",
        "references": (FIRST_ID, f"<abc{payload}@northwind.example>"),
        "unsubscribe_mailto": f"unsubscribe@northwind.example{payload}",
        "unsubscribe_url": f"https://northwind.example/u?t=1{payload}",
    }
    with pytest.raises(HeaderInjection, match=field) as caught:
        build(outgoing(**{field: values.get(field, f"Hei {payload}")}))
    assert isinstance(caught.value, OutreachError)
    assert caught.value.field == field


@pytest.mark.parametrize("char", ["\x0b", "\x0c", "\x1b", "\x7f", "\x85", "\u2028", "\u2029"])
def test_other_line_breaks_and_controls_in_header_text_are_refused(char: str, build: Build) -> None:
    with pytest.raises(HeaderInjection, match="subject"):
        build(outgoing(subject=f"Hei{char}Aino"))


@pytest.mark.parametrize(
    "address",
    [
        "a@rakennus.example, b@rakennus.example",
        "Evil <evil@rakennus.example>",
        "x <aino@rakennus.example>",
        "aino@rakennus.example;b@c.example",
        '"aino"@rakennus.example',
        "aino@rakennus.example (comment)",
        "aino",
        "aino@",
        "@rakennus.example",
        "äinö@rakennus.example",
    ],
)
@pytest.mark.parametrize("field", ["to_email", "from_email"])
def test_address_fields_take_one_bare_address(field: str, address: str, build: Build) -> None:
    with pytest.raises(ValueError, match=field):
        build(outgoing(**{field: address}))


def test_encoded_word_lookalike_is_refused_rather_than_decoded_by_clients(build: Build) -> None:
    with pytest.raises(ValueError, match="subject"):
        build(outgoing(subject="Hinnat =?utf-8?q?=E2=82=AC?="))


def test_absurdly_long_name_is_refused(build: Build) -> None:
    with pytest.raises(ValueError, match="to_name"):
        build(outgoing(to_name="x" * 257))


# --- properties -----------------------------------------------------------------------------------

# Any single-line text, and text made mostly of what needs quoting or encoding in a header.
header_text = st.one_of(
    st.text(st.characters(exclude_categories=("Cc", "Cs", "Zl", "Zp")), max_size=120),
    st.text(st.sampled_from(" ,.\"'()<>@\\:;=?_aäÅ€\xa0🙂"), max_size=120),
)


def collapsed(text: str) -> str:
    """A subject as sent: trimmed, runs of spaces made one."""
    return re.sub(" +", " ", text).strip()


def name_as_sent(text: str) -> str:
    """A display name as sent: every run of white space made one plain space."""
    return " ".join(text.split())


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(subject=header_text, name=header_text.filter(lambda s: len(name_as_sent(s)) <= 256))
@example(subject="x" * 2000, name="y" * 256)
@example(subject="ä" * 500 + " " + "€" * 300, name='\u3000Mäkelä,\xa0"Sanna" (CEO)\\')
@example(subject="Re: Re: Re:", name="=?")
@example(subject="", name="0" + "\u0800" * 14 + " :")  # CPython's own folding drops this space
@example(subject="Hinta 100\xa0€ ", name='"' * 256)
def test_any_single_line_subject_and_name_round_trip(subject: str, name: str, build: Build) -> None:
    looks_encoded = re.compile(r"=\?[^?]*\?[bBqQ]\?[^?]*\?=")
    if looks_encoded.search(subject) or looks_encoded.search(name):
        with pytest.raises(ValueError):
            build(outgoing(subject=subject, from_name=name))
        return
    raw = build(outgoing(subject=subject, from_name=name))
    assert_lines_fit(raw)
    assert raw.split(b"\r\n\r\n", 1)[0].isascii()
    assert parse(raw)["Subject"] == collapsed(subject)
    assert display_name(raw, "From") == name_as_sent(name)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("to_email", "=?utf-8?q?x=0D=0ABcc:_victim@evil.example?=aino@rakennus.example"),
        ("from_email", "sanna=?utf-8?b?DQpCY2M6IHg=?=@northwind.example"),
        ("message_id", "<=?utf-8?q?=0D=0ABcc:_x?=@northwind.example>"),
        ("in_reply_to", "<a=?utf-8?q?=0A?=@northwind.example>"),
        ("unsubscribe_url", "https://northwind.example/u?t==?utf-8?q?=0D=0ABcc:_x?="),
        ("unsubscribe_mailto", "=?utf-8?q?=0A?=@northwind.example"),
    ],
)
def test_encoded_word_in_an_address_id_or_url_is_refused(
    field: str, value: str, build: Build
) -> None:
    # Legal characters there, but readers decode them anyway (CPython's parser turns the
    # first into an address with a line break in it).
    with pytest.raises(ValueError, match=field):
        build(outgoing(**{field: value}))
