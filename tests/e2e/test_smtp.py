"""SMTP server through smtplib: extensions, commands, policy, AUTH, TLS, delivery
checked byte for byte through `corvus mailbox cat`."""

import base64
import re
import smtplib

import pytest

from support.mail import split_received
from support.net import tls_context
from support.server import ALICE, BOB, FCRDNS_FAIL_IP, PASSWORD


SENDER = "someone@remote.test"


def mail_from_sender(srv):
    """An smtplib session on the smtp listener after EHLO and MAIL FROM:<SENDER>."""
    s = srv.smtp()
    s.ehlo()
    s.mail(SENDER)
    return s


def message(subject="hello", body="Hi there.\r\n", extra_headers="", mid=True) -> bytes:
    h = f"From: <{SENDER}>\r\nTo: <{ALICE}>\r\nSubject: {subject}\r\n"
    if mid:
        h += f"Message-ID: <{subject.replace(' ', '.')}@remote.test>\r\nDate: Mon, 1 Jan 2024 00:00:00 +0000\r\n"
    return (h + extra_headers + "\r\n" + body).encode()


def deliver(s, rcpts, msg, sender=SENDER, mail_opts=(), rcpt_opts=()):
    code, text = s.mail(sender, list(mail_opts))
    assert code == 250, (code, text)
    for r in rcpts:
        code, text = s.rcpt(r, list(rcpt_opts))
        assert code == 250, (r, code, text)
    code, text = s.data(msg)
    assert code == 250, (code, text)
    return text


def enhanced(text: bytes) -> str:
    return text.decode().split(" ", 1)[0]


# --- EHLO and the extensions -----------------------------------------------------------------


def test_ehlo_advertises_extensions_and_auth_only_after_starttls(server):
    s = server.smtp("submission")  # AUTH is offered on submission
    code, msg = s.ehlo()
    assert code == 250
    assert msg.startswith(b"mx.example.org ")
    f = s.esmtp_features
    for ext in ["pipelining", "size", "8bitmime", "smtputf8", "enhancedstatuscodes",
                "chunking", "dsn", "limits", "starttls"]:
        assert ext in f, (ext, f)
    assert f["size"] == str(50 * 1024 * 1024)
    assert "RCPTMAX=100" in f["limits"] and "MAILMAX=100" in f["limits"]
    assert "auth" not in f, "AUTH must not be offered without TLS"
    s.starttls(context=tls_context())
    s.ehlo()
    f = s.esmtp_features
    assert "auth" in f and set(f["auth"].split()) >= {"PLAIN", "LOGIN"}, f
    assert "starttls" not in f
    s.quit()


def test_limits_and_size_follow_config(server_with):
    srv = server_with(smtp={"max_message_size": 12345, "max_recipients": 7,
                            "max_messages_per_session": 3})
    s = srv.smtp()
    s.ehlo()
    assert s.esmtp_features["size"] == "12345"
    assert s.esmtp_features["limits"].split() == ["RCPTMAX=7", "MAILMAX=3"]
    s.quit()


@pytest.mark.parametrize("listener", ["smtp", "submission"])
def test_plaintext_auth_refused_with_538(server, listener):
    s = server.smtp(listener)
    s.ehlo()
    ir = base64.b64encode(f"\0{ALICE}\0{PASSWORD}".encode()).decode()
    code, msg = s.docmd("AUTH", "PLAIN " + ir)
    if listener == "smtp":
        # Port 25 does not offer AUTH at all unless smtp.auth_on_smtp is set.
        assert code == 503 and enhanced(msg) == "5.5.1", (code, msg)
        s.quit()
        return
    assert code == 538, (code, msg)
    assert enhanced(msg) == "5.7.11"
    # Nothing was authenticated: MAIL on submission still needs AUTH.
    if listener == "submission":
        assert s.mail(ALICE)[0] == 530
    s.quit()


def test_plaintext_auth_allowed_by_config(server_with):
    srv = server_with(smtp={"allow_plaintext_auth": True})
    s = srv.smtp("submission")
    s.ehlo()
    assert "auth" in s.esmtp_features
    s.login(ALICE, PASSWORD)
    deliver(s, [BOB], message(), sender=ALICE)
    s.quit()
    assert srv.mailboxes(BOB)["INBOX"] == 1


def test_helo(server):
    s = server.smtp()
    code, msg = s.helo("client.test")
    assert code == 250
    assert msg.startswith(b"mx.example.org")
    # ESMTP parameters need EHLO (smtplib drops them after HELO, so send the line itself).
    assert s.docmd("MAIL", f"FROM:<{SENDER}> BODY=8BITMIME")[0] == 555
    deliver(s, [ALICE], message("via helo"))
    s.quit()
    raw = server.stored_messages(ALICE)[0]
    rec, _ = split_received(raw)
    assert b"with SMTP " in rec, rec


def test_vrfy_off_by_default_answers_252(server):
    s = server.smtp()
    s.ehlo()
    for arg in [f"<{ALICE}>", "nobody@example.org", "alice"]:
        code, msg = s.docmd("VRFY", arg)
        assert code == 252, (arg, code, msg)
        assert enhanced(msg) == "2.5.0"
    assert "vrfy" not in s.esmtp_features
    s.quit()


def test_vrfy_enabled(server_with):
    srv = server_with(smtp={"vrfy": True})
    s = srv.smtp()
    s.ehlo()
    code, msg = s.docmd("VRFY", f"<{ALICE}>")
    assert code == 250 and ALICE.encode() in msg, msg
    code, msg = s.docmd("VRFY", "alice")
    assert code == 250, msg
    code, msg = s.docmd("VRFY", "<nobody@example.org>")
    assert code == 550 and enhanced(msg) == "5.1.1", msg
    s.quit()


def test_expn_help_noop(server):
    s = server.smtp()
    s.ehlo()
    code, msg = s.docmd("EXPN", "staff")
    assert code == 502 and enhanced(msg) == "5.5.1"
    code, msg = s.docmd("HELP")
    assert code == 214
    assert b"EHLO" in msg and b"STARTTLS" in msg
    code, msg = s.noop()
    assert code == 250 and enhanced(msg) == "2.0.0"
    s.quit()


def test_rset_clears_the_transaction(server):
    s = server.smtp()
    s.ehlo()
    assert s.mail(SENDER)[0] == 250
    assert s.rcpt(ALICE)[0] == 250
    code, msg = s.rset()
    assert code == 250
    code, msg = s.rcpt(ALICE)
    assert code == 503, "RCPT after RSET needs a new MAIL"
    deliver(s, [ALICE], message("after rset"))
    s.quit()
    assert server.mailboxes(ALICE)["INBOX"] == 1


def test_unknown_command_500(server):
    s = server.smtp()
    s.ehlo()
    code, msg = s.docmd("FROBNICATE", "now")
    assert code == 500 and enhanced(msg) == "5.5.1"
    assert s.noop()[0] == 250
    s.quit()


def test_sequence_errors(server):
    s = server.smtp()
    code, msg = s.mail(SENDER)
    assert code == 503, "MAIL before HELO/EHLO"
    s.ehlo()
    code, msg = s.rcpt(ALICE)
    assert code == 503 and enhanced(msg) == "5.5.1", "RCPT before MAIL"
    code, msg = s.docmd("DATA")
    assert code == 503, "DATA before MAIL"
    assert s.mail(SENDER)[0] == 250
    code, msg = s.docmd("DATA")
    assert code in (503, 554), "DATA without a recipient"
    assert s.mail(SENDER)[0] == 503, "nested MAIL"
    s.quit()


def test_unknown_local_user_550(server):
    s = mail_from_sender(server)
    code, msg = s.rcpt("nobody@example.org")
    assert code == 550 and enhanced(msg) == "5.1.1", msg
    s.quit()


def test_no_relay_for_unauthenticated(server):
    s = mail_from_sender(server)
    code, msg = s.rcpt("victim@elsewhere.test")
    assert code == 554 and enhanced(msg) == "5.7.1", msg
    # Not after STARTTLS either: TLS is not authentication.
    s.rset()
    s.starttls(context=tls_context())
    s.ehlo()
    s.mail(SENDER)
    code, msg = s.rcpt("victim@elsewhere.test")
    assert code == 554, msg
    s.quit()


def test_authenticated_user_may_send_to_other_domains(server):
    s = server.submit_session(ALICE)
    text = deliver(s, ["friend@elsewhere.test"], message(), sender=ALICE)
    assert b"queued" in text
    s.quit()


def test_plus_addressing_delivers_to_base_user(server):
    s = server.smtp()
    s.ehlo()
    deliver(s, ["alice+lists@example.org"], message("plus"))
    s.quit()
    assert server.mailboxes(ALICE)["INBOX"] == 1
    rec, _ = split_received(server.stored_messages(ALICE)[0])
    assert b"alice+lists@example.org" in rec


def test_alias_delivery(server):
    server.cli("alias", "add", "team@example.org", ALICE, BOB)
    s = server.smtp()
    s.ehlo()
    msg = message("to the team")
    deliver(s, ["team@example.org"], msg)
    # Alias plus a direct recipient overlapping it: alice still gets one copy.
    deliver(s, ["team@example.org", ALICE], message("overlap"))
    s.quit()
    assert server.mailboxes(ALICE)["INBOX"] == 2
    assert server.mailboxes(BOB)["INBOX"] == 2
    _, body = split_received(server.stored_messages(BOB)[0])
    assert body == msg


def test_size_declared_too_big_552(server_with):
    srv = server_with(smtp={"max_message_size": 10000})
    s = srv.smtp()
    s.ehlo()
    code, msg = s.mail(SENDER, ["SIZE=10001"])
    assert code == 552 and enhanced(msg) == "5.3.4", msg
    assert s.mail(SENDER, ["SIZE=9000"])[0] == 250
    s.quit()


def test_size_actual_too_big_552(server_with):
    srv = server_with(smtp={"max_message_size": 10000})
    s = mail_from_sender(srv)
    s.rcpt(ALICE)
    big = message(body=("y" * 70 + "\r\n") * 200)
    assert len(big) > 10000
    code, msg = s.data(big)
    assert code == 552, msg
    # The session goes on and a message that fits is accepted.
    deliver(s, [ALICE], message("small"))
    s.quit()
    assert srv.mailboxes(ALICE)["INBOX"] == 1


def test_max_recipients_452(server_with):
    srv = server_with(smtp={"max_recipients": 3})
    s = mail_from_sender(srv)
    for r in [ALICE, BOB, "alice+2@example.org"]:
        assert s.rcpt(r)[0] == 250
    code, msg = s.rcpt("bob+2@example.org")
    assert code == 452 and enhanced(msg) == "4.5.3", msg
    code, _ = s.data(message("three"))
    assert code == 250
    s.quit()
    assert srv.mailboxes(ALICE)["INBOX"] == 1
    assert srv.mailboxes(BOB)["INBOX"] == 1


def test_max_messages_per_session(server_with):
    srv = server_with(smtp={"max_messages_per_session": 2})
    s = srv.smtp()
    s.ehlo()
    deliver(s, [ALICE], message("one"))
    deliver(s, [ALICE], message("two"))
    code, msg = s.mail(SENDER)
    assert code == 421, msg
    s.close()


def test_dsn_parameters_accepted(server):
    s = server.smtp()
    s.ehlo()
    deliver(
        s, [ALICE], message("dsn"),
        mail_opts=["RET=HDRS", "ENVID=abc+2Bdef"],
        rcpt_opts=["NOTIFY=SUCCESS,FAILURE", f"ORCPT=rfc822;{ALICE}"],
    )
    s.mail(SENDER)
    code, msg = s.rcpt(ALICE, ["NOTIFY=BOGUS"])
    assert code in (501, 555), msg
    s.quit()


# --- submission -------------------------------------------------------------------------------


@pytest.mark.parametrize("listener", ["submission", "submissions"])
def test_submission_requires_auth_before_mail(server, listener):
    s = server.smtp(listener)
    s.ehlo()
    if listener == "submission":
        s.starttls(context=tls_context())
        s.ehlo()
    code, msg = s.mail(ALICE)
    assert code == 530 and enhanced(msg) == "5.7.0", msg
    s.quit()


def test_mail_from_must_belong_to_user(server):
    server.cli("alias", "add", "postmaster@example.org", ALICE)
    s = server.submit_session(ALICE)
    code, msg = s.mail(BOB)
    assert code == 553 and enhanced(msg) == "5.7.1", msg
    code, msg = s.mail("ceo@elsewhere.test")
    assert code == 553, msg
    code, msg = s.mail("<>")
    assert code == 553, msg
    # Its own address, a plus-address and an alias pointing at it are fine.
    for own in [ALICE, "alice+x@example.org", "postmaster@example.org"]:
        assert s.mail(own)[0] == 250, own
        s.rset()
    s.quit()


def test_allow_any_sender(server_with):
    srv = server_with(smtp={"allow_any_sender": True})
    s = srv.submit_session(ALICE)
    assert s.mail(BOB)[0] == 250
    s.quit()


def auth_plain(s, user, pw):
    ir = base64.b64encode(f"\0{user}\0{pw}".encode()).decode()
    return s.docmd("AUTH", "PLAIN " + ir)


def tls_session(server, listener="submission"):
    s = server.smtp(listener)
    s.ehlo()
    if listener != "submissions":
        s.starttls(context=tls_context())
        s.ehlo()
    return s


def test_auth_plain_success(server):
    s = tls_session(server)
    code, msg = auth_plain(s, ALICE, PASSWORD)
    assert code == 235 and enhanced(msg) == "2.7.0", msg
    code, msg = auth_plain(s, ALICE, PASSWORD)
    assert code == 503, "AUTH twice"
    deliver(s, [BOB], message(), sender=ALICE)
    s.quit()


def test_auth_plain_without_initial_response(server):
    s = tls_session(server)
    code, msg = s.docmd("AUTH", "PLAIN")
    assert code == 334
    code, msg = s.docmd(base64.b64encode(f"\0{ALICE}\0{PASSWORD}".encode()).decode())
    assert code == 235, msg
    s.quit()


def test_auth_login_success(server):
    s = tls_session(server)
    code, msg = s.docmd("AUTH", "LOGIN")
    assert code == 334 and base64.b64decode(msg) == b"Username:"
    code, msg = s.docmd(base64.b64encode(ALICE.encode()).decode())
    assert code == 334 and base64.b64decode(msg) == b"Password:"
    code, msg = s.docmd(base64.b64encode(PASSWORD.encode()).decode())
    assert code == 235, msg
    assert s.mail(ALICE)[0] == 250
    s.quit()


def test_auth_bad_password_535(server):
    s = tls_session(server)
    code, msg = auth_plain(s, ALICE, "wrong")
    assert code == 535 and enhanced(msg) == "5.7.8", msg
    code, msg = auth_plain(s, "nobody@example.org", PASSWORD)
    assert code == 535, msg
    # Still unauthenticated.
    assert s.mail(ALICE)[0] == 530
    # Cancelling an exchange.
    code, _ = s.docmd("AUTH", "LOGIN")
    assert code == 334
    code, _ = s.docmd("*")
    assert code == 501
    assert s.noop()[0] == 250
    s.quit()


def test_auth_unknown_mechanism(server):
    s = tls_session(server)
    code, msg = s.docmd("AUTH", "CRAM-MD5")
    assert code == 504, msg
    s.quit()


def test_auth_brute_force_gets_421(server_with):
    srv = server_with(limits={"max_auth_failures": 3})
    s = tls_session(srv)
    assert auth_plain(s, ALICE, "bad1")[0] == 535
    assert auth_plain(s, ALICE, "bad2")[0] == 535
    # The third failure reaches the limit: 535 then 421 and the connection closes.
    code, _ = auth_plain(s, ALICE, "bad3")
    assert code == 535
    code, msg = s.getreply()
    assert code == 421, msg
    s.close()
    # The IP stays refused, even with the right password.
    s = tls_session(srv)
    code, msg = auth_plain(s, ALICE, PASSWORD)
    assert code == 421, msg
    s.close()


# --- TLS ----------------------------------------------------------------------------------


def test_starttls_resets_state(server):
    s = server.smtp()
    s.ehlo()
    s.starttls(context=tls_context())
    # RFC 3207: the EHLO from before TLS is forgotten.
    code, msg = s.docmd("MAIL", f"FROM:<{SENDER}>")
    assert code == 503, msg
    code, msg = s.docmd("STARTTLS")
    assert code == 503, "STARTTLS twice"
    s.quit()


def test_implicit_tls_submissions(server):
    s = server.smtp("submissions")
    s.ehlo()
    assert "auth" in s.esmtp_features
    assert "starttls" not in s.esmtp_features
    assert isinstance(s.sock.version(), str) and s.sock.version().startswith("TLS")
    s.login(ALICE, PASSWORD)
    msg = message("over implicit tls")
    deliver(s, [BOB], msg, sender=ALICE)
    s.quit()
    raw = server.stored_messages(BOB)[0]
    rec, rest = split_received(raw)
    assert re.search(rb"\(using TLS1\.[23] ", rec), rec
    assert b"authenticated as alice@example.org" in rec, rec
    assert b"ESMTPSA" in rec, rec
    assert rest == msg


def test_received_header_on_starttls_inbound(server):
    s = server.smtp()
    s.ehlo()
    s.starttls(context=tls_context())
    s.ehlo()
    msg = message("inbound tls")
    deliver(s, [ALICE], msg)
    s.quit()
    rec, rest = split_received(server.stored_messages(ALICE)[0])
    assert rest == msg
    # FCrDNS passed: the verified name, no mismatch note.
    assert re.match(rb"Received: from client\.test \([^ ()]+ \[127\.0\.0\.1\]\)\r\n", rec), rec
    assert b"by mx.example.org" in rec
    assert b"with ESMTPS " in rec, rec
    assert re.search(rb"\(using TLS1\.[23] ", rec), rec
    assert b"authenticated as" not in rec
    assert b"for <alice@example.org>" in rec


def test_received_header_plain_inbound(server):
    s = server.smtp()
    s.ehlo()
    deliver(s, [ALICE], message("plain"))
    s.quit()
    rec, _ = split_received(server.stored_messages(ALICE)[0])
    assert re.match(rb"Received: from client\.test \([^ ()]+ \[127\.0\.0\.1\]\)\r\n", rec), rec
    assert b"with ESMTP " in rec and b"using" not in rec, rec


def test_fcrdns_mismatch_recorded_by_default(server):
    s = server.smtp(source=FCRDNS_FAIL_IP)
    s.ehlo()
    deliver(s, [ALICE], message("liar"))
    s.quit()
    rec, _ = split_received(server.stored_messages(ALICE)[0])
    assert re.match(
        rb"Received: from client\.test \([^ ()]+ \(forward lookup mismatch\) \[127\.0\.0\.3\]\)", rec
    ), rec


def test_fcrdns_reject_policy(server_with):
    srv = server_with(smtp={"fcrdns": "reject"})
    r = srv.raw_smtp(source=FCRDNS_FAIL_IP)
    code, text = r.reply()
    assert code == 550 and text[0].startswith("5.7.25"), text
    assert r.closed()
    r = srv.raw_smtp()  # 127.0.0.1 passes
    assert r.reply()[0] == 220
    r.cmd("QUIT")


def test_submission_adds_message_id_and_date_when_missing(server):
    s = server.submit_session(ALICE)
    bare = f"From: <{ALICE}>\r\nTo: <{BOB}>\r\nSubject: no ids\r\n\r\nbody\r\n".encode()
    deliver(s, [BOB], bare, sender=ALICE)
    full = message("has ids")
    deliver(s, [BOB], full, sender=ALICE)
    s.quit()
    first, second = server.stored_messages(BOB)
    rec, rest = split_received(first)
    assert b"authenticated as alice@example.org" in rec
    assert rest.endswith(bare)
    added = rest[: len(rest) - len(bare)]
    assert re.search(rb"^Date: .+\r\n", added, re.M), added
    assert re.search(rb"^Message-ID: <[^>]+@mx\.example\.org>\r\n", added, re.M), added
    # Present ones are kept and not duplicated.
    _, rest = split_received(second)
    assert rest == full


def test_inbound_mx_does_not_add_message_id(server):
    s = server.smtp()
    s.ehlo()
    bare = f"From: <{SENDER}>\r\nSubject: no ids\r\n\r\nbody\r\n".encode()
    deliver(s, [ALICE], bare)
    s.quit()
    _, rest = split_received(server.stored_messages(ALICE)[0])
    assert rest == bare


# --- data fidelity --------------------------------------------------------------------------


def test_8bit_message_byte_for_byte(server):
    body = "Grüße aus Köln – ½ € ✓\r\n".encode("utf-8") + bytes(range(0x80, 0x100)) + b"\r\n"
    msg = message("8bit", body="", extra_headers="Content-Type: text/plain; charset=utf-8\r\n"
                  "Content-Transfer-Encoding: 8bit\r\n") + body
    s = server.smtp()
    s.ehlo()
    assert "8bitmime" in s.esmtp_features
    deliver(s, [ALICE], msg, mail_opts=["BODY=8BITMIME"])
    s.quit()
    _, rest = split_received(server.stored_messages(ALICE)[0])
    assert rest == msg


def test_utf8_message_and_addresses_byte_for_byte(server):
    server.cli("alias", "add", "jösé@example.org", ALICE)
    sender = "δοκιμή@παράδειγμα.test"
    msg = (
        f"From: Δοκιμή <{sender}>\r\nTo: José <jösé@example.org>\r\n"
        f"Subject: Grüße 🦉\r\nMessage-ID: <utf8@remote.test>\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n\r\n"
        "日本語のテキスト\r\n"
    ).encode("utf-8")
    s = server.smtp()
    s.ehlo()
    assert "smtputf8" in s.esmtp_features
    deliver(s, ["jösé@example.org"], msg, sender=sender, mail_opts=["SMTPUTF8", "BODY=8BITMIME"])
    s.quit()
    rec, rest = split_received(server.stored_messages(ALICE)[0])
    assert rest == msg
    assert b"UTF8SMTP" in rec, rec


def test_utf8_address_needs_smtputf8(server):
    s = server.smtp()
    s.ehlo()
    s.command_encoding = "utf-8"
    code, msg = s.docmd("MAIL", "FROM:<δοκιμή@παράδειγμα.test>")
    assert code == 553, msg
    s.quit()


def test_dot_stuffing_round_trip(server):
    body = ".\r\n..\r\n...\r\n.leading dot\r\n..two dots\r\n. space\r\nend.\r\n.\r\n"
    msg = message("dots", body=body)
    s = server.smtp()
    s.ehlo()
    deliver(s, [ALICE], msg)  # smtplib stuffs the dots, the server must unstuff them
    s.quit()
    _, rest = split_received(server.stored_messages(ALICE)[0])
    assert rest == msg


def test_25mb_message(server_with):
    srv = server_with(smtp={"max_message_size": 30 * 1024 * 1024})
    line = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-_+=!?%&*()\r\n"
    body = line * (25 * 1024 * 1024 // len(line) + 1)
    msg = message("big") + body
    assert len(msg) > 25 * 1024 * 1024
    s = srv.smtp(timeout=120)
    s.ehlo()
    deliver(s, [ALICE], msg, mail_opts=[f"SIZE={len(msg)}"])
    s.quit()
    uids = srv.uids(ALICE)
    assert len(uids) == 1
    _, rest = split_received(srv.cat(ALICE, "INBOX", uids[0]))
    assert len(rest) == len(msg)
    assert rest == msg


# --- addresses and edge cases -------------------------------------------------------------


def test_null_sender_accepted_inbound(server):
    """Bounces come with MAIL FROM:<>; an MX must take them."""
    s = server.smtp()
    s.ehlo()
    code, msg = s.docmd("MAIL", "FROM:<>")
    assert code == 250, msg
    assert s.rcpt(ALICE)[0] == 250
    assert s.data(message("bounce"))[0] == 250
    s.quit()
    assert server.mailboxes(ALICE)["INBOX"] == 1


def test_recipient_spellings(server):
    server.cli("alias", "add", "postmaster@example.org", ALICE)
    s = mail_from_sender(server)
    for rcpt in ["<ALICE@Example.ORG>", '<"alice"@example.org>', "<@relay.test:alice@example.org>",
                 "<Postmaster>", "<postmaster@example.org>"]:
        code, msg = s.docmd("RCPT", f"TO:{rcpt}")
        assert code == 250, (rcpt, code, msg)
    for bad in ["<>", "<alice@>", "<@example.org>", "<a..b@example.org>", "<alice@exa mple.org>"]:
        code, msg = s.docmd("RCPT", f"TO:{bad}")
        assert code == 501, (bad, code, msg)
    assert s.data(message("spellings"))[0] == 250
    s.quit()
    # One copy, though alice was named five ways.
    assert server.mailboxes(ALICE)["INBOX"] == 1


def test_size_limit_boundary(server_with):
    srv = server_with(smtp={"max_message_size": 2000})
    exact = message("exact")
    exact += b"x" * (2000 - len(exact) - 2) + b"\r\n"
    assert len(exact) == 2000
    s = srv.smtp()
    s.ehlo()
    deliver(s, [ALICE], exact, mail_opts=["SIZE=2000"])
    s.mail(SENDER)
    s.rcpt(ALICE)
    code, msg = s.data(exact[:-2] + b"x\r\n")
    assert code == 552, msg
    s.quit()
    assert [split_received(m)[1] for m in srv.stored_messages(ALICE)] == [exact]


def test_authzid_mismatch_counts_as_failure_and_ends_with_421(server_with):
    srv = server_with(limits={"max_auth_failures": 2})
    s = tls_session(srv)
    ir = base64.b64encode(f"{BOB}\0{ALICE}\0{PASSWORD}".encode()).decode()
    code, msg = s.docmd("AUTH", "PLAIN " + ir)
    assert code == 535, "alice may not act as bob"
    code, msg = s.docmd("AUTH", "PLAIN " + ir)
    assert code == 535
    code, msg = s.getreply()
    assert code == 421, msg
    s.close()


def test_authenticated_sender_checked_on_mx_port_too(server_with):
    """AUTH after STARTTLS on the smtp listener (with smtp.auth_on_smtp) lets a user relay; it
    must not let them forge someone else's MAIL FROM (the submission rule applies to every
    authenticated session)."""
    server = server_with(smtp={"auth_on_smtp": True})
    s = tls_session(server, "smtp")
    assert auth_plain(s, ALICE, PASSWORD)[0] == 235
    code, msg = s.mail(BOB)
    assert code == 553, msg
    assert s.mail(ALICE)[0] == 250
    s.quit()
