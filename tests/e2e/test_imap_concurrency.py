"""Two (or more) sessions on one mailbox over real sockets: IDLE hears SMTP deliveries within a
second; flag changes and expunges made by one session reach the other with sequence numbers
kept consistent (RFC 9051 section 7.5.1); concurrent STOREs do not lose each other's flags."""

import re
import socket
import threading
import time


def apply_expunges(uids, lines):
    """Apply `* n EXPUNGE` responses to a list of UIDs as a client would."""
    uids = list(uids)
    for l in lines:
        m = re.match(rb"\* (\d+) EXPUNGE$", l)
        if m:
            del uids[int(m.group(1)) - 1]
    return uids


def uid_list(r):
    return [int(m.group(1)) for l in r.ok("UID FETCH 1:* (UID)")
            if (m := re.search(rb"UID (\d+)", l))]


def idle_wait(r, pattern: bytes, timeout: float) -> tuple[bytes | None, float]:
    """Read untagged lines during IDLE until one matches; returns it and the time taken."""
    start = time.monotonic()
    r.sock.settimeout(0.1)
    try:
        while time.monotonic() - start < timeout:
            try:
                l = r.line()
            except (socket.timeout, TimeoutError):
                continue
            if re.match(pattern, l):
                return l, time.monotonic() - start
    finally:
        r.sock.settimeout(15)
    return None, time.monotonic() - start


def two_sessions(srv, user, messages: int):
    """`messages` delivered (subjects m0, m1, …), then two sessions with INBOX selected."""
    srv.fill(user, messages)
    a, b = srv.raw_imap(user), srv.raw_imap(user)
    a.ok("SELECT INBOX")
    b.ok("SELECT INBOX")
    return a, b


def test_idle_hears_smtp_delivery_within_a_second(imap_server, user):
    imap_server.deliver(user, subject="before")
    a = imap_server.raw_imap(user, select="INBOX")
    a.send("i1 IDLE\r\n")
    assert a.line().startswith(b"+ ")
    t0 = time.monotonic()
    imap_server.deliver(user, subject="during idle")
    delivered = time.monotonic() - t0
    line, waited = idle_wait(a, rb"\* 2 EXISTS$", 5)
    assert line == b"* 2 EXISTS", line
    assert waited - delivered < 1.0, (waited, delivered)
    # A second delivery during the same IDLE is heard too.
    imap_server.deliver(user, subject="again")
    line, waited = idle_wait(a, rb"\* 3 EXISTS$", 5)
    assert line == b"* 3 EXISTS"
    a.send("DONE\r\n")
    untagged, tagged = a.read_until("i1")
    assert tagged.startswith(b"i1 OK")
    lines = a.ok("FETCH 2:3 BODY.PEEK[HEADER.FIELDS (SUBJECT)]")
    assert b"during idle" in lines[0] and b"again" in lines[1]
    a.close()


def test_idle_hears_flags_and_expunge_from_other_session(imap_server, user):
    a, b = two_sessions(imap_server, user, 3)
    a.send("i1 IDLE\r\n")
    assert a.line().startswith(b"+ ")
    b.ok("STORE 2 +FLAGS (\\Flagged)")
    line, waited = idle_wait(a, rb"\* 2 FETCH ", 5)
    assert line is not None and b"\\Flagged" in line and waited < 1.0, (line, waited)
    b.ok("STORE 1 +FLAGS.SILENT (\\Deleted)")
    b.ok("EXPUNGE")
    line, waited = idle_wait(a, rb"\* 1 EXPUNGE$", 5)
    assert line == b"* 1 EXPUNGE" and waited < 1.0
    a.send("DONE\r\n")
    a.read_until("i1")
    assert uid_list(a) == [2, 3]
    a.close()
    b.close()


def test_noop_reports_other_sessions_changes(imap_server, user):
    a, b = two_sessions(imap_server, user, 6)
    view = uid_list(a)
    assert view == [1, 2, 3, 4, 5, 6]
    # B changes flags: A's NOOP gets FETCH FLAGS for exactly that message.
    b.ok("STORE 3 +FLAGS ($Seen-By-B \\Seen)")
    untagged = a.ok("NOOP")
    fetches = [l for l in untagged if b" FETCH " in l]
    assert len(fetches) == 1 and fetches[0].startswith(b"* 3 FETCH")
    assert b"\\Seen" in fetches[0] and b"$Seen-By-B" in fetches[0]
    assert a.ok("NOOP") == []  # reported once
    # B expunges 2, 4 and 5: A's NOOP gets EXPUNGEs that, applied in order, give B's view.
    b.ok("STORE 2,4:5 +FLAGS.SILENT (\\Deleted)")
    b.ok("EXPUNGE")
    # Before NOOP, A's FETCH/STORE/SEARCH must not be told of the expunges (RFC 9051 7.5.1),
    # so A's sequence numbers stay valid; the removed messages may be reported or omitted.
    untagged = a.ok("FETCH 1:6 (UID)")
    assert not any(l.endswith(b"EXPUNGE") for l in untagged)
    seen_uids = [int(re.search(rb"UID (\d+)", l).group(1)) for l in untagged if b"FETCH" in l]
    for l in untagged:
        if b"FETCH" in l:
            seq = int(l.split()[1])
            assert view[seq - 1] == int(re.search(rb"UID (\d+)", l).group(1)), l
    assert set(seen_uids) >= {1, 3, 6}
    untagged = a.ok("SEARCH ALL")
    assert not any(l.endswith(b"EXPUNGE") for l in untagged)
    untagged = a.ok("NOOP")
    view = apply_expunges(view, untagged)
    assert view == [1, 3, 6]
    assert uid_list(a) == view == uid_list(b)
    # A new delivery: EXISTS with the new count, then the message is addressable.
    imap_server.deliver(user, subject="new")
    untagged = a.ok("NOOP")
    assert b"* 4 EXISTS" in untagged
    assert uid_list(a) == [1, 3, 6, 7]
    a.close()
    b.close()


def test_expunge_mixed_with_new_mail(imap_server, user):
    a, b = two_sessions(imap_server, user, 3)
    b.ok("STORE 1 +FLAGS.SILENT (\\Deleted)")
    b.ok("EXPUNGE")
    imap_server.deliver(user, subject="m3")
    untagged = a.ok("NOOP")
    # The EXPUNGE (seq 1) comes first, then EXISTS counts the remaining plus the new one.
    assert untagged.index(b"* 1 EXPUNGE") < untagged.index(b"* 3 EXISTS"), untagged
    assert uid_list(a) == [2, 3, 4]
    a.close()
    b.close()


def test_concurrent_stores_do_not_lose_flags(imap_server, user):
    imap_server.deliver(user)
    n = 40
    errors = []

    def worker(prefix):
        try:
            r = imap_server.raw_imap(user, select="INBOX")
            for i in range(n):
                r.ok(f"STORE 1 +FLAGS.SILENT ({prefix}{i})")
            r.close()
        except Exception as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(p,)) for p in ("$a", "$b", "$c")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    r = imap_server.raw_imap(user, select="INBOX")
    flags = re.search(rb"FLAGS \(([^)]*)\)", r.ok("FETCH 1 FLAGS")[0]).group(1).split()
    want = {f"{p}{i}".encode() for p in ("$a", "$b", "$c") for i in range(n)}
    assert want - set(flags) == set(), f"lost {len(want - set(flags))} flags"
    r.close()


def test_other_mailbox_activity_does_not_disturb(imap_server, user):
    a, b = imap_server.raw_imap(user), imap_server.raw_imap(user)
    a.ok("SELECT INBOX")
    b.ok("SELECT Archive")
    b.send(b"x APPEND Archive {5+}\r\nA: b\r\n\r\n")
    b.read_until("x")
    assert a.ok("NOOP") == []
    a.close()
    b.close()


def test_expunge_and_close_see_deleted_flags_set_elsewhere(imap_server, user):
    """EXPUNGE removes every message that has \\Deleted now, also when another session set
    the flag and this one has not been told yet (no NOOP in between); CLOSE likewise."""
    a, b = two_sessions(imap_server, user, 4)
    b.ok("STORE 2 +FLAGS.SILENT (\\Deleted)")
    untagged = a.ok("EXPUNGE")
    assert b"* 2 EXPUNGE" in untagged, untagged
    assert uid_list(a) == [1, 3, 4]
    b.ok("NOOP")
    b.ok("STORE 3 +FLAGS.SILENT (\\Deleted)")  # seq 3 of B = UID 4... B saw the expunge
    a.ok("CLOSE")
    a.ok("SELECT INBOX")
    assert uid_list(a) == [1, 3]
    # And the reverse: \Deleted removed elsewhere is not expunged.
    a.ok("STORE 1 +FLAGS.SILENT (\\Deleted)")
    b.ok("NOOP")
    b.ok("STORE 1 -FLAGS.SILENT (\\Deleted)")
    assert not any(l.endswith(b"EXPUNGE") for l in a.ok("EXPUNGE"))
    assert uid_list(a) == [1, 3]
    a.close()
    b.close()


def test_big_mailbox_views_stay_consistent(imap_server, user):
    """Above a few hundred messages the store serves metadata from its cache: every change
    made by one session must still be seen by the others and by later SELECTs."""
    a = imap_server.raw_imap(user)
    msg = b"Subject: bulk\r\n\r\nbody\r\n"
    a.send(b"".join(b"p%d APPEND INBOX {%d+}\r\n%s\r\n" % (i, len(msg), msg)
                    for i in range(400)))
    for i in range(400):
        _, tagged = a.read_until("p%d" % i)
        assert b" OK " in tagged
    a.ok("SELECT INBOX")
    b = imap_server.raw_imap(user, select="INBOX")
    b.ok("STORE 10:20 +FLAGS.SILENT (\\Flagged $Big)")
    b.ok("STORE 5,300:310 +FLAGS.SILENT (\\Deleted)")
    b.ok("EXPUNGE")
    b.send(b"x APPEND INBOX {%d+}\r\n%s\r\n" % (len(msg), msg))
    b.read_until("x")
    view = list(range(1, 401))
    untagged = a.ok("NOOP")
    view = apply_expunges(view, untagged)
    view += [401] if b"* 389 EXISTS" in untagged else []
    assert b"* 389 EXISTS" in untagged, untagged[-3:]
    assert view == uid_list(a) == uid_list(b)
    for r in (a, b, imap_server.raw_imap(user)):
        r.ok("EXAMINE INBOX")
        flagged = r.ok("SEARCH FLAGGED")[0].split()[2:]
        assert [int(x) for x in flagged] == list(range(9, 20)), flagged
        assert r.ok("SEARCH DELETED") == [b"* SEARCH"]
        assert b"MESSAGES 389" in r.ok("STATUS INBOX (MESSAGES)")[0]
        r.close()
