"""The server harness of the hook tests (test_scripts.py, test_plugins.py): one `corvus serve`
with SMTP, submission, IMAP (and optionally POP3) listeners, the given `[[hooks]]` entries, and
a small DNS responder of its own, plus the client helpers those tests use."""

from __future__ import annotations

import imaplib
import os
import pathlib
import poplib
import signal
import smtplib
import socket
import subprocess
import threading
import time

from conftest import free_port, port_open, toml_value

ROOT = pathlib.Path(__file__).resolve().parents[2]
CORVUS_BIN = os.environ.get("CORVUS_BIN") or str(ROOT / "target" / "debug" / "corvus")
DOMAIN = "example.test"
PASSWORD = "correct horse"


def child_env() -> dict:
    # Every CORVUS_* variable is configuration to corvus; keep the harness's own out.
    return {k: v for k, v in os.environ.items() if not k.startswith("CORVUS_")}


def rcpt_reply(s: smtplib.SMTP, sender: str, rcpt: str) -> tuple[int, bytes]:
    code, text = s.mail(sender)
    assert code == 250, (code, text)
    return s.rcpt(rcpt)


class Dns:
    """UDP DNS responder on 127.0.0.1: A records for the names in `a`, no answer at all for
    the names in `silent`, NXDOMAIN otherwise (every query's name is kept in `queries`)."""

    def __init__(self):
        self.a: dict[str, str] = {}
        self.silent: set[str] = set()
        self.queries: list[str] = []
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.addr = "127.0.0.1:%d" % self.sock.getsockname()[1]
        threading.Thread(target=self.serve, daemon=True).start()

    @staticmethod
    def qname(q: bytes) -> tuple[str, int, int]:
        labels, i = [], 12
        while i < len(q) and q[i]:
            n = q[i]
            labels.append(q[i + 1:i + 1 + n].decode("ascii", "replace"))
            i += 1 + n
        i += 1
        qtype = int.from_bytes(q[i:i + 2], "big") if i + 2 <= len(q) else 0
        return ".".join(labels).lower(), qtype, i + 4

    def serve(self):
        while True:
            try:
                q, peer = self.sock.recvfrom(4096)
            except OSError:
                return
            if len(q) < 12:
                continue
            try:
                name, qtype, end = self.qname(q)
            except Exception:  # noqa: BLE001
                continue
            self.queries.append(name)
            question = q[12:end]
            if name in self.silent:
                continue
            ip = self.a.get(name)
            if ip and qtype == 1:
                flags = 0x8000 | (q[2] << 8 & 0x7900) | 0x0080 | 0x0400
                answer = b"\xc0\x0c" + b"\x00\x01\x00\x01" + (60).to_bytes(4, "big") + b"\x00\x04" + socket.inet_aton(ip)
                self.sock.sendto(q[:2] + flags.to_bytes(2, "big") + b"\x00\x01\x00\x01\x00\x00\x00\x00" + question + answer, peer)
            else:
                rcode = 0 if ip else 3  # an existing name without that type: NOERROR, no data
                flags = 0x8000 | (q[2] << 8 & 0x7900) | 0x0080 | rcode
                self.sock.sendto(q[:2] + flags.to_bytes(2, "big") + b"\x00\x01\x00\x00\x00\x00\x00\x00" + question, peer)

    def close(self):
        self.sock.close()


class HookServer:
    """One `corvus serve` with SMTP, submission and IMAP listeners (and POP3 with `pop3`), the
    given hooks, and `extra` config lines. The DNS responder is the caller's, or one of its own
    (closed with the server) when `dns` is None."""

    def __init__(self, tmp: pathlib.Path, hooks: list[dict], dns: Dns | None = None,
                 extra: list[str] = (), pop3: bool = False):
        self.tmp = tmp
        self.extra = list(extra)
        self.own_dns = dns is None
        self.dns = dns or Dns()
        self.smtp_port, self.sub_port, self.imap_port = free_port(), free_port(), free_port()
        self.pop3_port = free_port() if pop3 else None
        self.config = tmp / "corvus.toml"
        self.log_path = tmp / "server.log"
        self.write_config(hooks)
        self.proc = None

    def ports(self) -> list[int]:
        return [p for p in (self.smtp_port, self.sub_port, self.imap_port, self.pop3_port) if p]

    def write_config(self, hooks: list[dict]):
        lines = [
            'hostname = "mx.example.test"',
            f"data_dir = {toml_value(self.tmp / 'data')}",
            f"domains = [{toml_value(DOMAIN)}]",
            'shutdown_timeout = "5s"',
            "[listen]",
            f'smtp = "127.0.0.1:{self.smtp_port}"',
            f'submission = "127.0.0.1:{self.sub_port}"',
            f'imap = "127.0.0.1:{self.imap_port}"',
            *([f'pop3 = "127.0.0.1:{self.pop3_port}"'] if self.pop3_port else []),
            "[dns]",
            f"nameservers = [{toml_value(self.dns.addr)}]",
            "[smtp]",
            "allow_plaintext_auth = true",
            # The hook tests authenticate on the smtp listener too (off by default).
            "auth_on_smtp = true",
            "max_errors = 100",
            "[imap]",
            "allow_plaintext_auth = true",
            *(["[pop3]", "allow_plaintext_auth = true"] if self.pop3_port else []),
            "[log]",
            'level = "info"',
            *self.extra,
        ]
        for h in hooks:
            lines.append("[[hooks]]")
            for k, v in h.items():
                lines.append(f"{k} = {toml_value(v)}")
        self.config.write_text("\n".join(lines) + "\n")

    def start(self):
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [CORVUS_BIN, "-c", str(self.config), "serve"],
            stdout=self.log, stderr=subprocess.STDOUT, env=child_env(),
        )
        deadline = time.time() + 60
        sock = self.tmp / "data" / "control.sock"
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"corvus serve exited {self.proc.returncode}:\n{self.logs()}")
            if all(port_open(p) for p in self.ports()) and sock.exists():
                return self
            time.sleep(0.05)
        raise RuntimeError(f"corvus serve did not come up:\n{self.logs()}")

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc:
            self.log.close()
        if self.own_dns:
            self.dns.close()

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def cli(self, *args, check=True) -> subprocess.CompletedProcess:
        r = subprocess.run([CORVUS_BIN, "-c", str(self.config), *args],
                           capture_output=True, text=True, env=child_env(), timeout=120)
        if check and r.returncode != 0:
            raise AssertionError(f"corvus {' '.join(args)} failed ({r.returncode}): {r.stdout}{r.stderr}")
        return r

    def add_user(self, address: str):
        self.cli("user", "add", address, "--password", PASSWORD)

    def smtp(self, port=None) -> smtplib.SMTP:
        s = smtplib.SMTP("127.0.0.1", port or self.smtp_port, timeout=30)
        s.ehlo("client.example")
        return s

    def imap(self, user: str, password: str = PASSWORD) -> imaplib.IMAP4:
        m = imaplib.IMAP4("127.0.0.1", self.imap_port, timeout=30)
        m.login(user, password)
        return m

    def pop3(self, user: str, password: str = PASSWORD) -> poplib.POP3:
        p = poplib.POP3("127.0.0.1", self.pop3_port, timeout=30)
        p.user(user)
        p.pass_(password)
        return p

    def messages(self, user: str, folder: str = "INBOX") -> list[bytes]:
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
