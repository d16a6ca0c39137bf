"""\\Recent across sessions (RFC 3501 §2.3.2, issue 20 item 6): the first read-write session
to see a message shows it \\Recent, no other does; EXAMINE and STATUS look without taking;
new mail reaches a selected session as EXISTS then RECENT; SEARCH RECENT/NEW/OLD; an
IMAP4rev2 session (RFC 9051 dropped \\Recent) gets none of it. Every reply is read up to its
own tagged line (RawImap), so no response is taken for another command's."""

import re

from support.clients import RawImap, untagged_matching
from support.wait import poll


def recent_of(lines: list[bytes]) -> int:
    (m,) = untagged_matching(lines, rb"\* (\d+) RECENT$")
    return int(m.group(1))


def flags_by_seq(lines: list[bytes]) -> dict[int, set[str]]:
    out = {}
    for m in untagged_matching(lines, rb"\* (\d+) FETCH \(.*FLAGS \(([^)]*)\)"):
        out[int(m.group(1))] = set(m.group(2).decode().split())
    return out


def search(r: RawImap, key: str) -> list[int]:
    (line,) = [l for l in r.ok(f"SEARCH {key}") if l.startswith(b"* SEARCH")]
    return [int(x) for x in line.split()[2:]]


def test_recent_belongs_to_the_first_session_that_sees_it(imap_server, user):
    imap_server.fill(user, 3)
    looker = imap_server.raw_imap(user)
    st = looker.ok("STATUS INBOX (RECENT)")
    assert b"RECENT 3" in st[0], st
    # EXAMINE shows them recent but takes nothing.
    assert recent_of(looker.ok("EXAMINE INBOX")) == 3
    assert flags_by_seq(looker.ok("FETCH 1:* FLAGS"))[1] >= {"\\Recent"}
    looker.ok("CLOSE")

    a = imap_server.raw_imap(user)
    assert recent_of(a.ok("SELECT INBOX")) == 3
    assert all("\\Recent" in f for f in flags_by_seq(a.ok("FETCH 1:* FLAGS")).values())
    assert search(a, "RECENT") == [1, 2, 3]
    a.ok("STORE 2 +FLAGS (\\Seen)")
    assert search(a, "NEW") == [1, 3]
    assert search(a, "OLD") == []

    # A second session comes after: nothing is recent for it, and STATUS from elsewhere says 0.
    b = imap_server.raw_imap(user)
    assert recent_of(b.ok("SELECT INBOX")) == 0
    assert not any("\\Recent" in f for f in flags_by_seq(b.ok("FETCH 1:* FLAGS")).values())
    assert search(b, "RECENT") == []
    assert search(b, "OLD") == [1, 2, 3]
    assert b"RECENT 0" in looker.ok("STATUS INBOX (RECENT)")[0]

    # New mail: both sessions hear EXISTS; the first to sync takes it.
    imap_server.deliver(user, subject="late")
    poll(lambda: b"RECENT 1" in looker.ok("STATUS INBOX (RECENT)")[0])
    lines = a.ok("NOOP")
    exists = [i for i, l in enumerate(lines) if l == b"* 4 EXISTS"]
    assert exists and lines[exists[0] + 1] == b"* 4 RECENT", lines
    assert "\\Recent" in flags_by_seq(a.ok("FETCH 4 FLAGS"))[4]
    lines = b.ok("NOOP")
    assert b"* 4 EXISTS" in lines and b"* 0 RECENT" in lines, lines
    assert "\\Recent" not in flags_by_seq(b.ok("FETCH 4 FLAGS"))[4]

    # Expunging a recent message changes the count, and the session is told.
    a.ok("STORE 4 +FLAGS.SILENT (\\Deleted)")
    lines = a.ok("EXPUNGE")
    assert b"* 4 EXPUNGE" in lines and b"* 3 RECENT" in lines, lines
    # \Recent cannot be stored.
    _, tagged = a.cmd("STORE 1 +FLAGS (\\Recent)")
    assert b" BAD " in tagged, tagged
    for r in (a, b, looker):
        r.close()


def test_an_imap4rev2_session_sees_no_recent(imap_server, user):
    imap_server.deliver(user)
    r = imap_server.raw_imap(user)
    r.ok("ENABLE IMAP4rev2")
    lines = r.ok("SELECT INBOX")
    assert not untagged_matching(lines, rb"\* \d+ RECENT"), lines
    assert "\\Recent" not in flags_by_seq(r.ok("FETCH 1 FLAGS"))[1]
    imap_server.deliver(user)
    lines = r.ok("NOOP")
    assert b"* 2 EXISTS" in lines and not untagged_matching(lines, rb"\* \d+ RECENT"), lines
    r.close()
    # It took nothing: a rev1 session still finds both messages recent.
    s = imap_server.raw_imap(user)
    assert recent_of(s.ok("SELECT INBOX")) == 2
    s.close()
