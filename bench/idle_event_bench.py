#!/usr/bin/env python3
"""Server CPU per delivery for an IMAP session idling in a big mailbox (issue 21).

Fills one INBOX with --messages messages (IMAP APPEND), then delivers --events messages to it
over SMTP twice: once with no IMAP session, once while a session has the INBOX selected and
waits in IDLE (it must see every EXISTS). The difference in the server's CPU time (user +
system, /proc/PID/stat), divided by the events, is what one delivery costs the watching
session: before the typed change feed that was a re-read of the whole mailbox per event.

    cargo build --release
    python3 bench/idle_event_bench.py --bin target/release/corvus
"""

from __future__ import annotations

import argparse
import os
import pathlib
import re
import smtplib
import sys
import tempfile
import threading
import time

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests" / "e2e"))  # the `support` package
from imap_bench import Corvus, fill, login  # noqa: E402
from support.dns import DnsServer  # noqa: E402


def cpu_seconds(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def deliver(port: int, user: str, n: int, tag: str):
    """`n` messages, 50 per SMTP session (below the per-session limit)."""
    for start in range(0, n, 50):
        s = smtplib.SMTP("127.0.0.1", port, timeout=60)
        s.ehlo("bench.test")
        for i in range(start, min(n, start + 50)):
            s.sendmail("sender@remote.test", [user],
                       f"Subject: {tag} {i}\r\nMessage-ID: <{tag}.{i}@remote.test>\r\n\r\nbody\r\n")
        s.quit()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin", required=True)
    ap.add_argument("--messages", type=int, default=100_000)
    ap.add_argument("--events", type=int, default=300)
    args = ap.parse_args()
    dns = DnsServer()  # NXDOMAIN for everything, at once: no resolver waits in the figures
    with tempfile.TemporaryDirectory(prefix="idle-bench-") as tmp:
        srv = Corvus(pathlib.Path(tmp), args.bin)
        srv.config.write_text(srv.config.read_text()
                              + f'[dns]\nnameservers = ["{dns.addr}"]\n')
        srv.start()
        try:
            user = srv.add_user("big")
            t = time.monotonic()
            fill(srv.port, user, "INBOX", 0, args.messages)
            print(f"filled {args.messages} messages in {time.monotonic() - t:.0f} s")
            warm = login(srv.port, user)
            warm.cmd("SELECT INBOX")
            warm.close()

            before = cpu_seconds(srv.pid())
            deliver(srv.smtp, user, args.events, "alone")
            alone = cpu_seconds(srv.pid()) - before

            idle = login(srv.port, user)
            idle.cmd("SELECT INBOX")
            idle.sock.sendall(b"I IDLE\r\n")
            want = args.messages + 2 * args.events
            seen = {"exists": 0}

            def reader():
                buf = b""
                while seen["exists"] < want:
                    chunk = idle.sock.recv(65536)
                    if not chunk:
                        return
                    buf += chunk
                    for m in re.finditer(rb"\* (\d+) EXISTS", buf):
                        seen["exists"] = max(seen["exists"], int(m.group(1)))
                    buf = buf[-64:]

            r = threading.Thread(target=reader, daemon=True)
            r.start()
            time.sleep(0.5)
            before = cpu_seconds(srv.pid())
            deliver(srv.smtp, user, args.events, "watched")
            r.join(120)
            watched = cpu_seconds(srv.pid()) - before
            assert seen["exists"] == want, f"IDLE saw {seen['exists']} of {want} messages"
            idle.sock.sendall(b"DONE\r\n")
            idle.close()
            per = (watched - alone) / args.events * 1000
            print(f"{args.events} deliveries: server CPU {alone:.2f} s alone, "
                  f"{watched:.2f} s with an IDLE session on {args.messages} messages; "
                  f"{per:.2f} ms of CPU per delivery for the watching session")
        finally:
            srv.stop()


if __name__ == "__main__":
    main()
