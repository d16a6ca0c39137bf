"""A throwaway high-availability PostgreSQL for e2e tests (test_pg_failover.py): a
single-member etcd and two Patroni members — a primary and a synchronous standby — all on
loopback, from Debian's packages (`patroni`, `etcd-server`, `postgresql`; tests/run installs
them). Nothing of the machine's own services is used: every process runs from a temporary
directory on free ports, and `close()` kills them all (by pid) and removes the directory,
also after a failed start.

Patroni and PostgreSQL refuse to run as root: when the tests run as root, the members run as
the `postgres` user and the directory belongs to it. etcd runs as whoever runs the tests.

    with PatroniCluster() as c:
        c.url      # postgresql://corvus@127.0.0.1:P0,127.0.0.1:P1/corvus?target_session_attrs=read-write
        c.leader() # the member Patroni calls leader (waits for one)
        c.kill_postmaster(c.leader())  # kill -9 its PostgreSQL
        c.wait_leader(other)           # Patroni promoted the standby

Timings: ttl 10, loop_wait 1, retry_timeout 3, and `primary_start_timeout: 0`, which makes
Patroni fail over to the synchronous standby as soon as the primary's PostgreSQL crashes
rather than restart it in place (the default waits 300 s for a restart first).
"""

from __future__ import annotations

import json
import os
import pathlib
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request

from .net import free_port
from .postgres import bin_dir

DATABASE = "corvus"
USER = "corvus"
PASSWORD = "corvus-secret"


def tools_missing() -> list[str]:
    """The Debian packages this needs that are not installed."""
    missing = []
    if not shutil.which("patroni"):
        missing.append("patroni")
    if not shutil.which("etcd"):
        missing.append("etcd-server")
    try:
        bin_dir()
    except AssertionError:
        missing.append("postgresql")
    return missing


def _get_json(url: str, timeout: float = 2.0):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read().decode())


class Member:
    """One Patroni member: its PostgreSQL port, REST port, data directory and process."""

    def __init__(self, cluster: "PatroniCluster", name: str):
        self.cluster = cluster
        self.name = name
        self.dir = cluster.dir / name
        self.data = self.dir / "data"
        self.port = free_port()
        self.rest = free_port()
        self.config = self.dir / "patroni.yml"
        self.log = self.dir / "patroni.log"
        self.proc: subprocess.Popen | None = None

    def write_config(self):
        c = self.cluster
        bootstrap = {
            "dcs": {
                "ttl": 10, "loop_wait": 1, "retry_timeout": 3,
                "maximum_lag_on_failover": 16 * 1024 * 1024,
                "synchronous_mode": True,
                "primary_start_timeout": 0,
                "postgresql": {
                    "use_pg_rewind": True,
                    "parameters": {
                        "wal_level": "replica", "hot_standby": "on", "wal_log_hints": "on",
                        "max_connections": 200, "max_wal_senders": 10,
                        "max_replication_slots": 10, "wal_keep_size": "128MB",
                        # The processes are killed, not the machine: what was written is
                        # in the page cache and survives; fsync would only cost time.
                        "fsync": "off", "full_page_writes": "on",
                    },
                },
            },
            "initdb": [{"encoding": "UTF8"}, {"locale": "C"}, {"auth-local": "trust"},
                       {"auth-host": "trust"}],
            "pg_hba": [
                "local all all trust",
                "host all all 127.0.0.1/32 trust",
                "host replication replicator 127.0.0.1/32 trust",
            ],
            "post_bootstrap": str(c.dir / "post_bootstrap.sh"),
        }
        cfg = {
            "scope": c.scope,
            "namespace": "/corvus-e2e/",
            "name": self.name,
            "log": {"level": "INFO", "dir": str(self.dir), "file_num": 1,
                    "file_size": 50 * 1024 * 1024},
            "restapi": {"listen": f"127.0.0.1:{self.rest}",
                        "connect_address": f"127.0.0.1:{self.rest}"},
            "etcd3": {"hosts": [f"127.0.0.1:{c.etcd_port}"]},
            "bootstrap": bootstrap,
            "postgresql": {
                "listen": f"127.0.0.1:{self.port}",
                "connect_address": f"127.0.0.1:{self.port}",
                "data_dir": str(self.data),
                "bin_dir": str(c.bin),
                "pgpass": str(self.dir / "pgpass"),
                # A standby is cloned with pg_basebackup: with a fast checkpoint, not one
                # spread over minutes.
                "basebackup": [{"checkpoint": "fast"}],
                "authentication": {
                    "superuser": {"username": "postgres", "password": "postgres"},
                    "replication": {"username": "replicator", "password": "replicator"},
                    "rewind": {"username": "postgres", "password": "postgres"},
                },
                "parameters": {"unix_socket_directories": str(self.dir),
                               "logging_collector": "on", "log_directory": "log",
                               "log_min_messages": "warning"},
            },
            "tags": {"nofailover": False, "noloadbalance": False, "clonefrom": False,
                     "nosync": False},
        }
        # JSON is YAML.
        self.config.write_text(json.dumps(cfg, indent=1))

    def start(self):
        self.dir.mkdir(parents=True, exist_ok=True)
        self.write_config()
        self.cluster._own(self.dir)
        kw = {}
        if self.cluster.as_root:
            pw = pwd.getpwnam("postgres")
            kw = dict(user=pw.pw_uid, group=pw.pw_gid, extra_groups=[])
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "CORVUS_"))}
        if self.cluster.as_root:
            env["HOME"] = str(self.dir)
        self.out = open(self.dir / "stdout.log", "ab")
        self.proc = subprocess.Popen(["patroni", str(self.config)], stdout=self.out,
                                     stderr=subprocess.STDOUT, cwd=self.dir, env=env,
                                     start_new_session=True, **kw)

    def rest_get(self, path: str):
        return _get_json(f"http://127.0.0.1:{self.rest}{path}")

    def postmaster_pid(self) -> int | None:
        """The pid in the data directory's postmaster.pid, if PostgreSQL runs there."""
        try:
            pid = int((self.data / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        return pid

    def psql(self, sql: str, db: str = "postgres", timeout: float = 10) -> subprocess.CompletedProcess:
        return self.cluster.psql(self.port, sql, db=db, timeout=timeout)

    def is_primary(self) -> bool:
        """Whether its PostgreSQL answers and takes writes (not in recovery)."""
        p = self.psql("SELECT pg_is_in_recovery()", timeout=5)
        return p.returncode == 0 and p.stdout.strip() == "f"

    def logs(self, tail: int = 60) -> str:
        out = []
        for f in sorted(self.dir.glob("*.log")) + sorted(self.data.glob("log/*")):
            try:
                lines = f.read_text(errors="replace").splitlines()
            except OSError:
                continue
            out.append(f"--- {self.name}: {f.name} (last {tail} lines) ---")
            out += lines[-tail:]
        return "\n".join(out)


class PatroniCluster:
    """etcd + two Patroni members, started and waited for in the constructor (a failure
    cleans up before it raises); `close()` ends everything."""

    def __init__(self, start_timeout: float = 90):
        self.bin = bin_dir()
        self.as_root = os.geteuid() == 0
        self.dir = pathlib.Path(tempfile.mkdtemp(prefix="corvus-patroni-", dir="/tmp"))
        self.scope = self.dir.name
        self.etcd: subprocess.Popen | None = None
        self.members: list[Member] = []
        try:
            self._own(self.dir)
            self._start_etcd()
            script = self.dir / "post_bootstrap.sh"
            # Patroni passes the superuser's connection string as the last argument.
            script.write_text(
                "#!/bin/sh\nset -e\n"
                f"'{self.bin}/psql' \"$1\" -v ON_ERROR_STOP=1 -c \"CREATE ROLE {USER} LOGIN "
                f"PASSWORD '{PASSWORD}'\" -c \"CREATE DATABASE {DATABASE} OWNER {USER}\"\n")
            script.chmod(0o755)
            self._own(script)
            self.members = [Member(self, "pg0"), Member(self, "pg1")]
            self.members[0].start()
            # The second member joins once the first has bootstrapped (it clones it).
            self.wait_leader(self.members[0], timeout=start_timeout)
            self.members[1].start()
            self.wait_sync_standby(timeout=start_timeout)
        except BaseException:
            logs = self.logs()
            self.close()
            raise AssertionError(f"Patroni cluster did not come up:\n{logs}")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    # --- plumbing --------------------------------------------------------------------------

    def _own(self, path: pathlib.Path):
        if self.as_root:
            shutil.chown(path, "postgres", "postgres")

    def _start_etcd(self):
        d = self.dir / "etcd"
        d.mkdir()
        self.etcd_port, peer = free_port(), free_port()
        self.etcd_out = open(self.dir / "etcd.log", "ab")
        self.etcd = subprocess.Popen(
            ["etcd", "--name", "e0", "--data-dir", str(d),
             "--listen-client-urls", f"http://127.0.0.1:{self.etcd_port}",
             "--advertise-client-urls", f"http://127.0.0.1:{self.etcd_port}",
             "--listen-peer-urls", f"http://127.0.0.1:{peer}",
             "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
             "--initial-cluster", f"e0=http://127.0.0.1:{peer}",
             "--initial-cluster-token", self.scope, "--initial-cluster-state", "new",
             "--heartbeat-interval", "100", "--election-timeout", "500",
             "--unsafe-no-fsync"],
            stdout=self.etcd_out, stderr=subprocess.STDOUT, cwd=self.dir,
            start_new_session=True)
        deadline = time.monotonic() + 30
        while True:
            if self.etcd.poll() is not None:
                raise AssertionError(f"etcd exited with {self.etcd.returncode}")
            try:
                if _get_json(f"http://127.0.0.1:{self.etcd_port}/health").get("health") == "true":
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError("etcd not healthy within 30 s")
            time.sleep(0.1)

    def psql(self, port: int, sql: str, db: str = "postgres", user: str = "postgres",
             timeout: float = 10) -> subprocess.CompletedProcess:
        """psql -c SQL on 127.0.0.1:port (unaligned, tuples only); its result."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["PGCONNECT_TIMEOUT"] = "3"
        try:
            return subprocess.run(
                [str(self.bin / "psql"), "-h", "127.0.0.1", "-p", str(port), "-U", user,
                 "-d", db, "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql],
                capture_output=True, text=True, timeout=timeout, env=env)
        except subprocess.TimeoutExpired as e:
            return subprocess.CompletedProcess(e.cmd, 124, "", f"timed out after {timeout} s")

    # --- what the tests use ----------------------------------------------------------------

    @property
    def url(self) -> str:
        """The multi-host URL a node uses: whichever member takes writes."""
        hosts = ",".join(f"127.0.0.1:{m.port}" for m in self.members)
        return (f"postgresql://{USER}:{PASSWORD}@{hosts}/{DATABASE}"
                "?target_session_attrs=read-write&connect_timeout=5")

    def cluster_state(self) -> dict:
        """Patroni's `GET /cluster` from the first member that answers."""
        last = None
        for m in self.members:
            try:
                return m.rest_get("/cluster")
            except OSError as e:
                last = e
        raise OSError(f"no Patroni REST API answers: {last}")

    def roles(self) -> dict[str, tuple[str, str]]:
        """{member name: (role, state)} as Patroni reports them; empty if none answers."""
        try:
            return {m["name"]: (m.get("role", ""), m.get("state", ""))
                    for m in self.cluster_state().get("members", [])}
        except (OSError, ValueError):
            return {}

    def member(self, name: str) -> Member:
        return next(m for m in self.members if m.name == name)

    def leader(self) -> Member | None:
        for name, (role, state) in self.roles().items():
            if role in ("leader", "master", "primary") and state == "running":
                return self.member(name)
        return None

    def other(self, m: Member) -> Member:
        return next(x for x in self.members if x is not m)

    def wait_leader(self, member: Member | None = None, timeout: float = 60) -> Member:
        """Wait until Patroni has a leader (`member`, if given) whose PostgreSQL takes
        writes; return it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for p in self.members:
                if p.proc and p.proc.poll() is not None:
                    raise AssertionError(f"patroni {p.name} exited with {p.proc.returncode}")
            lead = self.leader()
            if lead and (member is None or lead is member) and lead.is_primary():
                return lead
            time.sleep(0.25)
        raise AssertionError(f"no leader{' ' + member.name if member else ''} within {timeout} s: "
                             f"{self.roles()}")

    def wait_sync_standby(self, timeout: float = 60) -> Member:
        """Wait until the leader streams to the other member synchronously (Patroni says
        sync_standby, and pg_stat_replication on the leader says sync); return the standby."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            lead = self.leader()
            if lead:
                standby = self.other(lead)
                role, state = self.roles().get(standby.name, ("", ""))
                if role == "sync_standby" and state in ("running", "streaming"):
                    p = lead.psql("SELECT application_name, sync_state FROM pg_stat_replication")
                    if p.returncode == 0 and f"{standby.name}|sync" in p.stdout.split():
                        return standby
            time.sleep(0.25)
        raise AssertionError(f"no synchronous standby within {timeout} s: {self.roles()}")

    def kill_postmaster(self, m: Member) -> int:
        """kill -9 the member's postmaster (from its data directory's postmaster.pid); the
        pid killed. Patroni itself keeps running, notices and fails over."""
        pid = m.postmaster_pid()
        assert pid, f"{m.name}: no running postmaster"
        os.kill(pid, signal.SIGKILL)
        return pid

    def logs(self) -> str:
        out = []
        try:
            out.append("etcd log (last 20 lines):\n" + "\n".join(
                (self.dir / "etcd.log").read_text(errors="replace").splitlines()[-20:]))
        except OSError:
            pass
        out += [m.logs() for m in self.members]
        return "\n".join(out)

    # --- teardown --------------------------------------------------------------------------

    def _pids_under_dir(self) -> list[int]:
        """Processes whose command line names this cluster's directory (the postmaster names
        its data directory, Patroni its config) or that work in it (every PostgreSQL process
        runs in its data directory): ours."""
        mine = str(self.dir)
        pids = []
        for p in pathlib.Path("/proc").iterdir():
            if not p.name.isdigit():
                continue
            try:
                if mine.encode() in (p / "cmdline").read_bytes() or \
                        os.readlink(p / "cwd").startswith(mine + "/"):
                    pids.append(int(p.name))
            except OSError:
                pass
        return pids

    def close(self):
        """Kill everything this cluster started (Patroni first, so it restarts nothing),
        then remove its directory."""
        for m in self.members:
            if m.proc and m.proc.poll() is None:
                try:
                    os.killpg(m.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                m.proc.wait(timeout=10)
        for m in self.members:
            pid = m.postmaster_pid()
            if pid:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        if self.etcd and self.etcd.poll() is None:
            self.etcd.kill()
            self.etcd.wait(timeout=10)
        # Backends outlive a killed postmaster for a moment; anything left naming our
        # directory is ours.
        deadline = time.monotonic() + 10
        while (left := [p for p in self._pids_under_dir() if p != os.getpid()]):
            for pid in left:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            if time.monotonic() > deadline:
                break
            time.sleep(0.1)
        for f in [getattr(self, "etcd_out", None)] + [getattr(m, "out", None) for m in self.members]:
            if f and not f.closed:
                f.close()
        shutil.rmtree(self.dir, ignore_errors=True)
