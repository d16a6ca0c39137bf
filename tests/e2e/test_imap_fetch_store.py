"""FETCH, STORE, CONDSTORE and QRESYNC over real sockets: every FETCH data item including
BODY[section]<partial> for each section kind and nested parts, BODY.PEEK vs BODY[] and \\Seen,
BINARY/BINARY.SIZE, STORE +/-FLAGS(.SILENT), MODSEQ/CHANGEDSINCE/UNCHANGEDSINCE/[MODIFIED],
QRESYNC SELECT with VANISHED (EARLIER), VANISHED on expunge, [CLOSED]."""

import re

import pytest


STRUCT = (
    b"From: Alice <alice@a.test>\r\n"
    b"To: Bob <bob@example.org>, carol@c.test\r\n"
    b"Subject: Structure test\r\n"
    b"Date: Mon, 01 Jan 2024 10:00:00 +0000\r\n"
    b"Message-ID: <struct@t>\r\n"
    b"MIME-Version: 1.0\r\n"
    b'Content-Type: multipart/mixed; boundary="outer"\r\n'
    b"\r\n"
    b"Preamble.\r\n"
    b"--outer\r\n"
    b'Content-Type: multipart/alternative; boundary="inner"\r\n'
    b"\r\n"
    b"--inner\r\n"
    b"Content-Type: text/plain; charset=us-ascii\r\n"
    b"\r\n"
    b"Plain text body.\r\n"
    b"--inner\r\n"
    b"Content-Type: text/html; charset=us-ascii\r\n"
    b"\r\n"
    b"<p>HTML body</p>\r\n"
    b"--inner--\r\n"
    b"\r\n"
    b"--outer\r\n"
    b'Content-Type: application/octet-stream; name="data.bin"\r\n'
    b"Content-Transfer-Encoding: base64\r\n"
    b'Content-Disposition: attachment; filename="data.bin"\r\n'
    b"\r\n"
    b"AAECAwQFBgcICQ==\r\n"
    b"--outer\r\n"
    b"Content-Type: message/rfc822\r\n"
    b"\r\n"
    b"From: inner@x.test\r\n"
    b"Subject: Inner message\r\n"
    b"\r\n"
    b"Inner body.\r\n"
    b"--outer--\r\n"
)


def literal_after(line: bytes, item: bytes) -> bytes | None:
    """The value of `item` (e.g. b"BODY[1.1]") in a FETCH response line: literal or quoted."""
    i = line.find(item + b" ")
    if i < 0:
        return None
    rest = line[i + len(item) + 1:]
    m = re.match(rb"~?\{(\d+)\}\r\n", rest)
    if m:
        return rest[m.end():m.end() + int(m.group(1))]
    m = re.match(rb'"((?:[^"\\]|\\.)*)"', rest)
    if m:
        return m.group(1)
    if rest.startswith(b"NIL"):
        return None
    raise AssertionError(rest[:80])


def flags_in(line: bytes) -> set[bytes]:
    """The stored flags of a FETCH line: without \\Recent, which this session shows for the
    messages it was first to see (test_imap_recent.py checks that)."""
    m = re.search(rb"FLAGS \(([^)]*)\)", line)
    return set(m.group(1).split()) - {b"\\Recent"} if m else None


@pytest.fixture
def box(imap_server, user):
    """A session with the STRUCT message as 1 and two plain messages as 2 and 3, selected."""
    r = imap_server.raw_imap(user)
    r.send(b"a APPEND INBOX {%d+}\r\n%s\r\n" % (len(STRUCT), STRUCT))
    r.read_until("a")
    imap_server.deliver(user, subject="second")
    imap_server.deliver(user, subject="third")
    r.ok("SELECT INBOX")
    yield r
    r.close()


@pytest.mark.parametrize("item,expected", [
    (b"BODY[1.1]", b"Plain text body."),
    (b"BODY[1.2]", b"<p>HTML body</p>"),
    (b"BODY[1.2.MIME]", b"Content-Type: text/html; charset=us-ascii\r\n\r\n"),
    (b"BODY[2]", b"AAECAwQFBgcICQ=="),
    (b"BODY[2.MIME]", b'Content-Type: application/octet-stream; name="data.bin"\r\n'
                      b"Content-Transfer-Encoding: base64\r\n"
                      b'Content-Disposition: attachment; filename="data.bin"\r\n\r\n'),
    (b"BODY[3.HEADER]", b"From: inner@x.test\r\nSubject: Inner message\r\n\r\n"),
    (b"BODY[3.TEXT]", b"Inner body."),
    (b"BODY[3.1]", b"Inner body."),
    (b"BODY[3.HEADER.FIELDS (SUBJECT)]", b"Subject: Inner message\r\n\r\n"),
    (b"BODY[HEADER.FIELDS (SUBJECT FROM)]",
     b"From: Alice <alice@a.test>\r\nSubject: Structure test\r\n\r\n"),
    (b"BODY[HEADER.FIELDS.NOT (TO FROM DATE MESSAGE-ID MIME-VERSION CONTENT-TYPE)]",
     b"Subject: Structure test\r\n\r\n"),
    (b"BODY[HEADER]", STRUCT[:STRUCT.index(b"\r\n\r\n") + 4]),
    (b"BODY[TEXT]", STRUCT[STRUCT.index(b"\r\n\r\n") + 4:]),
    (b"BODY[]", STRUCT),
])
def test_body_sections(box, item, expected):
    req = item.replace(b"BODY[", b"BODY.PEEK[").decode()
    lines = box.ok(f"FETCH 1 ({req})")
    assert len(lines) == 1
    assert literal_after(lines[0], item) == expected, lines[0]


def test_partial_fetch(box):
    line = box.ok("FETCH 1 (BODY.PEEK[]<0.10> BODY.PEEK[TEXT]<11.6> BODY.PEEK[1.1]<6.4>)")[0]
    assert literal_after(line, b"BODY[]<0>") == STRUCT[:10]
    text = STRUCT[STRUCT.index(b"\r\n\r\n") + 4:]
    assert literal_after(line, b"BODY[TEXT]<11>") == text[11:17]
    assert literal_after(line, b"BODY[1.1]<6>") == b"text"
    # Past the end: an empty string; overlapping the end: truncated.
    line = box.ok(f"FETCH 1 (BODY.PEEK[]<{len(STRUCT) + 5}.10>)")[0]
    assert literal_after(line, f"BODY[]<{len(STRUCT) + 5}>".encode()) == b""
    line = box.ok(f"FETCH 1 (BODY.PEEK[]<{len(STRUCT) - 3}.100>)")[0]
    assert literal_after(line, f"BODY[]<{len(STRUCT) - 3}>".encode()) == STRUCT[-3:]


def test_binary_and_binary_size(box):
    line = box.ok("FETCH 1 (BINARY.PEEK[2] BINARY.SIZE[2] BINARY.PEEK[1.1])")[0]
    assert literal_after(line, b"BINARY[2]") == bytes(range(10))
    assert b"BINARY.SIZE[2] 10" in line
    assert literal_after(line, b"BINARY[1.1]") == b"Plain text body."
    line = box.ok("FETCH 1 (BINARY.PEEK[2]<2.3>)")[0]
    assert literal_after(line, b"BINARY[2]<2>") == bytes([2, 3, 4])
    assert flags_in(box.ok("FETCH 1 FLAGS")[0]) == set()  # BINARY.PEEK leaves \Seen alone
    line = box.ok("FETCH 1 (BINARY[2])")[0]
    assert b"\\Seen" in flags_in(line)


def test_peek_does_not_set_seen_but_body_does(box):
    box.ok("FETCH 2 (BODY.PEEK[] BODY.PEEK[HEADER] RFC822.HEADER RFC822.SIZE ENVELOPE)")
    assert flags_in(box.ok("FETCH 2 FLAGS")[0]) == set()
    # BODY[TEXT] sets \Seen and says so in the same FETCH response.
    line = box.ok("FETCH 2 BODY[TEXT]")[0]
    assert flags_in(line) == {b"\\Seen"}, line
    assert flags_in(box.ok("FETCH 2 FLAGS")[0]) == {b"\\Seen"}
    # RFC822 (the rev1 form) also sets \Seen; RFC822.TEXT too.
    line = box.ok("FETCH 3 RFC822")[0]
    assert b"RFC822 {" in line and flags_in(line) == {b"\\Seen"}
    # Already seen: no extra FLAGS needed, and UID FETCH always carries the UID.
    line = box.ok("UID FETCH 3 BODY[]")[0]
    assert b"UID 3" in line
    # imaplib sees the same.


def test_fetch_metadata_items(box):
    line = box.ok("FETCH 1 (UID FLAGS INTERNALDATE RFC822.SIZE ENVELOPE BODYSTRUCTURE BODY)")[0]
    assert b"UID 1" in line and flags_in(line) == set()
    assert re.search(rb'INTERNALDATE "\d\d-[A-Z][a-z]{2}-\d{4} \d\d:\d\d:\d\d [+-]\d{4}"', line)
    assert f"RFC822.SIZE {len(STRUCT)}".encode() in line
    env = line[line.index(b"ENVELOPE ("):]
    assert b'"Mon, 01 Jan 2024 10:00:00 +0000" "Structure test" (("Alice" NIL "alice" "a.test"))' \
        in env, env[:300]
    assert b'(("Bob" NIL "bob" "example.org")(NIL NIL "carol" "c.test"))' in env
    assert b'"<struct@t>"' in env
    bs = line[line.index(b"BODYSTRUCTURE ("):]
    assert b'"alternative"' in bs and b'"mixed"' in bs
    assert b'"application" "octet-stream" ("name" "data.bin") NIL NIL "base64" 16' in bs, bs
    assert b'"message" "rfc822"' in bs.lower() or b'"MESSAGE" "RFC822"' in bs
    assert b'("attachment" ("filename" "data.bin"))' in bs
    assert b'"boundary" "outer"' in bs  # extension data only in BODYSTRUCTURE
    body = line[line.index(b" BODY ("):]
    assert b'"boundary"' not in body
    # Macros.
    line = box.ok("FETCH 2 FAST")[0]
    assert b"FLAGS" in line and b"INTERNALDATE" in line and b"RFC822.SIZE" in line
    line = box.ok("FETCH 2 ALL")[0]
    assert b"ENVELOPE" in line and b"BODY" not in line.replace(b"BODY[", b"")
    line = box.ok("FETCH 2 FULL")[0]
    assert b"ENVELOPE" in line and b" BODY (" in line
    # Ranges and UID FETCH.
    lines = box.ok("FETCH 1:* (UID)")
    assert [int(re.search(rb"UID (\d+)", l).group(1)) for l in lines] == [1, 2, 3]
    lines = box.ok("UID FETCH 2:* (FLAGS)")
    assert len(lines) == 2 and all(b"UID " in l for l in lines)
    assert box.ok("UID FETCH 99 (FLAGS)") == []


def test_fetch_with_imaplib(imap_server, user):
    c = imap_server.imap(user)
    c.append("INBOX", None, None, STRUCT)
    c.select("INBOX")
    typ, data = c.fetch("1", "(BODY.PEEK[1.2] BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    assert typ == "OK"
    parts = {d[0].split()[-2] if False else d[0]: d[1] for d in data if isinstance(d, tuple)}
    assert any(v == b"<p>HTML body</p>" for v in parts.values()), data
    typ, data = c.uid("FETCH", "1", "(FLAGS)")
    assert typ == "OK" and b"UID 1" in data[0]
    c.logout()


def test_fetch_errors(box):
    for bad in ("FETCH", "FETCH 1", "FETCH 1 (BOGUS)", "FETCH 0 FLAGS", "FETCH x FLAGS",
                "FETCH 1 BODY[HEADER.FIELDS ()]", "FETCH 1 BODY[]<0.0>", "FETCH 1 (FLAGS",
                "FETCH 1 BINARY[HEADER]"):
        _, tagged = box.cmd(bad)
        assert b" BAD " in tagged, (bad, tagged)
    box.ok("FETCH 1 FLAGS")


# --- STORE -------------------------------------------------------------------------------


def test_store_variants(box):
    line = box.ok("STORE 1 +FLAGS (\\Flagged)")
    assert len(line) == 1 and flags_in(line[0]) == {b"\\Flagged"}
    assert box.ok("STORE 1 +FLAGS.SILENT (\\Seen)") == []
    assert flags_in(box.ok("FETCH 1 FLAGS")[0]) == {b"\\Flagged", b"\\Seen"}
    line = box.ok("STORE 1 -FLAGS (\\Flagged)")
    assert flags_in(line[0]) == {b"\\Seen"}
    untagged = box.ok("STORE 1 FLAGS ($Custom \\Answered)")
    # A new keyword is announced first (FLAGS, PERMANENTFLAGS), then the FETCH.
    assert untagged[0].startswith(b"* FLAGS (") and b"$Custom" in untagged[0], untagged
    line = [l for l in untagged if b" FETCH " in l]
    assert flags_in(line[0]) == {b"$Custom", b"\\Answered"}
    assert box.ok("STORE 1 -FLAGS.SILENT ($Custom)") == []
    line = box.ok("STORE 1:3 +FLAGS \\Draft")  # single flag without parentheses
    assert len(line) == 3
    line = [l for l in box.ok("UID STORE 2 +FLAGS ($Other)") if b" FETCH " in l]
    assert b"UID 2" in line[0] and flags_in(line[0]) == {b"\\Draft", b"$Other"}
    # Adding a flag with different case does not duplicate it.
    line = box.ok("STORE 2 +FLAGS ($other \\draft)")
    assert flags_in(line[0]) == {b"\\Draft", b"$Other"}
    # \Recent cannot be stored (RFC 3501 §2.3.2): BAD, as Dovecot answers, and nothing changes.
    _, tagged = box.cmd("STORE 2 +FLAGS ($New \\Recent)")
    assert b" BAD " in tagged, tagged
    assert flags_in(box.ok("FETCH 2 FLAGS")[0]) == {b"\\Draft", b"$Other"}
    assert box.ok("STORE 1:3 FLAGS.SILENT ()") == []
    assert all(flags_in(l) == set() for l in box.ok("FETCH 1:3 FLAGS"))
    for bad in ("STORE 1 FLAGS (\\Bogus)", "STORE 1 XFLAGS (\\Seen)", "STORE 1 +FLAGS ((x)"):
        _, tagged = box.cmd(bad)
        assert b" BAD " in tagged, (bad, tagged)


def test_new_keyword_is_announced(box, imap_server, user):
    box.ok("STORE 1 +FLAGS ($Fresh)")
    sel = box.ok("SELECT INBOX")
    flags = [l for l in sel if l.startswith(b"* FLAGS")][0]
    perm = [l for l in sel if b"PERMANENTFLAGS" in l][0]
    assert b"$Fresh" in flags and b"\\*" in perm


# --- CONDSTORE ---------------------------------------------------------------------------


def code_value(lines: list[bytes], name: bytes) -> int:
    """The number after `name` in the first of `lines` that has it (a response code such as
    [HIGHESTMODSEQ n])."""
    return int([re.search(name + rb" (\d+)", l).group(1) for l in lines if name in l][0])


def modseq_of(line):
    return int(re.search(rb"MODSEQ \((\d+)\)", line).group(1))


def test_condstore(imap_server, user):
    imap_server.fill(user, 3, "cs")
    r = imap_server.raw_imap(user)
    sel = r.ok("SELECT INBOX (CONDSTORE)")
    hms = code_value(sel, b"HIGHESTMODSEQ")
    lines = r.ok("FETCH 1:* (FLAGS MODSEQ)")
    seqs = [modseq_of(l) for l in lines]
    assert len(seqs) == 3 and max(seqs) <= hms
    # A change raises the message's MODSEQ above HIGHESTMODSEQ and is reported with it.
    line = r.ok("STORE 2 +FLAGS (\\Flagged)")[0]
    m2 = modseq_of(line)
    assert m2 > hms
    lines = r.ok(f"FETCH 1:* (FLAGS) (CHANGEDSINCE {hms})")
    assert len(lines) == 1 and lines[0].startswith(b"* 2 FETCH") and b"MODSEQ" in lines[0]
    assert r.ok(f"FETCH 1:* (FLAGS) (CHANGEDSINCE {m2})") == []
    # SEARCH MODSEQ reports the highest MODSEQ of the hits.
    untagged = r.ok(f"SEARCH MODSEQ {m2}")
    assert untagged == [f"* SEARCH 2 (MODSEQ {m2})".encode()], untagged
    # UNCHANGEDSINCE: message 2 changed after hms, so it is left alone and named in MODIFIED.
    untagged, tagged = r.cmd(f"STORE 1:3 (UNCHANGEDSINCE {hms}) +FLAGS (\\Seen)")
    assert re.search(rb"OK \[MODIFIED 2\]", tagged), tagged
    stored = {int(l.split()[1]) for l in untagged if b"FETCH" in l}
    assert stored == {1, 3}
    assert b"\\Seen" not in r.ok("FETCH 2 FLAGS")[0]
    # UID STORE answers MODIFIED with UIDs; UNCHANGEDSINCE at the current value succeeds.
    cur = modseq_of(r.ok("FETCH 2 (MODSEQ)")[0])
    _, tagged = r.cmd(f"UID STORE 2 (UNCHANGEDSINCE {cur - 1}) +FLAGS (\\Seen)")
    assert b"[MODIFIED 2]" in tagged
    untagged, tagged = r.cmd(f"UID STORE 2 (UNCHANGEDSINCE {cur}) +FLAGS (\\Seen)")
    assert b"MODIFIED" not in tagged and b" OK " in tagged
    # STATUS HIGHESTMODSEQ follows.
    st = r.ok("STATUS INBOX (HIGHESTMODSEQ)")[0]
    assert int(re.search(rb"HIGHESTMODSEQ (\d+)", st).group(1)) > m2
    r.close()


def test_enable_condstore_adds_modseq_to_fetch(imap_server, user):
    imap_server.deliver(user)
    r = imap_server.raw_imap(user)
    assert r.ok("ENABLE CONDSTORE") == [b"* ENABLED CONDSTORE"]
    r.ok("SELECT INBOX")
    line = r.ok("STORE 1 +FLAGS (\\Seen)")[0]
    assert b"MODSEQ (" in line
    r.close()


# --- QRESYNC -----------------------------------------------------------------------------


def test_qresync_select_and_vanished(imap_server, user):
    imap_server.fill(user, 5, "q")
    a = imap_server.raw_imap(user)
    sel = a.ok("SELECT INBOX (CONDSTORE)")
    uv = code_value(sel, b"UIDVALIDITY")
    ms = code_value(sel, b"HIGHESTMODSEQ")
    a.close()
    # While "offline": another session flags 2 and expunges 3 and 4.
    b = imap_server.raw_imap(user, select="INBOX")
    b.ok("STORE 2 +FLAGS.SILENT (\\Flagged)")
    b.ok("STORE 3:4 +FLAGS.SILENT (\\Deleted)")
    b.ok("EXPUNGE")
    b.close()
    # Resync.
    a = imap_server.raw_imap(user)
    _, tagged = a.cmd(f"SELECT INBOX (QRESYNC ({uv} {ms}))")
    assert b" BAD " in tagged  # QRESYNC must be enabled first
    assert a.ok("ENABLE QRESYNC") == [b"* ENABLED QRESYNC"]
    sel = a.ok(f"SELECT INBOX (QRESYNC ({uv} {ms}))")
    vanished = [l for l in sel if l.startswith(b"* VANISHED (EARLIER) ")]
    assert vanished == [b"* VANISHED (EARLIER) 3:4"], sel
    fetches = [l for l in sel if b" FETCH " in l]
    assert len(fetches) == 1 and b"UID 2 " in fetches[0] and b"\\Flagged" in fetches[0]
    assert b"MODSEQ (" in fetches[0]
    assert b"* 3 EXISTS" in sel
    # With known UIDs the VANISHED answer is limited to them.
    sel = a.ok(f"SELECT INBOX (QRESYNC ({uv} {ms} 1:3))")
    assert [l for l in sel if l.startswith(b"* OK [CLOSED]")], sel  # previous one closed
    assert [l for l in sel if l.startswith(b"* VANISHED")] == [b"* VANISHED (EARLIER) 3"]
    # A stale UIDVALIDITY gets no VANISHED/FETCH, just a normal SELECT.
    sel = a.ok(f"SELECT INBOX (QRESYNC ({uv - 1} {ms}))")
    assert not [l for l in sel if b"VANISHED" in l or b" FETCH " in l]
    # UID FETCH ... (CHANGEDSINCE ms VANISHED)
    lines = a.ok(f"UID FETCH 1:* (FLAGS) (CHANGEDSINCE {ms} VANISHED)")
    assert lines[0] == b"* VANISHED (EARLIER) 3:4", lines
    assert len(lines) == 2 and b"UID 2" in lines[1]
    _, tagged = a.cmd(f"FETCH 1:* (FLAGS) (CHANGEDSINCE {ms} VANISHED)")
    assert b" BAD " in tagged  # VANISHED only with UID FETCH
    # With QRESYNC on, expunges are reported as VANISHED, not EXPUNGE.
    a.ok("STORE 1 +FLAGS.SILENT (\\Deleted)")
    untagged = a.ok("EXPUNGE")
    assert untagged == [b"* VANISHED 1"], untagged
    a.close()


def test_closed_response_when_switching_mailbox(imap_server, user):
    r = imap_server.raw_imap(user)
    r.ok("ENABLE IMAP4rev2")
    sel = r.ok("SELECT INBOX")
    assert not any(b"[CLOSED]" in l for l in sel)  # nothing was open
    sel = r.ok("EXAMINE Sent")
    assert sel[0].startswith(b"* OK [CLOSED]"), sel  # RFC 9051 6.3.2
    r.close()
