"""Differential SMTP tests: the same sessions against Postfix (a private instance, the MX of
example.org with alice and bob) and Corvus (issue 20, "An oracle"). Only what RFC 5321 and
RFC 3463 specify is compared: each reply's code and enhanced status code, command by command
(texts, EHLO keywords and greetings differ by design). Accepted differences are listed in
differential_allow.txt with their reasons."""

from __future__ import annotations

import re

import pytest

from support import postfix
from support.clients import RawSmtp
from support.server import ALICE, BOB, Server

pytestmark = pytest.mark.skipif(not postfix.available(),
                                reason="postfix is not installed (or not root)")

BIG = 60 * 1024 * 1024

SESSIONS = {
    "sequence_errors": [
        "MAIL FROM:<a@remote.test>",
        "RCPT TO:<alice@example.org>",
        "DATA",
        "EHLO client.test",
        "RCPT TO:<alice@example.org>",
        "DATA",
        "MAIL FROM:<a@remote.test>",
        "MAIL FROM:<b@remote.test>",
        "DATA",
        "RSET",
        "NOOP",
        "QUIT",
    ],
    "recipients": [
        "EHLO client.test",
        "MAIL FROM:<a@remote.test>",
        "RCPT TO:<alice@example.org>",
        "RCPT TO:<ALICE@EXAMPLE.ORG>",
        "RCPT TO:<nobody@example.org>",
        "RCPT TO:<victim@elsewhere.test>",
        "RCPT TO:<@relay.test:victim@elsewhere.test>",
        "RCPT TO:<postmaster@example.org>",
        "RCPT TO:<Postmaster>",
        "RCPT TO:alice@example.org",
        "RCPT TO:<bad address>",
        "RSET",
        "MAIL FROM:<>",
        "RCPT TO:<bob@example.org>",
        "QUIT",
    ],
    "syntax": [
        "HELO",
        "EHLO",
        "EHLO client.test",
        "MAIL FROM:",
        "MAIL FROM:<a@remote.test> BOGUS=1",
        f"MAIL FROM:<a@remote.test> SIZE={BIG}",
        "MAIL FROM:<a@remote.test> SIZE=1000 BODY=8BITMIME",
        "RCPT TO:<alice@example.org> NOTIFY=BOGUS",
        "RCPT TO:<alice@example.org> NOTIFY=SUCCESS,FAILURE",
        "BOGUS",
        "QUIT",
    ],
    "a_message": [
        "EHLO client.test",
        "MAIL FROM:<a@remote.test>",
        "RCPT TO:<bob@example.org>",
        "DATA",
        b"Subject: differential\r\n\r\nbody\r\n.",
        "MAIL FROM:<a@remote.test>",
        "RCPT TO:<alice@example.org>",
        "BDAT 0 LAST",
        "QUIT",
    ],
}


def code_of(reply) -> tuple[int, str | None]:
    code, lines = reply
    m = re.match(r"([245]\.\d{1,3}\.\d{1,3})\b", lines[-1])
    return code, m.group(1) if m else None


def run(port: int, commands: list) -> list:
    r = RawSmtp(port, timeout=20)
    r.expect(220)
    out = []
    for c in commands:
        out.append((c if isinstance(c, str) else c.split(b"\r\n")[0].decode(),
                    code_of(r.cmd(c))))
        if c == "QUIT":
            break
    r.close()
    return out


def allowed() -> set[tuple[str, str]]:
    from test_differential_imap import allowed as imap_allowed
    return imap_allowed()


@pytest.fixture(scope="module")
def servers(corvus_factory_module):
    reference = postfix.Postfix([ALICE, BOB]).start()
    yield corvus_factory_module, reference
    reference.stop()


@pytest.fixture(scope="module")
def corvus_factory_module(tmp_path_factory, loopback_dns):
    c = Server(tmp_path_factory.mktemp("corvus"), loopback_dns.addr)
    c.add_user(ALICE)
    c.add_user(BOB)
    c.start()
    yield c
    c.stop()


@pytest.mark.parametrize("name", sorted(SESSIONS))
def test_corvus_smtp_replies_like_postfix(servers, name):
    corvus, postfix = servers
    ours = run(corvus.ports["smtp"], SESSIONS[name])
    theirs = run(postfix.port, SESSIONS[name])
    ok = allowed()
    differences = [
        f"{cmd}\n  corvus:  {a}\n  postfix: {b}"
        for (cmd, a), (_, b) in zip(ours, theirs)
        if a != b and (f"smtp:{name}", cmd) not in ok
    ]
    assert not differences, f"{name}:\n" + "\n".join(differences)
