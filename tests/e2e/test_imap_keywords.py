"""Keywords are announced before they are shown (RFC 9051 §7.3.5, issue 20 item 3): when a
STORE or an APPEND introduces a keyword, every session with the mailbox selected gets
`* FLAGS (…)` and `* OK [PERMANENTFLAGS (…)]` naming it before any FETCH that carries it, the
session that made the change included. RawImap transcripts: the order of the untagged lines
within each command's response is what is checked."""

import re

from support.clients import RawImap
from support.mail import simple_message


def flags_announced(lines):
    """The keywords of the last `* FLAGS (…)` line among `lines`, and its index."""
    found = [(i, l) for i, l in enumerate(lines) if l.startswith(b"* FLAGS (")]
    if not found:
        return None, None
    i, l = found[-1]
    return set(re.match(rb"\* FLAGS \((.*)\)", l).group(1).split()), i


def test_new_keywords_are_announced_to_every_session_before_fetches(imap_server, user):
    a = imap_server.raw_imap(user)
    b = imap_server.raw_imap(user)
    a.ok(b"APPEND INBOX {%d+}\r\n" % len(simple_message()) + simple_message())
    untagged = a.ok("SELECT INBOX")
    before, _ = flags_announced(untagged)
    assert b"$Important" not in before
    b.ok("SELECT INBOX")
    # B's own STORE: FLAGS first, then the FETCH that shows the keyword.
    untagged = b.ok("STORE 1 +FLAGS ($Important)")
    kw, at = flags_announced(untagged)
    assert kw is not None and b"$Important" in kw, untagged
    fetch = next(i for i, l in enumerate(untagged) if b" FETCH " in l)
    assert at < fetch, untagged
    assert any(l.startswith(b"* OK [PERMANENTFLAGS (") and b"$Important" in l for l in untagged[:fetch])
    # A learns of it at its next command, also before the FETCH.
    untagged = a.ok("NOOP")
    kw, at = flags_announced(untagged)
    assert kw is not None and b"$Important" in kw, untagged
    fetch = next(i for i, l in enumerate(untagged) if b" FETCH " in l and b"$Important" in l)
    assert at < fetch, untagged
    # An APPEND with a keyword: announced before the new message could be fetched.
    msg = simple_message(subject="kw")
    b.ok(b"APPEND INBOX ($Project) {%d+}\r\n" % len(msg) + msg)
    untagged = a.ok("NOOP")
    kw, _ = flags_announced(untagged)
    assert kw is not None and b"$Project" in kw, untagged
    lines = a.ok("FETCH 2 FLAGS")
    assert b"$Project" in lines[0]
    # Known keywords are not announced again.
    untagged = b.ok("STORE 1 -FLAGS ($Important)")
    untagged = b.ok("STORE 1 +FLAGS ($Important)")
    assert flags_announced(untagged) == (None, None), untagged
    a.close()
    b.close()


def test_condstore_is_enabled_by_modseq_commands_and_esearch_min_max_modseq(imap_server, user):
    """RFC 7162 §3.1: FETCH … MODSEQ enables CONDSTORE (the client is told HIGHESTMODSEQ once,
    later untagged FETCHes carry MODSEQ); §3.1.5: ESEARCH MIN/MAX with a MODSEQ key answer the
    MODSEQ of the messages returned, not the highest of all matches."""
    a = imap_server.raw_imap(user)
    b = imap_server.raw_imap(user)
    for i in range(3):
        msg = simple_message(subject=f"m{i}")
        a.ok(b"APPEND INBOX {%d+}\r\n" % len(msg) + msg)
    a.ok("SELECT INBOX")
    b.ok("SELECT INBOX")
    # Give message 3 the highest MODSEQ, then message 1 a lower one than that... in order.
    b.ok("STORE 1 +FLAGS (\\Flagged)")
    b.ok("STORE 3 +FLAGS (\\Flagged)")
    untagged = a.ok("FETCH 1 (MODSEQ)")
    assert any(l.startswith(b"* OK [HIGHESTMODSEQ ") for l in untagged), untagged
    assert not any(l.startswith(b"* OK [HIGHESTMODSEQ ") for l in a.ok("FETCH 1 (MODSEQ)"))
    # Another session's change now arrives with MODSEQ.
    b.ok("STORE 2 +FLAGS (\\Seen)")
    untagged = a.ok("NOOP")
    assert any(b" FETCH " in l and b"MODSEQ" in l for l in untagged), untagged
    modseqs = {}
    for line in a.ok("FETCH 1:3 (MODSEQ)"):
        m = re.match(rb"\* (\d+) FETCH \(.*MODSEQ \((\d+)\)", line)
        modseqs[int(m.group(1))] = int(m.group(2))
    lines = a.ok("SEARCH RETURN (MIN) FLAGGED MODSEQ 1")
    assert lines[0].endswith(b"MIN 1 MODSEQ %d" % modseqs[1]), (lines, modseqs)
    lines = a.ok("SEARCH RETURN (MAX) FLAGGED MODSEQ 1")
    assert lines[0].endswith(b"MAX 3 MODSEQ %d" % modseqs[3]), (lines, modseqs)
    lines = a.ok("SEARCH RETURN (ALL) MODSEQ 1")
    assert lines[0].endswith(b"MODSEQ %d" % max(modseqs.values())), (lines, modseqs)
    a.close()
    b.close()
