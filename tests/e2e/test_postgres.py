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


def test_cli_commands_work_on_the_database_from_another_machine(postgres, corvus_factory, tmp_path):
    """Every admin command works against the database directly, from a machine without a
    node (another data_dir: no control socket), while a node runs; the node sees the result
    at once."""
    import subprocess
    import imaplib
    from support.server import CORVUS_BIN, PASSWORD, child_env

    url = postgres.database()
    srv = corvus_factory(**with_preset(IMAP, listeners=("smtp", "imap"),
                                       store={"backend": "postgres", "url": url}))
    srv.cli("store", "migrate")
    srv.start()
    # The admin's machine: the same database, its own (empty) data_dir.
    remote = tmp_path / "admin.toml"
    remote.write_text(
        f'hostname = "admin.example.org"\ndomains = ["example.org"]\n'
        f'data_dir = "{tmp_path / "admin-data"}"\n'
        f'[store]\nbackend = "postgres"\nurl = "{url}"\n')

    def cli(*args):
        p = subprocess.run([CORVUS_BIN, "-c", str(remote), *args], capture_output=True,
                           text=True, env=child_env(), timeout=60)
        assert p.returncode == 0, f"corvus {' '.join(args)}: {p.stdout}{p.stderr}"
        return p.stdout

    cli("user", "add", "carol@example.org", "--password", PASSWORD)
    cli("domain", "add", "other.example")
    cli("alias", "add", "sales@other.example", "carol@example.org")
    assert "carol@example.org" in cli("user", "list")
    assert "other.example" in cli("domain", "list")
    assert "sales@other.example" in cli("alias", "list")
    assert "v=DKIM1" in cli("dkim", "generate", "example.org")
    # The running node accepts mail for the new domain's alias and lets the new user in.
    with srv.smtp() as s:
        s.sendmail("bob@remote.example", ["sales@other.example"], b"Subject: via alias\r\n\r\nhi\r\n")
    i = srv.imap("carol@example.org")
    typ, data = i.select("INBOX")
    assert typ == "OK" and data == [b"1"], data
    i.logout()
    # Mailbox commands read what the node wrote; queue commands answer.
    assert "INBOX\t1" in cli("mailbox", "list", "carol@example.org")
    assert b"via alias" in subprocess.run(
        [CORVUS_BIN, "-c", str(remote), "mailbox", "cat", "carol@example.org", "INBOX", "1"],
        capture_output=True, env=child_env(), timeout=60).stdout
    assert "queue is empty" in cli("queue", "list")
    cli("user", "del", "carol@example.org")
    with pytest.raises(imaplib.IMAP4.error):
        srv.imap("carol@example.org")


def test_check_says_what_is_wrong_with_the_database(postgres, tmp_path):
    """`corvus check` on a database that does not answer, with a user it does not know, and
    with a schema newer than this Corvus: one line each, naming the cause and what to do."""
    import subprocess
    from support.net import free_port
    from support.server import CORVUS_BIN, child_env

    def check(url: str) -> str:
        cfg = tmp_path / "check.toml"
        cfg.write_text(f'hostname = "mx.example.org"\ndomains = ["example.org"]\n'
                       f'data_dir = "{tmp_path / "data"}"\n'
                       f'[store]\nbackend = "postgres"\nurl = "{url}"\n')
        p = subprocess.run([CORVUS_BIN, "-c", str(cfg), "check"], capture_output=True,
                           text=True, env=child_env(), timeout=60)
        assert p.returncode != 0, p.stdout
        return p.stderr

    out = check(f"host=127.0.0.1 port={free_port()} user=corvus dbname=corvus connect_timeout=5")
    assert "unavailable" in out and "Connection refused" in out, out
    url = postgres.database()
    out = check(url.replace("user=postgres", "user=nobody"))
    assert 'role "nobody" does not exist' in out and "check the user and password" in out, out
    assert "run `corvus store migrate`" in check(url)
    postgres.sql("CREATE TABLE schema_version (id INT PRIMARY KEY, version INT NOT NULL); "
                 "INSERT INTO schema_version VALUES (1, 99)", db=url.split("dbname=")[1])
    out = check(url)
    assert "newer than this Corvus" in out and "upgrade corvus" in out, out
