"""Message sequence numbers beyond the mailbox (RFC 9051 §9, `seq-number`: "The server should
respond with a tagged BAD response to a command that uses a message sequence number greater
than the number of messages in the selected mailbox. This includes "*" if the selected mailbox
is empty."), as raw transcripts; the UID variants never fail on UIDs that do not exist, and in
SEARCH a sequence set is a key that simply matches nothing there (RFC 9051 errata 6505, as
Dovecot answers)."""

import imaplib

import pytest

from support.mail import simple_message


def append(r, mailbox: str, subject: str):
    msg = simple_message(subject=subject)
    r.ok(b"APPEND %s {%d+}\r\n" % (mailbox.encode(), len(msg)) + msg)


def bad(r, command: str) -> bytes:
    untagged, tagged = r.cmd(command)
    assert tagged.split(b" ")[1] == b"BAD", (command, untagged, tagged)
    assert not [u for u in untagged if b" FETCH " in u or u.startswith(b"* SEARCH ")], untagged
    return tagged


def test_sequence_numbers_beyond_the_mailbox_are_bad(imap_server, user):
    r = imap_server.raw_imap(user)
    r.ok("CREATE Other")
    for i in range(3):
        append(r, "INBOX", f"m{i + 1}")
    r.ok("SELECT INBOX")

    assert b"4" in bad(r, "FETCH 4 FLAGS")  # names the offending number
    bad(r, "FETCH 1:4 FLAGS")
    bad(r, "FETCH 2,7:* FLAGS")
    bad(r, "STORE 5 +FLAGS (\\Seen)")
    bad(r, "STORE 1:9 +FLAGS (\\Seen)")  # not applied to 1:3 either
    bad(r, "COPY 2,9 Other")
    bad(r, "MOVE 9 Other")
    assert r.ok("SEARCH 4") == [b"* SEARCH"]
    assert r.ok("SEARCH 1000") == [b"* SEARCH"]
    assert r.ok("SEARCH NOT 7") == [b"* SEARCH 1 2 3"]
    assert r.ok("SEARCH OR 1 12") == [b"* SEARCH 1"]
    assert r.ok("SEARCH OR 1 12 SEEN") == [b"* SEARCH"]  # and none is \Seen
    # A sequence-set key stays sequence numbers under UID SEARCH.
    assert r.ok("UID SEARCH 4") == [b"* SEARCH"]

    # Nothing was changed by the refused commands; in-range sets work.
    lines = r.ok("FETCH 1:* FLAGS")
    assert len(lines) == 3 and not any(b"\\Seen" in l for l in lines), lines
    assert len(r.ok("FETCH *:2 (UID)")) == 2
    assert r.ok("SEARCH 1:3") == [b"* SEARCH 1 2 3"]
    status = r.ok("STATUS Other (MESSAGES)")
    assert status == [b'* STATUS "Other" (MESSAGES 0)'], status

    # UIDs that do not exist are not an error: the command just names no message.
    untagged, tagged = r.cmd("UID FETCH 999 FLAGS")
    assert b" OK " in tagged and untagged == [], (untagged, tagged)
    untagged, tagged = r.cmd("UID STORE 500:600 +FLAGS (\\Flagged)")
    assert b" OK " in tagged and untagged == [], (untagged, tagged)
    untagged, tagged = r.cmd("UID COPY 999 Other")
    assert b" OK " in tagged, tagged
    assert r.ok("UID SEARCH UID 999") == [b"* SEARCH"]
    r.ok("NOOP")  # the session goes on
    r.close()


def test_star_in_an_empty_mailbox_is_bad_but_not_for_uids(imap_server, user):
    r = imap_server.raw_imap(user)
    r.ok("CREATE Empty")
    r.ok("SELECT Empty")
    bad(r, "FETCH * FLAGS")
    bad(r, "FETCH 1:* FLAGS")
    bad(r, "STORE * +FLAGS (\\Seen)")
    assert r.ok("SEARCH 1:*") == [b"* SEARCH"]
    untagged, tagged = r.cmd("UID FETCH 1:* FLAGS")
    assert b" OK " in tagged and untagged == [], (untagged, tagged)
    assert r.ok("SEARCH ALL") == [b"* SEARCH"]
    # Once a message arrives (announced by EXISTS), `*` names it.
    append(r, "Empty", "now one")
    lines = r.ok("FETCH * (UID)")
    assert lines == [b"* 1 FETCH (UID 1)"], lines
    r.close()


def test_range_is_the_sessions_view_while_an_expunge_is_held_back(imap_server, user):
    """Another session expunges message 3: until this session is told (EXPUNGE is not sent
    during FETCH, RFC 9051 §7.5.1), 3 is still a valid number here; after NOOP it is not."""
    a = imap_server.raw_imap(user)
    for i in range(3):
        append(a, "INBOX", f"h{i + 1}")
    a.ok("SELECT INBOX")
    b = imap_server.raw_imap(user, select="INBOX")
    b.ok("STORE 3 +FLAGS.SILENT (\\Deleted)")
    b.ok("EXPUNGE")
    b.close()
    untagged, tagged = a.cmd("FETCH 3 (UID)")
    assert b" OK " in tagged, (untagged, tagged)
    assert not any(b"EXPUNGE" in u for u in untagged), untagged
    assert b"* 3 EXPUNGE" in a.ok("NOOP")
    bad(a, "FETCH 3 (UID)")
    a.close()


def test_imaplib_sees_the_error(imap_server, user):
    c = imap_server.imap(user)
    c.append("INBOX", None, None, simple_message(subject="only"))
    c.select("INBOX")
    with pytest.raises(imaplib.IMAP4.error, match="sequence number 2"):
        c.fetch("2", "(FLAGS)")
    typ, data = c.fetch("1", "(FLAGS)")
    assert typ == "OK" and data[0].startswith(b"1 (FLAGS"), data
    c.logout()
