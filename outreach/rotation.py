"""Which mailbox writes to each row of an import: rotation over several mailboxes.

``enroll --sender A --sender B`` (or ``--sender all``) spreads a file over mailboxes in
proportion to what each can still send; a prospect keeps one sender for every sequence, and
one company hears from one person.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta

from sqlalchemy import func, select

from outreach import reputation
from outreach.config import Mailbox
from outreach.models import Enrollment, MailboxState
from outreach.prospect_csv import ProspectRow
from outreach.workspace import Workspace

enrollments_t = Enrollment.__table__  # type: ignore[attr-defined]


# Free mail: people at gmail.com are not colleagues, so their domain does not pin a sender.
FREE_MAIL = frozenset(
    (
        "gmail.com googlemail.com outlook.com hotmail.com live.com msn.com yahoo.com icloud.com "
        "me.com aol.com proton.me protonmail.com gmx.com gmx.de web.de mail.com yandex.com "
        "hotmail.fi luukku.com suomi24.fi kolumbus.fi outlook.fi yahoo.se hotmail.se telia.com"
    ).split()
)
CAPACITY_DAYS = 5  # rotation weighs what each mailbox can send over this many sending days


@dataclass
class SenderChoice:
    """How an import picks each row's mailbox.

    One mailbox given (or only one configured): every row gets it. Several (``--sender A
    --sender B``, or ``--sender all``): rows are spread in proportion to what each mailbox can
    still send over the next :data:`CAPACITY_DAYS` sending days (its limit on each day, with
    the warm-up ramp, less what it sent today and its backlog due by then). A prospect keeps
    the sender of their earlier sequences, and colleagues at one company domain get the same
    sender (in this file, and as their live enrollments have it), when that mailbox is among
    those given. A ``sender`` column wins over all of it, row by row.
    """

    pool: list[Mailbox]
    capacity: dict[str, int]
    by_name: dict[str, Mailbox]
    assigned: dict[str, int] = field(default_factory=dict)
    domains: dict[str, str] = field(default_factory=dict)

    @property
    def rotating(self) -> bool:
        return len(self.pool) > 1

    @classmethod
    def make(
        cls, ws: Workspace, given: list[str], now: datetime, *, has_column: bool
    ) -> SenderChoice:
        """The mailboxes ``--sender`` gave (``all``: every configured one)."""
        config = ws.config
        boxes = config.mailboxes
        by_name: dict[str, Mailbox] = {}
        for box in boxes:
            by_name[box.email] = box
            by_name.setdefault(" ".join(box.name.lower().split()), box)
        pool: list[Mailbox] = []
        if any(g.strip().lower() == "all" for g in given):
            pool = list(boxes) or [config.mailbox(None)]  # none configured: that error
        elif given:
            for email in given:
                box = config.mailbox(email, field="--sender")
                if box not in pool:
                    pool.append(box)
        elif not (has_column and len(boxes) > 1):
            pool = [config.mailbox(None)]
        # else: every row names its own sender (a blank cell is rejected with its line)
        capacity = _capacities(ws, pool, now) if len(pool) > 1 else {}
        return cls(pool, capacity, by_name)

    def named(self, value: str) -> Mailbox | None:
        """The configured mailbox a ``sender`` cell names (its email or its name)."""
        return self.by_name.get(" ".join(value.lower().split()))

    def pick(self, row: ProspectRow, earlier: str | None, colleagues: str | None) -> Mailbox:
        """The mailbox for one row without a ``sender`` cell."""
        if not self.rotating:
            return self.pool[0]
        emails = {b.email: b for b in self.pool}
        domain = row.email.rpartition("@")[2]
        company = domain not in FREE_MAIL
        if earlier in emails:
            chosen = emails[earlier]  # one person for every sequence of the prospect
        elif company and domain in self.domains:
            chosen = emails[self.domains[domain]]
        elif company and colleagues in emails:
            chosen = emails[colleagues]
        else:
            chosen = self._most_behind()
        if company:
            self.domains.setdefault(domain, chosen.email)
        self.assigned[chosen.email] = self.assigned.get(chosen.email, 0) + 1
        return chosen

    def _most_behind(self) -> Mailbox:
        """The mailbox furthest below its share of the rows given out so far (plus this one):
        streaming, the split follows the weights to within one company per mailbox."""
        weights = {b.email: float(self.capacity.get(b.email, 0)) for b in self.pool}
        total = sum(weights.values())
        if total <= 0:  # every mailbox is full for days: spread evenly, they all wait
            weights = {b.email: 1.0 for b in self.pool}
            total = float(len(self.pool))
        n = sum(self.assigned.values()) + 1
        return max(
            self.pool,
            key=lambda b: weights[b.email] / total * n - self.assigned.get(b.email, 0),
        )


def _capacities(ws: Workspace, pool: list[Mailbox], now: datetime) -> dict[str, int]:
    """What each mailbox can still send over the next CAPACITY_DAYS sending days: its limit on
    each (the ramp included), less what it sent today and its backlog due by the last one."""
    out: dict[str, int] = {}
    with ws.store.session() as session:
        for box in pool:
            state = session.get(MailboxState, box.email)
            first = reputation.ramp_now(session, ws.config, box, now).first_day
            cal = ws.config.calendar(box)
            day = reputation.local_day(ws.config, box, now)
            days: list[date] = []
            while len(days) < CAPACITY_DAYS:
                if cal.is_sending_day(day):
                    days.append(day)
                day += timedelta(days=1)
            # A mailbox that never sent starts its ramp on the first of these days.
            start = first or days[0]
            total = sum(reputation.ramp(ws.config, box, start, d).limit for d in days)
            if state is not None and state.day == days[0].isoformat():
                total -= state.sent_on_day
            horizon = datetime.combine(days[-1] + timedelta(days=1), time(0), cal.timezone)
            backlog = session.execute(
                select(func.count())
                .select_from(enrollments_t)
                .where(
                    enrollments_t.c.sender == box.email,
                    enrollments_t.c.state == "active",
                    enrollments_t.c.due_at < horizon,
                )
            ).scalar_one()
            out[box.email] = max(total - backlog, 0)
    return out
