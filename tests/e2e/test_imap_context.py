"""CONTEXT=SEARCH (RFC 5267, issue 20 item 13) across sessions: a live search result is kept
current for changes another session makes — new mail (ADDTO), flag changes (REMOVEFROM and
ADDTO), expunges (REMOVEFROM before the EXPUNGE, in the numbers the client still uses) — until
CANCELUPDATE. One session's transcript is compared with Dovecot's in test_differential_imap.py
(`context_search`)."""

from support.clients import RawImap
from support.wait import poll


def test_live_search_follows_other_sessions(imap_server, user):
    imap_server.fill(user, 3, "c")
    a = imap_server.raw_imap(user, select="INBOX")
    untagged, tagged = a.cmd("UID SEARCH RETURN (UPDATE ALL) UNSEEN", tag="live")
    assert untagged == [b'* ESEARCH (TAG "live") UID ALL 1:3'], untagged
    a.ok("SEARCH RETURN (UPDATE) UNSEEN")  # a second live search, by sequence number
    b = imap_server.raw_imap(user, select="INBOX")
    b.ok("STORE 2 +FLAGS.SILENT (\\Seen)")
    imap_server.deliver(user, subject="late")
    imap_server.deliver(user, subject="later")
    poll(lambda: b"* 5 EXISTS" in b.ok("NOOP"))
    lines = a.ok("NOOP")
    assert b'* ESEARCH (TAG "live") UID REMOVEFROM (0 2)' in lines, lines
    # Several messages: one context position, then a sequence set (RFC 5267 §4.3).
    assert b'* ESEARCH (TAG "live") UID ADDTO (0 4:5)' in lines, lines
    b.ok("STORE 1 +FLAGS.SILENT (\\Deleted)")
    b.ok("EXPUNGE")
    lines = a.ok("NOOP")
    # REMOVEFROM comes before the EXPUNGE, so sequence numbers are still the old ones.
    seq_remove = [i for i, l in enumerate(lines) if l.endswith(b"REMOVEFROM (0 1)") and b"UID" not in l]
    expunge = lines.index(b"* 1 EXPUNGE")
    assert seq_remove and seq_remove[0] < expunge, lines
    assert b'* ESEARCH (TAG "live") UID REMOVEFROM (0 1)' in lines, lines
    untagged, tagged = a.cmd('CANCELUPDATE "live"')
    assert b" OK " in tagged
    b.ok("STORE 1 +FLAGS.SILENT (\\Seen)")  # UID 3
    lines = a.ok("NOOP")
    assert not any(b'TAG "live"' in l for l in lines), lines
    _, tagged = a.cmd('CANCELUPDATE "live"')
    assert b" NO " in tagged, tagged
    a.ok("UNSELECT")
    _, tagged = a.cmd('CANCELUPDATE "t3"')
    assert b" BAD " in tagged, tagged  # no mailbox selected
    a.close()
    b.close()


def esearch(r: RawImap, tag: str, command: str) -> bytes:
    """The one untagged response of a command sent with `tag`."""
    untagged, tagged = r.cmd(command, tag=tag)
    assert len(untagged) == 1 and tagged.startswith(tag.encode() + b" OK"), (untagged, tagged)
    return untagged[0]


def dated(subject: str, day: int) -> bytes:
    return (f"From: a@remote.test\r\nTo: x@example.org\r\nSubject: {subject}\r\n"
            f"Date: {day:02d} Jan 2024 10:00:00 +0000\r\nMessage-ID: <{subject}@t>\r\n\r\nbody\r\n").encode()


def test_rfc_5267_examples_as_transcripts(imap_server, user):
    """The RFC's own examples (§3.3, §4.2, §4.3, §4.3.1, §4.3.3-5, §4.4), on a small mailbox:
    messages dated out of order, so that REVERSE DATE is not mailbox order."""
    r = imap_server.raw_imap(user)
    for subject, day, flags in (("m1", 3, ""), ("m2", 1, "$Junk"), ("m3", 5, ""), ("m4", 2, ""),
                                ("m5", 4, "\\Deleted")):
        m = dated(subject, day)
        f = f"({flags}) " if flags else ""
        r.ok(f"APPEND INBOX {f}{{{len(m)}+}}\r\n".encode() + m)
    r.ok("SELECT INBOX")
    # §4.2: CONTEXT is a hint; the other options are answered.
    assert esearch(r, "A01", "SEARCH RETURN (CONTEXT COUNT) UNDELETED UNKEYWORD $Junk") == b'* ESEARCH (TAG "A01") COUNT 3'
    # §3.3: RETURN () is ALL, in sort order, ranges only where they ascend.
    assert esearch(r, "E01", "UID SORT RETURN () (REVERSE DATE) UTF-8 UNDELETED UNKEYWORD $Junk") == b'* ESEARCH (TAG "E01") UID ALL 3,1,4'
    # §4.4: PARTIAL over the result, past its end, and NIL beyond it.
    assert esearch(r, "A02", "UID SEARCH RETURN (PARTIAL 2:10) UNDELETED") == b'* ESEARCH (TAG "A02") UID PARTIAL (2:10 2:4)'
    assert esearch(r, "A04", "UID SEARCH RETURN (PARTIAL 5:9) UNDELETED") == b'* ESEARCH (TAG "A04") UID PARTIAL (5:9 NIL)'
    assert esearch(r, "A05", "UID SORT RETURN (PARTIAL 1:2) (DATE) UTF-8 ALL") == b'* ESEARCH (TAG "A05") UID PARTIAL (1:2 2,4)'
    _, tagged = r.cmd("SEARCH RETURN (ALL PARTIAL 1:2) ALL", tag="A06")
    assert tagged.startswith(b"A06 BAD"), tagged  # one of ALL and PARTIAL
    # §4.3: a live result, and the tag cannot be reused while it lives.
    assert esearch(r, "B01", "UID SEARCH RETURN (UPDATE COUNT) DELETED KEYWORD $Junk") == b'* ESEARCH (TAG "B01") UID COUNT 0'
    _, tagged = r.cmd("SORT RETURN (UPDATE) (DATE) UTF-8 FLAGGED", tag="B01")
    assert tagged.startswith(b"B01 BAD"), tagged
    # A sorted live result: positions in date order (m2, m4, m1, m3).
    assert esearch(r, "S01", "UID SORT RETURN (UPDATE ALL) (DATE) UTF-8 UNDELETED") == b'* ESEARCH (TAG "S01") UID ALL 2,4,1,3'
    # §4.3.3: flags change in another session; the update follows the FETCH.
    other = imap_server.raw_imap(user, select="INBOX")
    other.ok("STORE 2 +FLAGS.SILENT (\\Deleted)")        # m2: now in B01, out of S01
    m6 = dated("m6", 2)
    other.ok(f"APPEND INBOX {{{len(m6)}+}}\r\n".encode() + m6)  # m6: UID 6, 2 Jan
    lines = r.ok("NOOP")
    assert b'* ESEARCH (TAG "B01") UID ADDTO (0 2)' in lines, lines
    assert b'* ESEARCH (TAG "S01") UID REMOVEFROM (1 2)' in lines, lines
    # m6 has the date of m4 and a higher sequence number: after it, at position 2.
    assert b'* ESEARCH (TAG "S01") UID ADDTO (2 6)' in lines, lines
    assert lines.index(b"* 6 EXISTS") < lines.index(b'* ESEARCH (TAG "S01") UID ADDTO (2 6)')
    # §4.3.4: an expunge is announced by REMOVEFROM before the EXPUNGE.
    other.ok("EXPUNGE")
    lines = r.ok("NOOP")
    removes = [i for i, l in enumerate(lines) if b'(TAG "B01") UID REMOVEFROM (0 2)' in l]
    assert removes and removes[0] < lines.index(b"* 2 EXPUNGE"), lines
    # §4.3.5
    _, tagged = r.cmd('CANCELUPDATE "B01" "S01"', tag="B04")
    assert tagged.startswith(b"B04 OK"), tagged
    # §4.3.1: past the limit, NO [NOUPDATE] and the other options still answered.
    for i in range(16):
        r.ok(f"SEARCH RETURN (UPDATE) UID {i + 1}")
    untagged, tagged = r.cmd("UID SORT RETURN (UPDATE COUNT) (DATE) UTF-8 ALL", tag="B02")
    assert untagged == [b'* ESEARCH (TAG "B02") UID COUNT 4',  # m1, m3, m4, m6
                        b'* NO [NOUPDATE "B02"] Too many contexts'], untagged
    assert tagged.startswith(b"B02 OK"), tagged
    r.close()
    other.close()


def test_sort_and_thread_with_imaplib(imap_server, user):
    """Python's imaplib (a client we did not write) issues SORT, UID SORT and THREAD and
    parses the answers."""
    for subject, day, refs in (("Plans", 3, ""), ("Re: Plans", 4, "<Plans@t>"),
                               ("Another", 1, ""), ("Re: Plans", 5, "<Re: Plans@t>")):
        m = dated(subject, day)
        if refs:
            m = m.replace(b"\r\n\r\n", f"\r\nReferences: {refs}\r\n\r\n".encode(), 1)
        c = imap_server.imap(user)
        typ, _ = c.append("INBOX", None, None, m)
        assert typ == "OK"
        c.logout()
    c = imap_server.imap(user)
    c.select("INBOX")
    assert c.sort("(SUBJECT)", "UTF-8", "ALL") == ("OK", [b"3 1 2 4"])
    assert c.sort("(REVERSE DATE)", "UTF-8", "ALL") == ("OK", [b"4 2 1 3"])
    typ, data = c.uid("SORT", "(DATE)", "UTF-8", "ALL")
    assert (typ, data) == ("OK", [b"3 1 2 4"])
    assert c.thread("ORDEREDSUBJECT", "UTF-8", "ALL") == ("OK", [b"(3)(1 (2)(4))"])
    # 4 refers to 2, which refers to 1: one chain.
    assert c.thread("REFERENCES", "UTF-8", "ALL") == ("OK", [b"(3)(1 2 4)"])
    c.logout()
