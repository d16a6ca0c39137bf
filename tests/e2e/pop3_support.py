"""Self-contained server fixture for the POP3 and mailbox import/export end-to-end tests.

Each test gets its own `corvus serve`: a temp config TOML (listeners on free loopback ports),
its own data_dir, and a tiny loopback DNS responder that answers NXDOMAIN to everything, so
no lookup leaves the machine. Mail arrives over SMTP (smtplib); accounts are made with the
`corvus user add` CLI. Only the standard library is used.

CORVUS_BIN names the binary (default: target/debug/corvus under the repository root).
"""

from __future__ import annotations

import os
import pathlib
import signal
import smtplib
import socket
import ssl
import subprocess
import time

ROOT = pathlib.Path(__file__).resolve().parents[2]
CORVUS_BIN = os.environ.get("CORVUS_BIN") or str(ROOT / "target" / "debug" / "corvus")
PASSWORD = "pop secret"
DOMAIN = "example.org"


from conftest import free_port, port_open, tls_context, toml_value  # noqa: E402,F401
from hook_server import Dns  # noqa: E402


def child_env(**extra: str) -> dict:
    """The environment for corvus processes: without CORVUS_* variables (CORVUS_BIN would be
    read as a config override `bin` and refused as an unknown key)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CORVUS_")}
    env["NO_COLOR"] = "1"
    env.update(extra)
    return env


class Server:
    """One Corvus server process with smtp, pop3, pop3s and imaps listeners.

    `sections` adds config tables, e.g. pop3={"allow_plaintext_auth": True}.
    """

    LISTENERS = ("smtp", "pop3", "pop3s", "imaps")

    def __init__(self, tmp: pathlib.Path, **sections):
        self.tmp = tmp
        tmp.mkdir(parents=True, exist_ok=True)
        self.dns = Dns()  # NXDOMAIN for every name
        self.ports = {name: free_port() for name in self.LISTENERS}
        self.data_dir = tmp / "data"
        self.config = tmp / "corvus.toml"
        self.log = tmp / "server.log"
        lines = [
            'hostname = "mx.example.org"',
            "data_dir = %s" % toml_value(str(self.data_dir)),
            "domains = [%s]" % toml_value(DOMAIN),
            'shutdown_timeout = "5s"',
            "[listen]",
        ]
        lines += ['%s = "127.0.0.1:%d"' % (k, p) for k, p in self.ports.items()]
        lines += ["[dns]", "nameservers = [%s]" % toml_value(self.dns.addr)]
        for table, values in sections.items():
            lines.append("[%s]" % table)
            lines += ["%s = %s" % (k, toml_value(v)) for k, v in values.items()]
        self.config.write_text("\n".join(lines) + "\n")
        self.proc: subprocess.Popen | None = None
        self.start()

    # -- lifecycle ---------------------------------------------------------------------

    def start(self):
        logf = open(self.log, "ab")
        env = child_env(RUST_LOG=os.environ.get("RUST_LOG", "corvus=debug"))
        self.proc = subprocess.Popen(
            [CORVUS_BIN, "-c", str(self.config), "serve"],
            stdout=logf,
            stderr=subprocess.STDOUT,
            env=env,
        )
        logf.close()
        deadline = time.time() + 30
        for port in self.ports.values():
            while not port_open(port):
                if self.proc.poll() is not None:
                    raise RuntimeError("corvus exited:\n" + self.log.read_text())
                if time.time() > deadline:
                    raise RuntimeError("corvus did not listen:\n" + self.log.read_text())
                time.sleep(0.05)

    def stop(self, timeout: float = 15) -> int:
        """SIGTERM and wait; returns the exit status."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise

    def restart(self):
        assert self.stop() == 0, self.log.read_text()
        self.start()

    def close(self):
        try:
            self.stop()
        finally:
            self.dns.close()

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    # -- CLI ---------------------------------------------------------------------------

    def cli(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        """Run `corvus -c CONFIG ARGS…`; raises with its output when it fails and `check`."""
        r = subprocess.run(
            [CORVUS_BIN, "-c", str(self.config), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=child_env(),
        )
        if check and r.returncode != 0:
            raise AssertionError(
                "corvus %s failed (%d):\n%s%s" % (" ".join(args), r.returncode, r.stdout, r.stderr)
            )
        return r

    def add_user(self, local: str, password: str = PASSWORD) -> str:
        address = "%s@%s" % (local, DOMAIN)
        self.cli("user", "add", address, "--password", password)
        return address

    # -- mail --------------------------------------------------------------------------

    def deliver(self, to: str, message: bytes, sender: str = "sender@remote.test"):
        """Deliver `message` (CRLF or LF lines) over SMTP to a local account."""
        with smtplib.SMTP("127.0.0.1", self.ports["smtp"], timeout=30) as s:
            s.sendmail(sender, [to], message)


class Raw:
    """A line-oriented POP3 client over a plain or TLS socket, for transcript-style tests."""

    def __init__(self, port: int, tls: bool = False, timeout: float = 10):
        sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock = tls_context().wrap_socket(sock) if tls else sock
        self.buf = b""
        self.eof = False
        self.greeting = self.line()

    def send(self, line: str | bytes):
        self.sock.sendall((line.encode() if isinstance(line, str) else line) + b"\r\n")

    def line(self) -> bytes:
        """The next line without CRLF; b"" once the server has closed."""
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                self.eof = True
                rest, self.buf = self.buf, b""
                return rest
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def cmd(self, line: str | bytes) -> bytes:
        self.send(line)
        return self.line()

    def multiline(self) -> list[bytes]:
        """Lines of a multi-line body up to (not including) the "." terminator, as sent
        (still dot-stuffed)."""
        out = []
        while True:
            line = self.line()
            if line == b".":
                return out
            if self.eof:
                raise EOFError("connection closed inside a multi-line response")
            out.append(line)

    def login(self, user: str, password: str = PASSWORD):
        assert self.cmd("USER " + user).startswith(b"+OK")
        r = self.cmd("PASS " + password)
        assert r.startswith(b"+OK"), r

    def closed(self) -> bool:
        """Whether the server has closed the connection (reads until EOF)."""
        try:
            return self.sock.recv(1) == b""
        except (ConnectionResetError, ssl.SSLError):
            return True

    def close(self):
        self.sock.close()


def message(subject: str, body: str = "Hello.\r\n", extra: str = "") -> bytes:
    """A small RFC 5322 message with CRLF line endings."""
    return (
        "From: Sender <sender@remote.test>\r\n"
        "To: someone@example.org\r\n"
        "Subject: %s\r\n"
        "Message-ID: <%s@remote.test>\r\n"
        "Date: Mon, 04 Mar 2024 10:11:12 +0000\r\n"
        "%s"
        "\r\n%s" % (subject, subject.replace(" ", "-"), extra, body)
    ).encode()
