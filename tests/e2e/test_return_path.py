"""Return-Path at final delivery (RFC 5321 §4.4, issue 20 item 5): every local delivery puts
`Return-Path: <reverse-path>` on top and drops any Return-Path the message came with, so the
envelope sender survives into the mailbox: an independent POP3 client (poplib) reads it, and
`corvus mailbox export --format mbox` writes it on the From_ line."""

import poplib

from support.net import tls_context
from support.server import ALICE, BOB, PASSWORD

SENDER = "someone@remote.test"


def test_inbound_smtp_gets_the_envelope_sender_and_loses_forged_ones(server):
    s = server.smtp()
    s.sendmail(
        SENDER,
        [ALICE, BOB],
        b"Return-Path: <forged@evil.test>\r\nSubject: rp\r\nreturn-path:\r\n <also@evil.test>\r\n\r\nbody\r\n",
    )
    s.sendmail("", [ALICE], b"Subject: null sender\r\n\r\nbounce-like\r\n")
    s.quit()
    for user in (ALICE, BOB):
        first = server.stored_messages(user, return_path=True)[0]
        assert first.startswith(b"Return-Path: <someone@remote.test>\r\n"), first[:120]
        assert b"evil.test" not in first
        assert first.lower().count(b"return-path") == 1
    second = server.stored_messages(ALICE, return_path=True)[1]
    assert second.startswith(b"Return-Path: <>\r\n"), second[:80]


def test_submission_to_a_local_user_and_the_clients_see_it(corvus_factory, tmp_path):
    srv = corvus_factory(listeners=("smtp", "submission", "pop3s"))
    srv.add_user(ALICE)
    srv.add_user(BOB)
    srv.start()
    s = srv.submit_session(ALICE)
    s.sendmail(ALICE, [BOB], b"From: alice@example.org\r\nSubject: local\r\n\r\nhi bob\r\n")
    s.quit()
    p = poplib.POP3_SSL("127.0.0.1", srv.ports["pop3s"], context=tls_context())
    p.user(BOB)
    p.pass_(PASSWORD)
    lines = p.retr(1)[1]
    p.quit()
    assert lines[0] == b"Return-Path: <alice@example.org>", lines[:3]
    out = tmp_path / "bob-mbox"
    srv.cli("mailbox", "export", BOB, "--format", "mbox", str(out))
    first = (out / "INBOX").read_bytes().split(b"\n", 1)[0]
    assert first.startswith(b"From alice@example.org "), first
