"""`corvus store copy` end to end (issue 23): a server on sled takes mail over SMTP and
changes over IMAP (flags, a keyword, an expunge, a COPY into a new folder); after it stops,
its store is copied into a throwaway PostgreSQL, and a server on the database shows every
IMAP client the same UIDVALIDITY, UIDs, flags, MODSEQs and bodies, answers a QRESYNC from
before the move with the expunge, and gives new mail the next UID. A second copy changes
nothing; one after the new server took mail is refused and changes nothing either. A copy
is refused while the sled server runs, and before `corvus store migrate`."""

import re

import pytest

from support.postgres import Postgres
from support.server import ALICE, BOB, IMAP, with_preset

CAROL = "carol@example.org"
USERS = (ALICE, BOB, CAROL)


@pytest.fixture(scope="module")
def postgres():
    pg = Postgres()
    yield pg
    pg.close()


def code(lines: list[bytes], name: bytes) -> int:
    """The number of response code `name` ([UIDVALIDITY 123]) in a SELECT's answer."""
    for line in lines:
        m = re.search(rb"\[" + name + rb" (\d+)\]", line)
        if m:
            return int(m.group(1))
    raise AssertionError(f"no {name!r} in {lines!r}")


def state(srv) -> dict:
    """What IMAP clients see of every account: folders and subscriptions, and per folder
    UIDVALIDITY, UIDNEXT, HIGHESTMODSEQ and each message's UID, flags, MODSEQ, internal date
    and bytes (\\Recent left out: it is per session)."""
    out = {}
    for user in USERS:
        r = srv.raw_imap(user)
        folders = sorted(l for l in r.ok('LIST "" "*"'))
        out[user, "folders"] = folders
        out[user, "subscribed"] = sorted(r.ok('LSUB "" "*"'))
        for line in folders:
            name = line.rsplit(b" ", 1)[1].decode().strip('"')
            sel = r.ok(f"SELECT {name} (CONDSTORE)")
            out[user, name] = (code(sel, b"UIDVALIDITY"), code(sel, b"UIDNEXT"),
                               code(sel, b"HIGHESTMODSEQ"))
            if any(re.match(rb"\* [1-9]\d* EXISTS", l) for l in sel):
                fetched = r.ok("UID FETCH 1:* (FLAGS MODSEQ INTERNALDATE BODY.PEEK[])")
                out[user, name, "messages"] = [
                    re.sub(rb" ?\\Recent", b"", l).replace(b"( ", b"(") for l in fetched]
            else:
                out[user, name, "messages"] = []
        r.close()
    return out


def test_a_sled_server_moves_to_postgres_and_clients_keep_their_state(postgres, corvus_factory):
    url = postgres.database()
    # On sled whatever backend this run gives servers (CORVUS_E2E_STORE).
    old = corvus_factory("sled", **with_preset(IMAP, listeners=("smtp", "imap"),
                                               store={"backend": "sled"}))
    for u in USERS:
        old.add_user(u)
    old.start()
    with old.smtp() as s:
        for i in range(1, 5):
            s.sendmail("x@remote.example", [ALICE],
                       f"Subject: a{i}\r\n\r\nbody a{i}\r\n".encode())
        s.sendmail("x@remote.example", [ALICE, BOB], b"Subject: both\r\n\r\nfor two\r\n")
        big = b"Subject: big\r\n\r\n" + b"".join(b"line %06d of a bigger message\r\n" % n
                                               for n in range(10000))
        s.sendmail("x@remote.example", [CAROL], big)
        s.sendmail("x@remote.example", [CAROL], b"Subject: c2\r\n\r\nsecond\r\n")
    a = old.raw_imap(ALICE)
    sel = a.ok("SELECT INBOX (CONDSTORE)")
    before = (code(sel, b"UIDVALIDITY"), code(sel, b"HIGHESTMODSEQ"))
    a.ok("UID STORE 1 +FLAGS.SILENT (\\Flagged $Work)")
    a.ok("UID STORE 2 +FLAGS.SILENT (\\Seen \\Answered)")
    a.ok("UID STORE 3 +FLAGS.SILENT (\\Deleted)")
    a.ok("EXPUNGE")
    a.ok("CREATE Projects")
    a.ok("UID COPY 1:2 Projects")
    a.ok("UNSUBSCRIBE Junk")
    a.close()
    b = old.raw_imap(BOB, select="INBOX")
    b.ok("UID STORE 1 +FLAGS.SILENT (\\Seen $Label1)")
    b.close()
    seen = state(old)
    assert [l for l in seen[ALICE, "INBOX", "messages"]], seen
    assert len(seen[ALICE, "INBOX", "messages"]) == 4  # 5 delivered, UID 3 expunged

    new = corvus_factory("pg", **with_preset(IMAP, listeners=("smtp", "imap"),
                                             store={"backend": "postgres", "url": url}))
    copy = ("store", "copy", "--from", f"sled:{old.data_dir}", "--to", url)
    # The running server holds the sled store.
    p = new.cli(*copy, check=False)
    assert p.returncode == 1 and "corvus serve" in p.stderr and "stop" in p.stderr, p.stderr
    old.stop()
    # The database needs its schema first.
    p = new.cli(*copy, check=False)
    assert p.returncode == 1 and "corvus store migrate" in p.stderr, p.stderr
    new.cli("store", "migrate")

    p = new.cli(*copy)
    assert "alice@example.org: INBOX 4/4 messages" in p.stderr, p.stderr
    assert "alice@example.org: Projects 2/2 messages" in p.stderr, p.stderr
    assert "verified: the target holds everything of the source" in p.stdout, p.stdout
    assert "messages: 9 copied" in p.stdout, p.stdout
    assert re.search(r"alice@example.org: INBOX: 4 messages, 1 expunged, UIDVALIDITY \d+",
                     p.stdout), p.stdout
    # Again: harmless, nothing written twice.
    p = new.cli(*copy)
    assert "messages: 0 copied" in p.stdout and "9 already there" in p.stdout, p.stdout
    assert "verified:" in p.stdout, p.stdout

    new.start()
    assert state(new) == seen
    # A client that last saw INBOX before the expunge learns of it (QRESYNC).
    a = new.raw_imap(ALICE)
    a.ok("ENABLE QRESYNC")
    sel = a.ok(f"SELECT INBOX (QRESYNC ({before[0]} {before[1]}))")
    assert b"* VANISHED (EARLIER) 3" in sel, sel
    a.close()
    # New mail gets the next UID.
    uidnext = seen[ALICE, "INBOX"][1]
    with new.smtp() as s:
        s.sendmail("x@remote.example", [ALICE], b"Subject: on postgres\r\n\r\nnew\r\n")
    a = new.raw_imap(ALICE, select="INBOX")
    fetched = a.ok("UID FETCH 1:* (UID)")
    assert [int(re.search(rb"UID (\d+)", l).group(1)) for l in fetched] == [1, 2, 4, 5, uidnext]
    a.close()
    after = state(new)
    new.stop()

    # Copying once more now would overwrite what happened on the database: refused in one
    # line, and nothing changed.
    p = new.cli(*copy, check=False)
    assert p.returncode == 1, p.stdout + p.stderr
    error = [l for l in p.stderr.splitlines() if l.startswith("error:")]
    assert len(error) == 1 and "changed in the target" in error[0], p.stderr
    new.start()
    assert state(new) == after
