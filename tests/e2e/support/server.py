"""`Server`: one `corvus serve` process under test, with its config file, data dir, logs, CLI
and client helpers.

A server is made from keyword arguments: the listeners to open (each on a free loopback
port), top-level settings, and one dict per config table (`smtp={...}`, `imap={...}`, ...),
plus `[[hooks]]` entries and raw `extra` TOML. It answers DNS through the loopback responder
whose address it is given (support/dns.py). The presets below (`IMAP`, `POP3`, `HOOKS`) are
the settings the IMAP, POP3 and hook tests share; tests/e2e/conftest.py makes servers for
tests and stops them at teardown, where each must exit 0.

CORVUS_BIN names the binary (default: target/debug/corvus under the repository root).

CORVUS_E2E_STORE names the store backend of every server (default sled): with `postgres`,
each server stores into a fresh database of the session's throwaway PostgreSQL
(support/postgres.py), one per data directory, so a server made again over the same
directory finds its mail; its schema is made with `corvus store migrate` before the first
command that uses the config. A server given its own `[store]` (as a table or in `extra`)
keeps it. Tests that look at what the store leaves on disk check the equivalent in the
database there (`Server.sql`).
"""

from __future__ import annotations

import email.policy
import imaplib
import itertools
import json
import os
import pathlib
import poplib
import re
import signal
import smtplib
import subprocess
import time
import weakref
from email.message import EmailMessage

from .clients import PASSWORD, RawImap, RawPop3, RawSmtp, quote
from .mail import without_return_path
from .net import port_open, tls_context, free_port
from . import postgres

ROOT = pathlib.Path(__file__).resolve().parents[3]
CORVUS_BIN = os.environ.get("CORVUS_BIN") or str(ROOT / "target" / "debug" / "corvus")
ALICE = "alice@example.org"
BOB = "bob@example.org"
# FCrDNS of loopback clients: the resolver answers loopback itself (/etc/hosts, RFC 6761),
# so 127.0.0.1 passes under whatever name the hosts file gives it, and another 127/8 source
# address gets a name ("localhost") that does not resolve back to it: a mismatch.
FCRDNS_FAIL_IP = "127.0.0.3"

# The store backend of the servers of this run (CORVUS_E2E_STORE).
STORES = ("sled", "postgres")
E2E_STORE = os.environ.get("CORVUS_E2E_STORE") or "sled"
if E2E_STORE not in STORES:
    raise RuntimeError(f"CORVUS_E2E_STORE={E2E_STORE!r}: must be one of {', '.join(STORES)}")
ON_POSTGRES = E2E_STORE == "postgres"


# [smtp] settings every server gets unless the test overrides them.
DEFAULT_SMTP = {"command_timeout": "20s", "data_timeout": "20s", "session_timeout": "120s"}

# The IMAP tests: SMTP for delivery, IMAP and IMAPS; plaintext LOGIN allowed.
IMAP = {"listeners": ("smtp", "imap", "imaps"), "hostname": "imap.example.org",
        "shutdown_timeout": "5s", "imap": {"allow_plaintext_auth": True}, "client_timeout": 30}
# The POP3 and mailbox import/export tests.
POP3 = {"listeners": ("smtp", "pop3", "pop3s", "imaps"), "shutdown_timeout": "5s",
        "client_timeout": 30}
# The hook tests (test_scripts.py, test_plugins.py): authentication in plain text on every
# listener (on the smtp listener too, off by default), errors do not end a session.
HOOKS = {"listeners": ("smtp", "submission", "imap"), "hostname": "mx.example.test",
         "domains": ("example.test",), "shutdown_timeout": "5s",
         "smtp": {"allow_plaintext_auth": True, "auth_on_smtp": True, "max_errors": 100},
         "imap": {"allow_plaintext_auth": True}, "client_timeout": 30, "helo": "client.example"}


def child_env(extra: dict | None = None) -> dict:
    """Environment for corvus processes. Every CORVUS_* variable is configuration to corvus
    (unknown ones are errors), so the harness's own CORVUS_BIN must not reach it, nor a
    CORVUS_CONFIG from the caller's shell; `extra` may set some on purpose."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CORVUS_")}
    env.update(extra or {})
    return env


def run_corvus(*args, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """`corvus ARGS…` (paths as str), output captured as text; for runs without a Server."""
    return subprocess.run([CORVUS_BIN, *map(str, args)], capture_output=True, text=True,
                          env=child_env(env), timeout=timeout)


def toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return str(v)
    if isinstance(v, (str, pathlib.Path)):
        return json.dumps(str(v))  # JSON string escapes are valid TOML basic strings
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{json.dumps(str(k))} = {toml_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(v)


def with_preset(preset: dict, **kw) -> dict:
    """Server keyword arguments: `preset` with `kw` on top; a table given in both is merged
    key by key."""
    out = dict(preset)
    for k, v in kw.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = {**out[k], **v}
        else:
            out[k] = v
    return out


_users = itertools.count(1)


class Server:
    """One Corvus server: config file, data_dir, process, CLI and clients.

    `sections` are config tables, e.g. `imap={"allow_plaintext_auth": True}`; `smtp` is
    merged into DEFAULT_SMTP, and `[log]` is at level info unless given. `extra` is raw TOML
    appended after them, `hooks` become `[[hooks]]` tables. `client_timeout` and `helo` are
    the defaults of the smtplib/imaplib/poplib clients the helpers make."""

    def __init__(
        self,
        base: pathlib.Path,
        dns_addr: str,
        *,
        listeners=("smtp", "submission", "submissions"),
        hostname: str = "mx.example.org",
        domains=("example.org",),
        shutdown_timeout: str = "10s",
        host: str = "127.0.0.1",
        ports: dict | None = None,
        data_dir: pathlib.Path | None = None,
        hooks: list[dict] = (),
        extra: str = "",
        client_timeout: float = 15,
        helo: str | None = None,
        **sections: dict,
    ):
        base.mkdir(parents=True, exist_ok=True)
        self.base = base
        self.data_dir = data_dir or base / "data"
        self.hostname = hostname
        self.domains = list(domains)
        self.dns_addr = dns_addr
        self.host = host
        self.ports = ports or {name: free_port() for name in listeners}
        self.sections = {"smtp": dict(DEFAULT_SMTP, **(sections.pop("smtp", None) or {}))}
        self.sections.update(sections)
        self.sections.setdefault("log", {"level": "info"})
        self.hooks = list(hooks)
        self.shutdown_timeout = shutdown_timeout
        self.extra = extra
        self.client_timeout = client_timeout
        self.helo = helo
        self.config = base / "corvus.toml"
        self.proc: subprocess.Popen | None = None
        self.stdout_path = base / "stdout.log"
        self.stderr_path = base / "stderr.log"
        # CORVUS_E2E_STORE=postgres: this data directory's database, unless the test chose
        # a store itself.
        self.pg_url = None
        if ON_POSTGRES and "store" not in self.sections and not re.search(r"^\s*\[store\]", extra, re.M):
            pg = postgres.session()
            self.pg_url = pg.database_for(self.data_dir)
            weakref.finalize(self, pg.release, self.data_dir)
        self.write_config()
        self.prepare_store()

    @property
    def smtp_cfg(self) -> dict:
        return self.sections["smtp"]

    # --- configuration and process -------------------------------------------------------

    def write_config(self, hooks: list[dict] | None = None):
        """Write the config file (again, after a change; `hooks` replaces the hooks)."""
        if hooks is not None:
            self.hooks = list(hooks)
        lines = [
            f"hostname = {toml_value(self.hostname)}",
            f"data_dir = {toml_value(str(self.data_dir))}",
            f"domains = {toml_value(self.domains)}",
            f"shutdown_timeout = {toml_value(self.shutdown_timeout)}",
            "[listen]",
        ]
        lines += [f"{k} = {toml_value('%s:%d' % (self.host, p))}" for k, p in self.ports.items()]
        # More [dns] settings (dns={...}) join the table that names the loopback server.
        lines += ["[dns]", f"nameservers = {toml_value([self.dns_addr])}"]
        lines += [f"{k} = {toml_value(v)}" for k, v in self.sections.get("dns", {}).items()]
        if self.pg_url:
            lines += ["[store]", 'backend = "postgres"', f"url = {toml_value(self.pg_url)}"]
        for table, values in self.sections.items():
            if table == "dns":
                continue
            lines += [f"[{table}]"] + [f"{k} = {toml_value(v)}" for k, v in values.items()]
        text = "\n".join(lines) + "\n" + self.extra
        for h in self.hooks:
            text += "\n[[hooks]]\n" + "".join(f"{k} = {toml_value(v)}\n" for k, v in h.items())
        self.config.write_text(text)

    def prepare_store(self):
        """On PostgreSQL (CORVUS_E2E_STORE): `corvus store migrate` once per database, when
        the server is made (tests also run corvus on its config themselves), else before
        its next command. A config the test made invalid on purpose fails here too; the
        command the test runs then reports it as it would on sled."""
        db = self.pg_url and postgres.session().entry(self.data_dir)
        if not db or db.migrated:
            return
        p = subprocess.run([CORVUS_BIN, "-c", str(self.config), "store", "migrate"],
                           capture_output=True, text=True, env=child_env(), timeout=120,
                           cwd=self.base)
        db.migrated = p.returncode == 0

    def sql(self, statement: str) -> list[list[str]]:
        """On PostgreSQL (CORVUS_E2E_STORE): the rows of `statement` in this server's
        database, as text."""
        assert self.pg_url, "not a server on the session's PostgreSQL"
        return postgres.session().query(self.pg_url, statement)

    def start(self, env: dict | None = None, wait: bool = True):
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.prepare_store()
        self.stdout = open(self.stdout_path, "ab")
        self.stderr = open(self.stderr_path, "ab")
        self.proc = subprocess.Popen(
            [CORVUS_BIN, "-c", str(self.config), "serve"],
            stdout=self.stdout,
            stderr=self.stderr,
            env=child_env(env),
            cwd=self.base,
        )
        if wait:
            self.wait_ready(list(self.ports.values()))
        return self

    def wait_ready(self, ports, timeout: float = 60):
        deadline = time.monotonic() + timeout
        pending = list(ports)
        while pending:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"corvus exited with {self.proc.returncode} before listening:\n{self.logs()}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(f"corvus not listening on {pending}:\n{self.logs()}")
            if port_open(pending[0], self.host):
                pending.pop(0)
            else:
                time.sleep(0.05)
        # The control socket is bound right after the listeners.
        sock = self.data_dir / "control.sock"
        while not sock.exists():
            if time.monotonic() > deadline:
                raise AssertionError(f"no control socket:\n{self.logs()}")
            time.sleep(0.02)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, expect: int | None = 0, timeout: float = 30) -> int:
        """SIGTERM and wait; assert the exit code (None: don't); return it."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"corvus did not exit within {timeout}s of SIGTERM:\n{self.logs()}")
        self._close_logs()
        if expect is not None:
            assert rc == expect, f"corvus exit code {rc}, expected {expect}:\n{self.logs()}"
        return rc

    def restart(self):
        self.stop()
        return self.start()

    def kill(self):
        """SIGKILL: no chance to flush anything."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)
        self._close_logs()

    def _close_logs(self):
        for f in (getattr(self, "stdout", None), getattr(self, "stderr", None)):
            if f and not f.closed:
                f.close()

    def logs(self) -> str:
        """Everything the server wrote so far, stdout then stderr (where the log goes)."""
        out = self.stdout_path.read_text(errors="replace") if self.stdout_path.exists() else ""
        err = self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""
        return f"--- stdout ---\n{out}\n--- stderr ---\n{err}"

    # --- CLI ---------------------------------------------------------------------------------

    def cli(self, *args, input=None, check=True, text=True, env=None, timeout=120):
        """`corvus -c CONFIG ARGS…`; with `check`, a failure is an AssertionError with its output."""
        self.prepare_store()
        p = subprocess.run(
            [CORVUS_BIN, "-c", str(self.config), *args],
            input=input,
            capture_output=True,
            text=text,
            env=child_env(env),
            timeout=timeout,
            cwd=self.base,
        )
        if check:
            assert p.returncode == 0, f"corvus {' '.join(args)} -> {p.returncode}\n{p.stdout}\n{p.stderr}"
        return p

    def add_user(self, name: str | None = None, password: str = PASSWORD) -> str:
        """Make an account and return its address: `name` if it has a domain, else
        name@(first domain); no name: a new one (user1, user2, …)."""
        addr = name or "user%d" % next(_users)
        if "@" not in addr:
            addr = f"{addr}@{self.domains[0]}"
        self.cli("user", "add", addr, "--password", password)
        return addr

    def mailboxes(self, user: str) -> dict[str, int]:
        out = self.cli("mailbox", "list", user).stdout
        result = {}
        for line in out.splitlines():
            name, count = line.rsplit("\t", 1)
            result[name] = int(count)
        return result

    def uids(self, user: str, folder: str = "INBOX") -> list[int]:
        out = self.cli("mailbox", "list", user, folder).stdout
        return [int(line.split("\t")[0]) for line in out.splitlines() if line.strip()]

    def cat(self, user: str, folder: str, uid: int) -> bytes:
        return self.cli("mailbox", "cat", user, folder, str(uid), text=False).stdout

    def stored_messages(self, user: str, folder: str = "INBOX", return_path: bool = False) -> list[bytes]:
        """The stored messages of a folder, in UID order (read with the CLI); without the
        `Return-Path` field that final delivery puts on top (RFC 5321 §4.4) unless
        `return_path`."""
        raw = [self.cat(user, folder, uid) for uid in self.uids(user, folder)]
        return raw if return_path else [without_return_path(m) for m in raw]

    def messages(self, user: str, folder: str = "INBOX") -> list[bytes]:
        """The messages of a folder as IMAP shows them to `user` (password PASSWORD)."""
        m = self.imap(user)
        try:
            typ, _ = m.select(f'"{folder}"', readonly=True)
            if typ != "OK":
                return []
            typ, data = m.uid("SEARCH", None, "ALL")
            out = []
            for uid in data[0].split():
                typ, parts = m.uid("FETCH", uid, "(BODY.PEEK[])")
                out.append(parts[0][1])
            return out
        finally:
            m.logout()

    def deliver(self, to: str, msg: EmailMessage | bytes | None = None, *, subject: str = "hello",
                body: str = "Hello there.\n", sender: str = "sender@remote.test"):
        """Deliver one message over SMTP (the smtp listener, no auth: a local recipient):
        `msg`, or one made of `subject` and `body`."""
        if msg is None:
            msg = EmailMessage()
            msg["From"] = sender
            msg["To"] = to
            msg["Subject"] = subject
            msg["Message-ID"] = f"<{time.time_ns()}@remote.test>"
            msg.set_content(body)
        with smtplib.SMTP(self.host, self.ports["smtp"], timeout=30) as s:
            s.ehlo("client.remote.test")
            raw = msg if isinstance(msg, bytes) else msg.as_bytes(policy=email.policy.SMTP)
            s.sendmail(sender, [to], raw)

    def fill(self, user: str, count: int, prefix: str = "m"):
        """`deliver` `count` messages with the subjects prefix0, prefix1, …"""
        for i in range(count):
            self.deliver(user, subject=f"{prefix}{i}")

    # --- clients -----------------------------------------------------------------------------

    def smtp(self, listener: str = "smtp", timeout: float | None = None, source: str | None = None) -> smtplib.SMTP:
        """smtplib on a listener (implicit TLS on submissions); after EHLO if the server has
        a `helo` name for its clients."""
        timeout = timeout or self.client_timeout
        kw = dict(local_hostname="client.test", timeout=timeout, source_address=(source, 0) if source else None)
        if listener == "submissions":
            s = smtplib.SMTP_SSL(self.host, self.ports[listener], context=tls_context(), **kw)
        else:
            s = smtplib.SMTP(self.host, self.ports[listener], **kw)
        if self.helo:
            s.ehlo(self.helo)
        return s

    def submit_session(self, user: str, pw: str = PASSWORD, listener: str = "submission"):
        """An authenticated smtplib session on a submission listener."""
        s = self.smtp(listener)
        s.ehlo()
        if listener != "submissions":
            s.starttls(context=tls_context())
            s.ehlo()
        s.login(user, pw)
        return s

    def imap(self, user: str | None = None, password: str = PASSWORD) -> imaplib.IMAP4:
        c = imaplib.IMAP4(self.host, self.ports["imap"], timeout=self.client_timeout)
        if user:
            c.login(user, password)
        return c

    def imaps(self, user: str | None = None, password: str = PASSWORD) -> imaplib.IMAP4_SSL:
        c = imaplib.IMAP4_SSL(self.host, self.ports["imaps"], ssl_context=tls_context(),
                              timeout=self.client_timeout)
        if user:
            c.login(user, password)
        return c

    def pop3(self, user: str, password: str = PASSWORD) -> poplib.POP3:
        p = poplib.POP3(self.host, self.ports["pop3"], timeout=self.client_timeout)
        p.user(user)
        p.pass_(password)
        return p

    def raw_smtp(self, listener: str = "smtp", tls: bool = False, timeout: float = 15,
                 source: str | None = None) -> RawSmtp:
        return RawSmtp(self.ports[listener], tls=tls, timeout=timeout, source=source)

    def raw_imap(self, user: str | None = None, tls: bool = False, password: str = PASSWORD,
                 select: str | None = None) -> RawImap:
        """A raw IMAP session, logged in as `user` if given, with `select` selected if given."""
        r = RawImap(self.ports["imaps" if tls else "imap"], tls=tls)
        if user:
            r.ok(f"LOGIN {quote(user)} {quote(password)}")
        if select:
            r.ok(f"SELECT {select}")
        return r

    def raw_pop3(self, listener: str = "pop3s") -> RawPop3:
        return RawPop3(self.ports[listener], tls=listener == "pop3s")


def stop_all(servers) -> None:
    """Stop every running server in `servers` (each must exit cleanly); the failures of all
    of them, not only the first, fail the caller."""
    problems = []
    for s in servers:
        if s.running:
            try:
                s.stop(expect=0)
            except AssertionError as e:
                problems.append(str(e))
    assert not problems, "\n".join(problems)
