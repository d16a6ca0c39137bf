"""Several Corvus nodes sharing one PostgreSQL database (issue 23): node i listens on
127.0.0.i (Linux routes all of 127/8 to lo), has its own data_dir (control socket, whatever
stays local) and its own ports, and sends outbound mail from its own address
(`[delivery] source_ip`), so a remote MTA under test control tells by the peer address
which node delivered. Any node accepts SMTP, serves IMAP and POP3 and runs the shared queue.

`Cluster` makes the nodes (not started), `start()` creates the schema with
`corvus store migrate` and the accounts, then starts them. `HostImap` is the raw IMAP
client of support/clients.py on another loopback address (for IDLE, which the standard
library's imaplib has only from Python 3.14 on, and for NOOP loops whose untagged
responses must be matched to the NOOP that caused them). Nothing here imports pytest.
"""

from __future__ import annotations

import itertools
import pathlib
import re
import socket
import time

from .clients import PASSWORD, RawImap, quote
from .server import Server
from .wait import wait_for

LISTENERS = ("smtp", "submission", "imap", "pop3")


class HostImap(RawImap):
    """`RawImap` connected to `host:port` instead of 127.0.0.1: `cmd` returns the untagged
    responses up to its own tagged one."""

    def __init__(self, host: str, port: int, timeout: float = 10):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.buf = b""
        self.tags = itertools.count(1)
        self.greeting = self.line()


class Cluster:
    """`n` nodes over the database at `url`. `lease` is `[store] lease` (unset: the
    default); `delivery` are `[delivery]` settings every node gets (each adds its own
    `source_ip`); `hooks` are `[[hooks]]` tables every node gets; `sections` are further
    config tables merged into each node's."""

    def __init__(self, base: pathlib.Path, dns_addr: str, url: str, n: int = 3,
                 lease: str | None = None, delivery: dict | None = None,
                 pool_size: int = 6, hooks=(), **sections: dict):
        store = {"backend": "postgres", "url": url, "pool_size": pool_size}
        if lease:
            store["lease"] = lease
        self.nodes: list[Server] = []
        for i in range(1, n + 1):
            host = f"127.0.0.{i}"
            tables = {
                "store": store,
                "smtp": {"allow_plaintext_auth": True},
                "imap": {"allow_plaintext_auth": True},
                "pop3": {"allow_plaintext_auth": True},
                "delivery": {"source_ip": host, "retry": ["1s"], **(delivery or {})},
            }
            for k, v in sections.items():
                tables[k] = {**tables.get(k, {}), **v}
            self.nodes.append(Server(base / f"node{i}", dns_addr, listeners=LISTENERS,
                                     hostname=f"node{i}.example.org", host=host,
                                     shutdown_timeout="5s", client_timeout=10,
                                     hooks=list(hooks), **tables))

    def __getitem__(self, i: int) -> Server:
        return self.nodes[i]

    def __iter__(self):
        return iter(self.nodes)

    def node_at(self, ip: str) -> int:
        """The index of the node whose address (and outbound source address) is `ip`."""
        return [n.host for n in self.nodes].index(ip)

    def start(self, users=()):
        """Create the schema, the accounts (through node 0: they are in the shared
        database), start every node."""
        self.nodes[0].cli("store", "migrate")
        for u in users:
            self.nodes[0].add_user(u)
        for n in self.nodes:
            n.start()
        return self

    def restart(self, i: int):
        """Start node i again after a kill (its listeners up again)."""
        self.nodes[i].start()

    def stop(self):
        """SIGTERM every running node; each must exit 0."""
        problems = []
        for n in self.nodes:
            if n.running:
                try:
                    n.stop(expect=0)
                except AssertionError as e:
                    problems.append(str(e))
        assert not problems, "\n".join(problems)

    def imap_raw(self, i: int, user: str, select: str | None = "INBOX") -> HostImap:
        """A raw IMAP session on node i, logged in as `user`, with `select` selected."""
        n = self.nodes[i]
        r = HostImap(n.host, n.ports["imap"])
        r.ok(f"LOGIN {quote(user)} {quote(PASSWORD)}")
        if select:
            r.ok(f"SELECT {select}")
        return r

    def queue_empty(self, timeout: float = 20):
        """Wait until the shared queue is empty (asked through the first running node)."""
        node = next(n for n in self.nodes if n.running)
        wait_for(lambda: "queue is empty" in node.cli("queue", "list").stdout,
                 what="the shared queue to empty", timeout=timeout, interval=0.3)


def idle_wait(r: RawImap, pattern: bytes, timeout: float) -> tuple[bytes | None, float]:
    """During IDLE: read untagged lines until one matches `pattern` (re.match); return it
    (None on timeout) and the time taken."""
    start = time.monotonic()
    r.sock.settimeout(0.1)
    try:
        while time.monotonic() - start < timeout:
            try:
                line = r.line()
            except (socket.timeout, TimeoutError):
                continue
            if re.match(pattern, line):
                return line, time.monotonic() - start
    finally:
        r.sock.settimeout(10)
    return None, time.monotonic() - start
