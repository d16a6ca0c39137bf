#!/usr/bin/env python3
"""A DNS responder for the SMTP benches: answers every query with NXDOMAIN (and an SOA) at once.

Without an answering resolver, each session's reverse lookup (FCrDNS) and SPF/DMARC lookups
wait for their timeouts, and a bench measures those timeouts instead of the server.

    bench/nxdomain_dns.py [PORT]   # listens on 127.0.0.1:PORT (UDP, default 10053) until killed

smtp_rounds.sh starts one on a free port; ab_bench.sh expects one on 10053.
The e2e tests' responder (tests/e2e/support/dns.py) answers from a zone and logs every
query; this one has nothing to look up and keeps up with a benchmark's query rate.
"""
import socket
import sys

# The SOA in the authority section makes the answer cacheable for 300 s (RFC 2308), as a
# real server's negative answers are.
SOA = (b"\0" + (6).to_bytes(2, "big") + (1).to_bytes(2, "big") + (300).to_bytes(4, "big")
       + (22).to_bytes(2, "big") + b"\0\0" + b"".join(n.to_bytes(4, "big") for n in (1, 3600, 600, 86400, 300)))


def question_end(q: bytes) -> int:
    i = 12
    while i < len(q) and q[i]:
        i += 1 + q[i]
    return i + 5  # the root label, QTYPE, QCLASS


s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.1", int(sys.argv[1]) if len(sys.argv) > 1 else 10053))
while True:
    q, addr = s.recvfrom(512)
    if len(q) < 12:
        continue
    end = question_end(q)
    if end > len(q):
        continue
    # Same id and one question; QR, the client's RD, RA, RCODE 3 (NXDOMAIN); an SOA.
    s.sendto(q[:2] + bytes([0x81 | (q[2] & 0x01), 0x83]) + b"\0\1\0\0\0\1\0\0" + q[12:end] + SOA, addr)
