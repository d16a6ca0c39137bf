"""Sieve (RFC 5228 and extensions) and ManageSieve (RFC 5804), end to end (issue 27). The
contract is notes27/contract.md.

One site serves most of the module (`site`): Corvus A (example.org on 127.0.0.1: smtp, imap,
managesieve, http) with small Sieve limits (8 KiB per script, 4 scripts per user) and Corvus B
(b.test on 127.0.0.2, smtp only), both answering DNS from the module's loopback zone, where
b.test's MX is B; A delivers outbound to B's port. Each test makes its own users, so tests
share the servers without seeing each other's scripts or mail. Tests that need other settings
(plaintext authentication, a tiny evaluation budget, an admin hook) start their own server.

ManageSieve clients we did not write: `sieve-connect` (Debian's Perl client, driven with
--exec) and Python's `managesieve` library; a raw socket client (`RawSieve`, below) reads
every response to the end (literals included) as the answer to the command that caused it,
for transcripts, hostile input and the differential comparison with Dovecot's managesieved
(support/dovecot.py). Mail goes in with smtplib and is read back with imaplib; traces are
read from the admin API (the trace writer works after the reply: every lookup waits).
"""

from __future__ import annotations

import base64
import email
import email.policy
import email.utils
import imaplib
import itertools
import re
import shutil
import smtplib
import socket
import ssl
import subprocess
import time
from dataclasses import dataclass

import managesieve
import pytest

from support import dovecot
from support.certs import issue_cert
from support.clients import PASSWORD, peer_closes
from support.dns import DnsServer
from support.http import Api, check, create_token, wait_trace
from support.net import free_port, tls_context
from support.server import HOOKS, Server, run_corvus, stop_all
from support.wait import wait_for

SIEVE_CONNECT = shutil.which("sieve-connect")
B_IP = "127.0.0.2"
MAX_SIZE = 8192
MAX_SCRIPTS = 4
LIMITS = {"max_script_size": MAX_SIZE, "max_scripts": MAX_SCRIPTS, "max_redirects": 4,
          "max_actions": 32, "max_steps": 100000, "vacation_days": 7, "vacation_min_days": 1}
# The extensions the contract says the SIEVE capability lists.
EXTENSIONS = {"fileinto", "reject", "ereject", "envelope", "encoded-character", "vacation",
              "subaddress", "comparator-i;ascii-numeric", "relational", "regex", "imap4flags",
              "copy", "body", "variables", "date", "index", "mailbox"}

GOOD = 'require "fileinto";\nif header :contains "Subject" "report" {\n    fileinto "Archive";\n}\n'
# An unknown command at line 3, column 4 (RFC 5228 §2.10.5: a script with one is refused).
BROKEN = 'require "fileinto";\nkeep;\n   frobnicate "x";\n'
BROKEN_AT = (3, 4)

# Python's managesieve library knows only some commands; teach it the others (RFC 5804 §2.11,
# §2.12, §2.13) the way support/clients.py teaches imaplib.
for _cmd, _states in ((b"RENAMESCRIPT", ("AUTH",)), (b"CHECKSCRIPT", ("AUTH",)),
                      (b"NOOP", ("NONAUTH", "AUTH"))):
    managesieve.commands.setdefault(_cmd, _states)


# --- the site -----------------------------------------------------------------------------------

@dataclass
class Site:
    a: Server
    b: Server
    zone: DnsServer
    api: Api


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    base = tmp_path_factory.mktemp("sieve")
    zone = DnsServer()
    zone.add("b.test", "MX", "10 mx.b.test.")
    zone.add("mx.b.test", "A", B_IP)
    b_port = free_port()
    b = Server(base / "b", zone.addr, domains=["b.test"], hostname="mx.b.test", host=B_IP,
               ports={"smtp": b_port}, shutdown_timeout="5s")
    a = Server(base / "a", zone.addr, listeners=("smtp", "imap", "managesieve", "http"),
               shutdown_timeout="5s", imap={"allow_plaintext_auth": True}, sieve=LIMITS,
               delivery={"port": b_port, "retry": ["1s"]}, client_timeout=30)
    servers = [b, a]
    try:
        b.start()
        a.start()
        yield Site(a, b, zone, Api(a, create_token(a, "sieve-e2e")))
    finally:
        try:
            stop_all(servers)
        finally:
            zone.close()


# --- ManageSieve: a raw client ---------------------------------------------------------------------

STATUS = re.compile(rb"^(OK|NO|BYE)(?= |$)", re.I)


def parse_string(b: bytes) -> tuple[str | None, bytes]:
    """A ManageSieve string at the start of `b` (quoted, or a literal already inlined by
    `RawSieve.line`): (its value, the rest); (None, b) when `b` does not start with one."""
    m = re.match(rb'"((?:[^"\\]|\\.)*)"', b, re.S)
    if m:
        return re.sub(rb"\\(.)", rb"\1", m.group(1)).decode("utf-8", "replace"), b[m.end():]
    m = re.match(rb"\{(\d+)\+?\}\r\n", b)
    if m:
        n = int(m.group(1))
        return b[m.end():m.end() + n].decode("utf-8", "replace"), b[m.end() + n:]
    return None, b


class Status:
    """An OK/NO/BYE line: `kind`, the response `code` ("QUOTA/MAXSIZE", "TAG \"x\"", …) and
    the human-readable `text`."""

    def __init__(self, line: bytes):
        self.raw = line
        m = STATUS.match(line)
        self.kind = m.group(1).upper().decode()
        rest = line[m.end():].lstrip(b" ")
        self.code = None
        if rest.startswith(b"("):
            depth, quoted, i = 0, False, 0
            while i < len(rest):
                c = rest[i:i + 1]
                if quoted:
                    if c == b"\\":
                        i += 1
                    elif c == b'"':
                        quoted = False
                elif c == b'"':
                    quoted = True
                elif c == b"(":
                    depth += 1
                elif c == b")":
                    depth -= 1
                    if depth == 0:
                        break
                i += 1
            self.code = rest[1:i].decode("utf-8", "replace")
            rest = rest[i + 1:].lstrip(b" ")
        text, _ = parse_string(rest)
        self.text = text if text is not None else rest.decode("utf-8", "replace")

    @property
    def code_name(self) -> str | None:
        return self.code.split()[0].upper() if self.code else None

    def __repr__(self):
        return repr(self.raw)


def plain(user: str, password: str = PASSWORD, authz: str = "") -> str:
    """The SASL PLAIN message (RFC 4616), base64."""
    return base64.b64encode(f"{authz}\0{user}\0{password}".encode()).decode()


def literal(data: str | bytes) -> bytes:
    """A non-synchronizing literal (RFC 5804 §4: literal-c2s)."""
    b = data.encode() if isinstance(data, str) else data
    return b"{%d+}\r\n" % len(b) + b


def quoted(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


class RawSieve:
    """ManageSieve over a socket: `cmd` sends one command (its literals included) and returns
    the response to it: (data lines with literals inlined, Status)."""

    def __init__(self, port: int, timeout: float = 15):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buf = b""
        self.greeting, self.greeting_status = self.response()

    def _fill(self):
        chunk = self.sock.recv(65536)
        if not chunk:
            raise EOFError(f"connection closed; unparsed {self.buf[:200]!r}")
        self.buf += chunk

    def line(self) -> bytes:
        """One response line without CRLF; a literal announced at its end is read and the
        line continues after it."""
        out = b""
        while True:
            while b"\r\n" not in self.buf:
                self._fill()
            line, self.buf = self.buf.split(b"\r\n", 1)
            out += line
            m = re.search(rb"\{(\d+)\+?\}$", line)
            if not m:
                return out
            n = int(m.group(1))
            while len(self.buf) < n:
                self._fill()
            out += b"\r\n" + self.buf[:n]
            self.buf = self.buf[n:]

    def response(self) -> tuple[list[bytes], Status]:
        data = []
        while True:
            l = self.line()
            if STATUS.match(l):
                return data, Status(l)
            data.append(l)

    def send(self, data: bytes | str):
        self.sock.sendall(data.encode() if isinstance(data, str) else data)

    def cmd(self, text: bytes | str) -> tuple[list[bytes], Status]:
        self.send((text.encode() if isinstance(text, str) else text) + b"\r\n")
        return self.response()

    def ok(self, text: bytes | str) -> list[bytes]:
        data, st = self.cmd(text)
        assert st.kind == "OK", (text if isinstance(text, str) else text[:80], data, st)
        return data

    def starttls(self) -> tuple[list[bytes], Status]:
        """STARTTLS, the handshake, and the capability list the server sends again after it
        (RFC 5804 §2.2)."""
        self.ok("STARTTLS")
        self.sock = tls_context().wrap_socket(self.sock)
        return self.response()

    def login(self, user: str, password: str = PASSWORD):
        self.starttls()
        self.ok(f'AUTHENTICATE "PLAIN" "{plain(user, password)}"')
        return self

    def closed(self, timeout: float = 5) -> bool:
        """Whether the server closes the connection within `timeout` (data before is read)."""
        return peer_closes(self.sock, timeout)

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def capabilities(lines: list[bytes]) -> dict[str, str | None]:
    """Capability lines ("NAME" ["value"]) as a dict; names upper case."""
    out = {}
    for l in lines:
        name, rest = parse_string(l)
        assert name is not None, f"not a capability line: {l!r}"
        value, _ = parse_string(rest.lstrip(b" "))
        out[name.upper()] = value
    return out


def scripts_of(lines: list[bytes]) -> dict[str, bool]:
    """LISTSCRIPTS data lines: {name: active}."""
    out = {}
    for l in lines:
        name, rest = parse_string(l)
        assert name is not None, f"not a LISTSCRIPTS line: {l!r}"
        out[name] = rest.strip().upper() == b"ACTIVE"
    return out


# --- ManageSieve: Python's managesieve library ------------------------------------------------------

def code(m: managesieve.MANAGESIEVE) -> str | None:
    """The response code of the last response. (The library's pattern is greedy: for
    `NO (QUOTA/MAXSIZE) "too large (max 8 KiB)"` it keeps everything up to the last ")".)"""
    c = m.response_code
    return c.split(")")[0].split()[0].upper() if c else None


def lib_session(srv: Server, user: str | None = None, password: str = PASSWORD) -> managesieve.MANAGESIEVE:
    m = managesieve.MANAGESIEVE(srv.host, srv.ports["managesieve"], use_tls=True, tls_verify=False,
                                timeout=30)
    if user:
        assert m.authenticate("PLAIN", user, password) == "OK", (m.response_code, m.response_text)
    return m


def lib_cmd(m: managesieve.MANAGESIEVE, name: bytes, *args: bytes) -> str:
    """A command the library has no method for; the response type."""
    return m._command(name, *args)[0]


def test_capabilities_before_and_after_tls_and_authentication(site):
    """RFC 5804 §1.7: STARTTLS only before TLS, SASL PLAIN only over TLS (allow_plaintext_auth
    is off), OWNER once authenticated; IMPLEMENTATION, VERSION and SIEVE throughout."""
    srv = site.a
    user = srv.add_user()
    m = managesieve.MANAGESIEVE(srv.host, srv.ports["managesieve"], timeout=30)
    assert m.supports_tls, "no STARTTLS in the greeting"
    assert m.loginmechs == [], f"SASL before TLS should be empty, got {m.loginmechs}"
    assert m.implementation.startswith("Corvus"), m.implementation
    assert EXTENSIONS <= set(m.capabilities), sorted(EXTENSIONS - set(m.capabilities))
    typ, data = m.starttls(verify=False)
    assert typ == "OK", (typ, data)
    assert not m.supports_tls, "STARTTLS still offered after TLS"
    assert m.loginmechs == ["PLAIN"], m.loginmechs
    assert EXTENSIONS <= set(m.capabilities)
    typ, data = m.capability()
    assert typ == "OK"
    caps = {d[0].upper(): d[1] for d in data}
    assert caps.get("VERSION") == "1.0" and "OWNER" not in caps, caps
    assert m.authenticate("PLAIN", user, PASSWORD) == "OK", m.response_text
    typ, data = m.capability()
    assert typ == "OK"
    caps = {d[0].upper(): d[1] for d in data}
    assert caps.get("OWNER") == user, caps
    assert caps.get("MAXREDIRECTS") == "4" and caps.get("VERSION") == "1.0", caps
    assert "STARTTLS" not in caps and caps.get("SASL") in (None, "", "PLAIN"), caps
    # RFC 5804 §1.7/§2.14: a server that implements UNAUTHENTICATE advertises it.
    assert "UNAUTHENTICATE" in caps, caps
    assert m.logout() == "OK"
    # The raw view of the same: the greeting, and the capabilities sent again after TLS.
    r = RawSieve(srv.ports["managesieve"])
    try:
        before = capabilities(r.greeting)
        assert r.greeting_status.kind == "OK", r.greeting_status
        assert before.get("SASL") == "" and "STARTTLS" in before, before
        data, st = r.starttls()
        after = capabilities(data)
        assert st.kind == "OK" and "STARTTLS" not in after and after.get("SASL") == "PLAIN", (data, st)
        assert after["IMPLEMENTATION"].startswith("Corvus"), after
        assert set(after["SIEVE"].split()) >= EXTENSIONS, after
    finally:
        r.close()


def test_library_script_lifecycle(site):
    """PUTSCRIPT, LISTSCRIPTS, SETACTIVE, GETSCRIPT, HAVESPACE, RENAMESCRIPT, CHECKSCRIPT, NOOP,
    DELETESCRIPT and their RFC 5804 response codes, through the managesieve library."""
    srv = site.a
    user = srv.add_user()
    m = lib_session(srv, user)
    assert m.listscripts() == ("OK", [])
    assert m.havespace("work", len(GOOD)) == "OK"
    assert m.putscript("work", GOOD) == "OK", m.response_text
    assert m.putscript("second", "keep;\n") == "OK", m.response_text
    typ, listed = m.listscripts()
    assert typ == "OK" and sorted(listed) == [("second", False), ("work", False)], listed
    assert m.getscript("work") == ("OK", GOOD)
    assert m.setactive("work") == "OK"
    assert sorted(m.listscripts()[1]) == [("second", False), ("work", True)]
    # Errors, each with its code.
    assert m.getscript("missing")[0] == "NO" and code(m) == "NONEXISTENT", m.response_code
    assert m.setactive("missing") == "NO" and code(m) == "NONEXISTENT", m.response_code
    assert m.deletescript("missing") == "NO" and code(m) == "NONEXISTENT", m.response_code
    assert m.deletescript("work") == "NO" and code(m) == "ACTIVE", m.response_code
    assert lib_cmd(m, b"RENAMESCRIPT", managesieve.sieve_name("second"), managesieve.sieve_name("work")) == "NO"
    assert code(m) == "ALREADYEXISTS", m.response_code
    assert lib_cmd(m, b"RENAMESCRIPT", managesieve.sieve_name("missing"), managesieve.sieve_name("x")) == "NO"
    assert code(m) == "NONEXISTENT", m.response_code
    # Renaming the active script keeps it active (RFC 5804 §2.11.1).
    assert lib_cmd(m, b"RENAMESCRIPT", managesieve.sieve_name("work"), managesieve.sieve_name("daily")) == "OK"
    assert sorted(m.listscripts()[1]) == [("daily", True), ("second", False)]
    assert m.getscript("daily") == ("OK", GOOD)
    # A broken script is refused, and the active one is left as it was.
    assert m.putscript("daily", BROKEN) == "NO"
    assert re.search(r"line %d, column %d\b" % BROKEN_AT, m.response_text or ""), m.response_text
    assert m.getscript("daily") == ("OK", GOOD)
    assert lib_cmd(m, b"CHECKSCRIPT", managesieve.sieve_string(GOOD)) == "OK", m.response_text
    assert lib_cmd(m, b"CHECKSCRIPT", managesieve.sieve_string(BROKEN)) == "NO"
    assert re.search(r"line %d, column %d\b" % BROKEN_AT, m.response_text or ""), m.response_text
    assert sorted(m.listscripts()[1]) == [("daily", True), ("second", False)], "CHECKSCRIPT stored something"
    assert lib_cmd(m, b"NOOP") == "OK"
    assert lib_cmd(m, b"NOOP", managesieve.sieve_name("probe 1")) == "OK"
    assert m.response_code and m.response_code.upper().startswith("TAG") and "probe 1" in m.response_code
    # SETACTIVE "" deactivates; then the script may go.
    assert m.setactive("") == "OK"
    assert sorted(m.listscripts()[1]) == [("daily", False), ("second", False)]
    assert m.deletescript("daily") == "OK"
    assert m.listscripts() == ("OK", [("second", False)])
    assert m.logout() == "OK"
    # What ManageSieve stored is what the CLI shows.
    assert srv.cli("sieve", "list", user).stdout.splitlines() == ["second"]


def test_quota_maxsize_and_maxscripts(site):
    srv = site.a
    user = srv.add_user()
    m = lib_session(srv, user)
    big = "keep;\n" + "#" * (MAX_SIZE + 1 - 7) + "\n"
    assert len(big.encode()) == MAX_SIZE + 1
    assert m.havespace("big", MAX_SIZE) == "OK"
    assert m.havespace("big", MAX_SIZE + 1) == "NO" and code(m) == "QUOTA/MAXSIZE", m.response_code
    assert m.putscript("big", big) == "NO" and code(m) == "QUOTA/MAXSIZE", m.response_code
    # The refused literal was read to its end: the session is still in step.
    assert lib_cmd(m, b"NOOP") == "OK"
    # A huge script (512 KiB), sent whole. (Above 1 MiB, Corvus refuses the command
    # itself and closes the connection; test_a_literal_of_two_gigabytes.)
    assert m.putscript("huge", "keep;\n" + "#" * (1 << 19) + "\n") == "NO" and code(m) == "QUOTA/MAXSIZE"
    assert lib_cmd(m, b"NOOP") == "OK"
    assert m.putscript("exact", big[:MAX_SIZE - 1] + "\n") == "OK", m.response_text
    for i in range(1, MAX_SCRIPTS):
        assert m.putscript(f"s{i}", "keep;\n") == "OK", (i, m.response_text)
    assert len(m.listscripts()[1]) == MAX_SCRIPTS
    assert m.putscript("one-too-many", "keep;\n") == "NO" and code(m) == "QUOTA/MAXSCRIPTS", m.response_code
    assert m.havespace("one-too-many", 10) == "NO" and code(m) == "QUOTA/MAXSCRIPTS", m.response_code
    # Replacing an existing script is not one more.
    assert m.havespace("s1", 10) == "OK"
    assert m.putscript("s1", "discard;\n") == "OK", m.response_text
    assert m.getscript("s1") == ("OK", "discard;\n")
    assert len(m.listscripts()[1]) == MAX_SCRIPTS
    m.logout()


def test_authentication_rules(site):
    """AUTHENTICATE needs TLS unless allow_plaintext_auth (off here); a wrong password and
    a PLAIN authorization identity naming another user are refused; UNAUTHENTICATE goes back
    to the start, where another user sees only their own scripts."""
    srv = site.a
    alice, bob = srv.add_user(), srv.add_user()
    r = RawSieve(srv.ports["managesieve"])
    try:
        _, st = r.cmd(f'AUTHENTICATE "PLAIN" "{plain(alice)}"')
        assert st.kind == "NO" and st.code_name in ("ENCRYPT-NEEDED", "AUTH-TOO-WEAK"), st
        _, st = r.cmd("LISTSCRIPTS")
        assert st.kind == "NO", st
        r.starttls()
        _, st = r.cmd(f'AUTHENTICATE "PLAIN" "{plain(alice, "wrong password")}"')
        assert st.kind == "NO", st
        _, st = r.cmd(f'AUTHENTICATE "PLAIN" "{plain(alice, authz=bob)}"')
        assert st.kind == "NO", f"alice authorized as bob: {st}"
        # The continuation form: an empty challenge, then the response as a string.
        r.send('AUTHENTICATE "PLAIN"\r\n')
        challenge = r.line()
        assert parse_string(challenge)[0] == "", f"not an empty challenge: {challenge!r}"
        _, st = r.cmd(f'"{plain(alice)}"')
        assert st.kind == "OK", st
        r.ok('PUTSCRIPT "alices" "keep;"')
        assert scripts_of(r.ok("LISTSCRIPTS")) == {"alices": False}
        _, st = r.cmd(f'AUTHENTICATE "PLAIN" "{plain(bob)}"')
        assert st.kind == "NO", "a second AUTHENTICATE in the authenticated state"
        r.ok("UNAUTHENTICATE")
        _, st = r.cmd("LISTSCRIPTS")
        assert st.kind == "NO", st
        r.ok(f'AUTHENTICATE "PLAIN" "{plain(bob)}"')
        assert scripts_of(r.ok("LISTSCRIPTS")) == {}
        for command in ('GETSCRIPT "alices"', 'SETACTIVE "alices"', 'DELETESCRIPT "alices"',
                        'RENAMESCRIPT "alices" "mine"'):
            _, st = r.cmd(command)
            assert st.kind == "NO" and st.code_name == "NONEXISTENT", (command, st)
        _, st = r.cmd("LOGOUT")
        assert st.kind == "OK" and r.closed(), st
    finally:
        r.close()
    # alice's script is untouched.
    assert srv.cli("sieve", "list", alice).stdout.splitlines() == ["alices"]
    assert srv.cli("sieve", "list", bob).stdout.strip() == ""


def test_plaintext_auth_when_allowed(corvus_factory):
    srv = corvus_factory(listeners=("managesieve",), shutdown_timeout="5s",
                         managesieve={"allow_plaintext_auth": True})
    user = srv.add_user()
    srv.start()
    m = managesieve.MANAGESIEVE(srv.host, srv.ports["managesieve"], timeout=30)
    assert m.supports_tls and m.loginmechs == ["PLAIN"], (m.supports_tls, m.loginmechs)
    assert m.authenticate("PLAIN", user, PASSWORD) == "OK", m.response_text
    assert m.putscript("plain", "keep;\n") == "OK"
    assert m.listscripts() == ("OK", [("plain", False)])
    m.logout()


# --- ManageSieve: sieve-connect ---------------------------------------------------------------------

_runs = itertools.count(1)


def sieve_connect(srv: Server, user: str, commands: list[str] | None = None, *args: str,
                  password: str = PASSWORD) -> subprocess.CompletedProcess:
    """sieve-connect against the managesieve listener (STARTTLS without verifying the
    self-signed certificate, PLAIN, the password on stdin), running `commands` with --exec,
    or the action in `args`."""
    cmd = [SIEVE_CONNECT, "--server", srv.host, "--port", str(srv.ports["managesieve"]), "--nosrv",
           "--user", user, "--passwordfd", "0", "--notlsverify", "--authmech", "PLAIN", *args]
    if commands is not None:
        script = srv.base / f"sieve-connect-{next(_runs)}.txt"
        script.write_text("\n".join(commands) + "\n")
        cmd += ["--exec", str(script)]
    return subprocess.run(cmd, input=password + "\n", capture_output=True, text=True, timeout=60,
                          cwd=srv.base)


@pytest.mark.skipif(not SIEVE_CONNECT, reason="sieve-connect is not installed")
def test_sieve_connect(site, tmp_path):
    srv = site.a
    user = srv.add_user()
    good, broken, out = tmp_path / "good.sieve", tmp_path / "broken.sieve", tmp_path / "out.sieve"
    good.write_text(GOOD)
    broken.write_text(BROKEN)
    p = sieve_connect(srv, user, [f"put {good} work", "list", "activate work", "list",
                                  f"get work {out}", f"checkscript {good}"])
    assert p.returncode == 0, (p.stdout, p.stderr)
    lines = p.stdout.splitlines()
    assert '"work"' in lines and '"work" ACTIVE' in lines, p.stdout
    assert out.read_text() == GOOD
    assert srv.cli("sieve", "list", user).stdout.splitlines() == ["work\tactive"]
    p = sieve_connect(srv, user, [f"checkscript {broken}"])
    assert p.returncode != 0 and re.search(r"line %d, column %d\b" % BROKEN_AT, p.stderr), (p.stdout, p.stderr)
    p = sieve_connect(srv, user, [f"put {broken} broken"])
    assert p.returncode != 0 and re.search(r"line %d, column %d\b" % BROKEN_AT, p.stderr), (p.stdout, p.stderr)
    p = sieve_connect(srv, user, ["delete work"])
    assert p.returncode != 0 and "(ACTIVE)" in p.stderr, (p.stdout, p.stderr)
    p = sieve_connect(srv, user, ["delete nothing-here"])
    assert p.returncode != 0 and "(NONEXISTENT)" in p.stderr, (p.stdout, p.stderr)
    p = sieve_connect(srv, user, ["deactivate", "delete work", "list"])
    assert p.returncode == 0 and p.stdout.strip() == "", (p.stdout, p.stderr)
    p = sieve_connect(srv, user, None, "--localsieve", str(good), "--upload")
    assert p.returncode == 0, (p.stdout, p.stderr)
    p = sieve_connect(srv, user, None, "--list")
    assert p.returncode == 0 and p.stdout.splitlines() == ['"good.sieve"'], (p.stdout, p.stderr)
    p = sieve_connect(srv, user, None, "--list", password="wrong password")
    assert p.returncode != 0 and '"good.sieve"' not in p.stdout, (p.stdout, p.stderr)


# --- ManageSieve: hostile input ---------------------------------------------------------------------

def usable_or_closed(r: RawSieve, tag: str) -> str:
    """After junk: send `NOOP "tag"` and read responses (the NO answers to the junk) until
    the one that carries the tag ("usable"), a BYE or the end of the connection ("closed").
    A server that answers neither within the timeout fails the test."""
    try:
        r.send(f"NOOP {quoted(tag)}\r\n")
    except OSError:
        return "closed"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            _, st = r.response()
        except (EOFError, ConnectionError, ssl.SSLError):
            return "closed"
        except (socket.timeout, TimeoutError):
            break
        if st.kind == "BYE":
            assert r.closed(), "BYE but the connection stays open"
            return "closed"
        if st.kind == "OK" and st.code and tag in st.code:
            return "usable"
    raise AssertionError("the server neither answered nor closed the connection")


def still_serving(srv: Server):
    """A new client logs in and lists its scripts."""
    r = RawSieve(srv.ports["managesieve"]).login(srv.add_user())
    try:
        assert scripts_of(r.ok("LISTSCRIPTS")) == {}
    finally:
        r.close()
    assert srv.running


def test_a_literal_of_two_gigabytes(site):
    """Announcing a 2 GB literal (before and after authentication) is refused at once,
    without waiting for the data: NO, BYE, or the connection closed; the server serves the
    next client. After a NO the server may go on skipping the announced octets (Dovecot
    does: the client was entitled to send them), so the session is not required to answer
    more; that a refused literal's octets never run as commands is the next test."""
    srv = site.a
    for login in (False, True):
        r = RawSieve(srv.ports["managesieve"], timeout=10)
        try:
            if login:
                r.login(srv.add_user())
                r.send('PUTSCRIPT "huge" {2147483648+}\r\n' + "keep;\r\n" * 100)
            else:
                r.starttls()
                r.send('AUTHENTICATE "PLAIN" {2147483648+}\r\n' + "AAAA" * 100)
            try:
                _, st = r.response()
                assert st.kind in ("NO", "BYE"), st
            except (EOFError, ConnectionError, ssl.SSLError):
                pass  # closed
            except (socket.timeout, TimeoutError):
                raise AssertionError(f"no answer to a 2 GB literal (login={login}): waiting for the data?")
        finally:
            r.close()
    still_serving(srv)


def test_refused_literal_is_not_read_as_commands(site):
    """A too large PUTSCRIPT whose literal the client sent anyway (a non-synchronizing
    literal, RFC 5804 §4): the script text must not run as commands. (Dovecot skips the
    literal and goes on; closing the connection is fine too.)"""
    srv = site.a
    user = srv.add_user()
    r = RawSieve(srv.ports["managesieve"]).login(user)
    try:
        r.ok('PUTSCRIPT "victim" "keep;"')
        body = ('DELETESCRIPT "victim"\r\n' * (MAX_SIZE // 20 + 10)).encode()
        assert len(body) > MAX_SIZE
        try:
            _, st = r.cmd(b'PUTSCRIPT "smuggled" ' + literal(body))
        except (EOFError, ConnectionError, ssl.SSLError):
            st = None  # closed
        if st is not None:
            assert st.kind == "BYE" or (st.kind, st.code_name) == ("NO", "QUOTA/MAXSIZE"), st
            if st.kind == "NO" and usable_or_closed(r, "after the literal") == "usable":
                assert scripts_of(r.ok("LISTSCRIPTS")) == {"victim": False}
    finally:
        r.close()
    assert srv.cli("sieve", "list", user).stdout.splitlines() == ["victim"], "the literal ran as commands"


@pytest.mark.parametrize("junk", ["garbage", "long_line", "unknown_command", "unbalanced"])
def test_junk_gets_an_error_and_the_server_goes_on(site, junk):
    srv = site.a
    r = RawSieve(srv.ports["managesieve"], timeout=10)
    try:
        if junk == "unknown_command":
            _, st = r.cmd("FROBNICATE now")
            assert st.kind in ("NO", "BYE"), st
            if st.kind == "NO":
                assert usable_or_closed(r, "after") == "usable"
        else:
            r.login(srv.add_user())
            data = {
                "garbage": bytes(range(256)) * 4 + b"\xff\xfe\x00\x00\r\n",
                "long_line": b"NOOP " + b"x" * (4 << 20) + b"\r\n",
                "unbalanced": b'PUTSCRIPT "unterminated {5+}\r\n((((\r\nGETSCRIPT\r\n',
            }[junk]
            try:
                r.send(data)
            except OSError:
                pass  # the server closed before reading it all
            usable_or_closed(r, "after")
    finally:
        r.close()
    still_serving(srv)


# --- ManageSieve: differential against Dovecot's managesieved ------------------------------------

def pad(n: int) -> str:
    """A valid script of exactly `n` bytes."""
    head = "keep;\n"
    return head + "#" * (n - len(head) - 1) + "\n"


def step(label: str, command: bytes | str | None = None):
    c = label if command is None else command
    return (label, c.encode() if isinstance(c, str) else c)


def put(name: str, script: str, label: str | None = None):
    return step(label or f"PUTSCRIPT {quoted(name)} <{len(script.encode())} bytes>",
                f"PUTSCRIPT {quoted(name)} ".encode() + literal(script))


def auth_step(label: str, password: str = PASSWORD, authz: str | None = None):
    """AUTHENTICATE as the transcript's user (filled in when it runs)."""
    return (label, lambda user: f'AUTHENTICATE "PLAIN" "{plain(user, password, "" if authz is None else authz)}"'.encode())


GOOD2 = 'require ["fileinto", "imap4flags"];\naddflag "\\\\Seen";\nfileinto "Archive";\n'

TRANSCRIPTS = {
    "manage": [
        step("LISTSCRIPTS"), put("s1", GOOD), put("s2", "keep;\n"), step("LISTSCRIPTS"),
        step('GETSCRIPT "s1"'), step('GETSCRIPT "nope"'), step('SETACTIVE "s1"'),
        step('SETACTIVE "nope"'), step("LISTSCRIPTS"), step('DELETESCRIPT "s1"'),
        put("s1", BROKEN, "PUTSCRIPT s1 <broken>"), step('GETSCRIPT "s1"'),
        step('RENAMESCRIPT "s2" "s1"'), step('RENAMESCRIPT "nope" "s9"'),
        step('RENAMESCRIPT "s1" "s3"'), step("LISTSCRIPTS"), step('GETSCRIPT "s3"'),
        step('SETACTIVE ""'), step("LISTSCRIPTS"), step('DELETESCRIPT "s3"'),
        step('DELETESCRIPT "s3"'), put("Übersicht", GOOD2), step('GETSCRIPT "Übersicht"'),
        step("LISTSCRIPTS"), step("NOOP"), step('NOOP "tag 1"'),
        step("CHECKSCRIPT <good>", b"CHECKSCRIPT " + literal(GOOD2)),
        step("CHECKSCRIPT <broken>", b"CHECKSCRIPT " + literal(BROKEN)),
        step('PUTSCRIPT "q" "keep;"'), step('GETSCRIPT "q"'), step("LISTSCRIPTS"),
        step("LOGOUT"),
    ],
    "quota": [
        step('HAVESPACE "s1" 100'), step(f'HAVESPACE "s1" {MAX_SIZE + 1}'),
        put("s1", pad(MAX_SIZE)), put("s2", pad(MAX_SIZE + 1)), put("s2", "keep;\n"),
        put("s3", "keep;\n"), put("s4", "keep;\n"), put("s5", "keep;\n"),
        step('HAVESPACE "s5" 10'), step('HAVESPACE "s4" 10'), put("s4", "discard;\n"),
        step("LISTSCRIPTS"), step('GETSCRIPT "s4"'), step('DELETESCRIPT "s1"'),
        put("s5", "keep;\n"), step("LISTSCRIPTS"),
    ],
    "states": [
        step("NOOP"), step("LISTSCRIPTS"), auth_step("AUTHENTICATE <wrong password>", "wrong"),
        auth_step("AUTHENTICATE <as another user>", authz="someone-else@example.org"),
        auth_step("AUTHENTICATE"), step("LISTSCRIPTS"), step("NOOP"), step("LOGOUT"),
    ],
}
# Transcripts that authenticate (after STARTTLS) before their first step.
LOGGED_IN = {"manage", "quota"}
# (transcript, command): why Corvus and Dovecot may answer differently.
DIFFERENTIAL_ALLOW: dict[tuple[str, str], str] = {}


def normalize(label: str, data: list[bytes], st: Status):
    """What is compared: the status, the response code (its name; TAG with its value) and,
    for LISTSCRIPTS and GETSCRIPT, what they returned. Texts and capability lists differ by
    design."""
    c = st.code_name
    if c == "TAG":
        c = "TAG " + (parse_string(st.code[3:].strip().encode())[0] or "")
    out = None
    if label == "LISTSCRIPTS" and st.kind == "OK":
        out = sorted(scripts_of(data).items())
    elif label.startswith("GETSCRIPT") and st.kind == "OK":
        out = [parse_string(d)[0] for d in data]
    return (st.kind, c, out)


def run_transcript(port: int, user: str, name: str) -> list[tuple[str, tuple]]:
    r = RawSieve(port)
    out = []
    try:
        r.starttls()
        if name in LOGGED_IN:
            r.ok(f'AUTHENTICATE "PLAIN" "{plain(user)}"')
        for label, command in TRANSCRIPTS[name]:
            if callable(command):
                command = command(user)
            try:
                data, st = r.cmd(command)
            except (EOFError, ConnectionError) as e:
                out.append((label, ("EOF", str(e)[:60], None)))
                break
            out.append((label, normalize(label, data, st)))
    finally:
        r.close()
    return out


@pytest.fixture(scope="module")
def reference(site, tmp_path_factory):
    """Dovecot's managesieved with the same limits and STARTTLS, and per transcript one user
    with the same address at both."""
    if not dovecot.managesieve_available():
        pytest.skip("dovecot-managesieved is not installed")
    cert, key, _ = issue_cert(tmp_path_factory.mktemp("dovecot-cert"), ["localhost"])
    d = dovecot.Dovecot(managesieve=True, tls=(cert, key),
                        sieve={"sieve_max_script_size": MAX_SIZE, "sieve_quota_max_scripts": MAX_SCRIPTS,
                               "sieve_max_redirects": 4})
    users = {}
    for name in TRANSCRIPTS:
        users[name] = site.a.add_user(f"diff-{name}-{time.time_ns() % 100000}")
        d.add_user(users[name], PASSWORD)
    d.start()
    try:
        yield d, users
    finally:
        d.stop()


@pytest.mark.parametrize("name", sorted(TRANSCRIPTS))
def test_managesieve_answers_like_dovecot(site, reference, name):
    d, users = reference
    ours = run_transcript(site.a.ports["managesieve"], users[name], name)
    theirs = run_transcript(d.ports["sieve"], users[name], name)
    assert len(theirs) == len(TRANSCRIPTS[name]), f"the transcript broke at Dovecot: {theirs}"
    differences = []
    for (label, our), (_, their) in itertools.zip_longest(ours, theirs, fillvalue=("?", None)):
        if our != their and (name, label) not in DIFFERENTIAL_ALLOW:
            differences.append(f"{label}\n  corvus:  {our}\n  dovecot: {their}")
    assert not differences, f"{name}: {len(differences)} difference(s)\n" + "\n".join(differences)


# --- the CLI ---------------------------------------------------------------------------------------

def test_cli_put_list_get_activate_delete(site, tmp_path):
    srv = site.a
    user = srv.add_user()
    holiday, broken, other = tmp_path / "holiday.sieve", tmp_path / "broken.sieve", tmp_path / "other.sieve"
    holiday.write_text(GOOD)
    broken.write_text(BROKEN)
    other.write_text("keep;\n")
    srv.cli("sieve", "put", user, str(holiday))
    assert srv.cli("sieve", "list", user).stdout.splitlines() == ["holiday"]
    assert srv.cli("sieve", "get", user, "holiday").stdout == GOOD
    srv.cli("sieve", "activate", user, "holiday")
    assert srv.cli("sieve", "list", user).stdout.splitlines() == ["holiday\tactive"]
    p = srv.cli("sieve", "put", user, str(broken), check=False)
    assert p.returncode == 1, (p.returncode, p.stdout, p.stderr)
    assert re.search(r"broken\.sieve: line %d, column %d: \S" % BROKEN_AT, p.stderr), p.stderr
    srv.cli("sieve", "put", user, str(other), "--activate")
    assert sorted(srv.cli("sieve", "list", user).stdout.splitlines()) == ["holiday", "other\tactive"]
    # ManageSieve sees what the CLI stored, and the other way round.
    m = lib_session(srv, user)
    assert sorted(m.listscripts()[1]) == [("holiday", False), ("other", True)]
    assert m.putscript("from-managesieve", "discard;\n") == "OK"
    m.logout()
    assert srv.cli("sieve", "get", user, "from-managesieve").stdout == "discard;\n"
    srv.cli("sieve", "activate", user, "")
    assert sorted(srv.cli("sieve", "list", user).stdout.splitlines()) == ["from-managesieve", "holiday", "other"]
    srv.cli("sieve", "delete", user, "holiday")
    srv.cli("sieve", "delete", user, "from-managesieve")
    assert srv.cli("sieve", "list", user).stdout.splitlines() == ["other"]
    p = srv.cli("sieve", "get", user, "holiday", check=False)
    assert p.returncode != 0, p.stdout
    p = srv.cli("sieve", "delete", user, "holiday", check=False)
    assert p.returncode != 0, p.stdout


def test_cli_check(tmp_path):
    good, broken = tmp_path / "good.sieve", tmp_path / "broken.sieve"
    good.write_text(GOOD)
    broken.write_text(BROKEN)
    p = run_corvus("sieve", "check", good)
    assert p.returncode == 0 and p.stdout.strip() == f"{good}: ok", (p.stdout, p.stderr)
    p = run_corvus("sieve", "check", broken)
    assert p.returncode == 1, (p.stdout, p.stderr)
    assert re.search(r"^%s: line %d, column %d: \S" % ((re.escape(str(broken)),) + BROKEN_AT),
                     p.stdout + p.stderr, re.M), (p.stdout, p.stderr)


TEST_MESSAGE = ("From: Sam <sam@remote.test>\r\nTo: Uma <uma@example.org>\r\nSubject: weekly report\r\n"
                "Message-ID: <cli-test@remote.test>\r\nDate: Mon, 07 Dec 2026 06:00:00 +0000\r\n\r\n"
                "Numbers.\r\n")

SIEVE_TESTS = {
    "fileinto_with_flags": ('require ["fileinto", "imap4flags"];\naddflag "\\\\Seen";\naddflag "$x";\n'
                            'fileinto "Archive";\n', ["--mailbox", "Archive"], ["store Archive flags \\Seen $x"]),
    "implicit_keep": ('require "fileinto";\nif header :is "Subject" "other" { fileinto "X"; }\n', [],
                      ["store INBOX"]),
    "discard": ("discard;\n", [], ["discard"]),
    "redirect_copy": ('require "copy";\nredirect :copy "fwd@b.test";\n', [],
                      ["redirect fwd@b.test", "store INBOX"]),
    "redirect": ('redirect "fwd@b.test";\n', [], ["redirect fwd@b.test"]),
    "reject": ('require "reject";\nreject text:\nNot wanted here.\nSecond line.\n.\n;\n', [],
               ["reject Not wanted here."]),
    "fileinto_copy_and_keep": ('require ["fileinto", "copy"];\nfileinto :copy "Archive";\nkeep;\n',
                               ["--mailbox", "Archive"],
                               ["store Archive", "store INBOX"]),
    "vacation": ('require "vacation";\nvacation :subject "Away" "I am away.";\n', [],
                 ["vacation sam@remote.test subject Away", "store INBOX"]),
    "mailboxexists_yes": ('require ["fileinto", "mailbox"];\nif mailboxexists "Lists" { fileinto "Lists"; }\n',
                          ["--mailbox", "Lists"], ["store Lists"]),
    "mailboxexists_no": ('require ["fileinto", "mailbox"];\nif mailboxexists "Lists" { fileinto "Lists"; }\n',
                         [], ["store INBOX"]),
    "envelope_and_subaddress": ('require ["envelope", "subaddress", "fileinto"];\n'
                                'if envelope :detail "to" "lists" { fileinto "Lists"; }\n',
                                ["--to", "uma+lists@example.org", "--mailbox", "Lists"], ["store Lists"]),
}


@pytest.mark.parametrize("name", sorted(SIEVE_TESTS))
def test_cli_sieve_test(tmp_path, name):
    script, args, expected = SIEVE_TESTS[name]
    path, msg = tmp_path / f"{name}.sieve", tmp_path / "message.eml"
    path.write_text(script)
    msg.write_bytes(TEST_MESSAGE.encode())
    if "--to" not in args:
        args = args + ["--to", "uma@example.org"]
    p = run_corvus("sieve", "test", path, msg, "--from", "sam@remote.test", *args)
    assert p.returncode == 0, (p.stdout, p.stderr)
    assert p.stdout.splitlines() == expected, p.stdout


# --- delivery ----------------------------------------------------------------------------------------

@dataclass
class Sent:
    code: int
    text: str
    mid: str
    qid: str | None


def send(srv: Server, sender: str, rcpts: list[str], subject: str, *, headers: str = "",
         body: str = "Hello from the Sieve tests.\r\n", frm: str | None = None, to: str | None = None) -> Sent:
    """One SMTP transaction on the smtp listener (every RCPT must be accepted): the reply to
    the end of DATA."""
    mid = f"<{time.time_ns()}.sieve@client.test>"
    msg = (f"From: {frm or sender or 'someone@remote.test'}\r\nTo: {to if to is not None else ', '.join(rcpts)}\r\n"
           f"Subject: {subject}\r\nDate: {email.utils.formatdate()}\r\nMessage-ID: {mid}\r\n{headers}\r\n{body}")
    s = smtplib.SMTP(srv.host, srv.ports["smtp"], local_hostname="client.test", timeout=60)
    try:
        s.ehlo()
        code, text = s.mail(sender)
        assert code == 250, (code, text)
        for r in rcpts:
            code, text = s.rcpt(r)
            assert code == 250, (r, code, text)
        code, text = s.data(msg.encode())
        text = text.decode()
        m = re.search(r"queued as (\S+)", text)
        return Sent(code, text, mid, m.group(1) if m else None)
    finally:
        try:
            s.quit()
        except smtplib.SMTPException:
            pass


_scripts = itertools.count(1)


def install(srv: Server, user: str, script: str, name: str = "main"):
    """Store `script` for `user` as NAME and make it the active one (the CLI)."""
    d = srv.base / "scripts" / str(next(_scripts))
    d.mkdir(parents=True)
    path = d / f"{name}.sieve"
    path.write_text(script)
    srv.cli("sieve", "put", user, str(path), "--activate")


def found(srv: Server, user: str, needle: bytes, folder: str = "INBOX", count: int = 1) -> list[bytes]:
    """Wait until `count` messages containing `needle` are in the folder (read with IMAP, or
    the CLI on a server without IMAP); them."""
    read = srv.messages if "imap" in srv.ports else srv.stored_messages

    def ready():
        got = [m for m in read(user, folder) if needle in m]
        return got if len(got) >= count else None
    return wait_for(ready, what=f"{count} message(s) with {needle!r} in {user}/{folder}")


def sieve_steps(t: dict) -> list[dict]:
    return [s for s in t["steps"] if s["stage"] == "sieve"]


def step_text(s: dict) -> str:
    return " ".join(str(s.get(k) or "") for k in ("engine", "verdict", "reason"))


def traced(site_or_api, qid: str, what: str = "the sieve step") -> dict:
    """The trace of `qid` once it has a sieve step."""
    api = site_or_api.api if isinstance(site_or_api, Site) else site_or_api
    return wait_trace(api, qid, until=lambda t: sieve_steps(t), what=what)


def filed(t: dict) -> list[tuple[str, str]]:
    return sorted((f["user"], f["mailbox"]) for f in t["filed"])


def flags(srv: Server, user: str, folder: str = "INBOX") -> list[set[str]]:
    """The FLAGS of every message of a folder (IMAP FETCH), in UID order."""
    m = srv.imap(user)
    try:
        typ, _ = m.select(f'"{folder}"', readonly=True)
        assert typ == "OK"
        typ, data = m.fetch("1:*", "(FLAGS)")
        assert typ == "OK", data
        return [{f.decode() for f in imaplib.ParseFlags(d)} for d in data if d]
    finally:
        m.logout()


def test_fileinto_an_existing_folder_and_the_trace(site):
    srv = site.a
    user = srv.add_user()
    install(srv, user, GOOD, "sorting")
    sent = send(srv, "sam@remote.test", [user], "monthly report")
    assert sent.code == 250, sent
    assert len(found(srv, user, b"Subject: monthly report", "Archive")) == 1
    t = traced(site, sent.qid)
    assert filed(t) == [(user, "Archive")], t["filed"]
    steps = sieve_steps(t)
    assert len(steps) == 1, t["steps"]
    text = step_text(steps[0])
    # The script's name, the line of the rule that fired (fileinto is on line 3) and the action.
    assert "sorting" in text and re.search(r"\b3\b", text) and re.search(r"file ?into|filed", text, re.I), steps
    assert "Archive" in text, steps
    assert not [m for m in srv.messages(user) if b"monthly report" in m]
    # The CLI shows the step too.
    out = srv.cli("trace", sent.qid).stdout
    assert re.search(r"^\s*\S+\s+sieve\s", out, re.M), out


def test_fileinto_create_makes_the_folder(site):
    srv = site.a
    user = srv.add_user()
    install(srv, user, 'require ["fileinto", "mailbox"];\nfileinto :create "Projects/Sieve";\n')
    sent = send(srv, "sam@remote.test", [user], "into a new folder")
    assert sent.code == 250, sent
    assert len(found(srv, user, b"into a new folder", "Projects/Sieve")) == 1
    assert filed(traced(site, sent.qid)) == [(user, "Projects/Sieve")]


def test_fileinto_a_missing_folder_without_create_keeps_in_inbox(site):
    srv = site.a
    user = srv.add_user()
    install(srv, user, 'require "fileinto";\nfileinto "Nowhere";\n')
    sent = send(srv, "sam@remote.test", [user], "no such folder")
    assert sent.code == 250, sent
    assert len(found(srv, user, b"no such folder")) == 1
    t = traced(site, sent.qid)
    assert filed(t) == [(user, "INBOX")], t["filed"]
    assert any("Nowhere" in step_text(s) for s in sieve_steps(t)), sieve_steps(t)
    assert "Nowhere" not in srv.mailboxes(user)


def test_imap4flags_land_on_the_stored_message(site):
    srv = site.a
    user = srv.add_user()
    install(srv, user, 'require "imap4flags";\naddflag "\\\\Seen";\naddflag "$label1";\n'
                       'addflag ["\\\\Flagged"];\n')
    sent = send(srv, "sam@remote.test", [user], "flag me")
    assert sent.code == 250, sent
    found(srv, user, b"flag me")
    got = flags(srv, user)
    assert len(got) == 1 and {"\\Seen", "$label1", "\\Flagged"} <= got[0], got


def test_discard_stores_nothing(site):
    srv = site.a
    user = srv.add_user()
    install(srv, user, 'if header :contains "Subject" "spam" { discard; stop; }\n')
    sent = send(srv, "sam@remote.test", [user], "cheap spam here")
    assert sent.code == 250, sent
    t = traced(site, sent.qid)
    assert t["filed"] == [], t["filed"]
    assert any("discard" in step_text(s).lower() for s in sieve_steps(t)), sieve_steps(t)
    # The next message, not matched, arrives; the discarded one never does.
    sent = send(srv, "sam@remote.test", [user], "a real message")
    found(srv, user, b"a real message")
    assert not any(b"cheap spam" in m for m in srv.stored_messages(user))


@pytest.mark.parametrize("command", ["reject", "ereject"])
def test_reject_with_one_recipient_is_550_at_data(site, command):
    srv = site.a
    user = srv.add_user()
    install(srv, user, f'require "{command}";\n{command} "We do not accept mail about lotteries.";\n')
    sent = send(srv, "sam@remote.test", [user], "you won the lottery")
    assert sent.code == 550 and "5.7.1" in sent.text, sent
    assert "We do not accept mail about lotteries." in sent.text, sent
    assert srv.stored_messages(user) == []


def test_reject_with_two_recipients_bounces_to_the_sender(site):
    srv = site.a
    sender, refuser, other = srv.add_user(), srv.add_user(), srv.add_user()
    install(srv, refuser, 'require "reject";\nreject "Not interested in newsletters.";\n')
    sent = send(srv, sender, [refuser, other], "newsletter 42")
    assert sent.code == 250, sent
    assert len(found(srv, other, b"newsletter 42")) == 1
    dsn = found(srv, sender, b"multipart/report")[0]
    assert b"Not interested in newsletters." in dsn, dsn[:2000]
    assert refuser.encode() in dsn
    raw = [m for m in srv.stored_messages(sender, return_path=True) if b"multipart/report" in m][0]
    assert raw.startswith(b"Return-Path: <>\r\n"), raw[:200]
    assert srv.stored_messages(refuser) == []


def test_redirect_reaches_another_domain(site):
    """redirect to carol@b.test: queued to B with the original envelope sender; the
    implicit keep is cancelled, unless :copy."""
    a, b = site.a, site.b
    carol = b.add_user()
    plain_user, copy_user = a.add_user(), a.add_user()
    install(a, plain_user, f'redirect "{carol}";\n')
    install(a, copy_user, f'require "copy";\nredirect :copy "{carol}";\n')
    first = send(a, "origin@remote.test", [plain_user], "redirected away")
    second = send(a, "origin@remote.test", [copy_user], "redirected with a copy")
    assert first.code == 250 and second.code == 250, (first, second)
    for subject in (b"redirected away", b"redirected with a copy"):
        found(b, carol, subject)
        raw = [m for m in b.stored_messages(carol, return_path=True) if subject in m][0]
        assert raw.startswith(b"Return-Path: <origin@remote.test>\r\n"), raw[:300]
    assert filed(traced(site, first.qid)) == []
    assert filed(traced(site, second.qid)) == [(copy_user, "INBOX")]
    assert len(found(a, copy_user, b"redirected with a copy")) == 1
    assert a.stored_messages(plain_user) == []


VACATION = 'require "vacation";\nvacation :days 3 "I am away until Monday.";\n'


def reply_to(srv: Server, user: str) -> list[bytes]:
    return [m for m in srv.messages(user) if b"auto-replied" in m.lower()]


def settle(srv: Server, away: str, watched: str):
    """A barrier for a reply that must not come: a fresh sender writes to `away` and its
    reply arrives, and nothing for `watched` waits in the queue; whatever the earlier
    messages caused has happened by then."""
    control = srv.add_user()
    assert send(srv, control, [away], "control message").code == 250
    wait_for(lambda: reply_to(srv, control), what="the vacation reply to the control message")
    wait_for(lambda: watched not in srv.cli("queue", "list").stdout, what=f"no queued mail for {watched}")


def test_vacation_replies_once_per_sender(site):
    srv = site.a
    away, sender = srv.add_user(), srv.add_user()
    install(srv, away, VACATION)
    first = send(srv, sender, [away], "lunch on friday?")
    assert first.code == 250, first
    reply = wait_for(lambda: reply_to(srv, sender), what="the vacation reply")[0]
    msg = email.message_from_bytes(reply, policy=email.policy.default)
    assert msg["Auto-Submitted"].lower().startswith("auto-replied"), msg["Auto-Submitted"]
    assert msg["In-Reply-To"] == first.mid, msg["In-Reply-To"]
    assert first.mid in (msg["References"] or ""), msg["References"]
    assert msg["Subject"] == "Auto: lunch on friday?", msg["Subject"]
    assert sender in msg["To"] and away in msg["From"], (msg["To"], msg["From"])
    assert "I am away until Monday." in msg.get_body(("plain",)).get_content()
    raw = [m for m in srv.stored_messages(sender, return_path=True) if b"auto-replied" in m.lower()][0]
    assert raw.startswith(b"Return-Path: <>\r\n"), raw[:200]
    # The original is kept.
    found(srv, away, b"lunch on friday?")
    # A second message within :days: no second reply.
    assert send(srv, sender, [away], "and saturday?").code == 250
    settle(srv, away, sender)
    assert len(reply_to(srv, sender)) == 1, [m[:300] for m in reply_to(srv, sender)]


VACATION_SILENT = {
    "list_id": dict(headers="List-Id: Team list <team.lists.remote.test>\r\n"),
    "list_unsubscribe": dict(headers="List-Unsubscribe: <mailto:leave@lists.remote.test>\r\n"),
    "precedence_bulk": dict(headers="Precedence: bulk\r\n"),
    "auto_generated": dict(headers="Auto-Submitted: auto-generated\r\n"),
    "auto_replied": dict(headers="Auto-Submitted: auto-replied\r\n"),
    "null_sender": dict(null=True),
    "not_addressed": dict(to="undisclosed-recipients:;"),
    "owner_sender": dict(local="owner-team"),
    "request_sender": dict(local="team-request"),
    "mailer_daemon": dict(local="mailer-daemon"),
}


@pytest.mark.parametrize("case", sorted(VACATION_SILENT))
def test_vacation_stays_silent(site, case):
    """RFC 5230 §4.5 and RFC 3834: no reply to lists, bulk or automatic mail, to <>, to
    messages that do not name the recipient, nor to MAILER-DAEMON, owner- or -request."""
    srv = site.a
    kw = dict(VACATION_SILENT[case])
    away = srv.add_user()
    install(srv, away, VACATION)
    sender = special_sender(srv, kw.pop("local", None))
    if kw.pop("null", False):
        # The reply would go to the envelope sender, which is <>; From names a local user.
        sent = send(srv, "", [away], f"vacation {case}", frm=sender, **kw)
    else:
        sent = send(srv, sender, [away], f"vacation {case}", **kw)
    assert sent.code == 250, sent
    found(srv, away, f"vacation {case}".encode())
    settle(srv, away, sender)
    assert reply_to(srv, sender) == [], f"a vacation reply for {case}"


def special_sender(srv: Server, kind: str | None) -> str:
    """A new local account to send from: an ordinary one, or one whose name says it is a
    list's owner or request address, or MAILER-DAEMON (made once)."""
    n = time.time_ns() % 10**9
    if kind == "mailer-daemon":
        addr = f"mailer-daemon@{srv.domains[0]}"
        if addr not in srv.cli("user", "list").stdout.split():
            srv.add_user(addr)
        return addr
    return srv.add_user({None: None, "owner-team": f"owner-team{n}", "team-request": f"team{n}-request"}[kind])


def test_fileinto_copy_and_keep(site):
    srv = site.a
    user = srv.add_user()
    install(srv, user, 'require ["fileinto", "copy"];\nfileinto :copy "Archive";\nkeep;\n')
    sent = send(srv, "sam@remote.test", [user], "both places")
    assert sent.code == 250, sent
    assert len(found(srv, user, b"both places", "Archive")) == 1
    assert len(found(srv, user, b"both places")) == 1
    assert filed(traced(site, sent.qid)) == [(user, "Archive"), (user, "INBOX")]


def test_each_recipient_runs_their_own_script(site):
    srv = site.a
    junk_user, archive_user, plain_user = srv.add_user(), srv.add_user(), srv.add_user()
    install(srv, junk_user, 'require "fileinto";\nfileinto "Junk";\n')
    install(srv, archive_user, 'require "fileinto";\nfileinto "Archive";\n')
    sent = send(srv, "sam@remote.test", [junk_user, archive_user, plain_user], "one message, three users")
    assert sent.code == 250, sent
    t = traced(site, sent.qid)
    assert filed(t) == sorted([(junk_user, "Junk"), (archive_user, "Archive"), (plain_user, "INBOX")]), t["filed"]
    found(srv, junk_user, b"three users", "Junk")
    found(srv, archive_user, b"three users", "Archive")
    found(srv, plain_user, b"three users")
    assert srv.stored_messages(junk_user) == [] and srv.stored_messages(archive_user) == []


def test_a_costly_script_over_a_big_message_still_delivers(site):
    """Thirty `body :contains` tests over a 2 MB message: within the budget or not, the
    message is in INBOX (the budget's runtime error keeps it)."""
    srv = site.a
    user = srv.add_user()
    tests = "".join(f'if body :contains "needle-{i}" {{ fileinto "Never"; }}\n' for i in range(30))
    install(srv, user, 'require ["body", "fileinto"];\n' + tests)
    body = "".join(f"line {i:07d} of a big body, without any of the needles.\r\n" for i in range(40000))
    assert len(body) > 2_000_000
    sent = send(srv, "sam@remote.test", [user], "a big one", body=body)
    assert sent.code == 250, sent
    assert filed(traced(site, sent.qid)) == [(user, "INBOX")]
    assert len(srv.uids(user)) == 1
    assert "Never" not in srv.mailboxes(user)


# --- delivery on servers of their own ----------------------------------------------------------------

ADMIN_HOOK = """
fn on_delivery(ctx) {
    if ctx.subject == "admin discards" { return discard(); }
    if ctx.subject == "admin quarantines" { return quarantine("the admin says so"); }
}
"""


def test_the_admins_hook_wins_over_the_users_script(hook_server, tmp_path):
    hook = tmp_path / "admin.rhai"
    hook.write_text(ADMIN_HOOK)
    srv = hook_server([{"script": hook}], listeners=HOOKS["listeners"] + ("http",))
    api = Api(srv, create_token(srv, "sieve-hook"))
    user = srv.add_user()
    install(srv, user, 'require ["fileinto", "mailbox"];\nfileinto :create "Mine";\n')
    discarded = send(srv, "sam@remote.test", [user], "admin discards")
    quarantined = send(srv, "sam@remote.test", [user], "admin quarantines")
    ordinary = send(srv, "sam@remote.test", [user], "nothing special")
    assert (discarded.code, quarantined.code, ordinary.code) == (250, 250, 250)
    found(srv, user, b"nothing special", "Mine")
    found(srv, user, b"admin quarantines", "Junk")
    t = wait_trace(api, discarded.qid, until=lambda t: any(s["stage"] == "on_delivery" for s in t["steps"]))
    assert t["filed"] == [], t["filed"]
    t = wait_trace(api, quarantined.qid, until=lambda t: t["filed"])
    assert filed(t) == [(user, "Junk")], t["filed"]
    mine = srv.messages(user, "Mine")
    assert len(mine) == 1 and b"nothing special" in mine[0], mine
    assert not any(b"admin discards" in m for f in srv.mailboxes(user) for m in srv.stored_messages(user, f))


def test_evaluation_budget_exceeded_keeps_the_message(corvus_factory):
    """max_steps: a script that needs more steps fails at run time; the implicit keep files
    the message into INBOX (without the budget its last line would discard it), and the
    trace names the error."""
    srv = corvus_factory(listeners=("smtp", "imap", "http"), shutdown_timeout="5s",
                         imap={"allow_plaintext_auth": True}, sieve={"max_steps": 50})
    greedy, modest = srv.add_user(), srv.add_user()
    srv.start()
    api = Api(srv, create_token(srv, "sieve-budget"))
    tests = "".join(f'if header :contains "Subject" "nomatch-{i}" {{ stop; }}\n' for i in range(200))
    install(srv, greedy, tests + "discard;\n")
    install(srv, modest, 'require "fileinto";\nfileinto "Archive";\n')
    sent = send(srv, "sam@remote.test", [greedy], "over budget")
    assert sent.code == 250, sent
    t = wait_trace(api, sent.qid, until=lambda t: sieve_steps(t), what="the sieve step")
    assert filed(t) == [(greedy, "INBOX")], t["filed"]
    assert any(re.search(r"error|step|budget", step_text(s), re.I) for s in sieve_steps(t)), sieve_steps(t)
    assert len(found(srv, greedy, b"over budget")) == 1
    # A script within the budget runs as usual on the same server.
    sent = send(srv, "sam@remote.test", [modest], "within budget")
    assert sent.code == 250, sent
    found(srv, modest, b"within budget", "Archive")



def test_a_redirect_loop_between_two_users_ends(site):
    """Two users on one server redirect to each other: each copy goes round once and lands
    in the inbox of the user whose script saw its own X-Sieve-Redirected-From (RFC 5228
    §4.2 asks for loop protection); the queue empties, nothing goes round forever."""
    srv = site.a
    ann, ben = srv.add_user(), srv.add_user()
    install(srv, ann, f'redirect "{ben}";\n')
    install(srv, ben, f'redirect "{ann}";\n')
    sent = send(srv, "loop@remote.test", [ann], "round and round")
    assert sent.code == 250, sent
    got = found(srv, ann, b"round and round")
    assert b"X-Sieve-Redirected-From: " + ann.encode() in got[0], got[0][:400]
    wait_for(lambda: ann not in srv.cli("queue", "list").stdout and ben not in srv.cli("queue", "list").stdout,
             what="the queue empty of the loop")
    assert len([m for m in srv.messages(ann) if b"round and round" in m]) == 1
    assert [m for m in srv.messages(ben) if b"round and round" in m] == []


def test_more_redirects_than_allowed_is_an_error_and_keeps(site):
    """Over max_redirects (4 here): a runtime error, no redirect at all, the implicit keep,
    and the error in the trace."""
    a, b = site.a, site.b
    targets = [b.add_user() for _ in range(5)]
    user = a.add_user()
    install(a, user, "".join(f'redirect "{t}";\n' for t in targets))
    sent = send(a, "many@remote.test", [user], "too many redirects")
    assert sent.code == 250, sent
    assert len(found(a, user, b"too many redirects")) == 1
    t = traced(site, sent.qid)
    assert "more than 4 redirects" in step_text(sieve_steps(t)[0]), sieve_steps(t)
    assert filed(t) == [(user, "INBOX")]
    assert not any(b.stored_messages(x) for x in targets)


def test_admin_api_manages_a_users_scripts(site):
    """The admin API's /api/users/{address}/sieve…: the same checks as ManageSieve and the
    CLI (a broken script is a 400 naming line and column; the active script cannot be
    deleted), and what it stores is what delivery runs."""
    api, srv = site.api, site.a
    user = srv.add_user()
    base = f"/api/users/{user}/sieve"
    assert check(api.get(base), 200) == []
    r = api.put(f"{base}/broken", json={"script": 'require "fileinto";\nif true {\n  frob;\n}\n'})
    assert r.status_code == 400 and "line 3, column 3" in r.json()["error"], r.text
    good = 'require "fileinto";\nfileinto "Archive";\n'
    check(api.put(f"{base}/api", json={"script": good, "activate": True}), 200)
    assert check(api.get(base), 200) == [{"name": "api", "active": True}]
    assert check(api.get(f"{base}/api"), 200) == {"name": "api", "active": True, "script": good}
    assert srv.cli("sieve", "list", user).stdout.strip() == "api\tactive"
    sent = send(srv, "sam@remote.test", [user], "filed by the API's script")
    assert sent.code == 250, sent
    found(srv, user, b"filed by the API's script", "Archive")
    assert api.delete(f"{base}/api").status_code == 400
    check(api.put(f"/api/users/{user}/active-sieve", json={"name": ""}), 200)
    assert check(api.get(base), 200) == [{"name": "api", "active": False}]
    check(api.delete(f"{base}/api"), 200)
    assert api.get(f"{base}/api").status_code == 404
    assert api.put("/api/users/nobody@example.org/sieve/x", json={"script": "keep;"}).status_code == 404
    assert api.put(f"/api/users/{user}/active-sieve", json={"name": "missing"}).status_code == 404


def test_a_redirected_copy_is_arc_sealed(tmp_path, dns):
    """A Sieve redirect to another domain breaks SPF for the original sender as any
    forward does; the copy leaves with an ARC set signed with the recipient's domain key
    (RFC 8617), which dkimpy's arc_verify accepts (RSA: dkimpy has no ed25519 ARC)."""
    import dkim
    zone = dns
    b_port = free_port()
    b = Server(tmp_path / "b", zone.addr, domains=["b.test"], hostname="mx.b.test", host=B_IP,
               ports={"smtp": b_port}, shutdown_timeout="5s")
    a = Server(tmp_path / "a", zone.addr, domains=["seal.test"], hostname="mx.seal.test",
               listeners=("smtp", "imap"), shutdown_timeout="5s", imap={"allow_plaintext_auth": True},
               delivery={"port": b_port, "retry": ["1s"]})
    zone.add("b.test", "MX", "10 mx.b.test.")
    zone.add("mx.b.test", "A", B_IP)
    out = a.cli("dkim", "generate", "seal.test", "--selector", "arc1", "--algorithm", "rsa").stdout
    zone.add("arc1._domainkey.seal.test", "TXT", re.search(r'IN TXT (".*")', out).group(1))
    carol = b.add_user("carol@b.test")
    user = a.add_user("fwd@seal.test")
    try:
        b.start()
        a.start()
        install(a, user, 'redirect "carol@b.test";\n')
        assert send(a, "origin@remote.test", [user], "sealed on the way").code == 250
        raw = found(b, carol, b"sealed on the way")[0]
        assert b"ARC-Seal: i=1;" in raw and b"d=seal.test" in raw, raw[:1500]
        cv, _, why = dkim.arc_verify(raw, dnsfunc=zone.resolve_txt)
        assert cv == dkim.CV_Pass, (cv, why)
    finally:
        stop_all([a, b])


def test_a_reject_by_one_member_of_an_alias_does_not_refuse_the_others(site):
    """One RCPT naming an alias of two accounts: the member whose script rejects sends a
    notice; the message is accepted (250) and the other member gets it."""
    srv = site.a
    sender, refuser, other = srv.add_user(), srv.add_user(), srv.add_user()
    alias = "team-%d@example.org" % next(_scripts)
    srv.cli("alias", "add", alias, refuser, other)
    install(srv, refuser, 'require "reject";\nreject "Not for me.";\n')
    sent = send(srv, sender, [alias], "to the whole team")
    assert sent.code == 250, sent
    assert len(found(srv, other, b"to the whole team")) == 1
    dsn = found(srv, sender, b"multipart/report")[0]
    assert b"Not for me." in dsn, dsn[:2000]
    assert srv.stored_messages(refuser) == []


def test_a_redirect_mark_from_outside_is_removed(site):
    """X-Sieve-Redirected-From is the loop mark of this server's own redirects: one that a
    sender writes is removed at the end of DATA, so it cannot stop a user's redirect."""
    a, b = site.a, site.b
    carol = b.add_user()
    user = a.add_user()
    install(a, user, f'redirect "{carol}";\n')
    sent = send(a, "forger@remote.test", [user], "with a forged mark",
                headers=f"X-Sieve-Redirected-From: {user}\r\n")
    assert sent.code == 250, sent
    # Redirected (the forged mark did not pass for A's own); B, a Corvus too, removes A's
    # mark at its end of DATA like any from outside.
    raw = found(b, carol, b"with a forged mark")[0]
    assert b"X-Sieve-Redirected-From:" not in raw, raw[:1500]
    assert a.stored_messages(user) == []
