"""Differential IMAP tests: the same scripted sessions against Dovecot (Debian's package, a
private instance started here) and against Corvus, responses compared after normalizing what
may legitimately differ (issue 20, "An oracle").

Each transcript runs as a fresh user on both servers. For every command the comparison covers
the tagged status (OK/NO/BAD), the response code's name, and the untagged responses as a
multiset: FETCH items as a map (their order is free), mailbox lists as sets, and the values
that differ by design dropped (CAPABILITY lists, greeting and status texts, UIDVALIDITY,
MODSEQ numbers, ID, ENABLED). Every remaining difference is either a Corvus bug, fixed, or
listed in `differential_allow.txt` with its reason (an RFC section, or a choice both readings
of the RFC allow)."""

from __future__ import annotations

import pathlib
import re

import pytest

from support import dovecot
from support.clients import RawImap
from support.server import IMAP, PASSWORD, Server

ALLOW_FILE = pathlib.Path(__file__).with_name("differential_allow.txt")

pytestmark = pytest.mark.skipif(not dovecot.available(), reason="dovecot is not installed")


# --- the transcripts --------------------------------------------------------------------------

M1 = b"From: Ann <ann@example.net>\r\nTo: bob@example.org\r\nSubject: first message\r\nDate: Mon, 1 Jan 2024 23:30:00 -0500\r\nMessage-ID: <m1@example.net>\r\n\r\nHello world, first body.\r\n"
M2 = b"From: Carl <carl@example.com>\r\nTo: ann@example.net\r\nCc: dora@example.org\r\nSubject: Re: first message\r\nDate: Tue, 2 Jan 2024 10:00:00 +0000\r\nMessage-ID: <m2@example.com>\r\n\r\nA reply with more words in the body.\r\n"
M3 = b"From: ann@example.net\r\nSubject: third\r\nDate: Wed, 3 Jan 2024 08:00:00 +0200\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=xx\r\n\r\n--xx\r\nContent-Type: text/plain\r\n\r\npart one\r\n--xx\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\npart two=0D=0A\r\n--xx--\r\n"


def append(box: str, msg: bytes, flags: str = "", date: str = '"05-Jan-2024 12:00:00 +0000"') -> bytes:
    f = f"({flags}) " if flags else ""
    return f"APPEND {box} {f}{date} {{{len(msg)}+}}\r\n".encode() + msg


SETUP = [append("INBOX", M1, "\\Seen"), append("INBOX", M2, "\\Flagged $Work"), append("INBOX", M3)]

M4 = (b"From: a@example.net\r\nSubject: qp and rfc822\r\nMIME-Version: 1.0\r\n"
      b"Content-Type: multipart/mixed; boundary=b1\r\n\r\n--b1\r\n"
      b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
      b"soft line=\r\n break, caf=C3=A9=\r\n\r\nand a hard one=0D=0A\r\npadded   \r\nsoft padded=  \r\nend\r\n--b1\r\n"
      b"Content-Type: message/rfc822\r\n\r\nFrom: inner@example.org\r\nSubject: inner\r\n\r\ninner body\r\n"
      b"--b1\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n"
      b"AAECAwQF\r\n--b1--\r\n")

def threaded(n: int, subject: str, frm: str, date: str, refs: str = "", size: int = 0) -> bytes:
    """A message for the SORT/THREAD transcripts: Message-ID <tN@x>, optional References."""
    head = (f"From: {frm}\r\nTo: list{n % 3}@example.org\r\nSubject: {subject}\r\n"
            f"Date: {date}\r\nMessage-ID: <t{n}@x>\r\n")
    if refs:
        head += f"References: {refs}\r\n"
    return (head + "\r\n" + "body " + "x" * size + "\r\n").encode()


THREADED = [
    threaded(1, "Plans", "Zed <zed@example.net>", "Mon, 1 Jan 2024 10:00:00 +0000", size=50),
    threaded(2, "Re: Plans", "amy@example.net", "Mon, 1 Jan 2024 11:00:00 +0000", "<t1@x>"),
    threaded(3, "Other topic", "Bob <bob@example.net>", "Sun, 31 Dec 2023 09:00:00 +0000", size=5),
    threaded(4, "RE: [list] re: Plans (fwd)", "carl@example.net", "Tue, 2 Jan 2024 08:00:00 -0500",
             "<t1@x> <t2@x>"),
    threaded(5, "Fwd: Other topic", "dora@example.net", "Tue, 2 Jan 2024 12:00:00 +0100", size=20),
    threaded(6, "lost parent", "eve@example.net", "Wed, 3 Jan 2024 10:00:00 +0000", "<missing@x>"),
    threaded(7, "Re: lost parent", "fay@example.net", "Wed, 3 Jan 2024 09:00:00 +0000",
             "<missing@x>"),
    threaded(8, "=?UTF-8?Q?=C3=A9t=C3=A9?=", "gil@example.net", "Thu, 4 Jan 2024 10:00:00 +0000"),
]

def catenate(box: str, *pieces) -> bytes:
    """APPEND box CATENATE (…): str pieces are URLs, bytes pieces TEXT literals."""
    out = f"APPEND {box} CATENATE (".encode()
    for i, p in enumerate(pieces):
        if i:
            out += b" "
        if isinstance(p, str):
            out += f'URL "{p}"'.encode()
        else:
            out += b"TEXT {%d+}\r\n" % len(p) + p
    return out + b")"


TRANSCRIPTS: dict[str, list] = {
    "context_search": SETUP + [append("INBOX", M1)] + [
        "SELECT INBOX",
        "SEARCH RETURN (PARTIAL 1:2) ALL",
        "SEARCH RETURN (PARTIAL 2:10 COUNT) ALL",
        "UID SEARCH RETURN (PARTIAL 3:3) ALL",
        "SEARCH RETURN (PARTIAL 9:10) ALL",
        "SEARCH RETURN (PARTIAL 0:1) ALL",
        "SEARCH RETURN (PARTIAL) ALL",
        "SEARCH RETURN (CONTEXT MIN) ALL",
        "UID SEARCH RETURN (UPDATE COUNT) UNSEEN",
        "SEARCH RETURN (UPDATE) UNFLAGGED",
        "STORE 3 +FLAGS (\\Seen)",
        "STORE 1 +FLAGS.SILENT (\\Flagged)",
        append("INBOX", M2),
        "NOOP",
        "STORE 2 +FLAGS (\\Deleted)",
        "EXPUNGE",
        "CANCELUPDATE \"t14\"",
        "STORE 4 -FLAGS (\\Seen)",
        "CANCELUPDATE \"nope\"",
        "STORE 1 -FLAGS (\\Flagged)",
    ],
    "multiappend_and_catenate": SETUP + [
        # MULTIAPPEND (RFC 3502): several messages, one APPENDUID with a UID set.
        append("INBOX", M1, "\\Seen") + b" (\\Flagged) " + b"{%d+}\r\n" % len(M2) + M2,
        # All or none: the second message's mailbox date is bad, so neither is stored.
        append("INBOX", M1) + b' "31-Foo-2024 00:00:00 +0000" {3+}\r\nabc',
        "SELECT INBOX",
        "FETCH 1:* (FLAGS RFC822.SIZE)",
        # CATENATE (RFC 4469): a header from one message, a new body, a part of another.
        catenate("Drafts", "/INBOX/;UID=2/;SECTION=HEADER", b"New body text\r\n"),
        catenate("Drafts", "/INBOX/;UID=3/;SECTION=1", b"\r\n-- \r\nsig\r\n"),
        catenate("Drafts", b"Subject: pieces\r\n\r\n", "/INBOX/;UID=1/;SECTION=TEXT/;PARTIAL=0.11"),
        catenate("Drafts", b"Subject: pieces\r\n\r\n", "/INBOX/;UID=1/;SECTION=TEXT;PARTIAL=0.11"),
        catenate("Drafts", ";UID=2/;SECTION=HEADER.FIELDS%20(SUBJECT)", b"\r\nrelative\r\n"),
        catenate("Drafts", "/INBOX/;UID=99"),
        catenate("Drafts", "/Nonexistent/;UID=1"),
        catenate("Drafts", "http://example.org/"),
        catenate("Nonexistent", b"Subject: x\r\n\r\ny\r\n"),
        "EXAMINE Drafts",
        "FETCH 1:* (BODY.PEEK[] RFC822.SIZE)",
    ],
    "sort_and_thread": [append("INBOX", m) for m in THREADED] + [
        "SELECT INBOX",
        "SORT (SUBJECT) UTF-8 ALL",
        "SORT (REVERSE DATE) UTF-8 ALL",
        "SORT (ARRIVAL) US-ASCII ALL",
        "SORT (FROM) UTF-8 ALL",
        "SORT (TO REVERSE SIZE) UTF-8 ALL",
        "SORT (CC DATE) UTF-8 ALL",
        "SORT (SIZE) UTF-8 SUBJECT plans",
        "SORT (DISPLAYFROM) UTF-8 ALL",
        "UID SORT (SUBJECT REVERSE ARRIVAL) UTF-8 2:*",
        "SORT RETURN (MIN MAX COUNT) (DATE) UTF-8 ALL",
        "SORT RETURN (ALL) (REVERSE SIZE) UTF-8 ALL",
        "SORT RETURN () (SUBJECT) UTF-8 NOT ALL",
        "SORT (BOGUS) UTF-8 ALL",
        "SORT (REVERSE) UTF-8 ALL",
        "SORT (DATE) KOI8-R ALL",
        "SORT (DATE) ALL",
        "THREAD ORDEREDSUBJECT UTF-8 ALL",
        "THREAD REFERENCES UTF-8 ALL",
        "UID THREAD REFERENCES UTF-8 3:*",
        "THREAD REFERENCES UTF-8 SUBJECT nothing-matches",
        "THREAD BOGUS UTF-8 ALL",
        # RFC 5256 §3's example commands.
        "SORT (SUBJECT) UTF-8 SINCE 1-Feb-1994",
        "SORT (SUBJECT REVERSE DATE) UTF-8 ALL",
        'SORT (SUBJECT) US-ASCII TEXT "not in mailbox"',
        "THREAD ORDEREDSUBJECT UTF-8 SINCE 5-MAR-2000",
        "THREAD REFERENCES US-ASCII SINCE 1-Jan-2024",
    ],
    "recent": [
        append("INBOX", M1),
        append("INBOX", M2, "\\Seen"),
        "STATUS INBOX (RECENT MESSAGES)",
        "EXAMINE INBOX",
        "FETCH 1:* (FLAGS)",
        "SEARCH RECENT",
        "SEARCH NEW",
        "SEARCH OLD",
        "SELECT INBOX",
        "FETCH 1:* (FLAGS)",
        "STORE 1 +FLAGS (\\Flagged)",
        "SEARCH NEW",
        "STATUS INBOX (RECENT)",
        append("INBOX", M3),
        "NOOP",
        "FETCH 3 (FLAGS)",
        "SEARCH RECENT",
        "UID STORE 2 +FLAGS (\\Deleted)",
        "EXPUNGE",
        "SELECT INBOX",
        "SEARCH OLD",
        "STORE 1 +FLAGS (\\Recent)",
    ],
    "binary_and_decoding": [
        append("INBOX", M4),
        "SELECT INBOX",
        "FETCH 1 (BINARY.PEEK[1])",
        "FETCH 1 (BINARY.SIZE[1])",
        "FETCH 1 (BINARY.PEEK[2])",
        "FETCH 1 (BINARY.PEEK[3])",
        "FETCH 1 (BODY.PEEK[2])",
        "FETCH 1 (BODY.PEEK[2.HEADER])",
        "FETCH 1 (BODY.PEEK[2.TEXT])",
        "FETCH 1 (BODYSTRUCTURE)",
    ],
    "select_and_status": SETUP + [
        "SELECT INBOX",
        "STATUS INBOX (MESSAGES UIDNEXT UNSEEN)",
        "STATUS Sent (MESSAGES)",
        "STATUS Nonexistent (MESSAGES)",
        "EXAMINE INBOX",
        "CLOSE",
        "CLOSE",
    ],
    "uid_ranges_at_the_edges": SETUP + [
        "SELECT INBOX",
        "UID FETCH 1:* (FLAGS)",
        "UID FETCH 3:4294967295 (FLAGS)",
        "UID FETCH 4:4294967295 (FLAGS)",
        "UID FETCH 4:* (FLAGS)",
        "UID FETCH *:2 (FLAGS)",
        "UID SEARCH UID 2:4294967295",
        "UID SEARCH UID 4:*",
        "UID STORE 5:4294967295 +FLAGS (\\Deleted)",
        "UID COPY 4:4294967295 Archive",
        "UID MOVE 4:4294967295 Archive",
        "FETCH 1:* (UID)",
        "STATUS Archive (MESSAGES)",
        "FETCH 4 (FLAGS)",
        "FETCH 0 (FLAGS)",
        "FETCH *:1 (UID)",
    ],
    "flags_and_keywords": SETUP + [
        "SELECT INBOX",
        "STORE 1 +FLAGS (\\Answered)",
        "STORE 1 -FLAGS (\\Seen)",
        "STORE 2 FLAGS ($Later \\Seen)",
        "STORE 3 +FLAGS.SILENT (\\Draft)",
        "FETCH 1:3 (FLAGS)",
        "STORE 1:3 +FLAGS ($Work)",
        "UID STORE 1:* -FLAGS ($Work)",
        "FETCH 1:* (FLAGS)",
        "STORE 1 +FLAGS (\\Bogus)",
        "STORE 1 +FLAGS (\\Recent)",
    ],
    "search_keys": SETUP + [
        "SELECT INBOX",
        "SEARCH ALL",
        "SEARCH SEEN",
        "SEARCH UNSEEN",
        "SEARCH FLAGGED",
        "SEARCH KEYWORD $Work",
        "SEARCH UNKEYWORD $Work",
        "SEARCH FROM ann",
        "SEARCH TO ann@example.net",
        "SEARCH CC dora",
        "SEARCH SUBJECT \"first message\"",
        "SEARCH BODY words",
        "SEARCH TEXT carl",
        "SEARCH HEADER Message-ID m2",
        "SEARCH LARGER 200",
        "SEARCH SMALLER 200",
        "SEARCH SENTON 1-Jan-2024",
        "SEARCH SENTBEFORE 2-Jan-2024",
        "SEARCH SENTSINCE 3-Jan-2024",
        "SEARCH ON 5-Jan-2024",
        "SEARCH BEFORE 5-Jan-2024",
        "SEARCH OR SEEN FLAGGED",
        "SEARCH NOT SEEN",
        "SEARCH 2:3",
        "SEARCH 1000",
        "SEARCH UID 2",
        "UID SEARCH 1:2",
        "SEARCH BOGUS",
        "SEARCH CHARSET UTF-8 SUBJECT third",
        "SEARCH RETURN (MIN MAX COUNT) ALL",
        "SEARCH RETURN (ALL) FLAGGED",
    ],
    "fetch_items": SETUP + [
        "SELECT INBOX",
        "FETCH 1 (RFC822.SIZE INTERNALDATE)",
        "FETCH 1 BODY.PEEK[HEADER.FIELDS (Subject From)]",
        "FETCH 1 BODY.PEEK[TEXT]",
        "FETCH 1 BODY.PEEK[]<0.10>",
        "FETCH 3 BODY.PEEK[2]",
        "FETCH 3 BODY.PEEK[2.MIME]",
        "FETCH 3 (BODYSTRUCTURE)",
        "FETCH 1 (ENVELOPE)",
        "FETCH 2 (FLAGS BODY[HEADER.FIELDS (SUBJECT)])",
        "FETCH 2 (FLAGS)",
        "FETCH 1 (BOGUS)",
    ],
    "mailboxes": [
        "CREATE Projects",
        "CREATE Projects/Alpha",
        "CREATE Projects",
        "CREATE INBOX",
        "LIST \"\" *",
        "LIST \"\" %",
        "LIST \"\" Projects/%",
        "RENAME Projects/Alpha Projects/Beta",
        "LIST \"\" Projects/*",
        "RENAME Nope Other",
        "DELETE Projects/Beta",
        "DELETE Projects/Beta",
        "LIST \"\" Projects*",
        "CREATE ~foo",
        "LIST \"\" ~*",
        "DELETE INBOX",
        "LIST (SPECIAL-USE) \"\" *",
        "LIST (BOGUS) \"\" *",
        "LIST \"\" * RETURN (BOGUS)",
        "LIST (RECURSIVEMATCH) \"\" *",
    ],
    "subscriptions": [
        "CREATE Lists",
        "CREATE Lists/Rust",
        "LSUB \"\" *",
        "SUBSCRIBE Lists/Rust",
        "LSUB \"\" *",
        "LSUB \"\" %",
        "LIST (SUBSCRIBED) \"\" *",
        "LIST (SUBSCRIBED RECURSIVEMATCH) \"\" %",
        "DELETE Lists/Rust",
        "LSUB \"\" *",
        "RENAME Lists Groups",
        "LSUB \"\" *",
        "UNSUBSCRIBE Never/Subscribed",
        "UNSUBSCRIBE Lists/Rust",
        "LSUB \"\" *",
    ],
    "subscribe_to_a_name_that_does_not_exist": [
        "SUBSCRIBE Never/Created",
        "LSUB \"\" *",
    ],
    "expunge_and_close": SETUP + [
        "SELECT INBOX",
        "STORE 2 +FLAGS.SILENT (\\Deleted)",
        "EXPUNGE",
        "EXPUNGE",
        "FETCH 1:* (UID)",
        "STORE 1 +FLAGS.SILENT (\\Deleted)",
        "CLOSE",
        "SELECT INBOX",
        "FETCH 1:* (UID)",
    ],
    "condstore": SETUP + [
        "ENABLE CONDSTORE",
        "SELECT INBOX",
        "STORE 1 (UNCHANGEDSINCE 1) +FLAGS (\\Answered)",
        "FETCH 1:* (FLAGS) (CHANGEDSINCE 1)",
        "SEARCH MODSEQ 1",
        "STATUS INBOX (HIGHESTMODSEQ)",
    ],
    "append_copy_move": SETUP + [
        append("Nonexistent", M1),
        append("Archive", M2, "\\Seen $Later"),
        "STATUS Archive (MESSAGES UNSEEN)",
        "SELECT INBOX",
        "COPY 1:2 Archive",
        "COPY 1 Nonexistent",
        "UID COPY 3 Trash",
        "MOVE 1 Trash",
        "FETCH 1:* (UID FLAGS)",
        "STATUS Trash (MESSAGES)",
        "STORE 1 +FLAGS.SILENT (\\Deleted)",
        "UID EXPUNGE 1:2",
        "FETCH 1:* (UID)",
        "UID EXPUNGE 3",
        "FETCH 1:* (UID)",
        "SELECT Archive",
        "FETCH 1:* (FLAGS)",
    ],
    "fetch_macros_and_sections": SETUP + [
        "SELECT INBOX",
        "FETCH 1 FAST",
        "FETCH 1 ALL",
        "FETCH 1 (BODY)",
        "FETCH 1 RFC822.HEADER",
        "FETCH 2 RFC822.TEXT",
        "FETCH 2 (FLAGS)",
        "FETCH 1 BODY.PEEK[HEADER.FIELDS.NOT (Subject Date Message-ID)]",
        "FETCH 1 BODY.PEEK[TEXT]<6.5>",
        "FETCH 1 BODY.PEEK[TEXT]<100.5>",
        "FETCH 1,3 (UID RFC822.SIZE)",
        "FETCH 2:* (UID)",
        "FETCH 3 BODY.PEEK[1]",
        "FETCH 3 BODY.PEEK[3]",
        "FETCH 3 BODY.PEEK[HEADER]",
        "FETCH 1 BODY.PEEK[1]",
        "UID FETCH 2 (BODY.PEEK[HEADER.FIELDS (FROM)])",
    ],
    "search_more": SETUP + [
        "SELECT INBOX",
        "STORE 3 +FLAGS (\\Deleted \\Answered \\Draft)",
        "SEARCH DELETED",
        "SEARCH UNDELETED",
        "SEARCH ANSWERED UNANSWERED",
        "SEARCH DRAFT",
        "SEARCH UNDRAFT",
        "SEARCH UNFLAGGED",
        "SEARCH OR FROM carl SUBJECT third",
        "SEARCH NOT FROM ann",
        "SEARCH (FROM ann SEEN)",
        "SEARCH SUBJECT \"\"",
        "SEARCH HEADER X-Missing \"\"",
        "SEARCH SINCE 1-Jan-2030",
        "SEARCH LARGER 10000",
        "SEARCH UID 1:2 FLAGGED",
        "UID SEARCH NOT UID 2",
        "SEARCH $",
        "SEARCH RETURN (SAVE) FLAGGED",
        "FETCH $ (UID)",
        "SEARCH RETURN (COUNT) UNDELETED",
    ],
    "namespace_and_literals": [
        "NAMESPACE",
        b"CREATE {4+}\r\nLit1",
        b"LIST \"\" {4+}\r\nLit*",
        "CREATE \"Quoted \\\"name\\\"\"",
        "LIST \"\" Quoted*",
        "SELECT \"Quoted \\\"name\\\"\"",
        "UNSELECT",
        "CREATE Sub/",
        "LIST \"\" Sub*",
    ],
    "state_errors": [
        "SELECT Nonexistent",
        "FETCH 1 (FLAGS)",
        "STORE 1 +FLAGS (\\Seen)",
        "EXPUNGE",
        "CLOSE",
        "NOOP",
        "BOGUS",
        "APPEND Nonexistent {3+}\r\nabc",
    ],
}


# --- reading and normalizing ------------------------------------------------------------------


class Bracket(list):
    """A `[…]` group (response code, section spec), told apart from a `(…)` list."""


def tokens(data: bytes):
    """An IMAP response as nested lists of atoms/strings (literals included)."""
    pos = 0
    stack: list[list] = [[]]
    while pos < len(data):
        c = data[pos:pos + 1]
        if c in b" \r\n":
            pos += 1
        elif c == b"(":
            stack.append([])
            pos += 1
        elif c == b"[":
            stack.append(Bracket())
            pos += 1
        elif c == b")" or c == b"]":
            done = stack.pop() if len(stack) > 1 else []
            stack[-1].append(done)
            pos += 1
        elif c == b'"':
            end = pos + 1
            out = b""
            while end < len(data) and data[end:end + 1] != b'"':
                if data[end:end + 1] == b"\\":
                    end += 1
                out += data[end:end + 1]
                end += 1
            stack[-1].append(out)
            pos = end + 1
        elif (m := re.match(rb"~?\{(\d+)\+?\}\r\n", data[pos:])):
            n = int(m.group(1))
            start = pos + m.end()
            stack[-1].append(data[start:start + n])
            pos = start + n
        else:
            m = re.match(rb"[^ ()\[\]\r\n\"]+", data[pos:])
            stack[-1].append(m.group(0))
            pos += m.end()
    return stack[0]


def canon(tok):
    """Tokens in a comparable, hashable form: atoms upper-cased where IMAP says case does not
    matter (keywords and flags too), lists as tuples."""
    if isinstance(tok, list):
        return tuple(canon(t) for t in tok)
    return tok.decode("utf-8", "replace")


SPECIAL_USE = {"\\all", "\\archive", "\\drafts", "\\flagged", "\\junk", "\\sent", "\\trash"}


def normalize_untagged(line: bytes, command: str = ""):
    t = tokens(line)
    if len(t) < 2:
        return None
    kind = t[1].upper() if isinstance(t[1], bytes) else b""
    if kind in (b"CAPABILITY", b"ID", b"ENABLED", b"BYE"):
        return None
    if kind in (b"OK", b"NO", b"BAD"):
        code = t[2] if len(t) > 2 and isinstance(t[2], list) else None
        if not code:
            return None  # informational text only
        name = code[0].upper()
        if name in (b"HIGHESTMODSEQ", b"CLOSED"):
            # HIGHESTMODSEQ: Corvus announces it at every SELECT (RFC 7162 §3.1.2.1 allows it
            # without CONDSTORE enabled), Dovecot once CONDSTORE is on. CLOSED: Dovecot
            # sends it whenever a SELECT replaces a selected mailbox; RFC 7162 §3.2.11 and
            # RFC 9051 §7.1 require it only once QRESYNC or IMAP4rev2 is enabled.
            return None
        if name in (b"UIDVALIDITY", b"CAPABILITY", b"URLMECH", b"NOMODSEQ"):
            return ("code", name.decode())
        if name in (b"APPENDUID", b"COPYUID"):
            return ("code",) + uid_code(code)
        if name == b"PERMANENTFLAGS":
            return ("code", "PERMANENTFLAGS", tuple(sorted(canon(f).lower() for f in code[1])))
        return ("code", name.decode(), tuple(canon(x) for x in code[1:]))
    if kind in (b"FLAGS",):
        return ("FLAGS", tuple(sorted(canon(f).lower() for f in t[2])))
    if kind in (b"LIST", b"LSUB"):
        drop = {"\\hasnochildren", "\\haschildren"}
        # Special-use attributes are required only where asked for (RFC 6154 §2: RETURN
        # (SPECIAL-USE)); elsewhere a server may add them. Dovecot adds them to LSUB and to
        # a plain LIST, Corvus to a plain LIST and LIST (SUBSCRIBED): compared where both
        # must, or both do.
        if kind == b"LSUB" or ("(SUBSCRIBED" in command.upper() and "SPECIAL-USE" not in command.upper()):
            drop |= SPECIAL_USE
        attrs = tuple(sorted(canon(a).lower() for a in t[2] if canon(a).lower() not in drop))
        return (kind.decode(), attrs, canon(t[3]), canon(t[4]))
    if kind == b"STATUS":
        items = t[3]
        pairs = dict(zip([canon(k).upper() for k in items[0::2]], [canon(v) for v in items[1::2]]))
        pairs.pop("UIDVALIDITY", None)
        pairs.pop("HIGHESTMODSEQ", None)
        return ("STATUS", canon(t[2]), tuple(sorted(pairs.items())))
    if kind in (b"SEARCH", b"SORT"):
        nums = [canon(x) for x in t[2:] if isinstance(x, bytes)]
        return (kind.decode(), tuple(sorted(nums, key=int)))
    if kind == b"ESEARCH":
        rest = [canon(x) for x in t[2:] if not isinstance(x, list)]
        pairs = [(rest[i].upper(), rest[i + 1]) for i in range(0, len(rest) - 1, 2)]
        return ("ESEARCH", tuple(p for p in pairs if p[0] != "MODSEQ"))
    if len(t) > 2 and isinstance(t[2], bytes) and t[2].upper() == b"FETCH":
        # Item names with their section and origin joined: BODY[1.MIME]<0>.
        items, pairs, i = t[3], [], 0
        while i < len(items):
            key = canon(items[i]).upper() if isinstance(items[i], bytes) else str(canon(items[i]))
            i += 1
            if i < len(items) and isinstance(items[i], Bracket):
                key += "[" + " ".join(str(canon(x)) for x in items[i]) + "]"
                i += 1
            if i < len(items) and isinstance(items[i], bytes) and items[i].startswith(b"<"):
                key += items[i].decode()
                i += 1
            pairs.append((key, items[i] if i < len(items) else None))
            i += 1
        d = {}
        for key, v in pairs:
            if key == "MODSEQ":
                continue
            if key == "FLAGS":
                v = tuple(sorted(canon(f).lower() for f in v))
            else:
                v = canon(v)
            d[str(key)] = v
        return ("FETCH", canon(t[1]), tuple(sorted(d.items(), key=lambda kv: str(kv[0]))))
    if isinstance(t[1], bytes) and len(t) > 2 and isinstance(t[2], bytes):
        word = t[2].upper()
        if word in (b"EXISTS", b"EXPUNGE", b"RECENT"):
            return (word.decode(), canon(t[1]))
    return ("other", canon(t))


def uid_set(text: str) -> tuple:
    """A uid-set (`1:3,5`) as the UIDs it names: `1,2` and `1:2` are the same set."""
    out = []
    for part in text.split(","):
        a, _, b = part.partition(":")
        lo, hi = int(a), int(b or a)
        out.extend(range(min(lo, hi), max(lo, hi) + 1))
    return tuple(out)


def uid_code(code) -> tuple:
    """APPENDUID/COPYUID without the UIDVALIDITY (numbered differently by each server)."""
    name = code[0].upper().decode()
    return (name, tuple(uid_set(canon(x)) for x in code[2:]))


def normalize_tagged(line: bytes):
    t = tokens(line)
    status = t[1].upper().decode() if len(t) > 1 else "?"
    code = None
    if len(t) > 2 and isinstance(t[2], list) and t[2] and t[2][0].upper() != b"CLIENTBUG":
        # (CLIENTBUG is Dovecot's hint that a command was needless, RFC 9051 §7.1.)
        name = t[2][0].upper().decode()
        # The values of these depend on UIDVALIDITY/MODSEQ numbering; the name is compared.
        code = name
        if name in ("APPENDUID", "COPYUID"):
            code = uid_code(t[2])
    return (status, code)


def run(port: int, user: str, script: list) -> list:
    r = RawImap(port)
    untagged, tagged = r.cmd(f'LOGIN "{user}" "{PASSWORD}"')
    assert b" OK" in tagged, tagged
    out = []
    for step in script:
        untagged, tagged = r.cmd(step)
        text = step if isinstance(step, str) else step.split(b"\r\n")[0].decode()
        norm = sorted((u for u in (normalize_untagged(l, text) for l in untagged) if u is not None),
                      key=repr)
        out.append((step if isinstance(step, str) else step.split(b"\r\n")[0].decode(),
                    normalize_tagged(tagged), norm))
    r.cmd("LOGOUT")
    r.close()
    return out


def allowed() -> set[tuple[str, str]]:
    """(transcript, command) pairs whose difference is accepted, from differential_allow.txt."""
    out = set()
    for line in ALLOW_FILE.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        name, command, _reason = line.split(" | ", 2)
        out.add((name.strip(), command.strip()))
    return out


@pytest.fixture(scope="module")
def servers(tmp_path_factory, loopback_dns):
    """Corvus and Dovecot, each with one user per transcript."""
    corvus = Server(tmp_path_factory.mktemp("corvus"), loopback_dns.addr, **IMAP).start()
    with dovecot.beside(corvus, TRANSCRIPTS) as (reference, users):
        yield corvus, reference, users


@pytest.mark.parametrize("name", sorted(TRANSCRIPTS))
def test_corvus_answers_like_dovecot(servers, name):
    corvus, reference, users = servers
    user = users[name]
    ours = run(corvus.ports["imap"], user, TRANSCRIPTS[name])
    theirs = run(reference.ports["imap"], user, TRANSCRIPTS[name])
    ok = allowed()
    differences = []
    for (cmd, our_tag, our_un), (_, their_tag, their_un) in zip(ours, theirs):
        if (our_tag, our_un) != (their_tag, their_un) and (name, cmd) not in ok:
            differences.append(f"{cmd}\n  corvus:  {our_tag} {our_un}\n  dovecot: {their_tag} {their_un}")
    assert not differences, f"{name}: {len(differences)} difference(s)\n" + "\n".join(differences)
