"""APPEND beyond one plain literal (issue 20 items 2 and 13): binary content (RFC 3516
§4.2: BODY[] never carries NUL), MULTIAPPEND's all-or-none (RFC 3502) and CATENATE
(RFC 4469) — checked with replies read up to their own tagged line. The same commands'
answers are compared with Dovecot's in test_differential_imap.py
(`multiappend_and_catenate`)."""

import re

from support.mail import simple_message

PAYLOAD = bytes(range(256)) * 4


def binary_message() -> bytes:
    return (b"From: a@example.net\r\nSubject: bin\r\nMIME-Version: 1.0\r\n"
            b"Content-Type: multipart/mixed; boundary=zz\r\n\r\n--zz\r\nContent-Type: text/plain\r\n\r\n"
            b"see attachment\r\n--zz\r\nContent-Type: application/octet-stream\r\n"
            b"Content-Transfer-Encoding: binary\r\n\r\n" + PAYLOAD + b"\r\n--zz--\r\n")


def literal_of(line: bytes, item: bytes) -> bytes:
    m = re.search(re.escape(item) + rb" ~?\{(\d+)\}\r\n", line)
    assert m, line[:200]
    return line[m.end():m.end() + int(m.group(1))]


def test_binary_append_is_stored_nul_free_and_decodes_back(imap_server, user):
    r = imap_server.raw_imap(user)
    msg = binary_message()
    r.send(b"b1 APPEND INBOX ~{%d+}\r\n" % len(msg) + msg + b"\r\n")
    _, tagged = r.read_until("b1")
    assert b"OK [APPENDUID" in tagged, tagged
    r.ok("SELECT INBOX")
    (line,) = r.ok("FETCH 1 (BODY.PEEK[])")
    body = literal_of(line, b"BODY[]")
    assert b"\x00" not in body and b"~{" not in line[:60]
    assert b"Content-Transfer-Encoding: base64" in body
    (line,) = r.ok("FETCH 1 (BINARY.PEEK[2] BINARY.SIZE[2])")
    assert literal_of(line, b"BINARY[2]") == PAYLOAD
    assert b"BINARY.SIZE[2] %d" % len(PAYLOAD) in line
    (line,) = r.ok("FETCH 1 (BINARY.PEEK[1])")
    assert literal_of(line, b"BINARY[1]") == b"see attachment"
    # A NUL in a header cannot be carried by any encoding: refused, nothing stored.
    bad = b"Subject: a\x00b\r\n\r\nbody\r\n"
    r.send(b"b2 APPEND INBOX ~{%d+}\r\n" % len(bad) + bad + b"\r\n")
    _, tagged = r.read_until("b2")
    assert b" NO [UNKNOWN-CTE]" in tagged, tagged
    assert r.ok("SEARCH ALL") == [b"* SEARCH 1"]
    r.close()


def test_multiappend_is_all_or_none_and_catenate_builds_from_parts(imap_server, user):
    r = imap_server.raw_imap(user)
    one = simple_message("first")
    two = simple_message("second")
    # The second message's URL names nothing: neither message is stored.
    untagged, tagged = r.cmd(b"APPEND INBOX {%d+}\r\n" % len(one) + one
                             + b' CATENATE (URL "/INBOX/;UID=9")')
    assert b" NO [BADURL" in tagged, tagged
    r.ok("SELECT INBOX")
    assert r.ok("SEARCH ALL") == [b"* SEARCH"]
    untagged, tagged = r.cmd(b"APPEND INBOX (\\Seen) {%d+}\r\n" % len(one) + one
                             + b" (\\Flagged) {%d+}\r\n" % len(two) + two)
    assert re.search(rb"OK \[APPENDUID \d+ 1:2\]", tagged), tagged
    assert b"* 2 EXISTS" in untagged, untagged
    # CATENATE: the first message's header with a new body; a synchronising TEXT literal
    # gets its continuation request like any other.
    r.send(b'c1 APPEND Drafts CATENATE (URL "/INBOX/;UID=1/;SECTION=HEADER" TEXT {10}\r\n')
    assert r.line().startswith(b"+ ")
    r.send(b"New body\r\n)\r\n")
    _, tagged = r.read_until("c1")
    assert re.search(rb"OK \[APPENDUID \d+ 1\]", tagged), tagged
    r.ok("EXAMINE Drafts")
    (line,) = r.ok("FETCH 1 (BODY.PEEK[])")
    header_end = one.index(b"\r\n\r\n") + 4
    assert literal_of(line, b"BODY[]") == one[:header_end] + b"New body\r\n"
    # Another user's message cannot be named.
    _, tagged = r.cmd(b'APPEND Drafts CATENATE (URL "imap://someone-else@host/INBOX/;UID=1")')
    assert b" NO [BADURL" in tagged, tagged
    # CAPABILITY says so.
    caps = r.ok("CAPABILITY")[0]
    for cap in (b"MULTIAPPEND", b"CATENATE", b"SORT", b"ESORT", b"THREAD=REFERENCES"):
        assert cap in caps.split(), caps
    r.close()
