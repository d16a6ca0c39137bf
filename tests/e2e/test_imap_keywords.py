"""Keywords are announced before they are shown (RFC 9051 §7.3.5, issue 20 item 3): when a
STORE or an APPEND introduces a keyword, every session with the mailbox selected gets
`* FLAGS (…)` and `* OK [PERMANENTFLAGS (…)]` naming it before any FETCH that carries it, the
session that made the change included. Raw transcripts: the order of the untagged lines
within each command's response is what is checked."""

import re

from imap_support import *  # noqa: F401,F403


def flags_announced(lines):
    """The keywords of the last `* FLAGS (…)` line among `lines`, and its index."""
    found = [(i, l) for i, l in enumerate(lines) if l.startswith(b"* FLAGS (")]
    if not found:
        return None, None
    i, l = found[-1]
    return set(re.match(rb"\* FLAGS \((.*)\)", l).group(1).split()), i


def test_new_keywords_are_announced_to_every_session_before_fetches(imap_server, user):
    a = imap_server.raw(user)
    b = imap_server.raw(user)
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
