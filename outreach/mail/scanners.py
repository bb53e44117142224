"""Who fetched a pixel or followed a link: a person, or a machine acting on its own.

Pure, and plain tables a rep can read and extend, like :mod:`outreach.mail.reply_rules`. A fetch is
a machine's when it is a ``HEAD`` (a browser showing an image or following a link asks with
``GET``), when it comes within ``[tracking] machine_seconds`` of the send (a gateway or link
scanner checks the message as it is delivered; so does a message never recorded as sent yet),
or when its user agent names a privacy proxy, a scanner or a program. Everything else counts
as a person: that is a guess, and the README says what it cannot tell apart.

Google's and Yahoo's image proxies are people: Gmail fetches the images through
GoogleImageProxy when the reader opens the message (not at delivery), and then serves them
from its cache, so the first open is seen and later ones are not. Apple Mail Privacy
Protection fetches every image at delivery, opened or not, through a proxy whose user agent
is a bare ``Mozilla/5.0``: a machine.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

# (pattern, who): a user agent matching a pattern is that machine's. Case-insensitive.
MACHINES: tuple[tuple[str, str], ...] = (
    (r"^mozilla/5\.0$", "Apple Mail Privacy Protection (a bare Mozilla/5.0)"),
    (r"barracuda", "Barracuda"),
    (r"mimecast", "Mimecast"),
    (r"proofpoint", "Proofpoint"),
    (r"safe ?links", "Microsoft Safe Links"),
    (r"microsoft office existence discovery", "Microsoft Office link check"),
    (r"bingpreview", "Bing link preview"),
    (r"google-safety|googlebot", "Google's scanner"),
    (r"yahoo! slurp|yahooseeker", "Yahoo's scanner"),
    (r"headlesschrome|phantomjs|puppeteer|playwright", "a headless browser"),
    (r"facebookexternalhit|slackbot|twitterbot|linkedinbot|whatsapp|telegrambot|discordbot"
     r"|skypeuripreview", "a link preview"),
    (r"python-requests|python-urllib|aiohttp|httpx|curl/|wget|go-http-client|java/|libwww"
     r"|scrapy", "a program, not a browser"),
    (r"bot\b|crawler|spider", "a bot"),
)  # fmt: skip
# Proxies that fetch for a person who opened the message: counted, and named.
PEOPLE_PROXIES: tuple[tuple[str, str], ...] = (
    (r"googleimageproxy", "Gmail's image proxy"),
    (r"yahoomailproxy", "Yahoo Mail's image proxy"),
)
_MACHINES = [(re.compile(pattern, re.IGNORECASE), who) for pattern, who in MACHINES]
_PEOPLE = [(re.compile(pattern, re.IGNORECASE), who) for pattern, who in PEOPLE_PROXIES]


@dataclass(frozen=True)
class Verdict:
    """A person or a machine, and why; ``via``: the image proxy a person's open came through."""

    machine: bool
    why: str
    via: str | None = None

    @property
    def reason(self) -> str:
        """The event's reason: ``human`` or ``machine``."""
        return "machine" if self.machine else "human"


def classify(
    method: str,
    user_agent: str,
    sent_at: datetime | None,
    now: datetime,
    machine_seconds: int,
) -> Verdict:
    """Whether one fetch was a person's. ``sent_at``: when the message was recorded as sent
    (None: not yet, it is still being handed over)."""
    if method.upper() == "HEAD":
        return Verdict(True, "a HEAD request (a link check, not a browser)")
    agent = user_agent.strip()
    if not agent:
        return Verdict(True, "no user agent")
    for pattern, who in _MACHINES:
        if pattern.search(agent):
            return Verdict(True, who)
    if sent_at is None:
        return Verdict(True, "before the send was recorded (checked on delivery)")
    seconds = (now - sent_at).total_seconds()
    if seconds < machine_seconds:
        return Verdict(True, f"{max(seconds, 0):.0f} s after the send (within {machine_seconds} s)")
    for pattern, who in _PEOPLE:
        if pattern.search(agent):
            return Verdict(False, "a person", via=who)
    return Verdict(False, "a person")
