"""A throwaway PostgreSQL server for e2e tests, from Debian's packages: `initdb` into a
temporary directory, `postgres` listening only on a Unix socket there, run as the
unprivileged `postgres` user when the tests run as root. No server installed is a failure
naming the package (tests/run installs it), not a skip."""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import tempfile
import time


def bin_dir() -> pathlib.Path:
    """`CORVUS_PG_BIN`, else the newest /usr/lib/postgresql/<version>/bin."""
    if os.environ.get("CORVUS_PG_BIN"):
        return pathlib.Path(os.environ["CORVUS_PG_BIN"])
    versions = sorted(
        (int(p.name), p / "bin")
        for p in pathlib.Path("/usr/lib/postgresql").glob("*")
        if p.name.isdigit() and (p / "bin" / "initdb").exists()
    )
    assert versions, "PostgreSQL's server is not installed: apt-get install postgresql"
    return versions[-1][1]


class Postgres:
    """One server; `database()` makes a fresh database and returns its connection string."""

    def __init__(self):
        self.bin = bin_dir()
        self.dir = pathlib.Path(tempfile.mkdtemp(prefix="corvus-pg-"))
        self.as_root = os.geteuid() == 0
        if self.as_root:
            shutil.chown(self.dir, "postgres")
        self._run("initdb", "-D", str(self.dir / "db"), "-A", "trust", "-U", "postgres",
                  "--no-sync")
        self._run("pg_ctl", "-D", str(self.dir / "db"), "-l", str(self.dir / "log"), "-w",
                  "-o", f"-k {self.dir} -h '' -c fsync=off", "start")
        self.n = 0

    def _run(self, tool: str, *args: str) -> str:
        cmd = [str(self.bin / tool), *args]
        if self.as_root:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        assert p.returncode == 0, f"{tool} failed: {p.stdout}{p.stderr}"
        return p.stdout

    def database(self) -> str:
        self.n += 1
        name = f"corvus_e2e_{self.n}"
        self._run("psql", "-h", str(self.dir), "-U", "postgres", "-d", "postgres", "-c",
                  f"CREATE DATABASE {name}")
        return f"host={self.dir} user=postgres dbname={name}"

    # --- outages (test_pg_outage.py) -------------------------------------------------------

    def _ctl(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        """`pg_ctl -D db ARGS…` (as `postgres` when root), its result whatever it is."""
        cmd = [str(self.bin / "pg_ctl"), "-D", str(self.dir / "db"), *args]
        if self.as_root:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=self.dir)

    def running(self) -> bool:
        return self._ctl("status").returncode == 0

    def stop(self, mode: str = "fast"):
        """Stop the server (`pg_ctl stop -m fast|immediate|smart`) and wait until it is down."""
        p = self._ctl("-m", mode, "-w", "stop")
        assert p.returncode == 0, f"pg_ctl stop failed: {p.stdout}{p.stderr}"

    def start(self):
        """Start it again after `stop`, with the options it was first started with (pg_ctl
        restart reads them from db/postmaster.opts) and wait until it takes connections."""
        assert not self.running(), "already running"
        p = self._ctl("-l", str(self.dir / "log"), "-w", "restart")
        assert p.returncode == 0, f"pg_ctl start failed: {p.stdout}{p.stderr}"

    def restart(self, mode: str = "fast"):
        """`pg_ctl restart -m MODE`: every connection is cut, the server is back when this
        returns."""
        p = self._ctl("-l", str(self.dir / "log"), "-m", mode, "-w", "restart")
        assert p.returncode == 0, f"pg_ctl restart failed: {p.stdout}{p.stderr}"

    def terminate_backends(self, url: str) -> int:
        """End every connection to the database of connection string `url` (but this
        query's own) with pg_terminate_backend; how many were ended."""
        db = dict(kv.split("=", 1) for kv in url.split())["dbname"]
        out = self._run("psql", "-h", str(self.dir), "-U", "postgres", "-d", db, "-X", "-A",
                        "-t", "-v", "ON_ERROR_STOP=1", "-c",
                        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                        " WHERE datname = current_database() AND pid <> pg_backend_pid()")
        return int(out.strip() or 0)

    def close(self):
        try:
            self._run("pg_ctl", "-D", str(self.dir / "db"), "-m", "immediate", "stop")
        finally:
            time.sleep(0.1)
            shutil.rmtree(self.dir, ignore_errors=True)
