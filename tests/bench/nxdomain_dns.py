#!/usr/bin/env python3
"""A DNS responder on 127.0.0.1:10053 that answers NXDOMAIN at once to every query, for
benchmarks: the server's sender checks then never wait for a resolver. Runs until killed.

    python3 tests/bench/nxdomain_dns.py &
"""
import pathlib
import socket
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "e2e"))
from hook_server import Dns  # noqa: E402

d = Dns.__new__(Dns)
d.a, d.silent = {}, set()
d.queries = type("NoLog", (), {"append": lambda self, x: None})()
d.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
d.sock.bind(("127.0.0.1", 10053))
d.addr = "127.0.0.1:10053"
d.serve()
