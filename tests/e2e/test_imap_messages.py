"""Message-level commands over real sockets: APPEND (flags, internal date, LITERAL+,
LITERAL-, synchronising literals, TRYCREATE), UIDPLUS (APPENDUID, COPYUID), COPY, MOVE,
EXPUNGE, UID EXPUNGE, CLOSE, UNSELECT, EXAMINE read-only rules."""

import datetime
import email.utils
import imaplib
import re

from support.mail import simple_message


def fetch_uids(r, mailbox=None):
    if mailbox:
        r.ok(f'SELECT "{mailbox}"')
    return [int(m.group(1)) for l in r.ok("UID FETCH 1:* (UID)")
            if (m := re.search(rb"UID (\d+)", l))]


def append(r, mailbox, msg: bytes, flags="", date="", nonsync=True):
    """APPEND with a LITERAL+ literal; returns (uidvalidity, uid) from APPENDUID."""
    args = f'"{mailbox}"' + (f" ({flags})" if flags else "") + (f' "{date}"' if date else "")
    plus = "+" if nonsync else ""
    tag = "ap%d" % id(msg)
    r.send(f"{tag} APPEND {args} {{{len(msg)}{plus}}}\r\n".encode())
    if not nonsync:
        assert r.line().startswith(b"+")
    r.send(msg + b"\r\n")
    untagged, tagged = r.read_until(tag)
    m = re.search(rb"OK \[APPENDUID (\d+) (\d+)\]", tagged)
    assert m, (untagged, tagged)
    return int(m.group(1)), int(m.group(2))


def test_append_flags_date_and_literal_plus(imap_server, user):
    r = imap_server.raw_imap(user)
    msg = simple_message("appended")
    uv, uid = append(r, "Drafts", msg, flags="\\Draft \\Seen $Label1",
                     date="05-Jan-2024 10:00:00 +0100")
    assert uid == 1
    sel = r.ok("SELECT Drafts")
    assert any(f"[UIDVALIDITY {uv}]".encode() in l for l in sel)
    assert any(b"$Label1" in l for l in sel if l.startswith(b"* FLAGS"))
    lines = r.ok("FETCH 1 (UID FLAGS INTERNALDATE RFC822.SIZE BODY.PEEK[])")
    line = lines[0]
    flags = re.search(rb"FLAGS \(([^)]*)\)", line).group(1).split()
    # \Recent: this session is the first to select the mailbox (RFC 3501 §2.3.2).
    assert sorted(flags) == sorted([b"\\Draft", b"\\Seen", b"$Label1", b"\\Recent"])
    d = re.search(rb'INTERNALDATE "([^"]+)"', line).group(1).decode()
    when = datetime.datetime.strptime(d, "%d-%b-%Y %H:%M:%S %z")
    assert when == datetime.datetime(2024, 1, 5, 9, 0, tzinfo=datetime.timezone.utc)
    assert f"RFC822.SIZE {len(msg)}".encode() in line
    assert line.endswith(msg + b")")
    # A synchronising literal waits for the continuation.
    uv2, uid2 = append(r, "Drafts", simple_message("sync"), nonsync=False)
    assert (uv2, uid2) == (uv, 2)
    # The selected mailbox hears about its own APPEND.
    r.send(b"x APPEND Drafts {5+}\r\nHi!\r\n\r\n")
    untagged, tagged = r.read_until("x")
    assert b"* 3 EXISTS" in untagged and b"APPENDUID" in tagged
    r.close()


def test_literal_plus_sends_no_continuation(imap_server, user):
    r = imap_server.raw_imap(user)
    msg = simple_message("pipelined")
    # Three pipelined APPENDs in one write: no "+" may appear, three OKs must.
    data = b"".join(b"p%d APPEND INBOX {%d+}\r\n%s\r\n" % (i, len(msg), msg) for i in range(3))
    r.send(data)
    for i in range(3):
        untagged, tagged = r.read_until("p%d" % i)
        assert not any(l.startswith(b"+") for l in untagged)
        assert b"OK [APPENDUID" in tagged
    r.ok("SELECT INBOX")
    assert fetch_uids(r) == [1, 2, 3]
    r.close()


def test_append_via_imaplib_and_errors(imap_server, user):
    c = imap_server.imap(user)
    when = email.utils.parsedate_to_datetime("Tue, 02 Apr 2024 08:30:00 +0000")
    typ, data = c.append("INBOX", "(\\Flagged)", imaplib.Time2Internaldate(when),
                         simple_message("via imaplib"))
    assert typ == "OK" and b"APPENDUID" in data[0]
    typ, data = c.append("NoSuchBox", None, None, simple_message("x"))
    assert typ == "NO" and b"TRYCREATE" in data[0]
    c.logout()
    r = imap_server.raw_imap(user)
    # Bare LF line endings are stored as CRLF; the size agrees with the bytes served.
    uv, uid = append(r, "INBOX", b"Subject: lf\n\nline one\nline two\n")
    r.ok("SELECT INBOX")
    lines = r.ok(f"UID FETCH {uid} (RFC822.SIZE BODY.PEEK[])")
    m = re.search(rb"RFC822.SIZE (\d+) BODY\[\] \{(\d+)\}\r\n", lines[0])
    assert m, lines
    body = lines[0][m.end():m.end() + int(m.group(2))]
    assert int(m.group(1)) == int(m.group(2))
    assert body == b"Subject: lf\r\n\r\nline one\r\nline two\r\n"
    # \Recent cannot be set by a client; an empty message is refused.
    uv, uid = append(r, "INBOX", simple_message("r"), flags="\\Recent")
    # This session shows it \Recent (it saw it first); another one shows what was stored.
    other = imap_server.raw_imap(user)
    other.ok("EXAMINE INBOX")
    assert b"\\Recent" not in other.ok(f"UID FETCH {uid} FLAGS")[0]
    other.close()
    _, tagged = r.cmd("APPEND INBOX {0+}\r\n")
    assert b" NO " in tagged or b" BAD " in tagged
    _, tagged = r.cmd('APPEND INBOX "not a date" {1+}\r\nx')
    assert b" BAD " in tagged
    # LITERAL- (RFC 7888): `{n-}` is non-synchronising too.
    _, tagged = r.cmd(b"APPEND INBOX {5-}\r\nA: b\r\n")
    assert b"OK [APPENDUID" in tagged
    r.close()


def test_copy_with_copyuid(imap_server, user):
    imap_server.fill(user, 3, "c")
    r = imap_server.raw_imap(user, select="INBOX")
    r.ok("STORE 2 +FLAGS ($Important \\Flagged)")
    _, tagged = r.cmd("UID COPY 1:3 Archive")
    m = re.search(rb"OK \[COPYUID (\d+) ([\d:,]+) ([\d:,]+)\]", tagged)
    assert m, tagged
    assert m.group(2) == b"1,2,3" or m.group(2) == b"1:3"
    assert m.group(3) in (b"1,2,3", b"1:3")
    uv_archive = int(m.group(1))
    sel = r.ok("SELECT Archive")
    assert any(f"[UIDVALIDITY {uv_archive}]".encode() in l for l in sel)
    assert b"* 3 EXISTS" in sel
    flags = r.ok("FETCH 2 FLAGS")[0]
    assert b"$Important" in flags and b"\\Flagged" in flags  # flags travel with the copy
    # COPY of seq numbers, and to a missing mailbox.
    r.ok("SELECT INBOX")
    _, tagged = r.cmd("COPY 2 Archive")
    assert b"[COPYUID " in tagged and b" 2 4]" in tagged
    _, tagged = r.cmd("COPY 1 Nowhere")
    assert b"NO [TRYCREATE]" in tagged
    # COPY into the selected mailbox itself announces the new message.
    untagged, tagged = r.cmd("COPY 1 INBOX")
    assert b"* 4 EXISTS" in untagged and b"COPYUID" in tagged
    r.close()


def test_move(imap_server, user):
    imap_server.fill(user, 4)
    r = imap_server.raw_imap(user, select="INBOX")
    untagged, tagged = r.cmd("MOVE 2:3 Trash")
    assert tagged.split()[1] == b"OK", tagged
    copyuid = [l for l in untagged if l.startswith(b"* OK [COPYUID ")]
    assert copyuid, untagged
    assert re.match(rb"\* OK \[COPYUID \d+ (2:3|2,3) (1:2|1,2)\]", copyuid[0]), copyuid
    expunges = [l for l in untagged if l.endswith(b" EXPUNGE")]
    # Either "3 EXPUNGE, 2 EXPUNGE" or "2 EXPUNGE, 2 EXPUNGE": apply them and compare.
    seqs = [1, 2, 3, 4]
    for l in expunges:
        del seqs[int(l.split()[1]) - 1]
    assert seqs == [1, 4]
    assert untagged.index(copyuid[0]) < untagged.index(expunges[0])
    assert fetch_uids(r) == [1, 4]
    assert fetch_uids(r, "Trash") == [1, 2]
    subjects = b"".join(r.ok("FETCH 1:* BODY.PEEK[HEADER.FIELDS (SUBJECT)]"))
    assert b"m1" in subjects and b"m2" in subjects
    # UID MOVE, MOVE to a missing mailbox, MOVE from a read-only mailbox.
    r.ok("SELECT INBOX")
    untagged, tagged = r.cmd("UID MOVE 4 Archive")
    assert b" OK " in tagged and b"* 2 EXPUNGE" in untagged
    _, tagged = r.cmd("MOVE 1 Nowhere")
    assert b"NO [TRYCREATE]" in tagged
    r.ok("EXAMINE INBOX")
    _, tagged = r.cmd("MOVE 1 Trash")
    assert b" NO " in tagged
    assert fetch_uids(r, "INBOX") == [1]
    r.close()


def test_expunge_and_uid_expunge(imap_server, user):
    imap_server.fill(user, 6, "e")
    r = imap_server.raw_imap(user, select="INBOX")
    r.ok("STORE 2,4,5 +FLAGS.SILENT (\\Deleted)")
    # UID EXPUNGE only removes the named UIDs among the \Deleted ones.
    untagged, tagged = r.cmd("UID EXPUNGE 4:6")
    assert b" OK " in tagged
    seqs = [1, 2, 3, 4, 5, 6]
    # The expunged messages were \Recent here: the new count follows (RFC 3501 §7.3.2).
    assert untagged[-1] == b"* 4 RECENT", untagged
    for l in untagged[:-1]:
        m = re.match(rb"\* (\d+) EXPUNGE$", l)
        assert m, untagged
        del seqs[int(m.group(1)) - 1]
    assert seqs == [1, 2, 3, 6]
    assert fetch_uids(r) == [1, 2, 3, 6]
    untagged = r.ok("EXPUNGE")
    assert untagged == [b"* 2 EXPUNGE", b"* 3 RECENT"]
    assert fetch_uids(r) == [1, 3, 6]
    assert r.ok("EXPUNGE") == []  # nothing left to remove
    # CLOSE expunges silently; UNSELECT does not expunge.
    r.ok("STORE 1 +FLAGS (\\Deleted)")
    untagged = r.ok("UNSELECT")
    assert untagged == []
    assert fetch_uids(r, "INBOX") == [1, 3, 6]
    untagged = r.ok("CLOSE")
    assert untagged == []
    _, tagged = r.cmd("FETCH 1 FLAGS")  # nothing selected after CLOSE
    assert b" BAD " in tagged
    assert fetch_uids(r, "INBOX") == [3, 6]
    r.close()


def test_examine_is_read_only(imap_server, user):
    imap_server.deliver(user)
    r = imap_server.raw_imap(user)
    _, tagged = r.cmd("EXAMINE INBOX")
    assert b"[READ-ONLY]" in tagged
    r.ok("FETCH 1 BODY[]")
    assert b"\\Seen" not in r.ok("FETCH 1 FLAGS")[0]  # BODY[] in EXAMINE does not set \Seen
    _, tagged = r.cmd("STORE 1 +FLAGS (\\Flagged)")
    assert b" NO " in tagged
    _, tagged = r.cmd("EXPUNGE")
    assert b" NO " in tagged
    # Neither CLOSE nor UNSELECT of a read-only mailbox expunges.
    r.ok("SELECT INBOX")
    r.ok("STORE 1 +FLAGS.SILENT (\\Deleted)")
    r.ok("EXAMINE INBOX")
    r.ok("CLOSE")
    _, tagged = r.cmd("SELECT INBOX")
    assert b"[READ-WRITE]" in tagged
    assert fetch_uids(r) == [1]
    r.close()


def test_uids_strictly_ascending_never_reused(imap_server, user):
    r = imap_server.raw_imap(user, select="INBOX")
    uids = []
    for i in range(3):
        uids.append(append(r, "INBOX", simple_message(f"u{i}"))[1])
    r.ok("STORE 1:* +FLAGS.SILENT (\\Deleted)")
    r.ok("EXPUNGE")
    imap_server.deliver(user)
    new = fetch_uids(r)
    assert len(new) == 1 and new[0] > max(uids)
    assert uids == sorted(uids) and len(set(uids)) == 3
    r.close()
