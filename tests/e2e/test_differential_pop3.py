"""Differential POP3 tests: the same sessions against Dovecot's POP3 server and Corvus
(issue 20, "An oracle"). Both maildrops get the same three messages (APPENDed over IMAP, so
the bytes and sizes are equal); each command's status (+OK/-ERR) and, for multi-line answers,
the lines are compared. What may differ by design is normalized: greeting and status texts,
UIDL values (each server makes its own unique ids: only their count and uniqueness are
compared), and the RFC 2449 response codes' presence."""

from __future__ import annotations

import socket

import pytest

from test_differential_imap import M1, M2, M3, append

from support import dovecot
from support.clients import RawImap
from support.server import IMAP, PASSWORD, Server, with_preset

pytestmark = pytest.mark.skipif(not dovecot.available(), reason="dovecot is not installed")

MULTILINE = ("LIST", "UIDL", "RETR", "TOP", "CAPA")

SESSIONS = {
    "read_and_delete": [
        "STAT", "LIST", "LIST 2", "LIST 9", "UIDL", "RETR 1", "TOP 2 0", "TOP 3 1",
        "DELE 2", "STAT", "LIST", "RETR 2", "DELE 2", "RSET", "STAT", "NOOP", "DELE 1",
    ],
    "errors": [
        "RETR", "RETR 0", "RETR x", "TOP 1", "DELE 99", "BOGUS", "LIST 1 2", "STAT",
    ],
}


class Pop:
    def __init__(self, port: int):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=15)
        self.buf = b""
        self.greeting = self.line()

    def line(self) -> bytes:
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError(self.buf)
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def cmd(self, text: str) -> tuple[bytes, list[bytes]]:
        self.sock.sendall(text.encode() + b"\r\n")
        status = self.line()
        body = []
        verb = text.split()[0].upper()
        one_arg_list = verb in ("LIST", "UIDL") and len(text.split()) > 1
        if status.startswith(b"+OK") and verb in MULTILINE and not one_arg_list:
            while (l := self.line()) != b".":
                body.append(l)
        return status, body


def normalize(cmd: str, status: bytes, body: list[bytes]):
    ok = status.startswith(b"+OK")
    verb = cmd.split()[0].upper()
    if verb == "UIDL":
        if len(cmd.split()) > 1:
            return ok, len(status.split()) if ok else None
        ids = [l.split()[1] for l in body]
        return ok, (len(ids), len(set(ids)))
    if verb in ("STAT",) or (verb == "LIST" and len(cmd.split()) > 1):
        return ok, status.split()[1:3] if ok else None
    return ok, body


def fill(port: int, user: str):
    r = RawImap(port)
    r.cmd(f'LOGIN "{user}" "{PASSWORD}"')
    for step in (append("INBOX", M1), append("INBOX", M2), append("INBOX", M3)):
        _, tagged = r.cmd(step)
        assert b" OK" in tagged, tagged
    r.cmd("LOGOUT")


@pytest.fixture(scope="module")
def servers(tmp_path_factory, loopback_dns):
    corvus = Server(tmp_path_factory.mktemp("corvus"), loopback_dns.addr,
                    **with_preset(IMAP, listeners=("smtp", "imap", "imaps", "pop3"),
                                  pop3={"allow_plaintext_auth": True})).start()
    with dovecot.beside(corvus, ["pop_" + name for name in SESSIONS]) as (reference, users):
        users = {name: users["pop_" + name] for name in SESSIONS}
        for user in users.values():
            fill(corvus.ports["imap"], user)
            fill(reference.ports["imap"], user)
        yield corvus, reference, users


@pytest.mark.parametrize("name", sorted(SESSIONS))
def test_corvus_pop3_answers_like_dovecot(servers, name):
    corvus, reference, users = servers
    results = []
    for port in (corvus.ports["pop3"], reference.ports["pop3"]):
        p = Pop(port)
        assert p.greeting.startswith(b"+OK")
        assert p.cmd(f"USER {users[name]}")[0].startswith(b"+OK")
        assert p.cmd(f"PASS {PASSWORD}")[0].startswith(b"+OK")
        results.append([(c, normalize(c, *p.cmd(c))) for c in SESSIONS[name]])
        p.cmd("RSET")  # nothing is deleted: the next test run sees the same maildrop
        p.cmd("QUIT")
    differences = [
        f"{c}\n  corvus:  {ours}\n  dovecot: {theirs}"
        for (c, ours), (_, theirs) in zip(*results)
        if ours != theirs
    ]
    assert not differences, "\n".join(differences)
