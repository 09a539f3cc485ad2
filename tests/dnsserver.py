"""A small authoritative DNS server for tests: UDP on 127.0.0.1 port 0, answers the test sets.

Made with dnslib (the wire format) and gevent's ``DatagramServer``, in the test's own
process, so a test changes the answers between two lookups without a restart or a signal::

    dns = DnsServer().start()
    dns.set("web.test", ["127.0.0.2", "127.0.0.3"], ttl=1)
    dns.set_srv("_http._tcp.api.test", [(10, 5, 8001, "a.api.test")], glue={"a.api.test": ["127.0.0.2"]})
    dns.mode = "servfail"     # or "drop" (no answer: the client times out), or "refused"
    dns.refuse = {"AAAA"}     # REFUSED for questions of these types only (as dnsmasq does
                              # for a name it knows no AAAA of, without an upstream)

A name the server does not know gets NXDOMAIN; a known name without records of the type
asked gets an empty NOERROR answer. ``queries`` counts the questions by (name, type).
"""
from __future__ import annotations

import collections

from dnslib import AAAA, QTYPE, RCODE, RR, SRV, A, DNSRecord
from gevent.server import DatagramServer


class DnsServer:
    __test__ = False

    def __init__(self):
        self.records: dict[str, dict[str, list]] = {}   # name -> type -> [(rdata, ttl)]
        self.glue: dict[str, list[str]] = {}            # SRV targets' addresses sent along
        self.mode = "answer"
        self.refuse: set[str] = set()
        self.queries: collections.Counter = collections.Counter()
        self.server: DatagramServer | None = None
        self.port = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> "DnsServer":
        self.server = DatagramServer(("127.0.0.1", self.port), self._handle)
        self.server.start()
        self.port = self.server.address[1]
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None

    def set(self, name: str, addresses: list[str], ttl: int = 300) -> None:
        """The A and AAAA records of ``name`` (by the form of each address); [] = none."""
        name = name.rstrip(".").lower()
        self.records[name] = {
            "A": [(A(a), ttl) for a in addresses if ":" not in a],
            "AAAA": [(AAAA(a), ttl) for a in addresses if ":" in a],
        }

    def set_srv(self, name: str, records: list[tuple[int, int, int, str]], ttl: int = 300,
                glue: dict[str, list[str]] | None = None) -> None:
        """SRV records ``(priority, weight, port, target)``; ``glue`` is sent along as
        additional A/AAAA records (as Consul does); other targets need ``set``."""
        self.records[name.rstrip(".").lower()] = {
            "SRV": [(SRV(priority, weight, port, target), ttl)
                    for priority, weight, port, target in records]}
        self.glue.update(glue or {})

    def forget(self, name: str) -> None:
        """``name`` no longer exists: NXDOMAIN from now on."""
        self.records.pop(name.rstrip(".").lower(), None)

    def _handle(self, data: bytes, address) -> None:
        try:
            request = DNSRecord.parse(data)
        except Exception:  # noqa: BLE001 - not DNS: no answer, as a server would
            return
        question = request.q
        name = str(question.qname).rstrip(".").lower()
        kind = QTYPE[question.qtype]
        self.queries[(name, kind)] += 1
        if self.mode == "drop":
            return
        reply = request.reply()
        if self.mode in ("servfail", "refused") or kind in self.refuse:
            reply.header.rcode = RCODE.SERVFAIL if self.mode == "servfail" else RCODE.REFUSED
        elif name not in self.records:
            reply.header.rcode = RCODE.NXDOMAIN
        else:
            for rdata, ttl in self.records[name].get(kind, []):
                reply.add_answer(RR(question.qname, question.qtype, rdata=rdata, ttl=ttl))
                if kind == "SRV":
                    target = str(rdata.target).rstrip(".").lower()
                    for extra in self.glue.get(target, []):
                        rtype, record = (QTYPE.AAAA, AAAA(extra)) if ":" in extra \
                            else (QTYPE.A, A(extra))
                        reply.add_ar(RR(target + ".", rtype, rdata=record, ttl=ttl))
        self.server.sendto(reply.pack(), address)
