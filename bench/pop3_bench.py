#!/usr/bin/env python3
"""POP3 sessions per second: login (USER/PASS), STAT, RETR of every message, QUIT.

Not a test: a measurement. It starts its own Corvus (and, with --dovecot, a Dovecot on the
same messages), gives each client its own account (POP3 locks the maildrop, so clients cannot
share one) with --messages messages of about --size bytes delivered over SMTP, then runs
--clients concurrent clients, each in its own process, for --seconds and counts completed
sessions. Every RETR answer is checked for its size and terminator.

    cargo build --release
    python3 bench/pop3_bench.py --corvus-bin target/release/corvus [--dovecot]

Loopback only; bounded in time; stops by itself.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import pathlib
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "tests" / "e2e"))  # the `support` package

import support.server  # noqa: E402
from support.dns import DnsServer  # noqa: E402
from support.net import free_port, port_open  # noqa: E402
from support.server import PASSWORD, POP3, Server, with_preset  # noqa: E402


def make_message(i: int, size: int) -> bytes:
    head = (
        "From: Bench <bench@remote.test>\r\nTo: user@example.org\r\n"
        "Subject: bench message %d\r\nMessage-ID: <bench-%d@remote.test>\r\n"
        "Date: Mon, 04 Mar 2024 10:11:12 +0000\r\n\r\n" % (i, i)
    ).encode()
    line = b"The quick brown fox jumps over the lazy dog. 0123456789 abcdefghijklmnop\r\n"
    body = b""
    while len(head) + len(body) + len(line) <= size:
        body += line
    body += b".a line that needs dot-stuffing\r\n"
    return head + body


class Client:
    """A minimal POP3 client over a raw socket."""

    def __init__(self, port: int):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""
        self.line()

    def line(self) -> bytes:
        while True:
            i = self.buf.find(b"\r\n")
            if i >= 0:
                line, self.buf = self.buf[:i], self.buf[i + 2:]
                return line
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError("server closed the connection")
            self.buf += chunk

    def cmd(self, c: bytes) -> bytes:
        self.sock.sendall(c + b"\r\n")
        r = self.line()
        if not r.startswith(b"+OK"):
            raise RuntimeError("%s -> %s" % (c.decode(errors="replace"), r.decode(errors="replace")))
        return r

    def body(self) -> int:
        """Read a multi-line body; returns its length up to the terminator."""
        while True:
            i = self.buf.find(b"\r\n.\r\n")
            if i >= 0:
                n = i + 2
                self.buf = self.buf[i + 5:]
                return n
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError("server closed the connection inside a message")
            self.buf += chunk


def one_session(port: int, user: str, messages: int) -> None:
    c = Client(port)
    c.cmd(b"USER " + user.encode())
    c.cmd(b"PASS " + PASSWORD.encode())
    stat = c.cmd(b"STAT").split()
    if int(stat[1]) != messages:
        raise RuntimeError("STAT says %s messages, expected %d" % (stat[1], messages))
    for n in range(1, messages + 1):
        c.cmd(b"RETR %d" % n)
        if c.body() < 1000:
            raise RuntimeError("short message")
    c.cmd(b"QUIT")
    c.sock.close()


def worker(port: int, user: str, messages: int, start: float, stop: float, out) -> None:
    while time.time() < start:
        time.sleep(0.001)
    done, latencies, errors = 0, [], 0
    while time.time() < stop:
        t = time.perf_counter()
        try:
            one_session(port, user, messages)
        except Exception as e:  # count and go on; the report shows errors
            errors += 1
            if errors == 1:
                print("client %s: %s" % (user, e), file=sys.stderr)
            time.sleep(0.01)
            continue
        latencies.append(time.perf_counter() - t)
        done += 1
    out.put((done, latencies, errors))


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads) so far."""
    fields = pathlib.Path("/proc/%d/stat" % pid).read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_load(
    name: str, port: int, users: list[str], messages: int, seconds: float, pid: int | None = None
) -> dict:
    # One warm-up session per user (first login runs argon2 / fills caches), then the run.
    for u in users:
        one_session(port, u, messages)
    q = mp.Queue()
    start = time.time() + 0.5
    stop = start + seconds
    procs = [mp.Process(target=worker, args=(port, u, messages, start, stop, q)) for u in users]
    for p in procs:
        p.start()
    cpu0 = cpu_seconds(pid) if pid else 0.0
    results = [q.get(timeout=seconds + 120) for _ in procs]
    cpu = cpu_seconds(pid) - cpu0 if pid else None
    for p in procs:
        p.join()
    sessions = sum(r[0] for r in results)
    lat = sorted(x for r in results for x in r[1])
    res = {
        "name": name,
        "sessions": sessions,
        "errors": sum(r[2] for r in results),
        "rate": sessions / seconds,
        "p50_ms": 1000 * statistics.median(lat) if lat else float("nan"),
        "p99_ms": 1000 * lat[int(len(lat) * 0.99)] if lat else float("nan"),
    }
    server_cpu = ""
    if cpu is not None and sessions:
        server_cpu = "  server CPU %.2f s = %.0f us/session" % (cpu, 1e6 * cpu / sessions)
    print(
        "%-8s %6d sessions in %.0fs = %7.1f sessions/s  (%.0f RETR/s)  p50 %.1f ms  p99 %.1f ms  errors %d%s"
        % (name, sessions, seconds, res["rate"], res["rate"] * messages, res["p50_ms"], res["p99_ms"],
           res["errors"], server_cpu),
        flush=True,
    )
    return res


def start_dovecot(tmp: pathlib.Path, corvus: Server, users: list[str]) -> subprocess.Popen:
    """Dovecot POP3 on the same messages: each account exported from Corvus as a Maildir."""
    port = free_port()
    (tmp / "run").mkdir(parents=True)
    passwd = tmp / "passwd"
    passwd.write_text("".join("%s:{PLAIN}%s\n" % (u, PASSWORD) for u in users))
    for u in users:
        corvus.cli("mailbox", "export", u, "--format", "maildir", str(tmp / "home" / u / "Maildir"))
    # Dovecot refuses to run mail processes as root: hand the homes to the "mail" user.
    subprocess.run(["chown", "-R", "mail:mail", str(tmp / "home")], check=True)
    conf = tmp / "dovecot.conf"
    conf.write_text(
        f"""
protocols = pop3
listen = 127.0.0.1
base_dir = {tmp}/run
state_dir = {tmp}/state
log_path = {tmp}/dovecot.log
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain
first_valid_uid = 1
mail_location = maildir:~/Maildir
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {passwd}
}}
userdb {{
  driver = static
  args = uid=mail gid=mail home={tmp}/home/%u
}}
service pop3-login {{
  inet_listener pop3 {{
    port = {port}
  }}
}}
service imap-login {{
  inet_listener imap {{
    port = 0
  }}
}}
"""
    )
    proc = subprocess.Popen(["dovecot", "-F", "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    deadline = time.time() + 20
    while not port_open(port):
        if proc.poll() is not None or time.time() > deadline:
            log = (tmp / "dovecot.log").read_text() if (tmp / "dovecot.log").exists() else ""
            raise RuntimeError("dovecot did not start:\n" + log)
        time.sleep(0.1)
    proc.port = port
    return proc


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corvus-bin", default=os.environ.get("CORVUS_BIN") or support.server.CORVUS_BIN)
    ap.add_argument("--clients", type=int, default=10)
    ap.add_argument("--messages", type=int, default=30)
    ap.add_argument("--size", type=int, default=5000)
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--dovecot", action="store_true", help="also measure Dovecot on the same messages")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory (logs)")
    args = ap.parse_args()
    support.server.CORVUS_BIN = os.path.abspath(args.corvus_bin)

    tmp = pathlib.Path(tempfile.mkdtemp(prefix="pop3-bench-"))
    tmp.chmod(0o755)  # Dovecot's unprivileged login processes must reach base_dir
    os.environ["RUST_LOG"] = "warn"  # per-session debug lines would be measured too
    dns = DnsServer()
    corvus = Server(tmp / "corvus", dns.addr, **with_preset(POP3, pop3={"allow_plaintext_auth": True})).start()
    dovecot = None
    try:
        users = [corvus.add_user("bench%d" % i) for i in range(args.clients)]
        for u in users:
            for i in range(args.messages):
                corvus.deliver(u, make_message(i, args.size))
        print(
            "%d clients, %d messages of ~%d bytes each, %gs per server, binary %s, load average %s"
            % (args.clients, args.messages, args.size, args.seconds, args.corvus_bin,
               " ".join(pathlib.Path("/proc/loadavg").read_text().split()[:3])),
            flush=True,
        )
        results = [
            run_load("corvus", corvus.ports["pop3"], users, args.messages, args.seconds, corvus.proc.pid)
        ]
        if args.dovecot:
            if shutil.which("dovecot") is None:
                print("dovecot: not installed (apt-get install dovecot-pop3d)", file=sys.stderr)
            else:
                dovecot = start_dovecot(tmp / "dovecot", corvus, users)
                results.append(run_load("dovecot", dovecot.port, users, args.messages, args.seconds))
                print("corvus/dovecot: %.1fx" % (results[0]["rate"] / results[1]["rate"]))
    finally:
        if dovecot is not None:
            dovecot.send_signal(signal.SIGTERM)
            dovecot.wait(20)
        corvus.stop(expect=None)
        dns.close()
        if args.keep:
            print("kept %s" % tmp, file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
