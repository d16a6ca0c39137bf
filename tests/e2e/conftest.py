"""End-to-end test harness for Corvus.

Every test gets its own server process: a temp config TOML (ports picked by binding port 0),
its own data_dir, and a loopback DNS server so FCrDNS lookups never leave the machine.
Clients are independent of the server code: smtplib, and raw sockets for transcripts.

Reading delivered mail goes through `corvus mailbox list/cat` (the control socket while the
server runs, the store directly when it does not).
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import signal
import smtplib
import socket
import ssl
import subprocess
import threading
import time

import dns.message
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
CORVUS_BIN = os.environ.get("CORVUS_BIN") or str(ROOT / "target" / "debug" / "corvus")

# FCrDNS of loopback clients: the resolver answers loopback itself (/etc/hosts, RFC 6761),
# so 127.0.0.1 passes under whatever name the hosts file gives it, and another 127/8 source
# address gets a name ("localhost") that does not resolve back to it: a mismatch.
FCRDNS_FAIL_IP = "127.0.0.3"
PASSWORD = "correct horse"


def child_env(extra: dict | None = None) -> dict:
    """Environment for corvus processes. Every CORVUS_* variable is configuration to corvus
    (unknown ones are errors), so the harness's own CORVUS_BIN must not reach it, nor a
    CORVUS_CONFIG from the caller's shell."""
    env = {k: v for k, v in os.environ.items() if k not in ("CORVUS_BIN", "CORVUS_CONFIG")}
    env.update(extra or {})
    return env


_handed_out: set[int] = set()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago and that this test run has not
    handed out before (the kernel may offer a just-closed port again: two listeners of one
    server must not get the same one)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _handed_out:
            _handed_out.add(port)
            return port


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def tls_context() -> ssl.SSLContext:
    """Client TLS context accepting Corvus's self-signed certificate."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


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


def without_return_path(raw: bytes) -> bytes:
    """A stored message without the Return-Path line final delivery put on top, if any."""
    m = re.match(rb"Return-Path: <[^\r\n]*>\r\n", raw)
    return raw[m.end():] if m else raw


def split_received(raw: bytes) -> tuple[bytes, bytes]:
    """Split a stored message into the Received header Corvus prepended and the rest (after
    the Return-Path of final delivery)."""
    raw = without_return_path(raw)
    assert raw.startswith(b"Received: "), raw[:200]
    m = re.search(rb"\r\n(?![ \t])", raw)
    assert m, raw[:500]
    return raw[: m.end()], raw[m.end():]


def headers_of(raw: bytes) -> bytes:
    end = raw.find(b"\r\n\r\n")
    return raw if end < 0 else raw[: end + 2]


class LoopbackDNS:
    """A UDP DNS server on 127.0.0.1 answering NXDOMAIN to everything: the servers under test
    use it as their only name server, so no lookup ever leaves the machine."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.addr = "127.0.0.1:%d" % self.sock.getsockname()[1]
        self.queries: list[str] = []
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self):
        while True:
            try:
                data, peer = self.sock.recvfrom(4096)
            except OSError:
                return
            try:
                q = dns.message.from_wire(data)
                self.queries += [x.name.to_text() for x in q.question]
                r = dns.message.make_response(q)
                r.set_rcode(dns.rcode.NXDOMAIN)
                self.sock.sendto(r.to_wire(), peer)
            except Exception:  # a broken query must not kill the responder
                continue

    def close(self):
        self.sock.close()


class ZoneDNS:
    """A UDP DNS server on 127.0.0.1 answering from a dict {name: [(type, text)]}; unknown
    names get NXDOMAIN, known names without the type an empty NOERROR answer."""

    def __init__(self):
        self.zone: dict[str, list[tuple[str, str]]] = {}
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.addr = "127.0.0.1:%d" % self.sock.getsockname()[1]
        threading.Thread(target=self.serve, daemon=True).start()

    def add(self, name: str, rtype: str, text: str):
        self.zone.setdefault(name.lower().rstrip(".") + ".", []).append((rtype, text))

    def serve(self):
        while True:
            try:
                data, peer = self.sock.recvfrom(4096)
            except OSError:
                return
            try:
                q = dns.message.from_wire(data)
                r = dns.message.make_response(q)
                for question in q.question:
                    name = question.name.to_text().lower()
                    rtype = dns.rdatatype.to_text(question.rdtype)
                    if name not in self.zone:
                        r.set_rcode(dns.rcode.NXDOMAIN)
                        continue
                    texts = [t for (ty, t) in self.zone[name] if ty == rtype]
                    if texts:
                        r.answer.append(dns.rrset.from_text_list(question.name, 60, dns.rdataclass.IN, rtype, texts))
                self.sock.sendto(r.to_wire(), peer)
            except Exception:
                continue

    def resolve_txt(self, name: bytes, timeout=5):
        """dkimpy's dnsfunc: TXT lookups answered from the zone."""
        key = name.decode().lower().rstrip(".") + "."
        for ty, text in self.zone.get(key, []):
            if ty == "TXT":
                return "".join(re.findall(r'"([^"]*)"', text)).encode()
        return None

    def close(self):
        self.sock.close()


class Corvus:
    """One Corvus server: config file, data_dir, process, and client helpers."""

    DEFAULT_SMTP = {
        "command_timeout": "20s",
        "data_timeout": "20s",
        "session_timeout": "120s",
    }

    def __init__(
        self,
        base: pathlib.Path,
        dns_addr: str,
        *,
        smtp: dict | None = None,
        domains=("example.org",),
        hostname: str = "mx.example.org",
        listeners=("smtp", "submission", "submissions"),
        data_dir: pathlib.Path | None = None,
        shutdown_timeout: str = "10s",
        extra: str = "",
        host: str = "127.0.0.1",
        ports: dict | None = None,
    ):
        base.mkdir(parents=True, exist_ok=True)
        self.base = base
        self.data_dir = data_dir or base / "data"
        self.hostname = hostname
        self.domains = list(domains)
        self.dns_addr = dns_addr
        self.host = host
        self.ports = ports or {name: free_port() for name in listeners}
        self.smtp_cfg = dict(self.DEFAULT_SMTP, **(smtp or {}))
        self.shutdown_timeout = shutdown_timeout
        self.extra = extra
        self.config_path = base / "corvus.toml"
        self.proc: subprocess.Popen | None = None
        self.stdout_path = base / "stdout.log"
        self.stderr_path = base / "stderr.log"
        self.write_config()

    # --- configuration and process -------------------------------------------------------

    def write_config(self):
        lines = [
            f"hostname = {toml_value(self.hostname)}",
            f"data_dir = {toml_value(str(self.data_dir))}",
            f"domains = {toml_value(self.domains)}",
            f"shutdown_timeout = {toml_value(self.shutdown_timeout)}",
            "[listen]",
        ]
        lines += [f"{k} = {toml_value('%s:%d' % (self.host, p))}" for k, p in self.ports.items()]
        lines += ["[dns]", f"nameservers = {toml_value([self.dns_addr])}"]
        lines += ["[smtp]"] + [f"{k} = {toml_value(v)}" for k, v in self.smtp_cfg.items()]
        lines += ["[log]", 'level = "info"']
        self.config_path.write_text("\n".join(lines) + "\n" + self.extra)

    def start(self, env: dict | None = None, wait: bool = True):
        assert self.proc is None or self.proc.poll() is not None, "already running"
        full_env = child_env(env)
        self.stdout = open(self.stdout_path, "ab")
        self.stderr = open(self.stderr_path, "ab")
        self.proc = subprocess.Popen(
            [CORVUS_BIN, "-c", str(self.config_path), "serve"],
            stdout=self.stdout,
            stderr=self.stderr,
            env=full_env,
            cwd=self.base,
        )
        if wait:
            self.wait_ready(list(self.ports.values()))
        return self

    def wait_ready(self, ports, timeout: float = 30):
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
        """SIGTERM and wait; assert the exit code (None: don't)."""
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
        out = self.stdout_path.read_text(errors="replace") if self.stdout_path.exists() else ""
        err = self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""
        return f"--- stdout ---\n{out[-4000:]}\n--- stderr ---\n{err[-6000:]}"

    # --- CLI ---------------------------------------------------------------------------------

    def run_cli(self, *args, input=None, check=True, text=True, env=None, timeout=60):
        full_env = child_env(env)
        p = subprocess.run(
            [CORVUS_BIN, "-c", str(self.config_path), *args],
            input=input,
            capture_output=True,
            text=text,
            env=full_env,
            timeout=timeout,
            cwd=self.base,
        )
        if check:
            assert p.returncode == 0, f"corvus {' '.join(args)} -> {p.returncode}\n{p.stdout}\n{p.stderr}"
        return p

    def add_user(self, addr: str, pw: str = PASSWORD):
        return self.run_cli("user", "add", addr, "--password", pw)

    def mailboxes(self, user: str) -> dict[str, int]:
        out = self.run_cli("mailbox", "list", user).stdout
        result = {}
        for line in out.splitlines():
            name, count = line.rsplit("\t", 1)
            result[name] = int(count)
        return result

    def uids(self, user: str, folder: str = "INBOX") -> list[int]:
        out = self.run_cli("mailbox", "list", user, folder).stdout
        return [int(line.split("\t")[0]) for line in out.splitlines() if line.strip()]

    def cat(self, user: str, folder: str, uid: int) -> bytes:
        return self.run_cli("mailbox", "cat", user, folder, str(uid), text=False).stdout

    def stored_messages(self, user: str, folder: str = "INBOX", return_path: bool = False) -> list[bytes]:
        """The stored messages of a folder, in UID order; without the `Return-Path` field
        that final delivery puts on top (RFC 5321 §4.4) unless `return_path`."""
        raw = [self.cat(user, folder, uid) for uid in self.uids(user, folder)]
        return raw if return_path else [without_return_path(m) for m in raw]

    # --- clients -----------------------------------------------------------------------------

    def smtp(self, listener: str = "smtp", timeout: float = 15, source: str | None = None) -> smtplib.SMTP:
        src = (source, 0) if source else None
        if listener == "submissions":
            return smtplib.SMTP_SSL(
                self.host,
                self.ports[listener],
                local_hostname="client.test",
                timeout=timeout,
                context=tls_context(),
                source_address=src,
            )
        return smtplib.SMTP(
            self.host,
            self.ports[listener],
            local_hostname="client.test",
            timeout=timeout,
            source_address=src,
        )

    def raw(self, listener: str = "smtp", tls: bool = False, timeout: float = 15,
            source: str | None = None) -> "RawClient":
        return RawClient(self.ports[listener], tls=tls, timeout=timeout, source=source)

    def submit_session(self, user: str, pw: str = PASSWORD, listener: str = "submission"):
        """An authenticated smtplib session on a submission listener."""
        s = self.smtp(listener)
        s.ehlo()
        if listener != "submissions":
            s.starttls(context=tls_context())
            s.ehlo()
        s.login(user, pw)
        return s


class RawClient:
    """A raw SMTP client for transcripts: exact bytes out, replies parsed as they come."""

    def __init__(self, port: int, tls: bool = False, timeout: float = 15, source: str | None = None):
        self.sock = socket.create_connection(
            ("127.0.0.1", port), timeout=timeout, source_address=(source, 0) if source else None
        )
        if tls:
            self.sock = tls_context().wrap_socket(self.sock)
        self.buf = b""

    def send(self, data: bytes | str):
        if isinstance(data, str):
            data = data.encode()
        self.sock.sendall(data)

    def cmd(self, line: str | bytes):
        """Send one command line and read its reply."""
        if isinstance(line, str):
            line = line.encode()
        self.send(line + b"\r\n")
        return self.reply()

    def _line(self) -> bytes:
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"connection closed; unparsed {self.buf!r}")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def reply(self) -> tuple[int, list[str]]:
        """Read one (possibly multi-line) reply: (code, [text lines])."""
        lines = []
        while True:
            line = self._line().decode("utf-8", "replace")
            assert re.match(r"^\d{3}[ -]", line + " "), f"not a reply line: {line!r}"
            lines.append(line[4:])
            if len(line) < 4 or line[3] == " ":
                return int(line[:3]), lines

    def expect(self, code: int) -> list[str]:
        got, lines = self.reply()
        assert got == code, f"expected {code}, got {got} {lines}"
        return lines

    def closed(self, timeout: float = 5) -> bool:
        """Whether the server closed the connection (EOF) with nothing more to read."""
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(1)
        except (ConnectionResetError, ssl.SSLError):
            return True
        except socket.timeout:
            return False
        if data:
            self.buf += data
            return False
        return True

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


@pytest.fixture(scope="session")
def loopback_dns():
    d = LoopbackDNS()
    yield d
    d.close()


@pytest.fixture
def corvus_factory(tmp_path, loopback_dns):
    """Make servers: `corvus_factory(**Corvus kwargs)`. Every server still running at the
    end of the test gets SIGTERM and must exit 0."""
    made: list[Corvus] = []

    def make(name: str = "srv", **kw) -> Corvus:
        c = Corvus(tmp_path / name, loopback_dns.addr, **kw)
        made.append(c)
        return c

    yield make
    problems = []
    for c in made:
        if c.running:
            try:
                c.stop(expect=0)
            except AssertionError as e:
                problems.append(str(e))
    assert not problems, "\n".join(problems)


ALICE = "alice@example.org"
BOB = "bob@example.org"


@pytest.fixture
def server_with(corvus_factory):
    """Start a server with alice and bob, given config overrides."""

    def make(**kw) -> Corvus:
        c = corvus_factory(**kw)
        c.add_user(ALICE)
        c.add_user(BOB)
        return c.start()

    return make


@pytest.fixture
def server(server_with) -> Corvus:
    return server_with()
