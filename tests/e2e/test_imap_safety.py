"""Hostile input over real sockets: one user cannot reach another's mailboxes through names
or path tricks; malformed commands get BAD and the session goes on; limits on literals and
line length; a client that never finishes a literal is timed out; failed logins are
rate-limited per IP; logged-in sessions are limited per user."""

import base64
import re
import socket
import time

import pytest

import imaplib

from support.server import PASSWORD
from support.wait import wait_for

TRICKS = ["../b", "%", "*", "a//b", "/x", "x/", "..", ".", "../INBOX", "INBOX/..",
          "a/../b", "a/%", "a*b", "/", "//"]


def neighbours(srv) -> tuple[str, str]:
    """Two new users A and B; B has a message "secret of b" in INBOX and a copy in Secret."""
    a = srv.add_user()
    b = srv.add_user()
    srv.deliver(b, subject="secret of b")
    rb = srv.raw_imap(b, select="INBOX")
    rb.ok('CREATE "Secret"')
    rb.ok("COPY 1 Secret")
    rb.close()
    return a, b


def test_users_cannot_reach_each_other(imap_server):
    a, b = neighbours(imap_server)

    ra = imap_server.raw_imap(a)
    b_local = b.split("@")[0]
    names = ["Secret", f"../{b}/INBOX", f"../{b_local}/INBOX", f"{b}/INBOX", f"{b}\x00INBOX",
             f"../{b}/Secret", "../Secret", "~" + b_local + "/INBOX", f"#users/{b}/INBOX",
             f"/{b}/INBOX"]
    for name in names + TRICKS:
        lit = name.encode()
        for cmd in (b"SELECT", b"EXAMINE", b"DELETE"):
            _, tagged = ra.cmd(cmd + b" {%d+}\r\n" % len(lit) + lit)
            assert b" OK " not in tagged, (cmd, name, tagged)
        _, tagged = ra.cmd(b"STATUS {%d+}\r\n%s (MESSAGES)" % (len(lit), lit))
        assert b" OK " not in tagged, (name, tagged)
        _, tagged = ra.cmd(b"APPEND {%d+}\r\n%s {3+}\r\nx\r\n" % (len(lit), lit))
        assert b" OK " not in tagged, (name, tagged)
    # Listing shows only A's own mailboxes, whatever the reference or pattern.
    for ref, pat in (('""', '"*"'), ('"../"', '"*"'), ('""', '"../*"'), ('"/"', '"*"'),
                     ('""', f'"{b}*"'), ('""', '"*Secret*"'), ('"~"', '"*"')):
        lines = ra.ok(f"LIST {ref} {pat}")
        text = b"\n".join(lines)
        assert b"Secret" not in text and b_local.encode() not in text, (ref, pat, lines)
    # Nothing of B leaks through SEARCH/FETCH in A's own INBOX either.
    ra.ok("SELECT INBOX")
    assert ra.ok("SEARCH TEXT secret") == [b"* SEARCH"]
    # COPY/MOVE/RENAME into B's space fail too.
    imap_server.deliver(a)
    ra.ok("NOOP")
    for name in ("../Secret", f"../{b}/INBOX", f"{b}/INBOX"):
        _, tagged = ra.cmd(f'COPY 1 "{name}"')
        assert b" OK " not in tagged
        _, tagged = ra.cmd(f'MOVE 1 "{name}"')
        assert b" OK " not in tagged
    rb = imap_server.raw_imap(b, select="Secret")
    assert rb.ok("SEARCH ALL") == [b"* SEARCH 1"]  # B's mailbox untouched
    assert b"MESSAGES 1" in rb.ok("STATUS INBOX (MESSAGES)")[0]
    rb.close()
    ra.close()


def more_tricks(b: str) -> list[bytes]:
    """Names that other servers use for other users' or shared mailboxes, parent escapes from
    inside INBOX, NUL and control bytes, wildcards, modified UTF-7 spellings of "..", "/" and
    NUL, and Unicode look-alikes of "." and "/"."""
    b_local = b.split("@")[0]
    names = [
        f"#shared/{b}", f"#shared/{b}/INBOX", f"#shared/{b_local}/INBOX", f"#public/{b}/INBOX",
        f"#user/{b_local}/INBOX", f"Other Users/{b}/INBOX", f"Other Users/{b_local}/INBOX",
        f"Shared Folders/{b}/INBOX", f"user/{b_local}", f"user.{b_local}", f"~{b}/INBOX",
        f"INBOX/../../{b}", f"INBOX/../../{b}/INBOX", f"INBOX/../{b}/Secret", f"./../{b}/INBOX",
        f"{b}/Secret", f"{b.upper()}/INBOX", f"{b}%", f"{b_local}*", f"%/{b}/%",
        f"{b}\x00/INBOX", f"INBOX\x00../{b}", f"{b}\r\nINBOX", f"{b}\x7f/INBOX",
        # modified UTF-7 (RFC 3501 5.1.3): "..", "/" and NUL written as &-sequences
        f"&AC4ALg-/{b}/INBOX", f"..&AC8-{b}&AC8-INBOX", f"{b}&AAA-INBOX",
        # Unicode look-alikes: one dot leader, fullwidth full stop, division slash, fullwidth
        # solidus, fraction slash
        f"\u2024\u2024/{b}/INBOX", f"\uff0e\uff0e/{b}/INBOX", f"..\u2215{b}\u2215INBOX",
        f"\uff0f{b}\uff0fINBOX", f"..\u2044{b}\u2044Secret",
    ]
    return [n.encode() for n in names]


def test_other_users_mailboxes_unreachable_by_any_name_trick(imap_server):
    """SELECT, EXAMINE, STATUS, APPEND, COPY, MOVE, RENAME, DELETE, SUBSCRIBE and LIST with
    shared-namespace names, parent escapes, NUL, wildcards, modified UTF-7 and Unicode
    look-alikes: none of them reaches B's mailboxes (A owns no mailbox of these names, so any
    OK to a read would be B's), and B's mailboxes are untouched afterwards."""
    a, b = neighbours(imap_server)
    imap_server.deliver(a, subject="a's own")

    ra = imap_server.raw_imap(a, select="INBOX")
    b_local = b.split("@")[0].encode()

    def lit(n: bytes) -> bytes:
        return b"{%d+}\r\n%s" % (len(n), n)

    for name in more_tricks(b):
        for cmd in (b"EXAMINE", b"SELECT", b"DELETE", b"SUBSCRIBE"):
            _, tagged = ra.cmd(cmd + b" " + lit(name))
            if cmd == b"SUBSCRIBE" and b" OK " in tagged:
                # RFC 9051 6.3.7 lets a server subscribe names that do not exist; then it
                # must stay a name only: no content behind it.
                ra.ok(b"UNSUBSCRIBE " + lit(name))
                continue
            assert b" OK " not in tagged, (cmd, name, tagged)
        ra.ok("SELECT INBOX")  # a failed SELECT leaves no mailbox selected
        _, tagged = ra.cmd(b"STATUS " + lit(name) + b" (MESSAGES)")
        assert b" OK " not in tagged, (name, tagged)
        _, tagged = ra.cmd(b"APPEND " + lit(name) + b" {3+}\r\nx\r\n")
        assert b" OK " not in tagged, (name, tagged)
        for cmd in (b"COPY 1 ", b"MOVE 1 ", b"UID COPY 1:* "):
            _, tagged = ra.cmd(cmd + lit(name))
            assert b" OK " not in tagged, (cmd, name, tagged)
        _, tagged = ra.cmd(b"RENAME " + lit(name) + b" Stolen")
        assert b" OK " not in tagged, (name, tagged)
        untagged, tagged = ra.cmd(b'LIST "" ' + lit(name))
        assert b" OK " in tagged or b" BAD " in tagged or b" NO " in tagged
        text = b"\n".join(untagged)
        assert b"Secret" not in text and b_local not in text.lower(), (name, untagged)
        untagged, tagged = ra.cmd(lit(name).join([b"LIST ", b' "*"']))
        text = b"\n".join(untagged)
        assert b"Secret" not in text and b_local not in text.lower(), (name, untagged)
    # Still only A's own mailboxes, and A's message did not move anywhere.
    names = b"\n".join(ra.ok('LIST "" "*"'))
    assert b"Stolen" not in names and b_local not in names.lower(), names
    assert ra.ok("SEARCH ALL") == [b"* SEARCH 1"]
    ra.close()
    rb = imap_server.raw_imap(b)
    for box in ("INBOX", "Secret"):
        rb.ok(f"SELECT {box}")
        found = rb.ok("SEARCH ALL")
        assert found == [b"* SEARCH 1"], (box, found)  # nothing appended, copied or moved in
        [fetched] = [l for l in rb.ok("FETCH 1 (BODY.PEEK[HEADER.FIELDS (SUBJECT)])") if b"Subject" in l]
        assert b"secret of b" in fetched, fetched
    rb.close()


def test_authenticate_plain_with_another_users_authzid_is_refused(imap_server):
    a = imap_server.add_user()
    b = imap_server.add_user()
    r = imap_server.raw_imap()
    for authz in (b, b.upper(), b + "\x00"):
        resp = base64.b64encode(authz.encode() + b"\0" + a.encode() + b"\0" + PASSWORD.encode())
        _, tagged = r.cmd(b"AUTHENTICATE PLAIN " + resp)
        assert b" OK " not in tagged, (authz, tagged)
    _, tagged = r.cmd("SELECT INBOX")
    assert b" OK " not in tagged  # still not authenticated
    r.close()


@pytest.mark.parametrize("name", TRICKS)
def test_path_trick_names_cannot_be_created(imap_server, user, name):
    r = imap_server.raw_imap(user)
    _, tagged = r.cmd(f'CREATE "{name}"')
    if name in ("x/",):  # a trailing delimiter names "x" itself (RFC 9051 6.3.4)
        assert b" OK " in tagged
        names = r.ok('LIST "" "*"')
        assert any(l.endswith(b'"x"') for l in names)
        r.close()
        return
    assert b" NO " in tagged or b" BAD " in tagged, (name, tagged)
    _, tagged = r.cmd(f'RENAME "Archive" "{name}"')
    assert b" NO " in tagged or b" BAD " in tagged, (name, tagged)
    lines = r.ok('LIST "" "*"')
    assert len(lines) == 6, lines  # only the default mailboxes
    r.close()


MALFORMED = [
    b"",
    b"tagonly",
    b"t1 FOO",
    b"t2 SELECT",
    b't3 SELECT "unterminated',
    b"t4 FETCH 1:* (FLAGS",
    b"t5 LOGIN a",
    b"t6 STORE 1 +FLAGS (\\Seen",
    b"t7 UID BOGUS 1",
    b"t8 SEARCH OR",
    b"* NOOP",
    b"+ NOOP",
    b"t9 NOOP extra",
    b"t10 FETCH 1:* (BODY[1.2.3.4.HEADER.FIELDS (\"x\"])",
    b"t11 \x00\x01\x02\xff\xfe",
    b"t12 LIST",
    b"t13 STATUS INBOX",
    b"t14 APPEND",
    b"t15 FETCH 99999999999999 FLAGS",
    b"t16 SEARCH " + b"(" * 200 + b"ALL" + b")" * 200,
    b"t17 SEARCH " + b"NOT " * 500 + b"ALL",
    b"t18 ID (\"a\")",
    b"t19 ENABLE",
    b"t20 FETCH 1 BODY[HEADER.FIELDS (SUBJECT)",
    b"t21 COPY 1",
    b"\xff\xfe BOGUS",
]


def test_malformed_commands_get_bad_and_session_goes_on(make_server):
    srv = make_server(imap={"allow_plaintext_auth": True, "max_errors": 1000})
    u = srv.add_user()
    srv.deliver(u)
    r = srv.raw_imap(u, select="INBOX")
    for i, line in enumerate(MALFORMED):
        r.send(line + b"\r\n")
        resp = r.line()
        assert re.match(rb"\S+ BAD ", resp), (line, resp)
        # The session still works after each.
        untagged, tagged = r.cmd("NOOP", tag=f"ok{i}")
        assert tagged.startswith(f"ok{i} OK".encode()), (line, tagged)
    # Pipelined commands in one write are all answered, in order.
    r.send(b"".join(b"p%d NOOP\r\n" % i for i in range(50)))
    for i in range(50):
        _, tagged = r.read_until("p%d" % i)
        assert tagged.startswith(b"p%d OK" % i)
    assert b"FLAGS" in r.ok("FETCH 1 FLAGS")[0]
    # IDLE answered with something else than DONE ends the IDLE with BAD; the session lives.
    r.send("i IDLE\r\n")
    assert r.line().startswith(b"+")
    r.send("NOT DONE\r\n")
    _, tagged = r.read_until("i")
    assert tagged.startswith(b"i BAD")
    r.ok("NOOP")
    r.close()


def test_too_many_errors_closes_session(make_server):
    srv = make_server(imap={"allow_plaintext_auth": True, "max_errors": 3})
    r = srv.raw_imap()
    for i in range(2):
        _, tagged = r.cmd("BOGUS")
        assert b" BAD " in tagged
    r.send("x BOGUS\r\n")
    lines = [r.line(), r.line()]
    assert any(l.startswith(b"x BAD") for l in lines)
    assert any(l.startswith(b"* BYE") for l in lines)
    assert r.closed()


def test_literal_limits(make_server):
    srv = make_server(imap={"allow_plaintext_auth": True, "max_literal": 1000})
    u = srv.add_user()
    r = srv.raw_imap(u)
    # Synchronising literal too large: NO [TOOBIG], no continuation, the session goes on.
    r.send("a1 APPEND INBOX {5000}\r\n")
    resp = r.line()
    assert resp.startswith(b"a1 NO [TOOBIG]"), resp
    r.ok("NOOP")
    # Within the limit it works.
    msg = b"Subject: ok\r\n\r\n" + b"x" * 900
    _, tagged = r.cmd(b"APPEND INBOX {%d+}\r\n%s" % (len(msg), msg))
    assert b"OK [APPENDUID" in tagged
    # A too-large literal in a later argument (LOGIN's password here) is refused as well.
    r2 = srv.raw_imap()
    r2.send("b1 LOGIN {3}\r\n")
    assert r2.line().startswith(b"+")
    r2.send("abc {99999}\r\n")
    resp = r2.line()
    assert resp.startswith(b"b1 NO [TOOBIG]") or resp.startswith(b"b1 BAD"), resp
    r2.ok("NOOP")
    r2.close()
    # Non-synchronising literal too large: the bytes are already coming, so BYE and close.
    r.send(b"a2 APPEND INBOX {5000+}\r\n" + b"y" * 5000 + b"\r\n")
    try:
        resp = r.line()
        assert resp.startswith(b"* BYE"), resp
    except (EOFError, ConnectionResetError):
        pass
    assert r.closed()
    # The server is fine.
    r = srv.raw_imap(u, select="INBOX")
    r.close()


def test_line_too_long(make_server):
    srv = make_server(imap={"allow_plaintext_auth": True, "max_line": 2000})
    r = srv.raw_imap()
    r.send(b"a NOOP " + b"x" * 5000 + b"\r\n")
    try:
        assert r.line().startswith(b"* BYE")
    except (EOFError, ConnectionResetError):
        pass
    assert r.closed()
    # Without a newline at all.
    r = srv.raw_imap()
    try:
        r.send(b"a " + b"y" * 5000)
        assert r.line().startswith(b"* BYE")
    except (EOFError, ConnectionResetError, BrokenPipeError):
        pass
    assert r.closed()


def test_unfinished_literal_is_timed_out(make_server):
    srv = make_server(imap={"allow_plaintext_auth": True, "login_timeout": "2s",
                            "idle_timeout": "3s"})
    u = srv.add_user()
    # Before login: the login timeout applies.
    r = srv.raw_imap()
    r.send("a LOGIN {10}\r\n")
    assert r.line().startswith(b"+")
    t0 = time.monotonic()
    r.send("abc")  # and never the rest
    assert r.closed(timeout=10)
    assert time.monotonic() - t0 < 6
    # Sending bytes slowly does not extend the login deadline.
    r = srv.raw_imap()
    r.send("a LOGIN {100}\r\n")
    r.line()
    t0 = time.monotonic()
    closed = False
    for _ in range(12):
        try:
            r.send("x")
        except OSError:
            closed = True
            break
        time.sleep(0.5)
    assert closed or r.closed(timeout=3)
    assert time.monotonic() - t0 < 7
    # After login: the idle timeout applies to an APPEND that never delivers its literal.
    r = srv.raw_imap(u)
    r.send("b APPEND INBOX {1000}\r\n")
    assert r.line().startswith(b"+")
    r.send("Subject: partial\r\n")
    t0 = time.monotonic()
    assert r.closed(timeout=10)
    assert time.monotonic() - t0 < 8
    r = srv.raw_imap(u, select="INBOX")
    assert b"* 0 EXISTS" in r.ok("SELECT INBOX")  # nothing half-stored
    r.close()


def test_failed_logins_are_rate_limited(make_server):
    srv = make_server(imap={"allow_plaintext_auth": True},
                      limits={"max_auth_failures": 3, "auth_fail_window": "1m"})
    u = srv.add_user()
    r = srv.raw_imap()
    for i in range(3):
        _, tagged = r.cmd(f'LOGIN "{u}" "wrong{i}"')
        assert b"NO [AUTHENTICATIONFAILED]" in tagged
    # Now even the right password is refused from this IP, on this and new connections,
    # and through AUTHENTICATE as well.
    _, tagged = r.cmd(f'LOGIN "{u}" "{PASSWORD}"')
    assert b"NO [UNAVAILABLE]" in tagged, tagged
    r2 = srv.raw_imap()
    _, tagged = r2.cmd(f'LOGIN "{u}" "{PASSWORD}"')
    assert b"NO [UNAVAILABLE]" in tagged, tagged
    import base64
    ir = base64.b64encode(f"\0{u}\0{PASSWORD}".encode()).decode()
    _, tagged = r2.cmd(f"AUTHENTICATE PLAIN {ir}")
    assert b"NO [UNAVAILABLE]" in tagged, tagged
    r.close()
    r2.close()


def test_connections_per_user_are_limited(make_server):
    """`imap.max_connections_per_user`: one login too many gets NO [UNAVAILABLE] (LOGIN and
    AUTHENTICATE alike) and is logged; other users are not affected; a slot comes back when
    a session logs out and when a client just drops the connection."""
    import base64
    import imaplib

    srv = make_server(imap={"allow_plaintext_auth": True, "max_connections_per_user": 2})
    u = srv.add_user()
    other = srv.add_user()
    first = srv.imap(u)
    second = srv.imap(u)
    third = srv.imap()
    with pytest.raises(imaplib.IMAP4.error, match=r"\[UNAVAILABLE\] Too many connections"):
        third.login(u, PASSWORD)
    assert third.state == "NONAUTH"
    r = srv.raw_imap()
    ir = base64.b64encode(f"\0{u}\0{PASSWORD}".encode()).decode()
    _, tagged = r.cmd(f"AUTHENTICATE PLAIN {ir}")
    assert b"NO [UNAVAILABLE] Too many connections for this user (2 of 2" in tagged, tagged
    # The refused connections are still usable, and nothing was counted as a failed login.
    r.ok("NOOP")
    o = srv.imap(other)  # another user has slots of their own
    o.select("INBOX")
    o.logout()
    # The two sessions still work.
    assert first.select("INBOX")[0] == "OK" and second.noop()[0] == "OK"
    assert "too many sessions for this user" in srv.logs()

    def logs_in(client) -> bool:
        try:
            client.login(u, PASSWORD)
            return True
        except imaplib.IMAP4.error as e:
            assert "UNAVAILABLE" in str(e), e
            return False

    # LOGOUT frees a slot (the session ends right after its tagged OK, so allow for that).
    first.logout()
    assert wait_for(lambda: logs_in(third), timeout=20)
    assert not logs_in_new(srv, u)
    # A client that vanishes without LOGOUT frees its slot too.
    second.shutdown()
    assert wait_for(lambda: logs_in_new(srv, u), timeout=20)
    third.logout()
    r.close()


def logs_in_new(srv, user) -> bool:
    import imaplib

    c = srv.imap()
    try:
        c.login(user, PASSWORD)
        return True  # left open on purpose: it holds the slot it took
    except imaplib.IMAP4.error as e:
        assert "UNAVAILABLE" in str(e), e
        c.logout()
        return False


def test_connections_per_ip_are_limited(make_server):
    """The per-IP connection limit (`limits.max_connections_per_ip`, shared by every listener)
    refuses one IMAP connection too many with `* BYE [UNAVAILABLE]` before any greeting; a
    slot comes back when a client disconnects."""
    import socket

    srv = make_server(limits={"max_connections_per_ip": 4})

    def greeted() -> socket.socket | None:
        c = socket.create_connection(("127.0.0.1", srv.ports["imap"]), timeout=10)
        if c.recv(1024).startswith(b"* OK"):
            return c
        c.close()
        return None

    held = []
    deadline = time.time() + 10
    # The harness's start-up probes may hold a slot for a moment after they closed.
    while len(held) < 4 and time.time() < deadline:
        c = greeted()
        if c is None:
            time.sleep(0.1)
        else:
            held.append(c)
    assert len(held) == 4, "four connections within the limit are greeted"
    extra = socket.create_connection(("127.0.0.1", srv.ports["imap"]), timeout=10)
    line = extra.recv(1024)
    assert line.startswith(b"* BYE [UNAVAILABLE]") and b"too many connections" in line, line
    assert extra.recv(1024) == b"", "the refused connection is closed"
    extra.close()
    held.pop().close()
    deadline = time.time() + 5
    again = greeted()
    while again is None and time.time() < deadline:
        time.sleep(0.1)
        again = greeted()
    assert again is not None, "a slot comes back when a client disconnects"
    held.append(again)
    for c in held:
        c.close()
