"""Mailbox names beyond ASCII: stored in UTF-8, sent and received as modified UTF-7
(RFC 3501 §5.1.3) by IMAP4rev1 clients, as UTF-8 after `ENABLE UTF8=ACCEPT` (RFC 6855) or
`ENABLE IMAP4rev2` (RFC 9051 §5.1). Every command that names a mailbox, both directions,
with imaplib and raw transcripts; invalid modified UTF-7 gets a NO that says why."""

import imaplib

import pytest

from support.clients import quote
from support.mail import simple_message


def list_names(lines) -> list[bytes]:
    """Mailbox names of LIST/LSUB lines (quoted ones; imaplib gives bytes)."""
    out = []
    for l in lines:
        if isinstance(l, tuple):  # a literal: imaplib splits it out
            out.append(l[1])
            continue
        assert l.endswith(b'"'), l
        out.append(l[l.rindex(b' "', 0, len(l) - 1) + 2:-1])
    return out


def utf8_client(srv, user) -> imaplib.IMAP4:
    c = srv.imap(user)
    typ, data = c.enable("UTF8=ACCEPT")
    assert typ == "OK" and c.utf8_enabled, data
    assert c.response("ENABLED")[1] == [b"UTF8=ACCEPT"]
    return c


def test_rev1_client_uses_modified_utf7_for_every_command(imap_server, user):
    c = imap_server.imap(user)  # imaplib speaks IMAP4rev1 and enables nothing
    assert c.create("Entw&APw-rfe")[0] == "OK"
    assert c.create("&ZeVnLIqe-/&U,BTFw-")[0] == "OK"  # 日本語/台北, parent created too
    assert c.create('"Tom &- Jerry"')[0] == "OK"  # '&' itself
    typ, data = c.list()
    names = list_names(data)
    for n in (b"Entw&APw-rfe", b"&ZeVnLIqe-", b"&ZeVnLIqe-/&U,BTFw-", b"Tom &- Jerry"):
        assert n in names, names
    assert list_names(c.list('""', "Entw*")[1]) == [b"Entw&APw-rfe"]
    assert list_names(c.list("&ZeVnLIqe-/", "%")[1]) == [b"&ZeVnLIqe-/&U,BTFw-"]

    # APPEND, SELECT, STATUS, COPY, MOVE, SUBSCRIBE/LSUB, RENAME, DELETE.
    assert c.append("Entw&APw-rfe", None, None, simple_message(subject="draft"))[0] == "OK"
    typ, data = c.status("Entw&APw-rfe", "(MESSAGES)")
    assert data == [b'"Entw&APw-rfe" (MESSAGES 1)'], data
    typ, data = c.select("Entw&APw-rfe")
    assert typ == "OK" and data == [b"1"], data
    assert c.copy("1", '"Tom &- Jerry"')[0] == "OK"
    typ, data = c._simple_command("MOVE", "1", "&ZeVnLIqe-/&U,BTFw-")
    assert typ == "OK", data
    assert c.status('"Tom &- Jerry"', "(MESSAGES)")[1] == [b'"Tom &- Jerry" (MESSAGES 1)']
    assert c.status("&ZeVnLIqe-/&U,BTFw-", "(MESSAGES)")[1] == [
        b'"&ZeVnLIqe-/&U,BTFw-" (MESSAGES 1)']
    assert c.subscribe("Entw&APw-rfe")[0] == "OK"
    assert b"Entw&APw-rfe" in list_names(c.lsub('""', "*")[1])
    c.unselect()
    assert c.rename("Entw&APw-rfe", "Gel&APY-scht")[0] == "OK"
    assert c.delete('"Tom &- Jerry"')[0] == "OK"
    names = list_names(c.list()[1])
    assert b"Gel&APY-scht" in names and b"Entw&APw-rfe" not in names, names
    assert b"Tom &- Jerry" not in names, names

    # The same mailboxes, in UTF-8, for a client that enabled UTF8=ACCEPT.
    u = utf8_client(imap_server, user)
    names = list_names(u.list()[1])
    for n in ("Gelöscht", "日本語", "日本語/台北"):
        assert n.encode() in names, names
    assert u.status('"日本語/台北"', "(MESSAGES)")[1] == ['"日本語/台北" (MESSAGES 1)'.encode()]
    u.logout()
    c.logout()


@pytest.mark.parametrize("name, why", [
    ("Tom & Jerry", "a bare '&' opens a base64 run that never closes"),
    ("&AGE-", "printable ASCII ('a') encoded"),
    ("&AOQ-&APY-", "two adjacent runs"),
    ("&AOR-", "leftover bits not zero"),
    ("&2D0-", "lone surrogate"),
    ("Entwürfe", "raw 8-bit from a rev1 client"),
])
def test_invalid_modified_utf7_is_refused(imap_server, user, name, why):
    r = imap_server.raw_imap(user)
    q = quote(name).encode()
    for cmd in (b"CREATE " + q, b"SELECT " + q, b"STATUS " + q + b" (MESSAGES)",
                b"RENAME INBOX " + q, b"LIST \"\" " + q):
        untagged, tagged = r.cmd(cmd)
        assert b" NO [CANNOT] Mailbox name is not valid modified UTF-7" in tagged, (why, cmd,
                                                                                   tagged)
    names = list_names(r.ok('LIST "" *'))
    assert names == [b"INBOX", b"Archive", b"Drafts", b"Junk", b"Sent", b"Trash"], names
    r.ok("NOOP")
    r.close()


def test_utf8_accept_client_uses_utf8_for_every_command(imap_server, user):
    c = utf8_client(imap_server, user)
    assert c.create('"Gelöschte Elemente"')[0] == "OK"
    assert c.create('"R&D/Ärger"')[0] == "OK"  # '&' is just '&' in UTF-8 names
    assert c.create('"😀"')[0] == "OK"
    names = list_names(c.list()[1])
    for n in ("Gelöschte Elemente", "R&D", "R&D/Ärger", "😀"):
        assert n.encode() in names, names
    # (imaplib's APPEND in UTF-8 mode sends `UTF8 (` inside the literal, so append with a
    # rev1 client, in modified UTF-7.)
    old = imap_server.imap(user)
    assert old.append('"Gel&APY-schte Elemente"', None, None, simple_message())[0] == "OK"
    old.logout()
    assert c.select('"Gelöschte Elemente"')[1] == [b"1"]
    assert c.copy("1", '"R&D/Ärger"')[0] == "OK"
    typ, data = c._simple_command("MOVE", "1", '"😀"')
    assert typ == "OK", data
    assert c.status('"😀"', "(MESSAGES)")[1] == ['"😀" (MESSAGES 1)'.encode()]
    assert c.subscribe('"R&D/Ärger"')[0] == "OK"
    assert list_names(c.lsub('""', '"R&D/*"')[1]) == ["R&D/Ärger".encode()]
    assert c.rename('"Gelöschte Elemente"', '"Papierkorb/Gelöscht"')[0] == "OK"
    assert c.delete('"😀"')[0] == "OK"

    # A rev1 client sees the same mailboxes in modified UTF-7.
    old = imap_server.imap(user)
    names = list_names(old.list()[1])
    for n in (b"Papierkorb/Gel&APY-scht", b"R&-D", b"R&-D/&AMQ-rger"):
        assert n in names, names
    assert b"&2D3eAA-" not in names
    assert old.status("R&-D/&AMQ-rger", "(MESSAGES)")[1] == [b'"R&-D/&AMQ-rger" (MESSAGES 1)']
    old.logout()
    c.logout()


def test_list_status_and_append_utf8_data_over_raw_socket(imap_server, user):
    r = imap_server.raw_imap(user)
    # UTF8 APPEND data before ENABLE is refused.
    msg = simple_message(subject="Grüße")
    untagged, tagged = r.cmd(b"APPEND INBOX UTF8 (~{%d+}\r\n" % len(msg) + msg + b")")
    assert b" BAD " in tagged and b"UTF8=ACCEPT" in tagged, tagged
    assert r.ok("ENABLE UTF8=ACCEPT") == [b"* ENABLED UTF8=ACCEPT"]
    r.ok('CREATE "Bücher"')
    untagged = r.ok(b'APPEND "B\xc3\xbccher" UTF8 (~{%d+}\r\n' % len(msg) + msg + b")")
    lines = r.ok('LIST "" "B*" RETURN (STATUS (MESSAGES UIDNEXT))')
    assert lines == ['* LIST (\\HasNoChildren) "/" "Bücher"'.encode(),
                     '* STATUS "Bücher" (MESSAGES 1 UIDNEXT 2)'.encode()], lines
    r.ok('SELECT "Bücher"')
    body = r.ok("FETCH 1 BODY.PEEK[HEADER.FIELDS (SUBJECT)]")
    assert "Grüße".encode() in body[0], body
    r.close()
    # ENABLE IMAP4rev2 switches to UTF-8 names as well.
    r = imap_server.raw_imap(user)
    r.ok("ENABLE IMAP4rev2")
    assert list_names(r.ok('LIST "" "B*"')) == ["Bücher".encode()]
    r.ok('STATUS "Bücher" (MESSAGES)')
    r.close()
    # And a rev1 session gets modified UTF-7.
    r = imap_server.raw_imap(user)
    assert list_names(r.ok('LIST "" "B*"')) == [b"B&APw-cher"]
    r.close()
