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

    def close(self):
        try:
            self._run("pg_ctl", "-D", str(self.dir / "db"), "-m", "immediate", "stop")
        finally:
            time.sleep(0.1)
            shutil.rmtree(self.dir, ignore_errors=True)
