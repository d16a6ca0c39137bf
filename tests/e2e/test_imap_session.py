"""IMAP session basics over real sockets: greeting and CAPABILITY, LOGIN/AUTHENTICATE PLAIN
(SASL-IR and continuation), the plaintext-login rule, STARTTLS, IMAPS, IMAP4rev1 clients and
ENABLE IMAP4rev2, ID, NAMESPACE, NOOP, LOGOUT."""

import base64
import imaplib
import re

import pytest

from support.clients import RawImap
from support.net import tls_context
from support.server import PASSWORD


def b64plain(user, password, authz=""):
    return base64.b64encode(f"{authz}\0{user}\0{password}".encode()).decode()


def caps_of(line: bytes) -> set[str]:
    m = re.search(rb"CAPABILITY ([^\]\r\n]*)", line)
    assert m, line
    return set(m.group(1).decode().upper().split())


# --- plaintext rule, STARTTLS, IMAPS -----------------------------------------------------


def test_login_refused_before_tls_then_allowed_after_starttls(make_server):
    srv = make_server(imap={"allow_plaintext_auth": False})
    u = srv.add_user()
    r = srv.raw_imap()
    assert r.greeting.startswith(b"* OK [CAPABILITY ")
    caps = caps_of(r.greeting)
    assert {"IMAP4REV1", "IMAP4REV2", "STARTTLS", "LOGINDISABLED"} <= caps
    assert "AUTH=PLAIN" not in caps
    _, tagged = r.cmd(f'LOGIN "{u}" "{PASSWORD}"')
    assert re.match(rb"t\d+ NO \[PRIVACYREQUIRED\]", tagged), tagged
    _, tagged = r.cmd("AUTHENTICATE PLAIN " + b64plain(u, PASSWORD))
    assert re.match(rb"t\d+ NO \[PRIVACYREQUIRED\]", tagged), tagged
    # Still not authenticated: a selected-state command is refused.
    _, tagged = r.cmd("SELECT INBOX")
    assert b" BAD " in tagged
    r.close()

    # imaplib's STARTTLS, then LOGIN works; the capabilities change accordingly.
    c = imaplib.IMAP4("127.0.0.1", srv.ports["imap"], timeout=30)
    assert "LOGINDISABLED" in c.capabilities
    c.starttls(ssl_context=tls_context())
    assert "STARTTLS" not in c.capabilities
    assert "AUTH=PLAIN" in c.capabilities and "LOGINDISABLED" not in c.capabilities
    typ, _ = c.login(u, PASSWORD)
    assert typ == "OK"
    assert c.select("INBOX")[0] == "OK"
    c.logout()


def test_starttls_twice_and_after_login_refused(make_server):
    srv = make_server(imap={"allow_plaintext_auth": True})
    u = srv.add_user()
    r = srv.raw_imap()
    _, tagged = r.cmd("STARTTLS")
    assert b" OK " in tagged
    r.starttls()
    untagged, tagged = r.cmd("CAPABILITY")
    assert "STARTTLS" not in caps_of(untagged[0])
    _, tagged = r.cmd("STARTTLS")
    assert b" BAD " in tagged
    r.ok(f'LOGIN "{u}" "{PASSWORD}"')
    r.close()
    r = srv.raw_imap(u)
    _, tagged = r.cmd("STARTTLS")
    assert b" BAD " in tagged
    r.close()


def test_starttls_discards_pipelined_plaintext(make_server):
    """Commands sent in the same packet after STARTTLS are not executed (no plaintext
    command injection into the TLS session, as in CVE-2011-0411)."""
    srv = make_server(imap={"allow_plaintext_auth": False})
    u = srv.add_user()
    r = srv.raw_imap()
    r.send(f'a STARTTLS\r\nb LOGIN "{u}" "{PASSWORD}"\r\n')
    assert r.line().startswith(b"a OK")
    try:
        r.starttls()
    except OSError:
        return  # the leftover bytes broke the handshake: also no injection
    untagged, tagged = r.cmd("CAPABILITY", tag="c")
    assert not any(l.startswith(b"b ") for l in untagged)
    assert "AUTH=PLAIN" in caps_of(untagged[0])  # still not logged in
    _, tagged = r.cmd("SELECT INBOX")
    assert b" BAD " in tagged
    r.close()


def test_imaps_login_and_capabilities(make_server):
    srv = make_server(imap={"allow_plaintext_auth": False})
    u = srv.add_user()
    c = srv.imaps()
    assert "STARTTLS" not in c.capabilities
    assert "AUTH=PLAIN" in c.capabilities
    typ, data = c.login(u, PASSWORD)
    assert typ == "OK"
    typ, data = c.capability()
    caps = set(data[0].decode().upper().split())
    for cap in ("IDLE", "NAMESPACE", "UIDPLUS", "MOVE", "UNSELECT", "LIST-EXTENDED",
                "LIST-STATUS", "SPECIAL-USE", "CONDSTORE", "QRESYNC", "ESEARCH", "SEARCHRES",
                "STATUS=SIZE", "BINARY", "LITERAL+", "ENABLE", "ID", "SASL-IR"):
        assert cap in caps, cap
    c.logout()


def test_login_with_literals_and_wrong_password(imap_server, user):
    r = imap_server.raw_imap()
    # Synchronising literals for both arguments.
    r.send(f"a1 LOGIN {{{len(user)}}}\r\n")
    assert r.line().startswith(b"+")
    r.send(f"{user} {{{len(PASSWORD)}}}\r\n")
    assert r.line().startswith(b"+")
    r.send(f"{PASSWORD}\r\n")
    untagged, tagged = r.read_until("a1")
    assert tagged.startswith(b"a1 OK"), tagged
    assert b"CAPABILITY" in tagged  # RFC 9051: capabilities after login as a response code
    r.close()
    r = imap_server.raw_imap()
    _, tagged = r.cmd(f'LOGIN "{user}" "wrong"')
    assert re.match(rb"t\d+ NO \[AUTHENTICATIONFAILED\]", tagged), tagged
    _, tagged = r.cmd('LOGIN "nobody@example.org" "x"')
    assert b"NO [AUTHENTICATIONFAILED]" in tagged
    r.ok(f'LOGIN "{user}" "{PASSWORD}"')
    _, tagged = r.cmd(f'LOGIN "{user}" "{PASSWORD}"')
    assert b" BAD " in tagged  # already authenticated
    r.close()


# --- AUTHENTICATE PLAIN ------------------------------------------------------------------


def test_authenticate_plain_sasl_ir(imap_server, user):
    r = imap_server.raw_imap(tls=True)
    _, tagged = r.cmd("AUTHENTICATE PLAIN " + b64plain(user, PASSWORD))
    assert b" OK " in tagged, tagged
    r.ok("SELECT INBOX")
    r.close()
    # With an authorisation identity equal to the user.
    r = imap_server.raw_imap(tls=True)
    r.ok("AUTHENTICATE PLAIN " + b64plain(user, PASSWORD, authz=user))
    r.close()


def test_authenticate_plain_continuation(imap_server, user):
    c = imap_server.imaps()
    typ, _ = c.authenticate("PLAIN", lambda _: f"\0{user}\0{PASSWORD}".encode())
    assert typ == "OK"
    assert c.select("INBOX")[0] == "OK"
    c.logout()
    # RawImap: the empty continuation, the response line, then OK.
    r = imap_server.raw_imap(tls=True)
    r.send("a AUTHENTICATE PLAIN\r\n")
    assert r.line().startswith(b"+")
    r.send(b64plain(user, PASSWORD) + "\r\n")
    _, tagged = r.read_until("a")
    assert tagged.startswith(b"a OK")
    r.close()


def test_authenticate_failures(imap_server, user):
    r = imap_server.raw_imap(tls=True)
    # Cancelled by the client.
    r.send("a AUTHENTICATE PLAIN\r\n")
    assert r.line().startswith(b"+")
    r.send("*\r\n")
    _, tagged = r.read_until("a")
    assert tagged.startswith(b"a BAD")
    # Bad password, garbage base64, another authorisation identity, unknown mechanism.
    _, t = r.cmd("AUTHENTICATE PLAIN " + b64plain(user, "nope"))
    assert b"NO [AUTHENTICATIONFAILED]" in t
    _, t = r.cmd("AUTHENTICATE PLAIN !!!notbase64")
    assert b" BAD " in t or b" NO " in t
    _, t = r.cmd("AUTHENTICATE PLAIN " + b64plain(user, PASSWORD, authz="other@example.org"))
    assert b" NO " in t
    _, t = r.cmd("AUTHENTICATE CRAM-MD5")
    assert b" NO " in t or b" BAD " in t
    # The session goes on and can still log in.
    r.ok("AUTHENTICATE PLAIN " + b64plain(user, PASSWORD))
    r.close()


# --- IMAP4rev1 client vs ENABLE IMAP4rev2 ------------------------------------------------


def test_rev1_client_gets_rev1_responses(imap_server, user):
    imap_server.deliver(user, subject="one")
    imap_server.deliver(user, subject="two")
    r = imap_server.raw_imap(user)
    untagged = r.ok("SELECT INBOX")
    assert b"* 2 EXISTS" in untagged
    assert b"* 2 RECENT" in untagged  # rev1 clients expect RECENT; this session is the first
    assert any(l.startswith(b"* OK [UNSEEN 1]") for l in untagged), untagged
    assert any(l.startswith(b"* OK [UIDVALIDITY ") for l in untagged)
    assert any(l.startswith(b"* OK [UIDNEXT 3]") for l in untagged)
    assert any(l.startswith(b"* FLAGS (") for l in untagged)
    assert any(l.startswith(b"* OK [PERMANENTFLAGS (") for l in untagged)
    untagged = r.ok("SEARCH ALL")
    assert untagged == [b"* SEARCH 1 2"]
    untagged = r.ok("UID SEARCH SUBJECT two")
    assert untagged == [b"* SEARCH 2"]
    # rev1 STATUS RECENT is accepted.
    untagged = r.ok("STATUS INBOX (MESSAGES RECENT UNSEEN)")
    assert untagged == [b'* STATUS "INBOX" (MESSAGES 2 RECENT 2 UNSEEN 2)'] or \
        untagged == [b"* STATUS INBOX (MESSAGES 2 RECENT 2 UNSEEN 2)"], untagged
    # imaplib is a rev1 client: the whole flow works with it too.
    c = imap_server.imap(user)
    typ, data = c.select("INBOX")
    assert (typ, data) == ("OK", [b"2"])
    typ, data = c.search(None, "ALL")
    assert data == [b"1 2"]
    c.logout()
    r.close()


def test_enable_imap4rev2_switches(imap_server, user):
    imap_server.deliver(user, subject="one")
    r = imap_server.raw_imap(user)
    untagged = r.ok("ENABLE IMAP4rev2")
    assert untagged == [b"* ENABLED IMAP4rev2"]
    untagged = r.ok("SELECT INBOX")
    assert b"* 1 EXISTS" in untagged
    assert not any(b"RECENT" in l for l in untagged), untagged
    assert not any(b"[UNSEEN" in l for l in untagged), untagged
    # SEARCH answers with ESEARCH in rev2, correlated with the command's tag.
    untagged, tagged = r.cmd("SEARCH ALL", tag="S1")
    assert tagged.startswith(b"S1 OK")
    assert untagged == [b'* ESEARCH (TAG "S1") ALL 1'], untagged
    untagged, _ = r.cmd("UID SEARCH ALL", tag="S2")
    assert untagged == [b'* ESEARCH (TAG "S2") UID ALL 1'], untagged
    untagged, _ = r.cmd("SEARCH SUBJECT nomatch", tag="S3")
    assert untagged == [b'* ESEARCH (TAG "S3")'], untagged
    # Unknown capabilities are ignored; ENABLE before login is refused.
    untagged = r.ok("ENABLE X-UNKNOWN")
    assert untagged in ([b"* ENABLED"], [b"* ENABLED "])
    r.close()
    r = imap_server.raw_imap()
    _, tagged = r.cmd("ENABLE IMAP4rev2")
    assert b" BAD " in tagged or b" NO " in tagged
    r.close()


# --- ID, NAMESPACE, NOOP, CAPABILITY, LOGOUT ---------------------------------------------


def test_id_namespace_noop_logout(imap_server, user):
    r = imap_server.raw_imap()
    untagged = r.ok('ID ("name" "pytest" "version" "1")')
    assert len(untagged) == 1 and untagged[0].startswith(b"* ID (")
    assert b'"name"' in untagged[0]
    untagged = r.ok("ID NIL")
    assert untagged[0].startswith(b"* ID ")
    r.ok(f'LOGIN "{user}" "{PASSWORD}"')
    untagged = r.ok("NAMESPACE")
    assert untagged == [b'* NAMESPACE (("" "/")) NIL NIL']
    assert r.ok("NOOP") == []
    assert r.ok("CHECK") == [] or True  # CHECK is rev1 only; accepted as NOOP
    untagged, tagged = r.cmd("LOGOUT")
    assert untagged and untagged[0].startswith(b"* BYE")
    assert b" OK " in tagged
    assert r.closed()


def test_imaplib_namespace_and_id(imap_server, user):
    c = imap_server.imap(user)
    typ, data = c.namespace()
    assert typ == "OK" and data[0] == b'(("" "/")) NIL NIL'
    typ, data = c._simple_command("ID", '("name" "imaplib")')
    assert typ == "OK"
    assert c.untagged_responses.get("ID")
    c.logout()


def test_commands_before_login_are_refused(imap_server):
    r = imap_server.raw_imap()
    for cmd in ("SELECT INBOX", "LIST \"\" *", "STATUS INBOX (MESSAGES)", "CREATE x",
                "APPEND INBOX {1+}\r\nx", "FETCH 1 FLAGS", "IDLE", "NAMESPACE"):
        _, tagged = r.cmd(cmd)
        assert b" BAD " in tagged or b" NO " in tagged, (cmd, tagged)
    r.ok("NOOP")
    r.ok("CAPABILITY")
    r.close()
