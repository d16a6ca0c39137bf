"""Security under load, over real sockets, with every reply matched to the command that caused
it (a payload is followed by QUIT/LOGOUT and everything is read until the server closes):

- SMTP smuggling: no mix of bare LF, bare CR and NUL around a "." line ends the data early, on
  the smtp and submission listeners, with DATA and BDAT, with bare_lf "reject" and "normalize";
  the commands behind a fake end of data are message text, never run, and what is stored has
  only CRLF line ends.
- IMAP before login: literals are small (a user name, a password), chained literals cannot add
  up past a line's worth, absurd sizes are refused, and a flood of such connections leaves the
  server's memory (VmRSS) where it was.
- IMAP FETCH pipelined to a client that stops reading and vanishes: output is rendered only as
  fast as the client takes it, so memory stays bounded; a reading client gets every answer.
- SMTP message memory: many large messages at once share `smtp.max_message_memory`; those that
  find no room get 452 4.3.1 (never anything else), peak memory stays bounded and is returned
  afterwards; a declared SIZE beyond the free budget gets 452 at MAIL FROM.

Memory figures are the server process's VmRSS from /proc/PID/status; they are printed (run
with -s to see them)."""

from __future__ import annotations

import base64
import re
import socket
import struct
import threading
import time

import pytest

from support.clients import RawImap, RawSmtp
from support.server import ALICE, BOB, E2E_STORE, PASSWORD, Server

SENDER = "someone@remote.test"
IMAP_PLAIN = "[imap]\nallow_plaintext_auth = true\n"
MiB_kB = 1024  # VmRSS is in kB: one MiB of it


# --- helpers -------------------------------------------------------------------------------


def vm_rss_kb(pid: int) -> int:
    """The resident set size of process `pid`, in kB (VmRSS of /proc/PID/status)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


class RssSampler:
    """Samples a process's VmRSS every `interval` seconds in a thread; `peak` is the largest."""

    def __init__(self, pid: int, interval: float = 0.1):
        self.pid = pid
        self.interval = interval
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            try:
                self.samples.append(vm_rss_kb(self.pid))
            except (OSError, AssertionError):
                return  # the process is gone: the test will say so
            self._stop.wait(self.interval)

    def __enter__(self) -> "RssSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    @property
    def peak(self) -> int:
        return max(self.samples) if self.samples else 0


def mib(kb: int) -> str:
    return f"{kb / MiB_kB:.0f} MiB"


def read_until_eof(client, timeout: float) -> tuple[bytes, bool]:
    """Every byte a raw client (SMTP RawSmtp or IMAP RawImap) still has or gets until the
    server closes the connection, and whether it ended with a reset rather than a clean
    close; a server that does not close within `timeout` fails the test with what it sent."""
    data = client.buf
    client.buf = b""
    client.sock.settimeout(timeout)
    while True:
        try:
            chunk = client.sock.recv(1 << 16)
        except (socket.timeout, TimeoutError):
            raise AssertionError(f"server did not close the connection; it sent {data!r}")
        except ConnectionResetError:
            return data, True
        if not chunk:
            return data, False
        data += chunk


def replies_until_eof(r: RawSmtp, timeout: float = 30) -> list[tuple[int, list[str]]]:
    """Every SMTP reply the server sends until it closes the connection, as (code, [text
    lines]). All bytes must be whole reply lines."""
    data, _ = read_until_eof(r, timeout)
    assert data == b"" or data.endswith(b"\r\n"), f"partial reply at the end: {data!r}"
    replies, texts = [], []
    for line in data.split(b"\r\n")[:-1]:
        text = line.decode("utf-8", "replace")
        assert re.match(r"^\d{3}[ -]", text + " "), f"not a reply line: {text!r} in {data!r}"
        texts.append(text[4:])
        if len(text) < 4 or text[3] == " ":
            replies.append((int(text[:3]), texts))
            texts = []
    assert not texts, f"unfinished multi-line reply: {data!r}"
    return replies


def codes(replies) -> list[int]:
    return [c for c, _ in replies]


def imap_until_eof(r: RawImap, timeout: float = 15) -> tuple[list[bytes], bool]:
    """Every IMAP response line until the server closes the connection (no literals expected),
    and whether it ended with a reset rather than a clean close."""
    data, reset = read_until_eof(r, timeout)
    lines = data.split(b"\r\n")
    assert lines[-1] == b"", f"partial line at the end: {data!r}"
    return lines[:-1], reset


def imap_login_works(port: int) -> None:
    """A new connection is greeted and LOGIN, SELECT and LOGOUT work, each answered in turn."""
    r = RawImap(port, timeout=30)
    assert r.greeting.startswith(b"* OK"), r.greeting
    untagged, tagged = r.cmd(f'LOGIN "{ALICE}" "{PASSWORD}"', tag="L")
    assert tagged.startswith(b"L OK"), (untagged, tagged)
    untagged, tagged = r.cmd("SELECT INBOX", tag="S")
    assert tagged.startswith(b"S OK"), (untagged, tagged)
    r.send(b"Q LOGOUT\r\n")
    lines, _ = imap_until_eof(r)
    assert len(lines) == 2 and lines[0].startswith(b"* BYE") and lines[1].startswith(b"Q OK"), lines
    r.close()


def crlf_only(raw: bytes) -> bool:
    """Every CR is followed by LF and every LF preceded by CR."""
    return all(
        (b != 0x0D or raw[i + 1:i + 2] == b"\n") and (b != 0x0A or (i > 0 and raw[i - 1] == 0x0D))
        for i, b in enumerate(raw)
    )


# --- 1. SMTP smuggling ---------------------------------------------------------------------

VARIANTS = [
    b"\n.\n", b"\n.\r", b"\r.\n", b"\r.\r", b"\n.\r\n", b"\r.\r\n", b"\r\n.\n", b"\r\n.\r",
    b"\r\n.\r\r\n", b"\r\r\n.\r\r\n", b"\r\n\x00.\r\n", b"\r\n.\x00\r\n",
]

# What an attacker puts behind a fake end of data: a second transaction to another user.
SMUGGLED = (
    b"MAIL FROM:<ceo@evil.test>\r\nRCPT TO:<bob@example.org>\r\nDATA\r\n"
    b"Subject: smuggled\r\n\r\nx\r\n.\r\n"
)


def variant_id(v: bytes) -> str:
    return "".join({13: "CR", 10: "LF", 0: "NUL", 46: "."}[b] for b in v)


@pytest.fixture(scope="module")
def smuggling_server(tmp_path_factory, loopback_dns):
    """One server per bare_lf policy for the whole module (96 cases share two servers; each
    case looks at what changed in the mailboxes), with AUTH allowed without TLS so the
    submission listener is simple to drive."""
    made: dict[str, Server] = {}

    def get(policy: str) -> Server:
        if policy not in made:
            c = Server(
                tmp_path_factory.mktemp(f"smuggle-{policy}"),
                loopback_dns.addr,
                smtp={"bare_lf": policy, "allow_plaintext_auth": True},
                listeners=("smtp", "submission"),
            )
            c.add_user(ALICE)
            c.add_user(BOB)
            made[policy] = c.start()
        return made[policy]

    yield get
    for c in made.values():
        if c.running:
            c.stop(expect=0)


def open_transaction(srv: Server, listener: str) -> RawSmtp:
    """A session with MAIL and RCPT (to ALICE) done: from a remote sender on smtp, as ALICE
    after AUTH PLAIN on submission. Each command is sent alone and its one reply read."""
    r = srv.raw_smtp(listener, timeout=30)
    r.expect(220)
    code, lines = r.cmd("EHLO client.test")
    assert code == 250 and "BINARYMIME" not in lines, lines
    sender = SENDER
    if listener == "submission":
        token = base64.b64encode(f"\0{ALICE}\0{PASSWORD}".encode()).decode()
        code, text = r.cmd(f"AUTH PLAIN {token}")
        assert code == 235, (code, text)
        sender = ALICE
    code, text = r.cmd(f"MAIL FROM:<{sender}>")
    assert code == 250, (code, text)
    code, text = r.cmd(f"RCPT TO:<{ALICE}>")
    assert code == 250, (code, text)
    return r


@pytest.mark.parametrize("variant", VARIANTS, ids=variant_id)
@pytest.mark.parametrize("command", ["DATA", "BDAT"])
@pytest.mark.parametrize("policy", ["reject", "normalize"])
@pytest.mark.parametrize("listener", ["smtp", "submission"])
def test_smuggling_variants_never_split_a_message(smuggling_server, listener, policy, command,
                                                  variant):
    srv = smuggling_server(policy)
    before = set(srv.uids(ALICE))
    body = b"Subject: a\r\n\r\nhi" + variant + SMUGGLED
    r = open_transaction(srv, listener)
    if command == "DATA":
        code, text = r.cmd("DATA")
        assert code == 354, (code, text)
        r.send(body + b"QUIT\r\n")  # one write: data, the smuggled commands, QUIT
    else:
        r.send(b"BDAT %d LAST\r\n" % len(body) + body + b"QUIT\r\n")
    replies = replies_until_eof(r)
    r.close()

    refused = policy == "reject" or b"\x00" in variant
    # Exactly two replies: the end of the (one) message, then QUIT's. No reply to the
    # smuggled MAIL/RCPT/DATA: they were never commands.
    assert codes(replies) == [550 if refused else 250, 221], replies
    if refused:
        assert replies[0][1][-1].startswith("5.6.0"), replies
    assert srv.mailboxes(BOB)["INBOX"] == 0, "the smuggled message exists"
    new = sorted(set(srv.uids(ALICE)) - before)
    if refused:
        assert new == [], "a refused message was stored"
        return
    assert len(new) == 1, new
    stored = srv.cat(ALICE, "INBOX", new[0])
    # The smuggled commands are text of the one message...
    assert b"MAIL FROM:<ceo@evil.test>" in stored, stored
    # ...and every line of it ends in CRLF, so no next hop can find another end in it.
    assert crlf_only(stored), stored


def test_refused_data_does_not_run_the_rest(server):
    """The audit's reproduction on port 25: a message with a bare LF, refused at its real end;
    nothing behind the fake end "<LF>.<CRLF>" runs and nothing is delivered."""
    r = server.raw_smtp("smtp", timeout=30)
    r.expect(220)
    r.send(f"EHLO client.test\r\nMAIL FROM:<s@o.test>\r\nRCPT TO:<{ALICE}>\r\nDATA\r\n")
    assert [r.reply()[0] for _ in range(4)] == [250, 250, 250, 354]
    r.send(b"hi\n.\r\n" + SMUGGLED + b"QUIT\r\n")
    replies = replies_until_eof(r)
    r.close()
    assert codes(replies) == [550, 221], replies
    assert replies[0][1][-1].startswith("5.6.0"), replies
    assert server.mailboxes(ALICE)["INBOX"] == 0
    assert server.mailboxes(BOB)["INBOX"] == 0


# --- 2. IMAP literals before login ----------------------------------------------------------


def imap_corvus(server_with) -> Server:
    """A server with an IMAP listener that allows LOGIN without TLS, and ALICE and BOB."""
    return server_with(listeners=("smtp", "imap"), extra=IMAP_PLAIN)


def test_prelogin_literals_are_small_and_bounded(server_with):
    srv = imap_corvus(server_with)
    port = srv.ports["imap"]

    # A non-synchronizing 64 MiB literal: the bytes would already be coming, so BYE and close.
    r = RawImap(port)
    r.send(b"a LOGIN {67108864+}\r\n")
    lines, _ = imap_until_eof(r)
    assert len(lines) == 1 and lines[0].startswith(b"* BYE"), lines
    r.close()

    # A synchronizing one: refused with a tagged NO [TOOBIG]/BAD, no "+" continuation; the
    # session goes on.
    r = RawImap(port)
    r.send(b"b LOGIN {67108864}\r\n")
    resp = r.line()
    assert resp.startswith(b"b NO [TOOBIG]") or resp.startswith(b"b BAD"), resp
    untagged, tagged = r.cmd("NOOP", tag="n")
    assert untagged == [] and tagged.startswith(b"n OK"), (untagged, tagged)

    # Literals of a normal size work: user name and password as literals (a 100-byte password
    # for a second account), each announced and answered with "+".
    carol = "carol@example.org"
    srv.add_user(carol, "p" * 100)
    for user, pw, tag in ((ALICE, PASSWORD, b"c"), (carol, "p" * 100, b"d")):
        r2 = RawImap(port)
        u, p = user.encode(), pw.encode()
        r2.send(tag + b" LOGIN {%d}\r\n" % len(u))
        assert r2.line().startswith(b"+"), user
        r2.send(u + b" {%d}\r\n" % len(p))
        assert r2.line().startswith(b"+"), user
        r2.send(p + b"\r\n")
        untagged, tagged = r2.read_until(tag.decode())
        assert tagged.startswith(tag + b" OK"), (user, untagged, tagged)
        assert all(l.startswith(b"* ") for l in untagged), untagged
        r2.close()

    # Chained small synchronizing literals: refused before their total reaches 64 KiB.
    r.send(b"e LOGIN {4000}\r\n")
    accepted = 0
    for _ in range(40):
        resp = r.line()
        if not resp.startswith(b"+"):
            break
        accepted += 1
        r.send(b"x" * 4000 + b" {4000}\r\n")
    else:
        raise AssertionError("40 chained 4000-byte literals accepted before login")
    assert resp.startswith(b"e NO [TOOBIG]") or resp.startswith(b"e BAD"), resp
    assert accepted * 4000 <= 64 * 1024, accepted
    print(f"chained 4000-byte literals accepted before login: {accepted}")
    untagged, tagged = r.cmd("NOOP", tag="n2")
    assert untagged == [] and tagged.startswith(b"n2 OK"), (untagged, tagged)

    # The same chained non-synchronizing, all in one write: never answered as a command; the
    # server says BYE and closes.
    r3 = RawImap(port)
    chain = b"f LOGIN {4000+}\r\n" + b"x" * 4000 + b"".join(
        b" {4000+}\r\n" + b"x" * 4000 for _ in range(19))
    try:
        r3.send(chain + b"\r\n")
    except OSError:
        pass  # closed while we were still sending: fine
    lines, reset = imap_until_eof(r3)
    assert all(l.startswith(b"* BYE") for l in lines), lines
    assert lines or reset, "closed without a BYE"
    r3.close()

    # Sizes past u64: a tagged NO/BAD (or BYE and close), and the server keeps serving.
    for tag, size in ((b"g", b"18446744073709551615"), (b"h", b"99999999999999999999")):
        r4 = RawImap(port)
        r4.send(tag + b" LOGIN {" + size + b"}\r\n")
        resp = r4.line()
        assert not resp.startswith(b"+"), (size, resp)
        if resp.startswith(b"* BYE"):
            lines, _ = imap_until_eof(r4)
            assert lines == [], (size, lines)
        else:
            assert resp.startswith(tag + b" NO") or resp.startswith(tag + b" BAD"), (size, resp)
            untagged, tagged = r4.cmd("NOOP", tag="n3")
            assert untagged == [] and tagged.startswith(b"n3 OK"), (untagged, tagged)
        r4.close()
        imap_login_works(port)
    r.close()


def push_prelogin(port: int, style: str, total: int, out: list, i: int):
    """One connection trying to push `total` bytes of literal data before login: one big
    non-synchronizing literal ("big") or many chained {4000+} ones ("chained"). Records how
    many bytes the client got out, whether the server closed the connection and what it said."""
    s = socket.create_connection(("127.0.0.1", port), timeout=20)
    try:
        greeting = s.recv(4096)
        if style == "big":
            pieces = [b"f%d LOGIN {%d+}\r\n" % (i, total)] + [b"x" * 65536] * (total // 65536)
        else:
            first = b"f%d LOGIN {4000+}\r\n" % i + b"x" * 4000
            pieces = [first] + [b" {4000+}\r\n" + b"x" * 4000] * (total // 4010)
        sent = 0
        try:
            for p in pieces:
                s.sendall(p)
                sent += len(p)
        except OSError:
            pass
        data, closed = b"", False
        s.settimeout(10)
        try:
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    closed = True
                    break
                data += chunk
        except (ConnectionResetError, BrokenPipeError):
            closed = True
        except (socket.timeout, TimeoutError):
            pass
        out[i] = (style, greeting, sent, closed, data)
    finally:
        s.close()


def test_prelogin_literal_flood_keeps_memory_bounded(server_with):
    srv = imap_corvus(server_with)
    port = srv.ports["imap"]
    imap_login_works(port)  # warm up: the first session's allocations are not the flood's
    base = vm_rss_kb(srv.proc.pid)
    total = 4 * 1024 * 1024
    results = []
    with RssSampler(srv.proc.pid) as rss:
        for style in ("big", "chained"):
            out = [None] * 20
            threads = [threading.Thread(target=push_prelogin, args=(port, style, total, out, i))
                       for i in range(20)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)
            results += out
        time.sleep(1)
    growth = rss.peak - base
    print(f"pre-login literal flood: baseline {mib(base)}, peak {mib(rss.peak)}, "
          f"growth {mib(growth)}; bytes each client got out: "
          f"{min(r[2] for r in results if r)}..{max(r[2] for r in results if r)}")
    for r in results:
        assert r is not None, "a flood connection did not finish"
        style, greeting, sent, closed, data = r
        assert greeting.startswith(b"* OK"), greeting
        # Refused, not buffered: the server closed the connection, never answered the command
        # with a tagged response, and said at most BYE.
        assert closed, (style, sent, data)
        assert all(l.startswith(b"* BYE") for l in data.split(b"\r\n") if l), (style, data)
    assert growth < 200 * MiB_kB, f"VmRSS grew by {mib(growth)}"
    imap_login_works(port)


# --- 3. FETCH pipelined to a client that does not read ---------------------------------------


def megabyte_message(n: int) -> bytes:
    head = (f"From: a@remote.test\r\nTo: {ALICE}\r\nSubject: big {n}\r\n"
            f"Message-ID: <big{n}.{time.time_ns()}@remote.test>\r\n\r\n").encode()
    line = (b"%d" % n) * 2 + b"abcdefghijklmnopqrstuvwxyz" * 2 + b"\r\n"
    return head + line * (1_000_000 // len(line))


def fetch_body(untagged: list[bytes], seq: int) -> bytes:
    for l in untagged:
        m = re.match(rb"\* %d FETCH \([^\r\n]*?BODY\[\] \{(\d+)\}\r\n" % seq, l)
        if m:
            return l[m.end():m.end() + int(m.group(1))]
    raise AssertionError(f"no FETCH {seq} BODY[] in {[l[:80] for l in untagged]}")


def test_fetch_pipelining_to_a_vanished_client_is_bounded(server_with):
    srv = imap_corvus(server_with)
    port = srv.ports["imap"]
    msgs = [megabyte_message(i) for i in range(1, 6)]
    r = RawImap(port, timeout=60)
    r.ok(f'LOGIN "{ALICE}" "{PASSWORD}"')
    for m in msgs:
        untagged, tagged = r.cmd(b"APPEND INBOX {%d+}\r\n" % len(m) + m)
        assert b"OK [APPENDUID" in tagged, (untagged, tagged)
    assert b"* 5 EXISTS" in r.ok("SELECT INBOX")

    # 300 FETCHes of 5 MB each (1.5 GB of answers) in one burst, never read; then a reset.
    base = vm_rss_kb(srv.proc.pid)
    with RssSampler(srv.proc.pid) as rss:
        r.send(b"".join(b"t%d FETCH 1:* BODY.PEEK[]\r\n" % i for i in range(300)))
        time.sleep(1)  # the server fills the socket buffers and has to wait
        r.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        r.sock.close()
        time.sleep(5)
    growth = rss.peak - base
    after = vm_rss_kb(srv.proc.pid)
    print(f"FETCH burst to a vanished client: baseline {mib(base)}, peak {mib(rss.peak)}, "
          f"growth {mib(growth)}, 5 s after the reset {mib(after)}")
    assert growth < 300 * MiB_kB, f"VmRSS grew by {mib(growth)}"

    # A new session is served normally, and the messages are intact.
    imap_login_works(port)
    r = RawImap(port, timeout=60)
    r.ok(f'LOGIN "{ALICE}" "{PASSWORD}"')
    r.ok("SELECT INBOX")
    assert fetch_body(r.ok("FETCH 3 BODY.PEEK[]"), 3) == msgs[2]

    # Positive control: 20 pipelined FETCH 1:* read by the client: 20 tagged OKs in order,
    # each after its own five FETCH responses.
    r.send(b"".join(b"f%d FETCH 1:* BODY.PEEK[]\r\n" % i for i in range(20)))
    for i in range(20):
        untagged, tagged = r.read_until("f%d" % i)
        assert tagged.startswith(b"f%d OK" % i), tagged
        assert all(l.startswith(b"* ") for l in untagged), [l[:40] for l in untagged]
        assert [fetch_body(untagged, n) for n in range(1, 6)] == msgs, i
        assert len(untagged) == 5, [l[:40] for l in untagged]
    r.send(b"z LOGOUT\r\n")
    lines, _ = imap_until_eof(r)
    assert len(lines) == 2 and lines[0].startswith(b"* BYE") and lines[1].startswith(b"z OK"), lines
    r.close()


# --- 4. SMTP message memory -----------------------------------------------------------------

CHUNK = (b"y" * 1022 + b"\r\n") * 1024  # 1 MiB of 1024-byte lines


def big_session(srv: Server, i: int, chunks: int, barrier: threading.Barrier, out: list):
    """One SMTP session sending a `chunks` MiB message to ALICE in 1 MiB writes, starting when
    every session has its 354; records the replies to the end of data and to QUIT."""
    try:
        r = srv.raw_smtp("smtp", timeout=120)
        r.expect(220)
        assert r.cmd("EHLO client.test")[0] == 250
        assert r.cmd(f"MAIL FROM:<big{i}@remote.test>")[0] == 250
        assert r.cmd(f"RCPT TO:<{ALICE}>")[0] == 250
        assert r.cmd("DATA")[0] == 354
    except Exception as e:  # noqa: BLE001 - reported by the test
        out[i] = ("setup failed", repr(e))
        barrier.abort()
        return
    try:
        barrier.wait(60)
        r.send(f"From: big{i}@remote.test\r\nSubject: big {i}\r\n\r\n".encode())
        for _ in range(chunks):
            r.send(CHUNK)
            time.sleep(0.05)  # leave room for the others: the sessions overlap
        r.send(b".\r\nQUIT\r\n")
        out[i] = replies_until_eof(r, timeout=120)
    except Exception as e:  # noqa: BLE001
        out[i] = ("failed", repr(e))
    finally:
        r.close()


def test_many_large_data_sessions_are_bounded(server_with):
    srv = server_with(smtp={"max_message_size": 60_000_000,
                            "max_message_memory": 256 * 1024 * 1024})
    # Warm up with one small message, so the baseline has the first session's allocations.
    s = srv.smtp("smtp")
    s.sendmail(SENDER, [ALICE], b"Subject: warm-up\r\n\r\nx\r\n")
    s.quit()
    base = vm_rss_kb(srv.proc.pid)
    n, chunks = 30, 40
    out: list = [None] * n
    barrier = threading.Barrier(n)
    t0 = time.monotonic()
    with RssSampler(srv.proc.pid) as rss:
        threads = [threading.Thread(target=big_session, args=(srv, i, chunks, barrier, out))
                   for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(180)
    elapsed = time.monotonic() - t0
    growth = rss.peak - base
    # What the sessions held goes back once the messages are handled. Not all of it leaves
    # the process: sled's page cache keeps the accepted messages' blobs (4-5 x 42 MiB here,
    # up to its 1 GiB capacity), and mimalloc purges freed pages of an idle process lazily
    # (measured: 170-500 MiB stay). The bound is what matters: it does not grow with the
    # number of sessions (before the budget, 50 such sessions left about 2 GiB).
    settled = vm_rss_kb(srv.proc.pid)
    deadline = time.monotonic() + 10
    # On PostgreSQL the database client holds a second copy of each message it is sending
    # (the encoded bytea parameter) beside the budgeted one, so up to twice the budget is in
    # flight, and more of it stays with the allocator afterwards; still bounded by the budget.
    settle_bound = 900 if E2E_STORE == "postgres" else 600
    while settled - base >= settle_bound * MiB_kB and time.monotonic() < deadline:
        time.sleep(0.5)
        settled = vm_rss_kb(srv.proc.pid)
    ends = [r[0][0] if isinstance(r, list) and r else None for r in out]
    print(f"{n} x {chunks} MiB DATA sessions in {elapsed:.1f} s: 250 x {ends.count(250)}, "
          f"452 x {ends.count(452)}; baseline {mib(base)}, peak {mib(rss.peak)}, "
          f"growth {mib(growth)}, afterwards {mib(settled)}")
    for i, r in enumerate(out):
        assert isinstance(r, list), (i, r)
        assert codes(r) in ([250, 221], [452, 221]), (i, r)
        if r[0][0] == 452:
            assert r[0][1][-1].startswith("4.3.1"), (i, r)
    accepted = ends.count(250)
    assert accepted >= 1 and ends.count(452) >= 1, ends
    assert growth < 1200 * MiB_kB, f"VmRSS grew by {mib(growth)}"
    assert settled - base < settle_bound * MiB_kB, (
        f"VmRSS still {mib(settled - base)} over the baseline")
    assert srv.mailboxes(ALICE)["INBOX"] == 1 + accepted  # the warm-up and the 250s
    # And a small message is accepted afterwards.
    r = srv.raw_smtp("smtp", timeout=30)
    r.expect(220)
    r.send(f"EHLO client.test\r\nMAIL FROM:<{SENDER}>\r\nRCPT TO:<{ALICE}>\r\nDATA\r\n")
    assert [r.reply()[0] for _ in range(4)] == [250, 250, 250, 354]
    r.send(b"Subject: small\r\n\r\nafter the flood\r\n.\r\nQUIT\r\n")
    assert codes(replies_until_eof(r)) == [250, 221]
    r.close()
    assert srv.mailboxes(ALICE)["INBOX"] == 2 + accepted


def test_size_declared_beyond_free_memory_gets_452(server_with):
    srv = server_with(smtp={"max_message_size": 50_000_000,
                            "max_message_memory": 8 * 1024 * 1024})
    r = srv.raw_smtp("smtp", timeout=30)
    r.expect(220)
    code, lines = r.cmd("EHLO client.test")
    assert code == 250 and "SIZE 50000000" in lines, lines
    # Within max_message_size but beyond the memory budget: try later; a small one is fine.
    r.send("MAIL FROM:<x@remote.test> SIZE=20000000\r\n"
           "MAIL FROM:<x@remote.test> SIZE=1000\r\nQUIT\r\n")
    replies = replies_until_eof(r)
    r.close()
    assert codes(replies) == [452, 250, 221], replies
    assert replies[0][1][-1].startswith("4.3.1"), replies
