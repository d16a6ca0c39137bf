#!/usr/bin/env python3
"""SMTP inbound benchmark: Corvus against Postfix on the same machine, in one run.

This is a benchmark, not a test: it prints numbers and never fails on them.

What it measures, for each server and each concurrency (default 1, 10, 100):
  * end-to-end rate: N messages of 5 KB sent with Postfix's `smtp-source`, messages per
    second from the start of the run until all N are in the recipient's mailbox. Corvus
    files the message in the store (durably, group commit) before its 250 reply, so the
    time at which smtp-source exits is end-to-end; the count is verified afterwards.
    Postfix queues durably before its 250, then delivers with local(8) into a Maildir;
    the run ends when N files are in Maildir/new.
  * server CPU per message: utime+stime of the server process(es) from /proc before and
    after the run, divided by N (Postfix: master plus every child, including children that
    exited during the run, which show up in master's cutime/cstime).
  * memory per idle connection: RSS of the Corvus process before and after opening
    1000 idle connections that have read the 220 greeting; for Postfix (one smtpd process
    per connection, 100 processes by default) RSS and PSS of the smtpd processes.

With `--servers corvus,postfix,floor` (or `floor-threads`) it also runs smtp-floor
(bench/smtp-floor, built here with cargo): an SMTP responder that does nothing per
message but find the lines, reply, and append the message to a file with the same group-commit
fdatasync before its 250 — Corvus' I/O model (`floor`) or a thread per connection with blocking
I/O (`floor-threads`, Postfix smtpd's model). Its CPU per message is what loopback TCP, the
wake-ups and the disk flush cost on this machine: no real server can go below it.

Corvus on PostgreSQL (`[store] backend = "postgres"`), in the same run as the others:
  * `corvus-pg`: one Corvus node on PostgreSQL; SMTP on --pg-port, POP3 on the next port.
  * `corvus-pg3`: three Corvus nodes on one PostgreSQL database, each with its own data_dir,
    control socket and listeners (SMTP on --pg-port+2, +4, +6 on 127.0.0.1). The load is
    split over the nodes: one smtp-source per node, the concurrency as evenly as it goes
    (c=10: 4+3+3, c=100: 34+33+33; c=1 cannot be split and goes to the first node only, c=2
    to two), the messages in proportion to each node's connections (N/3 each when 3 divides
    c), so the three finish together. The run ends when the last smtp-source exits; its
    CPU is the sum over the three nodes. The output lists the split of each run.
  Each kind gets its own throwaway PostgreSQL cluster (bench/pg_cluster.py: initdb in the
  run's temporary directory, Unix socket only, run as the `postgres` user; Debian's
  binaries, the newest /usr/lib/postgresql/*/bin or --pg-bin), so that each kind's database
  CPU is its own. It runs PostgreSQL's durable defaults: fsync on, synchronous_commit on,
  full_page_writes on, the default wal_sync_method; the script reads them back, refuses to
  run if fsync or synchronous_commit is off, and prints them with the results. Schema by
  `corvus store migrate`, [store] pool_size from --pool-size (16) per node.
  Corvus commits each message to PostgreSQL before its 250, so here too the moment the
  last smtp-source exits is the end-to-end time; after each run (after the CPU readings)
  the INBOX is counted through the first node and must have grown by N (a count that falls
  short is polled again, and the end-to-end time then becomes the moment it was complete;
  the output says so).
  Besides the server CPU per message these kinds report PostgreSQL's: utime+stime of the
  cluster's processes from /proc before and after the run (postmaster, every live child,
  and through the postmaster's cutime/cstime the children that exited), and the total of
  both. The main table gets the columns "PostgreSQL CPU ms/msg" and "server + PostgreSQL
  CPU ms/msg", and a side-by-side table compares Corvus (sled), Corvus-pg, Corvus-pg3 and
  Postfix per concurrency. Memory per idle connection is also measured for corvus-pg.
  These kinds need a Corvus with the PostgreSQL backend (`corvus store migrate`).

Requirements: root (installs the postfix package when smtp-source is missing, creates a
Postfix instance `postfix-bench` with postmulti, and a local user `smtpbench` whose
~/Maildir receives Postfix's deliveries), python3, a release build of Corvus; for
corvus-pg and corvus-pg3 PostgreSQL's server (Debian: apt-get install postgresql).

Usage:
  cargo build --release -p corvus
  sudo bench/smtp_bench.py                     # Corvus and Postfix, default settings
  sudo bench/smtp_bench.py --servers corvus    # only Corvus
  sudo bench/smtp_bench.py --servers corvus,corvus-pg,corvus-pg3,postfix --seconds 10
  CORVUS_BIN=/path/to/corvus bench/smtp_bench.py --concurrency 10 --seconds 20

Everything it writes goes to a temporary directory (removed at the end unless --keep; the
PostgreSQL clusters too), /etc/postfix-bench, /var/spool/postfix-bench,
/var/lib/postfix-bench, /var/log/postfix-bench.log and ~smtpbench/Maildir (emptied at the
end). Postfix is left stopped. When the default Postfix instance's main.cf lacks what
Debian's package fills in (setgid_group and the like: a main.cf copied from main.cf.proto),
those are set to the package's values, since postmulti refuses to work without them.
"""

import argparse
import json
import math
import os
import poplib
import pwd
import re
import resource
import selectors
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time

CLK_TCK = os.sysconf("SC_CLK_TCK")
REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.join(REPO, "tests", "e2e"))
sys.path.insert(0, os.path.join(REPO, "bench"))
from support.postfix import listen_on  # noqa: E402  (shared with the differential tests)
from pg_cluster import PgCluster  # noqa: E402  (bench/pg_cluster.py: a durable throwaway PostgreSQL)
SMTP_SOURCE = "/usr/sbin/smtp-source"
DOMAIN = "bench.test"
SENDER = "sender@client.example"


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def sh(cmd, check=True, **kw):
    """Run a command (list), return CompletedProcess with text output."""
    r = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stdout}{r.stderr}")
    return r


# ---------------------------------------------------------------------------------------------
# /proc helpers


def proc_stat(pid):
    """(comm, ppid, utime, stime, cutime, cstime) in clock ticks, or None if gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            s = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    comm = s[s.index("(") + 1 : s.rindex(")")]
    rest = s[s.rindex(")") + 2 :].split()
    # rest[0] is field 3 (state); utime is field 14.
    return comm, int(rest[1]), int(rest[11]), int(rest[12]), int(rest[13]), int(rest[14])


def status_kb(pid, key):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except FileNotFoundError:
        pass
    return 0


def pss_kb(pid):
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except (FileNotFoundError, PermissionError):
        pass
    return 0


def children_of(ppid):
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            st = proc_stat(int(d))
            if st and st[1] == ppid:
                out.append((int(d), st))
    return out


def machine_cpu():
    """(busy, total) jiffies of the whole machine."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + (v[4] if len(v) > 4 else 0)
    total = sum(v[:8])
    return total - idle, total


def disk_probe(directory, writers, seconds=2.0):
    """fdatasync'ed 5 KB appends per second with `writers` threads in `directory` (context for
    the disk-bound runs: one writer is what c=1 can get at best without group commit)."""
    import threading

    counts = []

    def work(i):
        path = os.path.join(directory, f"probe-{i}")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        n, end = 0, time.monotonic() + seconds
        while time.monotonic() < end:
            os.write(fd, b"x" * 5120)
            os.fdatasync(fd)
            n += 1
        os.close(fd)
        os.unlink(path)
        counts.append(n)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts) / seconds


def port_free(port):
    s = socket.socket()
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
        return True
    except OSError:
        return False
    finally:
        s.close()


def wait_greeting(port, timeout=30.0):
    end = time.monotonic() + timeout
    last = None
    while time.monotonic() < end:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                data = s.recv(512)
                if data.startswith(b"220"):
                    s.sendall(b"QUIT\r\n")
                    return
                last = data
        except OSError as e:
            last = e
        time.sleep(0.2)
    raise RuntimeError(f"no SMTP greeting on 127.0.0.1:{port}: {last!r}")


# ---------------------------------------------------------------------------------------------
# Loopback DNS


class LoopbackDns:
    """A tiny authoritative-style DNS responder on 127.0.0.1 (UDP and TCP) for Corvus' FCrDNS
    check of the benchmark's client address, so that no run depends on the machine's resolver.
    It answers what /etc/hosts gives Postfix: PTR 1.0.0.127.in-addr.arpa -> localhost and
    A localhost -> 127.0.0.1 (TTL 300), and NXDOMAIN with an SOA (negatively cacheable) for
    everything else."""

    PTR_NAME = "1.0.0.127.in-addr.arpa"

    def __init__(self):
        import threading

        self.queries = 0
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind(("127.0.0.1", 0))
        self.port = self.udp.getsockname()[1]
        self.tcp = socket.socket()
        self.tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.tcp.bind(("127.0.0.1", self.port))
        self.tcp.listen(64)
        for target in (self._serve_udp, self._serve_tcp):
            threading.Thread(target=target, daemon=True).start()

    def answer(self, q):
        self.queries += 1
        if len(q) < 17:
            return None
        i, labels = 12, []
        while i < len(q) and q[i] != 0:
            n = q[i]
            labels.append(q[i + 1 : i + 1 + n].decode("ascii", "replace").lower())
            i += 1 + n
        qend = i + 5
        if qend > len(q):
            return None
        qtype = int.from_bytes(q[i + 1 : i + 3], "big")
        name = ".".join(labels)
        question = q[12:qend]
        ttl = (300).to_bytes(4, "big")
        rcode, answers, authority = 0, b"", b""
        if name == self.PTR_NAME and qtype == 12:
            rdata = b"\x09localhost\x00"
            answers = b"\xc0\x0c" + (12).to_bytes(2, "big") + b"\x00\x01" + ttl + len(rdata).to_bytes(2, "big") + rdata
        elif name == "localhost" and qtype == 1:
            answers = b"\xc0\x0c\x00\x01\x00\x01" + ttl + b"\x00\x04" + bytes([127, 0, 0, 1])
        else:
            if name not in ("localhost", self.PTR_NAME):
                rcode = 3
            soa = b"\x00\x00" + (1).to_bytes(4, "big") + (3600).to_bytes(4, "big") * 3 + (300).to_bytes(4, "big")
            authority = b"\x00\x00\x06\x00\x01" + ttl + len(soa).to_bytes(2, "big") + soa
        flags = 0x8400 | (q[2] & 0x01) << 8 | 0x80 | rcode  # QR AA (RD copied) RA
        header = (q[:2] + flags.to_bytes(2, "big") + b"\x00\x01"
                  + (1 if answers else 0).to_bytes(2, "big")
                  + (1 if authority else 0).to_bytes(2, "big") + b"\x00\x00")
        return header + question + answers + authority

    def _serve_udp(self):
        while True:
            try:
                q, addr = self.udp.recvfrom(4096)
            except OSError:
                return
            r = self.answer(q)
            if r:
                self.udp.sendto(r, addr)

    def _serve_tcp(self):
        import threading

        def conn(c):
            with c:
                while True:
                    h = c.recv(2)
                    if len(h) < 2:
                        return
                    n = int.from_bytes(h, "big")
                    q = b""
                    while len(q) < n:
                        chunk = c.recv(n - len(q))
                        if not chunk:
                            return
                        q += chunk
                    r = self.answer(q)
                    if r:
                        c.sendall(len(r).to_bytes(2, "big") + r)

        while True:
            try:
                c, _ = self.tcp.accept()
            except OSError:
                return
            threading.Thread(target=conn, args=(c,), daemon=True).start()


# ---------------------------------------------------------------------------------------------
# Corvus


class DurableAtAccept:
    """A server that sends its 250 only once the message is durably stored: the moment the
    load generator is done is the end-to-end time, and there is no queue to wait for."""

    def cpu_breakdown(self):
        return {}

    def before_run(self):
        pass

    def count(self):
        return 0

    def wait_delivered(self, n, base, t_accept, stall_timeout):
        return t_accept


class Corvus(DurableAtAccept):
    """One Corvus process. With `store_url`, on PostgreSQL (`[store] backend = "postgres"`);
    `db` is then the PgCluster behind it, whose CPU the runs count too. `prepare` (the
    default) creates the schema and the account; the other nodes of a shared database skip
    it."""

    name = "Corvus"

    def __init__(self, binary, tmp, port, pop3_port, log_level, dns_port=None, user="user",
                 name=None, subdir="corvus", store_url=None, pool_size=16, db=None, prepare=True):
        self.binary = binary
        self.dns_port = dns_port
        if name:
            self.name = name
        self.store_url = store_url
        self.pool_size = pool_size
        self.db = db
        self.prepare = prepare
        self.port_option = "--pg-port" if store_url else "--corvus-port/--pop3-port"
        # On PostgreSQL each run is checked by counting the INBOX (after the CPU readings).
        self.verify_each_run = bool(store_url)
        self.dir = os.path.join(tmp, subdir)
        self.port = port
        self.pop3_port = pop3_port
        self.log_level = log_level
        self.user = user
        self.address = f"{user}@{DOMAIN}"
        self.password = "bench-password"
        self.proc = None
        self.cfg = os.path.join(self.dir, "corvus.toml")
        self.logfile = os.path.join(self.dir, "corvus.log")
        self.delivered_expected = 0
        self.verify_method = None

    def setup(self):
        os.makedirs(self.dir, exist_ok=True)
        with open(self.cfg, "w") as f:
            f.write(
                f"""hostname = "corvus-bench.test"
data_dir = "{self.dir}/data"
domains = ["{DOMAIN}"]
shutdown_timeout = "5s"

[listen]
smtp = "127.0.0.1:{self.port}"
pop3 = "127.0.0.1:{self.pop3_port}"

[limits]
max_connections = 20000
max_connections_per_ip = 5000
[smtp]
max_messages_per_session = 1000000
max_recipients = 100

[log]
level = "{self.log_level}"
"""
            )
            if self.dns_port:
                f.write(f"""
[dns]
nameservers = ["127.0.0.1:{self.dns_port}"]
""")
            if self.store_url:
                f.write(f"""
[store]
backend = "postgres"
url = "{self.store_url}"
pool_size = {self.pool_size}
""")
        if self.store_url and self.prepare:
            sh([self.binary, "-c", self.cfg, "store", "migrate"])
        if self.prepare:
            sh([self.binary, "-c", self.cfg, "user", "add", self.address, "--password", self.password])

    def start(self):
        for p in (self.port, self.pop3_port):
            if not port_free(p):
                raise RuntimeError(f"port {p} is in use; pick others with {self.port_option}")
        self.logf = open(self.logfile, "ab")
        self.proc = subprocess.Popen(
            [self.binary, "-c", self.cfg, "serve"],
            stdout=self.logf,
            stderr=self.logf,
            stdin=subprocess.DEVNULL,
            env={k: v for k, v in os.environ.items() if k != "RUST_LOG" and not k.startswith("CORVUS_")},
        )
        wait_greeting(self.port)
        log(f"{self.name} running, pid {self.proc.pid}, smtp 127.0.0.1:{self.port}, data {self.dir}"
            + (f", store {self.store_url} (pool_size {self.pool_size})" if self.store_url else ""))

    def pid(self):
        return self.proc.pid

    def cpu_ticks(self):
        st = proc_stat(self.proc.pid)
        return st[2] + st[3] + st[4] + st[5]

    def count(self):
        """INBOX count for the per-run check (PostgreSQL nodes); 0 otherwise, as before."""
        if not self.verify_each_run:
            return 0
        n = self.mailbox_list()
        if n is None:
            raise RuntimeError(f"{self.name}: `corvus mailbox list {self.address}` gave no INBOX count")
        return n

    def after_run(self, n):
        self.delivered_expected += n

    def verify(self):
        """Number of messages in the user's INBOX and how it was counted."""
        n = self.mailbox_list()
        if n is not None:
            return n, "corvus mailbox list (INBOX count)"
        n = self.pop3_stat()
        if n is not None:
            return n, "POP3 STAT"
        if not any(l in self.log_level for l in ("info", "debug", "trace")):
            return None, "none (no POP3 and --log-level hides the 'message accepted' lines)"
        with open(self.logfile, "rb") as f:
            n = sum(1 for line in f if b"message accepted" in line)
        return n, "server log ('message accepted', written after the store flush)"

    def mailbox_list(self):
        """INBOX count from `corvus mailbox list ADDRESS` (through the control socket); None if
        this Corvus has no such command."""
        r = sh([self.binary, "-c", self.cfg, "mailbox", "list", self.address], check=False)
        if r.returncode != 0:
            return None
        for line in r.stdout.splitlines():
            name, _, count = line.partition("\t")
            if name == "INBOX" and count.strip().isdigit():
                return int(count)
        return None

    def pop3_stat(self):
        """INBOX size via POP3 if Corvus already serves POP3; None otherwise."""
        try:
            try:
                p = poplib.POP3("127.0.0.1", self.pop3_port, timeout=5)
            except (OSError, poplib.error_proto):
                return None
            try:
                try:
                    p.user(self.address)
                    p.pass_(self.password)
                except poplib.error_proto:
                    p.close()
                    p = poplib.POP3("127.0.0.1", self.pop3_port, timeout=5)
                    ctx = ssl.create_default_context()
                    ctx.check_hostname = False
                    ctx.verify_mode = ssl.CERT_NONE
                    p.stls(ctx)
                    p.user(self.address)
                    p.pass_(self.password)
                count, _size = p.stat()
                return count
            finally:
                try:
                    p.quit()
                except Exception:
                    pass
        except Exception:
            return None

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if getattr(self, "logf", None):
            self.logf.close()


def split_load(ports, conc, n):
    """Spread `conc` connections and `n` messages over the nodes listening on `ports`:
    the concurrency as evenly as it goes (10 -> 4+3+3; fewer connections than nodes: one
    per node, the last nodes get none), the messages in proportion to each node's
    connections, so that every smtp-source runs for about the same time. Returns
    [(port, conc_i, n_i)] for the nodes that get load."""
    k = min(len(ports), conc)
    concs = [conc // k + (1 if i < conc % k else 0) for i in range(k)]
    ns = [n * c // conc for c in concs]
    for i in range(n - sum(ns)):
        ns[i % k] += 1
    return [(ports[i], concs[i], ns[i]) for i in range(k) if ns[i]]


class CorvusCluster(DurableAtAccept):
    """Several Corvus nodes on one PostgreSQL database (`corvus-pg3`): each with its own
    data_dir, control socket and listeners (127.0.0.1, consecutive ports). The load is split
    over them (split_load: one smtp-source per node); CPU is the sum over the nodes;
    the INBOX is counted through the first node."""

    def __init__(self, name, nodes, db):
        self.name = name
        self.nodes = nodes
        self.db = db
        self.address = nodes[0].address
        self.port = nodes[0].port
        self.verify_each_run = True
        self.delivered_expected = 0

    def setup(self):
        for node in self.nodes:  # the first one creates the schema and the account
            node.setup()

    def start(self):
        for node in self.nodes:
            node.start()

    def split(self, conc, n):
        return split_load([node.port for node in self.nodes], conc, n)

    def pid(self):
        return self.nodes[0].pid()

    def cpu_ticks(self):
        return sum(node.cpu_ticks() for node in self.nodes)

    def count(self):
        return self.nodes[0].count()

    def after_run(self, n):
        self.delivered_expected += n

    def verify(self):
        return self.nodes[0].verify()

    def stop(self):
        for node in self.nodes:
            node.stop()


# ---------------------------------------------------------------------------------------------
# smtp-floor


class Floor(DurableAtAccept):
    """bench/smtp-floor: the least an SMTP receiver does per message (see its source)."""

    def __init__(self, tmp, port, threads):
        self.name = "floor-threads" if threads else "floor"
        self.threads = threads
        self.port = port
        self.address = f"user@{DOMAIN}"
        self.file = os.path.join(tmp, f"{self.name}.mbox")
        self.proc = None
        self.sent = 0
        crate = os.path.join(REPO, "bench", "smtp-floor")
        self.binary = os.path.join(crate, "target", "release", "smtp-floor")
        self.manifest = os.path.join(crate, "Cargo.toml")

    def setup(self):
        r = sh(["cargo", "build", "--release", "--quiet", "--manifest-path", self.manifest], check=False)
        if r.returncode != 0 or not os.access(self.binary, os.X_OK):
            raise RuntimeError(f"building smtp-floor failed: {r.stderr.strip()[-500:]}")

    def start(self):
        if not port_free(self.port):
            raise RuntimeError(f"port {self.port} is in use; pick another with --floor-port")
        cmd = [self.binary] + (["--threads"] if self.threads else []) + [f"127.0.0.1:{self.port}", self.file]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL)
        wait_greeting(self.port)
        log(f"{self.name} running, pid {self.proc.pid}, smtp 127.0.0.1:{self.port}")

    def cpu_ticks(self):
        st = proc_stat(self.proc.pid)
        return st[2] + st[3]

    def after_run(self, n):
        self.sent += n

    def verify(self):
        """Messages in its file (each ends with the end-of-data line it kept)."""
        with open(self.file, "rb") as f:
            return f.read().count(b"\r\n.\r\n"), "end-of-data lines in its file"

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


# ---------------------------------------------------------------------------------------------
# Postfix


# What Debian's postfix postinst writes into main.cf and main.cf.proto leaves empty.
DEBIAN_MAIN_CF = {
    "setgid_group": "postdrop",
    "mail_owner": "postfix",
    "sendmail_path": "/usr/sbin/sendmail",
    "mailq_path": "/usr/bin/mailq",
    "newaliases_path": "/usr/bin/newaliases",
    "html_directory": "no",
    "manpage_directory": "/usr/share/man",
    "sample_directory": "/usr/share/doc/postfix/examples",
    "readme_directory": "no",
}


class Postfix:
    name = "Postfix"
    instance = "postfix-bench"
    conf = "/etc/postfix-bench"
    spool = "/var/spool/postfix-bench"
    user = "smtpbench"

    def __init__(self, port):
        self.port = port
        self.address = f"{self.user}@{DOMAIN}"

    @staticmethod
    def ensure_installed():
        if os.path.exists(SMTP_SOURCE) and shutil.which("postmulti"):
            return
        if os.geteuid() != 0:
            raise RuntimeError("postfix is not installed and we are not root")
        log("installing postfix (Debian package) ...")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        sel = "postfix postfix/main_mailer_type select Local only\npostfix postfix/mailname string bench.invalid\n"
        subprocess.run(["debconf-set-selections"], input=sel, text=True, check=True)
        cand = sh(["apt-cache", "policy", "postfix"], check=False).stdout
        if "Candidate: (none)" in cand or "Candidate:" not in cand:
            sh(["apt-get", "update", "-q"], env=env)
        sh(["apt-get", "install", "-y", "-q", "postfix"], env=env)

    def pf(self, *args, check=True):
        return sh(["postfix", "-c", self.conf, *args], check=check)

    def setup(self):
        self.ensure_installed()
        # A default instance whose main.cf was copied from main.cf.proto (the package installed
        # with "No configuration", then tests/e2e/support/postfix.py made one) leaves empty what
        # Debian's postinst fills in, and postmulti refuses it ("bad string length 0 < 1:
        # setgid_group"): fill in the package's values where empty.
        empty = [k for k in DEBIAN_MAIN_CF
                 if not sh(["postconf", "-h", k], check=False).stdout.strip()]
        if empty:
            log(f"default Postfix instance: setting {', '.join(empty)} to Debian's values")
            sh(["postconf", "-e"] + [f"{k}={DEBIAN_MAIN_CF[k]}" for k in empty])
        # Multi-instance support (idempotent), then our own instance.
        if sh(["postconf", "-h", "multi_instance_enable"], check=False).stdout.strip() != "yes":
            sh(["postmulti", "-e", "init"])
        if not os.path.exists(os.path.join(self.conf, "main.cf")):
            sh(["postmulti", "-I", self.instance, "-e", "create"])
        self.stop()
        sh(["postsuper", "-c", self.conf, "-d", "ALL"], check=False)  # leftovers of an aborted run
        # Local account receiving the mail in ~/Maildir.
        try:
            pw = pwd.getpwnam(self.user)
        except KeyError:
            sh(["useradd", "-m", "-s", "/usr/sbin/nologin", self.user])
            pw = pwd.getpwnam(self.user)
        self.maildir = os.path.join(pw.pw_dir, "Maildir")
        for sub in ("", "new", "cur", "tmp"):
            d = os.path.join(self.maildir, sub)
            os.makedirs(d, exist_ok=True)
            os.chown(d, pw.pw_uid, pw.pw_gid)
            os.chmod(d, 0o700)
        self.clear_maildir()
        params = {
            "myhostname": "postfix-bench.test",
            "mydomain": DOMAIN,
            "myorigin": DOMAIN,
            "mydestination": DOMAIN,
            "inet_interfaces": "loopback-only",
            "inet_protocols": "ipv4",
            "mynetworks": "127.0.0.0/8",
            "master_service_disable": "",
            "relayhost": "",
            "home_mailbox": "Maildir/",
            "alias_maps": "hash:/etc/aliases",
            "alias_database": "hash:/etc/aliases",
            "biff": "no",
            "append_dot_mydomain": "no",
            "maillog_file": "/var/log/postfix-bench.log",
            "message_size_limit": "10240000",  # the Postfix default (below mailbox_size_limit)
        }
        sh(["postconf", "-c", self.conf, "-e"] + [f"{k}={v}" for k, v in params.items()])
        listen_on(self.conf, self.port)
        if not os.path.exists("/etc/aliases.db"):
            sh(["newaliases"], check=False)
        self.pf("check", check=False)
        sh(["postmulti", "-i", self.instance, "-e", "enable"], check=False)

    def running(self):
        return self.pf("status", check=False).returncode == 0

    def start(self):
        if not port_free(self.port):
            raise RuntimeError(f"port {self.port} is in use; pick another with --postfix-port")
        self.pf("start")
        wait_greeting(self.port)
        log(f"Postfix instance {self.instance} running, master pid {self.pid()}, smtpd 127.0.0.1:{self.port}")

    def stop(self):
        if self.running():
            self.pf("stop", check=False)
            for _ in range(100):
                if not self.running():
                    break
                time.sleep(0.1)

    def pid(self):
        with open(os.path.join(self.spool, "pid", "master.pid")) as f:
            return int(f.read().strip())

    def cpu_ticks(self):
        master = self.pid()
        st = proc_stat(master)
        total = st[2] + st[3] + st[4] + st[5]  # cutime/cstime: children that exited
        for _pid, c in children_of(master):
            total += c[2] + c[3] + c[4] + c[5]
        return total

    def cpu_breakdown(self):
        """Live children's CPU by program name (exited ones are in master's cutime)."""
        out = {}
        for _pid, c in children_of(self.pid()):
            out[c[0]] = out.get(c[0], 0) + c[2] + c[3]
        return out

    def clear_maildir(self):
        for sub in ("new", "cur", "tmp"):
            d = os.path.join(self.maildir, sub)
            with os.scandir(d) as it:
                for e in it:
                    os.unlink(e.path)

    def queue_files(self):
        n = 0
        for q in ("maildrop", "incoming", "active", "deferred", "hold"):
            for _root, _dirs, files in os.walk(os.path.join(self.spool, q)):
                n += len(files)
        return n

    def before_run(self):
        left = self.queue_files()
        if left:
            log(f"warning: {left} files still in the Postfix queue before the run")
        self.clear_maildir()

    def count(self):
        n = 0
        with os.scandir(os.path.join(self.maildir, "new")) as it:
            for _ in it:
                n += 1
        return n

    def wait_delivered(self, n, base, t_accept, stall_timeout):
        last, last_change = -1, time.monotonic()
        while True:
            c = self.count() - base
            now = time.monotonic()
            if c >= n:
                return now
            if c != last:
                last, last_change = c, now
            elif now - last_change > stall_timeout:
                log(f"Postfix: only {c}/{n} in the Maildir after {stall_timeout}s without progress")
                return None
            time.sleep(0.05)

    def after_run(self, n):
        # Let qmgr finish its bookkeeping (queue file removal) so its CPU is counted.
        end = time.monotonic() + 30
        while self.queue_files() and time.monotonic() < end:
            time.sleep(0.1)

    def verify(self):
        return self.count(), "files in Maildir/new"


# ---------------------------------------------------------------------------------------------
# Measurements


def send(server, conc, n, size, extra_opts, stall_timeout):
    """One run (one smtp-source, or one per node for a cluster); returns a dict of results."""
    server.before_run()
    base = server.count()
    db = getattr(server, "db", None)
    targets = server.split(conc, n) if hasattr(server, "split") else [(server.port, conc, n)]
    cpu0 = server.cpu_ticks()
    pg0 = db.cpu_ticks() if db else None
    m0 = machine_cpu()
    load0 = os.getloadavg()[0]
    procs = []
    t0 = time.monotonic()
    for port, c, k in targets:
        cmd = [SMTP_SOURCE, "-s", str(c), "-m", str(k), "-l", str(size), "-f", SENDER,
               "-t", server.address, *extra_opts, f"127.0.0.1:{port}"]
        errf = tempfile.TemporaryFile()
        procs.append((subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=errf,
                                       stdin=subprocess.DEVNULL), errf))
    client_cpu, statuses, bad, exits = 0.0, [], [], []
    for p, errf in procs:
        _, status, ru = os.wait4(p.pid, 0)
        exits.append(time.monotonic() - t0)
        client_cpu += ru.ru_utime + ru.ru_stime
        statuses.append(os.waitstatus_to_exitcode(status))
        errf.seek(0)
        bad += [l for l in errf.read().decode(errors="replace").splitlines() if l.strip()]
    t_accept = time.monotonic()
    t_end = server.wait_delivered(n, base, t_accept, stall_timeout)
    server.after_run(n)
    cpu1 = server.cpu_ticks()
    pg1 = db.cpu_ticks() if db else None
    m1 = machine_cpu()
    server_ms = (cpu1 - cpu0) / CLK_TCK * 1000 / n
    pg_ms = (pg1 - pg0) / CLK_TCK * 1000 / n if db else None
    res = {
        "server": server.name,
        "concurrency": conc,
        "messages": n,
        "accept_s": t_accept - t0,
        "e2e_s": (t_end - t0) if t_end else None,
        "accept_rate": n / (t_accept - t0),
        "e2e_rate": n / (t_end - t0) if t_end else None,
        "server_cpu_ms_per_msg": server_ms,
        "postgres_cpu_ms_per_msg": pg_ms,
        "total_cpu_ms_per_msg": server_ms + (pg_ms or 0.0),
        "client_cpu_ms_per_msg": client_cpu * 1000 / n,
        "machine_busy": (m1[0] - m0[0]) / max(1, m1[1] - m0[1]),
        "load1_before": load0,
        "load1_after": os.getloadavg()[0],
        "smtp_source_status": statuses[0] if len(statuses) == 1 else statuses,
        "smtp_source_messages": len(bad),
        "smtp_source_stderr_head": bad[:5],
    }
    if hasattr(server, "split"):
        res["split"] = [{"port": p, "concurrency": c, "messages": k, "exit_s": round(e, 3)}
                        for (p, c, k), e in zip(targets, exits)]
    if getattr(server, "verify_each_run", False):
        # Every message was committed before its 250, so all N must be in the INBOX now.
        # Counted after the CPU readings (the count goes through a node and the database).
        # Should a count be short (a node not yet seeing another's commits), it is polled
        # again, and the end-to-end time becomes the moment the count was complete.
        got = server.count() - base
        polled = got < n
        deadline = time.monotonic() + stall_timeout
        while got < n and time.monotonic() < deadline:
            time.sleep(0.05)
            got = server.count() - base
        res["in_mailbox"] = got
        res["in_mailbox_ok"] = got == n
        if got < n:
            res["e2e_s"] = res["e2e_rate"] = None
        elif polled:
            res["e2e_s"] = time.monotonic() - t0
            res["e2e_rate"] = n / res["e2e_s"]
            res["e2e_from_count"] = True
    return res


def idle_connections(port, count, timeout=120.0):
    """Open `count` connections and read each one's 220 greeting; returns the sockets."""
    socks = []
    sel = selectors.DefaultSelector()
    for _ in range(count):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        s.setblocking(False)
        socks.append(s)
        sel.register(s, selectors.EVENT_READ, bytearray())
    pending = count
    end = time.monotonic() + timeout
    while pending and time.monotonic() < end:
        for key, _ in sel.select(timeout=1):
            buf = key.data
            try:
                chunk = key.fileobj.recv(1024)
            except BlockingIOError:
                continue
            if not chunk:
                raise RuntimeError(f"server closed an idle connection before greeting: {bytes(buf)!r}")
            buf += chunk
            if b"\n" in buf:
                if not buf.startswith(b"220"):
                    raise RuntimeError(f"unexpected greeting {bytes(buf)!r}")
                sel.unregister(key.fileobj)
                pending -= 1
    sel.close()
    if pending:
        raise RuntimeError(f"{pending} of {count} connections got no greeting in {timeout}s")
    return socks


def corvus_idle_memory(corvus, count):
    pid = corvus.pid()
    # Warm up: worker threads, resolver cache, allocator arenas.
    for s in idle_connections(corvus.port, 50):
        s.close()
    time.sleep(1.0)
    before = status_kb(pid, "VmRSS")
    socks = idle_connections(corvus.port, count)
    time.sleep(1.0)
    after = status_kb(pid, "VmRSS")
    for s in socks:
        s.close()
    return {"connections": count, "rss_before_kb": before, "rss_after_kb": after,
            "kb_per_conn": (after - before) / count}


def postfix_idle_memory(postfix, count):
    master = postfix.pid()

    def snapshot():
        procs = children_of(master)
        smtpd = [p for p, st in procs if st[0] == "smtpd"]
        allp = [master] + [p for p, _ in procs]
        return {
            "smtpd": len(smtpd),
            "smtpd_rss": sum(status_kb(p, "VmRSS") for p in smtpd),
            "smtpd_pss": sum(pss_kb(p) for p in smtpd),
            "all_rss": sum(status_kb(p, "VmRSS") for p in allp),
            "all_pss": sum(pss_kb(p) for p in allp),
        }

    before = snapshot()
    socks = idle_connections(postfix.port, count)
    time.sleep(1.0)
    after = snapshot()
    for s in socks:
        s.close()
    n = max(1, after["smtpd"])
    return {
        "connections": count,
        "smtpd_processes": after["smtpd"],
        "rss_kb_per_smtpd": after["smtpd_rss"] / n,
        "pss_kb_per_smtpd": after["smtpd_pss"] / n,
        "instance_rss_delta_kb_per_conn": (after["all_rss"] - before["all_rss"]) / count,
        "instance_pss_delta_kb_per_conn": (after["all_pss"] - before["all_pss"]) / count,
    }


def pick_n(server, conc, args):
    if args.messages:
        return args.messages
    cal = max(300, conc * 5)
    r = send(server, conc, cal, args.size, args.smtp_source_opts, args.stall_timeout)
    rate = r["e2e_rate"] or r["accept_rate"]
    n = int(math.ceil(rate * args.seconds / 100.0) * 100)
    n = max(args.min_messages, min(args.max_messages, n))
    log(f"  calibration {server.name} c={conc}: {cal} msgs at {rate:.0f}/s -> N={n}")
    return n


# ---------------------------------------------------------------------------------------------


def _interrupted(_signum, _frame):
    raise KeyboardInterrupt


def fmt(v, spec):
    return "—" if v is None else format(v, spec)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--servers", default=os.environ.get("BENCH_SERVERS", "corvus,postfix"),
                    help="comma-separated: corvus (sled), corvus-pg (one node on PostgreSQL), "
                         "corvus-pg3 (three nodes on one PostgreSQL), postfix, floor, floor-threads")
    ap.add_argument("--concurrency", default="1,10,100")
    ap.add_argument("--seconds", type=float, default=15.0,
                    help="target duration of each run; N = calibrated rate × this (at least --min-messages)")
    ap.add_argument("--messages", type=int, default=0, help="fixed N per run (skips calibration)")
    ap.add_argument("--min-messages", type=int, default=2000)
    ap.add_argument("--max-messages", type=int, default=100000)
    ap.add_argument("--size", type=int, default=5120, help="message size for smtp-source -l")
    ap.add_argument("--idle", type=int, default=1000, help="idle connections for the Corvus memory test (corvus and corvus-pg)")
    ap.add_argument("--postfix-idle", type=int, default=100,
                    help="idle connections for Postfix (its default smtpd process limit is 100)")
    ap.add_argument("--corvus-bin", default=os.environ.get("CORVUS_BIN", os.path.join(REPO, "target/release/corvus")))
    ap.add_argument("--corvus-port", type=int, default=25250)
    ap.add_argument("--pop3-port", type=int, default=25251)
    ap.add_argument("--postfix-port", type=int, default=25260)
    ap.add_argument("--pg-port", type=int, default=25280,
                    help="first port for the PostgreSQL kinds: corvus-pg gets SMTP on it and POP3 on "
                         "the next; corvus-pg3's nodes take the six after (SMTP, POP3 each)")
    ap.add_argument("--pool-size", type=int, default=16,
                    help="[store] pool_size of each Corvus node on PostgreSQL")
    ap.add_argument("--pg-bin", default=os.environ.get("CORVUS_PG_BIN"),
                    help="PostgreSQL's bin directory (default: the newest /usr/lib/postgresql/*/bin)")
    ap.add_argument("--floor-port", type=int, default=25270,
                    help="first port for smtp-floor (floor-threads gets the next one)")
    ap.add_argument("--log-level", default="info", help="Corvus log level (info logs one line per message)")
    ap.add_argument("--smtp-source-opts", default=os.environ.get("SMTP_SOURCE_OPTS", ""),
                    help="extra smtp-source options, e.g. '-d' to reuse connections")
    ap.add_argument("--system-dns", action="store_true",
                    help="let Corvus use the system resolver for its FCrDNS lookups instead of the "
                         "script's loopback DNS responder")
    ap.add_argument("--stall-timeout", type=float, default=120.0)
    ap.add_argument("--json", help="also write the results as JSON to this file")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = ap.parse_args()
    # SIGTERM (e.g. from timeout(1)) cleans up like Ctrl-C.
    signal.signal(signal.SIGTERM, _interrupted)
    args.smtp_source_opts = args.smtp_source_opts.split()
    servers = [s.strip().lower() for s in args.servers.split(",") if s.strip()]
    concs = [int(c) for c in args.concurrency.split(",")]

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, max(soft, 65536)) if hard != resource.RLIM_INFINITY else 65536
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))

    Postfix.ensure_installed()  # smtp-source drives both servers
    machine = {
        "nproc": os.cpu_count(),
        "uptime_start": sh(["uptime"]).stdout.strip(),
        "kernel": os.uname().release,
        "postfix": sh(["postconf", "-h", "mail_version"], check=False).stdout.strip(),
    }
    log(f"machine: {machine}")

    tmp = tempfile.mkdtemp(prefix="corvus-smtp-bench-")
    machine["fdatasync_per_s_start"] = {w: round(disk_probe(tmp, w)) for w in (1, 20)}
    log(f"disk: fdatasync/s with 1 and 20 writers: {machine['fdatasync_per_s_start']}")
    corvus = postfix = None
    pg_kinds = []  # Corvus on PostgreSQL: corvus-pg, corvus-pg3
    clusters = []
    floors = []
    results, memory = [], {}
    try:
        corvus_kinds = [k for k in ("corvus", "corvus-pg", "corvus-pg3") if k in servers]
        dns = None
        if corvus_kinds:
            if not os.access(args.corvus_bin, os.X_OK):
                raise RuntimeError(f"{args.corvus_bin}: no Corvus binary; run `cargo build --release -p corvus` or set CORVUS_BIN")
            dns = None if args.system_dns else LoopbackDns()
            machine["corvus_dns"] = "system resolver" if dns is None else f"loopback responder 127.0.0.1:{dns.port}"
        dns_port = dns.port if dns else None
        if "corvus" in servers:
            corvus = Corvus(args.corvus_bin, tmp, args.corvus_port, args.pop3_port, args.log_level,
                            dns_port=dns_port)
            corvus.setup()
            corvus.start()
        if "corvus-pg" in servers or "corvus-pg3" in servers:
            if sh([args.corvus_bin, "store", "--help"], check=False).returncode != 0:
                raise RuntimeError(f"{args.corvus_bin} has no PostgreSQL backend (no `corvus store migrate`): "
                                   "build a newer one")
            if args.pg_bin:
                os.environ["CORVUS_PG_BIN"] = args.pg_bin
            machine["postgres"] = {}
        for kind in ("corvus-pg", "corvus-pg3"):
            if kind not in servers:
                continue
            # One cluster per kind, so that each kind's PostgreSQL CPU is its own.
            db = PgCluster(os.path.join(tmp, f"pg-{kind}"))
            clusters.append(db)
            db.init()
            db.start()
            url = db.create_database("corvus")
            settings = db.settings("corvus")
            if settings.get("fsync") != "on" or settings.get("synchronous_commit") != "on":
                raise RuntimeError(f"PostgreSQL for {kind} is not durable: {settings}")
            machine["postgres"][kind] = {"dir": str(db.dir), "url": url, "pool_size": args.pool_size,
                                         "settings": settings}
            log(f"PostgreSQL for {kind}: postmaster pid {db.postmaster_pid()}, {url}, {settings}")
            port = args.pg_port if kind == "corvus-pg" else args.pg_port + 2
            if kind == "corvus-pg":
                server = Corvus(args.corvus_bin, tmp, port, port + 1, args.log_level, dns_port=dns_port,
                                name="Corvus-pg", subdir="corvus-pg", store_url=url,
                                pool_size=args.pool_size, db=db)
            else:
                nodes = [Corvus(args.corvus_bin, tmp, port + 2 * i, port + 2 * i + 1, args.log_level,
                                dns_port=dns_port, name=f"Corvus-pg3 node {i + 1}",
                                subdir=f"corvus-pg3-node{i + 1}", store_url=url,
                                pool_size=args.pool_size, db=db, prepare=(i == 0))
                         for i in range(3)]
                server = CorvusCluster("Corvus-pg3", nodes, db)
            pg_kinds.append(server)
            server.setup()
            server.start()
        if "postfix" in servers:
            postfix = Postfix(args.postfix_port)
            postfix.setup()
            postfix.start()
        for i, name in enumerate(("floor", "floor-threads")):
            if name in servers:
                f = Floor(tmp, args.floor_port + i, threads=(name == "floor-threads"))
                f.setup()
                f.start()
                floors.append(f)
        active = [s for s in [corvus] + pg_kinds + [postfix] if s] + floors

        if corvus:
            memory["corvus"] = corvus_idle_memory(corvus, args.idle)
            log(f"Corvus idle memory: {memory['corvus']}")
        for server in pg_kinds:
            if isinstance(server, Corvus):  # one node; a cluster's nodes are the same program
                memory["corvus-pg"] = corvus_idle_memory(server, args.idle)
                log(f"Corvus-pg idle memory: {memory['corvus-pg']}")
        if postfix:
            memory["postfix"] = postfix_idle_memory(postfix, args.postfix_idle)
            log(f"Postfix idle memory: {memory['postfix']}")

        for conc in concs:
            for server in active:
                n = pick_n(server, conc, args)
                r = send(server, conc, n, args.size, args.smtp_source_opts, args.stall_timeout)
                if server is postfix:
                    r["cpu_by_process_live"] = postfix.cpu_breakdown()
                results.append(r)
                pg = r["postgres_cpu_ms_per_msg"]
                log(f"  {server.name:10} c={conc:<4} N={n:<6} e2e {fmt(r['e2e_rate'], '.0f')}/s "
                    f"(accept {r['accept_rate']:.0f}/s), {r['server_cpu_ms_per_msg']:.3f} ms CPU/msg"
                    + (f" + PostgreSQL {pg:.3f} = {r['total_cpu_ms_per_msg']:.3f}" if pg is not None else "")
                    + f", machine busy {r['machine_busy']*100:.0f}%"
                    + (f", in the INBOX {r['in_mailbox']}/{n}" if "in_mailbox" in r else "")
                    + (f", smtp-source said: {r['smtp_source_stderr_head']}" if r["smtp_source_messages"] else ""))

        # Verify the mailbox counts.
        verification = {}
        if corvus:
            # Calibration runs deliver too: expected counts every message sent to Corvus.
            got, how = corvus.verify()
            verification["corvus"] = {"in_store": got, "sent": corvus.delivered_expected, "method": how}
        for server in pg_kinds:
            got, how = server.verify()
            runs = [r for r in results if r["server"] == server.name]
            verification[server.name.lower()] = {
                "in_store": got, "sent": server.delivered_expected, "method": how,
                "runs_counted_ok": sum(1 for r in runs if r.get("in_mailbox_ok")), "runs": len(runs)}
        if postfix:
            last = [r for r in results if r["server"] == "Postfix"]
            got, how = postfix.verify()
            verification["postfix"] = {"last_run_in_maildir": got, "last_run_sent": last[-1]["messages"] if last else 0,
                                       "method": how}
        for f in floors:
            got, how = f.verify()
            verification[f.name] = {"in_store": got, "sent": f.sent, "method": how}
        machine["uptime_end"] = sh(["uptime"]).stdout.strip()
        machine["fdatasync_per_s_end"] = {w: round(disk_probe(tmp, w)) for w in (1, 20)}
    finally:
        if corvus:
            corvus.stop()
        for server in pg_kinds:
            server.stop()
        for db in clusters:
            db.close()
        for f in floors:
            f.stop()
        if postfix:
            postfix.stop()
            try:
                postfix.clear_maildir()
            except Exception:
                pass
        if args.keep:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    report(machine, results, memory, verification, args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine, "results": results, "memory": memory,
                       "verification": verification, "args": vars(args)}, f, indent=2)


def report(machine, results, memory, verification, args):
    print()
    print(f"nproc {machine['nproc']}, kernel {machine['kernel']}, Postfix {machine['postfix']}")
    print(f"uptime at start: {machine['uptime_start']}")
    print(f"uptime at end:   {machine['uptime_end']}")
    if "corvus_dns" in machine:
        print(f"Corvus FCrDNS lookups: {machine['corvus_dns']}")
    print(f"disk fdatasync/s (1 writer, 20 writers) at start: {machine['fdatasync_per_s_start']}, "
          f"at end: {machine['fdatasync_per_s_end']}")
    print(f"messages: {args.size} bytes (smtp-source -l), one connection per message unless -d given"
          f" (extra smtp-source options: {' '.join(args.smtp_source_opts) or 'none'})")
    for kind, pg in machine.get("postgres", {}).items():
        st = pg["settings"]
        print(f"PostgreSQL for {kind}: {st.get('server_version')}, its own cluster (initdb in the run's "
              f"temporary directory, Unix socket only), Corvus [store] pool_size {pg['pool_size']} per node; "
              + ", ".join(f"{k} = {v}" for k, v in st.items() if k != "server_version"))
    print()
    with_pg = any(r.get("postgres_cpu_ms_per_msg") is not None for r in results)
    if with_pg:
        print("| server | conc | N | accepted msg/s | end-to-end msg/s | server CPU ms/msg | PostgreSQL CPU ms/msg "
              "| server + PostgreSQL CPU ms/msg | client CPU ms/msg | machine busy | smtp-source errors |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    else:
        print("| server | conc | N | accepted msg/s | end-to-end msg/s | server CPU ms/msg | client CPU ms/msg | machine busy | smtp-source errors |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        pg_cols = (f"{fmt(r.get('postgres_cpu_ms_per_msg'), '.3f')} | {r['total_cpu_ms_per_msg']:.3f} | "
                   if with_pg else "")
        print(f"| {r['server']} | {r['concurrency']} | {r['messages']} | {r['accept_rate']:.0f} | "
              f"{fmt(r['e2e_rate'], '.0f')} | {r['server_cpu_ms_per_msg']:.3f} | {pg_cols}{r['client_cpu_ms_per_msg']:.3f} | "
              f"{r['machine_busy']*100:.0f}% | {r['smtp_source_messages']} |")
    splits = [r for r in results if "split" in r]
    if splits:
        print()
        print("Load split over the nodes (port: connections × messages, smtp-source exit time):")
        for r in splits:
            print(f"  {r['server']} c={r['concurrency']} N={r['messages']}: "
                  + ", ".join(f"{x['port']}: {x['concurrency']} × {x['messages']}, {x['exit_s']:.2f} s"
                              for x in r["split"]))
    bad_counts = [r for r in results if r.get("in_mailbox_ok") is False or r.get("e2e_from_count")]
    for r in bad_counts:
        print(f"  note: {r['server']} c={r['concurrency']}: {r['in_mailbox']} of {r['messages']} in the INBOX"
              + (" only after polling; end-to-end time taken from the count" if r.get("e2e_from_count") else ""))
    by = {(r["server"], r["concurrency"]): r for r in results}
    concs = sorted({r["concurrency"] for r in results})
    side = [n for n in ("Corvus", "Corvus-pg", "Corvus-pg3", "Postfix") if any(s == n for s, _ in by)]
    if with_pg and len(side) > 1:
        print()
        print("Side by side: end-to-end msg/s, then CPU ms per message (on PostgreSQL: Corvus + "
              "PostgreSQL = total):")
        print()
        print("| conc | " + " | ".join(f"{n} msg/s" for n in side) + " | "
              + " | ".join(f"{n} CPU ms/msg" for n in side) + " |")
        print("|---:|" + "---:|" * (2 * len(side)))
        for c in concs:
            rates, cpus = [], []
            for n in side:
                r = by.get((n, c))
                rates.append(fmt(r["e2e_rate"], ".0f") if r else "—")
                if not r:
                    cpus.append("—")
                elif r.get("postgres_cpu_ms_per_msg") is None:
                    cpus.append(f"{r['server_cpu_ms_per_msg']:.3f}")
                else:
                    cpus.append(f"{r['server_cpu_ms_per_msg']:.3f} + {r['postgres_cpu_ms_per_msg']:.3f} = "
                                f"{r['total_cpu_ms_per_msg']:.3f}")
            print(f"| {c} | " + " | ".join(rates) + " | " + " | ".join(cpus) + " |")
    if any(s == "Postfix" for s, _ in by) and any(s == "Corvus" for s, _ in by):
        print()
        print("| conc | Corvus msg/s | Postfix msg/s | ratio | Corvus CPU ms/msg | Postfix CPU ms/msg |")
        print("|---:|---:|---:|---:|---:|---:|")
        for c in concs:
            a, b = by.get(("Corvus", c)), by.get(("Postfix", c))
            if not (a and b):
                continue
            ratio = a["e2e_rate"] / b["e2e_rate"] if a["e2e_rate"] and b["e2e_rate"] else None
            print(f"| {c} | {fmt(a['e2e_rate'], '.0f')} | {fmt(b['e2e_rate'], '.0f')} | {fmt(ratio, '.1f')}× | "
                  f"{a['server_cpu_ms_per_msg']:.3f} | {b['server_cpu_ms_per_msg']:.3f} |")
    floor_names = sorted({s for s, _ in by if s.startswith("floor")})
    if floor_names and any(s == "Corvus" for s, _ in by):
        print()
        print("Corvus against the floor (the floor does nothing but reply and flush); rates "
              "as multiples of Postfix's end-to-end rate when Postfix ran:")
        print()
        names = ["Corvus"] + floor_names
        print("| conc | " + " | ".join(f"{n} CPU ms/msg" for n in names) + " | "
              + " | ".join(f"{n} ÷ Postfix" for n in names) + " |")
        print("|---:|" + "---:|" * (2 * len(names)))
        for c in concs:
            cpu = [fmt(by[(n, c)]["server_cpu_ms_per_msg"], ".3f") if (n, c) in by else "—" for n in names]
            p = by.get(("Postfix", c))
            ratios = [fmt(by[(n, c)]["e2e_rate"] / p["e2e_rate"], ".1f") + "×"
                      if p and p["e2e_rate"] and (n, c) in by and by[(n, c)]["e2e_rate"] else "—"
                      for n in names]
            print(f"| {c} | " + " | ".join(cpu) + " | " + " | ".join(ratios) + " |")
    print()
    if "corvus" in memory:
        m = memory["corvus"]
        print(f"Corvus idle memory: {m['connections']} connections, RSS {m['rss_before_kb']} -> "
              f"{m['rss_after_kb']} KB = {m['kb_per_conn']:.1f} KB per connection")
    if "corvus-pg" in memory:
        m = memory["corvus-pg"]
        print(f"Corvus-pg idle memory: {m['connections']} connections, RSS {m['rss_before_kb']} -> "
              f"{m['rss_after_kb']} KB = {m['kb_per_conn']:.1f} KB per connection")
    if "postfix" in memory:
        m = memory["postfix"]
        print(f"Postfix idle memory: {m['connections']} connections, {m['smtpd_processes']} smtpd processes, "
              f"RSS {m['rss_kb_per_smtpd']:.0f} KB / PSS {m['pss_kb_per_smtpd']:.0f} KB per smtpd; instance "
              f"delta RSS {m['instance_rss_delta_kb_per_conn']:.0f} KB / PSS {m['instance_pss_delta_kb_per_conn']:.0f} KB per connection")
    for k, v in verification.items():
        got = v.get("in_store", v.get("last_run_in_maildir"))
        want = v.get("sent", v.get("last_run_sent"))
        verdict = "" if got is None else ("OK" if got == want else "MISMATCH")
        print(f"verification {k}: {verdict} {v}")


if __name__ == "__main__":
    main()
