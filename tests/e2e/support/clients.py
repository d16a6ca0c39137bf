"""Raw clients for transcript tests: exact bytes out, and each reply read back as the answer
to the command that caused it (SMTP: the reply; IMAP: the untagged responses up to the tagged
one; POP3: the status line). The servers' own helpers (support/server.py) make them."""

from __future__ import annotations

import imaplib
import itertools
import re
import smtplib
import socket
import ssl

from .net import tls_context

# The password of every test account.
PASSWORD = "correct horse"

# Python's imaplib knows these commands only for certain states; teach it the newer ones.
for _cmd in ("ENABLE", "ID", "MOVE", "UNSELECT", "NAMESPACE", "IDLE"):
    imaplib.Commands.setdefault(_cmd, ("AUTH", "SELECTED", "NONAUTH"))


def rcpt_reply(s: smtplib.SMTP, sender: str, rcpt: str) -> tuple[int, bytes]:
    """MAIL FROM (which must be accepted), then the reply to RCPT TO."""
    code, text = s.mail(sender)
    assert code == 250, (code, text)
    return s.rcpt(rcpt)


def rcpt_codes(s: smtplib.SMTP, sender: str, rcpt: str, times: int) -> list[int]:
    """The RCPT TO reply codes of `times` transactions, each reset after its RCPT."""
    codes = []
    for _ in range(times):
        codes.append(rcpt_reply(s, sender, rcpt)[0])
        s.rset()
    return codes


def connect(port: int, tls: bool = False, timeout: float = 15, source: str | None = None) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout,
                                    source_address=(source, 0) if source else None)
    return tls_context().wrap_socket(sock) if tls else sock


class RawSmtp:
    """SMTP: `cmd` sends one line and returns its (code, [text lines]) reply."""

    def __init__(self, port: int, tls: bool = False, timeout: float = 15, source: str | None = None):
        self.sock = connect(port, tls, timeout, source)
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


def peer_closes(sock, timeout: float = 5) -> bool:
    """Whether the peer closes `sock` within `timeout`; whatever it sends before is read and
    dropped."""
    sock.settimeout(timeout)
    try:
        while True:
            if not sock.recv(65536):
                return True
    except (socket.timeout, TimeoutError):
        return False
    except (ConnectionResetError, ssl.SSLError, OSError):
        return True


def quote(s: str) -> str:
    """An IMAP quoted string."""
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


class RawImap:
    """IMAP: reads whole responses, literals included.

    `cmd` returns (untagged, tagged) where each untagged response is bytes with literals
    inlined, exactly as received (minus the final CRLF)."""

    def __init__(self, port: int, tls: bool = False, timeout: float = 15):
        self.sock = connect(port, tls, timeout)
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
        return peer_closes(self.sock, timeout)

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


class RawPop3:
    """POP3: `cmd` sends one line and returns the status line; `multiline` reads a body."""

    def __init__(self, port: int, tls: bool = False, timeout: float = 10):
        self.sock = connect(port, tls, timeout)
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
