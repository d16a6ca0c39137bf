"""Outbound delivery: two Corvus instances on different loopback addresses and a real DNS
server on loopback serving MX, A and TXT records (issue: durable queue, MX delivery, DKIM,
bounces). Also delivery to an MTA we did not write (aiosmtpd)."""

import re
import time

import dkim
import pytest

from support.certs import issue_cert
from support.dns import DnsServer
from support.net import free_port
from support.server import Server
from support.wait import wait_for

PW = "secret-pw"


@pytest.fixture
def net(tmp_path):
    """A DNS zone and a factory for Corvus instances that use it."""
    zone = DnsServer()
    made: list[Server] = []

    def make(name, domains, host="127.0.0.1", ports=None, delivery="", extra=""):
        c = Server(
            tmp_path / name,
            zone.addr,
            domains=domains,
            hostname=f"mx.{domains[0]}",
            host=host,
            ports=ports,
            smtp={"allow_plaintext_auth": True},
            extra=f"[delivery]\n{delivery}\n{extra}",
        )
        made.append(c)
        return c

    yield zone, make
    for c in made:
        if c.running:
            c.stop(expect=0)
    zone.close()


def session(c: Server, user: str = "alice@a.test"):
    """An authenticated smtplib session on c's submission listener."""
    s = c.smtp("submission")
    s.ehlo()
    s.login(user, PW)
    return s


def submit(c: Server, user: str, to: list[str], body: bytes, subject="test"):
    s = session(c, user)
    msg = b"From: <%s>\r\nTo: %s\r\nSubject: %s\r\n\r\n" % (user.encode(), ", ".join(to).encode(), subject.encode()) + body
    s.sendmail(user, to, msg)
    s.quit()


def two_sites(zone, make, b_host="127.0.0.2", delivery=""):
    """Site A (alice@a.test, sends) and site B (bob@b.test, receives on port P at b_host);
    A delivers to port P."""
    port = free_port()
    retry = "" if "retry" in delivery else 'retry = ["1s"]'
    a = make("a", ["a.test"], delivery=f"port = {port}\n{retry}\n{delivery}", extra="")
    b = make("b", ["b.test"], host=b_host, ports={"smtp": port})
    a.add_user("alice@a.test", PW)
    b.add_user("bob@b.test", PW)
    zone.add("b.test", "MX", "10 mx.b.test.")
    zone.add("mx.b.test", "A", b_host)
    zone.add("a.test", "MX", "10 mx.a.test.")
    zone.add("mx.a.test", "A", "127.0.0.1")
    return a, b, port


def test_delivery_a_to_b_with_dkim(net):
    zone, make = net
    a, b, _ = two_sites(zone, make)
    out = a.cli("dkim", "generate", "a.test", "--selector", "s1").stdout
    record = re.search(r'IN TXT (".*")', out).group(1)
    zone.add("s1._domainkey.a.test", "TXT", record)
    a.start()
    b.start()
    submit(a, "alice@a.test", ["bob@b.test"], b"Hello B\r\n", subject="dkim test")
    msgs = wait_for(lambda: b.stored_messages("bob@b.test"), what="delivery to B")
    raw = msgs[0]
    assert b"Hello B" in raw
    assert b"DKIM-Signature:" in raw
    # B received it over SMTP from A.
    assert b"by mx.b.test (Corvus)" in raw
    # An independent verifier (dkimpy) accepts the signature; the Received header B added on
    # top is not signed and does not matter.
    assert dkim.verify(raw, dnsfunc=zone.resolve_txt), "dkimpy rejected the signature"
    # B's final delivery records the envelope sender; the Return-Path on top does not break
    # the signature either.
    filed = b.stored_messages("bob@b.test", return_path=True)[0]
    assert filed.startswith(b"Return-Path: <alice@a.test>\r\n"), filed[:100]
    assert dkim.verify(filed, dnsfunc=zone.resolve_txt)
    # Delivered messages leave the queue.
    wait_queue_empty(a)


def test_rsa_dkim_verifies(net):
    zone, make = net
    a, b, _ = two_sites(zone, make)
    out = a.cli("dkim", "generate", "a.test", "--selector", "r1", "--algorithm", "rsa").stdout
    record = re.search(r'IN TXT (".*")', out).group(1)
    zone.add("r1._domainkey.a.test", "TXT", record)
    a.start()
    b.start()
    submit(a, "alice@a.test", ["bob@b.test"], b"RSA signed\r\n")
    raw = wait_for(lambda: b.stored_messages("bob@b.test"), what="delivery")[0]
    assert dkim.verify(raw, dnsfunc=zone.resolve_txt)


def test_remote_down_then_up_is_delivered_on_retry(net):
    zone, make = net
    a, b, _ = two_sites(zone, make)
    a.start()
    submit(a, "alice@a.test", ["bob@b.test"], b"retry me\r\n")
    # Attempted, failed, still queued with the error recorded.
    listing = wait_for(lambda: (lambda o: o if "bob@b.test" in o and "(" in o else None)(a.cli("queue", "list").stdout), what="queued with error")
    assert "bob@b.test" in listing
    b.start()
    a.cli("queue", "flush")
    msgs = wait_for(lambda: b.stored_messages("bob@b.test"), what="delivery after retry")
    assert b"retry me" in msgs[0]


def test_backup_mx_used_when_primary_down(net):
    zone, make = net
    port = free_port()
    a = make("a", ["a.test"], delivery=f"port = {port}\nretry = [\"1s\"]")
    b = make("b", ["b.test"], host="127.0.0.2", ports={"smtp": port})
    a.add_user("alice@a.test", PW)
    b.add_user("bob@b.test", PW)
    zone.add("b.test", "MX", "10 mx1.b.test.")
    zone.add("b.test", "MX", "20 mx2.b.test.")
    zone.add("mx1.b.test", "A", "127.0.0.9")  # nothing listens there
    zone.add("mx2.b.test", "A", "127.0.0.2")
    a.start()
    b.start()
    submit(a, "alice@a.test", ["bob@b.test"], b"via backup\r\n")
    msgs = wait_for(lambda: b.stored_messages("bob@b.test"), what="delivery via backup MX")
    assert b"via backup" in msgs[0]


def started_a_with_null_mx_domain(net) -> Server:
    """Site A of two_sites, started; nomail.test has a null MX (RFC 7505)."""
    zone, make = net
    a, _, _ = two_sites(zone, make)
    zone.add("nomail.test", "MX", "0 .")
    return a.start()


def wait_queue_empty(c: Server):
    wait_for(lambda: "queue is empty" in c.cli("queue", "list").stdout, what="an empty queue")


def dsn_in(c: Server, user: str):
    for m in c.stored_messages(user):
        if b"multipart/report" in m and b"delivery-status" in m:
            return m
    return None


def test_unknown_user_at_remote_bounces_to_sender(net):
    zone, make = net
    a, b, _ = two_sites(zone, make)
    a.start()
    b.start()
    submit(a, "alice@a.test", ["nobody@b.test"], b"to nobody\r\n")
    dsn = wait_for(lambda: dsn_in(a, "alice@a.test"), what="DSN in alice's INBOX")
    assert b"Action: failed" in dsn
    assert b"Status: 5.1.1" in dsn
    assert b"Final-Recipient: rfc822; nobody@b.test" in dsn
    assert b"Remote-MTA: dns; mx.b.test" in dsn
    assert b"to nobody" in dsn  # RET default: the full message comes back
    # Filed with the bounce's null reverse-path (RFC 5321 §4.4).
    raw = next(m for m in a.stored_messages("alice@a.test", return_path=True) if b"multipart/report" in m)
    assert raw.startswith(b"Return-Path: <>\r\n"), raw[:100]


@pytest.mark.parametrize("rcpt, status", [("x@nomail.test", b"Status: 5.1.10"),
                                          ("x@does-not-exist.test", b"Status: 5.1.2")],
                         ids=["null_mx", "nxdomain"])
def test_undeliverable_domain_bounces_immediately(net, rcpt, status):
    """A domain with a null MX (RFC 7505), and one that does not exist."""
    a = started_a_with_null_mx_domain(net)
    submit(a, "alice@a.test", [rcpt], b"nope\r\n")
    dsn = wait_for(lambda: dsn_in(a, "alice@a.test"), timeout=10, what=f"DSN for {rcpt}")
    assert status in dsn


def test_expiry_bounces(net):
    zone, make = net
    a, _, _ = two_sites(zone, make, delivery='expire = "3s"')
    a.start()  # B never starts
    submit(a, "alice@a.test", ["bob@b.test"], b"will expire\r\n")
    dsn = wait_for(lambda: dsn_in(a, "alice@a.test"), timeout=30, what="expiry DSN")
    assert b"Status: 4.4.7" in dsn
    wait_queue_empty(a)


def test_null_sender_never_bounced(net):
    a = started_a_with_null_mx_domain(net)
    # Relay a message with <> from alice's authenticated session (allow_any_sender needed).
    s = session(a)
    code, _ = s.mail("<>")
    s.quit()
    # Submission refuses <> (not alice's address), so queue one via the queue itself:
    # a bounce of a bounce is what must not happen. Send to null MX from alice, then check
    # that exactly one DSN arrives (the DSN itself is from <> and is never bounced again).
    submit(a, "alice@a.test", ["x@nomail.test"], b"once\r\n")
    wait_for(lambda: dsn_in(a, "alice@a.test"), what="DSN")
    time.sleep(2)
    dsns = [m for m in a.stored_messages("alice@a.test") if b"multipart/report" in m]
    assert len(dsns) == 1
    assert code in (553, 250)


def test_notify_never_suppresses_dsn(net):
    a = started_a_with_null_mx_domain(net)
    s = session(a)
    s.sendmail("alice@a.test", ["x@nomail.test"], b"Subject: quiet\r\n\r\nq\r\n", rcpt_options=["NOTIFY=NEVER"])
    s.quit()
    wait_queue_empty(a)
    time.sleep(1)
    assert dsn_in(a, "alice@a.test") is None


def test_queue_cli_while_running(net):
    zone, make = net
    a, _, _ = two_sites(zone, make, delivery='retry = ["1h"]')
    a.start()
    submit(a, "alice@a.test", ["bob@b.test"], b"stuck\r\n")
    listing = wait_for(lambda: (lambda o: o if "bob@b.test" in o else None)(a.cli("queue", "list").stdout), what="listing")
    qid = listing.splitlines()[1].split()[0]
    shown = a.cli("queue", "show", qid).stdout
    assert "from: <alice@a.test>" in shown and "bob@b.test" in shown and "Subject: test" in shown
    assert "1 message(s)" in a.cli("queue", "flush", qid).stdout
    a.cli("queue", "delete", qid)
    assert "queue is empty" in a.cli("queue", "list").stdout
    r = a.cli("queue", "show", qid, check=False)
    assert r.returncode != 0 and "not found" in r.stderr


def test_kill_9_with_queued_mail_loses_nothing(net):
    zone, make = net
    a, b, _ = two_sites(zone, make)
    a.start()
    for i in range(5):
        submit(a, "alice@a.test", ["bob@b.test"], b"msg %d\r\n" % i, subject=f"k{i}")
    a.kill()
    a.start()
    b.start()
    a.cli("queue", "flush")
    msgs = wait_for(lambda: (lambda m: m if len(m) >= 5 else None)(b.stored_messages("bob@b.test")), what="all 5 delivered")
    subjects = sorted(re.search(rb"Subject: (k\d)", m).group(1) for m in msgs)
    assert subjects == [b"k0", b"k1", b"k2", b"k3", b"k4"]


def test_interop_with_aiosmtpd(net):
    zone, make = net
    port = free_port()
    ctl, got = aiosmtpd_sink("127.0.0.5", port)
    try:
        a = sender(zone, make, f"port = {port}")
        submit(a, "alice@a.test", ["carol@other.test", "dave@other.test"], b"to aiosmtpd\r\n.leading dot\r\n")
        wait_for(lambda: got, what="aiosmtpd received")
        _peer, mail_from, rcpts, content = got[0]
        assert mail_from == "alice@a.test"
        assert sorted(rcpts) == ["carol@other.test", "dave@other.test"]
        assert b".leading dot" in content and b"to aiosmtpd" in content
    finally:
        ctl.stop()


def sender(zone, make, delivery: str, mx: dict[str, str] | None = None) -> Server:
    """Site A (a.test, alice) started with `delivery` settings; `mx` ({domain: address},
    default other.test at 127.0.0.5) gives each domain an MX mx.<domain> at that address."""
    a = make("a", ["a.test"], delivery=delivery)
    a.add_user("alice@a.test", PW)
    for domain, ip in (mx or {"other.test": "127.0.0.5"}).items():
        zone.add(domain, "MX", f"5 mx.{domain}.")
        zone.add(f"mx.{domain}", "A", ip)
    return a.start()


def aiosmtpd_sink(host, port, handler=None, **kw):
    """aiosmtpd on host:port, started: (controller, got). With no `handler`, one that keeps
    (peer, MAIL FROM, RCPT TOs, content) of every message in `got`."""
    from aiosmtpd.controller import Controller

    got = []

    class Handler:
        async def handle_DATA(self, server, session, envelope):
            got.append((session.peer, envelope.mail_from, list(envelope.rcpt_tos), envelope.content))
            return "250 OK"

    ctl = Controller(handler or Handler(), hostname=host, port=port, **kw)
    ctl.start()
    return ctl, got


def test_connection_reused_for_consecutive_messages(net):
    zone, make = net
    port = free_port()
    ctl, got = aiosmtpd_sink("127.0.0.5", port)
    try:
        a = sender(zone, make, f"port = {port}")
        for i in range(3):
            submit(a, "alice@a.test", ["carol@other.test"], b"reuse %d\r\n" % i)
            wait_for(lambda: len(got) > i, what=f"message {i}")
        peers = {g[0] for g in got}
        assert len(peers) == 1, f"expected one connection, saw {peers}"
    finally:
        ctl.stop()


def test_smtputf8_to_server_without_it_bounces(net):
    zone, make = net
    port = free_port()
    ctl, got = aiosmtpd_sink("127.0.0.5", port, enable_SMTPUTF8=False)
    try:
        a = sender(zone, make, f"port = {port}")
        s = session(a)
        s.sendmail("alice@a.test", ["δοκιμή@other.test"], "Subject: utf8\r\n\r\nγειά\r\n".encode(), mail_options=["SMTPUTF8", "BODY=8BITMIME"])
        s.quit()
        dsn = wait_for(lambda: dsn_in(a, "alice@a.test"), what="SMTPUTF8 DSN")
        assert b"Status: 5.6.7" in dsn
        assert not got
    finally:
        ctl.stop()


def test_delay_warning_sent_once(net):
    zone, make = net
    a, _, _ = two_sites(zone, make, delivery='delay_warning = "1s"\nretry = ["1s"]')
    a.start()  # B stays down
    submit(a, "alice@a.test", ["bob@b.test"], b"slow\r\n")
    dsn = wait_for(lambda: dsn_in(a, "alice@a.test"), what="delay warning")
    assert b"Action: delayed" in dsn
    time.sleep(3)
    warnings = [m for m in a.stored_messages("alice@a.test") if b"Action: delayed" in m]
    assert len(warnings) == 1
    assert "bob@b.test" in a.cli("queue", "list").stdout  # still queued


def smart_host_sites(zone, make, tmp_path, b_names, trusted):
    """Site B as a smart host on 127.0.0.2 (name mx.b.test) presenting a certificate for
    `b_names`, signed by a test CA that A trusts (`trusted`) or self-signed; A relays
    everything to mx.b.test with AUTH and relay_require_tls."""
    ca = issue_cert(tmp_path / "ca", ["Test CA"])
    cert, key, _ = issue_cert(tmp_path / "b-cert", b_names, ca if trusted else None)
    b_port = free_port()
    zone.add("mx.b.test", "A", "127.0.0.2")
    b = make(
        "b",
        ["b.test"],
        host="127.0.0.2",
        ports={"submission": b_port},
        extra=f'[tls]\ncert = "{cert}"\nkey = "{key}"\n',
    )
    b.add_user("relayacct@b.test", PW)
    b.add_user("bob@b.test", PW)
    a = make(
        "a",
        ["a.test"],
        delivery=f'relay = "mx.b.test:{b_port}"\nrelay_user = "relayacct@b.test"\n'
        f'relay_password = "{PW}"\nrelay_require_tls = true\nretry = ["1s"]',
        extra=f'[tls]\ntrust_roots = "{tmp_path / "ca" / "cert.pem"}"\n',
    )
    a.add_user("alice@a.test", PW)
    # The smart host lets its relay account send for other domains.
    b.smtp_cfg["allow_any_sender"] = True
    b.write_config()
    b.start()
    a.start()
    return a, b


def test_smart_host_with_auth_and_tls(net, tmp_path):
    """[delivery] relay: everything goes to one host, over STARTTLS whose certificate is
    verified (a CA from [tls] trust_roots, the host's name), with AUTH PLAIN."""
    zone, make = net
    a, b = smart_host_sites(zone, make, tmp_path, ["mx.b.test"], trusted=True)
    submit(a, "alice@a.test", ["bob@b.test"], b"via smart host\r\n")
    raw = wait_for(lambda: b.stored_messages("bob@b.test"), what="relayed delivery")[0]
    assert b"via smart host" in raw
    assert b"authenticated as relayacct@b.test" in raw
    assert b"TLS" in raw.split(b"\r\n\r\n")[0]


@pytest.mark.parametrize("case", ["self-signed", "other-name"])
def test_smart_host_certificate_is_verified_before_credentials(net, tmp_path, case):
    """Issue 19 (5): with relay_require_tls, a smart host whose certificate is self-signed,
    or signed by a trusted CA for another name, gets neither the credentials nor the mail:
    the message stays queued and the log says why."""
    zone, make = net
    names = ["mx.b.test"] if case == "self-signed" else ["other.example"]
    a, b = smart_host_sites(zone, make, tmp_path, names, trusted=case == "other-name")
    submit(a, "alice@a.test", ["bob@b.test"], b"must not leave\r\n")
    wait_for(
        lambda: "certificate not verified" in a.logs(),
        what="the verification failure in A's log",
    )
    time.sleep(2)  # a retry or two
    assert b.mailboxes("bob@b.test")["INBOX"] == 0
    # B saw TLS handshakes fail, never an AUTH (its log records every authentication).
    assert "authenticated" not in b.logs() and "authentication failed" not in b.logs()
    assert "bob@b.test" in a.cli("queue", "list").stdout


def test_per_recipient_results_and_dsn_parameters(net):
    """One transaction, three recipients: accepted, deferred (4xx → stays queued), refused (5xx →
    DSN that carries ENVID, ORCPT and, with RET=HDRS, only the headers)."""
    got = []

    class Handler:
        async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
            if address.startswith("later@"):
                return "450 4.2.1 try later"
            if address.startswith("never@"):
                return "550 5.1.1 no such user"
            envelope.rcpt_tos.append(address)
            return "250 OK"

        async def handle_DATA(self, server, session, envelope):
            got.append(list(envelope.rcpt_tos))
            return "250 OK"

    zone, make = net
    port = free_port()
    ctl, _ = aiosmtpd_sink("127.0.0.5", port, Handler())
    try:
        a = sender(zone, make, f'port = {port}\nretry = ["1h"]')
        s = session(a)
        msg = b"Subject: mixed\r\nX-Marker: header-only\r\n\r\nBODY-SHOULD-NOT-COME-BACK\r\n"
        s.sendmail(
            "alice@a.test",
            ["ok@other.test", "later@other.test", "never@other.test"],
            msg,
            mail_options=["RET=HDRS", "ENVID=env-42"],
            rcpt_options=["NOTIFY=FAILURE", "ORCPT=rfc822;orig+2Bx@other.test"],
        )
        s.quit()
        wait_for(lambda: got, what="accepted recipient delivered")
        assert got[0] == ["ok@other.test"]
        dsn = wait_for(lambda: dsn_in(a, "alice@a.test"), what="DSN for the refused recipient")
        assert b"Final-Recipient: rfc822; never@other.test" in dsn
        assert b"later@other.test" not in dsn
        assert b"Original-Envelope-Id: env-42" in dsn
        assert b"Original-Recipient: rfc822;orig+x@other.test" in dsn
        assert b"text/rfc822-headers" in dsn and b"X-Marker: header-only" in dsn
        assert b"BODY-SHOULD-NOT-COME-BACK" not in dsn
        listing = a.cli("queue", "list").stdout
        assert "later@other.test" in listing and "450" in listing
        assert "never@other.test" not in listing and "ok@other.test" not in listing
    finally:
        ctl.stop()


def test_helo_fallback_and_size_limit(net):
    """A remote that refuses EHLO gets HELO; a remote whose SIZE is smaller than the message
    makes a clean 5.3.4 bounce without sending it."""
    from aiosmtpd.controller import Controller
    from aiosmtpd.smtp import SMTP as AioSMTP

    got = []

    class Handler:
        async def handle_EHLO(self, server, session, envelope, hostname, responses):
            return ["502 5.5.1 EHLO not implemented"]

        async def handle_DATA(self, server, session, envelope):
            got.append(envelope.content)
            return "250 OK"

    zone, make = net
    port, port2 = free_port(), free_port()
    ctl = Controller(Handler(), hostname="127.0.0.5", port=port)
    ctl.start()
    small = Controller(type("H", (), {"handle_DATA": Handler.handle_DATA})(), hostname="127.0.0.6", port=port, data_size_limit=100)
    small.start()
    try:
        a = sender(zone, make, f'port = {port}\nretry = ["1h"]', mx={"old.test": "127.0.0.5", "tiny.test": "127.0.0.6"})
        submit(a, "alice@a.test", ["x@old.test"], b"via HELO\r\n")
        wait_for(lambda: got, what="delivery after HELO fallback")
        assert b"via HELO" in got[0]
        submit(a, "alice@a.test", ["y@tiny.test"], b"z" * 500 + b"\r\n")
        dsn = wait_for(lambda: dsn_in(a, "alice@a.test"), what="SIZE bounce")
        assert b"Status: 5.3.4" in dsn
        assert len(got) == 1
    finally:
        ctl.stop()
        small.stop()


def test_remote_reply_with_multibyte_code_is_a_temporary_error(net):
    """A remote MX whose greeting has a multi-byte character inside the reply code: the attempt
    fails as a malformed reply and is retried. (This panicked the delivery task, which left
    the entry marked in flight: never retried, never bounced.)"""
    import socket
    import threading

    zone, make = net
    port = free_port()
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.6", port))
    srv.listen(16)
    conns = []

    def serve():
        while True:
            try:
                c, _ = srv.accept()
            except OSError:
                return
            conns.append(c)
            c.sendall("22\u00e9 mx.bad.test ESMTP\r\n".encode())  # byte 3 is inside the "é"
            c.close()

    threading.Thread(target=serve, daemon=True).start()
    try:
        a = sender(zone, make, f'port = {port}\nretry = ["1s"]', mx={"bad.test": "127.0.0.6"})
        submit(a, "alice@a.test", ["carol@bad.test"], b"to a broken MX\r\n")
        qid = wait_for(lambda: (a.cli("queue", "list").stdout.splitlines()[1:] or [None])[0], what="queued").split()[0]

        def retried():
            shown = a.cli("queue", "show", qid).stdout
            n = int(re.search(r"attempts: (\d+)", shown).group(1))
            return shown if n >= 2 else None

        shown = wait_for(retried, timeout=30, what="a second attempt after the malformed reply")
        assert "malformed reply" in shown, shown
        assert "panicked" not in a.logs()
    finally:
        srv.close()


def test_outbound_source_address_and_helo_name(net):
    """[delivery] source_ip and helo_name (issue 20, item 19): the remote MTA (aiosmtpd) sees
    the connection come from the configured address and the configured EHLO name."""
    seen = []

    class Handler:
        async def handle_DATA(self, server, session, envelope):
            seen.append((session.peer[0], session.host_name))
            return "250 OK"

    zone, make = net
    port = free_port()
    ctl, _ = aiosmtpd_sink("127.0.0.5", port, Handler())
    try:
        a = sender(zone, make, f'port = {port}\nretry = ["1h"]\nsource_ip = "127.0.0.9"\nhelo_name = "out.a.test"')
        submit(a, "alice@a.test", ["someone@other.test"], b"from a chosen address\r\n")
        wait_for(lambda: seen, what="delivery to aiosmtpd")
        assert seen[0] == ("127.0.0.9", "out.a.test"), seen
    finally:
        ctl.stop()


def test_rsa_and_ed25519_keys_sign_side_by_side(net):
    """Several DKIM keys per domain, one per selector (issue 20 item 15, RFC 8463 §1 dual
    signing): every outbound message carries a signature from each, and dkimpy verifies both.
    The RSA key's TXT record comes split into strings of at most 255 octets."""
    zone, make = net
    a, b, _ = two_sites(zone, make)
    for selector, algorithm in (("r1", "rsa"), ("e1", "ed25519")):
        out = a.cli("dkim", "generate", "a.test", "--selector", selector,
                        "--algorithm", algorithm).stdout
        rdata = re.search(r'IN TXT (".*")', out).group(1)
        assert all(len(s) <= 255 for s in re.findall(r'"([^"]*)"', rdata)), rdata
        zone.add(f"{selector}._domainkey.a.test", "TXT", rdata)
    a.start()
    b.start()
    submit(a, "alice@a.test", ["bob@b.test"], b"dual\r\n", subject="dual signed")
    raw = wait_for(lambda: b.stored_messages("bob@b.test"), what="delivery to B")[0]
    assert raw.count(b"DKIM-Signature:") == 2, raw[:2000]
    d = dkim.DKIM(raw)
    assert d.verify(idx=0, dnsfunc=zone.resolve_txt) and d.verify(idx=1, dnsfunc=zone.resolve_txt)
    selectors = sorted(re.findall(rb"DKIM-Signature:.*?s=(\w+);", raw, re.S))
    assert selectors == [b"e1", b"r1"], selectors
