"""Real mail filters for the filter hook tests (issue 24): rspamd with its own redis, the
pymilter test milter (tests/e2e/milters/keyword_milter.py), OpenDKIM as a signing milter, and
misbehaving milters written here with raw sockets.

Every process is started by the test run itself, on free loopback ports, with all its files
in a temporary directory; the packaged services (and their default ports) are never used.
`stop()` ends a process group the fixture started (SIGTERM, then SIGKILL) and keeps the
directory (logs); `cleanup()` removes it too. Finalizers do both if a test run drops a
fixture without its teardown (at the latest when the interpreter exits).

The milters run under /usr/bin/python3: Debian's python3-milter (and python3-dkim) are
installed for that interpreter, not for a pyenv `python3` first on PATH.

A small MTA side of the milter protocol (`MilterClient`) checks the milters without Corvus.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
import weakref

from .net import free_port, port_open

SYSTEM_PYTHON = "/usr/bin/python3"
MILTERS = pathlib.Path(__file__).resolve().parents[1] / "milters"
TEST_MILTER = MILTERS / "keyword_milter.py"

GTUBE = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"


# ---------------------------------------------------------------------------------------------
# What is installed


def _system_python_has(*modules: str) -> bool:
    if not os.access(SYSTEM_PYTHON, os.X_OK):
        return False
    code = "import importlib.util, sys; sys.exit(0 if all(importlib.util.find_spec(m) for m in sys.argv[1:]) else 1)"
    return subprocess.run([SYSTEM_PYTHON, "-c", code, *modules], capture_output=True).returncode == 0


def _which(name: str) -> str | None:
    return shutil.which(name) or next(
        (p for p in (f"/usr/sbin/{name}", f"/usr/bin/{name}", f"/sbin/{name}") if os.access(p, os.X_OK)), None)


def missing_rspamd() -> str | None:
    """Why the rspamd tests cannot run, or None."""
    for b in ("rspamd", "redis-server"):
        if not _which(b):
            return f"{b} is not installed (apt-get install rspamd redis-server)"
    return None


def missing_pymilter() -> str | None:
    if not _system_python_has("Milter"):
        return f"pymilter is not installed for {SYSTEM_PYTHON} (apt-get install python3-milter)"
    return None


def missing_opendkim() -> str | None:
    for b in ("opendkim", "opendkim-genkey"):
        if not _which(b):
            return f"{b} is not installed (apt-get install opendkim opendkim-tools)"
    import importlib.util
    if importlib.util.find_spec("dkim") is None:
        return "dkimpy is not installed for the test interpreter (pip install dkimpy)"
    return None


# ---------------------------------------------------------------------------------------------
# Processes


class _Proc:
    """A child process in its own process group, output to a log file; `stop` ends the group."""

    def __init__(self, argv: list[str], log: pathlib.Path, cwd: pathlib.Path | None = None,
                 env: dict | None = None):
        self.argv = argv
        self.log_path = log
        self._log = open(log, "ab")
        self.proc = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT, cwd=cwd,
                                     env=env, start_new_session=True, stdin=subprocess.DEVNULL)
        self._finalizer = weakref.finalize(self, _kill_group, self.proc.pid)

    @property
    def running(self) -> bool:
        return self.proc.poll() is None

    def output(self, tail: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-tail:]
        except OSError:
            return ""

    def stop(self, timeout: float = 5):
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        # Whatever is left of the group (workers of rspamd, threads stuck in a milter).
        _kill_group(self.proc.pid)
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            pass
        self._finalizer.detach()
        self._log.close()


def _kill_group(pgid: int):
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _wait(cond, what: str, proc: _Proc, timeout: float):
    deadline = time.monotonic() + timeout
    while not cond():
        if not proc.running:
            raise AssertionError(f"{what}: {proc.argv[0]} exited with {proc.proc.returncode}:\n{proc.output()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not ready after {timeout}s:\n{proc.output()}")
        time.sleep(0.05)


def _short_tmpdir(prefix: str) -> pathlib.Path:
    """A fresh directory with a short path (unix socket paths are limited to 107 bytes)."""
    return pathlib.Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


# ---------------------------------------------------------------------------------------------
# redis


def redis_cmd(port: int, *args, timeout: float = 5):
    """One command to the redis on 127.0.0.1:port (RESP); the reply as Python values."""
    out = b"*%d\r\n" % len(args)
    for a in args:
        a = a if isinstance(a, bytes) else str(a).encode()
        out += b"$%d\r\n%s\r\n" % (len(a), a)
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(out)
        f = s.makefile("rb")
        return _resp(f)


def _resp(f):
    line = f.readline()
    if not line:
        raise ConnectionError("redis closed the connection")
    kind, rest = line[:1], line[1:-2]
    if kind == b"+":
        return rest.decode()
    if kind == b"-":
        raise RuntimeError("redis: " + rest.decode())
    if kind == b":":
        return int(rest)
    if kind == b"$":
        n = int(rest)
        if n < 0:
            return None
        data = f.read(n + 2)[:-2]
        return data.decode("utf-8", "replace")
    if kind == b"*":
        n = int(rest)
        return None if n < 0 else [_resp(f) for _ in range(n)]
    raise RuntimeError(f"redis: unexpected reply {line!r}")


# ---------------------------------------------------------------------------------------------
# rspamd


# Deterministic test symbols, loaded from $LOCAL_CONFDIR/rspamd.local.lua (rules/rspamd.lua).
# A keyword in the Subject triggers each one.
RSPAMD_LUA = r"""
-- corvus-junk: score 7 (>= add_header 6: action "add header", and >= a junk_score of 6)
rspamd_config.CORVUS_JUNK = {
  callback = function(task) return (task:get_subject() or ''):find('corvus-junk', 1, true) ~= nil end,
  score = 7.0, description = 'Corvus test: junk',
}
-- corvus-mark: score 0.5, a known symbol in a clean message's results
rspamd_config.CORVUS_MARK = {
  callback = function(task) return (task:get_subject() or ''):find('corvus-mark', 1, true) ~= nil end,
  score = 0.5, description = 'Corvus test: mark',
}
-- corvus-softreject / corvus-greylist: the actions "soft reject" and "greylist" as pre-results
rspamd_config.CORVUS_PRE = {
  callback = function(task)
    local s = task:get_subject() or ''
    if s:find('corvus-softreject', 1, true) then
      task:set_pre_result('soft reject', 'corvus test soft reject')
      return true
    elseif s:find('corvus-greylist', 1, true) then
      task:set_pre_result('greylist', 'corvus test greylist')
      return true
    end
    return false
  end,
  score = 0.0, description = 'Corvus test: pre-results',
}
"""

# Modules that fetch maps over HTTP(S) or ask DNS: off, so nothing leaves the machine and no
# scan waits for an unreachable resolver.
RSPAMD_OFF = ("multimap", "rbl", "surbl", "emails", "phishing", "fuzzy_check", "whitelist", "mid",
              "mime_types", "dkim", "spf", "dmarc", "arc", "dkim_signing", "asn", "hfilter",
              "once_received", "url_redirector", "rspamd_update", "reputation", "neural",
              "greylist", "ratelimit", "replies", "history_redis", "bayes_expiry", "mx_check",
              "dcc", "antivirus", "external_services", "clickhouse", "elastic", "metadata_exporter",
              "maillist", "bimi", "p0f", "spamassassin", "spamtrap", "trie", "aws_s3")

# The TLD list rspamd compiles at start (the full public suffix list takes ~10 s of CPU).
RSPAMD_TLDS = ("org", "com", "net", "test", "example", "invalid", "localhost")

# hs_helper, a worker rspamd always starts, compiles the regexps to hyperscan databases even with
# `disable_hyperscan` (it only stops the scanners from using them); a cache shared by every
# run makes that a one-time cost.
RSPAMD_HS_CACHE = pathlib.Path(tempfile.gettempdir()) / f"corvus-test-rspamd-hs.{os.getuid()}"


class Rspamd:
    """rspamd (normal worker and controller, one process each) and a redis of its own for the
    Bayes statistics, offline: `Rspamd(password=None).start()`, `stop()`.

    - `url`: the normal worker ("http://127.0.0.1:PORT", /checkv2), `controller_url` the
      controller (/learnspam, /learnham, /stat).
    - `password`: None lets loopback clients learn without one (secure_ip 127.0.0.1); a
      string makes the controller require it (header `Password`) from every client.
    - Actions: reject 15, rewrite subject 8, add header 6, greylist 4. GTUBE gives "reject"
      (smtp_message "Gtube pattern"); the test patterns are on, so GTUBE with its first
      letter changed to Y / Z / A gives "add header" / "rewrite subject" / "no action".
    - Test symbols (Subject keywords): corvus-junk (CORVUS_JUNK, 7.0), corvus-mark (CORVUS_MARK,
      0.5), corvus-softreject / corvus-greylist (pre-results "soft reject" / "greylist").
    - Bayes on redis, min_learns 1 (learning shows at once), not per user; `learned()` reads
      the counts from redis.
    """

    def __init__(self, password: str | None = None, per_user: bool = False):
        self.password = password
        self.per_user = per_user
        self.dir: pathlib.Path | None = None
        self.rspamd: _Proc | None = None
        self.redis: _Proc | None = None

    # --- life cycle ------------------------------------------------------------------------

    def start(self, timeout: float = 60) -> "Rspamd":
        reason = missing_rspamd()
        assert reason is None, reason
        self.dir = d = _short_tmpdir("rsp")
        self._rmdir = weakref.finalize(self, shutil.rmtree, str(d), True)
        self.port, self.controller_port, self.redis_port = free_port(), free_port(), free_port()
        for sub in ("local/local.d", "db", "run", "log", "redis"):
            (d / sub).mkdir(parents=True)
        RSPAMD_HS_CACHE.mkdir(mode=0o700, exist_ok=True)
        self._write_config()
        try:
            self.redis = _Proc([_which("redis-server"), "--port", str(self.redis_port), "--bind", "127.0.0.1",
                                "--save", "", "--appendonly", "no", "--dir", str(d / "redis"),
                                "--daemonize", "no", "--databases", "1", "--loglevel", "warning"],
                               d / "log" / "redis.log", cwd=d / "redis")
            _wait(self._redis_ready, "redis", self.redis, timeout)
            argv = [_which("rspamd"), "-f", "-c", str(d / "rspamd.conf")]
            if os.geteuid() == 0:
                argv.append("-i")  # workers may run as root (a throwaway test instance)
            argv += [f"--var={k}={v}" for k, v in self._vars().items()]
            self.rspamd = _Proc(argv, d / "log" / "stdout.log", cwd=d)
            _wait(self._rspamd_ready, "rspamd", self.rspamd, timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self):
        for p in (self.rspamd, self.redis):
            if p is not None:
                p.stop()
        self.rspamd = self.redis = None

    def cleanup(self):
        """`stop`, and remove the directory."""
        self.stop()
        if self.dir is not None:
            self._rmdir()

    @property
    def running(self) -> bool:
        return self.rspamd is not None and self.rspamd.running

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.cleanup()

    # --- addresses -------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def controller_url(self) -> str:
        return f"http://127.0.0.1:{self.controller_port}"

    def logs(self, tail: int = 8000) -> str:
        """The tail of rspamd's log (and what it printed)."""
        out = []
        for name in ("stdout.log", "rspamd.log"):
            p = self.dir / "log" / name
            if p.exists():
                out.append(f"--- {name} ---\n" + p.read_text(errors="replace")[-tail:])
        return "\n".join(out)

    def scans(self, last: int = 5) -> list[str]:
        """rspamd's one-line summaries of its last scans (message id, queue id, IP, sender,
        action, score and symbols), for assertion messages."""
        p = self.dir / "log" / "rspamd.log"
        lines = p.read_text(errors="replace").splitlines() if p.exists() else []
        return [l.split("rspamd_task_write_log: ", 1)[1] for l in lines if "rspamd_task_write_log: " in l][-last:]

    def learns(self, last: int = 10) -> list[str]:
        """The controller's log lines about learning (and its errors), for assertion messages."""
        p = self.dir / "log" / "rspamd.log"
        lines = p.read_text(errors="replace").splitlines() if p.exists() else []
        return [l for l in lines if "(controller)" in l and ("learn" in l or "error" in l.lower())][-last:]

    # --- clients ---------------------------------------------------------------------------

    def check(self, message: bytes, **headers) -> dict:
        """POST /checkv2 on the normal worker; `headers` are protocol headers (IP=…, From=…,
        Rcpt=… (a list for several)); the JSON reply."""
        return self._post(self.url + "/checkv2", message, headers)[1]

    def learn(self, kind: str, message: bytes, password: str | None = None) -> tuple[int, dict]:
        """POST /learnspam or /learnham (`kind` "spam"/"ham") on the controller: (status, JSON)."""
        headers = {"Password": password} if password is not None else {}
        return self._post(f"{self.controller_url}/learn{kind}", message, headers)

    def stat(self) -> dict:
        """GET /stat on the controller. Its `learned` counts at once; its statfiles are
        refreshed from redis only every ~30 s: use `learned()` for the counts."""
        req = urllib.request.Request(self.controller_url + "/stat")
        if self.password is not None:
            req.add_header("Password", self.password)
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.load(r)

    def learned(self) -> tuple[int, int]:
        """(spam, ham): how many messages the Bayes classifier learned as each, read from
        redis (immediate), summed over every user when statistics are per user."""
        totals = []
        for label, field in (("BAYES_SPAM", "learns_spam"), ("BAYES_HAM", "learns_ham")):
            keys = redis_cmd(self.redis_port, "SMEMBERS", f"{label}_keys") or []
            n = 0
            for k in keys:
                v = redis_cmd(self.redis_port, "HGET", k, field)
                n += int(v or 0)
            totals.append(n)
        return totals[0], totals[1]

    def _post(self, url: str, body: bytes, headers: dict) -> tuple[int, dict]:
        req = urllib.request.Request(url, data=body, method="POST")
        for k, v in headers.items():
            for one in (v if isinstance(v, (list, tuple)) else [v]):
                req.add_header(k.replace("_", "-"), str(one))
        try:
            with urllib.request.urlopen(req, timeout=20) as r:
                status, data = r.status, r.read()
        except urllib.error.HTTPError as e:
            status, data = e.code, e.read()
        try:
            return status, json.loads(data) if data else {}
        except ValueError:
            return status, {"raw": data.decode(errors="replace")}

    # --- readiness and config --------------------------------------------------------------

    def _redis_ready(self) -> bool:
        try:
            return redis_cmd(self.redis_port, "PING", timeout=1) == "PONG"
        except OSError:
            return False

    def _rspamd_ready(self) -> bool:
        for port in (self.port, self.controller_port):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=1) as r:
                    if not r.read().startswith(b"pong"):
                        return False
            except (OSError, urllib.error.URLError):
                return False
        return True

    def _vars(self) -> dict:
        d = self.dir
        return {"LOCAL_CONFDIR": d / "local", "DBDIR": d / "db", "RUNDIR": d / "run", "LOGDIR": d / "log"}

    def _write_config(self):
        d = self.dir
        local = d / "local" / "local.d"
        if self.password is None:
            auth = 'secure_ip = "127.0.0.1"; secure_ip = "::1";'
        else:
            pw = json.dumps(self.password)
            # Loopback is not "secure": every client must give the password.
            auth = f'password = {pw}; enable_password = {pw}; secure_ip = "192.0.2.1";'
        # The top level is ours: the stock rspamd.conf's proxy and fuzzy workers are left out,
        # and its options block (DNS, maps, the full TLD list) replaced.
        (d / "rspamd.conf").write_text(f"""\
.include "$CONFDIR/common.conf"
options {{
  pidfile = "$RUNDIR/rspamd.pid";
  filters = "chartable,regexp";
  cache_file = "$DBDIR/symbols.cache";
  dynamic_conf = "$DBDIR/rspamd_dynamic";
  history_file = "$DBDIR/rspamd.history";
  stats_file = "$DBDIR/stats.ucl";
  rrd = "$DBDIR/rspamd.rrd";
  control_socket = "$DBDIR/rspamd.sock mode=0600";
  hs_cache_dir = "{RSPAMD_HS_CACHE}/";
  tempdir = "$DBDIR";
  url_tld = "$LOCAL_CONFDIR/tld.dat";
  explicit_modules = ["settings"];
  local_addrs = [192.168.0.0/16, 10.0.0.0/8, 172.16.0.0/12, fd00::/8];
  classify_headers = ["User-Agent", "X-Mailer", "Content-Type", "X-MimeOLE"];
  allow_raw_input = true;
  task_timeout = 8s;
  disable_hyperscan = true;
  enable_test_patterns = true;
  map_watch_interval = 1h;
  dns {{ timeout = 0.5s; retransmits = 1; sockets = 1; nameserver = ["127.0.0.1:9"]; }}
}}
logging {{ type = "file"; filename = "$LOGDIR/rspamd.log"; level = "info"; }}
worker "normal" {{ bind_socket = "127.0.0.1:{self.port}"; count = 1; mime = true; }}
worker "controller" {{ bind_socket = "127.0.0.1:{self.controller_port}"; count = 1; {auth} }}
worker "hs_helper" {{ count = 0; }}
""")
        (d / "local" / "tld.dat").write_text("\n".join(RSPAMD_TLDS) + "\n")
        (d / "local" / "rspamd.local.lua").write_text(RSPAMD_LUA)
        for m in RSPAMD_OFF:
            (local / f"{m}.conf").write_text("enabled = false;\n")
        (local / "actions.conf").write_text(
            'reject = 15; rewrite_subject = 8; add_header = 6; greylist = 4; subject = "***SPAM*** %s";\n')
        (local / "classifier-bayes.conf").write_text(
            f'backend = "redis"; servers = "127.0.0.1:{self.redis_port}"; min_learns = 1; '
            f"per_user = {'true' if self.per_user else 'false'};\n"
            "autolearn = false;\n")
        # No redis for any other module (greylist, ratelimit, history, ...): they stay off.
        (local / "redis.conf").write_text("")


# ---------------------------------------------------------------------------------------------
# Milters


class Milter:
    """The pymilter test milter (tests/e2e/milters/keyword_milter.py; what it does is described
    there): `Milter(unix=False).start()`, `stop()`.

    - `address`: what Corvus's `milter =` takes: "127.0.0.1:PORT", or "unix:/path" with
      `unix=True`.
    - `log`: the JSON-lines log, one line per callback; `events()` reads it, `clear()`
      empties it, `session(subject)` gives the events of the milter connection whose message
      had that Subject (before the milter changed it).
    """

    def __init__(self, unix: bool = False):
        self.unix = unix
        self.proc: _Proc | None = None
        self.dir: pathlib.Path | None = None

    def start(self, timeout: float = 30) -> "Milter":
        reason = missing_pymilter()
        assert reason is None, reason
        self.dir = _short_tmpdir("mlt")
        self._rmdir = weakref.finalize(self, shutil.rmtree, str(self.dir), True)
        self.log = self.dir / "milter.log"
        self.log.touch()
        if self.unix:
            self.sock = self.dir / "milter.sock"
            spec, self.address = f"unix:{self.sock}", f"unix:{self.sock}"
            ready = self.sock.exists
        else:
            self.port = free_port()
            spec, self.address = f"inet:{self.port}@127.0.0.1", f"127.0.0.1:{self.port}"
            ready = lambda: port_open(self.port)  # noqa: E731
        self.proc = _Proc([SYSTEM_PYTHON, str(TEST_MILTER), spec, str(self.log)], self.dir / "stdout.log")
        try:
            _wait(ready, "test milter", self.proc, timeout)
        except BaseException:
            self.stop()
            raise
        if not self.unix:
            # The readiness probe was a connection: its (empty) session is in the log.
            time.sleep(0.1)
            self.clear()
        return self

    def stop(self):
        if self.proc is not None:
            # libmilter waits for its sessions on SIGTERM (a HANG one for an hour): a short
            # grace, then SIGKILL; the milter keeps nothing.
            self.proc.stop(timeout=0.5)
            self.proc = None

    def cleanup(self):
        self.stop()
        if self.dir is not None:
            self._rmdir()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.cleanup()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.running

    def output(self) -> str:
        """What the milter printed (tracebacks of failed callbacks)."""
        return self.proc.output() if self.proc else ""

    def events(self, ev: str | None = None) -> list[dict]:
        out = []
        for line in self.log.read_text().splitlines():
            try:
                e = json.loads(line)
            except ValueError:
                continue  # a line being written
            if ev is None or e["ev"] == ev:
                out.append(e)
        return out

    def clear(self):
        self.log.write_text("")

    def session(self, subject: str) -> list[dict]:
        """Every event of the milter connection that saw a message with this Subject."""
        conns = {e["conn"] for e in self.events("eom") if e.get("subject") == subject}
        conns |= {e["conn"] for e in self.events("header")
                  if e.get("name", "").lower() == "subject" and e.get("value") == subject}
        return [e for e in self.events() if e.get("conn") in conns]


class BadMilter:
    """A milter that misbehaves, on raw sockets (no libmilter), for the "bad input" tests:

    - "garbage": negotiates properly, then answers the next command that needs a reply with
      bytes that are no milter reply (a huge length and junk), and keeps the connection open;
    - "close": negotiates, then closes the connection when the next command arrives (CONNECT
      normally);
    - "slow": negotiates at once, then answers everything correctly (CONTINUE; ACCEPT at end
      of message) but one byte per second, so each reply takes 5 s (a timeout per read, rather
      than a deadline per reply, would never fire);
    - "slow-negotiation": the same from the very first reply (the negotiation takes 17 s).

    `address` is "127.0.0.1:PORT"; `connections` counts accepted connections, `commands` the
    command bytes received (in order, over all connections)."""

    GARBAGE = b"\x7f\xff\xff\xf0garbage that is not a milter reply\r\n"

    def __init__(self, mode: str):
        assert mode in ("garbage", "close", "slow", "slow-negotiation"), mode
        self.mode = mode
        self.connections = 0
        self.commands: list[str] = []
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._socks: list[socket.socket] = []

    def start(self) -> "BadMilter":
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", self.port))
        self.listener.listen(16)
        self.listener.settimeout(0.2)
        t = threading.Thread(target=self._accept_loop, daemon=True, name=f"bad-milter-{self.mode}")
        t.start()
        self._threads.append(t)
        return self

    def stop(self):
        self._stop.set()
        for s in [self.listener, *self._socks]:
            try:
                s.close()
            except OSError:
                pass
        for t in self._threads:
            t.join(timeout=3)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def _accept_loop(self):
        while not self._stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            self.connections += 1
            self._socks.append(conn)
            t = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            t.start()
            self._threads.append(t)

    def _serve(self, conn: socket.socket):
        conn.settimeout(1)
        buf = b""
        negotiated = False
        try:
            while not self._stop.is_set():
                while len(buf) < 4 or len(buf) < 4 + struct.unpack(">I", buf[:4])[0]:
                    try:
                        data = conn.recv(65536)
                    except socket.timeout:
                        if self._stop.is_set():
                            return
                        continue
                    if not data:
                        return
                    buf += data
                n = struct.unpack(">I", buf[:4])[0]
                cmd, buf = buf[4:5].decode("latin-1"), buf[4 + n:]
                self.commands.append(cmd)
                if cmd == "O":
                    # Version 6, no actions, no protocol bits: every event with a reply.
                    self._reply(conn, b"O" + struct.pack(">III", 6, 0, 0), slow=self.mode == "slow-negotiation")
                    negotiated = True
                    continue
                if cmd in "DAQK" or not cmd:  # no reply to macros, abort, quit
                    if cmd == "Q":
                        return
                    continue
                if negotiated and self.mode == "garbage":
                    conn.sendall(self.GARBAGE)
                    continue
                if negotiated and self.mode == "close":
                    return
                self._reply(conn, b"a" if cmd == "E" else b"c", slow=self.mode.startswith("slow"))
        except OSError:
            pass
        finally:
            try:
                conn.close()
            except OSError:
                pass

    def _reply(self, conn: socket.socket, packet: bytes, slow: bool = False):
        data = struct.pack(">I", len(packet)) + packet
        if not slow:
            conn.sendall(data)
            return
        for i in range(len(data)):
            if self._stop.wait(1.0):
                return
            conn.sendall(data[i:i + 1])


# ---------------------------------------------------------------------------------------------
# OpenDKIM


class OpenDkim:
    """OpenDKIM as a signing milter (Mode s) for example.org, selector `test`, with a key made
    for the run: `OpenDkim().start()`, `stop()`; `address` ("127.0.0.1:PORT"),
    `verify(message)` (dkimpy, with the public key given directly instead of DNS)."""

    def __init__(self, domain: str = "example.org", selector: str = "test"):
        self.domain, self.selector = domain, selector
        self.proc: _Proc | None = None
        self.dir: pathlib.Path | None = None

    def start(self, timeout: float = 30) -> "OpenDkim":
        reason = missing_opendkim()
        assert reason is None, reason
        self.dir = d = _short_tmpdir("dkim")
        self._rmdir = weakref.finalize(self, shutil.rmtree, str(d), True)
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        subprocess.run([_which("opendkim-genkey"), "-D", str(d), "-d", self.domain, "-s", self.selector,
                        "-b", "2048"], check=True, capture_output=True)
        key = d / f"{self.selector}.private"
        key.chmod(0o600)
        txt = (d / f"{self.selector}.txt").read_text()
        self.record = "".join(re.findall(r'"([^"]*)"', txt)).encode()
        (d / "opendkim.conf").write_text(f"""\
Mode                s
Domain              {self.domain}
Selector            {self.selector}
KeyFile             {key}
Socket              inet:{self.port}@127.0.0.1
Canonicalization    relaxed/simple
SignatureAlgorithm  rsa-sha256
InternalHosts       127.0.0.1
RequireSafeKeys     false
Syslog              no
LogWhy              yes
PidFile             {d}/opendkim.pid
""")
        self.proc = _Proc([_which("opendkim"), "-f", "-v", "-x", str(d / "opendkim.conf")], d / "opendkim.log")
        try:
            _wait(lambda: port_open(self.port), "opendkim", self.proc, timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self):
        if self.proc is not None:
            self.proc.stop(timeout=0.5)  # it lingers ~5 s on SIGTERM; it keeps nothing
            self.proc = None

    def cleanup(self):
        self.stop()
        if self.dir is not None:
            self._rmdir()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.cleanup()

    def output(self) -> str:
        return self.proc.output() if self.proc else ""

    def dnsfunc(self, name, timeout=5):
        """dkimpy's DNS lookup, answered from the generated key (no DNS)."""
        want = f"{self.selector}._domainkey.{self.domain}".encode()
        return self.record if name.rstrip(b".").lower() == want else None

    def verify(self, message: bytes) -> bool:
        """Whether a DKIM-Signature of the message verifies with the generated public key."""
        import dkim
        return bool(dkim.verify(message, dnsfunc=self.dnsfunc))


# ---------------------------------------------------------------------------------------------
# The MTA side of the milter protocol, to check the milters above without Corvus


class MilterClient:
    """Talks to a milter as an MTA would (protocol 6), one message per `send_message`:
    `MilterClient(port).send_message(sender, rcpts, message, macros=…)` returns
    (modifications, final) where modifications are (code, data) tuples and final the last
    reply's (code, data); `negotiated` is (version, actions, protocol) of the milter."""

    ACTIONS = 0x1FF
    PROTOCOL = 0x1FFFFF

    def __init__(self, port: int, timeout: float = 10):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buf = b""
        self._send(b"O", struct.pack(">III", 6, self.ACTIONS, self.PROTOCOL))
        code, data = self._read()
        assert code == b"O", (code, data)
        self.negotiated = struct.unpack(">III", data[:12])
        self.proto = self.negotiated[2]

    def close(self):
        try:
            self._send(b"Q", b"")
        except OSError:
            pass
        self.sock.close()

    def _send(self, cmd: bytes, data: bytes):
        self.sock.sendall(struct.pack(">I", len(data) + 1) + cmd + data)

    def _read(self) -> tuple[bytes, bytes]:
        while True:
            if len(self.buf) >= 4:
                n = struct.unpack(">I", self.buf[:4])[0]
                if len(self.buf) >= 4 + n:
                    pkt, self.buf = self.buf[4:4 + n], self.buf[4 + n:]
                    return pkt[:1], pkt[1:]
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("milter closed the connection")
            self.buf += data

    def _event(self, cmd: bytes, data: bytes, no: int, nr: int, macros: dict | None = None):
        if macros:
            self._send(b"D", cmd + b"".join(k.encode() + b"\0" + v.encode() + b"\0" for k, v in macros.items()))
        if self.proto & no:
            return None
        self._send(cmd, data)
        if self.proto & nr:
            return None
        while True:
            code, d = self._read()
            if code != b"p":  # progress
                return code, d

    def connect(self, hostname="client.test", addr="127.0.0.1", port=12345, macros=None):
        data = hostname.encode() + b"\0" + b"4" + struct.pack(">H", port) + addr.encode() + b"\0"
        return self._event(b"C", data, 0x1, 0x1000, macros)

    def send_message(self, sender: str, rcpts: list[str], message: bytes, helo="client.test",
                     macros: dict | None = None, connect: bool = True):
        """The whole exchange for one message; stops at the first final reply (anything but
        CONTINUE) before end of message and returns ([], that reply)."""
        m = macros or {}
        steps = []
        if connect:
            steps.append(lambda: self.connect(macros=m.get("C")))
            steps.append(lambda: self._event(b"H", helo.encode() + b"\0", 0x2, 0x2000, m.get("H")))
        steps.append(lambda: self._event(b"M", f"<{sender}>".encode() + b"\0", 0x4, 0x4000, m.get("M")))
        for r in rcpts:
            steps.append(lambda r=r: self._event(b"R", f"<{r}>".encode() + b"\0", 0x8, 0x8000, m.get("R")))
        steps.append(lambda: self._event(b"T", b"", 0x200, 0x10000, m.get("T")))
        for step in steps:
            reply = step()
            if reply is not None and reply[0] != b"c":
                return [], reply
        head, _, body = message.partition(b"\r\n\r\n")
        fields = re.split(rb"\r\n(?![ \t])", head)
        for f in fields:
            name, _, value = f.partition(b":")
            reply = self._event(b"L", name + b"\0" + value.lstrip(b" ").replace(b"\r\n", b"\n") + b"\0",
                                0x20, 0x80, m.get("L"))
            if reply is not None and reply[0] != b"c":
                return [], reply
        reply = self._event(b"N", b"", 0x40, 0x40000, m.get("N"))
        if reply is not None and reply[0] != b"c":
            return [], reply
        for i in range(0, len(body), 65535):
            reply = self._event(b"B", body[i:i + 65535], 0x10, 0x80000, m.get("B"))
            if reply is not None and reply[0] not in (b"c", b"s"):
                return [], reply
        if m.get("E"):
            self._send(b"D", b"E" + b"".join(k.encode() + b"\0" + v.encode() + b"\0" for k, v in m["E"].items()))
        self._send(b"E", b"")
        mods = []
        while True:
            code, d = self._read()
            if code in b"acrtdy4":
                return mods, (code, d)
            if code != b"p":
                mods.append((code, d))
