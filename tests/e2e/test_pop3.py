"""POP3 end to end: Python's poplib, raw transcripts, fetchmail, and IMAP interplay.

RFC 1939 (commands, states, UPDATE), RFC 2449 (CAPA, response codes), RFC 2595 (STLS),
RFC 5034 (AUTH PLAIN). Every test runs its own server (conftest's `pop3_server`).
"""

from __future__ import annotations

import base64
import imaplib
import poplib
import re
import shutil
import signal
import subprocess
import time

import pytest

from support.clients import RawPop3
from support.mail import message
from support.net import tls_context
from support.server import PASSWORD, Server


@pytest.fixture
def server(pop3_server):
    return pop3_server()


@pytest.fixture
def plain_server(pop3_server):
    """USER/PASS allowed without TLS (for fetchmail and plain poplib)."""
    return pop3_server(pop3={"allow_plaintext_auth": True})


def pop_ssl(server: Server, user: str, password: str = PASSWORD) -> poplib.POP3_SSL:
    p = poplib.POP3_SSL("127.0.0.1", server.ports["pop3s"], context=tls_context(), timeout=10)
    p.user(user)
    p.pass_(password)
    return p


def login_retrying(server: Server, user: str) -> poplib.POP3_SSL:
    """Log in, waiting out [IN-USE] while a just-closed session is still being torn down."""
    deadline = time.time() + 5
    while True:
        try:
            return pop_ssl(server, user)
        except poplib.error_proto as e:
            if b"[IN-USE]" not in e.args[0] or time.time() > deadline:
                raise
            time.sleep(0.05)


def wire(lines: list[bytes]) -> bytes:
    """A message as poplib returns it (lines, dot-stuffing removed) back in wire form."""
    return b"".join(line + b"\r\n" for line in lines)


def imap(server: Server, user: str) -> imaplib.IMAP4_SSL:
    m = imaplib.IMAP4_SSL("127.0.0.1", server.ports["imaps"], ssl_context=tls_context(), timeout=10)
    m.login(user, PASSWORD)
    return m


# -- capabilities, TLS and authentication ------------------------------------------------


def test_capa_stls_and_plaintext_refusal(server):
    """Before TLS: no USER/SASL, STLS offered, USER/PASS/AUTH refused with [AUTH] (RFC 2595);
    after STLS (poplib.stls), USER and SASL PLAIN appear and login works."""
    user = server.add_user("alice")
    p = poplib.POP3("127.0.0.1", server.ports["pop3"], timeout=10)
    caps = p.capa()
    assert "STLS" in caps and "USER" not in caps and "SASL" not in caps, caps
    for c in ["TOP", "UIDL", "RESP-CODES", "AUTH-RESP-CODE", "PIPELINING"]:
        assert c in caps, caps
    assert caps["IMPLEMENTATION"] == ["Corvus"]
    with pytest.raises(poplib.error_proto, match=r"\[AUTH\]"):
        p.user(user)
    with pytest.raises(poplib.error_proto, match=r"\[AUTH\]"):
        p.pass_(PASSWORD)
    with pytest.raises(poplib.error_proto, match=r"\[AUTH\]"):
        p._shortcmd("AUTH PLAIN " + base64.b64encode(b"\0%s\0%s" % (user.encode(), PASSWORD.encode())).decode())

    p.stls(tls_context())
    caps = p.capa()
    assert "USER" in caps and caps["SASL"] == ["PLAIN"] and "STLS" not in caps, caps
    with pytest.raises(poplib.error_proto, match="TLS active"):
        p._shortcmd("STLS")
    p.user(user)
    assert p.pass_(PASSWORD).startswith(b"+OK")
    assert p.stat() == (0, 0)
    assert p.quit().startswith(b"+OK")


def test_implicit_tls(server):
    user = server.add_user("alice")
    server.deliver(user, message("over tls"))
    p = pop_ssl(server, user)
    caps = p.capa()
    assert "STLS" not in caps and "USER" in caps
    assert p.stat()[0] == 1
    p.quit()


def test_auth_plain_initial_response_continuation_and_failures(server):
    user = server.add_user("alice")
    good = base64.b64encode(b"\0" + user.encode() + b"\0" + PASSWORD.encode()).decode()
    bad = base64.b64encode(b"\0" + user.encode() + b"\0wrong").decode()

    r = RawPop3(server.ports["pop3s"], tls=True)
    assert r.greeting.startswith(b"+OK")
    assert r.cmd("AUTH PLAIN " + bad).startswith(b"-ERR [AUTH]")
    assert r.cmd("AUTH PLAIN").startswith(b"+ ")
    assert r.cmd("*").startswith(b"-ERR")  # RFC 5034 §4: cancelled
    assert r.cmd("AUTH CRAM-MD5").startswith(b"-ERR")
    assert r.cmd("AUTH PLAIN !!!").startswith(b"-ERR")
    assert r.cmd("AUTH PLAIN").startswith(b"+ ")
    assert r.cmd(good).startswith(b"+OK")
    assert r.cmd("STAT") == b"+OK 0 0"
    assert r.cmd("QUIT").startswith(b"+OK")
    r.close()

    r = RawPop3(server.ports["pop3s"], tls=True)
    assert r.cmd("AUTH PLAIN " + good).startswith(b"+OK")
    r.close()

    # An authorization identity other than the user: refused.
    other = base64.b64encode(b"bob@example.org\0" + user.encode() + b"\0" + PASSWORD.encode())
    r = RawPop3(server.ports["pop3s"], tls=True)
    assert r.cmd(b"AUTH PLAIN " + other).startswith(b"-ERR [AUTH]")
    r.close()


def test_failed_logins_are_throttled_per_ip(pop3_server):
    s = pop3_server(limits={"max_auth_failures": 2})
    try:
        user = s.add_user("alice")
        r = RawPop3(s.ports["pop3s"], tls=True)
        r.cmd("USER " + user)
        assert r.cmd("PASS nope").startswith(b"-ERR [AUTH]")
        r.cmd("USER " + user)
        assert r.cmd("PASS nope").startswith(b"-ERR [AUTH]")
        assert r.closed()
        # Even the right password is refused while the address cools down.
        r = RawPop3(s.ports["pop3s"], tls=True)
        r.cmd("USER " + user)
        assert r.cmd("PASS " + PASSWORD).startswith(b"-ERR [SYS/TEMP]")
        assert r.closed()
    finally:
        s.stop()


# -- the maildrop --------------------------------------------------------------------------


def test_poplib_stat_list_uidl_retr_top_dele_rset_quit(server):
    user = server.add_user("alice")
    for i in range(3):
        server.deliver(user, message("message %d" % i, "body %d\r\nline two\r\n" % i))
    p = pop_ssl(server, user)
    count, size = p.stat()
    assert count == 3
    _, listing, _ = p.list()
    sizes = {int(n): int(sz) for n, sz in (l.split() for l in listing)}
    assert sorted(sizes) == [1, 2, 3] and sum(sizes.values()) == size
    assert p.list(2).split()[1:] == [b"2", str(sizes[2]).encode()]
    _, uidl, _ = p.uidl()
    uids = dict(l.split() for l in uidl)
    assert len(set(uids.values())) == 3
    assert all(re.fullmatch(rb"[\x21-\x7e]{1,70}", u) for u in uids.values())
    assert p.uidl(3).split()[1:] == [b"3", uids[b"3"]]

    for n in (1, 2, 3):
        resp, lines, _ = p.retr(n)
        raw = wire(lines)
        # LIST sizes are the octets of the message as stored (CRLF).
        assert len(raw) == sizes[n], (n, raw)
        # Our trace fields on top: Authentication-Results (smtp listener), Received.
        assert re.match(rb"Return-Path: <[^\r]*>\r\n(Authentication-Results: [^\r]*\r\n([ \t][^\r]*\r\n)*)?Received: ", raw), raw[:300]
        assert b"Subject: message %d\r\n" % (n - 1) in raw
        assert raw.endswith(b"\r\nbody %d\r\nline two\r\n" % (n - 1))

    _, top0, _ = p.top(1, 0)
    assert top0[-1] == b"" and b"Subject: message 0" in top0
    assert not any(l.startswith(b"body") for l in top0)
    _, top1, _ = p.top(1, 1)
    assert top1 == top0 + [b"body 0"]

    assert p.dele(2).startswith(b"+OK")
    assert p.stat() == (2, size - sizes[2])
    with pytest.raises(poplib.error_proto):
        p.retr(2)
    with pytest.raises(poplib.error_proto):
        p.dele(2)
    with pytest.raises(poplib.error_proto):
        p.list(4)
    assert [l.split()[0] for l in p.list()[1]] == [b"1", b"3"]
    p.rset()
    assert p.stat() == (3, size)
    p.dele(1)
    p.noop()
    assert p.quit().startswith(b"+OK")

    # UPDATE happened: message 1 is gone, the others keep their unique ids.
    p = login_retrying(server, user)
    assert p.stat()[0] == 2
    assert sorted(l.split()[1] for l in p.uidl()[1]) == sorted([uids[b"2"], uids[b"3"]])
    p.quit()


def test_dropped_connection_deletes_nothing(server):
    """RFC 1939 §6: without QUIT there is no UPDATE state."""
    user = server.add_user("alice")
    server.deliver(user, message("keep me"))
    p = pop_ssl(server, user)
    p.dele(1)
    p.file.close()  # gone without QUIT (poplib's file object holds the socket too)
    p.sock.close()
    p = login_retrying(server, user)
    assert p.stat()[0] == 1
    p.quit()


def test_maildrop_lock_in_use(server):
    user = server.add_user("alice")
    first = pop_ssl(server, user)
    with pytest.raises(poplib.error_proto, match=r"\[IN-USE\]"):
        pop_ssl(server, user)
    # Another user is not affected.
    other = server.add_user("bob")
    pop_ssl(server, other).quit()
    first.quit()
    login_retrying(server, user).quit()


def test_mail_delivered_during_session_is_not_listed(server):
    user = server.add_user("alice")
    server.deliver(user, message("before"))
    p = pop_ssl(server, user)
    assert p.stat()[0] == 1
    server.deliver(user, message("during"))
    assert p.stat()[0] == 1
    assert len(p.list()[1]) == 1
    with pytest.raises(poplib.error_proto):
        p.retr(2)
    p.quit()
    p = login_retrying(server, user)
    assert p.stat()[0] == 2
    p.quit()


def test_uidl_stable_across_restart(server):
    user = server.add_user("alice")
    for i in range(3):
        server.deliver(user, message("m%d" % i))
    p = pop_ssl(server, user)
    before = p.uidl()[1]
    p.dele(1)
    p.quit()
    server.restart()
    p = pop_ssl(server, user)
    after = p.uidl()[1]
    p.quit()
    # Message numbers are renumbered from 1, the unique ids stay.
    assert [l.split()[1] for l in after] == [l.split()[1] for l in before[1:]]


def test_dot_stuffing_on_the_wire(server):
    user = server.add_user("alice")
    body = ".leading dot\r\n..two dots\r\n.\r\nlast\r\n"
    server.deliver(user, message("dots", body))
    r = RawPop3(server.ports["pop3s"], tls=True)
    r.login(user)
    assert r.cmd("RETR 1").startswith(b"+OK")
    lines = r.multiline()
    tail = lines[lines.index(b"") + 1:]
    assert tail == [b"..leading dot", b"...two dots", b"..", b"last"]
    assert r.cmd("TOP 1 2").startswith(b"+OK")
    lines = r.multiline()
    assert lines[lines.index(b"") + 1:] == [b"..leading dot", b"...two dots"]
    r.cmd("QUIT")
    # poplib removes the stuffing again: the original lines come back.
    p = login_retrying(server, user)
    lines = p.retr(1)[1]
    assert lines[lines.index(b"") + 1:] == [b".leading dot", b"..two dots", b".", b"last"]
    p.quit()


def test_message_without_final_crlf_is_terminated(server):
    """A message not ending in CRLF (stored through import) gets one before the "."."""
    user = server.add_user("alice")
    # mbox cannot store "no final newline", so a Maildir file it is.
    md = server.base / "md"
    for d in ("cur", "new", "tmp"):
        (md / d).mkdir(parents=True)
    (md / "cur" / "1.x.host:2,S").write_bytes(b"Subject: x\n\nno newline at the end")
    server.cli("mailbox", "import", user, "--format", "maildir", str(md))
    r = RawPop3(server.ports["pop3s"], tls=True)
    r.login(user)
    assert r.cmd("LIST 1") == b"+OK 1 %d" % len(b"Subject: x\r\n\r\nno newline at the end")
    assert r.cmd("RETR 1").startswith(b"+OK")
    assert r.multiline() == [b"Subject: x", b"", b"no newline at the end"]
    r.cmd("QUIT")


def test_commands_case_insensitive_errors_and_too_many_errors(pop3_server):
    s = pop3_server(pop3={"max_errors": 4})
    try:
        user = s.add_user("alice")
        r = RawPop3(s.ports["pop3s"], tls=True)
        assert r.cmd("stat").startswith(b"-ERR")  # valid command, wrong state
        r.login(user)
        assert r.cmd("sTaT") == b"+OK 0 0"
        assert r.cmd("FROB").startswith(b"-ERR")
        assert r.cmd("LIST x").startswith(b"-ERR")
        assert r.cmd(b"X" * 2000).startswith(b"-ERR")  # over-long line
        assert r.closed()  # the fourth error closes the session
    finally:
        s.stop()


def test_pipelining(server):
    user = server.add_user("alice")
    server.deliver(user, message("one"))
    r = RawPop3(server.ports["pop3s"], tls=True)
    r.send(b"USER %s\r\nPASS %s\r\nSTAT\r\nLIST\r\nUIDL 1\r\nQUIT" % (user.encode(), PASSWORD.encode()))
    assert r.line().startswith(b"+OK")
    assert r.line().startswith(b"+OK Logged in")
    assert r.line().startswith(b"+OK 1 ")
    assert r.line().startswith(b"+OK")
    assert len(r.multiline()) == 1
    assert r.line().startswith(b"+OK 1 ")
    assert r.line().startswith(b"+OK")
    assert r.closed()


def test_idle_timeout_closes_without_update(pop3_server):
    s = pop3_server(pop3={"idle_timeout": "1s"})
    try:
        user = s.add_user("alice")
        s.deliver(user, message("stay"))
        r = RawPop3(s.ports["pop3s"], tls=True)
        r.login(user)
        assert r.cmd("DELE 1").startswith(b"+OK")
        time.sleep(1.5)
        # RFC 1939 §3: closed without a response and without UPDATE.
        assert r.line() == b"" and r.eof
        p = login_retrying(s, user)
        assert p.stat()[0] == 1
        p.quit()
    finally:
        s.stop()


def test_shutdown_closes_idle_sessions_with_sys_temp(server):
    user = server.add_user("alice")
    server.deliver(user, message("stay"))
    r = RawPop3(server.ports["pop3s"], tls=True)
    r.login(user)
    assert r.cmd("DELE 1").startswith(b"+OK")
    server.proc.send_signal(signal.SIGTERM)
    assert r.line().startswith(b"-ERR [SYS/TEMP]")
    assert server.proc.wait(15) == 0
    server.start()
    p = pop_ssl(server, user)
    assert p.stat()[0] == 1  # no UPDATE on shutdown
    p.quit()


# -- interplay with IMAP -------------------------------------------------------------------


def test_pop3_deletion_reaches_imap_session_and_retr_marks_seen(server):
    user = server.add_user("alice")
    for i in range(3):
        server.deliver(user, message("m%d" % i))
    m = imap(server, user)
    typ, data = m.select("INBOX")
    assert typ == "OK" and data == [b"3"]

    p = pop_ssl(server, user)
    p.retr(1)
    p.dele(2)
    p.quit()

    typ, _ = m.noop()
    assert typ == "OK"
    expunged = [d for d in m.untagged_responses.get("EXPUNGE", [])]
    assert expunged == [b"2"], m.untagged_responses
    m.untagged_responses.clear()
    typ, data = m.fetch("1:*", "(FLAGS)")
    flags = [d for d in data if d]
    assert len(flags) == 2
    assert b"\\Seen" in flags[0] and b"\\Seen" not in flags[1], flags
    m.logout()


# -- a POP3 client we did not write ------------------------------------------------------


@pytest.mark.skipif(shutil.which("fetchmail") is None, reason="fetchmail not installed")
@pytest.mark.parametrize("mode", ["pop3s", "stls"])
def test_fetchmail_downloads_and_deletes(tmp_path, mode, pop3_server):
    s = pop3_server()
    try:
        user = s.add_user("alice")
        subjects = ["fetch %d" % i for i in range(5)]
        for subj in subjects:
            s.deliver(user, message(subj, ".dotted line\r\nplain\r\n"))
        out = tmp_path / "fetched.mbox"
        home = tmp_path / "home"
        home.mkdir()
        rc = home / ".fetchmailrc"
        # pop3s: TLS from the start; stls: fetchmail must upgrade with STLS (sslproto without
        # ssl means "STLS required").
        ssl_opts = "ssl no sslcertck" if mode == "pop3s" else "sslproto 'tls1.2+' no sslcertck"
        port = s.ports["pop3s" if mode == "pop3s" else "pop3"]
        rc.write_text(
            'poll 127.0.0.1 protocol pop3 service %d uidl\n'
            '  user "%s" there with password "%s" is "nobody" here\n'
            '  %s nokeep fetchall\n'
            '  mda "/bin/sh -c \'cat >> %s\'"\n' % (port, user, PASSWORD, ssl_opts, out)
        )
        rc.chmod(0o600)
        r = subprocess.run(
            ["fetchmail", "-v", "-f", str(rc), "--idfile", str(home / ".fetchids"),
             "--pidfile", str(home / "fetchmail.pid"), "--nosyslog"],
            capture_output=True, text=True, timeout=60, env={"HOME": str(home), "PATH": "/usr/bin:/bin"},
        )
        assert r.returncode == 0, r.stdout + r.stderr
        got = out.read_bytes()
        for subj in subjects:
            assert b"Subject: " + subj.encode() in got
        assert got.count(b"\n.dotted line\n") == 5  # un-stuffed by fetchmail
        if mode == "stls":
            assert "STLS" in r.stdout + r.stderr
        p = login_retrying(s, user)
        assert p.stat() == (0, 0)  # fetchmail deleted them (nokeep)
        p.quit()
    finally:
        s.stop()


@pytest.mark.skip(
    reason="no script or plugin engine can be configured yet; the fetch hook is covered by the Rust "
    "transcript test pop3::session::tests::fetch_hook_can_refuse_retr_and_top"
)
def test_fetch_hook_refuses_retr():
    pass


def test_no_name_trick_reaches_another_users_maildrop(pop3_server):
    """USER names with path tricks, wildcards, NUL, other spellings of bob, or alice's
    password with bob's name, and AUTH PLAIN for bob with alice's password: none logs in. And
    alice's session sees only alice's maildrop: bob's message numbers do not exist for her."""
    server = pop3_server(limits={"max_auth_failures": 1000})  # no throttling in the way
    try:
        alice = server.add_user("alice")
        bob = server.add_user("bob", password="bob's own password")
        server.deliver(alice, message("for alice"))
        for i in range(3):
            server.deliver(bob, message(f"secret of bob {i}"))
        tricks = [bob, bob.upper(), "bob", "../" + bob, f"{alice}/../{bob}", f"{alice}/{bob}",
                  "~bob", f"{bob}%", "*", "%", f"bob\x00{alice}", f"{alice}\x00{bob}",
                  "b\u043eb@example.org", "bob@example.org.", "bob@EXAMPLE.org\u200b"]
        for name in tricks:
            r = RawPop3(server.ports["pop3s"], tls=True)
            user_reply = r.cmd(("USER " + name).encode())
            if user_reply.startswith(b"+OK"):
                reply = r.cmd("PASS " + PASSWORD)  # alice's password
                assert not reply.startswith(b"+OK"), (name, reply)
            assert not r.cmd("STAT").startswith(b"+OK"), name
            r.close()
            plain = base64.b64encode(b"\0" + name.encode() + b"\0" + PASSWORD.encode())
            r = RawPop3(server.ports["pop3s"], tls=True)
            assert not r.cmd(b"AUTH PLAIN " + plain).startswith(b"+OK"), name
            r.close()

        r = RawPop3(server.ports["pop3s"], tls=True)
        r.login(alice)
        assert r.cmd("STAT").startswith(b"+OK 1 "), "alice sees only her one message"
        for cmd in ("RETR 2", "RETR 4", "TOP 3 0", "LIST 2", "UIDL 3", "DELE 2", "RETR 0",
                    "RETR 4294967295", "RETR -1", "RETR 1/../2"):
            assert r.cmd(cmd).startswith(b"-ERR"), cmd
        assert r.cmd("RETR 1").startswith(b"+OK")
        body = b"\n".join(r.multiline())
        assert b"for alice" in body and b"secret of bob" not in body
        assert r.cmd("QUIT").startswith(b"+OK")
        r.close()
        p = pop_ssl(server, bob, "bob's own password")
        assert p.stat()[0] == 3, "bob's maildrop untouched"
        p.quit()
    finally:
        server.stop()
