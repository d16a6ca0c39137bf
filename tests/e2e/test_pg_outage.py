"""PostgreSQL goes away under running Corvus nodes (issue 23): a restart (`pg_ctl restart -m
fast`, `-m immediate`), every connection of the nodes ended (`pg_terminate_backend`), and the
server stopped for about five seconds.

Two nodes share one throwaway database (support/postgres.py, on its Unix socket) with light
SMTP, IMAP and POP3 traffic on both (support/pg_load.py). What must hold:

- clients see only temporary errors while the database is away: SMTP 4xx, IMAP
  `NO [UNAVAILABLE]`, POP3 `-ERR [SYS/TEMP]` (or `[IN-USE]`), or a dropped connection;
  never a permanent error, a stall, or a success that is not one;
- the nodes stay up (their processes never exit) and serve again by themselves within a few
  seconds of the database being back, without a restart;
- every message that got a 250 is in the mailbox exactly once afterwards, on both nodes.

Each problem is collected, and the test fails at its end naming all of them with what the
client saw and the node logs' error lines, so one problem does not hide the others.
"""

from __future__ import annotations

import time

import pytest

from support.clients import PASSWORD, RawImap, RawPop3, RawSmtp, quote
from support.pg_load import (RESUME_WITHIN, Traffic, alive, report, resumed, settle_and_check,
                             tokens_in)
from support.postgres import Postgres
from support.server import ALICE, IMAP, with_preset
from support.wait import poll


@pytest.fixture(scope="module")
def pg():
    p = Postgres()
    yield p
    p.close()


@pytest.fixture
def nodes(pg, corvus_factory):
    """Two nodes on a fresh database (running: an earlier test may have left it stopped),
    `lease = "3s"` so what a node held when its connection broke is free again soon."""
    if not pg.running():
        pg.start()
    url = pg.database()
    made = []
    for name in ("n1", "n2"):
        made.append(corvus_factory(name=name, **with_preset(
            IMAP, listeners=("smtp", "imap", "pop3"),
            store={"backend": "postgres", "url": url, "pool_size": 4, "lease": "3s"},
            pop3={"allow_plaintext_auth": True})))
    made[0].cli("store", "migrate")
    made[0].add_user(ALICE)
    for n in made:
        n.start()
    return made, url


def until_not_temporary(step, temporary: bytes, within: float = RESUME_WITHIN) -> bytes:
    """Run `step` (a client command returning its reply) again every half second while its
    reply starts with `temporary`, for up to `within` seconds; the last reply."""
    deadline = time.monotonic() + within
    while True:
        reply = step()
        if not reply.startswith(temporary) or time.monotonic() > deadline:
            return reply
        time.sleep(0.5)


def outage_restart_fast(pg: Postgres, url: str):
    pg.restart("fast")


def outage_restart_immediate(pg: Postgres, url: str):
    pg.restart("immediate")


def outage_terminate(pg: Postgres, url: str):
    ended = pg.terminate_backends(url)
    assert ended > 0, "no connection of the nodes to end"


OUTAGES = {
    "restart-fast": outage_restart_fast,
    "restart-immediate": outage_restart_immediate,
    "terminate-backends": outage_terminate,
}


@pytest.mark.parametrize("outage", list(OUTAGES))
def test_nodes_ride_out_a_database_restart_or_lost_connections(pg, nodes, outage):
    nodes, url = nodes
    pids = [n.proc.pid for n in nodes]
    traffic = Traffic(nodes, ALICE, smtp_threads=2).start()
    problems, before, took = [], 0, {}
    try:
        # Warm up: every protocol has worked on the nodes before the outage.
        warm = poll(lambda: all(traffic.outcomes.last_ok(p) for p in ("smtp", "imap", "pop3")),
                    timeout=15)
        assert warm, "no traffic got through before the outage: " + traffic.summary()
        time.sleep(1.0)
        before = len(traffic.accepted())
        traffic.mark(outage)
        OUTAGES[outage](pg, url)
        back = traffic.mark("database back")
        problems += alive(nodes, pids)
        more, took = resumed(nodes, back)
        problems += more
        # The load goes on a little after the nodes serve again.
        time.sleep(2.0)
    finally:
        traffic.stop()
    problems += alive(nodes, pids)
    problems += [f"client got: {b}" for b in traffic.bad_kinds()]
    problems += settle_and_check(nodes, traffic)
    print(f"{outage}: {len(traffic.accepted())} messages accepted ({before} before the outage), "
          f"served again after {took} s; {traffic.summary()}; not accepted: "
          f"{sorted(set(traffic.not_accepted().values()))}")
    assert not problems, report(f"{outage}: problems", problems, nodes, traffic)


def test_database_stopped_for_five_seconds_then_back(pg, nodes):
    """Sessions opened before the database stops, and new ones while it is down: only
    temporary errors; after it starts again every one works again, no node restarted."""
    nodes, url = nodes
    n1, n2 = nodes
    pids = [n.proc.pid for n in nodes]
    problems: list[str] = []
    transcript: list[str] = []

    def expect(ok: bool, what: str, got):
        line = f"{'ok ' if ok else 'BAD'} {what}: {got!r}"
        if line not in transcript:  # the rounds while down repeat themselves
            transcript.append(line)
        if not ok:
            problems.append(f"{what}: got {got!r}")

    traffic = Traffic(nodes, ALICE, imap=False, pop3=False)
    token0, out = traffic.send_one(n1)
    assert out == "250", out
    # Sessions made before the outage: an SMTP transaction up to its recipient, an IMAP
    # session with INBOX selected (its message not read yet), a POP3 session logged in.
    smtp = RawSmtp(n1.ports["smtp"], timeout=20)
    smtp.reply()
    for line in ("EHLO early.example", "MAIL FROM:<early@remote.example>", f"RCPT TO:<{ALICE}>"):
        assert smtp.cmd(line)[0] == 250, line
    imap = RawImap(n2.ports["imap"], timeout=20)
    imap.ok(f"LOGIN {quote(ALICE)} {quote(PASSWORD)}")
    imap.ok("SELECT INBOX")
    pop3 = RawPop3(n1.ports["pop3"], timeout=20)
    pop3.login(ALICE)

    pg.stop("fast")
    down = time.monotonic()
    try:
        # The SMTP transaction: DATA is not accepted (4xx at DATA or at its end).
        code, text = smtp.cmd("DATA")
        if code == 354:
            smtp.send(b"Subject: early\r\n\r\nwritten while the database is down\r\n.\r\n")
            code, text = smtp.reply()
        expect(400 <= code < 500, "n1 SMTP DATA while the database is down (want 4xx)", (code, text))
        # The IMAP session: a FETCH of the body, then SELECT, get NO [UNAVAILABLE] (in this
        # order: a SELECT that fails leaves no mailbox selected).
        untagged, tagged = imap.cmd("FETCH 1 (BODY.PEEK[])")
        expect(b" NO [UNAVAILABLE]" in tagged,
               "n2 IMAP FETCH 1 (BODY.PEEK[]) while the database is down (want NO [UNAVAILABLE])",
               (untagged, tagged))
        _, tagged = imap.cmd("SELECT INBOX")
        expect(b" NO [UNAVAILABLE]" in tagged,
               "n2 IMAP SELECT while the database is down (want NO [UNAVAILABLE])", tagged)
        # The POP3 session: RETR gets -ERR [SYS/TEMP].
        reply = pop3.cmd("RETR 1")
        expect(reply.startswith(b"-ERR [SYS/TEMP]"),
               "n1 POP3 RETR while the database is down (want -ERR [SYS/TEMP])", reply)
        # New sessions, on both nodes, for about five seconds.
        rounds = 0
        while time.monotonic() - down < 5.0 or rounds < 2:
            rounds += 1
            for n in nodes:
                name = n.base.name
                _, out = traffic.send_one(n)
                expect(out.startswith("4"), f"{name} SMTP new message (want 4xx)", out)
                r = RawImap(n.ports["imap"], timeout=20)
                _, tagged = r.cmd(f"LOGIN {quote(ALICE)} {quote(PASSWORD)}")
                r.close()
                expect(b" NO [UNAVAILABLE]" in tagged,
                       f"{name} IMAP LOGIN (want NO [UNAVAILABLE])", tagged)
                p = RawPop3(n.ports["pop3"], timeout=20)
                p.cmd(f"USER {ALICE}")
                reply = p.cmd(f"PASS {PASSWORD}")
                p.close()
                expect(reply.startswith(b"-ERR [SYS/TEMP]"),
                       f"{name} POP3 login (want -ERR [SYS/TEMP])", reply)
            time.sleep(1.0)
        problems += alive(nodes, pids)
    finally:
        if not pg.running():
            pg.start()
    back = time.monotonic()

    # Back: the sessions made before the outage carry on. The POP3 one first (it holds the
    # maildrop: until its QUIT, other POP3 logins are rightly refused [IN-USE]).
    try:
        reply = until_not_temporary(lambda: pop3.cmd("RETR 1"), b"-ERR [SYS/TEMP]")
        expect(reply.startswith(b"+OK"), "n1 POP3 RETR in the session from before, after", reply)
        if reply.startswith(b"+OK"):
            lines = pop3.multiline()
            expect(any(token0.encode() in l for l in lines),
                   "n1 POP3 RETR 1 is the message", lines[:12])
        reply = pop3.cmd("QUIT")
        expect(reply.startswith(b"+OK"), "n1 POP3 QUIT in the session from before", reply)
    except (OSError, EOFError) as e:
        expect(False, "n1 POP3 session from before, after", e)
    try:
        smtp.cmd("RSET")
        codes = [smtp.cmd(line)[0] for line in (
            "MAIL FROM:<early@remote.example>", f"RCPT TO:<{ALICE}>", "DATA")]
        smtp.send(b"Subject: late\r\n\r\nafter the database came back\r\n.\r\n")
        codes.append(smtp.reply()[0])
        expect(codes == [250, 250, 354, 250], "n1 SMTP session from before, after", codes)
    except (OSError, EOFError) as e:
        expect(False, "n1 SMTP session from before, after", e)
    try:
        untagged, tagged = imap.cmd("SELECT INBOX")
        expect(b" OK" in tagged[:8], "n2 IMAP SELECT in the session from before, after", tagged)
        untagged, tagged = imap.cmd("FETCH 1 (BODY.PEEK[])")
        expect(b" OK" in tagged[:8] and any(token0.encode() in l for l in untagged),
               "n2 IMAP FETCH 1 in the session from before, after", (untagged[:1], tagged))
    except (OSError, EOFError) as e:
        expect(False, "n2 IMAP session from before, after", e)
    for c in (smtp, imap, pop3):
        c.close()
    # Fresh sessions on both nodes work again within a few seconds.
    more, took = resumed(nodes, back)
    problems += more
    problems += alive(nodes, pids)
    problems += settle_and_check(nodes, traffic)
    # Nothing sent while the database was down was stored.
    found = tokens_in(n1, ALICE)
    stored_anyway = [t for t in traffic.not_accepted() if found[t]]
    expect(not stored_anyway, "messages refused while down but stored", stored_anyway)
    print(f"served again after {took} s")
    print("\n".join(transcript))
    assert not problems, report("database stopped for 5 s: problems", problems, nodes) + \
        "\ntranscript:\n" + "\n".join(transcript)


def test_a_pop3_session_whose_lock_ran_out_in_an_outage_does_not_share_the_maildrop(pg, nodes):
    """RFC 1939 §8: a POP3 session holds an exclusive-access lock on the maildrop. With
    PostgreSQL that lock is a lease (`[store] lease`, 3 s here) the node renews; while the
    database is down for longer than that, the lease runs out. Afterwards a new POP3 login
    (on the other node) may take the lock — but then the old session must not go on as if
    it still had it (its commands refused, or the session ended); otherwise two sessions
    work on one maildrop, and the old one's DELE + QUIT deletes under the new one."""
    nodes, url = nodes
    n1, n2 = nodes
    traffic = Traffic(nodes, ALICE, imap=False, pop3=False)
    for _ in range(2):
        assert traffic.send_one(n1)[1] == "250"
    old = RawPop3(n1.ports["pop3"], timeout=20)
    old.login(ALICE)
    assert old.cmd("STAT").startswith(b"+OK 2 ")
    pg.stop("fast")
    time.sleep(5.0)  # longer than the lease
    pg.start()
    # A new session on the other node, as soon as the database answers.
    new = RawPop3(n2.ports["pop3"], timeout=20)
    new.cmd(f"USER {ALICE}")
    got_in = until_not_temporary(lambda: new.cmd(f"PASS {PASSWORD}"), b"-ERR [SYS/TEMP]")
    transcript = [f"n2 new session PASS: {got_in!r}"]
    problems = []
    if got_in.startswith(b"+OK"):
        # The new session has the maildrop: the old one must not work on it any more.
        try:
            dele = old.cmd("DELE 1")
            transcript.append(f"n1 old session DELE 1: {dele!r}")
            quit_ = old.cmd("QUIT") if dele.startswith(b"+OK") else b""
            transcript.append(f"n1 old session QUIT: {quit_!r}")
            if dele.startswith(b"+OK") and quit_.startswith(b"+OK"):
                problems.append("the old session (its lock ran out during the outage) deleted "
                                "message 1 while the new session on n2 held the maildrop")
        except (OSError, EOFError) as e:
            transcript.append(f"n1 old session ended: {e!r}")  # what it should do
        stat = new.cmd("STAT")
        transcript.append(f"n2 new session STAT: {stat!r}")
        new.cmd("QUIT")
    else:
        # The old session renewed its lock first: the new one is refused, as it should be.
        assert got_in.startswith(b"-ERR [IN-USE]"), transcript
        old.cmd("QUIT")
    old.close()
    new.close()
    print("\n".join(transcript))
    assert not problems, report("POP3 lock across an outage longer than the lease", problems,
                                nodes) + "\ntranscript:\n" + "\n".join(transcript)
