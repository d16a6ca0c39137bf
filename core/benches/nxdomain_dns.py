#!/usr/bin/env python3
"""A DNS responder for the SMTP benches: answers every query with NXDOMAIN at once.

Without an answering resolver, each session's reverse lookup (FCrDNS) and SPF/DMARC lookups
wait for their timeouts, and a bench measures those timeouts instead of the server.

    nxdomain_dns.py PORT      # listens on 127.0.0.1:PORT (UDP) until killed
"""
import socket
import sys

s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.1", int(sys.argv[1])))
while True:
    q, addr = s.recvfrom(512)
    if len(q) < 12:
        continue
    # Same id and question; QR, the client's RD, RA, RCODE 3 (NXDOMAIN); no records.
    s.sendto(q[:2] + bytes([0x81 | (q[2] & 0x01), 0x83]) + q[4:6] + b"\0\0\0\0\0\0" + q[12:], addr)
