"""Disk space comes back (issue 20 item 4): append N messages of 20 KB, expunge them all,
several rounds. What was expunged must not stay on disk: once the store's background
cleaning has run, the data directory holds less than two rounds' bodies however many rounds
there were — while the server runs and again after a restart. Before the fix every round
stayed (120,000 messages appended and expunged left 984 MB); with it the directory settles
between about two thirds and one and a half rounds' worth (sled reuses and punches holes in
its freed log segments, and relocates live records out of mostly-empty ones in the
background), which RECLAIM_ROUNDS=8 shows does not grow with the rounds.

On PostgreSQL (CORVUS_E2E_STORE=postgres) the data directory holds no mail, and giving a
deleted row's pages back is the database's (autovacuum) job: what Corvus owes there is that
an expunged body leaves the database, so the same rounds measure the bytes of the bodies in
its `blobs` table instead, which must come back to the live messages' exactly."""

import os

import time
import pathlib

from support.mail import simple_message
from support.server import ON_POSTGRES

N = int(os.environ.get("RECLAIM_N", "1500"))
ROUNDS = int(os.environ.get("RECLAIM_ROUNDS", "3"))
BODY = 20 * 1024


def du(path: pathlib.Path) -> int:
    """Bytes allocated on disk under `path` (what `du` counts, not apparent sizes)."""
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            try:
                total += os.stat(os.path.join(root, f)).st_blocks * 512
            except FileNotFoundError:
                pass
    return total


def stored_bytes(srv) -> int:
    """What the store holds for its mail: the data directory's size on disk (sled), or the
    bytes of the message bodies in the database (PostgreSQL)."""
    if ON_POSTGRES:
        return int(srv.sql("SELECT coalesce(sum(octet_length(data)), 0) FROM blobs")[0][0])
    return du(srv.data_dir)


def settle(path: pathlib.Path, limit: float = 20.0) -> int:
    """The size of `path` once the store's background cleaning has caught up: sled relocates
    the live records of mostly-empty log segments, and frees the segments, in its periodic
    flusher (every 500 ms), so the space comes back within seconds, not at once."""
    deadline = time.monotonic() + limit
    last = du(path)
    still = 0
    # Three readings without a decrease in a row: on a loaded machine the cleaner can pause
    # for one interval and still have segments to free.
    while time.monotonic() < deadline:
        time.sleep(1.5)
        now = du(path)
        still = still + 1 if now >= last else 0
        if still == 3:
            return now
        last = min(last, now)
    return last


def append_many(r, n: int, start: int = 0):
    line = ("y" * 76 + "\r\n").encode()
    body = line * (BODY // len(line))
    for chunk in range(0, n, 100):
        data = b""
        k = min(100, n - chunk)
        for i in range(k):
            msg = simple_message(subject=f"Bulk {start + chunk + i}").replace(b"Hello world\r\n", body)
            data += b"a%d APPEND INBOX {%d+}\r\n" % (i, len(msg)) + msg + b"\r\n"
        r.send(data)
        for i in range(k):
            _, tagged = r.read_until(f"a{i}")
            assert b" OK " in tagged, tagged


def test_expunged_bodies_free_their_space(make_server):
    srv = make_server()
    user = srv.add_user()
    r = srv.raw_imap(user, select="INBOX")
    append_many(r, 20)  # some live data, as in the report (230 live messages)
    base = stored_bytes(srv)
    for round_ in range(ROUNDS):
        append_many(r, N, start=1000 * (round_ + 1))
        full = stored_bytes(srv)
        r.ok("STORE 21:* +FLAGS.SILENT (\\Deleted)")
        r.ok("EXPUNGE")
        assert len(r.ok("SEARCH ALL")[0].split()) == 2 + 20
        print("round", round_, full, stored_bytes(srv))
    if ON_POSTGRES:
        # Bodies leave the database in the EXPUNGE's own transaction: nothing to wait for.
        live = stored_bytes(srv)
        assert live == base, (base, live)
        assert srv.sql("SELECT count(*) FROM blobs")[0][0] == "20"
    else:
        live = settle(srv.data_dir)
    r.close()
    srv.restart()
    after = stored_bytes(srv) if ON_POSTGRES else settle(srv.data_dir)
    one_round = N * BODY
    print(f"base {base} last full {full} after expunge {live} after restart {after} "
          f"one round {one_round} rounds {ROUNDS}")
    assert full - base > one_round // 2, (base, full)  # the appends did land on disk
    # Without reclaim, ROUNDS (3) rounds would all be there.
    assert live - base < 2 * one_round, (base, live, one_round)
    assert after - base < 2 * one_round, (base, after, one_round)
