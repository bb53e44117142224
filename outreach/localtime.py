"""Times as people read them: local, to the minute, with the zone. ``--json`` keeps ISO UTC.

Which zone: a row that belongs to a mailbox (a reply to it, a task for its rep, the mailbox
itself) is shown in that mailbox's ``timezone``; everything else (a prospect's history, the
daemons, the CRM hand-offs) in ``[sending] timezone``, the team's own. Due times of a
prospect's next step are planned in the prospect's zone and shown there (``schedule``).
"""

from __future__ import annotations

from datetime import date, datetime, time
from zoneinfo import ZoneInfo

from outreach.config import Config
from outreach.errors import OutreachError

FORMAT = "%Y-%m-%d %H:%M %Z"
FORMAT_SECONDS = "%Y-%m-%d %H:%M:%S %Z"  # for the gaps between two sends, a minute or two


def local(
    moment: datetime | None, zone: str | ZoneInfo, missing: str = "-", *, seconds: bool = False
) -> str:
    """``2027-01-04 10:00 EET``: ``moment`` (aware, UTC in the store) in ``zone``."""
    if moment is None:
        return missing
    tz = zone if isinstance(zone, ZoneInfo) else ZoneInfo(zone)
    return moment.astimezone(tz).strftime(FORMAT_SECONDS if seconds else FORMAT)


def team_zone(config: Config) -> str:
    """``[sending] timezone``: the zone of everything that belongs to no one mailbox."""
    return config.settings.sending.timezone


def mailbox_zone(config: Config, email: str | None) -> str:
    """The zone of the mailbox ``email`` (its own ``timezone``, else ``[sending]``'s); a
    mailbox since removed from the config reads in the team's zone."""
    for box in config.mailboxes:
        if box.email == email and box.timezone:
            return box.timezone
    return team_zone(config)


def day_start(value: str, now: datetime, zone: str, field: str = "--since") -> datetime:
    """The start of the day named by ``value`` (``today``, ``yesterday`` or ``YYYY-MM-DD``) in
    ``zone``, as an aware datetime; anything else is one clear error naming ``field``."""
    tz = ZoneInfo(zone)
    day = parse_day(value, now, zone, field, ("today", "yesterday"))
    return datetime.combine(day, time(0), tzinfo=tz)


_OFFSETS = {"yesterday": -1, "today": 0, "tomorrow": 1}


def parse_day(value: str, now: datetime, zone: str, field: str, words: tuple[str, ...]) -> date:
    """The date named by ``value`` (one of ``words``, or ``YYYY-MM-DD``), today being the date
    in ``zone`` at ``now``; anything else is one clear error naming ``field``."""
    today = now.astimezone(ZoneInfo(zone)).date()
    word = value.strip().lower()
    if word in words:
        return date.fromordinal(today.toordinal() + _OFFSETS[word])
    try:
        return date.fromisoformat(word)
    except ValueError:
        raise OutreachError(
            f"'{value}' is not a day", field=field, hint=f"{', '.join(words)} or YYYY-MM-DD"
        ) from None
