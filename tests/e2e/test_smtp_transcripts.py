"""SMTP over raw sockets: exact bytes on the wire for pipelining, STARTTLS, BDAT, data
framing (dot-stuffing, smuggling), abuse (garbage, long lines, slow clients, limits)."""

import os
import re
import signal
import socket
import ssl
import time

from support.mail import split_received
from support.net import tls_context
from support.server import ALICE, BOB

SENDER = "someone@remote.test"


def hello(r):
    greeting = r.expect(220)
    assert greeting[0].startswith("mx.example.org ESMTP"), greeting
    r.cmd("EHLO client.test")


def transaction(srv):
    """A raw session on the smtp listener after EHLO, MAIL FROM:<SENDER> and RCPT TO:<ALICE>."""
    r = srv.raw_smtp()
    hello(r)
    r.cmd(f"MAIL FROM:<{SENDER}>")
    r.cmd(f"RCPT TO:<{ALICE}>")
    return r


def test_every_reply_has_an_enhanced_status_code(server):
    r = server.raw_smtp()
    hello(r)
    transcript = [
        ("NOOP", 250), ("RSET", 250), ("VRFY alice", 252), ("EXPN x", 502), ("HELP", 214),
        ("BOGUS", 500), ("RCPT TO:<a@example.org>", 503), (f"MAIL FROM:<{SENDER}>", 250),
        ("RCPT TO:<nobody@example.org>", 550), ("RCPT TO:<x@elsewhere.test>", 554),
        (f"RCPT TO:<{ALICE}>", 250), ("AUTH PLAIN AGFiAGM=", 503), ("QUIT", 221),
    ]
    for line, code in transcript:
        got, text = r.cmd(line)
        assert got == code, (line, got, text)
        assert re.match(r"^\d\.\d{1,3}\.\d{1,3} ", text[-1]), (line, text)
        assert str(code)[0] == text[-1][0], (line, text)
    assert r.closed()


def test_pipelined_transaction_replies_in_order(server):
    r = server.raw_smtp()
    hello(r)
    r.send(
        f"MAIL FROM:<{SENDER}>\r\nRCPT TO:<{ALICE}>\r\nRCPT TO:<nobody@example.org>\r\n"
        f"RCPT TO:<{BOB}>\r\nDATA\r\n"
    )
    assert r.reply()[0] == 250
    assert r.reply()[0] == 250
    assert r.reply()[0] == 550
    assert r.reply()[0] == 250
    assert r.reply()[0] == 354
    msg = b"Subject: pipelined\r\n\r\nbody\r\n"
    # End of data, next transaction and QUIT all in one write as well.
    r.send(msg + b".\r\n" + f"MAIL FROM:<{SENDER}>\r\nRCPT TO:<{ALICE}>\r\nDATA\r\n".encode())
    code, text = r.reply()
    assert code == 250 and "queued" in text[0]
    assert [r.reply()[0] for _ in range(3)] == [250, 250, 354]
    r.send(msg + b".\r\nQUIT\r\n")
    assert r.reply()[0] == 250
    assert r.reply()[0] == 221
    assert r.closed()
    assert server.mailboxes(ALICE)["INBOX"] == 2
    assert server.mailboxes(BOB)["INBOX"] == 1
    for raw in server.stored_messages(ALICE):
        assert split_received(raw)[1] == msg


def test_commands_pipelined_behind_starttls_are_discarded(server):
    sock = socket.create_connection(("127.0.0.1", server.ports["smtp"]), timeout=10)
    f = b""

    def read_until(pred):
        nonlocal f
        while not pred(f):
            chunk = sock.recv(4096)
            assert chunk, f"closed; got {f!r}"
            f += chunk

    read_until(lambda b: b.endswith(b"\r\n") and re.search(rb"^220 ", b, re.M))
    sock.sendall(b"EHLO client.test\r\n")
    f = b""
    read_until(lambda b: re.search(rb"^250 ", b, re.M))
    f = b""
    # STARTTLS with a command behind it in the same packet (the injection attack).
    sock.sendall(b"STARTTLS\r\nNOOP\r\nMAIL FROM:<evil@attacker.test>\r\n")
    read_until(lambda b: b.endswith(b"\r\n"))
    assert f.startswith(b"220 "), f
    assert f.count(b"\r\n") == 1, f"replies to pipelined commands before TLS: {f!r}"
    time.sleep(0.3)
    tls = tls_context().wrap_socket(sock)
    # The first thing over TLS must be the reply to our EHLO, not to NOOP/MAIL.
    tls.sendall(b"EHLO client.test\r\n")
    got = b""
    while not re.search(rb"^250 ", got, re.M):
        chunk = tls.recv(4096)
        assert chunk, got
        got += chunk
    assert got.startswith(b"250-mx.example.org Hello client.test"), got
    # And no transaction is open: RCPT needs MAIL.
    tls.sendall(f"RCPT TO:<{ALICE}>\r\n".encode())
    got = tls.recv(4096)
    assert got.startswith(b"503 "), got
    tls.close()


def test_starttls_then_ehlo_offers_auth(server):
    r = server.raw_smtp("submission")
    hello(r)
    code, _ = r.cmd("STARTTLS")
    assert code == 220
    r.sock = tls_context().wrap_socket(r.sock)
    code, lines = r.cmd("EHLO client.test")
    assert code == 250
    assert any(l.startswith("AUTH ") for l in lines), lines
    assert not any(l == "STARTTLS" for l in lines), lines


def test_bdat_mixed_chunk_sizes_byte_exact(server):
    msg = (
        b"From: <someone@remote.test>\r\nSubject: chunks\r\n\r\n"
        b".leading dot stays\r\n..two stay\r\n.\r\n"  # no dot-unstuffing in BDAT
        # 8-bit bytes, but no NUL (refused: a NUL-stripping next hop could see an end of
        # data) and no bare CR or LF (refused unless bare_lf = "normalize").
        + os.urandom(3000).replace(b"\r", b"").replace(b"\n", b"").replace(b"\0", b"") + b"\r\n"
        + b"z" * 70000 + b"\r\nend\r\n"
    )
    cuts = [1, 2, 17, 1000, 4096, 65536]
    chunks, pos = [], 0
    for c in cuts:
        chunks.append(msg[pos:pos + c])
        pos += c
    chunks.append(msg[pos:])
    assert sum(map(len, chunks)) == len(msg)
    r = transaction(server)
    total = 0
    for i, chunk in enumerate(chunks):
        last = i == len(chunks) - 1
        header = f"BDAT {len(chunk)}{' LAST' if last else ''}\r\n".encode()
        if i % 2:
            r.send(header + chunk)  # header and data in one write
        else:
            r.send(header)
            for j in range(0, len(chunk), 777):  # data dribbled in small writes
                r.send(chunk[j:j + 777])
        total += len(chunk)
        code, text = r.reply()
        assert code == 250, (i, code, text)
        if not last:
            assert text[0].startswith(f"2.0.0 {total} octets"), text
    r.cmd("QUIT")
    _, rest = split_received(server.stored_messages(ALICE)[0])
    assert rest == msg


def test_bdat_last_zero(server):
    r = transaction(server)
    part = b"Subject: zero\r\n\r\nall in the first chunk\r\n"
    r.send(f"BDAT {len(part)}\r\n".encode() + part)
    assert r.reply()[0] == 250
    code, text = r.cmd("BDAT 0 LAST")
    assert code == 250 and "queued" in text[0], text
    r.cmd("QUIT")
    _, rest = split_received(server.stored_messages(ALICE)[0])
    assert rest == part


def test_bdat_pipelined_with_envelope(server):
    r = server.raw_smtp()
    hello(r)
    part = b"Subject: piped bdat\r\n\r\nx\r\n"
    r.send(
        f"MAIL FROM:<{SENDER}>\r\nRCPT TO:<{ALICE}>\r\nBDAT {len(part)} LAST\r\n".encode()
        + part + b"QUIT\r\n"
    )
    assert [r.reply()[0] for _ in range(4)] == [250, 250, 250, 221]
    assert split_received(server.stored_messages(ALICE)[0])[1] == part


def test_bdat_without_transaction_is_discarded(server):
    r = server.raw_smtp()
    hello(r)
    # The chunk's bytes must be consumed, not parsed as commands.
    r.send(b"BDAT 12\r\nNOOP\r\nNOOP\r\n")
    code, _ = r.reply()
    assert code == 503
    assert r.cmd("NOOP")[0] == 250


def test_bdat_too_big(server_with):
    srv = server_with(smtp={"max_message_size": 1000})
    r = transaction(srv)
    r.send(b"BDAT 800\r\n" + b"a" * 800)
    assert r.reply()[0] == 250
    r.send(b"BDAT 800 LAST\r\n" + b"b" * 800)
    code, text = r.reply()
    assert code == 552, text
    assert r.cmd("NOOP")[0] == 250
    r.cmd("QUIT")
    assert srv.mailboxes(ALICE)["INBOX"] == 0


def test_raw_dot_stuffing_is_undone_exactly(server):
    r = transaction(server)
    assert r.cmd("DATA")[0] == 354
    r.send(b"Subject: dots\r\n\r\n..\r\n...\r\n..x\r\n.y\r\nz.\r\n.\r\n")
    assert r.reply()[0] == 250
    r.cmd("QUIT")
    _, rest = split_received(server.stored_messages(ALICE)[0])
    # One leading dot removed from each line (".y" loses its dot too, RFC 5321 4.5.2).
    assert rest == b"Subject: dots\r\n\r\n.\r\n..\r\n.x\r\ny\r\nz.\r\n"


def test_smuggling_bare_lf_dot_does_not_split(server):
    r = transaction(server)
    assert r.cmd("DATA")[0] == 354
    r.send(
        b"Subject: innocent\r\n\r\nhello\r\n\n.\n"
        b"MAIL FROM:<admin@example.org>\r\nRCPT TO:<bob@example.org>\r\nDATA\r\n"
        b"Subject: smuggled\r\n\r\nevil\r\n.\r\n"
    )
    code, text = r.reply()
    assert code == 550 and text[0].startswith("5.6.0"), (code, text)
    # Nothing of the smuggled commands was executed: the next reply answers our NOOP.
    code, text = r.cmd("NOOP")
    assert code == 250 and text == ["2.0.0 OK"], (code, text)
    r.cmd("QUIT")
    assert server.mailboxes(ALICE)["INBOX"] == 0
    assert server.mailboxes(BOB)["INBOX"] == 0


def test_smuggling_variants_rejected(server):
    for payload in [b"a\r\n\r.\r\n", b"a\r\n.\n", b"a\n.\r\n", b"a\r\r\n.\r\r\n"]:
        r = transaction(server)
        assert r.cmd("DATA")[0] == 354
        r.send(payload + b"MAIL FROM:<x@y.test>\r\n.\r\n")
        code, text = r.reply()
        assert code == 550, (payload, code, text)
        assert r.cmd("NOOP")[0] == 250
        r.close()
    assert server.mailboxes(ALICE)["INBOX"] == 0


def test_bare_lf_normalized_when_configured(server_with):
    srv = server_with(smtp={"bare_lf": "normalize"})
    r = transaction(srv)
    r.cmd("DATA")
    r.send(b"Subject: lf\r\n\r\none\ntwo\n.\nthree\r\n.\r\n")
    assert r.reply()[0] == 250
    r.cmd("QUIT")
    msgs = srv.stored_messages(ALICE)
    assert len(msgs) == 1, "the bare-LF dot must not end the data"
    _, rest = split_received(msgs[0])
    # Stored with CRLF; the "." line ended by a bare LF is an ordinary (dot-unstuffed) line.
    assert rest == b"Subject: lf\r\n\r\none\r\ntwo\r\n\r\nthree\r\n", rest


def test_garbage_bytes_get_500_and_server_keeps_serving(server):
    r = server.raw_smtp()
    r.expect(220)
    r.send(b"\x00\xff\xfe\x80garbage\x01\x02\r\n")
    code, text = r.reply()
    assert code == 500, text
    r.send(bytes(range(256)) * 4 + b"\r\n")  # includes its own LFs: several bad lines
    r.close()
    # A new session works normally.
    r = server.raw_smtp()
    hello(r)
    assert r.cmd(f"MAIL FROM:<{SENDER}>")[0] == 250
    assert r.cmd("QUIT")[0] == 221


def test_multibyte_char_at_the_keyword_end_gets_501_and_session_goes_on(server):
    """A UTF-8 character across the end of "FROM:"/"TO:" (found by fuzzing smtp_command:
    it panicked the session, before any authentication)."""
    r = server.raw_smtp()
    hello(r)
    for line in ("MAIL fDA`\u00d93%Vw[", "MAIL FRO\u00e9:<a@b.test>", "RCPT T\u00e9:<a@b.test>"):
        code, text = r.cmd(line.encode())
        assert 500 <= code < 600 and code != 500, (line, code, text)
    assert r.cmd(f"MAIL FROM:<{SENDER}>")[0] == 250
    assert r.cmd("QUIT")[0] == 221
    assert "panicked" not in server.logs()


def test_tls_handshake_garbage_on_implicit_tls_port(server):
    sock = socket.create_connection(("127.0.0.1", server.ports["submissions"]), timeout=10)
    sock.sendall(os.urandom(2000))
    sock.close()
    s = server.smtp("submissions")
    assert s.noop()[0] == 250
    s.quit()


def test_one_megabyte_command_line(server):
    r = server.raw_smtp()
    hello(r)
    r.send(b"NOOP " + b"x" * (1024 * 1024) + b"\r\n")
    code, text = r.reply()
    assert code == 500 and text[0].startswith("5.5.6"), text
    # The rest of the long line is skipped, and the session goes on.
    assert r.cmd("NOOP")[0] == 250
    assert r.cmd(f"MAIL FROM:<{SENDER}>")[0] == 250
    r.cmd("QUIT")


def test_one_megabyte_data_line(server):
    r = transaction(server)
    r.cmd("DATA")
    r.send(b"Subject: long\r\n\r\n" + b"x" * (1024 * 1024) + b"\r\n.\r\n")
    code, text = r.reply()
    assert code in (500, 552, 554), text
    assert r.cmd("NOOP")[0] == 250
    r.cmd("QUIT")
    assert server.mailboxes(ALICE)["INBOX"] == 0


def test_slow_client_cut_off_by_command_timeout(server_with):
    srv = server_with(smtp={"command_timeout": "2s"})
    r = srv.raw_smtp()
    hello(r)
    t0 = time.monotonic()
    code, text = r.reply()  # wait without sending anything
    elapsed = time.monotonic() - t0
    assert code == 421 and text[0].startswith("4.4.2"), text
    assert 1.5 < elapsed < 6, elapsed
    assert r.closed()
    # A client dribbling a partial line is cut off too.
    r = srv.raw_smtp()
    hello(r)
    r.send(b"NO")
    t0 = time.monotonic()
    code, _ = r.reply()
    assert code == 421 and time.monotonic() - t0 < 6


def test_session_timeout(server_with):
    srv = server_with(smtp={"command_timeout": "10s", "session_timeout": "3s"})
    r = srv.raw_smtp()
    hello(r)
    t0 = time.monotonic()
    for _ in range(20):
        r.send(b"NOOP\r\n")
        try:
            code, _ = r.reply()
        except ConnectionError:
            break
        if code == 421:
            break
        time.sleep(0.5)
    else:
        raise AssertionError("never cut off")
    assert time.monotonic() - t0 < 6


def test_too_many_errors_421(server_with):
    srv = server_with(smtp={"max_errors": 3})
    r = srv.raw_smtp()
    hello(r)
    assert r.cmd("BOGUS1")[0] == 500
    assert r.cmd("BOGUS2")[0] == 500
    # The third error: its 500, then 421 and the connection is closed.
    assert r.cmd("BOGUS3")[0] == 500
    code, text = r.reply()
    assert code == 421, text
    assert r.closed()


def greeted(srv, deadline=5.0):
    """A connection that got its 220. The harness's readiness probes may hold a slot for a
    moment after the server starts, so retry briefly while the limit refuses us."""
    end = time.monotonic() + deadline
    while True:
        r = srv.raw_smtp()
        code, text = r.reply()
        if code == 220:
            return r
        r.close()
        assert code == 421 and time.monotonic() < end, (code, text)
        time.sleep(0.05)


def test_connection_limit_per_ip(server_with):
    srv = server_with(limits={"max_connections_per_ip": 2})
    a = greeted(srv)
    b = greeted(srv)
    c = srv.raw_smtp()
    code, text = c.reply()
    assert code == 421, text
    assert c.closed()
    # Closing one frees a slot.
    a.cmd("QUIT")
    a.close()
    d = greeted(srv)
    d.cmd("QUIT")
    b.cmd("QUIT")


def test_total_connection_limit(server_with):
    srv = server_with(limits={"max_connections": 1})
    a = greeted(srv)
    b = srv.raw_smtp()
    assert b.reply()[0] == 421
    a.cmd("QUIT")


def test_quit_closes(server):
    r = server.raw_smtp()
    hello(r)
    code, text = r.cmd("QUIT")
    assert code == 221
    assert r.closed()


def test_sigterm_tells_idle_clients_421(server):
    r = server.raw_smtp()
    hello(r)
    server.stop(expect=0)
    code, text = r.reply()
    assert code == 421 and text[0].startswith("4.3.2"), text


def test_sigterm_lets_a_transaction_in_data_finish(server):
    r = transaction(server)
    assert r.cmd("DATA")[0] == 354
    r.send(b"Subject: in flight\r\n\r\nfirst half\r\n")
    server.proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    r.send(b"second half\r\n.\r\n")
    code, text = r.reply()
    assert code == 250, text
    code, text = r.reply()
    assert code == 421, text
    server.stop(expect=0)
    _, rest = split_received(server.stored_messages(ALICE)[0])
    assert rest == b"Subject: in flight\r\n\r\nfirst half\r\nsecond half\r\n"
