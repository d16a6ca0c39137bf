"""Conformance defects found by running Corvus against real clients (issue 20), each with a
client we did not write (imaplib, the corvus CLI as an admin types it): UID 4294967295 is a
number, not `*`; `~` starts an atom; SENTON compares the Date field's own date; the CLI
refuses to make a domain local by accident, refuses to create a store nobody runs, and names
the config file in its errors."""

import imaplib
import os
import subprocess

from support.net import tls_context
from support.server import ALICE, CORVUS_BIN, PASSWORD, child_env
from support.wait import wait_for


def imap_login(srv):
    m = imaplib.IMAP4_SSL("127.0.0.1", srv.ports["imaps"], ssl_context=tls_context())
    m.login(ALICE, PASSWORD)
    return m


def append(m, folder, subject, date="Mon, 1 Jan 2024 23:30:00 -0500"):
    msg = f"Date: {date}\r\nSubject: {subject}\r\n\r\nbody\r\n".encode()
    typ, _ = m.append(folder, None, None, msg)
    assert typ == "OK"


def test_uid_4294967295_is_a_number_not_star(corvus_factory):
    srv = corvus_factory(listeners=("smtp", "imaps"))
    srv.add_user(ALICE)
    srv.start()
    m = imap_login(srv)
    m.create("Other")
    append(m, "INBOX", "one")
    append(m, "INBOX", "two")
    m.select("INBOX")
    # The highest UID is 2: 3:4294967295 names nothing; 3:* names UID 2.
    assert m.uid("SEARCH", "UID 3:4294967295") == ("OK", [b""])
    assert m.uid("FETCH", "3:4294967295", "(FLAGS)")[1] in ([None], [])
    typ, _ = m.uid("STORE", "3:4294967295", "+FLAGS", "(\\Flagged)")
    assert typ == "OK"
    assert m.uid("SEARCH", "FLAGGED") == ("OK", [b""])
    typ, _ = m.uid("COPY", "3:4294967295", "Other")
    assert typ == "OK"
    typ, _ = m.uid("MOVE", "3:4294967295", "Other")
    assert typ == "OK"
    assert m.uid("SEARCH", "ALL") == ("OK", [b"1 2"]), "MOVE took a message outside the range"
    assert m.status("Other", "(MESSAGES)")[1] == [b'"Other" (MESSAGES 0)']
    # `*` still means the highest UID, and 1:4294967295 everything.
    assert m.uid("SEARCH", "UID 3:*") == ("OK", [b"2"])
    assert m.uid("SEARCH", "UID 1:4294967295") == ("OK", [b"1 2"])
    m.logout()


def test_tilde_names_and_sent_dates(corvus_factory):
    srv = corvus_factory(listeners=("smtp", "imaps"))
    srv.add_user(ALICE)
    srv.start()
    m = imap_login(srv)
    typ, data = m.create("~foo")
    assert typ == "OK", data
    append(m, "~foo", "tilde")
    typ, data = m.select("~foo")
    assert typ == "OK" and data == [b"1"], data
    # 23:30 at -0500 on 1 Jan is 2 Jan in UTC: SENTON compares the date as written.
    assert m.search(None, "SENTON", "1-Jan-2024") == ("OK", [b"1"])
    assert m.search(None, "SENTON", "2-Jan-2024") == ("OK", [b""])
    assert m.search(None, "SENTBEFORE", "2-Jan-2024") == ("OK", [b"1"])
    assert m.search(None, "SENTSINCE", "2-Jan-2024") == ("OK", [b""])
    # A sequence number beyond the mailbox is a key that matches nothing, not an error.
    assert m.search(None, "1000") == ("OK", [b""])
    m.logout()


def test_user_add_refuses_a_domain_that_is_not_local(corvus_factory):
    srv = corvus_factory()
    r = srv.cli("user", "add", "bob@exampel.org", "--password", "x", check=False)
    assert r.returncode != 0
    assert "exampel.org is not a local domain" in r.stderr and "--create-domain" in r.stderr
    assert "exampel.org" not in srv.cli("domain", "list").stdout
    r = srv.cli("user", "add", "bob@partner.test", "--password", "x", "--create-domain")
    assert "domain partner.test added as local" in r.stdout
    srv.start()
    r = srv.cli("user", "add", "carol@typo.test", "--password", "x", check=False)
    assert r.returncode != 0 and "--create-domain" in r.stderr, "the same through the server"


def test_admin_commands_do_not_create_a_store_nobody_runs(tmp_path):
    env = child_env()
    for k in [k for k in env if k.startswith("CORVUS_")]:
        del env[k]
    r = subprocess.run(
        [CORVUS_BIN, "user", "add", "alice@localhost", "--password", "x"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
    )
    assert r.returncode != 0
    assert "no Corvus store at" in r.stderr and "-c FILE" in r.stderr, r.stderr
    assert not (tmp_path / "corvus-data").exists()


def test_startup_hint_is_the_exact_command(corvus_factory):
    srv = corvus_factory()
    srv.start()
    # Printed once the server looked its accounts up, which may be a moment after it is
    # ready (the control socket is there): on PostgreSQL that is a query.
    hint = wait_for(lambda: next((l for l in srv.stdout_path.read_text().splitlines()
                                  if "No accounts yet" in l), None),
                    what="the startup hint on stdout", timeout=10)
    command = hint.split("Add one with:", 1)[1].strip()
    assert command.startswith(f"corvus -c '{srv.config}' user add alice@example.org"), hint
    # Run as printed, from another directory: the running server gets the user.
    args = command.replace("corvus", CORVUS_BIN, 1)
    r = subprocess.run(args, shell=True, cwd="/", env=child_env(), capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "alice@example.org" in srv.cli("user", "list").stdout


def test_check_errors_name_the_file(tmp_path):
    cfg = tmp_path / "corvus.toml"
    cfg.write_text('[listen]\nsmtp = "nonsense"\n')
    r = subprocess.run([CORVUS_BIN, "-c", str(cfg), "check"], env=child_env(), capture_output=True,
                       text=True, timeout=60)
    assert r.returncode != 0
    assert f"error: {cfg}: listen.smtp: " in r.stderr, r.stderr


def test_auth_is_not_offered_on_port_25_unless_configured(server_with, corvus_factory):
    """AUTH belongs on submission: the MX neither offers nor takes it by default."""
    from test_smtp import auth_plain

    srv = server_with(smtp={"allow_plaintext_auth": True})
    s = srv.smtp("smtp")
    s.ehlo()
    assert not s.has_extn("auth")
    code, msg = auth_plain(s, ALICE, PASSWORD)
    assert code == 503 and b"submission" in msg, msg
    assert s.noop()[0] == 250  # the session goes on
    s.quit()
    s = srv.smtp("submission")
    s.ehlo()
    assert s.has_extn("auth")
    assert auth_plain(s, ALICE, PASSWORD)[0] == 235
    s.quit()
    on = corvus_factory("on", smtp={"allow_plaintext_auth": True, "auth_on_smtp": True})
    on.add_user(ALICE)
    on.start()
    s = on.smtp("smtp")
    s.ehlo()
    assert s.has_extn("auth") and auth_plain(s, ALICE, PASSWORD)[0] == 235
    s.quit()


def test_relay_networks_may_relay_without_auth_and_nobody_else(server_with):
    import smtplib

    import pytest

    srv = server_with(smtp={"relay_networks": ["127.0.0.8/30"]})
    # 127.0.0.9 is inside: its mail for another domain is queued without AUTH.
    s = srv.smtp("smtp", source="127.0.0.9")
    refused = s.sendmail("printer@example.org", ["someone@elsewhere.test"], b"Subject: scan\r\n\r\nx\r\n")
    s.quit()
    assert refused == {}
    # 127.0.0.1 is not: still no open relay.
    s = srv.smtp("smtp")
    with pytest.raises(smtplib.SMTPRecipientsRefused):
        s.sendmail("x@example.org", ["victim@victim.test"], b"Subject: x\r\n\r\nx\r\n")
    s.quit()
    # A wrong network is a clear config error naming the file and the key.
    bad = srv.config.parent / "bad.toml"
    bad.write_text('[smtp]\nrelay_networks = ["10.0.0.0/33"]\n')
    r = subprocess.run([CORVUS_BIN, "-c", str(bad), "check"], env=child_env(), capture_output=True,
                       text=True, timeout=60)
    assert r.returncode != 0 and f"{bad}: smtp.relay_networks" in r.stderr, r.stderr


def test_list_extended_unknown_options_are_bad_and_empty_expunge_keeps_modseq(corvus_factory):
    srv = corvus_factory(listeners=("smtp", "imaps"))
    srv.add_user(ALICE)
    srv.start()
    m = imap_login(srv)
    for args in ['(BOGUS) "" *', '(RECURSIVEMATCH) "" *', '"" * RETURN (BOGUS)']:
        tag = m._new_tag()
        m.send(tag + b" LIST " + args.encode() + b"\r\n")
        while True:
            line = m.readline()
            if line.startswith(tag):
                break
        assert line.split()[1] == b"BAD", (args, line)
    typ, _ = m.list('""', "*")
    assert typ == "OK"
    append(m, "INBOX", "one")
    typ, data = m.select("INBOX")
    before = m.response("HIGHESTMODSEQ")
    # No \Deleted messages: EXPUNGE and CLOSE remove nothing and change nothing.
    m.expunge()
    m.close()
    m.select("INBOX")
    after = m.response("HIGHESTMODSEQ")
    m.logout()
    assert before[1] == after[1] and before[1] != [None], (before, after)


def test_an_ip_address_as_tls_server_name_is_not_a_warning(corvus_factory):
    """Clients that connect by address send it as SNI; rustls calls that illegal, and it was
    logged as a WARN for every such client (issue 20, item 19)."""
    import shutil

    import pytest

    if not shutil.which("openssl"):
        pytest.skip("openssl is not installed")
    srv = corvus_factory(listeners=("smtp", "submissions"))
    srv.start()
    r = subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{srv.ports['submissions']}",
         "-servername", "127.0.0.1", "-quiet"],
        input="QUIT\r\n", capture_output=True, text=True, timeout=30,
    )
    assert "220 " in r.stdout, (r.stdout, r.stderr)
    log = srv.stderr_path.read_text()
    assert "SNI" not in log and " WARN " not in log, log[-2000:]
