"""SEARCH over real sockets: header keys, BODY/TEXT (decoded), flags and keywords, internal and
sent dates, sizes, sequence and UID sets, OR/NOT/parentheses, CHARSET, SEARCHRES `$`, and
ESEARCH RETURN (MIN MAX COUNT ALL SAVE)."""

import base64
import re

import pytest


def msg(frm, subject, date, body, to="bob@example.org", extra=""):
    return (f"From: {frm}\r\nTo: {to}\r\nSubject: {subject}\r\nDate: {date}\r\n"
            f"Message-ID: <{abs(hash(subject))}@t>\r\n{extra}\r\n{body}").encode()


ZEBRA = base64.encodebytes(("Zebra crossing ahead.\n" + "filler line\n" * 300).encode()).decode()
MESSAGES = [
    # (message, flags, internal date)
    (msg("Alice <alice@a.test>", "Quarterly report", "Mon, 01 Jan 2024 09:00:00 +0000",
         "The budget numbers are attached.\r\n",
         extra="Cc: carol@c.test\r\nX-Priority: 1\r\n"),
     "\\Seen \\Flagged", "10-Jan-2024 12:00:00 +0000"),
    (msg("bob@b.test", "Lunch?", "Thu, 15 Feb 2024 11:00:00 +0000", "Pizza or sushi?\r\n"),
     "\\Answered $Work", "20-Feb-2024 12:00:00 +0000"),
    (msg('"Dana" <dana@d.test>', "=?UTF-8?B?R3LDvMOfZSBhdXMgS8O2bG4=?=",
         "Sun, 10 Mar 2024 08:00:00 +0000", ZEBRA.replace("\n", "\r\n"),
         extra="MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
               "Content-Transfer-Encoding: base64\r\n"),
     "\\Draft", "01-Mar-2024 12:00:00 +0000"),
    (msg("alice@a.test", "Re: Quarterly report", "Fri, 01 Mar 2024 10:00:00 +0000",
         "<html><body><p>Budget approved</p></body></html>\r\n",
         extra="MIME-Version: 1.0\r\nContent-Type: text/html\r\n"),
     "\\Deleted", "01-Mar-2024 18:00:00 +0000"),
]


@pytest.fixture(scope="module")
def searchbox(imap_server):
    """A user whose INBOX holds MESSAGES (UIDs 1-4); returns (server, user)."""
    u = imap_server.add_user()
    r = imap_server.raw_imap(u)
    for m, flags, date in MESSAGES:
        r.send(f'a APPEND INBOX ({flags}) "{date}" {{{len(m)}+}}\r\n'.encode() + m + b"\r\n")
        _, tagged = r.read_until("a")
        assert b"OK" in tagged, tagged
    r.close()
    return imap_server, u


@pytest.fixture
def r(searchbox):
    srv, u = searchbox
    c = srv.raw_imap(u)
    c.ok("EXAMINE INBOX")
    yield c
    c.close()


def search(r, criteria, uid=False):
    untagged = r.ok(("UID " if uid else "") + "SEARCH " + criteria)
    lines = [l for l in untagged if l.startswith(b"* SEARCH")]
    assert len(lines) == 1, untagged
    return [int(x) for x in lines[0].split()[2:]]


@pytest.mark.parametrize("criteria,expected", [
    ("ALL", [1, 2, 3, 4]),
    ("FROM alice", [1, 4]),
    ("FROM Dana", [3]),
    ("TO bob", [1, 2, 3, 4]),
    ("CC carol", [1]),
    ("BCC carol", []),
    ("SUBJECT quarterly", [1, 4]),
    ('SUBJECT "lunch?"', [2]),
    ("HEADER X-Priority 1", [1]),
    ('HEADER X-Priority ""', [1]),
    ('HEADER Message-ID "@t>"', [1, 2, 3, 4]),
    ("BODY budget", [1, 4]),
    ("BODY zebra", [3]),  # base64 body is searched decoded
    ("BODY quarterly", []),  # BODY does not look at headers
    ("TEXT quarterly", [1, 4]),
    ("TEXT pizza", [2]),
    ("SEEN", [1]),
    ("UNSEEN", [2, 3, 4]),
    ("FLAGGED", [1]),
    ("UNFLAGGED", [2, 3, 4]),
    ("ANSWERED", [2]),
    ("UNANSWERED", [1, 3, 4]),
    ("DELETED", [4]),
    ("UNDELETED", [1, 2, 3]),
    ("DRAFT", [3]),
    ("UNDRAFT", [1, 2, 4]),
    ("KEYWORD $Work", [2]),
    ("UNKEYWORD $Work", [1, 3, 4]),
    ("RECENT", [1, 2, 3, 4]),  # EXAMINE only: no session has taken them (RFC 3501 §2.3.2)
    ("NEW", [2, 3, 4]),  # RECENT UNSEEN
    ("OLD", []),  # NOT RECENT
    ("BEFORE 1-Feb-2024", [1]),
    ("ON 20-Feb-2024", [2]),
    ("ON 1-Mar-2024", [3, 4]),
    ("SINCE 1-Mar-2024", [3, 4]),
    ("SINCE 21-Feb-2024 BEFORE 2-Mar-2024", [3, 4]),
    ("SENTBEFORE 1-Feb-2024", [1]),
    ("SENTON 15-Feb-2024", [2]),
    ("SENTSINCE 1-Mar-2024", [3, 4]),
    ("SENTSINCE 2-Mar-2024", [3]),
    ("LARGER 3000", [3]),
    ("SMALLER 3000", [1, 2, 4]),
    ("1,3", [1, 3]),
    ("2:*", [2, 3, 4]),
    ("*", [4]),
    ("*:3", [3, 4]),
    ("UID 2:3", [2, 3]),
    ("UID 3:*", [3, 4]),
    ("UID 99", []),
    ("NOT SEEN", [2, 3, 4]),
    ("NOT NOT SEEN", [1]),
    ("OR FROM bob DRAFT", [2, 3]),
    ("OR (FROM alice SEEN) DRAFT", [1, 3]),
    ("OR OR SEEN DRAFT ANSWERED", [1, 2, 3]),
    ("FROM alice NOT DELETED", [1]),
    ("(FROM alice) (SUBJECT report) UNDELETED", [1]),
    ("NOT (OR SEEN DELETED)", [2, 3]),
])
def test_search_keys(r, criteria, expected):
    assert search(r, criteria) == expected


def test_uid_search_returns_uids(searchbox):
    srv, u = searchbox
    c = srv.raw_imap(u)
    c.ok('CREATE "SearchCopy"')
    c.ok("SELECT INBOX")
    c.ok("COPY 1:3 SearchCopy")  # UIDs 1:3 there, sequence numbers 1:3
    c.ok("SELECT SearchCopy")
    c.ok("STORE 1 +FLAGS (\\Deleted)")
    c.ok("EXPUNGE")  # now seq 1,2 = UIDs 2,3
    assert search(c, "ALL") == [1, 2]
    assert search(c, "ALL", uid=True) == [2, 3]
    assert search(c, "UID 3", uid=False) == [2]
    assert search(c, "FROM dana", uid=True) == [3]
    assert search(c, "FROM dana") == [2]
    c.close()


def test_search_charset(r):
    word = "Grüße".encode()
    untagged, tagged = r.cmd(b"SEARCH CHARSET UTF-8 SUBJECT {%d+}\r\n%s" % (len(word), word))
    assert b" OK " in tagged, tagged
    assert untagged == [b"* SEARCH 3"]
    untagged, tagged = r.cmd(b"SEARCH CHARSET US-ASCII SUBJECT lunch")
    assert untagged == [b"* SEARCH 2"]
    _, tagged = r.cmd("SEARCH CHARSET KOI8-R SUBJECT x")
    assert re.match(rb"t\d+ NO \[BADCHARSET", tagged), tagged


def test_search_errors_keep_session(r):
    for bad in ("SEARCH", "SEARCH BOGUS", "SEARCH BEFORE 32-Foo-2024", "SEARCH OR SEEN",
                "SEARCH (SEEN", "SEARCH LARGER x", "SEARCH UID"):
        _, tagged = r.cmd(bad)
        assert b" BAD " in tagged, (bad, tagged)
    assert search(r, "SEEN") == [1]


def test_esearch_return_options(r):
    untagged, _ = r.cmd("SEARCH RETURN (MIN MAX COUNT ALL) UNDELETED", tag="E1")
    assert untagged == [b'* ESEARCH (TAG "E1") MIN 1 MAX 3 COUNT 3 ALL 1:3'], untagged
    untagged, _ = r.cmd("UID SEARCH RETURN (COUNT) ALL", tag="E2")
    assert untagged == [b'* ESEARCH (TAG "E2") UID COUNT 4'], untagged
    untagged, _ = r.cmd("SEARCH RETURN () OR SEEN DRAFT", tag="E3")
    assert untagged == [b'* ESEARCH (TAG "E3") ALL 1,3'], untagged
    untagged, _ = r.cmd("SEARCH RETURN (MIN MAX) UID 99", tag="E4")
    assert untagged == [b'* ESEARCH (TAG "E4")'], untagged
    untagged, _ = r.cmd("SEARCH RETURN (COUNT) UID 99", tag="E5")
    assert untagged == [b'* ESEARCH (TAG "E5") COUNT 0'], untagged
    _, tagged = r.cmd("SEARCH RETURN (BOGUS) ALL")
    assert b" BAD " in tagged


def test_searchres_dollar(r):
    # SAVE alone: no untagged answer; $ then names the saved messages (RFC 5182).
    untagged = r.ok("SEARCH RETURN (SAVE) FROM alice")
    assert untagged == []
    assert search(r, "$") == [1, 4]
    assert search(r, "UID $", uid=True) == [1, 4]
    assert search(r, "NOT $") == [2, 3]
    assert search(r, "$ SEEN") == [1]
    lines = r.ok("FETCH $ (UID)")
    assert [int(re.search(rb"UID (\d+)", l).group(1)) for l in lines] == [1, 4]
    lines = r.ok("UID FETCH $ (FLAGS)")
    assert len(lines) == 2
    # SAVE with other options answers them as well.
    untagged, _ = r.cmd("UID SEARCH RETURN (SAVE COUNT) DRAFT", tag="S2")
    assert untagged == [b'* ESEARCH (TAG "S2") UID COUNT 1']
    assert search(r, "$") == [3]
    # SAVE with MIN saves only the minimum (RFC 5182 section 2.4).
    untagged, _ = r.cmd("SEARCH RETURN (SAVE MIN) UNSEEN", tag="S3")
    assert untagged == [b'* ESEARCH (TAG "S3") MIN 2']
    assert search(r, "$") == [2]
    # A failed SEARCH with SAVE empties $; a fresh SELECT empties it too.
    r.ok("SEARCH RETURN (SAVE) UID 99")
    assert search(r, "$") == []
    r.ok("SEARCH RETURN (SAVE) ALL")
    r.ok("EXAMINE INBOX")
    assert search(r, "$") == []


def test_search_sees_new_and_changed_messages(imap_server):
    u = imap_server.add_user()
    c = imap_server.raw_imap(u, select="INBOX")
    imap_server.deliver(u, subject="fresh", body="needle in a haystack\n")
    untagged = c.ok("SEARCH BODY needle")
    assert b"* 1 EXISTS" in untagged  # the new message is announced before it is counted
    assert [l for l in untagged if l.startswith(b"* SEARCH")] == [b"* SEARCH 1"]
    c.close()
