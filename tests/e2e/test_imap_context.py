"""CONTEXT=SEARCH (RFC 5267, issue 20 item 13) across sessions: a live search result is kept
current for changes another session makes — new mail (ADDTO), flag changes (REMOVEFROM and
ADDTO), expunges (REMOVEFROM before the EXPUNGE, in the numbers the client still uses) — until
CANCELUPDATE. One session's transcript is compared with Dovecot's in test_differential_imap.py
(`context_search`)."""

from imap_support import *  # noqa: F401,F403


def test_live_search_follows_other_sessions(imap_server, user):
    for i in range(3):
        imap_server.deliver(user, subject=f"c{i}")
    a = imap_server.raw(user)
    a.ok("SELECT INBOX")
    untagged, tagged = a.cmd("UID SEARCH RETURN (UPDATE ALL) UNSEEN", tag="live")
    assert untagged == [b'* ESEARCH (TAG "live") UID ALL 1:3'], untagged
    a.ok("SEARCH RETURN (UPDATE) UNSEEN")  # a second live search, by sequence number
    b = imap_server.raw(user)
    b.ok("SELECT INBOX")
    b.ok("STORE 2 +FLAGS.SILENT (\\Seen)")
    imap_server.deliver(user, subject="late")
    imap_server.deliver(user, subject="later")
    wait_for(lambda: b"* 5 EXISTS" in b.ok("NOOP"))
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
