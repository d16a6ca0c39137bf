"""The loopback DNS responder of the tests: every server under test uses one as its only name
server, so no lookup ever leaves the machine.

It answers from a zone of `(name, type, text)` records. A name not in the zone is NXDOMAIN;
a name in the zone without a record of the asked type gets an empty NOERROR answer. Names
given to `fail` get SERVFAIL, names given to `silence` no answer at all (the resolver times
out). Every question's name is logged in `queries` (lower case, no trailing dot).
"""

from __future__ import annotations

import re
import socket
import threading

import dns.message
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset


def _key(name: str) -> str:
    return name.lower().rstrip(".") + "."


class DnsServer:
    """A UDP DNS server on 127.0.0.1 (`addr` is "127.0.0.1:PORT"), answering with `ttl`."""

    def __init__(self, port: int = 0, ttl: int = 60):
        self.ttl = ttl
        self.zone: dict[str, list[tuple[str, str]]] = {}
        self.servfail: set[str] = set()
        self.silent: set[str] = set()
        self.queries: list[str] = []
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", port))
        self.addr = "127.0.0.1:%d" % self.sock.getsockname()[1]
        threading.Thread(target=self.serve, daemon=True).start()

    def add(self, name: str, rtype: str, text: str):
        """A record in presentation format ("10 mx.b.test." for MX). TXT text that is not
        quoted already is quoted here, in character-strings of at most 250 bytes."""
        if rtype == "TXT" and not text.startswith('"'):
            text = " ".join('"%s"' % text[i:i + 250] for i in range(0, len(text), 250))
        self.zone.setdefault(_key(name), []).append((rtype, text))

    def fail(self, name: str):
        """Answer SERVFAIL for `name`."""
        self.servfail.add(_key(name))

    def silence(self, name: str):
        """Never answer for `name`."""
        self.silent.add(_key(name))

    def answer(self, data: bytes) -> bytes | None:
        q = dns.message.from_wire(data)
        r = dns.message.make_response(q)
        for question in q.question:
            name = question.name.to_text().lower()
            self.queries.append(name.rstrip("."))
            if name in self.silent:
                return None
            if name in self.servfail:
                r.set_rcode(dns.rcode.SERVFAIL)
                continue
            if name not in self.zone:
                r.set_rcode(dns.rcode.NXDOMAIN)
                continue
            rtype = dns.rdatatype.to_text(question.rdtype)
            texts = [t for (ty, t) in self.zone[name] if ty == rtype]
            if texts:
                r.answer.append(dns.rrset.from_text_list(question.name, self.ttl, dns.rdataclass.IN, rtype, texts))
        return r.to_wire()

    def serve(self):
        while True:
            try:
                data, peer = self.sock.recvfrom(4096)
            except OSError:
                return
            try:
                reply = self.answer(data)
            except Exception:  # noqa: BLE001 (a broken query must not kill the responder)
                continue
            if reply is not None:
                self.sock.sendto(reply, peer)

    def resolve_txt(self, name: bytes, timeout=5):
        """dkimpy's dnsfunc: TXT lookups answered from the zone."""
        for ty, text in self.zone.get(_key(name.decode()), []):
            if ty == "TXT":
                return "".join(re.findall(r'"([^"]*)"', text)).encode()
        return None

    def close(self):
        self.sock.close()
