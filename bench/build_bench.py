"""Benchmark: building one outgoing message, today's builder against the wire builder.

Both sides do what the send path needs of a message: its bytes for SMTP (and the Sent folder)
and the plain text the outbox stores.

- email package: ``message.build_message`` (header registry, ``set_content``), then
  ``as_bytes()`` (what aiosmtplib's ``send_message`` flattens it to) and the plain part's
  ``get_content()``.
- wire: ``wire.render_message``, whose ``data`` and ``text`` are those two.

Three kinds of message, in equal numbers: a first cold email (ASCII, mailto unsubscribe), a
Finnish one (non-ASCII name and subject, HTML alternative, one-click unsubscribe), and the
third step's reply (``Re:`` subject, References chain, the quoted earlier message). The two
sides run in alternating rounds so that the shared machine's load falls on both alike; the
figure per side is the median round.

    python bench/build_bench.py [--messages 3000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from outreach.mail.message import Outgoing, Quote, build_message, make_message_id
from outreach.mail.wire import render_message

SENDER = "sanna.lehto@northwind.example"


def messages(count: int) -> list[Outgoing]:
    """``count`` messages, the three kinds in turn, each to its own prospect."""
    now = datetime(2027, 1, 5, 9, 30, tzinfo=UTC)
    first, second = make_message_id(SENDER), make_message_id(SENDER)
    out = []
    for n in range(count):
        to = f"p{n}@company{n % 97}.example"
        kind = n % 3
        if kind == 0:
            o = Outgoing(
                from_name="Sanna Lehto",
                from_email=SENDER,
                to_email=to,
                to_name=f"Prospect {n}",
                subject="Quick question",
                text="Hi,\n\nWould you like to hear more?\n\nSanna\n",
                html=None,
                message_id=make_message_id(SENDER),
                date=now,
                unsubscribe_mailto="unsubscribe@northwind.example",
            )
        elif kind == 1:
            o = Outgoing(
                from_name="Sanna Mäkelä",
                from_email=SENDER,
                to_email=to,
                to_name=f"Äinö Köngäs-{n}",
                subject="Työmaiden aikataulut: säästä viikko jokaisessa kohteessa",
                text="Hei Äinö,\n\nehtisitkö jutella ensi viikolla työmaiden aikatauluista?\n"
                "Tässä lyhyt case: https://northwind.example/case\n\nTerveisin,\nSanna\n",
                html="<html><body><p>Hei Äinö,</p><p>ehtisitkö jutella ensi viikolla "
                "työmaiden aikatauluista?</p><p>Terveisin,<br>Sanna</p></body></html>",
                message_id=make_message_id(SENDER),
                date=now,
                unsubscribe_mailto="unsubscribe@northwind.example",
                unsubscribe_url="https://northwind.example/u?t=" + "k" * 64,
                language="fi",
            )
        else:
            o = Outgoing(
                from_name="Sanna Lehto",
                from_email=SENDER,
                to_email=to,
                to_name=f"Prospect {n}",
                subject="Re: Quick question",
                text="Hi again,\n\njust checking this reached you.\n\nSanna\n",
                html=None,
                message_id=make_message_id(SENDER),
                date=now,
                in_reply_to=second,
                references=(first, second),
                unsubscribe_mailto="unsubscribe@northwind.example",
                quote=Quote(
                    sent_at=now - timedelta(days=4),
                    from_name="Sanna Lehto",
                    from_email=SENDER,
                    text="Hi,\n\nWould you like to hear more?\n\nSanna\n",
                ),
            )
        out.append(o)
    return out


def with_email_package(o: Outgoing) -> tuple[bytes, str]:
    message = build_message(o)
    plain = message.get_body(("plain",))
    assert plain is not None
    return message.as_bytes(), plain.get_content()


def with_wire(o: Outgoing) -> tuple[bytes, str]:
    message = render_message(o)
    return message.data, message.text


def one_round(
    build: Callable[[Outgoing], tuple[bytes, str]], batch: list[Outgoing]
) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    for o in batch:
        build(o)
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    batch = messages(args.messages)
    for o in batch[:3]:  # the same text goes out either way
        assert with_email_package(o)[1] == with_wire(o)[1]
    sides = {
        "email package (build_message)": with_email_package,
        "wire (render_message)": with_wire,
    }
    rounds: dict[str, list[tuple[float, float]]] = {name: [] for name in sides}
    for _ in range(args.rounds):
        for name, build in sides.items():
            rounds[name].append(one_round(build, batch))
    print(f"{args.messages:,} messages (3 kinds), {args.rounds} alternating rounds, median round")
    print(f"{'':34}{'msg/s':>10}{'CPU us/msg':>12}")
    cpu_us = {}
    for name, results in rounds.items():
        wall = statistics.median(r[0] for r in results)
        cpu_us[name] = statistics.median(r[1] for r in results) / args.messages * 1e6
        print(f"{name:34}{args.messages / wall:>10,.0f}{cpu_us[name]:>12,.1f}")
    old, new = cpu_us.values()
    print(f"wire / email package CPU per message: {new / old:.1%} ({old / new:.1f}x faster)")


if __name__ == "__main__":
    main()
