"""The reply vocabulary: a human reply's class, the same for the status, the reports, the
CRM hand-off and the A/B statistics (which import it from here, not the other way round)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from outreach.models import Event

REPLY_CLASSES = ("positive", "neutral", "negative", "unsubscribe")


def reply_class_of(event: Event) -> str | None:
    """The class of a human reply event (a rep's correction first), or None for any other."""
    if event.kind == "reply":
        default = event.reason or "neutral"
    elif event.kind == "unsubscribe":
        if str(event.data.get("rule", "")).startswith("sent to the unsubscribe address"):
            return None  # a message to the List-Unsubscribe mailto, not a reply
        default = "unsubscribe"
    elif event.kind == "stop" and event.reason == "replied":
        default = "neutral"
    elif event.kind == "goal":  # a meeting or a webinar booked: the best answer there is
        default = "positive"
    else:
        return None
    return str(event.data.get("class") or default)
