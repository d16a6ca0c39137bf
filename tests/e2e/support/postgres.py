"""A throwaway PostgreSQL server for e2e tests, from Debian's packages: `initdb` into a
temporary directory, `postgres` listening only on a Unix socket there, run as the
unprivileged `postgres` user when the tests run as root. No server installed is a failure
naming the package (tests/run installs it), not a skip.

With CORVUS_E2E_STORE=postgres every server of the suite stores into PostgreSQL
(support/server.py): one server per pytest session (`session()`, started on first use and
stopped by tests/e2e/conftest.py at the end of the session, or at exit), one database per
server data directory (`Postgres.database_for`, from databases a thread makes ahead),
dropped once no `Server` uses it any more (`Postgres.drop_unused`, after each test) so a
session of several hundred servers does not keep gigabytes of databases."""

from __future__ import annotations

import atexit
import dataclasses
import os
import pathlib
import pwd
import shutil
import subprocess
import tempfile
import threading
import time

# The socket PostgreSQL makes in its directory; a Unix socket path has at most 107 bytes.
SOCKET = ".s.PGSQL.5432"


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


def _temp_parent(as_root: bool) -> str | None:
    """Where the server's directory goes: the usual temporary directory, unless the socket
    path would be too long there or, as root, the `postgres` user cannot reach it (a private
    TMPDIR under /root, say): then /tmp."""
    parent = tempfile.gettempdir()
    if len(os.path.join(parent, "corvus-pg-xxxxxxxx", SOCKET)) > 100:
        return "/tmp"
    if as_root:
        p = subprocess.run(["runuser", "-u", "postgres", "--", "test", "-x", parent],
                           capture_output=True, timeout=30)
        if p.returncode != 0:
            return "/tmp"
    return None


@dataclasses.dataclass
class ServerDatabase:
    """The database of one server data directory."""
    name: str
    url: str
    users: int = 1  # Server objects alive for the directory
    migrated: bool = False


class Postgres:
    """One server; `database()` makes a fresh database and returns its connection string.

    With `spares`, a thread keeps that many empty databases made ahead for
    `database_for` and drops the ones `drop_unused` hands it, so a test seldom waits for
    either (CREATE DATABASE copies a template: a fifth of a second on a busy machine)."""

    def __init__(self, max_connections: int = 100, spares: int = 0, tcp_port: int | None = None,
                 tls: tuple[str, str] | None = None):
        """`tcp_port`: also listen on 127.0.0.1:`tcp_port`; `tls`: (certificate, key) PEM
        files the server presents (ssl = on, for TCP connections)."""
        self.bin = bin_dir()
        self.as_root = os.geteuid() == 0
        self.tcp_port = tcp_port
        # The tools find the server's socket by its port (its name ends with it).
        self.env = {**os.environ, "PGPORT": str(tcp_port or 5432)}
        if self.as_root:
            try:
                pwd.getpwnam("postgres")
            except KeyError:
                raise AssertionError(
                    "PostgreSQL does not run as root, and there is no 'postgres' user to run it "
                    "as: apt-get install postgresql (its postgresql-common makes the user)") from None
        self.dir = pathlib.Path(tempfile.mkdtemp(prefix="corvus-pg-", dir=_temp_parent(self.as_root)))
        self.n = 0
        self.cond = threading.Condition()
        self.by_dir: dict[str, ServerDatabase] = {}
        self.spares: list[str] = []
        self.spares_wanted = spares
        self.to_drop: list[str] = []
        self.closing = False
        self.worker: threading.Thread | None = None
        try:
            if self.as_root:
                shutil.chown(self.dir, "postgres")
            self._run("initdb", "-D", str(self.dir / "db"), "-A", "trust", "-U", "postgres",
                      "--no-sync")
            listen = f"-h 127.0.0.1 -p {tcp_port}" if tcp_port else "-h ''"
            if tls:
                for src, name in zip(tls, ("server.crt", "server.key")):
                    dst = self.dir / "db" / name
                    shutil.copy(src, dst)
                    os.chmod(dst, 0o600)
                    if self.as_root:
                        shutil.chown(dst, "postgres")
                listen += " -c ssl=on"
            self._run("pg_ctl", "-D", str(self.dir / "db"), "-l", str(self.dir / "log"), "-w",
                      "-o", f"-k {self.dir} {listen} -c fsync=off -c max_connections={max_connections}",
                      "start")
        except BaseException:
            shutil.rmtree(self.dir, ignore_errors=True)
            raise
        if spares:
            self.worker = threading.Thread(target=self._work, name="corvus-pg-spares", daemon=True)
            self.worker.start()

    def _run(self, tool: str, *args: str) -> str:
        cmd = [str(self.bin / tool), *args]
        if self.as_root:
            # cwd: the postgres user may not be allowed into the caller's directory.
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=self.dir,
                           env=self.env)
        assert p.returncode == 0, f"{tool} failed: {p.stdout}{p.stderr}"
        return p.stdout

    def sql(self, statement: str, db: str = "postgres") -> str:
        return self._run("psql", "-h", str(self.dir), "-U", "postgres", "-d", db, "-X", "-q",
                         "-v", "ON_ERROR_STOP=1", "-c", statement)

    def query(self, url: str, statement: str) -> list[list[str]]:
        """The rows of `statement` in the database of connection string `url`, as text."""
        db = dict(kv.split("=", 1) for kv in url.split())["dbname"]
        out = self._run("psql", "-h", str(self.dir), "-U", "postgres", "-d", db, "-X", "-q",
                        "-A", "-t", "-F", "\t", "-v", "ON_ERROR_STOP=1", "-c", statement)
        return [line.split("\t") for line in out.splitlines() if line]

    def url(self, name: str) -> str:
        port = f" port={self.tcp_port}" if self.tcp_port else ""
        return f"host={self.dir}{port} user=postgres dbname={name}"

    def _create(self) -> str:
        with self.cond:
            self.n += 1
            name = f"corvus_e2e_{self.n}"
        self.sql(f"CREATE DATABASE {name}")
        return name

    def database(self) -> str:
        return self.url(self._create())

    def _work(self):
        """The spares thread: make spare databases, drop unused ones. A failure stops it;
        `database_for` then makes its databases itself (and reports the failure)."""
        while True:
            with self.cond:
                while not self.closing and not self.to_drop and len(self.spares) >= self.spares_wanted:
                    self.cond.wait()
                if self.closing:
                    return
                drop, self.to_drop = self.to_drop, []
                make = len(self.spares) < self.spares_wanted
            try:
                for name in drop:
                    self.sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
                if make:
                    name = self._create()
                    with self.cond:
                        self.spares.append(name)
            except Exception:
                return

    # --- one database per server data directory (CORVUS_E2E_STORE=postgres) ----------------

    def database_for(self, data_dir: pathlib.Path) -> str:
        """The database of the server whose data directory is `data_dir`, made on first use:
        a server made again over the same directory (a restart) finds its mail. Every call
        is one more user of it until `release`."""
        key = str(pathlib.Path(data_dir).resolve())
        with self.cond:
            db = self.by_dir.get(key)
            if db:
                db.users += 1
                return db.url
            name = self.spares.pop(0) if self.spares else None
            self.cond.notify_all()
        name = name or self._create()
        with self.cond:
            self.by_dir[key] = db = ServerDatabase(name, self.url(name))
        return db.url

    def entry(self, data_dir: pathlib.Path) -> ServerDatabase | None:
        with self.cond:
            return self.by_dir.get(str(pathlib.Path(data_dir).resolve()))

    def release(self, data_dir: pathlib.Path):
        """One user of `data_dir`'s database less (a `Server` was collected)."""
        with self.cond:
            db = self.by_dir.get(str(pathlib.Path(data_dir).resolve()))
            if db:
                db.users -= 1

    def drop_unused(self) -> int:
        """Drop the databases no `Server` uses any more (their processes are gone: a
        leftover connection is ended), in the spares thread if there is one; how many."""
        with self.cond:
            unused = [k for k, db in self.by_dir.items() if db.users <= 0]
            names = [self.by_dir.pop(k).name for k in unused]
            if self.worker and self.worker.is_alive():
                self.to_drop += names
                self.cond.notify_all()
                return len(names)
        for name in names:
            self.sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        return len(names)

    # --- outages (test_pg_outage.py) -------------------------------------------------------

    def _ctl(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        """`pg_ctl -D db ARGS…` (as `postgres` when root), its result whatever it is."""
        cmd = [str(self.bin / "pg_ctl"), "-D", str(self.dir / "db"), *args]
        if self.as_root:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=self.dir,
                              env=self.env)

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
        with self.cond:
            self.closing = True
            self.cond.notify_all()
        if self.worker:
            self.worker.join(timeout=130)
        try:
            self._run("pg_ctl", "-D", str(self.dir / "db"), "-m", "immediate", "stop")
        finally:
            time.sleep(0.1)
            shutil.rmtree(self.dir, ignore_errors=True)


# --- the session's server -----------------------------------------------------------------

_session: Postgres | None = None
_session_lock = threading.Lock()


def session() -> Postgres:
    """The PostgreSQL server of this test session, started on first use. Enough
    connections for the servers a test runs at once (each opens up to its `pool_size`, 16 by
    default, plus one a CLI command)."""
    global _session
    with _session_lock:
        if _session is None:
            _session = Postgres(max_connections=500, spares=2)
            atexit.register(close_session)
        return _session


def session_running() -> Postgres | None:
    return _session


def close_session():
    """Stop the session's server (if one was started) and remove its files."""
    global _session
    with _session_lock:
        pg, _session = _session, None
    if pg is not None:
        pg.close()
