"""A mailbox above the store's metadata-cache threshold (256 messages), where sessions keep a
compact view (UID, flags, MODSEQ) and look size, date and content up in the store's cache:
FETCH of every item kind, SEARCH by size, date, header and flags, STORE on every message,
and expunges and flag changes by another session, checked against an independent second
session's answers."""

import re

from support.mail import simple_message

N = 300


def fill(r, n: int):
    """APPEND n messages pipelined with LITERAL+ (message i is 100 + i bytes of body)."""
    data = b""
    for i in range(n):
        msg = simple_message(subject=f"Number {i + 1}", body="x" * (100 + i) + "\r\n")
        date = f'"{1 + i % 28:02d}-Mar-2024 10:00:00 +0000"'
        data += b"a%d APPEND INBOX %s {%d+}\r\n" % (i, date.encode(), len(msg)) + msg + b"\r\n"
    r.send(data)
    for i in range(n):
        _, tagged = r.read_until(f"a{i}")
        assert b" OK " in tagged, tagged


def fetch_map(lines, item: bytes) -> dict[int, bytes]:
    out = {}
    for l in lines:
        m = re.match(rb"\* (\d+) FETCH \((.*)\)$", l, re.S)
        if m:
            v = re.search(re.escape(item) + rb" (\([^)]*\)|\"[^\"]*\"|\S+)", m.group(2))
            if v:
                out[int(m.group(1))] = v.group(1)
    return out


def test_big_mailbox_fetch_search_store_and_sync(imap_server, user):
    a = imap_server.raw_imap(user)
    fill(a, N)
    a.ok("SELECT INBOX")
    b = imap_server.raw_imap(user, select="INBOX")

    lines = a.ok("FETCH 1:* (UID RFC822.SIZE INTERNALDATE FLAGS)")
    assert len(lines) == N
    sizes = fetch_map(lines, b"RFC822.SIZE")
    assert sizes == fetch_map(b.ok("FETCH 1:* (RFC822.SIZE)"), b"RFC822.SIZE")
    assert int(sizes[N]) - int(sizes[1]) == N - 1 + len(str(N)) - 1  # body and subject grow
    dates = fetch_map(lines, b"INTERNALDATE")
    assert dates[29] == b'"01-Mar-2024 10:00:00 +0000"', dates[29]
    body = a.ok("FETCH 250 (BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    assert b"Subject: Number 250" in body[0], body

    # SEARCH by size (from the store's metadata), date, header and a sequence range.
    big = int(sizes[200])
    hits = a.ok(f"SEARCH LARGER {big - 1} NOT LARGER {big}")
    assert hits == [b"* SEARCH 200"], hits
    hits = a.ok("SEARCH ON 2-Mar-2024")
    assert hits == [b"* SEARCH " + b" ".join(b"%d" % n for n in range(2, N + 1, 28))], hits
    assert a.ok('SEARCH SUBJECT "Number 27"') == [b"* SEARCH 27 270 271 272 273 274 275 276 277 278 279"]
    assert a.ok("SEARCH 299:* SUBJECT number") == [b"* SEARCH 299 300"]

    # STORE on every message; the other session learns every change.
    lines = a.ok("STORE 1:* +FLAGS (\\Flagged)")
    assert len(lines) == N and all(b"\\Flagged" in l for l in lines)
    b_lines = b.ok("NOOP")
    assert len([l for l in b_lines if b"FETCH" in l and b"\\Flagged" in l]) == N, b_lines[:3]
    a.ok("STORE 10:19 +FLAGS.SILENT (\\Deleted)")
    assert a.ok("SEARCH DELETED") == [b"* SEARCH 10 11 12 13 14 15 16 17 18 19"]

    # b expunges them: a hears ten EXPUNGEs (descending, each valid when applied) and its
    # sequence numbers and UIDs line up with b's afterwards.
    b.ok("EXPUNGE")
    expunges = [l for l in a.ok("NOOP") if l.endswith(b" EXPUNGE")]
    assert expunges == [b"* %d EXPUNGE" % n for n in range(19, 9, -1)], expunges
    assert fetch_map(a.ok("FETCH 1:* (UID)"), b"UID") == fetch_map(b.ok("FETCH 1:* (UID)"), b"UID")
    assert a.ok("FETCH 10 (UID)") == [b"* 10 FETCH (UID 20)"]
    assert a.ok("SEARCH UID 20:21") == [b"* SEARCH 10 11"]
    lines = a.ok("FETCH 10 (RFC822.SIZE BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    assert b"Number 20" in lines[0] and sizes[20] in lines[0], lines

    # Sessions that SELECT the unchanged mailbox share one snapshot of it (the store keeps
    # it until the next write): a change made through one is reported to the others, does
    # not leak into their views before that, and the next SELECT sees it.
    c = imap_server.raw_imap(user)
    d = imap_server.raw_imap(user)
    for s in (c, d):
        sel = s.ok("SELECT INBOX")
        assert b"* %d EXISTS" % (N - 10) in sel and b"* OK [UNSEEN 1] First unseen" in sel, sel
        assert not any(b"$Urgent" in l for l in sel), sel
    c.ok("STORE 1:5 +FLAGS.SILENT (\\Seen $Urgent)")
    assert b"$Urgent" in c.ok("FETCH 5 (FLAGS)")[0]
    d_lines = [l for l in d.ok("NOOP") if b"FETCH" in l]
    assert len(d_lines) == 5 and all(b"$Urgent" in l and b"\\Seen" in l for l in d_lines), d_lines
    assert all(b"$Urgent" in l for l in d.ok("FETCH 1:5 (FLAGS)"))
    assert not any(b"$Urgent" in l for l in d.ok("FETCH 6:10 (FLAGS)"))
    e = imap_server.raw_imap(user)
    sel = e.ok("SELECT INBOX")
    assert b"* OK [UNSEEN 6] First unseen" in sel, sel
    assert any(l.startswith(b"* FLAGS (") and b"$Urgent" in l for l in sel), sel
    d.ok("STORE 1 -FLAGS.SILENT (\\Seen)")
    assert any(b"* 1 FETCH" in l and b"\\Seen" not in l for l in c.ok("NOOP"))
    assert b"* OK [UNSEEN 1] First unseen" in imap_server.raw_imap(user).ok("EXAMINE INBOX")
    for s in (a, b, c, d, e):
        s.close()
