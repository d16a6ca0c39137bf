"""Several Corvus nodes over one PostgreSQL database (issue 23): three `corvus serve`
processes on 127.0.0.1, 127.0.0.2 and 127.0.0.3 (support/cluster.py), each with its own
data_dir and listeners, share the mailboxes, the POP3 maildrop locks and the outbound queue.

- Change notification: a delivery on node 1 reaches an IDLE session on node 2 and a NOOP on
  node 3 within a couple of seconds; flags set on node 2 reach node 3.
- The POP3 maildrop lock holds across nodes, and the lock of a node killed with SIGKILL
  lapses after `[store] lease` (3 s here).
- The queue: mail to a destination that is down and then up is delivered exactly once by
  one of the nodes; a delivery cut by SIGKILL of the node doing it is taken over by another
  node after the lease (one SMTP transaction more at most, never none).
- UIDs stay strictly ascending and unique under concurrent APPEND and SMTP on all nodes,
  and no session sees a UID appear below one it has already seen.
- A crash ledger: mixed SMTP/IMAP/POP3 load on every node while random nodes are SIGKILLed
  and restarted; everything acknowledged is there exactly once at the end.

Remote destinations are aiosmtpd sinks on 127.0.0.5 that the tests start and stop, found
through the test's own DNS zone (support/dns.py); each node sends from its own address
(`[delivery] source_ip`), so the sink's peer address names the delivering node.
"""

from __future__ import annotations

import asyncio
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

from support.clients import PASSWORD
from support.cluster import Cluster, idle_wait
from support.net import free_port
from support.postgres import Postgres
from support.server import ALICE, ROOT, Server
from support.wait import poll, wait_for

LEASE = "3s"
SINK_IP = "127.0.0.5"
REMOTE = "carol@remote.test"


@pytest.fixture(scope="module")
def postgres():
    pg = Postgres()
    yield pg
    pg.close()


@pytest.fixture
def cluster(tmp_path, postgres, loopback_dns):
    """cluster(users=(ALICE,), dns_addr=None, **Cluster kwargs): three started nodes over a
    fresh database; stopped (each must exit 0) at teardown."""
    made: list[Cluster] = []

    def make(users=(ALICE,), dns_addr: str | None = None, **kw) -> Cluster:
        c = Cluster(tmp_path / f"cluster{len(made)}", dns_addr or loopback_dns.addr,
                    postgres.database(), **kw)
        made.append(c)
        return c.start(users)

    yield make
    for c in made:
        c.stop()


@pytest.fixture
def remote_zone(dns):
    """The test's DNS zone with remote.test's MX at SINK_IP."""
    dns.add("remote.test", "MX", "10 mx.remote.test.")
    dns.add("mx.remote.test", "A", SINK_IP)
    return dns


# --- messages and clients ------------------------------------------------------------------


def message(token: str, to: str = ALICE, sender: str = "sender@elsewhere.test") -> bytes:
    """A small message whose Message-ID and Subject carry `token`."""
    return (f"From: <{sender}>\r\nTo: <{to}>\r\nSubject: {token}\r\n"
            f"Message-ID: <{token}@multinode.test>\r\n\r\nbody of {token}\r\n").encode()


def deliver(node: Server, token: str, to: str = ALICE):
    """One message over SMTP on `node` (no auth: a local recipient); its 250 or a failure."""
    with smtplib.SMTP(node.host, node.ports["smtp"], timeout=10) as s:
        s.ehlo("client.test")
        refused = s.sendmail("sender@elsewhere.test", [to], message(token, to))
        assert not refused, refused


def submit(node: Server, tokens: list[str], to: str = REMOTE):
    """Messages from alice to `to` over authenticated submission on `node`, one session."""
    with smtplib.SMTP(node.host, node.ports["submission"], timeout=10) as s:
        s.ehlo("client.test")
        s.login(ALICE, PASSWORD)
        for t in tokens:
            refused = s.sendmail(ALICE, [to], message(t, to, ALICE))
            assert not refused, refused


def imap(node: Server, user: str = ALICE, timeout: float = 10) -> imaplib.IMAP4:
    m = imaplib.IMAP4(node.host, node.ports["imap"], timeout=timeout)
    m.login(user, PASSWORD)
    return m


def pop3(node: Server, user: str = ALICE, timeout: float = 10) -> poplib.POP3:
    """A POP3 session past PASS, or the PASS reply's error_proto (the socket closed)."""
    p = poplib.POP3(node.host, node.ports["pop3"], timeout=timeout)
    try:
        p.user(user)
        p.pass_(PASSWORD)
    except Exception:
        p.close()
        raise
    return p


def in_use(node: Server, user: str = ALICE) -> bool:
    """Whether a POP3 login on `node` is refused with [IN-USE] (any other refusal fails)."""
    try:
        p = pop3(node, user)
    except poplib.error_proto as e:
        assert e.args[0].startswith(b"-ERR [IN-USE]"), e.args[0]
        return True
    p.quit()
    return False


def pop3_when_free(node: Server, timeout: float, user: str = ALICE) -> poplib.POP3:
    """Log in, retrying while the maildrop is [IN-USE], for up to `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return pop3(node, user)
        except poplib.error_proto as e:
            assert e.args[0].startswith(b"-ERR [IN-USE]"), e.args[0]
            if time.monotonic() > deadline:
                raise AssertionError(f"maildrop still locked after {timeout}s: {e.args[0]!r}")
            time.sleep(0.2)


def mailbox(node: Server, user: str = ALICE) -> list[tuple[int, str, set[str]]]:
    """(UID, token, flags) of every message of the user's INBOX in sequence order, read
    over IMAP on `node` (tokens from the Message-IDs)."""
    m = imap(node, user)
    try:
        typ, data = m.select("INBOX", readonly=True)
        assert typ == "OK", data
        if int(data[0]) == 0:
            return []
        typ, data = m.fetch("1:*", "(UID FLAGS BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])")
        assert typ == "OK", data
        out = []
        for item in data:
            if isinstance(item, tuple):
                head, field = item
                out.append([head, re.search(rb"<([^@>]+)@", field).group(1).decode()])
            elif item and item != b")":  # the attributes after the literal
                out[-1][0] += item
        result = []
        for head, token in out:
            uid = re.search(rb"UID (\d+)", head)
            flags = re.search(rb"FLAGS \(([^)]*)\)", head)
            assert uid and flags, head
            # \Recent is per session (RFC 3501 2.3.2), not part of what the nodes share.
            result.append((int(uid.group(1)), token,
                           set(flags.group(1).decode().split()) - {"\\Recent"}))
        return result
    finally:
        m.logout()


def noop_until(r, pattern: bytes, timeout: float, what: str) -> list[bytes]:
    """NOOP every 0.1 s until one of its untagged responses matches `pattern`; return that
    NOOP's untagged responses. A timeout fails naming `what` and the last NOOP's answer."""
    deadline = time.monotonic() + timeout
    while True:
        untagged = r.ok("NOOP")
        if any(re.match(pattern, u) for u in untagged):
            return untagged
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {timeout}s of NOOPs; last NOOP: {untagged}")
        time.sleep(0.1)


class Sink:
    """aiosmtpd on SINK_IP:port that records every transaction that reached the end of
    DATA as (peer address, Message-ID token, answered 250). With `stall_first`, the first
    transaction is not answered until `release` is set (its client sees no reply)."""

    def __init__(self, port: int, stall_first: bool = False):
        from aiosmtpd.controller import Controller

        self.transactions: list[tuple[str, str, bool]] = []
        self.release = threading.Event()
        sink = self

        class Handler:
            async def handle_DATA(self, server, session, envelope):
                token = re.search(rb"Message-ID: <([^@>]+)@", envelope.content).group(1).decode()
                first = not sink.transactions
                sink.transactions.append((session.peer[0], token, False))
                i = len(sink.transactions) - 1
                if stall_first and first:
                    while not sink.release.is_set():
                        await asyncio.sleep(0.05)
                    return "451 4.3.0 released by the test"
                sink.transactions[i] = (session.peer[0], token, True)
                return "250 OK"

        self.ctl = Controller(Handler(), hostname=SINK_IP, port=port)
        self.ctl.start()

    def acknowledged(self) -> list[tuple[str, str]]:
        return [(peer, token) for peer, token, ok in self.transactions if ok]

    def stop(self):
        self.release.set()
        self.ctl.stop()


# --- 1. change notification across nodes ---------------------------------------------------


def test_idle_on_one_node_hears_a_delivery_made_on_another(cluster):
    """SMTP on node 1; an IMAP session IDLE on node 2 hears `* 2 EXISTS` within 2 s of
    the 250, and then reads the message."""
    c = cluster()
    deliver(c[0], "first")
    r = c.imap_raw(1, ALICE)
    try:
        r.send("i1 IDLE\r\n")
        assert r.line().startswith(b"+ ")
        deliver(c[0], "during-idle")
        line, waited = idle_wait(r, rb"\* 2 EXISTS$", 5)  # timed from the 250
        assert line == b"* 2 EXISTS", (
            "IDLE on node 2 heard no '* 2 EXISTS' within 5 s of the delivery on node 1")
        assert waited < 2.0, f"'* 2 EXISTS' came {waited:.2f}s after the 250"
        r.send("DONE\r\n")
        _, tagged = r.read_until("i1")
        assert tagged.startswith(b"i1 OK"), tagged
        lines = r.ok("FETCH 2 (BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        assert len(lines) == 1 and b"Subject: during-idle" in lines[0], lines
    finally:
        r.close()


def test_noop_on_a_third_node_sees_the_delivery_and_flags_set_on_a_second(cluster):
    """SMTP on node 1: NOOP on node 3 reports `* 2 EXISTS`; `\\Flagged` stored on node 2
    comes to node 3 as an untagged FETCH on NOOP, and FETCH FLAGS there shows it."""
    c = cluster()
    deliver(c[0], "first")
    n2, n3 = c.imap_raw(1, ALICE), c.imap_raw(2, ALICE)
    try:
        deliver(c[0], "second")
        noop_until(n3, rb"\* 2 EXISTS$", 2.5, "'* 2 EXISTS' on node 3")
        noop_until(n2, rb"\* 2 EXISTS$", 2.5, "'* 2 EXISTS' on node 2")
        untagged = n2.ok("STORE 2 +FLAGS (\\Flagged)")
        assert any(re.match(rb"\* 2 FETCH \(.*\\Flagged", u) for u in untagged), untagged
        untagged = noop_until(n3, rb"\* 2 FETCH ", 2.5, "untagged FETCH for message 2 on node 3")
        fetch = [u for u in untagged if u.startswith(b"* 2 FETCH ")]
        assert b"\\Flagged" in fetch[0], fetch
        lines = n3.ok("FETCH 1:2 (FLAGS)")
        assert b"\\Flagged" not in lines[0] and b"\\Flagged" in lines[1], lines
        # And back: \Seen stored on node 3 reaches node 2.
        n3.ok("STORE 1 +FLAGS.SILENT (\\Seen)")
        untagged = noop_until(n2, rb"\* 1 FETCH ", 2.5, "untagged FETCH for message 1 on node 2")
        assert any(b"\\Seen" in u for u in untagged if u.startswith(b"* 1 FETCH ")), untagged
    finally:
        n2.close()
        n3.close()


# --- 2. the POP3 maildrop lock across nodes ------------------------------------------------


def test_pop3_maildrop_lock_holds_across_nodes(cluster):
    """A POP3 session on node 1 holds alice's maildrop: logins on every node get
    `-ERR [IN-USE]`; after its QUIT node 2 logs in, and its DELE is what node 3 serves."""
    c = cluster()
    deliver(c[2], "one")
    deliver(c[2], "two")
    p1 = pop3(c[0])
    try:
        assert p1.stat()[0] == 2
        # Held on node 1: refused on node 2 and on node 3 (and on node 1 itself).
        for node in (c[1], c[2], c[0]):
            assert in_use(node), f"a second POP3 login on {node.host} was admitted"
        assert p1.quit().startswith(b"+OK")
    finally:
        p1.close()
    # Released by QUIT: node 2 may log in (the lease is dropped in the background: wait
    # for that a moment, never for the lease to run out).
    p2 = pop3_when_free(c[1], 2.0)
    assert p2.stat()[0] == 2
    assert p2.dele(1).startswith(b"+OK")
    assert p2.quit().startswith(b"+OK")
    # The deletion committed on node 2 is what node 3 serves.
    p3 = pop3_when_free(c[2], 2.0)
    count, _ = p3.stat()
    _, listing, _ = p3.top(1, 0)
    assert p3.quit().startswith(b"+OK")
    assert count == 1 and b"Subject: two" in listing, (count, listing)


def test_pop3_lock_of_a_killed_node_lapses_after_the_lease(cluster):
    """kill -9 of the node holding alice's maildrop: logins elsewhere are refused until
    the lease (3 s) runs out, then admitted."""
    c = cluster(lease=LEASE)
    deliver(c[0], "one")
    p1 = pop3(c[0])
    assert p1.stat()[0] == 1
    time.sleep(1.2)  # let the lease be renewed once: renewal must not extend it past 3 s
    c[0].kill()
    killed = time.monotonic()
    try:
        assert in_use(c[1]), "the lock vanished with the killed node instead of lapsing"
        p2 = pop3_when_free(c[1], 10.0)
        waited = time.monotonic() - killed
        assert p2.stat()[0] == 1
        assert p2.quit().startswith(b"+OK")
        # Integer-second expiry: between 1 s and 3 s after the last renewal, plus polling.
        assert waited < 4.5, f"admitted {waited:.1f}s after the kill (lease {LEASE})"
        print(f"maildrop free on node 2 {waited:.1f}s after node 1 was killed")
    finally:
        p1.close()
    c.restart(0)
    assert not in_use(c[0])


def imap_or_refused(node: Server, user: str = ALICE) -> imaplib.IMAP4 | None:
    """A logged-in IMAP session on `node`, or None when the login is refused for too many
    sessions (any other refusal fails)."""
    m = imaplib.IMAP4(node.host, node.ports["imap"], timeout=10)
    try:
        m.login(user, PASSWORD)
    except imaplib.IMAP4.error as e:
        m.shutdown()
        assert "[UNAVAILABLE] Too many connections for this user" in str(e), e
        return None
    return m


def test_per_user_imap_connection_limit_counts_sessions_on_every_node(cluster):
    """`imap.max_connections_per_user = 2` is one limit for alice on all nodes: sessions on
    nodes 1 and 2 fill it and logins on node 3 (and node 1) are refused with
    `NO [UNAVAILABLE]`; a LOGOUT frees a slot for node 3; the slot of a node killed with
    kill -9 lapses after the lease (3 s) instead of staying taken."""
    c = cluster(lease=LEASE, imap={"max_connections_per_user": 2})
    a, b = imap(c[0]), imap(c[1])
    assert imap_or_refused(c[2]) is None, "a third session (on node 3) was admitted"
    assert imap_or_refused(c[0]) is None, "a third session (on node 1) was admitted"
    a.logout()
    # The slot is released in the background as the session ends: wait a moment for that.
    held = wait_for(lambda: imap_or_refused(c[2]), timeout=3.0, what="a slot after LOGOUT")
    # b on node 2 and `held` on node 3 hold both slots; node 3 dies with its own.
    assert imap_or_refused(c[0]) is None
    time.sleep(1.2)  # let the lease be renewed once: renewal must not extend it past 3 s
    c[2].kill()
    killed = time.monotonic()
    assert imap_or_refused(c[0]) is None, "the killed node's slot vanished instead of lapsing"
    again = wait_for(lambda: imap_or_refused(c[0]), timeout=10.0, what="the killed node's slot")
    waited = time.monotonic() - killed
    assert waited < 4.5, f"a slot was free {waited:.1f}s after the kill (lease {LEASE})"
    print(f"a slot was free on node 1 {waited:.1f}s after node 3 was killed")
    again.logout()
    b.logout()
    held.shutdown()
    c.restart(2)


# --- 3. and 4. the shared queue ------------------------------------------------------------


def queued_with_errors(node: Server, n: int) -> bool:
    """Whether the queue lists `n` entries, each attempted (ID SENDER ATTEMPTS …) and with
    the attempt's error recorded (in parentheses at the end)."""
    lines = node.cli("queue", "list").stdout.splitlines()[1:]
    return len(lines) == n and all(int(line.split()[2]) >= 1 and line.endswith(")")
                                   for line in lines)


def test_queue_to_a_down_destination_delivers_each_message_once_when_it_is_up(
        cluster, remote_zone):
    """Three messages submitted on each node while remote.test's MX is down; it comes up:
    each message arrives exactly once, from one of the nodes, and the queue empties."""
    port = free_port()
    c = cluster(dns_addr=remote_zone.addr, delivery={"port": port})
    tokens = [f"down-up-{i}-{k}" for i in range(3) for k in range(3)]
    for i in range(3):
        submit(c[i], tokens[3 * i:3 * i + 3])
    wait_for(lambda: queued_with_errors(c[0], len(tokens)), timeout=15,
             what="every entry attempted once against the down destination")
    sink = Sink(port)
    try:
        wait_for(lambda: len(sink.acknowledged()) >= len(tokens), timeout=20,
                 what="every message delivered once the destination is up")
        c.queue_empty()
        # Nothing left to deliver: any later transaction would be a duplicate.
        poll(lambda: len(sink.transactions) > len(tokens), timeout=1.5)
        got = collections.Counter(t for _, t, _ in sink.transactions)
        assert got == collections.Counter(tokens), got
        peers = collections.Counter(p for p, _, _ in sink.transactions)
        assert set(peers) <= {n.host for n in c}, peers
        print(f"deliveries by node address: {dict(peers)}")
    finally:
        sink.stop()


def test_a_delivery_cut_by_kill_9_is_taken_over_after_the_lease(cluster, remote_zone):
    """The sink accepts the message's data and does not answer: the node delivering it (by
    the connection's source address) gets SIGKILL. Another node delivers it after the
    lease: one transaction more, acknowledged; none after that."""
    port = free_port()
    c = cluster(dns_addr=remote_zone.addr, delivery={"port": port}, lease=LEASE)
    sink = Sink(port, stall_first=True)
    try:
        submit(c[1], ["cut"])
        wait_for(lambda: sink.transactions, timeout=10, what="the first delivery attempt")
        victim = c.node_at(sink.transactions[0][0])
        c[victim].kill()
        killed = time.monotonic()
        wait_for(lambda: sink.acknowledged(), timeout=20,
                 what=f"another node taking over after node {victim + 1} was killed")
        waited = time.monotonic() - killed
        taker = c.node_at(sink.acknowledged()[0][0])
        assert taker != victim
        c.queue_empty()
        c.restart(victim)
        # The killed node, back, has nothing left to deliver.
        poll(lambda: len(sink.transactions) > 2, timeout=2)
        assert [(t, ok) for _, t, ok in sink.transactions] == [("cut", False), ("cut", True)], (
            sink.transactions)
        # The lease, plus the time until an idle node's queue runner next looks at the
        # queue (every 10 s when it knows of nothing due sooner).
        assert waited < 15, f"taken over {waited:.1f}s after the kill (lease {LEASE})"
        print(f"node {victim + 1} killed mid-DATA; node {taker + 1} delivered "
              f"{waited:.1f}s later")
    finally:
        sink.stop()


# --- 5. UIDs under concurrent writers on every node ----------------------------------------


CATCH_UP = float(os.environ.get("MULTINODE_CATCH_UP", "3"))


def test_concurrent_appends_and_deliveries_on_all_nodes_keep_uids_ascending(cluster):
    """APPEND and SMTP into alice's INBOX from all three nodes at once (two writers per
    node), while a session on each node NOOPs in a loop: UIDs are unique and ascending in
    sequence order, every message is there exactly once with the UID its APPENDUID named,
    and no watcher ever sees a UID appear below one it has already seen."""
    per_writer = 15
    c = cluster()
    deliver(c[0], "seed")  # INBOX exists before the writers race
    start = threading.Barrier(9, timeout=30)
    done = threading.Event()
    until = [0.0]  # when the writers are done: the time by which watchers must see it all
    errors: list[str] = []
    appended: dict[str, int] = {}  # token -> APPENDUID's UID
    sent: list[str] = []

    def appender(i: int):
        try:
            m = imap(c[i])
            start.wait()
            for k in range(per_writer):
                token = f"app-{i}-{k}"
                typ, data = m.append("INBOX", None, None, message(token))
                assert typ == "OK", (token, data)
                uid = re.search(rb"\[APPENDUID \d+ (\d+)\]", data[0])
                assert uid, data
                appended[token] = int(uid.group(1))
            m.logout()
        except Exception as e:  # noqa: BLE001 - reported by the test
            errors.append(f"appender on node {i + 1}: {e!r}")

    def smtp_writer(i: int):
        try:
            with smtplib.SMTP(c[i].host, c[i].ports["smtp"], timeout=10) as s:
                s.ehlo("client.test")
                start.wait()
                for k in range(per_writer):
                    token = f"smtp-{i}-{k}"
                    assert not s.sendmail("sender@elsewhere.test", [ALICE], message(token))
                    sent.append(token)
        except Exception as e:  # noqa: BLE001
            errors.append(f"SMTP writer on node {i + 1}: {e!r}")

    expected = 1 + 2 * 3 * per_writer
    views: list[list[int]] = [[], [], []]

    def watcher(i: int):
        r = c.imap_raw(i, ALICE)
        seen: set[int] = set()
        try:
            start.wait()
            while True:
                finished = done.is_set()
                r.ok("NOOP")
                line = [u for u in r.ok("UID SEARCH ALL") if u.startswith(b"* SEARCH")]
                uids = [int(x) for x in line[0].split()[2:]]
                new = sorted(set(uids) - seen)
                if new and seen and new[0] < max(seen):
                    errors.append(f"watcher on node {i + 1}: UID {new[0]} appeared after "
                                  f"UID {max(seen)} had been seen")
                if len(set(uids)) != len(uids) or uids != sorted(uids):
                    errors.append(f"watcher on node {i + 1}: UID SEARCH not ascending: {uids}")
                seen |= set(uids)
                views[i] = uids
                if len(seen) >= expected or (finished and time.monotonic() > until[0]):
                    return
                time.sleep(0.02)
        except Exception as e:  # noqa: BLE001
            errors.append(f"watcher on node {i + 1}: {e!r}")
        finally:
            r.close()

    writers = [threading.Thread(target=f, args=(i,)) for i in range(3)
               for f in (appender, smtp_writer)]
    watchers = [threading.Thread(target=watcher, args=(i,)) for i in range(3)]
    for t in writers + watchers:
        t.start()
    for t in writers:
        t.join(60)
    until[0] = time.monotonic() + CATCH_UP  # by then watchers must have seen it all
    done.set()
    for t in watchers:
        t.join(30)
    assert not errors, errors
    assert len(appended) == len(sent) == 3 * per_writer

    boxes = [mailbox(n) for n in c]
    assert boxes[0] == boxes[1] == boxes[2], "the nodes serve different mailboxes"
    uids = [uid for uid, _, _ in boxes[0]]
    assert uids == sorted(set(uids)), uids
    tokens = collections.Counter(t for _, t, _ in boxes[0])
    assert tokens == collections.Counter(["seed", *appended, *sent]), tokens
    by_token = {t: uid for uid, t, _ in boxes[0]}
    wrong = {t: (u, by_token[t]) for t, u in appended.items() if by_token[t] != u}
    assert not wrong, f"APPENDUID named other UIDs: {wrong}"
    # Last, as it depends on change notification across nodes: each watcher saw it all.
    token_at = {uid: t for uid, t, _ in boxes[0]}
    for i in range(3):
        missing = [(u, token_at[u]) for u in uids if u not in views[i]]
        assert views[i] == uids, (
            f"the watcher on node {i + 1} saw {len(views[i])} of {expected} messages "
            f"{CATCH_UP}s after the writers finished; missing (UID, token): {missing}")


# --- 6. a crash ledger over the cluster ----------------------------------------------------

SEED = int(os.environ.get("MULTINODE_SEED", "2326"))
LOAD_SECONDS = float(os.environ.get("MULTINODE_LOAD_SECONDS", "35"))
USERS = tuple(f"{u}@example.org" for u in ("dora", "emil", "fran"))


def fate(token: str) -> str:
    """What the load may do to a message: keep it, flag it, or delete it."""
    return token.rsplit("-", 1)[1]


class Ledger:
    """Everything the clients sent and everything the nodes acknowledged."""

    def __init__(self):
        self.lock = threading.Lock()
        self.sent: dict[str, str] = {}  # token -> recipient, once its DATA/APPEND was sent
        self.acked: set[str] = set()  # 250 to DATA, or OK to APPEND
        self.flagged: set[str] = set()  # OK to UID STORE +FLAGS (\Flagged)
        self.deleting: set[str] = set()  # a deletion was sent (may or may not have happened)
        self.deleted: set[str] = set()  # OK to UID EXPUNGE, or +OK to QUIT after DELE
        self.errors: list[str] = []  # answers that must not happen, even under kills
        self.stop = threading.Event()
        self.count = collections.Counter()

    def add(self, what: str, tokens, kind: str | None = None):
        """Record `tokens` in the set (or dict) `what`; count them under `kind`."""
        tokens = list(tokens)
        with self.lock:
            getattr(self, what).update(tokens)
            if kind:
                self.count[kind] += len(tokens)


def tokens_of(m: imaplib.IMAP4) -> dict[str, int]:
    """token -> UID in the selected mailbox."""
    typ, data = m.uid("FETCH", "1:*", "(UID BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])")
    assert typ == "OK", data
    out = {}
    for item in data:
        if isinstance(item, tuple):
            uid = re.search(rb"UID (\d+)", item[0])
            token = re.search(rb"<([^@>]+)@", item[1])
            if uid and token:
                out[token.group(1).decode()] = int(uid.group(1))
    return out


CUT = (OSError, EOFError, smtplib.SMTPException, imaplib.IMAP4.abort, poplib.error_proto)


def drop(conn):
    """Close a client's socket whatever state it is in (an open session would hold a
    node's shutdown for its shutdown_timeout)."""
    if conn is None:
        return
    try:
        conn.shutdown() if isinstance(conn, imaplib.IMAP4) else conn.close()
    except OSError:
        pass


def worker(load, c: Cluster, ledger: Ledger, w: int):
    """Run one load function; what it did not expect is a test failure, not a warning."""
    try:
        load(c, ledger, w)
    except Exception as e:  # noqa: BLE001
        import traceback

        ledger.errors.append(f"{load.__name__} {w} died: {traceback.format_exc()}")
        raise e


def smtp_load(c: Cluster, ledger: Ledger, w: int):
    rng, seq = random.Random(SEED + w), 0
    while not ledger.stop.is_set():
        node = rng.choice(c.nodes)
        try:
            with smtplib.SMTP(node.host, node.ports["smtp"], timeout=5) as s:
                s.ehlo("client.test")
                for _ in range(10):
                    seq += 1
                    token = f"smtp{w}.{seq}.{node.host}-{('keep', 'flag', 'del')[seq % 3]}"
                    to = rng.choice(USERS)
                    ledger.add("sent", {token: to}.items())
                    s.sendmail("sender@elsewhere.test", [to], message(token, to))
                    ledger.add("acked", [token], "smtp 250")
                    if ledger.stop.is_set():
                        break
                    time.sleep(0.03)  # paced: the machine is shared
        except CUT:
            time.sleep(0.05)


def append_load(c: Cluster, ledger: Ledger, w: int):
    rng, seq = random.Random(SEED + 100 + w), 0
    while not ledger.stop.is_set():
        node, user, m = rng.choice(c.nodes), rng.choice(USERS), None
        try:
            m = imap(node, user, timeout=5)
            for _ in range(5):
                seq += 1
                token = f"append{w}.{seq}.{node.host}-{('keep', 'flag', 'del')[seq % 3]}"
                ledger.add("sent", {token: user}.items())
                typ, data = m.append("INBOX", None, None, message(token, user))
                if typ != "OK":
                    ledger.errors.append(f"APPEND on {node.host}: {typ} {data}")
                    break
                ledger.add("acked", [token], "APPEND OK")
                time.sleep(0.03)
            m.logout()
        except (CUT + (imaplib.IMAP4.error,)):
            time.sleep(0.05)
        finally:
            drop(m)


def imap_mutator(c: Cluster, ledger: Ledger, w: int):
    """Flag messages whose fate is 'flag', delete (UID EXPUNGE) some whose fate is 'del'."""
    rng = random.Random(SEED + 200 + w)
    while not ledger.stop.is_set():
        node, user, m = rng.choice(c.nodes), rng.choice(USERS), None
        try:
            m = imap(node, user, timeout=5)
            typ, data = m.select("INBOX")
            uids = tokens_of(m) if typ == "OK" and int(data[0]) else {}
            flag = [t for t in uids if fate(t) == "flag" and t not in ledger.flagged]
            for t in rng.sample(flag, min(3, len(flag))):
                typ, data = m.uid("STORE", str(uids[t]), "+FLAGS", "(\\Flagged)")
                if typ != "OK":
                    ledger.errors.append(f"UID STORE on {node.host}: {typ} {data}")
                    continue
                ledger.add("flagged", [t], "STORE OK")
            dele = [t for t in uids if fate(t) == "del" and t not in ledger.deleting]
            for t in rng.sample(dele, min(2, len(dele))):
                ledger.add("deleting", [t])
                typ, data = m.uid("STORE", str(uids[t]), "+FLAGS.SILENT", "(\\Deleted)")
                if typ == "OK":
                    typ, data = m.uid("EXPUNGE", str(uids[t]))
                if typ != "OK":
                    ledger.errors.append(f"deleting on {node.host}: {typ} {data}")
                    continue
                ledger.add("deleted", [t], "UID EXPUNGE OK")
            m.logout()
        except (CUT + (imaplib.IMAP4.error,)):
            time.sleep(0.05)
        finally:
            drop(m)
        time.sleep(0.1)


def pop3_load(c: Cluster, ledger: Ledger, w: int):
    """Sessions that DELE up to two messages whose fate is 'del' and QUIT."""
    rng = random.Random(SEED + 300 + w)
    while not ledger.stop.is_set():
        node, user, p = rng.choice(c.nodes), rng.choice(USERS), None
        try:
            p = poplib.POP3(node.host, node.ports["pop3"], timeout=5)
            p.user(user)
            try:
                p.pass_(PASSWORD)
            except poplib.error_proto as e:
                if isinstance(e.args[0], str):  # poplib's own "-ERR EOF": cut by a kill
                    continue
                if e.args[0].startswith(b"-ERR [IN-USE]"):
                    ledger.count["POP3 IN-USE"] += 1
                else:
                    ledger.errors.append(f"POP3 PASS on {node.host}: {e.args[0]!r}")
                continue
            count, _ = p.stat()
            picked = []
            for n in rng.sample(range(1, count + 1), min(6, count)):
                _, head, _ = p.top(n, 0)
                token = next(re.search(rb"<([^@>]+)@", h).group(1).decode()
                             for h in head if h.lower().startswith(b"message-id:"))
                if fate(token) == "del" and len(picked) < 2:
                    picked.append(token)
                    ledger.add("deleting", [token])
                    p.dele(n)
            if p.quit().startswith(b"+OK"):
                ledger.add("deleted", picked, "POP3 DELE+QUIT OK")
        except CUT:
            time.sleep(0.05)
        finally:
            drop(p)
        time.sleep(0.2)


def differences(a: dict, b: dict, node: int) -> str:
    """How node `node`'s view `b` ({user: mailbox()}) differs from node 1's `a`."""
    out = []
    for u in USERS:
        ua = {uid: (t, f) for uid, t, f in a[u]}
        ub = {uid: (t, f) for uid, t, f in b[u]}
        only_a = sorted(set(ua) - set(ub))
        only_b = sorted(set(ub) - set(ua))
        flags = [(uid, ua[uid][1], ub[uid][1]) for uid in set(ua) & set(ub) if ua[uid] != ub[uid]]
        if only_a or only_b or flags:
            out.append(f"{u.split('@')[0]}: only on node 1 {[ua[x][0] for x in only_a[:5]]}"
                       f"{'…' if len(only_a) > 5 else ''}, only on node {node} "
                       f"{[ub[x][0] for x in only_b[:5]]}{'…' if len(only_b) > 5 else ''}, "
                       f"flags differ {[(ua[x][0], f1, f2) for x, f1, f2 in sorted(flags)[:3]]}"
                       f"{'…' if len(flags) > 3 else ''}")
    return f"node {node} vs node 1: " + ", ".join(out) if out else ""


def test_a_rate_limit_learned_on_one_node_applies_on_the_others(cluster):
    """Scripts' kv is shared: scripts/mail_rate_limit.rhai (max 6 per sender) counts the
    transactions of one sender over all three nodes, atomically: 15 concurrent attempts,
    five per node, get exactly 6 acceptances and 9 times 450."""
    c = cluster(hooks=[{"script": str(ROOT / "scripts" / "mail_rate_limit.rhai"),
                        "config": {"max": 6, "window": "1h"}}])
    codes: list[int] = []
    lock = threading.Lock()

    def attempt(node: Server):
        with smtplib.SMTP(node.host, node.ports["smtp"], timeout=15) as s:
            s.ehlo("client.test")
            code, _ = s.mail("spammer@elsewhere.test")
            with lock:
                codes.append(code)

    threads = [threading.Thread(target=attempt, args=(n,)) for n in c for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(codes) == [250] * 6 + [450] * 9, codes
    # The count lives in the database: a node that never saw this sender refuses it too.
    with smtplib.SMTP(c[2].host, c[2].ports["smtp"], timeout=15) as s:
        s.ehlo("client.test")
        assert s.mail("spammer@elsewhere.test")[0] == 450
        s.rset()
        assert s.mail("someone@elsewhere.test")[0] == 250


def test_crash_ledger_over_three_nodes(cluster):
    """SMTP, APPEND, flagging, UID EXPUNGE and POP3 DELE on random nodes while a random node
    is SIGKILLed every few seconds and restarted. At the end every message that got a 250
    (or an APPEND OK) is there exactly once unless an acknowledged deletion took it,
    nothing is there twice, every acknowledged \\Flagged is kept and every acknowledged
    deletion stays deleted. All nodes serve the same mailboxes once they have followed the
    last writes (allowing for hints lost with a killed node: followed by polling)."""
    c = cluster(users=USERS, lease=LEASE, imap={"max_connections_per_user": 100})
    rng = random.Random(SEED)
    print(f"\nseed: MULTINODE_SEED={SEED}")
    ledger = Ledger()
    load = [(smtp_load, w) for w in range(3)] + [(append_load, 0)]
    load += [(imap_mutator, w) for w in range(2)] + [(pop3_load, 0)]
    workers = [threading.Thread(target=worker, args=(f, c, ledger, w)) for f, w in load]
    for t in workers:
        t.daemon = True
        t.start()
    schedule = []
    started = time.monotonic()
    try:
        while time.monotonic() - started < LOAD_SECONDS:
            time.sleep(rng.uniform(2.0, 4.0))
            k = rng.randrange(len(c.nodes))
            c[k].kill()
            at = time.monotonic() - started
            time.sleep(rng.uniform(0.1, 1.0))
            c.restart(k)
            schedule.append(f"{at:5.1f}s kill node {k + 1}, back at "
                            f"{time.monotonic() - started:5.1f}s; acks so far {dict(ledger.count)}")
    finally:
        ledger.stop.set()
        for t in workers:
            t.join(20)
    report = "\n".join(schedule)
    print(report)
    assert not [t for t in workers if t.is_alive()], "a load thread hung"
    assert not ledger.errors, f"{ledger.errors[:10]}\n{report}"
    n = ledger.count
    assert (n["smtp 250"] >= 100 and n["APPEND OK"] >= 20 and n["STORE OK"] >= 10
            and n["UID EXPUNGE OK"] >= 5 and n["POP3 DELE+QUIT OK"] >= 5), (
        f"too little load to judge: {dict(n)}\n{report}")

    # Every node serves the same mailboxes, once each has followed the others' last
    # writes: by a hint, or by the poll every 5 s when the hint was lost with a killed
    # node. Reading every mailbox on every node takes seconds itself.
    views: list = []
    rounds: list[str] = []
    t0 = time.monotonic()

    def agree():
        views[:] = [{u: mailbox(node, u) for u in USERS} for node in c]
        diffs = [differences(views[0], v, i + 1) for i, v in enumerate(views[1:], 1)]
        rounds.append(f"+{time.monotonic() - t0:.1f}s: " + ("; ".join(filter(None, diffs))
                                                            or "agreed"))
        return not any(diffs)

    if not poll(agree, timeout=15, interval=0.5):
        raise AssertionError("the nodes still serve different mailboxes 15 s after the load "
                             "stopped:\n" + "\n".join(rounds))
    converged = time.monotonic() - t0
    print("\n".join(rounds))
    boxes = views[0]
    found = collections.Counter((u, t) for u in USERS for _, t, _ in boxes[u])
    flags = {(u, t): f for u in USERS for _, t, f in boxes[u]}
    problems = []
    unknown = [k for k in found if ledger.sent.get(k[1]) != k[0]]
    problems += [f"never sent: {k}" for k in unknown]
    problems += [f"{k[1]} x{v} in {k[0]}" for k, v in found.items() if v > 1]
    for token, user in ledger.sent.items():
        here = found[(user, token)]
        if token in ledger.deleted and here:
            problems.append(f"{token}: deletion acknowledged, still in {user}")
        elif token in ledger.acked and not here and token not in ledger.deleting:
            problems.append(f"{token}: acknowledged, missing from {user}")
        if token in ledger.flagged and "\\Flagged" not in flags.get((user, token), ()):
            problems.append(f"{token}: \\Flagged acknowledged, not set "
                            f"({'missing' if not here else flags[(user, token)]})")
        if fate(token) != "del" and here and "\\Deleted" in flags[(user, token)]:
            problems.append(f"{token}: \\Deleted though nobody deleted it")
    for u in USERS:
        uids = [uid for uid, _, _ in boxes[u]]
        assert uids == sorted(set(uids)), f"UIDs of {u} not ascending: {uids}"
    print(f"{time.monotonic() - started:.0f}s, {len(schedule)} kills; {dict(n)}; "
          f"{sum(found.values())} messages at the end; the nodes agreed {converged:.1f}s "
          f"after the load stopped")
    logs = "\n".join(f"node {i + 1}:\n{node.logs()[-3000:]}" for i, node in enumerate(c))
    assert not problems, f"{len(problems)} problems: {problems[:20]}\n{report}\n{logs}"
