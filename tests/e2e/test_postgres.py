"""The PostgreSQL backend end to end (issue 23, first step): a server on a real PostgreSQL
refuses to start until `corvus store migrate` created the schema, then takes mail over SMTP
that IMAP and POP3 serve, and keeps it across a restart. Multi-node tests come later."""

import pytest

from support.postgres import Postgres
from support.server import ALICE, IMAP, with_preset


@pytest.fixture(scope="module")
def postgres():
    pg = Postgres()
    yield pg
    pg.close()


def test_a_server_on_postgres_migrates_delivers_serves_and_restarts(postgres, corvus_factory):
    url = postgres.database()
    srv = corvus_factory(**with_preset(IMAP, listeners=("smtp", "imap", "pop3"),
                                       store={"backend": "postgres", "url": url},
                                       pop3={"allow_plaintext_auth": True}))
    # No schema yet: check and serve say which command creates it.
    p = srv.cli("check", check=False)
    assert p.returncode != 0 and "corvus store migrate" in p.stderr, p.stderr
    srv.cli("store", "migrate")
    p = srv.cli("check")
    assert "store: postgres" in p.stdout and "schema version 2" in p.stdout, p.stdout
    srv.add_user(ALICE)
    srv.start()
    with srv.smtp() as s:
        s.sendmail("bob@remote.example", [ALICE], b"Subject: on postgres\r\n\r\nhello\r\n")
    i = srv.imap(ALICE)
    typ, data = i.select("INBOX")
    assert typ == "OK" and data == [b"1"], data
    typ, data = i.uid("FETCH", "1", "(FLAGS BODY.PEEK[TEXT])")
    assert typ == "OK" and data[0][1] == b"hello\r\n", data
    typ, _ = i.uid("STORE", "1", "+FLAGS", "(\\Flagged)")
    assert typ == "OK"
    i.logout()
    # Everything is in the database: the same after a restart.
    srv.restart()
    i = srv.imap(ALICE)
    i.select("INBOX")
    typ, data = i.uid("FETCH", "1:*", "(FLAGS)")
    assert typ == "OK" and b"\\Flagged" in data[0], data
    i.logout()
    p3 = srv.pop3(ALICE)
    count, _ = p3.stat()
    assert count == 1
    p3.quit()
