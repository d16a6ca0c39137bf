#!/usr/bin/env python3
"""IMAP benchmark for Corvus (not a test): fills a mailbox with N small messages, then times
SELECT on it, FETCH 1:* (FLAGS), FETCH of 1,000 full bodies, SORT and THREAD of the whole
mailbox, SEARCH BODY over 10,000 messages,
and measures the memory of idle IDLE sessions (RSS delta / sessions).

    cargo build --release
    python3 bench/imap_bench.py                      # 100,000 messages, 200 IDLE sessions
    python3 bench/imap_bench.py --messages 20000     # quicker
    python3 bench/imap_bench.py --dovecot            # the same against Debian's dovecot

Everything runs on 127.0.0.1 in a temp directory that is removed afterwards (--keep keeps it).
The client is plain sockets: timings include reading every response byte, not parsing it.

On PostgreSQL (`[store] backend = "postgres"`), SELECT of a 100,000-message mailbox, first
after a node starts and repeated: bench/pg_select.py (it uses this file's client and fill).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
PASSWORD = "bench-pass"
WORDS = ("alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike "
         "november oscar papa quebec romeo sierra tango uniform victor whiskey xray yankee "
         "zulu").split()


def corvus_env() -> dict:
    """Environment without CORVUS_* variables (Corvus reads them as configuration)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("CORVUS_")}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen | None = None, timeout: float = 60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listening on {port}")


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def pss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def message(i: int) -> bytes:
    """A small (~600 byte) message; 1 in 100 has the word "needle" in its body."""
    w = [WORDS[(i * 7 + k) % len(WORDS)] for k in range(12)]
    body = (" ".join(w) + "\r\n") * 4
    if i % 100 == 0:
        body += "There is a needle in this one.\r\n"
    return (f"From: Sender {i % 50} <sender{i % 50}@remote.test>\r\n"
            f"To: bench@example.org\r\n"
            f"Subject: Message number {i} {w[0]}\r\n"
            f"Date: Mon, 01 Jan 2024 10:{i // 60 % 60:02d}:{i % 60:02d} +0000\r\n"
            f"Message-ID: <bench-{i}@remote.test>\r\n"
            f"MIME-Version: 1.0\r\n"
            f"Content-Type: text/plain; charset=us-ascii\r\n"
            f"\r\n{body}").encode()


class Conn:
    """A minimal IMAP client that reads raw bytes until the tagged completion."""

    def __init__(self, port: int):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=600)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.n = 0
        self.buf = bytearray()
        self._read_line()

    def _read_line(self) -> bytes:
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise EOFError
            self.buf += chunk
        i = self.buf.index(b"\r\n")
        line = bytes(self.buf[:i])
        del self.buf[:i + 2]
        return line

    def cmd(self, text: str | bytes) -> tuple[bytes, int]:
        """Send one command; return (tagged line, response bytes)."""
        self.n += 1
        tag = b"B%07d" % self.n
        data = text.encode() if isinstance(text, str) else text
        self.sock.sendall(tag + b" " + data + b"\r\n")
        return self.wait(tag)

    def wait(self, tag: bytes) -> tuple[bytes, int]:
        marker = b"\r\n" + tag + b" "
        total = 0
        data = bytearray(b"\r\n") + self.buf
        self.buf = bytearray()
        while True:
            i = data.find(marker, max(0, len(data) - (1 << 20) - len(marker)))
            if i >= 0:
                j = data.find(b"\r\n", i + 2)
                if j >= 0:
                    line = bytes(data[i + 2:j])
                    total += i
                    self.buf = data[j + 2:]
                    if b" OK" not in line[:len(tag) + 4]:
                        raise RuntimeError(line.decode(errors="replace"))
                    return line, total
            if len(data) > (4 << 20):  # keep the window small, count what we drop
                keep = len(marker) + 2
                total += len(data) - keep
                data = data[-keep:]
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise EOFError(bytes(data[-200:]))
            data += chunk

    def timed(self, text: str) -> tuple[float, int]:
        t = time.perf_counter()
        _, n = self.cmd(text)
        return time.perf_counter() - t, n

    def close(self):
        try:
            self.sock.sendall(b"Z LOGOUT\r\n")
        except OSError:
            pass
        self.sock.close()


def login(port: int, user: str) -> Conn:
    c = Conn(port)
    c.cmd(f'LOGIN "{user}" "{PASSWORD}"')
    return c


def fill(port: int, user: str, mailbox: str, start: int, count: int, conns: int = 4,
         batch: int = 200):
    """APPEND `count` messages with LITERAL+, pipelined in batches over `conns` connections."""
    def worker(k: int):
        c = login(port, user)
        mine = list(range(start + k, start + count, conns))
        for b in range(0, len(mine), batch):
            chunk = mine[b:b + batch]
            out = bytearray()
            first = c.n + 1
            for i in chunk:
                c.n += 1
                m = message(i)
                out += b"B%07d APPEND %s {%d+}\r\n%s\r\n" % (c.n, mailbox.encode(), len(m), m)
            c.sock.sendall(out)
            for t in range(first, c.n + 1):
                c.wait(b"B%07d" % t)
        c.close()

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(conns)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


# --- servers ------------------------------------------------------------------------------


class Corvus:
    name = "Corvus"

    def __init__(self, base: pathlib.Path, binary: str, env: dict | None = None):
        self.base, self.binary = base, binary
        self.env = env or {}
        if self.env:
            self.name = "Corvus " + " ".join(f"{k}={v}" for k, v in self.env.items())
        self.port = free_port()
        self.smtp = free_port()
        self.config = base / "corvus.toml"
        self.config.write_text(f"""
hostname = "bench.example.org"
data_dir = "{base / 'data'}"
domains = ["example.org"]
shutdown_timeout = "5s"
[listen]
imap = "127.0.0.1:{self.port}"
smtp = "127.0.0.1:{self.smtp}"
[limits]
max_connections_per_ip = 10000
[smtp]
[imap]
allow_plaintext_auth = true
max_connections_per_user = 1000
[log]
level = "warn"
""")

    def start(self):
        self.log = open(self.base / "server.log", "ab")
        self.proc = subprocess.Popen([self.binary, "-c", str(self.config), "serve"],
                                     stdout=self.log, stderr=subprocess.STDOUT,
                                     env=dict(corvus_env(), **self.env))
        wait_port(self.port, self.proc)

    def add_user(self, name: str) -> str:
        user = f"{name}@example.org"
        subprocess.run([self.binary, "-c", str(self.config), "user", "add", user,
                        "--password", PASSWORD], check=True, capture_output=True,
                       env=corvus_env())
        return user

    def create(self, user: str, mailbox: str):
        c = login(self.port, user)
        c.cmd(f'CREATE "{mailbox}"')
        c.close()

    def pid(self) -> int:
        return self.proc.pid

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        rc = self.proc.wait(60)
        if rc != 0:
            print(f"warning: corvus exited {rc}", file=sys.stderr)


class Dovecot:
    """Debian's dovecot-imapd with a private config: passwd-file users, Maildir, no TLS."""
    name = "Dovecot"

    def __init__(self, base: pathlib.Path, binary: str = "/usr/sbin/dovecot"):
        self.base, self.binary = base, binary
        self.port = free_port()
        self.users: list[str] = []
        (base / "run").mkdir(parents=True, exist_ok=True)
        (base / "mail").mkdir(exist_ok=True)
        self.passwd = base / "passwd"
        self.passwd.write_text("")
        self.config = base / "dovecot.conf"
        # Dovecot refuses mail access as root: mail belongs to "nobody".
        os.chmod(base.parent, 0o755)
        os.chmod(base, 0o755)
        shutil.chown(base / "mail", "nobody", "nogroup")
        self.config.write_text(f"""
base_dir = {base}/run
state_dir = {base}/state
protocols = imap
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain
log_path = {base}/dovecot.log
mail_location = maildir:{base}/mail/%u
first_valid_uid = 1
# Filling 100,000 messages with Dovecot's per-APPEND fsyncs runs at ~50/s on this machine;
# the fill is setup, not a measured figure, so Dovecot skips fsync (Corvus does not).
mail_fsync = never
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {self.port}
  }}
  inet_listener imaps {{
    port = 0
  }}
  service_count = 0
  process_min_avail = 1
}}
service imap {{
  process_limit = 1024
}}
protocol imap {{
  mail_max_userip_connections = 1000
}}
default_process_limit = 1024
default_client_limit = 4096
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {self.passwd}
}}
userdb {{
  driver = static
  args = uid=nobody gid=nogroup home={base}/mail/%u
}}
namespace inbox {{
  inbox = yes
  separator = /
}}
""")

    def fill(self, user: str, mailbox: str, count: int):
        """Write `count` messages straight into the Maildir (APPEND to a Maildir of 100,000
        messages is far too slow: Dovecot rewrites its uidlist as it grows). Dovecot
        indexes them at the first SELECT."""
        root = self.base / "mail" / user
        if mailbox != "INBOX":
            root = root / ("." + mailbox)
        for sub in ("cur", "new", "tmp"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        now = int(time.time())
        for i in range(count):
            m = message(i)
            (root / "cur" / f"{now}.M{i}P1.bench,S={len(m)}:2,").write_bytes(m)
        subprocess.run(["chown", "-R", "nobody:nogroup", str(self.base / "mail")], check=True)

    def start(self):
        (self.base / "state").mkdir(exist_ok=True)
        self.proc = subprocess.Popen([self.binary, "-F", "-c", str(self.config)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port, self.proc)

    def add_user(self, name: str) -> str:
        user = f"{name}@example.org"
        with open(self.passwd, "a") as f:
            f.write(f"{user}:{{PLAIN}}{PASSWORD}::::::\n")
        return user

    def create(self, user: str, mailbox: str):
        c = login(self.port, user)
        c.cmd(f'CREATE "{mailbox}"')
        c.close()

    def pid(self) -> int:
        return self.proc.pid

    def total_rss_kb(self) -> int:
        """Dovecot runs a process per session: sum the PSS (shared pages split between the
        processes that map them) of the whole process tree."""
        out = subprocess.run(["ps", "-e", "-o", "pid=,ppid="], capture_output=True,
                             text=True).stdout
        kids: dict[int, list[int]] = {}
        for line in out.split("\n"):
            if line.strip():
                p, pp = map(int, line.split())
                kids.setdefault(pp, []).append(p)
        total, todo = 0, [self.proc.pid]
        while todo:
            p = todo.pop()
            total += pss_kb(p)
            todo += kids.get(p, [])
        return total

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(60)


# --- the benchmark ------------------------------------------------------------------------


def med(xs):
    return statistics.median(xs)


def run(server, args) -> dict:
    res: dict = {"server": server.name}
    server.start()
    try:
        user = server.add_user("bench")
        idle_user = server.add_user("idler")
        server.create(user, "Search10k")
        # Fill: APPEND over IMAP (Corvus), or Maildir files written directly (Dovecot).
        filler = getattr(server, "fill", None) or (
            lambda u, mb, n: fill(server.port, u, mb, 0, n, conns=args.fill_conns))
        t = time.perf_counter()
        filler(user, "INBOX", args.messages)
        res["fill_s"] = time.perf_counter() - t
        res["fill_rate"] = args.messages / res["fill_s"]
        filler(user, "Search10k", args.search)
        print(f"[{server.name}] filled {args.messages} messages in {res['fill_s']:.1f} s "
              f"({res['fill_rate']:.0f}/s)", flush=True)

        # SELECT of the big mailbox: a fresh connection each time. The first one after the
        # fill is reported apart (Corvus reads sled into its metadata cache, Dovecot scans
        # the Maildir and builds its index); the median is over the following ones.
        sel = []
        for _ in range(args.repeat + 3):
            c = login(server.port, user)
            dt, _ = c.timed("SELECT INBOX")
            sel.append(dt)
            c.close()
        res["first_select_ms"] = sel[0] * 1000
        res["select_ms"] = med(sel[1:]) * 1000
        res["select_min_ms"] = min(sel[1:]) * 1000
        c = login(server.port, user)
        c.timed("SELECT INBOX")
        res["reselect_ms"] = min(c.timed("SELECT INBOX")[0] for _ in range(args.repeat)) * 1000
        # FETCH 1:* (FLAGS)
        runs = [c.timed("FETCH 1:* (FLAGS)") for _ in range(args.repeat)]
        res["fetch_flags_ms"] = med([r[0] for r in runs]) * 1000
        res["fetch_flags_bytes"] = runs[0][1]
        # FETCH of 1,000 full bodies (contiguous, then spread over the mailbox).
        runs = [c.timed(f"FETCH 1:{args.bodies} (BODY.PEEK[])") for _ in range(args.repeat)]
        res["fetch_bodies_ms"] = med([r[0] for r in runs]) * 1000
        res["fetch_bodies_bytes"] = runs[0][1]
        step = max(1, args.messages // args.bodies)
        spread = ",".join(str(1 + i * step) for i in range(args.bodies))
        runs = [c.timed(f"FETCH {spread} (BODY.PEEK[])") for _ in range(args.repeat)]
        res["fetch_bodies_spread_ms"] = med([r[0] for r in runs]) * 1000
        # SORT and THREAD over the whole big mailbox (RFC 5256): the first run (Dovecot
        # builds its sort index then) and the median of the following ones.
        for name, command in (("sort_subject", "SORT (SUBJECT) UTF-8 ALL"),
                              ("sort_reverse_date", "SORT (REVERSE DATE) UTF-8 ALL"),
                              ("sort_from", "SORT (FROM) UTF-8 ALL"),
                              ("sort_arrival", "SORT (ARRIVAL) UTF-8 ALL"),
                              ("thread_references", "THREAD REFERENCES UTF-8 ALL")):
            runs = [c.timed(command)[0] for _ in range(args.repeat + 1)]
            res[f"{name}_first_ms"] = runs[0] * 1000
            res[f"{name}_ms"] = med(runs[1:]) * 1000
        # SEARCH BODY over the 10,000-message mailbox.
        c.cmd("SELECT Search10k")
        runs = [c.timed("SEARCH BODY needle") for _ in range(args.repeat)]
        res["search_body_ms"] = med([r[0] for r in runs]) * 1000
        runs = [c.timed("SEARCH SUBJECT \"number 99\"") for _ in range(args.repeat)]
        res["search_subject_ms"] = med([r[0] for r in runs]) * 1000
        c.close()

        # Memory per idle IDLE session on a small INBOX. A first batch of sessions is opened
        # and kept as warm-up (logins run argon2 on blocking threads, whose malloc arenas
        # keep ~19 MB each afterwards); the figure is the RSS growth of a second batch.
        filler(idle_user, "INBOX", 20)
        rss = server.total_rss_kb if hasattr(server, "total_rss_kb") else \
            (lambda: rss_kb(server.pid()))

        def open_idle(who: str, n: int) -> list[Conn]:
            out = []
            for _ in range(n):
                s = login(server.port, who)
                s.cmd("SELECT INBOX")
                s.sock.sendall(b"I IDLE\r\n")
                assert s._read_line().startswith(b"+")
                out.append(s)
            time.sleep(2)
            return out

        base_rss = rss()
        warm = open_idle(idle_user, args.idle)
        before = rss()
        sessions = open_idle(idle_user, args.idle)
        after = rss()
        res["rss_before_idle_kb"] = base_rss
        res["idle_sessions"] = args.idle
        res["idle_first_batch_kb_per_session"] = (before - base_rss) / args.idle
        res["idle_kb_per_session"] = (after - before) / args.idle
        for s in sessions + warm:
            s.sock.close()
        time.sleep(1)
        # The same with IDLE on the big mailbox (each session keeps its view of it).
        before = rss()
        sessions = open_idle(user, args.idle_big)
        after = rss()
        res["idle_big_sessions"] = args.idle_big
        res["idle_big_kb_per_session"] = (after - before) / max(1, args.idle_big)
        for s in sessions:
            s.sock.close()
    finally:
        server.stop()
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bin", default=os.environ.get("CORVUS_BIN",
                                                    str(ROOT / "target/release/corvus")))
    ap.add_argument("--messages", type=int, default=100_000)
    ap.add_argument("--bodies", type=int, default=1000)
    ap.add_argument("--search", type=int, default=10_000)
    ap.add_argument("--idle", type=int, default=200)
    ap.add_argument("--idle-big", type=int, default=20)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--fill-conns", type=int, default=4)
    ap.add_argument("--dovecot", action="store_true", help="also run against dovecot")
    ap.add_argument("--only-dovecot", action="store_true")
    ap.add_argument("--malloc-fixed", action="store_true",
                    help="run Corvus with MALLOC_MMAP_THRESHOLD_=131072: glibc then returns "
                         "argon2's 19 MB login buffers to the OS, so RSS shows session state "
                         "(builds before 018590a; Corvus now allocates with mimalloc)")
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()

    base = pathlib.Path(tempfile.mkdtemp(prefix="imap-bench-"))
    results = []
    try:
        if not args.only_dovecot:
            (base / "corvus").mkdir()
            env = {"MALLOC_MMAP_THRESHOLD_": "131072"} if args.malloc_fixed else {}
            results.append(run(Corvus(base / "corvus", args.bin, env), args))
        if args.dovecot or args.only_dovecot:
            (base / "dovecot").mkdir()
            results.append(run(Dovecot(base / "dovecot"), args))
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
        else:
            print("kept", base)
    for r in results:
        print(json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in r.items()}))
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
