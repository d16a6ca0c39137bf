"""Durability: kill -9 under load loses no message that got its 250, and
delivers none twice."""

import smtplib
import threading
import time
import uuid

from support.server import ALICE, BOB

SENDER = "load@remote.test"


def sender(srv, n, stop, accepted, lock):
    """Send until the server dies or `stop`; record Message-IDs that got 250 after DATA."""
    while not stop.is_set():
        try:
            s = srv.smtp(timeout=10)
            s.ehlo()
            while not stop.is_set():
                mid = f"<{n}.{uuid.uuid4().hex}@remote.test>"
                rcpts = [ALICE] if n % 2 else [ALICE, BOB]
                msg = (
                    f"From: <{SENDER}>\r\nMessage-ID: {mid}\r\nSubject: load {n}\r\n\r\n"
                ).encode() + (b"y" * 70 + b"\r\n") * 70  # about 5 KB
                if s.mail(SENDER)[0] != 250:
                    break
                if any(s.rcpt(r)[0] != 250 for r in rcpts):
                    break
                code, _ = s.data(msg)
                if code != 250:
                    break
                with lock:
                    accepted.append((mid, rcpts))
        except (OSError, smtplib.SMTPException):
            time.sleep(0.02)


def ids_in(srv, user):
    out = []
    for raw in srv.stored_messages(user):
        for line in raw.split(b"\r\n"):
            if line.lower().startswith(b"message-id:"):
                out.append(line.split(b":", 1)[1].strip().decode())
                break
    return out


def test_kill_9_under_load_loses_nothing_and_duplicates_nothing(server):
    stop = threading.Event()
    accepted, lock = [], threading.Lock()
    threads = [
        threading.Thread(target=sender, args=(server, i, stop, accepted, lock)) for i in range(8)
    ]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 30
    while len(accepted) < 300 and time.monotonic() < deadline:
        time.sleep(0.02)
    server.kill()  # SIGKILL mid-run: sessions are in every state right now
    with lock:
        got_250 = list(accepted)
    stop.set()
    for t in threads:
        t.join(timeout=30)
    assert len(got_250) >= 300, f"only {len(got_250)} messages accepted before the kill"

    server.start()  # restart on the same data_dir
    for user in (ALICE, BOB):
        ids = ids_in(server, user)
        assert len(ids) == len(set(ids)), f"{user}: a message was delivered twice"
        want = {mid for mid, rcpts in got_250 if user in rcpts}
        missing = want - set(ids)
        assert not missing, f"{user}: {len(missing)} of {len(want)} accepted messages lost"
    # The restarted server works.
    s = server.smtp()
    s.ehlo()
    s.sendmail(SENDER, [ALICE], b"Subject: after restart\r\n\r\nok\r\n")
    s.quit()


def test_a_failure_after_the_first_copy_writes_nothing_and_the_retry_delivers_once(corvus_factory):
    """Issue 21: the store fails (injected, `CORVUS_FAILPOINTS`) after writing the first of
    a two-recipient message's copies. The client gets 451 and nothing of the message is
    visible; its retry of the same transaction delivers exactly one copy to each recipient
    (before the one ingest call, the first copy stayed and the retry duplicated it)."""
    srv = corvus_factory()
    srv.add_user(ALICE)
    srv.add_user(BOB)
    srv.start(env={"CORVUS_FAILPOINTS": "ingest-after-placement:1"})
    mid = "<retry.%s@remote.test>" % uuid.uuid4().hex
    msg = f"From: <{SENDER}>\r\nMessage-ID: {mid}\r\nSubject: retried\r\n\r\nbody\r\n".encode()
    s = srv.smtp()
    s.ehlo()
    replies = []
    for attempt in range(2):
        assert s.mail(SENDER)[0] == 250
        assert s.rcpt(ALICE)[0] == 250
        assert s.rcpt(BOB)[0] == 250
        code, text = s.data(msg)
        replies.append(code)
        if attempt == 0:
            assert code == 451, text
            # Nothing is visible after the failure.
            assert ids_in(srv, ALICE) == [] and ids_in(srv, BOB) == []
    assert replies == [451, 250]
    assert s.noop()[0] == 250
    s.quit()
    assert ids_in(srv, ALICE) == [mid]
    assert ids_in(srv, BOB) == [mid]
    assert "failpoint ingest-after-placement" in srv.logs()
