"""A throwaway PostgreSQL cluster for the benchmarks (bench/smtp_bench.py, bench/pg_select.py).

Unlike the e2e tests' server (tests/e2e/support/postgres.py: `initdb --no-sync`,
`fsync=off`), this one is the durable configuration a mail server must run on: initdb
syncs its files, and the server keeps PostgreSQL's defaults for everything that decides
durability (`fsync = on`, `synchronous_commit = on`, `full_page_writes = on`, the default
`wal_sync_method`). The only settings given are where it listens: a Unix socket in its own
directory and no TCP (`listen_addresses = ''`). `settings()` reads back what the server
actually runs with, for the benchmark's output.

Debian's packages (/usr/lib/postgresql/<version>/bin, the newest one, or `CORVUS_PG_BIN`);
run as root, the server runs as the `postgres` user (as in the e2e tests).

CPU: `cpu_ticks()` is utime+stime of the postmaster and of every live child, plus the
postmaster's cutime/cstime (children that exited: backends of closed connections), in clock
ticks, from /proc.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys
import time

# The tests' finder of Debian's PostgreSQL binaries (CORVUS_PG_BIN, else the newest installed).
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "tests" / "e2e"))
from support.postgres import bin_dir  # noqa: E402

# What decides durability and what shapes the load; printed with the results.
SHOWN_SETTINGS = (
    "fsync",
    "synchronous_commit",
    "wal_sync_method",
    "full_page_writes",
    "commit_delay",
    "wal_level",
    "shared_buffers",
    "max_connections",
    "checkpoint_timeout",
    "max_wal_size",
    "data_checksums",
)


def _proc_stat(pid: int):
    """(ppid, utime, stime, cutime, cstime) in clock ticks, or None if gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            s = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    rest = s[s.rindex(")") + 2:].split()
    return int(rest[1]), int(rest[11]), int(rest[12]), int(rest[13]), int(rest[14])


class PgCluster:
    """One cluster in `directory` (created; must not exist): data in `directory/db`, the
    socket in `directory`, the server log in `directory/log`."""

    def __init__(self, directory: str | os.PathLike, port: int = 5432):
        self.bin = bin_dir()
        self.dir = pathlib.Path(directory)
        self.data = self.dir / "db"
        self.logfile = self.dir / "log"
        self.port = port  # only names the socket file (.s.PGSQL.PORT); no TCP listener
        self.as_root = os.geteuid() == 0
        self.running = False
        self.dir.mkdir(parents=True)
        if self.as_root:
            # The server runs as postgres: it must reach its directory. The parent is the
            # benchmark's own temporary directory (mkdtemp: 0700), opened for traversal only.
            shutil.chown(self.dir, "postgres")
            m = os.stat(self.dir.parent).st_mode
            if not m & 0o001:
                os.chmod(self.dir.parent, (m & 0o7777) | 0o711)
            r = subprocess.run(["runuser", "-u", "postgres", "--", "test", "-w", str(self.dir)])
            if r.returncode != 0:
                raise RuntimeError(f"the postgres user cannot write {self.dir}: put the "
                                   "benchmark's temporary directory where it can (TMPDIR=…)")

    def _run(self, tool: str, *args: str, timeout: float = 300) -> str:
        cmd = [str(self.bin / tool), *args]
        if self.as_root:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                           stdin=subprocess.DEVNULL, cwd="/")
        if p.returncode != 0:
            raise RuntimeError(f"{tool} failed ({p.returncode}): {p.stdout}{p.stderr}")
        return p.stdout

    def init(self):
        """initdb (syncing its files, as a real installation does)."""
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres",
                  "-E", "UTF8", "--locale=C")

    def start(self):
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.logfile), "-w", "-t", "120",
                  "-o", f"-k {self.dir} -h '' -p {self.port}", "start")
        self.running = True

    def stop(self, mode: str = "fast"):
        if self.running:
            self.running = False
            self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "120", "stop")

    def restart(self):
        self.stop()
        self.start()

    def psql(self, sql: str, db: str = "postgres") -> str:
        return self._run("psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
                         "-h", str(self.dir), "-p", str(self.port), "-U", "postgres",
                         "-d", db, "-c", sql)

    def create_database(self, name: str) -> str:
        """Create database `name`; returns Corvus' `[store] url` for it."""
        self.psql(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def url(self, name: str) -> str:
        return f"host={self.dir} port={self.port} user=postgres dbname={name}"

    def settings(self, db: str = "postgres") -> dict:
        """The settings in SHOWN_SETTINGS as a connection to `db` sees them (what Corvus'
        connections get), and the server version."""
        names = ",".join(f"'{n}'" for n in SHOWN_SETTINGS)
        out = self.psql("SELECT name, current_setting(name) FROM pg_settings "
                        f"WHERE name IN ({names}) ORDER BY name", db=db)
        s = dict(line.split("|", 1) for line in out.splitlines() if "|" in line)
        s["server_version"] = self.psql("SHOW server_version", db=db).strip()
        return s

    def durable(self, db: str = "postgres") -> bool:
        s = self.settings(db)
        return s.get("fsync") == "on" and s.get("synchronous_commit") == "on"

    def postmaster_pid(self) -> int:
        with open(self.data / "postmaster.pid") as f:
            return int(f.readline().strip())

    def pids(self) -> list[int]:
        """The postmaster and its live children."""
        pm = self.postmaster_pid()
        out = [pm]
        for d in os.listdir("/proc"):
            if d.isdigit():
                st = _proc_stat(int(d))
                if st and st[0] == pm:
                    out.append(int(d))
        return out

    def cpu_ticks(self) -> int:
        """utime+stime of the whole cluster: postmaster, live children, and (through the
        postmaster's cutime/cstime) children that exited."""
        total = 0
        for pid in self.pids():
            st = _proc_stat(pid)
            if st is None:
                continue
            total += st[1] + st[2] + st[3] + st[4]
        return total

    def rss_kb(self) -> int:
        total = 0
        for pid in self.pids():
            try:
                with open(f"/proc/{pid}/status") as f:
                    for line in f:
                        if line.startswith("VmRSS:"):
                            total += int(line.split()[1])
            except FileNotFoundError:
                pass
        return total

    def close(self):
        try:
            self.stop("immediate")
        except Exception:
            pass
        time.sleep(0.1)
