"""`corvus mailbox import/export` end to end, against Python's `mailbox` module (a Maildir
and mbox implementation we did not write) and through a running server's control socket.

What is stored is read back over IMAP (FLAGS, INTERNALDATE, BODY.PEEK[]), independently of
the import code.
"""

from __future__ import annotations

import datetime
import email.utils
import imaplib
import mailbox
import re
import time

import pytest

from support.mail import message
from support.net import tls_context
from support.server import PASSWORD, Server


@pytest.fixture
def server(pop3_server):
    return pop3_server()


def lf(b: bytes) -> bytes:
    return b.replace(b"\r\n", b"\n")


def crlf(b: bytes) -> bytes:
    return re.sub(rb"(?<!\r)\n", b"\r\n", b)


def imap(server: Server, user: str) -> imaplib.IMAP4_SSL:
    m = imaplib.IMAP4_SSL("127.0.0.1", server.ports["imaps"], ssl_context=tls_context(), timeout=30)
    m.login(user, PASSWORD)
    return m


def dump(server: Server, user: str) -> dict[str, list[tuple[frozenset, int, bytes]]]:
    """Every folder of `user` over IMAP: [(flags without \\Recent, internal date, bytes)]."""
    m = imap(server, user)
    out = {}
    typ, listing = m.list()
    assert typ == "OK"
    names = []
    for line in listing:
        mm = re.match(rb'\((.*?)\) (?:"(.)"|NIL) (?:"((?:[^"\\]|\\.)*)"|(\S+))$', line)
        assert mm, line
        names.append((mm.group(3) or mm.group(4)).decode())
    for name in names:
        typ, count = m.select('"%s"' % name, readonly=True)
        assert typ == "OK", name
        if int(count[0]) == 0:
            # "1:*" in an empty mailbox is a BAD (RFC 9051 seq-number; Dovecot does the same).
            out[name] = []
            continue
        typ, data = m.fetch("1:*", "(FLAGS INTERNALDATE BODY.PEEK[])")
        msgs = []
        for item in data:
            if not isinstance(item, tuple):
                continue
            head, body = item
            flags = frozenset(f.decode() for f in imaplib.ParseFlags(head)) - {"\\Recent"}
            date = re.search(rb'INTERNALDATE "([^"]+)"', head).group(1).decode()
            ts = int(datetime.datetime.strptime(date, "%d-%b-%Y %H:%M:%S %z").timestamp())
            msgs.append((flags, ts, body))
        out[name] = msgs
    m.logout()
    return out


def imap_date(ts: int) -> str:
    return imaplib.Time2Internaldate(ts)


# -- import from Python's mailbox module --------------------------------------------------


def test_import_maildir_written_by_python(server):
    user = server.add_user("alice")
    md = mailbox.Maildir(str(server.base / "py-maildir"), create=True)
    seen = mailbox.MaildirMessage(lf(message("seen and answered", "From the start\r\n.dot\r\n")))
    seen.set_subdir("cur")
    seen.set_flags("RS")
    seen.set_date(1_600_000_000)
    md.add(seen)
    new = mailbox.MaildirMessage(lf(message("still new")))
    new.set_date(1_500_000_000)  # in new/: no flags
    md.add(new)
    work = md.add_folder("Work")
    item = mailbox.MaildirMessage(lf(message("work item")))
    item.set_subdir("cur")
    item.set_flags("FDT")
    item.set_date(1_400_000_000)
    work.add(item)
    deep = md.add_folder("Work.2024")  # Maildir++ hierarchy: Work/2024
    d = mailbox.MaildirMessage(lf(message("deep")))
    d.set_subdir("cur")
    d.set_flags("P")
    d.set_date(1_300_000_000)
    deep.add(d)
    files = {}
    for folder, box in [("INBOX", md), ("Work", work), ("Work/2024", deep)]:
        files[folder] = {box.get_bytes(k).split(b"Subject: ")[1].split(b"\n")[0]: box.get_bytes(k) for k in box.keys()}

    r = server.cli("mailbox", "import", user, "--format", "maildir", str(server.base / "py-maildir"))
    assert "imported 4 messages" in r.stdout, r.stdout

    got = dump(server, user)
    by_subject = {
        (folder, body.split(b"Subject: ")[1].split(b"\r\n")[0]): (flags, ts, body)
        for folder, msgs in got.items()
        for flags, ts, body in msgs
    }
    want = {
        ("INBOX", b"seen and answered"): ({"\\Seen", "\\Answered"}, 1_600_000_000),
        ("INBOX", b"still new"): (set(), 1_500_000_000),
        ("Work", b"work item"): ({"\\Flagged", "\\Draft", "\\Deleted"}, 1_400_000_000),
        ("Work/2024", b"deep"): ({"$Forwarded"}, 1_300_000_000),
    }
    for (folder, subject), (flags, ts) in want.items():
        gflags, gts, body = by_subject[(folder, subject)]
        assert gflags == flags, (folder, subject)
        assert gts == ts, (folder, subject)
        assert body == crlf(files[folder][subject]), (folder, subject)


def test_import_mbox_written_by_python(server):
    user = server.add_user("alice")
    path = server.base / "py.mbox"
    mb = mailbox.mbox(str(path))
    specs = [
        ("read and answered", "RA", 1_600_000_000),
        ("flagged unread", "F", 1_500_000_000),
        ("plain", "", 1_400_000_000),
    ]
    for subject, flags, ts in specs:
        m = mailbox.mboxMessage(lf(message(subject, "From the top\r\nsecond line\r\n")))
        m.set_from("someone@remote.test", time.gmtime(ts))
        if flags:
            m.set_flags(flags)
        mb.add(m)
    mb.flush()
    mb.close()
    assert b"\n>From the top\n" in path.read_bytes()  # Python quotes (mboxo)

    r = server.cli("mailbox", "import", user, "--format", "mbox", str(path), "--folder", "Old Mail")
    assert "imported 3 messages" in r.stdout, r.stdout
    got = dump(server, user)
    assert got["INBOX"] == []
    msgs = got["Old Mail"]
    assert len(msgs) == 3
    want_flags = [{"\\Seen", "\\Answered"}, {"\\Flagged"}, set()]
    for (subject, _, ts), wflags, (flags, gts, body) in zip(specs, want_flags, msgs):
        assert b"Subject: %s\r\n" % subject.encode() in body
        assert flags == wflags, subject
        assert gts == ts, subject
        # Metadata fields are not part of the stored message; quoting is undone.
        assert b"Status:" not in body and b"X-Status:" not in body
        assert body.endswith(b"\r\n\r\nFrom the top\r\nsecond line\r\n"), body


# -- export read by Python's mailbox module ----------------------------------------------


def fill(server: Server, user: str) -> None:
    """INBOX over SMTP with flags set over IMAP; Work and Work/2024 by IMAP APPEND with
    flags and internal dates."""
    server.deliver(user, message("smtp one", "From me\r\n>From you\r\n.\r\n"))
    server.deliver(user, message("smtp two"))
    m = imap(server, user)
    assert m.select("INBOX")[0] == "OK"
    assert m.store("1", "+FLAGS", "(\\Seen \\Answered)")[0] == "OK"
    assert m.store("2", "+FLAGS", "(\\Flagged $Forwarded custom)")[0] == "OK"
    assert m.create("Work")[0] == "OK"
    assert m.create("Work/2024")[0] == "OK"
    assert m.append("Work", "(\\Seen \\Draft)", imap_date(1_500_000_000), message("appended"))[0] == "OK"
    assert m.append("Work", "()", imap_date(1_400_000_000), message("older, later uid"))[0] == "OK"
    assert m.append("Work/2024", "(\\Deleted $Junk)", imap_date(1_300_000_000), message("deep"))[0] == "OK"
    m.logout()


def test_export_maildir_read_by_python(server):
    user = server.add_user("alice")
    fill(server, user)
    stored = dump(server, user)
    dest = server.base / "export-md"
    r = server.cli("mailbox", "export", user, "--format", "maildir", str(dest))
    assert "exported 5 messages" in r.stdout, r.stdout

    md = mailbox.Maildir(str(dest), factory=None, create=False)
    assert {"Work", "Work.2024", "Sent", "Drafts", "Trash", "Junk", "Archive"} <= set(md.list_folders())
    letters = {"\\Seen": "S", "\\Answered": "R", "\\Flagged": "F", "\\Draft": "D", "\\Deleted": "T", "$Forwarded": "P"}
    for folder, box in [("INBOX", md), ("Work", md.get_folder("Work")), ("Work/2024", md.get_folder("Work.2024"))]:
        ours = sorted(stored[folder], key=lambda x: x[2])
        theirs = sorted(
            [(box.get_message(k), box.get_bytes(k)) for k in box.keys()], key=lambda x: crlf(x[1])
        )
        assert len(ours) == len(theirs), folder
        for (flags, ts, body), (msg, raw) in zip(ours, theirs):
            assert raw == lf(body), folder
            # Keywords get the letters a-z that dovecot-keywords lists.
            kw_file = box._path + "/dovecot-keywords"
            kw = dict(l.split(" ", 1)[::-1] for l in open(kw_file).read().split("\n") if l) if any(
                not f.startswith("\\") and f != "$Forwarded" for f in flags
            ) else {}
            want = {letters[f] for f in flags if f in letters}
            want |= {chr(ord("a") + int(kw[f])) for f in flags if f in kw}
            assert set(msg.get_flags()) == want, (folder, flags)
            assert int(msg.get_date()) == ts, folder  # mtime is the internal date
            assert msg.get_subdir() == "cur"


def test_export_mbox_read_by_python(server):
    user = server.add_user("alice")
    fill(server, user)
    stored = dump(server, user)
    dest = server.base / "export-mbox"
    server.cli("mailbox", "export", user, "--format", "mbox", str(dest))
    assert {p.name for p in dest.iterdir()} >= {"INBOX", "Work", "Work.2024", "Sent"}

    for folder, fname in [("INBOX", "INBOX"), ("Work", "Work"), ("Work/2024", "Work.2024")]:
        box = mailbox.mbox(str(dest / fname), create=False)
        msgs = [box[k] for k in box.keys()]
        assert len(msgs) == len(stored[folder]), folder
        for (flags, ts, body), msg in zip(stored[folder], msgs):
            want = set()
            if "\\Seen" in flags:
                want |= {"R", "O"}
            else:
                want.add("O")
            pairs = [("\\Answered", "A"), ("\\Flagged", "F"), ("\\Draft", "T"), ("\\Deleted", "D")]
            want |= {c for f, c in pairs if f in flags}
            assert set(msg.get_flags()) == want, (folder, flags, msg.get_flags())
            date = " ".join(msg.get_from().split()[1:])
            assert int(time.mktime(time.strptime(date, "%a %b %d %H:%M:%S %Y")) - time.timezone) == ts
            # Python's reader is mboxo: compare after taking one quoting level off.
            text = re.sub(rb"(?m)^>(>*From )", rb"\1", msg.as_bytes(unixfrom=False))
            assert msg["Subject"] == re.search(rb"Subject: (.*)\r\n", body).group(1).decode()
            assert lf(body).split(b"\n\n", 1)[1] == text.split(b"\n\n", 1)[1], folder


# -- round trip ---------------------------------------------------------------------------


def test_round_trip_is_byte_identical(server):
    alice = server.add_user("alice")
    fill(server, alice)
    before = dump(server, alice)
    for fmt, local in [("maildir", "bob"), ("mbox", "carol")]:
        other = server.add_user(local)
        dest = server.base / ("rt-" + fmt)
        server.cli("mailbox", "export", alice, "--format", fmt, str(dest))
        server.cli("mailbox", "import", other, "--format", fmt, str(dest))
        after = dump(server, other)
        assert after == before, fmt


def test_export_and_import_without_a_running_server(server):
    """The CLI opens the store itself when no server runs."""
    alice = server.add_user("alice")
    bob = server.add_user("bob")
    fill(server, alice)
    before = dump(server, alice)
    assert server.stop() == 0
    dest = server.base / "offline"
    r = server.cli("mailbox", "export", alice, "--format", "mbox", str(dest))
    assert "exported 5 messages" in r.stdout
    r = server.cli("mailbox", "import", bob, "--format", "mbox", str(dest))
    assert "imported 5 messages" in r.stdout
    server.start()
    assert dump(server, bob) == before


def test_progress_and_errors(server):
    user = server.add_user("alice")
    path = server.base / "many.mbox"
    mb = mailbox.mbox(str(path))
    for i in range(1100):
        m = mailbox.mboxMessage(b"Subject: n%d\n\nbody\n" % i)
        m.set_from("x@remote.test", time.gmtime(1_600_000_000 + i))
        mb.add(m)
    mb.flush()
    mb.close()
    r = server.cli("mailbox", "import", user, "--format", "mbox", str(path))
    assert "imported 1100 messages" in r.stdout
    assert "import: 500 messages" in r.stderr and "import: 1000 messages" in r.stderr, r.stderr
    dest = server.base / "many-out"
    r = server.cli("mailbox", "export", user, "--format", "maildir", str(dest))
    assert "export: 1000/1100 messages" in r.stderr, r.stderr

    # Clear errors, non-zero exit.
    r = server.cli("mailbox", "export", user, "--format", "maildir", str(dest), check=False)
    assert r.returncode != 0 and "not empty" in r.stderr
    r = server.cli("mailbox", "import", "nobody@example.org", "--format", "mbox", str(path), check=False)
    assert r.returncode != 0 and "no account" in r.stderr
    r = server.cli("mailbox", "import", user, "--format", "maildir", str(server.base), check=False)
    assert r.returncode != 0 and "not a Maildir" in r.stderr
    (server.base / "junk.txt").write_text("hello\n")
    r = server.cli("mailbox", "import", user, "--format", "mbox", str(server.base / "junk.txt"), check=False)
    assert r.returncode != 0 and "not an mbox" in r.stderr


def test_maildir_folder_names_are_modified_utf7_like_dovecot(server):
    """Dovecot's Maildir++ layout spells folder names in modified UTF-7 on disk: export writes
    `.Entw&APw-rfe`, import of such a directory gives the folder `Entwürfe` (which a rev1
    IMAP client sees in modified UTF-7 again; a literal name would come back as `&-`)."""
    user = server.add_user("alice")
    m = imap(server, user)
    assert m.create('"Entw&APw-rfe/Priv&AOk-"')[0] == "OK"  # Entwürfe/Privé
    assert m.create('"R&-D"')[0] == "OK"  # R&D
    assert m.append('"Entw&APw-rfe/Priv&AOk-"', "(\\Seen)", imap_date(1_500_000_000), message("umlaut"))[0] == "OK"
    m.logout()
    dest = server.base / "export-utf7"
    server.cli("mailbox", "export", user, "--format", "maildir", str(dest))
    names = {p.name for p in dest.iterdir() if p.name.startswith(".")}
    assert {".Entw&APw-rfe", ".Entw&APw-rfe.Priv&AOk-", ".R&-D"} <= names, names
    box = mailbox.Maildir(str(dest), factory=None, create=False).get_folder("Entw&APw-rfe.Priv&AOk-")
    assert len(box) == 1

    # A Maildir written by another tool, Dovecot-style names plus one that is not mUTF-7.
    src = mailbox.Maildir(str(server.base / "py-utf7"), create=True)
    for folder in ["Envoy&AOk-s", "Caf&AOk-.Men&APw-", "A&B"]:
        msg = mailbox.MaildirMessage(lf(message(folder)))
        src.add_folder(folder).add(msg)
    bob = server.add_user("bob")
    r = server.cli("mailbox", "import", bob, "--format", "maildir", str(server.base / "py-utf7"))
    assert "imported 3 messages" in r.stdout, r.stdout
    m = imap(server, bob)
    typ, listing = m.list()
    assert typ == "OK"
    listed = {re.search(rb'"([^"]*)"$|(\S+)$', l).group(0).strip(b'"').decode() for l in listing}
    # Envoyés, Café/Menü, and "A&B" taken literally (so `&-` on the wire).
    assert {"Envoy&AOk-s", "Caf&AOk-/Men&APw-", "A&-B"} <= listed, listed
    typ, count = m.select('"Caf&AOk-/Men&APw-"', readonly=True)
    assert typ == "OK" and count == [b"1"]
    m.logout()
