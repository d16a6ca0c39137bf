"""IMAP end-to-end support: a Corvus server per test module (or per test when a test needs its
own settings), independent clients (imaplib and a raw-socket transcript client), and mail
delivery through SMTP with smtplib.

Self-contained on purpose: it does not rely on conftest.py fixtures. Each server gets a temp
config TOML (hostname, data_dir, domains, [listen] smtp/imap/imaps on free 127.0.0.1 ports,
[imap] settings), runs as `$CORVUS_BIN -c FILE serve`, and is stopped with SIGTERM at
teardown, where it must exit 0.
"""

from __future__ import annotations

import imaplib
import itertools
import os
import pathlib
import re
import signal
import smtplib
import socket
import ssl
import struct
import subprocess
import time
import email.policy
from email.message import EmailMessage

ROOT = pathlib.Path(__file__).resolve().parents[2]
CORVUS_BIN = os.environ.get("CORVUS_BIN") or str(ROOT / "target" / "debug" / "corvus")
DOMAIN = "example.org"
PASSWORD = "imap pass 1"

# Python's imaplib knows these commands only for certain states; teach it the newer ones.
for _cmd in ("ENABLE", "ID", "MOVE", "UNSELECT", "NAMESPACE", "IDLE"):
    imaplib.Commands.setdefault(_cmd, ("AUTH", "SELECTED", "NONAUTH"))


def server_env() -> dict:
    """The environment for corvus processes: without CORVUS_* variables, which Corvus reads
    as configuration (CORVUS_BIN, set by tests/run, would be an unknown key `bin`)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("CORVUS_")}


from conftest import free_port, port_open, tls_context, toml_value  # noqa: E402,F401
from hook_server import Dns  # noqa: E402


_users = itertools.count(1)


class Server:
    """One Corvus process with SMTP, IMAP and IMAPS listeners."""

    def __init__(self, base: pathlib.Path, imap: dict | None = None, smtp: dict | None = None,
                 extra: str = ""):
        base.mkdir(parents=True, exist_ok=True)
        self.base = base
        self.data_dir = base / "data"
        self.dns = Dns()  # NXDOMAIN for every name
        self.ports = {"smtp": free_port(), "imap": free_port(), "imaps": free_port()}
        self.imap_cfg = {"allow_plaintext_auth": True}
        self.imap_cfg.update(imap or {})
        self.smtp_cfg = {"command_timeout": "20s", "data_timeout": "20s"}
        self.smtp_cfg.update(smtp or {})
        self.extra = extra
        self.config = base / "corvus.toml"
        self.proc: subprocess.Popen | None = None
        self.log_path = base / "server.log"
        self.write_config()

    def write_config(self):
        lines = [
            f"hostname = {toml_value('imap.' + DOMAIN)}",
            f"data_dir = {toml_value(str(self.data_dir))}",
            f"domains = {toml_value([DOMAIN])}",
            'shutdown_timeout = "5s"',
            "[listen]",
        ]
        lines += [f"{k} = {toml_value('127.0.0.1:%d' % p)}" for k, p in self.ports.items()]
        lines += ["[dns]", f"nameservers = {toml_value([self.dns.addr])}"]
        lines += ["[smtp]"] + [f"{k} = {toml_value(v)}" for k, v in self.smtp_cfg.items()]
        lines += ["[imap]"] + [f"{k} = {toml_value(v)}" for k, v in self.imap_cfg.items()]
        lines += ["[log]", 'level = "info"']
        self.config.write_text("\n".join(lines) + "\n" + self.extra)

    # --- process -------------------------------------------------------------------------

    def start(self):
        assert self.proc is None or self.proc.poll() is not None
        self.log = open(self.log_path, "ab")
        env = server_env()
        self.proc = subprocess.Popen([CORVUS_BIN, "-c", str(self.config), "serve"],
                                     stdout=self.log, stderr=subprocess.STDOUT, env=env,
                                     cwd=self.base)
        deadline = time.monotonic() + 30
        for port in self.ports.values():
            while not port_open(port):
                if self.proc.poll() is not None:
                    raise AssertionError(f"corvus exited {self.proc.returncode}:\n{self.logs()}")
                if time.monotonic() > deadline:
                    raise AssertionError(f"corvus not listening on {port}:\n{self.logs()}")
                time.sleep(0.05)
        return self

    def stop(self, timeout: float = 20) -> int:
        """SIGTERM and wait; returns the exit code."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"corvus did not stop after SIGTERM:\n{self.logs()}")
        self.log.close()
        return rc

    def restart(self):
        assert self.stop() == 0, self.logs()
        self.start()

    def close(self):
        try:
            rc = self.stop()
            assert rc == 0, f"corvus exited {rc}:\n{self.logs()}"
        finally:
            self.dns.close()

    def logs(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-6000:]
        except OSError:
            return ""

    def cli(self, *args, check=True) -> subprocess.CompletedProcess:
        r = subprocess.run([CORVUS_BIN, "-c", str(self.config), *args], capture_output=True,
                           text=True, timeout=60, env=server_env())
        if check:
            assert r.returncode == 0, f"corvus {args}: {r.stdout}\n{r.stderr}"
        return r

    # --- accounts and mail ---------------------------------------------------------------

    def add_user(self, name: str | None = None, password: str = PASSWORD) -> str:
        addr = f"{name or 'user%d' % next(_users)}@{DOMAIN}"
        self.cli("user", "add", addr, "--password", password)
        return addr

    def deliver(self, to: str, subject: str = "hello", body: str = "Hello there.\n",
                sender: str = "sender@remote.test", msg: EmailMessage | bytes | None = None):
        """Deliver one message over SMTP (port 25 listener, no auth: local recipient)."""
        if msg is None:
            msg = EmailMessage()
            msg["From"] = sender
            msg["To"] = to
            msg["Subject"] = subject
            msg["Message-ID"] = f"<{time.time_ns()}@remote.test>"
            msg.set_content(body)
        with smtplib.SMTP("127.0.0.1", self.ports["smtp"], timeout=30) as s:
            s.ehlo("client.remote.test")
            raw = msg if isinstance(msg, bytes) else msg.as_bytes(policy=email.policy.SMTP)
            s.sendmail(sender, [to], raw)

    # --- clients -------------------------------------------------------------------------

    def imap(self, user: str | None = None, password: str = PASSWORD) -> imaplib.IMAP4:
        c = imaplib.IMAP4("127.0.0.1", self.ports["imap"], timeout=30)
        if user:
            c.login(user, password)
        return c

    def imaps(self, user: str | None = None, password: str = PASSWORD) -> imaplib.IMAP4_SSL:
        c = imaplib.IMAP4_SSL("127.0.0.1", self.ports["imaps"], ssl_context=tls_context(),
                              timeout=30)
        if user:
            c.login(user, password)
        return c

    def raw(self, user: str | None = None, tls: bool = False, password: str = PASSWORD):
        r = Raw(self.ports["imaps" if tls else "imap"], tls=tls)
        if user:
            r.ok(f"LOGIN {quote(user)} {quote(password)}")
        return r


def quote(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


class Raw:
    """A transcript client: sends exact bytes and reads whole responses, literals included.

    `cmd` returns (untagged, tagged) where each untagged response is bytes with literals
    inlined, exactly as received (minus the final CRLF)."""

    def __init__(self, port: int, tls: bool = False, timeout: float = 15):
        sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        if tls:
            sock = tls_context().wrap_socket(sock)
        self.sock = sock
        self.buf = b""
        self.tags = itertools.count(1)
        self.greeting = self.line()

    def starttls(self):
        self.sock = tls_context().wrap_socket(self.sock)

    def send(self, data: bytes | str):
        if isinstance(data, str):
            data = data.encode()
        self.sock.sendall(data)

    def _fill(self) -> bool:
        chunk = self.sock.recv(65536)
        if not chunk:
            return False
        self.buf += chunk
        return True

    def line(self) -> bytes:
        """One response line without CRLF; literals announced at its end are read too."""
        out = b""
        while True:
            while b"\r\n" not in self.buf:
                if not self._fill():
                    raise EOFError(f"connection closed; partial {self.buf!r}")
            line, self.buf = self.buf.split(b"\r\n", 1)
            out += line
            m = re.search(rb"~?\{(\d+)\}$", line)
            if not m:
                return out
            n = int(m.group(1))
            while len(self.buf) < n:
                if not self._fill():
                    raise EOFError("connection closed inside a literal")
            out += b"\r\n" + self.buf[:n]
            self.buf = self.buf[n:]

    def closed(self, timeout: float = 5) -> bool:
        """Whether the server closes the connection within `timeout` (data before is read)."""
        self.sock.settimeout(timeout)
        try:
            while True:
                if not self.sock.recv(65536):
                    return True
        except (socket.timeout, TimeoutError):
            return False
        except (ConnectionResetError, ssl.SSLError, OSError):
            return True

    def read_until(self, tag: str) -> tuple[list[bytes], bytes]:
        untagged = []
        while True:
            l = self.line()
            if l.startswith(tag.encode() + b" "):
                return untagged, l
            untagged.append(l)

    def cmd(self, text: str | bytes, tag: str | None = None) -> tuple[list[bytes], bytes]:
        tag = tag or "t%d" % next(self.tags)
        data = text.encode() if isinstance(text, str) else text
        self.send(tag.encode() + b" " + data + b"\r\n")
        return self.read_until(tag)

    def ok(self, text: str | bytes) -> list[bytes]:
        untagged, tagged = self.cmd(text)
        assert b" OK" in tagged[:40], (text, untagged, tagged)
        return untagged

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def untagged_matching(lines: list[bytes], pattern: bytes) -> list[re.Match]:
    return [m for l in lines if (m := re.match(pattern, l))]


def simple_message(subject="Test message", body="Hello world\r\n", frm="a@remote.test",
                   to=f"x@{DOMAIN}", extra_headers="") -> bytes:
    return (f"From: {frm}\r\nTo: {to}\r\nSubject: {subject}\r\n"
            f"Date: Mon, 01 Jan 2024 10:00:00 +0000\r\nMessage-ID: <{time.time_ns()}@t>\r\n"
            f"{extra_headers}\r\n{body}").encode()


def wait_for(cond, timeout=5.0, interval=0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(interval)
    return cond()


# --- pytest fixtures (import them into a test module with `from imap_support import *`) ---

import pytest  # noqa: E402


@pytest.fixture(scope="module")
def imap_server(tmp_path_factory):
    """A server shared by the tests of one module (each test makes its own user)."""
    s = Server(tmp_path_factory.mktemp("imap")).start()
    yield s
    s.close()


@pytest.fixture
def user(imap_server):
    return imap_server.add_user()


@pytest.fixture
def make_server(tmp_path):
    """Factory for a server with its own [imap]/[smtp] settings, stopped at teardown."""
    made = []

    def make(imap=None, smtp=None, extra="", start=True):
        s = Server(tmp_path / ("srv%d" % len(made)), imap=imap, smtp=smtp, extra=extra)
        made.append(s)
        return s.start() if start else s

    yield make
    for s in made:
        s.close()
