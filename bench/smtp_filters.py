#!/usr/bin/env python3
"""SMTP throughput with rspamd, and with a milter, in the hook chain, against none (issue 24).

Each round starts a fresh release Corvus per configuration (no filter; rspamd; the pymilter
test milter) and sends MESSAGES messages of 2 KB over SESSIONS concurrent connections with
smtp-source (Debian package postfix), one recipient, sender authentication off. It prints the
rate, Corvus's CPU per message, the filter's CPU per message, and for the milter the events
(round trips) per message from the milter's own log. Corvus's share of the filtering cost is
its CPU per message with the filter minus without.

    cargo build --release && bench/smtp_filters.py [--messages 3000] [--sessions 10] [--rounds 3]

rspamd, redis-server and python3-milter come from Debian (tests/run installs them); the
filters run offline exactly as in tests/e2e/test_filters.py (tests/e2e/support/filters.py).
"""

import argparse
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "e2e"))
from support.filters import Milter, Rspamd  # noqa: E402
from support.net import free_port  # noqa: E402

BIN = os.environ.get("BENCH_CORVUS", str(ROOT / "target" / "release" / "corvus"))
TICK = os.sysconf("SC_CLK_TCK")


def ticks(pids):
    """User + system CPU ticks of these processes and their threads (children too)."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except OSError:
            pass
    return total


def group(pgid):
    """The pids of process group `pgid`."""
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                if os.getpgid(int(d)) == pgid:
                    out.append(int(d))
            except OSError:
                pass
    return out


def round_(label, hooks, messages, sessions, dns_port, filter_pids=()):
    work = pathlib.Path(tempfile.mkdtemp(prefix="corvus-filter-bench."))
    port = free_port()
    try:
        (work / "data").mkdir()
        (work / "corvus.toml").write_text(f"""
hostname = "mx.example.test"
data_dir = "{work / 'data'}"
domains = ["example.test"]
[listen]
smtp = "127.0.0.1:{port}"
[dns]
nameservers = ["127.0.0.1:{dns_port}"]
[sender_auth]
enabled = false
[smtp]
max_messages_per_session = 1000000
[log]
level = "warn"
{hooks}
""")
        subprocess.run([BIN, "-c", str(work / "corvus.toml"), "user", "add", "alice@example.test",
                        "--password", "x"], check=True, capture_output=True)
        srv = subprocess.Popen([BIN, "-c", str(work / "corvus.toml"), "serve"],
                               stdout=open(work / "out.log", "wb"), stderr=subprocess.STDOUT)
        import socket
        for _ in range(300):
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        pids = list(filter_pids)
        c0, f0, t0 = ticks([srv.pid]), ticks(pids), time.monotonic()
        subprocess.run(["smtp-source", "-c", "-s", str(sessions), "-m", str(messages), "-l", "2048",
                        "-S", "Your invoice for November", "-f", "sender@remote.example",
                        "-t", "alice@example.test", f"127.0.0.1:{port}"],
                       check=True, stdout=subprocess.DEVNULL)
        t1, c1, f1 = time.monotonic(), ticks([srv.pid]), ticks(pids)
        srv.terminate()
        srv.wait(30)
        rate = messages / (t1 - t0)
        cpu = (c1 - c0) / TICK * 1e6 / messages
        fcpu = (f1 - f0) / TICK * 1e6 / messages
        print(f"{label}: {rate:.0f} msg/s, Corvus CPU {cpu:.0f} µs/msg"
              + (f", filter CPU {fcpu:.0f} µs/msg" if pids else ""), flush=True)
        return rate, cpu
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=3000)
    ap.add_argument("--sessions", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--milter-messages", type=int, default=600,
                    help="messages per milter round (the Python test milter is slow)")
    a = ap.parse_args()
    dns_port = free_port()
    dns = subprocess.Popen([sys.executable, str(ROOT / "bench" / "nxdomain_dns.py"), str(dns_port)])
    rspamd = Rspamd().start()
    milter = Milter().start()
    try:
        rspamd_pids = group(os.getpgid(rspamd.rspamd.proc.pid))
        rspamd_hook = (f'[[hooks]]\nrspamd = "{rspamd.url}"\n'
                       'config = { learn = false, junk_score = 6.0, reject_score = 15.0 }\n')
        milter_hook = f'[[hooks]]\nmilter = "{milter.address}"\n'
        results = {}
        for r in range(1, a.rounds + 1):
            for label, hooks, n, pids in [("no filter", "", a.messages, ()),
                                          ("rspamd   ", rspamd_hook, a.messages, rspamd_pids)]:
                results.setdefault(label, []).append(
                    round_(f"round {r}, {label}", hooks, n, a.sessions, dns_port, pids))
        base = sorted(c for _, c in results["no filter"])[len(results["no filter"]) // 2]
        with_r = sorted(c for _, c in results["rspamd   "])[len(results["rspamd   "]) // 2]
        print(f"median Corvus CPU: {base:.0f} µs/msg without, {with_r:.0f} with rspamd "
              f"(Corvus's share of the filtering: {with_r - base:.0f} µs/msg)")
        milter.clear()
        round_("milter (pymilter test milter)", milter_hook, a.milter_messages, a.sessions, dns_port,
               [milter.proc.proc.pid])
        events = milter.events()
        # The test milter logs every callback but the body's (one chunk for a 2 KB message).
        per_msg = sum(1 for e in events if e["ev"] in ("mail", "rcpt", "data", "header", "eoh", "eom"))
        per_msg = per_msg / a.milter_messages + 1
        conns = sum(1 for e in events if e["ev"] == "connect")
        print(f"milter round trips: {per_msg:.1f} per message (MAIL, RCPT, DATA, each header, end of "
              f"header, one body chunk, end of message) and 2 per connection (connect, HELO) over "
              f"{conns} connections")
    finally:
        milter.cleanup()
        rspamd.cleanup()
        dns.terminate()


if __name__ == "__main__":
    main()
