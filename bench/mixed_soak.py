#!/usr/bin/env python3
"""Long mixed-load run (issue 10): one Corvus, `corvus bench` driving SMTP + IMAP + POP3 at
once for --duration, then checks: zero errors, the server's memory over time, and a clean
SIGTERM exit.

Not a test: a measurement (see BENCHMARKS.md, "Mixed load"). It starts its own server on
loopback (temp config and data_dir, NXDOMAIN-only DNS) with smtp/imap/pop3 listeners and
plaintext login allowed on loopback, creates the accounts that `corvus bench
--per-client-accounts` uses (each IMAP and POP3 client has its own account, SMTP sends to
them in turn and sessions delete what they read, so the store stays small and any memory
growth would be the server's own), runs the bench with the server's PID, and stops the server.

    cargo build --release -p corvus
    python3 bench/mixed_soak.py --corvus-bin target/release/corvus --duration 10m
"""

from __future__ import annotations

import argparse
import pathlib
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "tests" / "e2e"))  # the `support` package

import support.server  # noqa: E402
from support.dns import DnsServer  # noqa: E402
from support.server import PASSWORD, Server, child_env  # noqa: E402

USER = "bench@example.org"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corvus-bin", default="target/release/corvus")
    ap.add_argument("--duration", default="10m")
    ap.add_argument("--clients", type=int, default=10, help="concurrent clients per protocol")
    ap.add_argument("--size", type=int, default=5120)
    a = ap.parse_args()

    support.server.CORVUS_BIN = str(pathlib.Path(a.corvus_bin).resolve())
    dns = DnsServer()
    with tempfile.TemporaryDirectory(prefix="corvus-soak-") as tmp:
        srv = Server(
            pathlib.Path(tmp),
            dns.addr,
            listeners=("smtp", "imap", "pop3"),
            smtp={"max_messages_per_session": 1000}, limits={"max_connections_per_ip": 1000},
            imap={"allow_plaintext_auth": True},
            pop3={"allow_plaintext_auth": True},
            # Not the harness's "info": one line per message would make the log the biggest
            # file here.
            log={"level": "warn"},
        )
        accounts = [USER] + [f"bench{i}@example.org" for i in range(1, 2 * a.clients + 1)]
        for acct in accounts:
            srv.add_user(acct, PASSWORD)
        srv.start()
        pid = srv.proc.pid
        cmd = [
            support.server.CORVUS_BIN, "bench",
            "--smtp", f"127.0.0.1:{srv.ports['smtp']}",
            "--imap", f"127.0.0.1:{srv.ports['imap']}",
            "--pop3", f"127.0.0.1:{srv.ports['pop3']}",
            "--user", USER, "--password", PASSWORD,
            "--clients", str(a.clients), "--duration", a.duration, "--size", str(a.size),
            "--server-pid", str(pid), "--per-client-accounts",
        ]
        print("$", " ".join(cmd[1:]), flush=True)
        started = time.time()
        bench = subprocess.run(cmd, env=child_env())
        print(f"bench exit {bench.returncode} after {time.time() - started:.0f}s", flush=True)
        counts = {acct: sum(srv.mailboxes(acct).values()) for acct in accounts}
        print("messages left per account:", " ".join(f"{k.split('@')[0]}={v}" for k, v in counts.items()))
        du = subprocess.run(["du", "-sh", str(srv.data_dir)], capture_output=True, text=True).stdout.split()[0]
        print(f"data_dir size: {du}")
        rc = srv.stop(expect=None)
        print(f"server exit code after SIGTERM: {rc}")
        errors = srv.stderr_path.read_text(errors="replace").count("ERROR")
        print(f"ERROR lines in the server log: {errors}")
    dns.close()
    return 0 if bench.returncode == 0 and rc == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
