"""What an inbound message is: bounce, auto-reply, unsubscribe or a reply, with its sentiment.

The messages are laid out the way real clients and mail systems write them: Gmail, Outlook and
Apple Mail replies in English, Finnish and Swedish with our own message quoted below; Postfix,
Gmail and Exchange bounces; Outlook, Gmail and plain autoresponders.
"""

from __future__ import annotations

import email
import email.policy
from datetime import date, datetime
from email.message import EmailMessage, Message
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from outreach.mail.classify import (
    classify,
    may_be_bounce,
    referenced_ids,
    reply_text,
    returned_ids,
)

MAIL = Path(__file__).parent / "mail"
NOW = datetime(2027, 1, 5, 9, 30, tzinfo=ZoneInfo("Europe/Helsinki"))
UNSUBSCRIBE_MAILTO = "mailto:unsubscribe@northwind.example"

# Our own follow-ups quote the earlier step with exactly these attribution lines.
OUR_ATTRIBUTION = {
    "en": "On Mon, 4 Jan 2027 at 10:00, Sanna Lehto <sanna@northwind.example> wrote:",
    "fi": "ma 4.1.2027 klo 10.00 Sanna Lehto <sanna@northwind.example> kirjoitti:",
    "sv": "mån 4 jan. 2027 kl. 10:00 skrev Sanna Lehto <sanna@northwind.example>:",
}
# ... and the quoted step carries our footer, with the very words a prospect would use.
OUR_QUOTED_STEP = (
    "> Hi, is this interesting? Call me or let's talk: sounds good?\n"
    '> Jos et halua viestejä, vastaa "poista minut". Kiinnostaako? Soita!\n'
    '> Vill du inte ha fler mejl, svara "avregistrera". Låter bra?\n'
    '> Not interested? Reply "unsubscribe" and I will stop emailing you.\n'
)


def load(name: str) -> EmailMessage:
    """A fixture message parsed the way the inbox parses what IMAP gives it."""
    raw = (MAIL / name).read_bytes()
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


def mail(body: str, subject: str = "Re: Northwind + Asiakas", **headers: str) -> EmailMessage:
    """A plain-text message as a client sends it (UTF-8, 8bit); header names use underscores."""
    lines = [
        "From: Matti Virtanen <matti.virtanen@asiakas.fi>",
        "To: Sanna Lehto <sanna@northwind.example>",
        f"Subject: {subject}",
        "Date: Tue, 5 Jan 2027 09:12:00 +0200",
        "Message-ID: <reply-1@asiakas.fi>",
        "In-Reply-To: <cold-1.41@northwind.example>",
        *(f"{name.replace('_', '-')}: {value}" for name, value in headers.items()),
        "MIME-Version: 1.0",
        "Content-Type: text/plain; charset=utf-8",
        "Content-Transfer-Encoding: 8bit",
    ]
    raw = ("\r\n".join(lines) + "\r\n\r\n" + body.replace("\n", "\r\n")).encode("utf-8")
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


def reply_to_us(new_text: str, language: str = "en") -> EmailMessage:
    """A top-posted reply that quotes our step below our own attribution line."""
    return mail(f"{new_text}\n\n{OUR_ATTRIBUTION[language]}\n{OUR_QUOTED_STEP}")


# --- bounces -----------------------------------------------------------------------------------


def test_postfix_dsn_for_an_unknown_user_is_a_hard_bounce() -> None:
    verdict = classify(load("postfix_user_unknown.eml"), now=NOW)
    # The DSN also carries Auto-Submitted: auto-replied; a bounce is decided first.
    assert verdict.kind == "bounce"
    assert verdict.hard is True
    assert verdict.failed == ("pekka.nieminen@asiakas.fi",)
    assert "5.1.1" in verdict.rule


def test_gmail_address_not_found_is_a_hard_bounce() -> None:
    verdict = classify(load("gmail_address_not_found.eml"), now=NOW)
    assert (verdict.kind, verdict.hard, verdict.failed) == ("bounce", True, ("noone@asiakas.fi",))


def test_exchange_online_undeliverable_is_a_hard_bounce() -> None:
    verdict = classify(load("exchange_online_ndr.eml"), now=NOW)
    assert verdict.kind == "bounce"
    assert verdict.hard is True
    assert verdict.failed == ("ville.makinen@asiakas.fi",)
    assert "5.1.10" in verdict.rule


def test_old_exchange_ndr_without_a_delivery_report_is_a_hard_bounce() -> None:
    verdict = classify(load("exchange_2003_ndr.eml"), now=NOW)
    assert (verdict.kind, verdict.hard, verdict.failed) == (
        "bounce",
        True,
        ("olli.ojala@asiakas.fi",),
    )
    assert "flufl.bounce" in verdict.rule


def test_full_mailbox_still_being_retried_is_a_soft_bounce() -> None:
    verdict = classify(load("postfix_mailbox_full_delayed.eml"), now=NOW)
    assert verdict.kind == "bounce"
    assert verdict.hard is False
    assert verdict.failed == ("liisa.korhonen@asiakas.fi",)
    assert "4.2.2" in verdict.rule


def test_full_mailbox_given_up_on_with_a_4xx_status_is_still_soft() -> None:
    raw = (MAIL / "postfix_mailbox_full_delayed.eml").read_bytes()
    raw = raw.replace(b"Action: delayed", b"Action: failed")
    message = email.message_from_bytes(raw, policy=email.policy.default)
    verdict = classify(message, now=NOW)
    assert (verdict.kind, verdict.hard) == ("bounce", False)


def test_bounce_is_read_from_a_message_parsed_with_the_old_policy_too() -> None:
    message = email.message_from_bytes((MAIL / "postfix_user_unknown.eml").read_bytes())
    assert isinstance(message, Message)
    verdict = classify(message, now=NOW)
    assert (verdict.kind, verdict.hard, verdict.failed) == (
        "bounce",
        True,
        ("pekka.nieminen@asiakas.fi",),
    )


def test_exim_bounce_names_the_failed_recipients_in_its_header() -> None:
    message = mail(
        "This message was created automatically by mail delivery software.\n\n"
        "A message that you sent could not be delivered to one or more of its\n"
        "recipients. This is a permanent error. The following address(es) failed:\n\n"
        "  kalle@asiakas.fi\n    host mx.asiakas.fi [192.0.2.25]\n"
        "    SMTP error from remote mail server after RCPT TO:<kalle@asiakas.fi>:\n"
        "    550 5.1.1 User unknown\n",
        subject="Mail delivery failed: returning message to sender",
        X_Failed_Recipients="kalle@asiakas.fi",
        Auto_Submitted="auto-replied",
    )
    verdict = classify(message, now=NOW)
    assert (verdict.kind, verdict.hard, verdict.failed) == ("bounce", True, ("kalle@asiakas.fi",))


def test_failure_notice_from_the_mailer_daemon_in_no_known_format_is_a_bounce() -> None:
    message = mail(
        "Hello, this is the mail server at asiakas.fi.\n\n"
        "Your mail could not be handed over:\n"
        "<tuula@asiakas.fi>: 554 5.7.1 Message refused by policy\n",
        subject="Delivery failure: Northwind + Asiakas",
    )
    message.replace_header("From", "Mail Delivery System <MAILER-DAEMON@asiakas.fi>")
    verdict = classify(message, now=NOW)
    assert (verdict.kind, verdict.hard, verdict.failed) == ("bounce", True, ("tuula@asiakas.fi",))
    assert "MAILER-DAEMON@asiakas.fi" in verdict.rule


def test_delay_notice_from_the_mailer_daemon_without_codes_is_soft() -> None:
    message = mail(
        "Your message has not been delivered yet. We will keep trying.\n",
        subject="Delivery delayed: Northwind + Asiakas",
    )
    message.replace_header("From", "postmaster@asiakas.fi")
    verdict = classify(message, now=NOW)
    assert (verdict.kind, verdict.hard) == ("bounce", False)


def test_a_postmaster_writing_about_something_else_is_not_a_bounce() -> None:
    message = mail("Sounds good, let's talk.", subject="Re: Northwind + Asiakas")
    message.replace_header("From", "postmaster@asiakas.fi")
    assert classify(message, now=NOW).kind == "reply"


def test_delivery_report_that_says_delivered_is_not_a_bounce_nor_a_reply() -> None:
    raw = (MAIL / "postfix_user_unknown.eml").read_bytes()
    raw = raw.replace(b"Action: failed", b"Action: delivered").replace(b"5.1.1", b"2.0.0")
    raw = raw.replace(b"Undelivered Mail Returned to Sender", b"Successful Mail Delivery Report")
    verdict = classify(email.message_from_bytes(raw, policy=email.policy.default), now=NOW)
    assert verdict.kind == "auto_reply"
    assert verdict.rule == "delivery report without a failure"


@pytest.mark.parametrize("name", sorted(p.name for p in MAIL.glob("*.eml")))
def test_the_inbox_cheap_bounce_check_never_misses_a_bounce(name: str) -> None:
    """The inbox classifies mail that names none of our messages or prospects only when it may
    be a bounce; a bounce it skipped would keep mailing a dead address."""
    message = load(name)
    is_bounce = classify(message, now=NOW).kind == "bounce"
    assert may_be_bounce(message) or not is_bounce
    if name.startswith(("gmail_en_reply", "gmail_fi_reply", "outlook_fi_reply", "apple_mail")):
        assert not may_be_bounce(message)  # a person's reply is not even a candidate


# --- auto-replies ------------------------------------------------------------------------------


def test_outlook_finnish_out_of_office_by_header_pushes_to_the_return_date() -> None:
    verdict = classify(load("outlook_fi_out_of_office.eml"), now=NOW)
    assert verdict.kind == "auto_reply"
    assert verdict.rule == "header Auto-Submitted: auto-generated"
    # "palaan toimistolle 25.1.2027", not the switchboard number "09 123 456"
    assert verdict.returns_on == date(2027, 1, 25)


@pytest.mark.parametrize(
    ("headers", "rule"),
    [
        ({"Auto_Submitted": "auto-replied"}, "header Auto-Submitted: auto-replied"),
        ({"X_Autoreply": "yes"}, "header X-Autoreply: yes"),
        ({"X_Autorespond": "Matti is away"}, "header X-Autorespond: Matti is away"),
        ({"Precedence": "auto_reply"}, "header Precedence: auto_reply"),
    ],
)
def test_auto_reply_headers_mark_an_auto_reply_whatever_the_subject(
    headers: dict[str, str], rule: str
) -> None:
    message = mail("Hei, olen lomalla 18. tammikuuta asti.", subject="Re: Northwind", **headers)
    verdict = classify(message, now=NOW)
    assert (verdict.kind, verdict.rule) == ("auto_reply", rule)
    assert verdict.returns_on == date(2027, 1, 18)


@pytest.mark.parametrize("value", ["no", "No", "no (a person wrote this)"])
def test_auto_submitted_no_is_a_person(value: str) -> None:
    verdict = classify(mail("Sounds good.", Auto_Submitted=value), now=NOW)
    assert verdict.kind == "reply"


@pytest.mark.parametrize(
    ("subject", "body", "rule", "returns_on"),
    [
        (
            "Out of Office: Northwind + Acme",
            "Thank you for your email. I will be back on Monday, January 25th.",
            "subject en: 'out of office'",
            date(2027, 1, 25),
        ),
        (
            "Automatic reply: Northwind + Acme",
            "Away from my desk until 25/01/2027, with no e-mail.",
            "subject en: 'automatic reply'",
            date(2027, 1, 25),
        ),
        (
            "Poissaoloilmoitus",
            "Palaan toimistolle 25.1.2027. Kiireellisissä asioissa soita 040 123 4567.",
            "subject fi: 'poissaolo*'",
            date(2027, 1, 25),
        ),
        (
            "Lomalla",
            "Hei, olen poissa ja luen sähköpostia 18. tammikuuta alkaen.",
            "subject fi: 'lomalla'",
            date(2027, 1, 18),
        ),
        (
            "Poissa toimistosta: Northwind + Asiakas",
            "Palaan töihin ma 25.1. Kiireelliset: +358 40 123 4567 tai myynti@asiakas.fi.",
            "subject fi: 'poissa'",
            date(2027, 1, 25),
        ),
        (
            "Automaattinen vastaus: Northwind + Asiakas",
            "Kiitos viestistäsi.",
            "subject fi: 'automaattinen vastaus'",
            None,
        ),
        (
            "Frånvaro: Northwind + Nordic",
            "Hej! Jag läser inte mejl och är tillbaka den 3 februari.",
            "subject sv: 'frånvaro*'",
            date(2027, 2, 3),
        ),
        (
            "Autosvar: Northwind + Nordic",
            "Tillbaka måndag 25 januari. Ring 08-123 456 78 vid brådskande ärenden.",
            "subject sv: 'autosvar'",
            date(2027, 1, 25),
        ),
        (
            "Automatiskt svar: Northwind + Nordic",
            "Tack för ditt mejl, jag svarar efter den 29 januari 2027.",
            "subject sv: 'automatiskt svar'",
            date(2027, 1, 29),
        ),
        (
            "Ej på kontoret",
            "Åter i tjänst i morgon.",
            "subject sv: 'ej på kontoret'",
            date(2027, 1, 6),
        ),
    ],
)
def test_out_of_office_by_subject_alone_in_english_finnish_and_swedish(
    subject: str, body: str, rule: str, returns_on: date | None
) -> None:
    verdict = classify(mail(body, subject=subject), now=NOW)
    assert (verdict.kind, verdict.rule, verdict.returns_on) == ("auto_reply", rule, returns_on)


@pytest.mark.parametrize(
    ("body", "rule"),
    [
        ("I am currently out of the office with limited access to email.", "text en:"),
        ("Olen vuosilomalla, enkä lue sähköpostiani.", "text fi: 'olen vuosilomalla'"),
        ("Jag är på semester och läser inte mejl.", "text sv: 'jag är på semester'"),
    ],
)
def test_out_of_office_by_its_text_when_headers_and_subject_say_nothing(
    body: str, rule: str
) -> None:
    verdict = classify(mail(body), now=NOW)
    assert verdict.kind == "auto_reply"
    assert verdict.rule.startswith(rule)
    assert verdict.returns_on is None


def test_precedence_bulk_alone_is_not_an_auto_reply() -> None:
    verdict = classify(mail("Kiitos, kuulostaa hyvältä.", Precedence="bulk"), now=NOW)
    assert (verdict.kind, verdict.sentiment) == ("reply", "positive")


def test_precedence_bulk_with_an_out_of_office_subject_is_an_auto_reply() -> None:
    message = mail("Back 25.1.", subject="Out of office", Precedence="bulk")
    verdict = classify(message, now=NOW)
    assert verdict.kind == "auto_reply"
    assert verdict.rule == "Precedence: bulk + subject en: 'out of office'"
    assert verdict.returns_on == date(2027, 1, 25)


def test_return_date_is_the_end_of_the_absence_not_its_start_rolled_into_next_year() -> None:
    # "4 January" is already past on 5 January; read as the future it would be 4.1.2028.
    for body in ("I am away from 4 January until 22 January.", "Olen poissa 4.1.–22.1.2027."):
        verdict = classify(mail(body, Auto_Submitted="auto-replied"), now=NOW)
        assert verdict.returns_on == date(2027, 1, 22), body


def test_return_date_ignores_phone_numbers_street_numbers_and_stray_words() -> None:
    body = (
        "I am out of the office and may be slow to answer. Urgent: +44 20 7946 0958.\n"
        "Acme Ltd, 12 A Storgatan, 111 22 Stockholm"
    )
    verdict = classify(mail(body, subject="Out of office"), now=NOW)
    assert verdict.kind == "auto_reply"
    assert verdict.returns_on is None


def test_return_date_in_the_past_or_more_than_a_year_ahead_is_not_taken() -> None:
    for body in ("I was away until 2.1.2027.", "Olen vanhempainvapaalla 1.6.2028 asti."):
        verdict = classify(mail(body, subject="Out of office"), now=NOW)
        assert verdict.returns_on is None, body


def test_read_receipt_is_not_a_reply() -> None:
    raw = (
        b"From: Matti Virtanen <matti.virtanen@asiakas.fi>\r\n"
        b"To: sanna@northwind.example\r\n"
        b"Subject: Luettu: Northwind + Asiakas\r\n"
        b"MIME-Version: 1.0\r\n"
        b'Content-Type: multipart/report; report-type=disposition-notification; boundary="b"\r\n'
        b"\r\n--b\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nViesti luettiin.\r\n"
        b"--b\r\nContent-Type: message/disposition-notification\r\n\r\n"
        b"Final-Recipient: rfc822;matti.virtanen@asiakas.fi\r\n"
        b"Original-Message-ID: <cold-1.41@northwind.example>\r\n"
        b"Disposition: automatic-action/MDN-sent-automatically; displayed\r\n"
        b"\r\n--b--\r\n"
    )
    verdict = classify(email.message_from_bytes(raw, policy=email.policy.default), now=NOW)
    assert verdict.kind == "auto_reply"
    assert "read receipt" in verdict.rule


# --- unsubscribe -------------------------------------------------------------------------------


def test_mail_to_the_list_unsubscribe_address_is_an_unsubscribe() -> None:
    # What a mail client sends for List-Unsubscribe: <mailto:...?subject=unsubscribe>
    message = mail("", subject="unsubscribe")
    message.replace_header("To", "unsubscribe@northwind.example")
    verdict = classify(message, now=NOW, unsubscribe_addresses=[UNSUBSCRIBE_MAILTO])
    assert verdict.kind == "unsubscribe"
    assert verdict.rule == "sent to the unsubscribe address unsubscribe@northwind.example"


@pytest.mark.parametrize(
    ("header", "value"),
    [
        ("To", "Unsubscribe@Northwind.Example"),
        ("To", "unsubscribe+c29tZXRva2Vu@northwind.example"),
        ("Cc", "Unsubscribe <unsubscribe@northwind.example>"),
        ("Delivered-To", "unsubscribe@northwind.example"),
    ],
)
def test_unsubscribe_address_is_found_in_to_cc_and_delivered_to(header: str, value: str) -> None:
    message = mail("Thanks", subject="Re: Northwind + Asiakas")
    if header in message:
        message.replace_header(header, value)
    else:
        message[header] = value
    verdict = classify(message, now=NOW, unsubscribe_addresses=["unsubscribe@northwind.example"])
    assert verdict.kind == "unsubscribe"


def test_mail_to_the_rep_is_not_an_unsubscribe_by_address() -> None:
    verdict = classify(mail("Thanks"), now=NOW, unsubscribe_addresses=[UNSUBSCRIBE_MAILTO])
    assert verdict.kind == "reply"


@pytest.mark.parametrize(
    ("text", "language", "rule"),
    [
        ("Please unsubscribe me.", "en", "en: 'unsubscribe'"),
        ("Please take me off your list.", "en", "en: 'take me off'"),
        ("Stop emailing me.", "en", "en: 'stop emailing'"),
        ("Poistakaa minut postituslistaltanne.", "fi", "fi: 'poistakaa minut'"),
        ("Poista minut, kiitos.", "fi", "fi: 'poista minut'"),
        ("En halua viestejä teiltä.", "fi", "fi: 'en halua viestejä'"),
        ("Lopettakaa tämä.", "fi", "fi: 'lopettakaa'"),
        ("Ta bort mig från er lista.", "sv", "sv: 'ta bort mig'"),
        ("Sluta skicka mejl till mig.", "sv", "sv: 'sluta skicka'"),
        ("Avregistrera mig.", "sv", "sv: 'avregistrera'"),
    ],
)
def test_reply_that_asks_to_be_removed_is_an_unsubscribe(
    text: str, language: str, rule: str
) -> None:
    verdict = classify(reply_to_us(text, language), now=NOW)
    assert (verdict.kind, verdict.rule, verdict.text) == ("unsubscribe", rule, text)


@pytest.mark.parametrize("language", ["en", "fi", "sv"])
def test_unsubscribe_in_our_own_quoted_message_is_not_an_unsubscribe(language: str) -> None:
    verdict = classify(reply_to_us("Kiitos, palaan asiaan.", language), now=NOW)
    assert verdict.kind == "reply"
    assert verdict.text == "Kiitos, palaan asiaan."


def test_unsubscribe_request_from_an_autoresponder_is_still_an_auto_reply() -> None:
    message = mail("Please remove me from any lists while I am away.", subject="Out of office")
    assert classify(message, now=NOW).kind == "auto_reply"


# --- the new text of a reply ------------------------------------------------------------------


def test_gmail_reply_in_english_keeps_only_the_new_text() -> None:
    message = load("gmail_en_reply.eml")
    verdict = classify(message, now=NOW, unsubscribe_addresses=[UNSUBSCRIBE_MAILTO])
    assert verdict.kind == "reply"  # "unsubscribe" is only in the quoted footer
    assert verdict.text == (
        "Hi Sanna,\n\nSounds good — let's talk on Thursday. Could you send an invite?\n\nJane"
    )
    assert (verdict.sentiment, verdict.rule) == ("positive", "en: 'sounds good'")


def test_outlook_finnish_reply_strips_the_lahettaja_header_block() -> None:
    verdict = classify(load("outlook_fi_reply.eml"), now=NOW)
    assert verdict.kind == "reply"
    assert verdict.text.startswith("Hei Sanna,\n\nkiitos viestistä, mutta meitä ei tällä")
    assert "Lähettäjä" not in verdict.text and "poista minut" not in verdict.text
    assert (verdict.sentiment, verdict.rule) == ("negative", "fi: 'kiinnosta'")


def test_outlook_html_only_reply_is_read_as_text_without_the_quoted_message() -> None:
    verdict = classify(load("outlook_fi_html_only_reply.eml"), now=NOW)
    assert verdict.kind == "reply"
    assert verdict.text == "Kuulostaa hyvältä! Soita ensi viikolla."
    assert (verdict.sentiment, verdict.rule) == ("positive", "fi: 'kuulostaa hyvältä'")


def test_apple_mail_swedish_reply_strips_the_quoted_skrev_line() -> None:
    verdict = classify(load("apple_mail_sv_reply.eml"), now=NOW)
    assert verdict.kind == "reply"
    assert verdict.text == "Ja gärna! Ring mig på fredag efter lunch.\n\n/Anna"
    assert verdict.sentiment == "positive"


def test_gmail_finnish_reply_strips_the_wrapped_kirjoitti_line() -> None:
    verdict = classify(load("gmail_fi_reply.eml"), now=NOW)
    assert verdict.kind == "reply"
    assert verdict.text == "Kiitos, kuulostaa hyvältä. Sovitaan palaveri ensi viikolle.\n\nPekka"
    assert verdict.sentiment == "positive"


def test_gmail_html_only_reply_drops_the_blockquote() -> None:
    raw = (MAIL / "gmail_fi_reply.eml").read_bytes()
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    html_part = message.get_body(preferencelist=("html",))
    assert html_part is not None
    html_only = mail("")
    html_only.set_content(html_part.get_content(), subtype="html")
    assert reply_text(html_only) == (
        "Kiitos, kuulostaa hyvältä. Sovitaan palaveri ensi viikolle.\n\nPekka"
    )


@pytest.mark.parametrize("language", ["en", "fi", "sv"])
def test_our_own_attribution_lines_are_stripped(language: str) -> None:
    assert reply_text(reply_to_us("Call me on Friday.", language)) == "Call me on Friday."


@pytest.mark.parametrize(
    "attribution",
    [
        "ma 4.1.2027 klo 10.00 Sanna Lehto <sanna@northwind.example> kirjoitti:",
        "ma 4.1.2027 klo 10.00 Sanna Lehto <\nsanna@northwind.example> kirjoitti:",
        "Sanna Lehto <sanna@northwind.example> kirjoitti 4.1.2027 kello 10.00:",
        "Sanna Lehto kirjoitti 4.1.2027 klo 10.00:",
        "> ma 4.1.2027 klo 10.00 sanna@northwind.example kirjoitti:",
        "ma 4. tammik. 2027 klo 10.00 Sanna Lehto <\nsanna@northwind.example> kirjoitti:",
    ],
)
def test_finnish_gmail_apple_and_thunderbird_attribution_lines_are_stripped(
    attribution: str,
) -> None:
    message = mail(f"Soitellaan huomenna.\n\n{attribution}\n\n> Hei, poista minut -linkki\n")
    assert reply_text(message) == "Soitellaan huomenna."


@pytest.mark.parametrize(
    "history",
    [
        # Outlook, English and Swedish
        "________________________________\nFrom: Sanna Lehto <sanna@northwind.example>\n"
        "Sent: Monday, January 4, 2027 10:00 AM\nTo: Jane Smith <jane.smith@acme.example>\n"
        "Subject: Northwind + Acme",
        "Från: Sanna Lehto <sanna@northwind.example>\nSkickat: den 4 januari 2027 10:00\n"
        "Till: Anna Berg <anna.berg@nordic.example>\nÄmne: Northwind + Nordic",
        # Gmail and Apple Mail in Swedish, Apple Mail in English; old Outlook in all three
        "Den mån 4 jan. 2027 kl 10:00 skrev Sanna Lehto <\nsanna@northwind.example>:",
        "Sanna Lehto <sanna@northwind.example> skrev 4 jan. 2027 kl. 10:00:",
        "> On 4 Jan 2027, at 10:00, Sanna Lehto <sanna@northwind.example> wrote:",
        "-----Original Message-----\nFrom: Sanna Lehto\nSent: 4.1.2027 10:00",
        "-----Alkuperäinen viesti-----\nLähettäjä: Sanna Lehto\nLähetetty: 4.1.2027 10:00",
        "-----Ursprungligt meddelande-----\nFrån: Sanna Lehto\nSkickat: 4.1.2027 10:00",
    ],
)
def test_client_history_headers_in_english_and_swedish_are_stripped(history: str) -> None:
    message = mail(f"Sounds good.\n\n{history}\n\n{OUR_QUOTED_STEP.replace('> ', '')}")
    verdict = classify(message, now=NOW)
    assert (verdict.kind, verdict.text, verdict.sentiment) == ("reply", "Sounds good.", "positive")


def test_finnish_outlook_header_block_without_the_separator_line_is_stripped() -> None:
    body = (
        "Ei kiitos.\n\n"
        "Lähettäjä: Sanna Lehto <sanna@northwind.example>\n"
        "Lähetetty: maanantai 4. tammikuuta 2027 10.00\n"
        "Vastaanottaja: Matti Virtanen <matti.virtanen@asiakas.fi>\n"
        "Kopio: Liisa Korhonen <liisa.korhonen@asiakas.fi>\n"
        "Aihe: Northwind + Asiakas\n\n"
        "Hei Matti, kiinnostaako? Jos et halua viestejä, vastaa 'poista minut'.\n"
    )
    verdict = classify(mail(body), now=NOW)
    assert (verdict.kind, verdict.text, verdict.sentiment) == ("reply", "Ei kiitos.", "negative")


def test_a_sentence_that_mentions_kirjoitti_is_kept() -> None:
    body = "Kollegani kirjoitti teille jo aiemmin: soittakaa hänelle.\n"
    assert reply_text(mail(body)) == body.strip()


def test_answer_below_the_quote_is_the_new_text() -> None:
    message = mail(f"{OUR_ATTRIBUTION['en']}\n{OUR_QUOTED_STEP}\nNo thanks, we have a supplier.\n")
    verdict = classify(message, now=NOW)
    assert verdict.text == "No thanks, we have a supplier."
    assert (verdict.sentiment, verdict.rule) == ("negative", "en: 'no thanks'")


def test_signature_after_the_dash_dash_line_is_not_read() -> None:
    body = "Not right now.\n\n-- \nMatti Virtanen | Call me: +358 40 123 4567 | unsubscribe\n"
    verdict = classify(mail(body), now=NOW)
    assert (verdict.kind, verdict.text, verdict.sentiment) == ("reply", "Not right now.", "neutral")


def test_attached_forwarded_message_is_not_the_new_text() -> None:
    message = mail("Liisa hoitaa tätä, välitän viestin hänelle.")
    attached = mail("Please unsubscribe me.")
    message.add_attachment(attached)  # message/rfc822, as clients forward "as attachment"
    assert message.get_content_type() == "multipart/mixed"
    verdict = classify(message, now=NOW)
    assert (verdict.kind, verdict.text) == ("reply", "Liisa hoitaa tätä, välitän viestin hänelle.")


def test_empty_reply_is_a_neutral_reply() -> None:
    verdict = classify(mail(f"{OUR_ATTRIBUTION['fi']}\n{OUR_QUOTED_STEP}"), now=NOW)
    assert (verdict.kind, verdict.text, verdict.sentiment) == ("reply", "", "neutral")


# --- sentiment -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "sentiment", "rule"),
    [
        ("Not interested, thanks.", "negative", "en: 'not interested'"),
        ("I'm not really interested at the moment.", "negative", "en: 'interested' negated by"),
        ("No, thanks!", "negative", "en: 'no thanks'"),
        ("Don’t contact me again.", "negative", "en: 'don't contact'"),
        ("I'm the wrong person, try Liisa.", "negative", "en: 'wrong person'"),
        ("We are interested - send details.", "positive", "en: 'interested'"),
        ("Not now, but call me in March.", "positive", "en: 'call me'"),
        ("Yes, let's do it.", "positive", "en: 'yes'"),
        ("Who gave you my address?", "neutral", "no sentiment rule matched"),
        ("Ei kiinnosta.", "negative", "fi: 'ei kiinnosta'"),
        ("Ei meitä juuri nyt kiinnosta.", "negative", "fi: 'kiinnosta'"),
        ("En ole kiinnostunut.", "negative", "fi: 'kiinnostu*' negated by 'En'"),
        ("Ei kiitos.", "negative", "fi: 'ei kiitos'"),
        ("Olen väärä henkilö, kokeile Liisaa.", "negative", "fi: 'väärä henkilö'"),
        ("Tämä kiinnostaa meitä!", "positive", "fi: 'kiinnostaa'"),
        ("Kyllä, soita huomenna.", "positive", "fi: 'soita*'"),
        ("Sovitaan aika ensi viikolle.", "positive", "fi: 'sovitaan'"),
        ("Jag är inte intresserad.", "negative", "sv: 'inte intresserad*'"),
        ("Vi är inte så intresserade just nu.", "negative", "sv: 'intresserad*' negated by"),
        ("Nej tack.", "negative", "sv: 'nej tack'"),
        ("Fel person, prova Erik.", "negative", "sv: 'fel person'"),
        ("Ring mig inte.", "negative", "sv: 'ring mig' negated by 'inte'"),
        ("En demo låter bra.", "positive", "sv: 'låter bra'"),
        ("Ja gärna!", "positive", "sv: 'ja gärna'"),
    ],
)
def test_sentiment_of_the_new_text_with_negations(text: str, sentiment: str, rule: str) -> None:
    language = "fi" if rule.startswith("fi") else "sv" if rule.startswith("sv") else "en"
    verdict = classify(reply_to_us(text, language), now=NOW)
    assert (verdict.kind, verdict.text, verdict.sentiment) == ("reply", text, sentiment)
    assert verdict.rule.startswith(rule)


# --- threading -----------------------------------------------------------------------------------


def test_referenced_ids_follow_in_reply_to_then_references_each_once_and_unfolded() -> None:
    raw = (
        b"From: Jane <jane.smith@acme.example>\r\n"
        b"Subject: Re: Northwind\r\n"
        b"In-Reply-To: <cold-3.40@northwind.example>\r\n"
        b"References: <cold-1.40@northwind.example>\r\n"
        b"\t<cold-2.40@northwind.example>\r\n"
        b" <cold-3.40@northwind.example>\r\n"
        b"\r\nyes\r\n"
    )
    for policy in (email.policy.default, email.policy.compat32):
        message = email.message_from_bytes(raw, policy=policy)
        assert referenced_ids(message) == [
            "<cold-3.40@northwind.example>",
            "<cold-1.40@northwind.example>",
            "<cold-2.40@northwind.example>",
        ]


def test_referenced_ids_from_gmail_reply() -> None:
    assert referenced_ids(load("gmail_en_reply.eml")) == [
        "<cold-2.40@northwind.example>",
        "<cold-1.40@northwind.example>",
    ]


def test_referenced_ids_accept_a_bare_id_from_a_broken_client() -> None:
    message = mail("yes")
    message.replace_header("In-Reply-To", "cold-1.41@northwind.example")
    assert referenced_ids(message) == ["<cold-1.41@northwind.example>"]


def test_no_threading_headers_is_no_referenced_ids() -> None:
    message = mail("yes")
    del message["In-Reply-To"]
    assert referenced_ids(message) == []


@pytest.mark.parametrize(
    "name, returned",
    [
        ("postfix_user_unknown.eml", "<cold-1.42@northwind.example>"),
        ("gmail_address_not_found.eml", "<cold-1.43@northwind.example>"),
        ("postfix_mailbox_full_delayed.eml", "<cold-1.44@northwind.example>"),
        ("exchange_online_ndr.eml", "<cold-1.45@northwind.example>"),
        ("exchange_2003_ndr.eml", "<cold-1.46@northwind.example>"),
        ("gmail_delivery_delayed.eml", "<cold-1.54@northwind.example>"),
        ("gmail_en_reply.eml", None),
    ],
)
def test_a_bounce_names_the_message_it_returns(name: str, returned: str | None) -> None:
    assert returned_ids(load(name)) == ([returned] if returned else [])
