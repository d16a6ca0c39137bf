"""Loopback networking for the tests and benchmarks (standard library only)."""

from __future__ import annotations

import random
import socket
import ssl

_handed_out: set[int] = set()


def _ephemeral_range() -> tuple[int, int]:
    """The kernel's range of source ports for outgoing connections."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            lo, hi = (int(x) for x in f.read().split())
        return lo, hi
    except (OSError, ValueError):
        return 32768, 60999


def free_port() -> int:
    """A TCP port free a moment ago on every local address, that this process has not
    handed out before (two listeners of one server must not get the same one).

    It lies below the kernel's ephemeral range: a port from that range (what binding to
    port 0 gives) can be taken between now and the server's bind as the source port of any
    outgoing connection, on any address; a server on 127.0.0.2 then failed to start with
    "Address already in use" (seen once in CI)."""
    lo, _ = _ephemeral_range()
    low_end = 20000
    if lo - low_end < 2000:
        low_end = 1024
    while True:
        port = random.randint(low_end, lo - 1)
        if port in _handed_out:
            continue
        with socket.socket() as s:
            try:
                s.bind(("0.0.0.0", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def tls_context() -> ssl.SSLContext:
    """Client TLS context accepting Corvus's self-signed certificate."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx
