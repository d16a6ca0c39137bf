"""Database failover under load (issue 23): the deployment a careful admin runs — a
PostgreSQL primary with a synchronous standby, managed by Patroni with etcd, all on loopback
(support/patroni.py) — and two Corvus nodes that reach it with a multi-host URL
(`postgresql://corvus@127.0.0.1:P0,127.0.0.1:P1/corvus?target_session_attrs=read-write`).

Under SMTP, IMAP and POP3 traffic on both nodes (support/pg_load.py) the primary's
PostgreSQL is killed with SIGKILL; Patroni promotes the standby. Then:

- the Corvus processes never exited;
- clients saw only temporary errors (SMTP 4xx, IMAP `NO [UNAVAILABLE]`, POP3
  `-ERR [SYS/TEMP]`/`[IN-USE]`) or dropped connections during the switch;
- both nodes serve again by themselves (no restart) within a few seconds of the promotion:
  a new message is taken on each node and readable on the other;
- every message that got a 250 is in the mailbox exactly once (read over IMAP on both
  nodes): a 250 is given only after a COMMIT the synchronous standby has confirmed.

Missing packages (patroni, etcd-server, postgresql) are a failure naming them, not a skip:
tests/run installs them.
"""

from __future__ import annotations

import time

import pytest

from support.patroni import PatroniCluster, tools_missing
from support.pg_load import Traffic, alive, report, resumed, settle_and_check
from support.server import ALICE, IMAP, with_preset
from support.wait import poll

# How soon after Patroni promoted the standby each node must serve again.
RESUME_AFTER_PROMOTION = 15.0


@pytest.fixture
def cluster():
    missing = tools_missing()
    assert not missing, f"not installed: {' '.join(missing)} (apt-get install {' '.join(missing)})"
    c = PatroniCluster()
    yield c
    c.close()


def test_nodes_follow_a_patroni_failover_under_load(cluster, corvus_factory):
    nodes = [corvus_factory(name=name, **with_preset(
        IMAP, listeners=("smtp", "imap", "pop3"),
        store={"backend": "postgres", "url": cluster.url, "pool_size": 4, "lease": "3s"},
        pop3={"allow_plaintext_auth": True})) for name in ("n1", "n2")]
    nodes[0].cli("store", "migrate")
    nodes[0].add_user(ALICE)
    for n in nodes:
        n.start()
    pids = [n.proc.pid for n in nodes]

    # Two senders, so that transactions are in flight when the primary dies.
    traffic = Traffic(nodes, ALICE, smtp_threads=2).start()
    problems: list[str] = []
    timings, before, killed = {}, 0, time.monotonic()
    try:
        warm = traffic.outcomes
        assert poll(lambda: all(warm.last_ok(p) for p in ("smtp", "imap", "pop3")), 20), \
            "no traffic got through before the failover: " + traffic.summary()
        time.sleep(1.0)
        # The standby confirms every commit at the moment of the kill.
        standby = cluster.wait_sync_standby(timeout=10)
        old = cluster.other(standby)
        before = len(traffic.accepted())
        killed = traffic.mark(f"kill -9 the postmaster of {old.name}")
        cluster.kill_postmaster(old)
        try:
            cluster.wait_leader(standby, timeout=30)
        except AssertionError as e:
            raise AssertionError(f"{e}\n{cluster.logs()}") from None
        promoted = traffic.mark(f"{standby.name} promoted")
        timings["promoted after kill"] = round(promoted - killed, 1)
        problems += alive(nodes, pids)
        more, took = resumed(nodes, promoted, within=RESUME_AFTER_PROMOTION)
        problems += more
        timings["nodes serve again after promotion"] = took
        # Load goes on a few more seconds on the new primary.
        time.sleep(3.0)
    finally:
        traffic.stop()
    problems += alive(nodes, pids)
    problems += [f"client got: {b}" for b in traffic.bad_kinds()]
    problems += settle_and_check(nodes, traffic)
    during = traffic.outcomes.counts(since=killed)
    print(f"failover {old.name} -> {standby.name}: {timings}; {len(traffic.accepted())} messages "
          f"accepted ({before} before the kill); from the kill on: "
          f"{ {p: dict(c) for p, c in during.items()} }; roles now {cluster.roles()}")
    assert not problems, report("Patroni failover: problems", problems, nodes, traffic)

