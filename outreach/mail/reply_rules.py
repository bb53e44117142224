"""The rules `outreach.mail.classify` applies, as data a rep can read and extend.

A phrase matches whole words, case-insensitively, with any punctuation or line break between its
words ("no thanks" matches "No, thanks!"); a trailing `*` lets the last word go on ("kiinnostu*"
matches "kiinnostunut", "kiinnostuneita"). Text phrases are tried on the NEW text of a message
only, never on the quoted history (our own footer says "unsubscribe"); subject phrases on the
Subject. A verdict names the phrase that decided it, e.g. "fi: 'ei kiinnosta'".
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from mailparser_reply.parser import EmailMessage as _ReplySplitter

# --- replies: sentiment -----------------------------------------------------------------------
# Negative phrases win over positive ones: "not interested" is never the positive "interested".
NEGATIVE_PHRASES: dict[str, tuple[str, ...]] = {
    "en": (
        "not interested", "no thanks", "no thank you", "wrong person", "not the right person",
        "don't contact", "do not contact", "not relevant",
    ),
    "fi": (
        "ei kiinnosta", "kiinnosta",  # "kiinnosta" alone is the negated form: "ei meitä kiinnosta"
        "ei kiitos", "väärä henkilö", "en ole oikea henkilö", "ei ole ajankohtai*", "ei tarvetta",
        "älkää ottako yhteyttä",
    ),
    "sv": (
        "inte intresserad*", "ointresserad*", "inget intresse", "nej tack", "fel person",
        "inte rätt person", "låter inte bra", "kontakta mig inte", "inte aktuellt",
    ),
}  # fmt: skip

POSITIVE_PHRASES: dict[str, tuple[str, ...]] = {
    "en": (
        "interested", "sounds good", "let's talk", "lets talk", "let's chat", "book a call",
        "schedule a call", "call me", "tell me more", "yes",
    ),
    "fi": (
        "kiinnostaa", "kiinnostais*", "kiinnostu*", "kuulostaa hyvältä", "sovitaan", "soita*",
        "soittakaa", "soitellaan", "kyllä", "mielelläni",
    ),
    "sv": ("intresserad*", "låter bra", "ring mig", "ja gärna", "ja tack", "gärna"),
}  # fmt: skip

# A positive phrase preceded in its clause (within three words) by a negator of its language
# counts as negative: "not really interested", "en ole kiinnostunut", "jag är inte intresserad".
NEGATORS: dict[str, tuple[str, ...]] = {
    "en": (
        "not", "no", "never", "don't", "dont", "doesn't", "isn't", "aren't", "won't", "wouldn't",
    ),
    "fi": ("ei", "en", "et", "emme", "ette", "eivät", "älä", "älkää"),
    "sv": ("inte", "ej", "icke", "aldrig", "ingen", "inget"),
}  # fmt: skip
# Swedish also negates after the verb: "ring mig inte".
NEGATORS_AFTER: dict[str, tuple[str, ...]] = {"sv": ("inte", "ej", "aldrig")}
# These end a clause for the negation look-back: "not now, but call me" is positive.
CLAUSE_WORDS: tuple[str, ...] = ("but", "however", "mutta", "vaan", "men")

# --- unsubscribe requests ---------------------------------------------------------------------
UNSUBSCRIBE_PHRASES: dict[str, tuple[str, ...]] = {
    "en": (
        "unsubscribe", "remove me", "take me off", "stop emailing", "stop sending", "opt out",
    ),
    "fi": (
        "poista minut", "poistakaa minut", "poistakaa osoitteeni", "en halua viestejä",
        "lopettakaa", "älkää lähettäkö",
    ),
    "sv": ("avregistrera", "ta bort mig", "sluta skicka", "avsluta prenumeration*"),
}  # fmt: skip

# --- auto-replies -----------------------------------------------------------------------------
AUTO_REPLY_SUBJECT_PHRASES: dict[str, tuple[str, ...]] = {
    "en": (
        "out of office", "out of the office", "automatic reply", "autoreply", "auto reply",
        "auto response", "away from the office", "on vacation", "on holiday", "on leave",
    ),
    "fi": ("poissa", "poissaolo*", "lomalla", "automaattinen vastaus", "lomailmoitus"),
    "sv": (
        "frånvaro*", "frånvarande", "autosvar", "automatiskt svar", "ej på kontoret",
        "inte på kontoret", "på semester",
    ),
}  # fmt: skip
# In the text only phrases an autoresponder writes: a person may mention a holiday in a reply.
AUTO_REPLY_BODY_PHRASES: dict[str, tuple[str, ...]] = {
    "en": (
        "i am out of the office", "i'm out of the office", "i am out of office",
        "i'm out of office", "i am currently out of", "i will be out of the office",
        "i am away from the office", "with limited access to email", "this is an automatic reply",
        "this is an automated response",
    ),
    "fi": (
        "olen poissa toimistolta", "olen poissa toimistosta", "olen lomalla", "olen vuosilomalla",
        "tämä on automaattinen vastaus", "palaan toimistolle",
    ),
    "sv": (
        "jag är på semester", "jag är ledig", "jag är tjänstledig", "jag är borta från kontoret",
        "jag är inte på kontoret", "detta är ett automatiskt svar",
    ),
}  # fmt: skip
# A date written with no digits counts only with one of these words ("back on Monday");
# dateparser alone would also take "may", "the sun" or "to" (Finnish "to" = Thursday).
RETURN_DAY_WORDS = re.compile(
    r"monday|tuesday|wednesday|thursday|friday|saturday|sunday|tomorrow|next week"
    r"|maanantai|tiistai|keskiviikko|torstai|perjantai|lauantai|sunnuntai|huomenna|ensi viiko"
    r"|måndag|tisdag|onsdag|torsdag|fredag|lördag|söndag|i ?morgon|nästa vecka",
    re.IGNORECASE,
)

# --- bounces without a format flufl.bounce knows ---------------------------------------------
BOUNCE_SENDERS: tuple[str, ...] = (
    "mailer-daemon", "mailer daemon", "postmaster", "mail delivery", "microsoftexchange",
)  # fmt: skip
BOUNCE_SUBJECT_PHRASES: dict[str, tuple[str, ...]] = {
    "en": (
        "undeliverable", "undelivered mail", "delivery status notification", "delivery failure",
        "delivery has failed", "mail delivery failed", "failure notice", "returned mail",
        "could not be delivered", "delivery delayed", "delayed mail", "not delivered",
        "non-delivery", "nondeliverable", "delivery notification", "message status",
    ),
    "fi": ("toimittamaton", "ei voitu toimittaa", "toimitus epäonnistui", "ei toimitettavissa"),
    "sv": ("olevererbar*", "kunde inte levereras", "leverans misslyckades", "ej levererat"),
}  # fmt: skip
DELAY_SUBJECT_PHRASES: dict[str, tuple[str, ...]] = {
    "en": ("delay*",),
    "fi": ("viivästy*",),
    "sv": ("försen*", "fördröj*"),
}

# --- client header lines mail-parser-reply lacks, in its language-table form ------------------
_Q = r"(?:> ?)*"  # the line may itself be quoted


def _name_first(verb: str) -> str:
    """ "Sanna Lehto <sanna@x> VERB 4.1.2027 kello 10.00:" or "... <sanna@x> VERB:" """
    return (
        rf"[^\n]{{1,200}}?\s{verb}\s[^\n]{{0,80}}?\d[^\n]{{0,80}}:"
        rf"|[^\n]{{0,200}}?@[^\s>]+>?\)?\s?{verb}:"
    )


CLIENT_HEADERS_ADDED: dict[str, dict[str, str]] = {
    "fi": {
        # Gmail and our own quotes: "ma 4.1.2027 klo 10.00 Sanna Lehto <sanna@x> kirjoitti:"
        # (Gmail may wrap it once; its phone app writes "4. tammik. 2027"); Apple Mail and
        # Thunderbird put the name first; old Outlook: "-----Alkuperäinen viesti-----".
        # One capturing group only: the library collects the texts of all groups as headers.
        "wrote_header": (
            rf"^({_Q}(?:"
            r"(?:(?:ma|ti|ke|to|pe|la|su)\.?\s+)?\d{1,2}\.\s?(?:\d{1,2}\.|[^\W\d_]+\.?)\s?\d{4}"
            r"[^\n]{0,200}?(?:\n[^\n]{0,200}?)?\skirjoitti:"
            rf"|{_name_first('kirjoitti')}"
            r"|-{5,} ?Alkuperäinen viesti ?-{5,}"
            r"))$"
        ),
        # Outlook: "Lähettäjä: ... / Lähetetty: ... / Vastaanottaja: ... / Aihe: ..."
        "from_header": (
            rf"((?:(?:^|\n|\n{_Q})[* ]*"
            r"(?:Lähettäjä|Lähetetty|Vastaanottaja|Kopio|Aihe|Päivämäärä|Päiväys):"
            r"[ *]*(?:\s{,2}).*){2,}(?:\n.*){,1})"
        ),
    },
    # Apple Mail and Thunderbird with the name first; old Outlook
    "sv": {
        "wrote_header": (
            rf"^({_Q}(?:{_name_first('skrev')}|-{{5,}} ?Ursprungligt meddelande ?-{{5,}}))$"
        )
    },
}


class QuotedHistory(_ReplySplitter):  # type: ignore[misc]
    """mail-parser-reply's splitter of a body into replies, with CLIENT_HEADERS_ADDED."""

    def _get_language_regex(self, language: str, regex_key: str) -> str:
        added = CLIENT_HEADERS_ADDED.get(language, {}).get(regex_key, "")
        if language == "fi":  # not in the library's table at all
            return added
        known = str(super()._get_language_regex(language=language, regex_key=regex_key))
        return "|".join(r for r in (known, added) if r)


# --- matching -----------------------------------------------------------------------------------
PhraseRules = list[tuple[str, str, re.Pattern[str]]]


def phrases(table: dict[str, tuple[str, ...]]) -> PhraseRules:
    """(language, phrase, pattern) for each phrase of a table, in table order."""
    rules = []
    for language, entries in table.items():
        for phrase in entries:
            stem = phrase.endswith("*")
            words = [re.escape(w) for w in phrase.rstrip("*").split()]
            body = r"[\W_]+".join(words)
            pattern = rf"(?<!\w){body}" + (r"\w*" if stem else r"(?!\w)")
            rules.append((language, phrase, re.compile(pattern, re.IGNORECASE)))
    return rules


NEGATIVE = phrases(NEGATIVE_PHRASES)
POSITIVE = phrases(POSITIVE_PHRASES)
UNSUBSCRIBE = phrases(UNSUBSCRIBE_PHRASES)
AUTO_REPLY_SUBJECTS = phrases(AUTO_REPLY_SUBJECT_PHRASES)
AUTO_REPLY_BODY = phrases(AUTO_REPLY_BODY_PHRASES)
BOUNCE_SUBJECTS = phrases(BOUNCE_SUBJECT_PHRASES)
DELAY_SUBJECTS = phrases(DELAY_SUBJECT_PHRASES)


def normalise(text: str) -> str:
    """Curly apostrophes made straight, so "don’t" is "don't"."""
    return text.replace("\u2019", "'").replace("\u02bc", "'")


def first_match(rules: PhraseRules, text: str) -> tuple[str, str] | None:
    """(language, phrase) of the first rule that matches `text`, or None."""
    clean = normalise(text)
    for language, phrase, pattern in rules:
        if pattern.search(clean):
            return language, phrase
    return None


def all_matches(rules: PhraseRules, text: str) -> Iterator[tuple[str, str, re.Match[str], str]]:
    """Every match of every rule, in rule order, with the normalised text it was found in."""
    clean = normalise(text)
    for language, phrase, pattern in rules:
        for match in pattern.finditer(clean):
            yield language, phrase, match, clean


_WORD = re.compile(r"[\w']+")
_CLAUSE_END = re.compile(r"[.,;:!?()\n]|\b(?:" + "|".join(CLAUSE_WORDS) + r")\b", re.IGNORECASE)


def negator_near(clean: str, match: re.Match[str], language: str) -> str | None:
    """The negator of `language` that turns this match around, if any: up to three words before
    it in the same clause, or (Swedish) the word right after it."""
    before = clean[: match.start()]
    ends = list(_CLAUSE_END.finditer(before))
    clause = before[ends[-1].end() :] if ends else before
    for word in _WORD.findall(clause)[-3:]:
        if word.casefold() in NEGATORS.get(language, ()):
            return word
    after = _WORD.match(clean[match.end() :].lstrip(" "))
    if after and after.group().casefold() in NEGATORS_AFTER.get(language, ()):
        return after.group()
    return None
