#!/usr/bin/env python3
"""How long a delivery on one node takes to reach an IMAP session IDLE on another node
sharing the same PostgreSQL database (issue 23: "within 1 s").

This is a benchmark, not a test: it prints numbers and never fails on them.

Three Corvus nodes on 127.0.0.1–3 over a throwaway PostgreSQL (tests/e2e/support); a session
IDLEs in alice's INBOX on node 2; N messages are delivered one after another over SMTP on
node 1 (a connection each), and for each the time from the 250 after DATA to `* n EXISTS` on node 2 is taken.
Printed: median, 90th and 99th percentile and maximum, in milliseconds.

Usage:
  cargo build --release -p corvus
  CORVUS_BIN=target/release/corvus bench/cross_node_idle.py [--messages 200]
"""

import argparse
import os
import pathlib
import smtplib
import statistics
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "e2e"))
os.environ.setdefault("CORVUS_BIN", str(ROOT / "target" / "release" / "corvus"))

from support.cluster import Cluster, idle_wait  # noqa: E402
from support.dns import DnsServer  # noqa: E402
from support.postgres import Postgres  # noqa: E402
from support.server import ALICE  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=200)
    args = ap.parse_args()
    pg = Postgres()
    dns = DnsServer()
    base = pathlib.Path(tempfile.mkdtemp(prefix="corvus-xidle-"))
    c = Cluster(base, dns.addr, pg.database())
    try:
        c.start((ALICE,))
        r = c.imap_raw(1, ALICE)
        r.send("i1 IDLE\r\n")
        assert r.line().startswith(b"+ ")
        waits = []
        for n in range(1, args.messages + 1):
            with smtplib.SMTP(c[0].host, c[0].ports["smtp"], timeout=10) as s:
                s.ehlo("client.test")
                s.sendmail("sender@elsewhere.test", [ALICE],
                           f"Subject: m{n}\r\n\r\nbody {n}\r\n".encode())
                # Timed from the 250 after DATA (sendmail returns on it).
                line, waited = idle_wait(r, rb"\* %d EXISTS$" % n, 10)
            assert line is not None, f"no EXISTS for message {n} within 10 s"
            waits.append(waited * 1000)
        waits.sort()
        q = lambda p: waits[min(len(waits) - 1, int(p * len(waits)))]  # noqa: E731
        print(f"{len(waits)} deliveries on node 1 seen IDLE on node 2, ms from the 250: "
              f"median {statistics.median(waits):.1f}, p90 {q(0.9):.1f}, p99 {q(0.99):.1f}, "
              f"max {waits[-1]:.1f}")
        print(f"load average: {os.getloadavg()[0]:.1f}")
    finally:
        for node in c:
            if node.running:
                node.stop(expect=None)
        pg.close()
        dns.close()


if __name__ == "__main__":
    main()
