"""A real DNS server on loopback for the ``doctor`` tests: dnslib's ``DNSServer`` (UDP and TCP
on one port) answering from a dict of records that a test edits while it runs.

It answers like an authoritative server: the records of a name, a CNAME followed within the
zone, NOERROR with no answer for a name that exists without that type, NXDOMAIN for a name
that does not exist at all. Nothing is forwarded anywhere.
"""

from __future__ import annotations

import socket
import threading
from dataclasses import dataclass, field

from dnslib import CNAME, MX, QTYPE, RCODE, RR, TXT, A, DNSRecord
from dnslib.server import BaseResolver, DNSHandler, DNSServer

TTL = 60


def _name(name: str) -> str:
    return name.lower().rstrip(".") + "."


def _txt_strings(text: str) -> list[bytes]:
    # One TXT record holds character-strings of at most 255 bytes; a long record (a DKIM
    # key) is published as several, which receivers join.
    data = text.encode()
    return [data[i : i + 255] for i in range(0, len(data), 255)] or [b""]


@dataclass
class Zone:
    """The records the server answers from: name -> list of (type, rdata)."""

    records: dict[str, list[tuple[str, object]]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, name: str, rtype: str, rdata: object) -> None:
        with self.lock:
            self.records.setdefault(_name(name), []).append((rtype, rdata))

    def txt(self, name: str, text: str) -> None:
        self.add(name, "TXT", TXT(_txt_strings(text)))

    def mx(self, name: str, host: str, preference: int = 10) -> None:
        self.add(name, "MX", MX(_name(host), preference))

    def a(self, name: str, address: str) -> None:
        self.add(name, "A", A(address))

    def cname(self, name: str, target: str) -> None:
        self.add(name, "CNAME", CNAME(_name(target)))

    def remove(self, name: str, rtype: str | None = None) -> None:
        """Forget ``name``'s records of ``rtype`` (all of them without a type)."""
        with self.lock:
            key = _name(name)
            kept = [r for r in self.records.get(key, []) if rtype is not None and r[0] != rtype]
            if kept:
                self.records[key] = kept
            else:
                self.records.pop(key, None)

    def answer(self, qname: str, qtype: str) -> tuple[int, list[RR]]:
        """(rcode, answer records) for one question, following CNAMEs inside the zone."""
        with self.lock:
            answers: list[RR] = []
            name = _name(qname)
            for _ in range(8):  # a CNAME chain longer than this is a loop
                records = self.records.get(name)
                if records is None:
                    return (RCODE.NXDOMAIN if not answers else RCODE.NOERROR), answers
                cnames = [r for r in records if r[0] == "CNAME"]
                if cnames and qtype != "CNAME":
                    rdata = cnames[0][1]
                    answers.append(RR(name, QTYPE.CNAME, rdata=rdata, ttl=TTL))
                    name = str(rdata.label)  # type: ignore[attr-defined]
                    continue
                answers += [
                    RR(name, getattr(QTYPE, rtype), rdata=rdata, ttl=TTL)
                    for rtype, rdata in records
                    if rtype == qtype or qtype == "ANY"
                ]
                return RCODE.NOERROR, answers
            return RCODE.SERVFAIL, []


class _ZoneResolver(BaseResolver):  # type: ignore[misc]
    def __init__(self, zone: Zone) -> None:
        self.zone = zone
        self.questions: list[tuple[str, str]] = []

    def resolve(self, request: DNSRecord, handler: DNSHandler) -> DNSRecord:
        reply = request.reply()
        question = request.q
        qtype = QTYPE[question.qtype]
        self.questions.append((str(question.qname).rstrip("."), qtype))
        rcode, answers = self.zone.answer(str(question.qname), qtype)
        reply.header.rcode = rcode
        reply.header.aa = 1
        for record in answers:
            reply.add_answer(record)
        return reply


class _Quiet:
    """dnslib's logger prints every query; the tests want their output clean."""

    def __getattr__(self, name: str) -> object:
        return lambda *args, **kwargs: None


class LoopbackDns:
    """A DNS server on 127.0.0.1 (UDP and TCP) answering from :attr:`zone`, for a ``with``
    block; the test adds and removes records while it runs."""

    def __init__(self, port: int | None = None) -> None:
        self.zone = Zone()
        self._resolver = _ZoneResolver(self.zone)
        self.port = port or _free_port()
        self._servers = [
            DNSServer(self._resolver, address="127.0.0.1", port=self.port, tcp=tcp, logger=_Quiet())
            for tcp in (False, True)
        ]

    def __enter__(self) -> LoopbackDns:
        for server in self._servers:
            # A short poll interval: shutdown() waits for it, twice per test otherwise 0.5 s.
            threading.Thread(
                target=server.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
            ).start()
        return self

    def __exit__(self, *exc: object) -> None:
        for server in self._servers:
            server.server.shutdown()
            server.server.server_close()

    @property
    def nameserver(self) -> str:
        """What ``outreach doctor --nameserver`` takes."""
        return f"127.0.0.1:{self.port}"

    @property
    def questions(self) -> list[tuple[str, str]]:
        """Every (name, type) asked so far."""
        return self._resolver.questions


def _free_port() -> int:
    # UDP and TCP on the same number: check that both are free before handing it out.
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("127.0.0.1", 0))
            port = int(udp.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind(("127.0.0.1", port))
                except OSError:
                    continue
            return port
    raise RuntimeError("no free port for the DNS server")
