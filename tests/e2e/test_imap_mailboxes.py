"""Mailbox commands over real sockets: LIST (patterns, LIST-EXTENDED selection and return
options, LIST-STATUS), SPECIAL-USE, CREATE (parents, CREATE-SPECIAL-USE), RENAME (children,
INBOX), DELETE, SUBSCRIBE/UNSUBSCRIBE/LSUB, STATUS (incl. SIZE, HIGHESTMODSEQ)."""

import re


LIST_RE = (rb'\* (LIST|LSUB) \(([^)]*)\) (?:"/"|NIL) '
           rb'(?:"((?:[^"\\]|\\.)*)"|\{\d+\}\r\n(.*)|(\S+))$')


def listing(lines):
    """{name: set(attributes)} of the LIST/LSUB responses in `lines`."""
    out = {}
    for l in lines:
        m = re.match(LIST_RE, l, re.S)
        if m:
            name = (m.group(3) or m.group(4) or m.group(5)).decode()
            out[name] = {a.lower() for a in m.group(2).decode().split()}
    return out


def status_of(lines):
    """{name: {item: value}} of the STATUS responses in `lines`."""
    out = {}
    for l in lines:
        m = re.match(rb'\* STATUS (?:"((?:[^"\\]|\\.)*)"|(\S+)) \(([^)]*)\)$', l)
        if m:
            name = (m.group(1) or m.group(2)).decode()
            toks = m.group(3).decode().split()
            out[name] = {toks[i].upper(): int(toks[i + 1]) for i in range(0, len(toks), 2)}
    return out


DEFAULTS = {"INBOX", "Sent", "Drafts", "Trash", "Junk", "Archive"}
SPECIAL = {"Sent": "\\sent", "Drafts": "\\drafts", "Trash": "\\trash", "Junk": "\\junk",
           "Archive": "\\archive"}


def test_list_star_percent_and_empty(imap_server, user):
    r = imap_server.raw_imap(user)
    r.ok('CREATE "Projects/2024/Q1"')
    boxes = listing(r.ok('LIST "" "*"'))
    assert set(boxes) == DEFAULTS | {"Projects", "Projects/2024", "Projects/2024/Q1"}
    assert "\\haschildren" in boxes["Projects"]
    assert "\\hasnochildren" in boxes["Projects/2024/Q1"]
    top = listing(r.ok('LIST "" "%"'))
    assert set(top) == DEFAULTS | {"Projects"}
    assert set(listing(r.ok('LIST "" "Projects/%"'))) == {"Projects/2024"}
    assert set(listing(r.ok('LIST "Projects/" "%"'))) == {"Projects/2024"}
    assert set(listing(r.ok('LIST "" "Pro*"'))) == {"Projects", "Projects/2024",
                                                      "Projects/2024/Q1"}
    assert set(listing(r.ok('LIST "" "inbox"'))) == {"INBOX"}  # INBOX is case-insensitive
    # The empty pattern asks for the hierarchy delimiter.
    assert r.ok('LIST "" ""') == [b'* LIST (\\Noselect) "/" ""']
    # Multiple patterns (LIST-EXTENDED).
    assert set(listing(r.ok('LIST "" ("INBOX" "Sent")'))) == {"INBOX", "Sent"}
    assert listing(r.ok('LIST "" "NoSuch*"')) == {}
    r.close()


def test_special_use_attributes(imap_server, user):
    r = imap_server.raw_imap(user)
    boxes = listing(r.ok('LIST "" "*"'))
    for name, attr in SPECIAL.items():
        assert attr in boxes[name], (name, boxes[name])
    assert not any(a in boxes["INBOX"] for a in SPECIAL.values())
    # RETURN (SPECIAL-USE) and the SPECIAL-USE selection option (RFC 6154).
    boxes = listing(r.ok('LIST "" "*" RETURN (SPECIAL-USE)'))
    for name, attr in SPECIAL.items():
        assert attr in boxes[name]
    only = listing(r.ok('LIST (SPECIAL-USE) "" "*"'))
    assert set(only) == set(SPECIAL)
    # CREATE-SPECIAL-USE.
    r.ok('CREATE "Everything" (USE (\\All))')
    assert "\\all" in listing(r.ok('LIST "" "Everything"'))["Everything"]
    _, tagged = r.cmd('CREATE "Bogus" (USE (\\Important))')
    assert b"NO [USEATTR]" in tagged
    # imaplib sees the same through its own parser.
    c = imap_server.imap(user)
    typ, data = c.list()
    assert typ == "OK"
    joined = b"\n".join(data)
    assert b'(\\HasNoChildren \\Sent) "/" "Sent"' in joined or b"\\Sent" in joined
    c.logout()
    r.close()


def test_list_return_status_and_subscribed(imap_server, user):
    imap_server.deliver(user, subject="a")
    imap_server.deliver(user, subject="b")
    r = imap_server.raw_imap(user, select="INBOX")
    r.ok("STORE 1 +FLAGS (\\Seen)")
    lines = r.ok('LIST "" "*" RETURN (SPECIAL-USE STATUS (MESSAGES UNSEEN))')
    boxes, st = listing(lines), status_of(lines)
    assert set(boxes) == DEFAULTS and set(st) == DEFAULTS
    assert st["INBOX"] == {"MESSAGES": 2, "UNSEEN": 1}
    assert st["Sent"] == {"MESSAGES": 0, "UNSEEN": 0}
    # Each STATUS follows its LIST line.
    for i, l in enumerate(lines):
        if l.startswith(b"* STATUS"):
            assert lines[i - 1].startswith(b"* LIST")
    # SUBSCRIBED selection: only subscribed mailboxes, marked \Subscribed.
    r.ok("CREATE Unsub")
    r.ok("UNSUBSCRIBE Unsub")
    sub = listing(r.ok('LIST (SUBSCRIBED) "" "*"'))
    assert "Unsub" not in sub and "INBOX" in sub
    assert all("\\subscribed" in a for a in sub.values())
    everything = listing(r.ok('LIST "" "*" RETURN (SUBSCRIBED)'))
    assert "\\subscribed" not in everything["Unsub"]
    assert "\\subscribed" in everything["INBOX"]
    children = listing(r.ok('LIST "" "%" RETURN (CHILDREN)'))
    assert "\\hasnochildren" in children["INBOX"]
    # LSUB
    lsub = listing(r.ok('LSUB "" "*"'))
    assert "Unsub" not in lsub and "INBOX" in lsub
    r.ok("SUBSCRIBE Unsub")
    assert "Unsub" in listing(r.ok('LSUB "" "*"'))
    r.close()


def test_create_parents_and_errors(imap_server, user):
    r = imap_server.raw_imap(user)
    r.ok('CREATE "a/b/c"')
    boxes = listing(r.ok('LIST "" "a*"'))
    assert set(boxes) == {"a", "a/b", "a/b/c"}
    for name in boxes:  # the parents are real, selectable mailboxes
        r.ok(f'SELECT "{name}"')
    _, tagged = r.cmd('CREATE "a/b"')
    assert b"NO [ALREADYEXISTS]" in tagged
    _, tagged = r.cmd("CREATE INBOX")
    assert b" NO " in tagged
    _, tagged = r.cmd("CREATE inbox")
    assert b" NO " in tagged
    r.ok('CREATE "trailing/"')  # a trailing delimiter names the mailbox itself
    assert "trailing" in listing(r.ok('LIST "" "trailing"'))
    # Non-ASCII names (IMAP4rev2: UTF-8) round-trip; test_imap_utf8_names.py has the rest.
    r.ok("ENABLE IMAP4rev2")
    r.ok('CREATE "Caf\u00e9"'.encode())
    assert "Caf\u00e9" in listing(r.ok('LIST "" "*"'))
    r.ok('SELECT "Caf\u00e9"'.encode())
    r.close()


def test_delete(imap_server, user):
    imap_server.deliver(user)
    r = imap_server.raw_imap(user)
    r.ok("CREATE Doomed")
    r.ok("SELECT INBOX")
    r.ok("COPY 1 Doomed")
    r.ok("DELETE Doomed")
    assert "Doomed" not in listing(r.ok('LIST "" "*"'))
    _, tagged = r.cmd("SELECT Doomed")
    assert b"NO [NONEXISTENT]" in tagged
    _, tagged = r.cmd("DELETE Doomed")
    assert b"NO [NONEXISTENT]" in tagged
    _, tagged = r.cmd("DELETE INBOX")
    assert b" NO " in tagged
    # The original is untouched by deleting its copy.
    r.ok("SELECT INBOX")
    assert b"BODY[TEXT]" in r.ok("FETCH 1 BODY.PEEK[TEXT]")[0]
    # Re-creating the name gives a new UIDVALIDITY and starts UIDs at 1.
    r.ok("CREATE Doomed2")
    uv1 = status_of(r.ok("STATUS Doomed2 (UIDVALIDITY)"))["Doomed2"]["UIDVALIDITY"]
    r.ok("DELETE Doomed2")
    r.ok("CREATE Doomed2")
    st = status_of(r.ok("STATUS Doomed2 (UIDVALIDITY UIDNEXT)"))["Doomed2"]
    assert st["UIDVALIDITY"] > uv1 and st["UIDNEXT"] == 1
    r.close()


def test_delete_parent_keeps_children_listed(imap_server, user):
    r = imap_server.raw_imap(user)
    r.ok('CREATE "p/child"')
    r.ok('DELETE "p"')
    boxes = listing(r.ok('LIST "" "*"'))
    assert "p/child" in boxes
    # With "%", the now missing level is still shown, as non-selectable (RFC 9051 6.3.9).
    top = listing(r.ok('LIST "" "%"'))
    assert "p" in top, top
    assert {"\\noselect", "\\nonexistent"} & top["p"], top["p"]
    r.ok('SELECT "p/child"')
    r.close()


def test_rename_with_children_and_new_parents(imap_server, user):
    imap_server.deliver(user, subject="keep me")
    r = imap_server.raw_imap(user)
    r.ok('CREATE "old/sub"')
    r.ok("SELECT INBOX")
    r.ok('COPY 1 "old"')
    uv = status_of(r.ok('STATUS "old" (UIDVALIDITY MESSAGES)'))["old"]
    r.ok('RENAME "old" "new"')
    boxes = listing(r.ok('LIST "" "*"'))
    assert "old" not in boxes and "old/sub" not in boxes
    assert {"new", "new/sub"} <= set(boxes)
    st = status_of(r.ok('STATUS "new" (UIDVALIDITY MESSAGES)'))["new"]
    assert st["MESSAGES"] == 1
    # Renaming into a deeper name creates the missing superior names (RFC 9051 6.3.6).
    r.ok('RENAME "new/sub" "deep/er/sub"')
    boxes = listing(r.ok('LIST "" "*"'))
    assert {"deep", "deep/er", "deep/er/sub"} <= set(boxes), boxes
    _, tagged = r.cmd('RENAME "nonexistent" "x"')
    assert b"NO [NONEXISTENT]" in tagged
    _, tagged = r.cmd('RENAME "new" "Sent"')
    assert b"NO [ALREADYEXISTS]" in tagged
    _, tagged = r.cmd('RENAME "new" "INBOX"')
    assert b" NO " in tagged
    r.close()
    assert uv["MESSAGES"] == 1


def test_rename_inbox_moves_messages(imap_server, user):
    imap_server.fill(user, 3)
    r = imap_server.raw_imap(user)
    uidnext = status_of(r.ok("STATUS INBOX (UIDNEXT)"))["INBOX"]["UIDNEXT"]
    r.ok('RENAME INBOX "Old Inbox"')
    st = status_of(r.ok('STATUS "Old Inbox" (MESSAGES)'))
    assert st["Old Inbox"]["MESSAGES"] == 3
    st = status_of(r.ok("STATUS INBOX (MESSAGES UIDNEXT)"))["INBOX"]
    assert st["MESSAGES"] == 0
    assert st["UIDNEXT"] >= uidnext  # UIDs of INBOX are never reused
    r.ok('SELECT "Old Inbox"')
    subjects = b"".join(r.ok("FETCH 1:* BODY.PEEK[HEADER.FIELDS (SUBJECT)]"))
    for i in range(3):
        assert f"m{i}".encode() in subjects
    # New mail still lands in INBOX.
    imap_server.deliver(user, subject="after")
    assert status_of(r.ok("STATUS INBOX (MESSAGES)"))["INBOX"]["MESSAGES"] == 1
    r.close()


def test_subscribe_unsubscribe(imap_server, user):
    c = imap_server.imap(user)
    assert c.create("Lists")[0] == "OK"
    assert c.unsubscribe("Lists")[0] == "OK"
    typ, data = c.lsub()
    assert not any(b'"Lists"' in d for d in data)
    assert c.subscribe("Lists")[0] == "OK"
    typ, data = c.lsub('""', "Lis*")
    assert any(b"Lists" in d for d in data), data
    typ, _ = c.subscribe("NoSuchBox")
    c.logout()


def test_status_items(imap_server, user):
    imap_server.deliver(user, subject="a", body="x" * 100)
    imap_server.deliver(user, subject="b")
    r = imap_server.raw_imap(user, select="INBOX")
    r.ok("STORE 1 +FLAGS (\\Seen \\Deleted)")
    sizes = [int(m.group(1)) for l in r.ok("FETCH 1:* RFC822.SIZE")
             if (m := re.search(rb"RFC822.SIZE (\d+)", l))]
    st = status_of(r.ok(
        "STATUS INBOX (MESSAGES UIDNEXT UIDVALIDITY UNSEEN DELETED SIZE HIGHESTMODSEQ)"))["INBOX"]
    assert st["MESSAGES"] == 2 and st["UIDNEXT"] == 3 and st["UNSEEN"] == 1
    assert st["DELETED"] == 1 and st["SIZE"] == sum(sizes) and st["UIDVALIDITY"] > 0
    assert st["HIGHESTMODSEQ"] > 0
    sel = r.ok("SELECT INBOX")
    uv = [l for l in sel if b"UIDVALIDITY" in l][0]
    assert str(st["UIDVALIDITY"]).encode() in uv
    _, tagged = r.cmd("STATUS NoSuch (MESSAGES)")
    assert b"NO [NONEXISTENT]" in tagged
    _, tagged = r.cmd("STATUS INBOX (BOGUS)")
    assert b" BAD " in tagged
    r.close()
