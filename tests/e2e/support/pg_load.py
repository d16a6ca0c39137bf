"""Light SMTP/IMAP/POP3 traffic against Corvus nodes while their database goes away
(test_pg_outage.py, test_pg_failover.py), and a record of what every client saw.

Each load thread loops until stopped, across the nodes it is given, and classifies every
reply it gets:

- ok: the command did what it should;
- temp: a temporary error (SMTP 4xx, IMAP `NO [UNAVAILABLE]` or `BYE [UNAVAILABLE]`, POP3
  `-ERR [SYS/TEMP]` or `-ERR [IN-USE]`);
- dropped: the server closed the connection (or reset it); the client reconnects;
- bad: anything else — a permanent error (5xx, `NO` without UNAVAILABLE, `-ERR` without a
  temporary code), a success that is not one (an IMAP FETCH that answers OK but leaves out a
  message the mailbox has), or no answer within the client timeout.

`Traffic.bad()` then lists the "bad" replies, each with what the client got.

The SMTP thread gives each message a unique token (its Subject) and remembers which got 250;
`tokens_in(server, user)` reads the tokens back over IMAP to check that every 250'd message
is there exactly once.

The checks both tests make after the outage are here too: `alive` (the node processes never
exited), `resumed` (every node serves every protocol to a fresh session again, and how soon),
`settle_and_check` (one more message per node, then every 250'd token exactly once on each
node) and `report` (a failure message with the bad replies and the nodes' warnings).
"""

from __future__ import annotations

import collections
import itertools
import re
import socket
import threading
import time
import uuid

from .clients import PASSWORD, RawImap, RawPop3, RawSmtp, quote
from .server import ALICE
from .wait import poll

# How long a client waits for one reply before it calls it a stall (a "bad" outcome): the
# pool waits up to 30 s for a connection, but a node that cannot reach its database should
# say so sooner than that.
REPLY_TIMEOUT = 15.0

# How soon after the database is back (or a new primary promoted) each node must serve
# each protocol again.
RESUME_WITHIN = 10.0


class Outcomes:
    """Thread-safe record of (time, protocol, node, step, kind, detail)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.events: list[tuple[float, str, str, str, str, str]] = []

    def add(self, proto: str, node: str, step: str, kind: str, detail: str = ""):
        with self.lock:
            self.events.append((time.monotonic(), proto, node, step, kind, detail[:300]))

    def of(self, kind: str, since: float = 0.0) -> list[tuple]:
        with self.lock:
            return [e for e in self.events if e[4] == kind and e[0] >= since]

    def counts(self, since: float = 0.0) -> dict[str, collections.Counter]:
        """{protocol: Counter(kind)} of the events since `since`."""
        out: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
        with self.lock:
            for t, proto, _, _, kind, _ in self.events:
                if t >= since:
                    out[proto][kind] += 1
        return dict(out)

    def last_ok(self, proto: str) -> float | None:
        with self.lock:
            oks = [e[0] for e in self.events if e[1] == proto and e[4] == "ok"]
        return max(oks) if oks else None

    def first_ok_after(self, proto: str, t: float) -> float | None:
        with self.lock:
            oks = [e[0] for e in self.events if e[1] == proto and e[4] == "ok" and e[0] >= t]
        return min(oks) if oks else None


class Stall(Exception):
    """No reply within REPLY_TIMEOUT."""


def _guard(fn):
    """Run one client step; socket timeouts become Stall, resets and EOF ConnectionError."""
    try:
        return fn()
    except socket.timeout as e:
        raise Stall(str(e)) from e
    except (EOFError, ConnectionResetError, BrokenPipeError, ConnectionAbortedError) as e:
        raise ConnectionError(str(e)) from e


class Traffic:
    """The load: `Traffic(nodes, user).start()`, … `.stop()`, then `.bad()`, `.accepted()`.

    `nodes` are started `Server`s (support/server.py) sharing one database; `user` an
    account on them. `smtp`, `imap`, `pop3` say which threads run (`smtp_threads` senders);
    `pause` is the time between two messages / two IMAP rounds / two POP3 sessions. One IMAP
    thread makes sessions of `imap_rounds` rounds of SELECT, FETCH, NOOP, alternating nodes;
    with `imap_long` another keeps one session as long as the server does."""

    def __init__(self, nodes, user: str, smtp: bool = True, imap: bool = True,
                 pop3: bool = True, pause: float = 0.1, imap_rounds: int = 10,
                 smtp_threads: int = 1, imap_long: bool = True):
        self.nodes = list(nodes)
        self.user = user
        self.pause = pause
        self.outcomes = Outcomes()
        self.stopping = threading.Event()
        self.lock = threading.Lock()
        # token -> the final reply to its message: "250", "4xx …", "dropped", "bad …"
        self.sent: dict[str, str] = {}
        self.seq = itertools.count(1)
        self.threads = []
        for k in range(smtp_threads if smtp else 0):
            self.threads.append(threading.Thread(target=self._smtp_loop, args=(k,),
                                                 name=f"smtp-load-{k}", daemon=True))
        if imap:
            self.threads.append(threading.Thread(target=self._imap_loop, args=(0, imap_rounds),
                                                 name="imap-load", daemon=True))
        if imap and imap_long:
            # Sessions that last until the server drops them: the outage finds them logged
            # in with INBOX selected, not between two logins.
            self.threads.append(threading.Thread(target=self._imap_loop, args=(1, 10**9),
                                                 name="imap-load-long", daemon=True))
        if pop3:
            self.threads.append(threading.Thread(target=self._pop3_loop, name="pop3-load", daemon=True))
        self.errors: list[str] = []
        self.t0 = time.monotonic()
        # (time, what happened): the outage's moments, for the report
        self.marks: list[tuple[float, str]] = []

    def mark(self, what: str) -> float:
        """Note a moment (the database stopped, came back, …); its time."""
        t = time.monotonic()
        self.marks.append((t, what))
        return t

    def start(self) -> "Traffic":
        self.t0 = time.monotonic()
        for t in self.threads:
            t.start()
        return self

    def stop(self, timeout: float = 60):
        self.stopping.set()
        for t in self.threads:
            t.join(timeout)
        stuck = [t.name for t in self.threads if t.is_alive()]
        assert not stuck, f"load threads did not stop: {stuck}"
        assert not self.errors, "load threads failed:\n" + "\n".join(self.errors)

    def _node(self, i: int):
        n = self.nodes[i % len(self.nodes)]
        return n, n.base.name

    # --- SMTP ------------------------------------------------------------------------------

    def accepted(self) -> list[str]:
        with self.lock:
            return [t for t, r in self.sent.items() if r == "250"]

    def not_accepted(self) -> dict[str, str]:
        with self.lock:
            return {t: r for t, r in self.sent.items() if r != "250"}

    def _smtp_loop(self, first: int = 0):
        try:
            for i in itertools.count(first):
                if self.stopping.is_set():
                    return
                srv, name = self._node(i)
                self.send_one(srv, name)
                time.sleep(self.pause)
        except Exception as e:  # a bug of the load itself, not of the server
            self.errors.append(f"smtp thread: {e!r}")

    def send_one(self, srv, name: str | None = None) -> tuple[str, str]:
        """One message with a fresh token over a new SMTP session; (token, outcome)."""
        name = name or srv.base.name
        token = f"tok{next(self.seq):05d}-{uuid.uuid4().hex[:8]}"
        out = self._smtp_session(srv, name, token)
        with self.lock:
            self.sent[token] = out
        return token, out

    def _smtp_session(self, srv, name: str, token: str) -> str:
        o = self.outcomes
        step = "connect"
        s = None
        try:
            s = _guard(lambda: RawSmtp(srv.ports["smtp"], timeout=REPLY_TIMEOUT))
            steps = [("greeting", None, 220), ("EHLO", "EHLO load.example", 250),
                     ("MAIL", "MAIL FROM:<load@remote.example>", 250),
                     ("RCPT", f"RCPT TO:<{self.user}>", 250), ("DATA", "DATA", 354)]
            for step, line, want in steps:
                code, text = _guard(lambda: s.reply() if line is None else s.cmd(line))
                if code == want:
                    continue
                kind = "temp" if 400 <= code < 500 else "bad"
                o.add("smtp", name, step, kind, f"{code} {' '.join(text)}")
                return f"{code} at {step}"
            step = "end of data"
            body = (f"From: load@remote.example\r\nTo: {self.user}\r\nSubject: {token}\r\n"
                    f"Message-ID: <{token}@remote.example>\r\n\r\nbody of {token}\r\n.\r\n")
            _guard(lambda: s.send(body.encode()))
            code, text = _guard(s.reply)
            if code == 250:
                o.add("smtp", name, step, "ok")
                try:
                    s.cmd("QUIT")
                except OSError:
                    pass
                return "250"
            kind = "temp" if 400 <= code < 500 else "bad"
            o.add("smtp", name, step, kind, f"{code} {' '.join(text)}")
            return f"{code} at {step}"
        except ConnectionError as e:
            o.add("smtp", name, step, "dropped", repr(e))
            return f"dropped at {step}"
        except Stall as e:
            o.add("smtp", name, step, "bad", f"no reply within {REPLY_TIMEOUT} s ({e})")
            return f"stalled at {step}"
        except OSError as e:  # connection refused: the node is down
            o.add("smtp", name, step, "bad", f"cannot connect: {e!r}")
            return f"refused at {step}"
        finally:
            if s:
                s.close()

    # --- IMAP ------------------------------------------------------------------------------

    def _imap_loop(self, first: int, rounds: int):
        """Sessions of `rounds` rounds (SELECT, FETCH of the newest message, NOOP), each on
        the next node; a session the server drops is replaced by the next one."""
        try:
            for i in itertools.count(first):
                if self.stopping.is_set():
                    return
                srv, name = self._node(i)
                self._imap_session(srv, name, rounds)
                time.sleep(self.pause)
        except Exception as e:
            self.errors.append(f"imap thread: {e!r}")

    def _imap_cmd(self, r: RawImap, name: str, step: str, line: str) -> tuple[list[bytes], bytes] | None:
        """Run one command; None unless OK (the outcome is recorded)."""
        untagged, tagged = _guard(lambda: r.cmd(line))
        status = tagged.split(b" ", 2)[1:2]
        if status == [b"OK"]:
            return untagged, tagged
        text = tagged.decode(errors="replace")
        kind = "temp" if status == [b"NO"] and b"[UNAVAILABLE]" in tagged else "bad"
        self.outcomes.add("imap", name, step, kind, text)
        return None

    def _imap_session(self, srv, name: str, rounds: int):
        o = self.outcomes
        step = "connect"
        r = None
        try:
            r = _guard(lambda: RawImap(srv.ports["imap"], timeout=REPLY_TIMEOUT))
            if not r.greeting.startswith(b"* OK"):
                kind = "temp" if b"[UNAVAILABLE]" in r.greeting else "bad"
                o.add("imap", name, "greeting", kind, r.greeting.decode(errors="replace"))
                return
            step = "LOGIN"
            if not self._imap_cmd(r, name, step, f"LOGIN {quote(self.user)} {quote(PASSWORD)}"):
                return
            o.add("imap", name, step, "ok")
            for _ in range(rounds):
                if self.stopping.is_set():
                    break
                step = "SELECT"
                got = self._imap_cmd(r, name, step, "SELECT INBOX")
                if got:
                    o.add("imap", name, step, "ok")
                    exists = [int(m.group(1)) for l in got[0]
                              if (m := re.match(rb"\* (\d+) EXISTS", l))]
                    n = exists[-1] if exists else 0
                    if n:
                        step = "FETCH"
                        got = self._imap_cmd(
                            r, name, step, f"FETCH {n} (UID BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
                        if got:
                            fetched = [l for l in got[0] if re.match(rb"\* %d FETCH" % n, l)]
                            if any(b"Subject:" in l for l in fetched):
                                o.add("imap", name, step, "ok")
                            else:
                                o.add("imap", name, step, "bad",
                                      f"FETCH {n} answered {got[1]!r} without message {n} "
                                      f"(of {n}): {got[0][:3]!r}")
                step = "NOOP"
                if self._imap_cmd(r, name, step, "NOOP"):
                    o.add("imap", name, step, "ok")
                time.sleep(self.pause)
            try:
                r.cmd("LOGOUT")
            except (OSError, EOFError):
                pass
        except ConnectionError as e:
            o.add("imap", name, step, "dropped", repr(e))
        except Stall as e:
            o.add("imap", name, step, "bad", f"no reply within {REPLY_TIMEOUT} s ({e})")
        except OSError as e:
            o.add("imap", name, step, "bad", f"cannot connect: {e!r}")
        finally:
            if r:
                r.close()

    # --- POP3 ------------------------------------------------------------------------------

    def _pop3_loop(self):
        """Session after session: login, STAT, RETR of the last message, QUIT (nothing is
        deleted: the messages are counted afterwards)."""
        try:
            for i in itertools.count():
                if self.stopping.is_set():
                    return
                srv, name = self._node(i)
                self._pop3_session(srv, name)
                time.sleep(self.pause * 4)
        except Exception as e:
            self.errors.append(f"pop3 thread: {e!r}")

    def _pop3_reply(self, name: str, step: str, reply: bytes, eof: bool) -> bool:
        if reply.startswith(b"+OK"):
            return True
        if eof and not reply:
            raise ConnectionError(f"closed at {step}")
        kind = "temp" if reply.startswith((b"-ERR [SYS/TEMP]", b"-ERR [IN-USE]")) else "bad"
        self.outcomes.add("pop3", name, step, kind, reply.decode(errors="replace"))
        return False

    def _pop3_session(self, srv, name: str):
        o = self.outcomes
        step = "connect"
        p = None
        try:
            p = _guard(lambda: RawPop3(srv.ports["pop3"], timeout=REPLY_TIMEOUT))
            if not self._pop3_reply(name, "greeting", p.greeting, p.eof):
                return
            for step, line in (("USER", f"USER {self.user}"), ("PASS", f"PASS {PASSWORD}")):
                if not self._pop3_reply(name, step, _guard(lambda: p.cmd(line)), p.eof):
                    return
            o.add("pop3", name, "login", "ok")
            step = "STAT"
            reply = _guard(lambda: p.cmd("STAT"))
            if not self._pop3_reply(name, step, reply, p.eof):
                return
            n = int(reply.split()[1])
            if n:
                step = "RETR"
                reply = _guard(lambda: p.cmd(f"RETR {n}"))
                if self._pop3_reply(name, step, reply, p.eof):
                    lines = _guard(p.multiline)
                    if any(l.startswith(b"Subject:") for l in lines):
                        o.add("pop3", name, step, "ok")
                    else:
                        o.add("pop3", name, step, "bad", f"RETR {n}: no header in {lines[:3]!r}")
            step = "QUIT"
            self._pop3_reply(name, step, _guard(lambda: p.cmd("QUIT")), p.eof)
        except ConnectionError as e:
            o.add("pop3", name, step, "dropped", repr(e))
        except Stall as e:
            o.add("pop3", name, step, "bad", f"no reply within {REPLY_TIMEOUT} s ({e})")
        except OSError as e:
            o.add("pop3", name, step, "bad", f"cannot connect: {e!r}")
        finally:
            if p:
                try:
                    p.close()
                except OSError:
                    pass

    # --- checks ----------------------------------------------------------------------------

    def summary(self, since: float = 0.0) -> str:
        return ", ".join(f"{p}: {dict(c)}" for p, c in sorted(self.outcomes.counts(since).items()))

    def bad(self) -> list[str]:
        """Each "bad" outcome as a line: seconds since the load started, protocol, node,
        step, what the client got."""
        return [f"+{t - self.t0:5.1f}s {p} {n} {s}: {d}" for t, p, n, s, _, d in self.outcomes.of("bad")]

    def bad_kinds(self) -> list[str]:
        """The "bad" outcomes, one line per kind (protocol, step, what came back, with IMAP
        tags and message numbers left out), with how often and when (first–last)."""
        kinds: dict[tuple, list] = {}
        for t, proto, node, step, _, detail in self.outcomes.of("bad"):
            what = re.sub(r"\bt\d+ ", "", detail)
            what = re.sub(r"\d+", "N", what) if step == "FETCH" else what
            k = kinds.setdefault((proto, step, what), [0, t, t, set()])
            k[0] += 1
            k[2] = t
            k[3].add(node)
        return [f"{proto} {step} on {','.join(sorted(nodes))}: {what} — {n}x, "
                f"+{first - self.t0:.1f}s…+{last - self.t0:.1f}s"
                for (proto, step, what), (n, first, last, nodes) in kinds.items()]

    def timeline(self) -> str:
        """The marks, in seconds since the load started."""
        return ", ".join(f"+{t - self.t0:.1f}s {what}" for t, what in self.marks)


def tokens_in(srv, user: str) -> collections.Counter:
    """The load tokens (Subject of each message) in `user`'s INBOX on `srv`, with how often
    each is there, read over IMAP (EXAMINE: nothing changes)."""
    r = RawImap(srv.ports["imap"], timeout=30)
    try:
        r.ok(f"LOGIN {quote(user)} {quote(PASSWORD)}")
        r.ok("EXAMINE INBOX")
        untagged = r.ok("UID FETCH 1:* (BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        r.cmd("LOGOUT")
    finally:
        r.close()
    found = collections.Counter()
    for line in untagged:
        for m in re.finditer(rb"Subject: (tok\d+-[0-9a-f]{8})", line):
            found[m.group(1).decode()] += 1
    return found


def exactly_once(srv, user: str, tokens: list[str]) -> list[str]:
    """What is wrong with `tokens` (each should be in `user`'s INBOX once) on `srv`: lines
    naming the missing and the doubled ones; empty when all is well."""
    found = tokens_in(srv, user)
    missing = [t for t in tokens if found[t] == 0]
    doubled = {t: found[t] for t in tokens if found[t] > 1}
    out = []
    if missing:
        out.append(f"{srv.base.name}: {len(missing)} of {len(tokens)} accepted messages missing: {missing[:10]}")
    if doubled:
        out.append(f"{srv.base.name}: stored more than once: {dict(list(doubled.items())[:10])}")
    return out


# --- checks the outage and failover tests share -----------------------------------------

def error_lines(node, limit: int = 30) -> str:
    """The node's WARN/ERROR log lines (and any panic), for a failure message: each kind
    once (the first time, with how often it came; session ids, peers and timestamps do not
    make a line a new kind)."""
    kinds: dict[str, list] = {}
    for line in node.logs().splitlines():
        if " WARN " not in line and " ERROR " not in line and "panicked" not in line:
            continue
        key = re.sub(r"^\S+Z\s+", "", line)
        key = re.sub(r"session=\w+ peer=[\d.:]+ ", "", key)
        key = re.sub(r"(lease|uid|queue_id)=\S+", r"\1=…", key)
        if key in kinds:
            kinds[key][1] += 1
        else:
            kinds[key] = [line, 1]
    shown = [f"{line}  (x{n})" if n > 1 else line for line, n in list(kinds.values())[:limit]]
    return f"--- {node.base.name}: {len(kinds)} kinds of warn/error lines ---\n" + "\n".join(shown)


def alive(nodes, pids) -> list[str]:
    """Problems: a node whose process exited, or was replaced."""
    return [f"{n.base.name} exited with {n.proc.returncode}" for n in nodes if not n.running] + \
        [f"{n.base.name} is a new process" for n, pid in zip(nodes, pids) if n.proc.pid != pid]


def probe(node, user: str = ALICE) -> list[str]:
    """A fresh session of each protocol on `node`: what did not work (empty: all did)."""
    bad = []
    try:
        s = RawSmtp(node.ports["smtp"], timeout=10)
        try:
            s.reply()
            for line in ("EHLO probe.example", "MAIL FROM:<probe@remote.example>",
                         f"RCPT TO:<{user}>"):
                code, text = s.cmd(line)
                if code != 250:
                    bad.append(f"smtp {line.split()[0]}: {code} {text}")
                    break
        finally:
            s.close()
    except (OSError, EOFError) as e:
        bad.append(f"smtp: {e!r}")
    try:
        r = RawImap(node.ports["imap"], timeout=10)
        try:
            for line in (f"LOGIN {quote(user)} {quote(PASSWORD)}", "SELECT INBOX"):
                _, tagged = r.cmd(line)
                if b" OK" not in tagged[:8]:
                    bad.append(f"imap {line.split()[0]}: {tagged!r}")
                    break
        finally:
            r.close()
    except (OSError, EOFError) as e:
        bad.append(f"imap: {e!r}")
    try:
        p = RawPop3(node.ports["pop3"], timeout=10)
        try:
            for line in (f"USER {user}", f"PASS {PASSWORD}", "QUIT"):
                reply = p.cmd(line)
                if not reply.startswith(b"+OK"):
                    bad.append(f"pop3 {line.split()[0]}: {reply!r}")
                    break
        finally:
            p.close()
    except (OSError, EOFError) as e:
        bad.append(f"pop3: {e!r}")
    return bad


def resumed(nodes, since: float, within: float = RESUME_WITHIN,
            user: str = ALICE) -> tuple[list[str], dict]:
    """Wait (up to `within` seconds after `since`) until every node serves every protocol
    to a fresh session; (problems, seconds since `since` each node took)."""
    took, problems = {}, []
    for n in nodes:
        last = poll(lambda: probe(n, user) == [], timeout=within + since - time.monotonic(),
                    interval=0.25)
        if last:
            took[n.base.name] = round(time.monotonic() - since, 1)
        else:
            problems.append(f"{n.base.name} did not serve again within {within} s of the "
                            f"database being back: {probe(n, user)}")
    return problems, took


def settle_and_check(nodes, traffic: Traffic, user: str = ALICE) -> list[str]:
    """After the load stopped: one more message on each node (250 and readable on every
    node), then every 250'd token exactly once on each node."""
    problems = []
    for n in nodes:
        token, out = traffic.send_one(n)
        if out != "250":
            problems.append(f"{n.base.name}: a message after the outage got {out}")
    accepted = traffic.accepted()
    for n in nodes:
        # The other node follows within its poll interval; SELECT reads the database anyway.
        right = poll(lambda: not exactly_once(n, user, accepted), timeout=10, interval=0.5)
        if not right:
            problems += exactly_once(n, user, accepted)
    return problems


def report(title: str, problems: list[str], nodes, traffic: Traffic | None = None) -> str:
    out = [title, *("  - " + p for p in problems)]
    if traffic:
        out.append("timeline: " + traffic.timeline())
        out.append("client outcomes: " + traffic.summary())
        bad = traffic.bad()
        if bad:
            out.append(f"bad replies ({len(bad)}, first 20):")
            out += ["    " + b for b in bad[:20]]
    out += [error_lines(n) for n in nodes]
    return "\n".join(out)
