"""Crash safety: repeated SIGKILL at random moments under mixed load, checked
against a ledger of everything the server acknowledged.

Site A (a.test, the server under test) takes inbound mail for local users on `smtp` and
authenticated submission to a remote domain on `submission`, while an IMAP client sets flags
and a POP3 client deletes messages. Site B (b.test, a second Corvus on 127.0.0.2, found by
MX through a loopback DNS zone) receives A's outbound mail and is never killed. The test
SIGKILLs A many times, sometimes after a random delay and sometimes the instant a client got
its acknowledgement (250 / tagged OK / +OK to QUIT), and restarts it on the same data_dir.

At the end, with the queue drained: every message that got a 250 is in each local
recipient's mailbox exactly once (read over IMAP), and each remote copy reached B or is still
in A's queue. Remote duplicates are allowed (SMTP is at-least-once: a kill between B's 250
and A's dequeue resends) and are reported. Every acknowledged IMAP flag and every POP3
deletion acknowledged by QUIT's +OK survived.

The kill schedule comes from a seed printed in the output (LEDGER_SEED=... to replay it).
"""

from __future__ import annotations

import collections
import imaplib
import os
import poplib
import random
import re
import smtplib
import threading
import time

import pytest

from support.dns import DnsServer
from support.net import free_port
from support.server import PASSWORD, Server

SEED = int(os.environ.get("LEDGER_SEED", "20261122"))
CYCLES = int(os.environ.get("LEDGER_CYCLES", "12"))

ALICE, BOB, CAROL, DAVE = (f"{u}@a.test" for u in ("alice", "bob", "carol", "dave"))
RITA = "rita@b.test"  # the remote recipient, on site B
SENDER = "load@remote.test"
FLAGS = ("\\Flagged", "\\Answered", "\\Draft") + tuple(f"$Ledger{i}" for i in range(5))
IMAP_MESSAGES = 60
POP3_MESSAGES = 80


@pytest.fixture
def sites(tmp_path):
    zone = DnsServer()
    port_b = free_port()
    a = Server(
        tmp_path / "a",
        zone.addr,
        domains=["a.test"],
        hostname="mx.a.test",
        listeners=("smtp", "submission", "imap", "pop3"),
        smtp={"allow_plaintext_auth": True},
        extra=(
            f'[delivery]\nport = {port_b}\nretry = ["1s"]\n'
            "[imap]\nallow_plaintext_auth = true\n"
            "[pop3]\nallow_plaintext_auth = true\n"
        ),
    )
    b = Server(
        tmp_path / "b",
        zone.addr,
        domains=["b.test"],
        hostname="mx.b.test",
        host="127.0.0.2",
        ports={"smtp": port_b, "imap": free_port()},
        extra="[imap]\nallow_plaintext_auth = true\n",
    )
    zone.add("b.test", "MX", "10 mx.b.test.")
    zone.add("mx.b.test", "A", "127.0.0.2")
    for u in (ALICE, BOB, CAROL, DAVE):
        a.add_user(u)
    b.add_user(RITA)
    yield a, b
    problems = []
    for c in (a, b):
        if c.running:
            try:
                c.stop(expect=0)
            except AssertionError as e:
                problems.append(str(e))
    zone.close()
    assert not problems, "\n".join(problems)


# --- clients -------------------------------------------------------------------------------


def imap_login(srv: Server, user: str) -> imaplib.IMAP4:
    c = imaplib.IMAP4(srv.host, srv.ports["imap"], timeout=15)
    c.login(user, PASSWORD)
    return c


def imap_message_ids(srv: Server, user: str) -> collections.Counter:
    """Message-IDs in the user's INBOX (read over IMAP), with how often each occurs."""
    c = imap_login(srv, user)
    try:
        typ, data = c.select("INBOX", readonly=True)
        assert typ == "OK", data
        found = collections.Counter()
        if int(data[0]) == 0:
            return found
        typ, data = c.fetch("1:*", "(BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])")
        assert typ == "OK", data
        for item in data:
            if isinstance(item, tuple):
                m = re.search(rb"<([^>]+)>", item[1])
                assert m, f"{user}: a message without Message-ID: {item!r}"
                found[m.group(1).decode()] += 1
        return found
    finally:
        c.logout()


def imap_flags(srv: Server, user: str) -> dict[int, set[str]]:
    c = imap_login(srv, user)
    try:
        c.select("INBOX", readonly=True)
        typ, data = c.uid("FETCH", "1:*", "(FLAGS)")
        assert typ == "OK", data
        out = {}
        for line in data:
            m = re.search(rb"UID (\d+)", line)
            f = re.search(rb"FLAGS \(([^)]*)\)", line)
            assert m and f, line
            out[int(m.group(1))] = set(f.group(1).decode().split())
        return out
    finally:
        c.logout()


def pop3_uidls(srv: Server, user: str) -> set[str]:
    p = poplib.POP3(srv.host, srv.ports["pop3"], timeout=15)
    p.user(user)
    p.pass_(PASSWORD)
    _, listing, _ = p.uidl()
    p.quit()
    return {line.split()[1].decode() for line in listing}


def message(mid: str, sender: str, rcpts: list[str]) -> bytes:
    return (
        f"From: <{sender}>\r\nTo: {', '.join(rcpts)}\r\nMessage-ID: <{mid}>\r\n"
        f"Subject: ledger {mid}\r\n\r\n"
    ).encode() + (b"z" * 70 + b"\r\n") * 20


# --- load, with a ledger of acknowledgements -----------------------------------------------


class Ledger:
    def __init__(self):
        self.lock = threading.Lock()
        self.smtp: list[tuple[str, list[str]]] = []  # (Message-ID, recipients) that got 250
        self.flags: list[tuple[int, str]] = []  # (UID, flag) whose STORE got its tagged OK
        self.deleted: list[str] = []  # POP3 UIDLs whose DELE was followed by QUIT +OK
        self.errors: list[str] = []  # refusals that should never happen
        self.acked = {k: threading.Event() for k in ("smtp", "imap", "pop3")}
        self.stop = threading.Event()

    def record(self, kind: str, items: list):
        with self.lock:
            {"smtp": self.smtp, "imap": self.flags, "pop3": self.deleted}[kind].extend(items)
        self.acked[kind].set()


def smtp_worker(a: Server, ledger: Ledger, n: int, submission: bool):
    """Send until stopped; reconnect whenever the server dies."""
    seq = 0
    while not ledger.stop.is_set():
        try:
            if submission:
                s = a.smtp("submission", timeout=10)
                s.ehlo()
                s.login(ALICE, PASSWORD)
            else:
                s = a.smtp(timeout=10)
                s.ehlo()
            while not ledger.stop.is_set():
                seq += 1
                if submission:
                    sender, rcpts = ALICE, [RITA] if seq % 2 else [RITA, BOB]
                else:
                    sender, rcpts = SENDER, [[ALICE], [BOB], [ALICE, BOB]][seq % 3]
                mid = f"{'sub' if submission else 'in'}{n}.{seq}.{SEED}@ledger.test"
                if s.mail(sender)[0] != 250 or any(s.rcpt(r)[0] != 250 for r in rcpts):
                    break
                if s.data(message(mid, sender, rcpts))[0] != 250:
                    break
                ledger.record("smtp", [(mid, rcpts)])
            s.close()
        except (OSError, smtplib.SMTPException):
            time.sleep(0.05)


def imap_worker(a: Server, ledger: Ledger, uids: list[int]):
    """Set one flag on one message per STORE, each (uid, flag) once, reconnecting as needed;
    a STORE whose OK never came is simply repeated (it is idempotent)."""
    todo = [(uid, flag) for flag in FLAGS for uid in uids]
    while todo and not ledger.stop.is_set():
        try:
            c = imap_login(a, CAROL)
            c.select("INBOX")
            while todo and not ledger.stop.is_set():
                uid, flag = todo[0]
                typ, data = c.uid("STORE", str(uid), "+FLAGS", f"({flag})")
                if typ != "OK":
                    ledger.errors.append(f"UID STORE {uid} +FLAGS ({flag}): {typ} {data}")
                    return
                todo.pop(0)
                ledger.record("imap", [(uid, flag)])
                time.sleep(0.05)  # paced, so that there is work left for every cycle
        except (OSError, imaplib.IMAP4.abort, imaplib.IMAP4.error):
            time.sleep(0.05)


def pop3_worker(a: Server, ledger: Ledger):
    """Sessions that each DELE the first one or two messages and QUIT, paced so that there is
    work left for every cycle."""
    while not ledger.stop.is_set():
        try:
            p = poplib.POP3(a.host, a.ports["pop3"], timeout=10)
            p.user(DAVE)
            p.pass_(PASSWORD)
            _, listing, _ = p.uidl()
            if not listing:
                p.quit()
                return
            picked = [line.split() for line in listing[: 1 + len(listing) % 2]]
            for num, _ in picked:
                p.dele(int(num))
            if p.quit().startswith(b"+OK"):
                ledger.record("pop3", [uidl.decode() for _, uidl in picked])
            time.sleep(0.5)
        except (OSError, poplib.error_proto):
            time.sleep(0.05)


# --- the test ------------------------------------------------------------------------------


def test_repeated_sigkill_loses_and_duplicates_nothing(sites):
    a, b = sites
    rng = random.Random(SEED)
    print(f"\nledger seed: LEDGER_SEED={SEED} LEDGER_CYCLES={CYCLES}")
    a.start()
    b.start()

    # Mail for the IMAP and POP3 clients to work on.
    for user, n in ((CAROL, IMAP_MESSAGES), (DAVE, POP3_MESSAGES)):
        s = a.smtp()  # one session each: within the messages-per-session limit
        s.ehlo()
        for i in range(n):
            s.sendmail(SENDER, [user], message(f"seed-{user}-{i}@ledger.test", SENDER, [user]))
        s.quit()
    c = imap_login(a, CAROL)
    c.select("INBOX")
    uids = [int(x) for x in c.uid("SEARCH", "ALL")[1][0].split()]
    c.logout()
    assert len(uids) == IMAP_MESSAGES
    dave_before = pop3_uidls(a, DAVE)
    assert len(dave_before) == POP3_MESSAGES

    ledger = Ledger()
    threads = [threading.Thread(target=smtp_worker, args=(a, ledger, i, False)) for i in range(4)]
    threads += [threading.Thread(target=smtp_worker, args=(a, ledger, i, True)) for i in range(2)]
    threads += [
        threading.Thread(target=imap_worker, args=(a, ledger, uids)),
        threading.Thread(target=pop3_worker, args=(a, ledger)),
    ]
    for t in threads:
        t.daemon = True
        t.start()

    schedule = []
    started = time.monotonic()
    for cycle in range(CYCLES):
        delay = rng.uniform(0.3, 2.5)
        trigger = rng.choice(["time", "smtp", "imap", "pop3"])
        time.sleep(delay)
        fired = "time"
        if trigger != "time":
            # Kill the instant a client gets its acknowledgement (if one comes soon).
            ev = ledger.acked[trigger]
            ev.clear()
            if ev.wait(5):
                fired = trigger
        a.kill()
        with ledger.lock:
            counts = (len(ledger.smtp), len(ledger.flags), len(ledger.deleted))
        schedule.append(f"cycle {cycle}: +{delay:.2f}s kill after {fired} ack {counts}")
        a.start()
    ledger.stop.set()
    for t in threads:
        t.join(timeout=30)
    load_seconds = time.monotonic() - started
    report = "\n".join(schedule)
    print(report)

    smtp_acks = list(ledger.smtp)
    n_in = sum(1 for mid, _ in smtp_acks if mid.startswith("in"))
    n_sub = len(smtp_acks) - n_in
    # The load was real: without acknowledgements there is nothing to check.
    assert n_in >= 20 and n_sub >= 5, f"too little load: {n_in} inbound, {n_sub} submitted\n{report}"
    assert not ledger.errors, ledger.errors
    assert ledger.flags and ledger.deleted, f"no IMAP/POP3 acknowledgements\n{report}"

    # One more kill and restart with everything at rest, then let the queue drain.
    a.kill()
    a.start()
    queue = ""
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        p = a.cli("queue", "list", check=False)
        queue = p.stdout
        if p.returncode == 0 and "queue is empty" in queue:
            break
        time.sleep(0.5)
    queued = collections.Counter()
    if "queue is empty" not in queue:  # still queued counts as kept, but say so
        for line in queue.splitlines()[1:]:
            show = a.cli("queue", "show", line.split()[0]).stdout
            for m in re.finditer(r"Message-ID: <([^>]+)>", show, re.I):
                queued[m.group(1)] += 1

    local = {u: imap_message_ids(a, u) for u in (ALICE, BOB)}
    remote = imap_message_ids(b, RITA)
    lost, local_dups = [], []
    for mid, rcpts in smtp_acks:
        for r in rcpts:
            if r == RITA:
                if not remote[mid] and not queued[mid]:
                    lost.append(f"{mid} -> {r} (not at B, not queued)")
            elif local[r][mid] == 0:
                lost.append(f"{mid} -> {r}")
    for user, ids in local.items():
        local_dups += [f"{mid} x{n} in {user}" for mid, n in ids.items() if n > 1]
    remote_acked = {mid for mid, rcpts in smtp_acks if RITA in rcpts}
    remote_dups = sum(n - 1 for mid, n in remote.items() if n > 1)
    print(
        f"{load_seconds:.0f}s of load, {CYCLES + 1} SIGKILLs: {n_in} inbound and {n_sub} submitted "
        f"messages got 250; {len(ledger.flags)} STOREs and {len(ledger.deleted)} POP3 deletions "
        f"acknowledged; remote: {len(remote_acked)} acknowledged, {len(remote)} distinct at B, "
        f"{remote_dups} duplicate deliveries (at-least-once), {sum(queued.values())} still queued"
    )
    ctx = f"(LEDGER_SEED={SEED})\n{report}\n{a.logs()}"
    assert not lost, f"{len(lost)} acknowledged deliveries lost: {lost[:20]} {ctx}"
    assert not local_dups, f"duplicates in local mailboxes: {local_dups[:20]} {ctx}"
    # Nothing arrives that nobody acknowledged and that was not in flight: every message at B
    # is one A's clients sent (a message whose 250 was lost to the kill may still be there).
    assert all(mid.startswith("sub") for mid in remote), list(remote)[:5]

    flags = imap_flags(a, CAROL)
    missing = [(uid, f) for uid, f in ledger.flags if f not in flags.get(uid, set())]
    assert not missing, f"acknowledged STORE +FLAGS lost: {missing[:20]} {ctx}"

    left = pop3_uidls(a, DAVE)
    undeleted = [u for u in ledger.deleted if u in left]
    assert not undeleted, f"POP3 deletions acknowledged by QUIT +OK came back: {undeleted} {ctx}"
    assert left <= dave_before

    # Still a working server.
    s = a.smtp()
    s.ehlo()
    s.sendmail(SENDER, [ALICE], message("after@ledger.test", SENDER, [ALICE]))
    s.quit()
    assert imap_message_ids(a, ALICE)["after@ledger.test"] == 1
