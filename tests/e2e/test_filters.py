"""End-to-end tests of the filter hook engines (issue 24) against real filters: rspamd (scan at
end of DATA, spam headers, Junk, learning from IMAP moves into and out of Junk), the pymilter
test milter (every milter action, the macros Corvus sends), OpenDKIM as a signing milter, and
milters that hang, answer garbage, close, or answer one byte per second.

The filters run as processes of the test run, on free loopback ports, with their files in
temporary directories (support/filters.py: rspamd with a redis of its own and no network
access, the test milter and OpenDKIM under /usr/bin/python3 resp. their own config). One
rspamd and one test milter serve a whole module; each Corvus server comes from conftest or,
for the milter action tests, is shared by the module (every test uses its own Subject).

Clients are smtplib and imaplib; each reply is checked as the answer to its own command.
The `test_fixture_*` tests check the filters without Corvus (the MTA side of the milter
protocol is support/filters.py's MilterClient), so a broken environment shows as such.
"""

from __future__ import annotations

import email
import email.policy
import random
import re
import smtplib
import time
import uuid

import pytest

from support.filters import (GTUBE, BadMilter, Milter, MilterClient, OpenDkim, Rspamd, missing_opendkim, redis_cmd,
                             missing_pymilter, missing_rspamd)
from support.net import free_port
from support.server import Server, stop_all, with_preset
from support.wait import poll

ALICE, BOB, CAROL = "alice@example.org", "bob@example.org", "carol@example.org"
BLOCKED = "blocked@example.org"  # an account; the test milter refuses it at RCPT
SENDER = "sender@remote.test"

# Corvus servers of these tests: SMTP (port 25 role), submission, IMAP; one local domain.
FILTERS = {"listeners": ("smtp", "submission", "imap"), "hostname": "mx.example.org",
           "domains": ("example.org",), "shutdown_timeout": "5s", "client_timeout": 30, "helo": "client.test",
           "smtp": {"max_errors": 100}, "imap": {"allow_plaintext_auth": True}}

RSPAMD_PASSWORD = "learn-secret"

_no_rspamd = missing_rspamd()
_no_pymilter = missing_pymilter()
_no_opendkim = missing_opendkim() or _no_pymilter
needs_rspamd = pytest.mark.skipif(_no_rspamd is not None, reason=f"rspamd tests: {_no_rspamd}")
needs_pymilter = pytest.mark.skipif(_no_pymilter is not None, reason=f"milter tests: {_no_pymilter}")
needs_opendkim = pytest.mark.skipif(_no_opendkim is not None, reason=f"OpenDKIM tests: {_no_opendkim}")


# ---------------------------------------------------------------------------------------------
# Messages and clients

def words(n: int = 24) -> str:
    """A sentence of `n` made-up lower-case words: a body rspamd's Bayes can learn (>= 11
    tokens) and has never seen (so it never refuses to learn it as "already in class"), with
    no milter keyword in it."""
    letters = "abcdefghijklmnopqrstuvwxyz"
    return " ".join("".join(random.choices(letters, k=random.randint(4, 9))) for _ in range(n)) + "."


def tag() -> str:
    return uuid.uuid4().hex[:10]


def msg(subject: str, body: str | None = None, frm: str = f"Sender <{SENDER}>", to: str = ALICE,
        extra: str = "") -> bytes:
    """A message with CRLF lines, a current Date and a unique Message-ID."""
    body = body if body is not None else words() + "\r\n"
    date = email.utils.formatdate(localtime=False)
    return (f"From: {frm}\r\nTo: {to}\r\nSubject: {subject}\r\nDate: {date}\r\n"
            f"Message-ID: <{uuid.uuid4().hex}@remote.test>\r\n{extra}"
            f"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{body}").encode()


def send(s: smtplib.SMTP, sender: str, rcpts: list[str], message: bytes) -> tuple[int, bytes]:
    """One transaction, every reply checked where it comes: MAIL and each RCPT must be
    accepted; returns the reply to the end of DATA."""
    code, text = s.mail(sender)
    assert code == 250, ("MAIL", code, text)
    for r in rcpts:
        code, text = s.rcpt(r)
        assert code == 250, ("RCPT", r, code, text)
    return s.data(message)


def transaction(srv: Server, listener: str, sender: str, rcpts: list[str], message: bytes,
                timeout: float = 60) -> tuple[str, int, bytes]:
    """A whole session on a listener, stopping at the first refusal: (stage, code, text) of
    that reply, or ("data", 250, text) when the message was accepted. Stages: connect, ehlo,
    mail, rcpt, data."""
    try:
        s = srv.smtp(listener, timeout=timeout)
    except smtplib.SMTPConnectError as e:
        return "connect", e.smtp_code, e.smtp_error
    try:
        code, text = s.ehlo("client.test")
        if code != 250:
            return "ehlo", code, text
        code, text = s.mail(sender)
        if code != 250:
            return "mail", code, text
        for r in rcpts:
            code, text = s.rcpt(r)
            if code != 250:
                return "rcpt", code, text
        code, text = s.data(message)
        return "data", code, text
    finally:
        try:
            s.quit()
        except (smtplib.SMTPException, OSError):
            pass


def headers(raw: bytes) -> email.message.Message:
    return email.message_from_bytes(raw, policy=email.policy.compat32)


def field(raw: bytes, name: str) -> list[str]:
    """Every value of a header field, unfolded."""
    return [re.sub(r"\r?\n[ \t]+", " ", v) for v in headers(raw).get_all(name, [])]


def header_names(raw: bytes) -> list[str]:
    return [k.lower() for k in headers(raw).keys()]


def with_marker(srv: Server, user: str, marker: str, folder: str = "INBOX") -> list[bytes]:
    """The messages of a folder (seen over IMAP) that contain `marker`."""
    return [m for m in srv.messages(user, folder) if marker.encode() in m]


# ---------------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="module")
def rspamd():
    """One rspamd (+ redis) for the module; its controller wants RSPAMD_PASSWORD."""
    if _no_rspamd:
        pytest.skip(_no_rspamd)
    r = Rspamd(password=RSPAMD_PASSWORD).start()
    yield r
    r.cleanup()


@pytest.fixture(scope="module")
def test_milter():
    if _no_pymilter:
        pytest.skip(_no_pymilter)
    m = Milter().start()
    yield m
    m.cleanup()


@pytest.fixture(scope="module")
def opendkim():
    if _no_opendkim:
        pytest.skip(_no_opendkim)
    o = OpenDkim().start()
    yield o
    o.cleanup()


def rspamd_hook(r: Rspamd, on_error: str | None = None, **config) -> dict:
    cfg = {"junk_score": 6.0, "reject_score": 15.0, "learn": True, "password": r.password or "",
           "controller": r.controller_url, "listeners": ["smtp"]}
    cfg.update(config)
    hook = {"rspamd": r.url, "config": cfg}
    if on_error:
        hook["on_error"] = on_error
    return hook


def milter_hook(address: str, on_error: str | None = None, **config) -> dict:
    cfg = {"connect_timeout": "5s", "command_timeout": "5s", "content_timeout": "10s",
           "listeners": ["smtp", "submission", "submissions"]}
    cfg.update(config)
    hook = {"milter": address, "config": cfg}
    if on_error:
        hook["on_error"] = on_error
    return hook


@pytest.fixture
def filter_server(corvus_factory):
    """filter_server(hooks, users=(alice, bob, carol), **Server kwargs): a started server
    with the FILTERS settings and those accounts."""

    def make(hooks: list[dict], users=(ALICE, BOB, CAROL), name: str | None = None, **kw) -> Server:
        s = corvus_factory(name=name, **with_preset(FILTERS, hooks=hooks, **kw))
        for u in users:
            s.add_user(u)
        return s.start()

    return make


# ---------------------------------------------------------------------------------------------
# The filters on their own (no Corvus)


@needs_rspamd
def test_fixture_rspamd_scans_and_learns_offline(rspamd):
    gtube = rspamd.check(msg("hi", "This is the GTUBE test\r\n" + GTUBE + "\r\n"), IP="127.0.0.1")
    assert gtube["action"] == "reject" and gtube["messages"].get("smtp_message") == "Gtube pattern", gtube
    clean = rspamd.check(msg("lunch corvus-mark"), IP="127.0.0.1", From=SENDER, Rcpt=ALICE)
    assert clean["action"] == "no action" and "CORVUS_MARK" in clean["symbols"], clean
    junk = rspamd.check(msg("corvus-junk"), IP="127.0.0.1")
    assert junk["action"] == "add header" and junk["score"] >= 7, junk
    spam, ham = rspamd.learned()
    status, reply = rspamd.learn("spam", msg("learn me"))
    assert status == 401, (status, reply)  # the controller wants its password
    status, reply = rspamd.learn("spam", msg("learn me"), RSPAMD_PASSWORD)
    assert status == 200 and reply.get("success"), (status, reply)
    assert rspamd.learned() == (spam + 1, ham)


@needs_pymilter
def test_fixture_test_milter_actions(test_milter):
    c = MilterClient(test_milter.port)
    try:
        mods, final = c.send_message(SENDER, [ALICE, BOB], msg("ADDRCPT DELRCPT INSHEADER x"),
                                     macros={"C": {"j": "mx.example.org"}, "E": {"i": "Q1"}})
    finally:
        c.close()
    assert final[0] == b"a", final
    assert {code for code, _ in mods} == {b"h", b"m", b"+", b"-", b"i"}, mods


@needs_opendkim
def test_fixture_opendkim_signs_and_dkimpy_verifies(opendkim):
    m = msg("signed", frm=f"Alice <{ALICE}>", to=BOB)
    c = MilterClient(opendkim.port)
    try:
        mods, final = c.send_message(ALICE, [BOB], m, macros={"E": {"i": "Q1"}})
    finally:
        c.close()
    [(code, data)] = mods
    assert code == b"i" and final[0] == b"a", (mods, final)
    name, value, _ = data[4:].split(b"\0")
    signed = name + b": " + value.replace(b"\n", b"\r\n") + b"\r\n" + m
    assert opendkim.verify(signed)
    assert not opendkim.verify(signed.replace(b"\r\n\r\n", b"\r\n\r\nchanged ", 1))


# ---------------------------------------------------------------------------------------------
# rspamd: scanning


@needs_rspamd
def test_rspamd_gtube_is_rejected_at_end_of_data(rspamd, filter_server):
    srv = filter_server([rspamd_hook(rspamd)])
    with srv.smtp() as s:
        code, text = send(s, SENDER, [ALICE], msg("gtube", "This is the GTUBE test\r\n" + GTUBE + "\r\n"))
        assert 500 <= code < 600, (code, text, rspamd.scans(1))
        assert b"Gtube pattern" in text or b"Spam message rejected" in text, text
        # The session goes on: a clean message next is accepted.
        code, text = send(s, SENDER, [ALICE], msg("after gtube"))
        assert code == 250, text
    assert [m for m in srv.messages(ALICE) if b"GTUBE-STANDARD" in m] == []
    assert len(with_marker(srv, ALICE, "after gtube")) == 1


@needs_rspamd
def test_rspamd_clean_message_gets_spam_headers_and_forged_ones_go(rspamd, filter_server):
    srv = filter_server([rspamd_hook(rspamd)])
    forged = "X-Spam-Status: No, score=-100.0 required=99.0 tests=FORGED\r\nX-Spam-Score: -100\r\nX-Spam: no\r\n"
    with srv.smtp() as s:
        code, text = send(s, SENDER, [ALICE], msg("lunch corvus-mark", extra=forged))
        assert code == 250, text
    [m] = with_marker(srv, ALICE, "lunch corvus-mark")
    status = field(m, "X-Spam-Status")
    assert len(status) == 1, status
    got = re.fullmatch(r"No, score=(-?\d+(?:\.\d+)?) required=(\d+(?:\.\d+)?) tests=(.*)", status[0])
    assert got, status
    assert "CORVUS_MARK" in got.group(3) and "FORGED" not in got.group(3), status
    [score] = field(m, "X-Spam-Score")
    assert float(score) == pytest.approx(float(got.group(1)), abs=0.01), (score, status)
    assert float(score) < 6.0 and float(score) > -100, score
    assert field(m, "X-Spam") == [], m[:600]
    assert b"FORGED" not in m and b"-100" not in m
    assert with_marker(srv, ALICE, "lunch corvus-mark", "Junk") == []


@needs_rspamd
def test_rspamd_junk_score_files_into_junk(rspamd, filter_server):
    srv = filter_server([rspamd_hook(rspamd, junk_score=6.0)])
    marker = tag()
    with srv.smtp() as s:
        code, text = send(s, SENDER, [ALICE, BOB], msg(f"corvus-junk offer {marker}"))
        assert code == 250, text
    for user in (ALICE, BOB):
        assert with_marker(srv, user, marker) == [], user
        [m] = with_marker(srv, user, marker, "Junk")
        [status] = field(m, "X-Spam-Status")
        assert status.startswith("Yes, score=") and "CORVUS_JUNK" in status, status
        assert float(field(m, "X-Spam-Score")[0]) >= 6.0


@needs_rspamd
def test_rspamd_soft_reject_tempfails_and_greylist_alone_passes(rspamd, filter_server):
    """`soft reject` (what rspamd's greylist module answers when it defers) → 451 with
    rspamd's text; the `greylist` action on its own is accepted, as rspamd's milter does."""
    srv = filter_server([rspamd_hook(rspamd)])
    with srv.smtp() as s:
        code, text = send(s, SENDER, [ALICE], msg(f"corvus-softreject {tag()}"))
        assert code == 451 and text.startswith(b"4.7.1 ") and b"corvus test soft reject" in text, (code, text)
        marker = tag()
        code, text = send(s, SENDER, [ALICE], msg(f"corvus-greylist {marker}"))
        assert code == 250, (code, text)
    [m] = with_marker(srv, ALICE, marker)
    assert field(m, "X-Spam-Status")[0].startswith("No, score="), m[:800]


@needs_rspamd
def test_rspamd_add_header_and_rewrite_subject(rspamd, filter_server):
    """rspamd's test patterns: GTUBE starting with Y gives `add header` (→ `X-Spam: Yes`),
    with Z `rewrite subject` (→ the Subject rspamd made)."""
    srv = filter_server([rspamd_hook(rspamd, junk_score=1000.0, reject_score=1000.0)])
    add, rewrite = tag(), tag()
    with srv.smtp() as s:
        code, text = send(s, SENDER, [ALICE], msg(f"add {add}", "Test\r\nY" + GTUBE[1:] + "\r\n"))
        assert code == 250, (code, text)
        code, text = send(s, SENDER, [ALICE], msg(f"rewrite {rewrite}", "Test\r\nZ" + GTUBE[1:] + "\r\n"))
        assert code == 250, (code, text)
    [m] = with_marker(srv, ALICE, add)
    assert field(m, "X-Spam") == ["Yes"], m[:800]
    assert field(m, "X-Spam-Status")[0].startswith("Yes, score="), m[:800]
    [m] = with_marker(srv, ALICE, rewrite)
    [subject] = field(m, "Subject")
    assert subject != f"rewrite {rewrite}" and subject.endswith(f"rewrite {rewrite}"), subject
    assert "SPAM" in subject, subject


@needs_rspamd
def test_rspamd_skipped_for_a_sender_a_script_before_it_accepts(rspamd, filter_server, tmp_path):
    script = tmp_path / "allow.rhai"
    script.write_text('fn on_data(ctx) { if ctx.mail_from == "friend@x.test" { accept() } else { next() } }\n')
    srv = filter_server([{"script": script}, rspamd_hook(rspamd)])
    gtube = "This is the GTUBE test\r\n" + GTUBE + "\r\n"
    with srv.smtp() as s:
        code, text = send(s, "friend@x.test", [ALICE], msg("from a friend", gtube, frm="friend@x.test"))
        assert code == 250, text
        code, text = send(s, "stranger@x.test", [ALICE], msg("from a stranger", gtube, frm="stranger@x.test"))
        assert 500 <= code < 600, (code, text, rspamd.scans(1))
    [m] = with_marker(srv, ALICE, "from a friend")
    assert field(m, "X-Spam-Status") == [], m[:800]  # rspamd did not run
    assert with_marker(srv, ALICE, "from a stranger") == []


SEES_SPAM = """
fn on_data(ctx) {
    if type_of(ctx.spam) == "()" {
        ctx.add_header("X-Seen-Spam", "none");
    } else {
        ctx.add_header("X-Seen-Score", `${ctx.spam.score}`);
        ctx.add_header("X-Seen-Required", `${ctx.spam.required}`);
        ctx.add_header("X-Seen-Action", ctx.spam.action);
        let names = "";
        for s in ctx.spam.symbols { names += s + " "; }
        ctx.add_header("X-Seen-Symbols", names);
    }
}
"""


@needs_rspamd
def test_script_after_rspamd_sees_the_result(rspamd, filter_server, tmp_path):
    script = tmp_path / "sees.rhai"
    script.write_text(SEES_SPAM)
    srv = filter_server([rspamd_hook(rspamd, listeners=["smtp"]), {"script": script}])
    with srv.smtp() as s:
        code, text = send(s, SENDER, [ALICE], msg("scanned corvus-mark"))
        assert code == 250, text
    # On submission rspamd does not run (listeners = ["smtp"]): ctx.spam is ().
    with srv.submit_session(ALICE) as s:
        code, text = send(s, ALICE, [BOB], msg("not scanned", frm=ALICE, to=BOB))
        assert code == 250, text
    [m] = with_marker(srv, ALICE, "scanned corvus-mark")
    assert float(field(m, "X-Seen-Score")[0]) == pytest.approx(float(field(m, "X-Spam-Score")[0]), abs=0.01)
    assert float(field(m, "X-Seen-Required")[0]) > 0
    assert field(m, "X-Seen-Action") == ["no action"], m[:1000]
    assert "CORVUS_MARK" in field(m, "X-Seen-Symbols")[0].split(), m[:1000]
    [n] = with_marker(srv, BOB, "not scanned")
    assert field(n, "X-Seen-Spam") == ["none"] and field(n, "X-Spam-Status") == [], n[:1000]


@needs_rspamd
def test_rspamd_unreachable_continue_delivers_and_default_tempfails(filter_server):
    r = Rspamd().start()  # our own, to stop it
    try:
        cont = filter_server([rspamd_hook(r, on_error="continue")], name="continue")
        default = filter_server([rspamd_hook(r)], name="default")
        for srv in (cont, default):
            with srv.smtp() as s:
                code, text = send(s, SENDER, [ALICE], msg("while up"))
                assert code == 250, text
            [m] = with_marker(srv, ALICE, "while up")
            assert field(m, "X-Spam-Status"), m[:800]  # scanned
        r.stop()
        with cont.smtp() as s:
            code, text = send(s, SENDER, [ALICE], msg("while down"))
            assert code == 250, text
        assert len(with_marker(cont, ALICE, "while down")) == 1
        with default.smtp() as s:
            code, text = send(s, SENDER, [ALICE], msg("while down"))
            assert code == 451, (code, text)
        assert with_marker(default, ALICE, "while down") == []
    finally:
        r.cleanup()


# ---------------------------------------------------------------------------------------------
# rspamd: learning from IMAP moves


def imap_ok(result):
    typ, data = result
    assert typ == "OK", (typ, data)
    return data


def wait_learned(r: Rspamd, base: tuple[int, int], spam: int | tuple[int, ...], ham: int, what: str,
                 srv: Server):
    """Wait (up to 20 s) until rspamd learned `spam` and `ham` more than `base` (`spam` may
    list the counts that are right); then check that it is exactly that."""
    spams = spam if isinstance(spam, tuple) else (spam,)
    wants = [(base[0] + s, base[1] + ham) for s in spams]
    want = wants[0] if len(wants) == 1 else wants
    got = poll(lambda: r.learned() in wants, timeout=20, interval=0.2)
    if not got:
        corvus = [l for l in srv.logs().splitlines() if "learn" in l.lower()][-10:]
        raise AssertionError(f"{what}: rspamd learned {r.learned()}, expected {want} (from {base})\n"
                             "rspamd: " + "\n".join(r.learns()) + "\ncorvus: " + "\n".join(corvus))


@needs_rspamd
def test_moves_into_junk_learn_spam_and_out_learn_ham(rspamd, filter_server):
    srv = filter_server([rspamd_hook(rspamd)])
    marker = tag()
    with srv.smtp() as s:
        for i in range(2):
            code, text = send(s, SENDER, [ALICE], msg(f"learn {marker} {i}"))
            assert code == 250, text
    base = rspamd.learned()
    m = srv.imap(ALICE)
    imap_ok(m.select("INBOX"))
    uids = imap_ok(m.uid("SEARCH", None, "ALL"))[0].split()
    assert len(uids) == 2, uids
    imap_ok(m.uid("MOVE", b",".join(uids).decode(), "Junk"))
    wait_learned(rspamd, base, 2, 0, "after moving 2 messages into Junk", srv)

    # One back to INBOX: learned as ham. rspamd also unlearns it as spam when its learn cache
    # has the first learn recorded by then, which it need not have (seen in CI): either count
    # of spam is right, the ham is what Corvus owes.
    imap_ok(m.select("Junk"))
    junk = imap_ok(m.uid("SEARCH", None, "ALL"))[0].split()
    assert len(junk) == 2, junk
    imap_ok(m.uid("MOVE", junk[0].decode(), "INBOX"))
    wait_learned(rspamd, base, (1, 2), 1, "after moving 1 message from Junk to INBOX", srv)
    m.logout()


@needs_rspamd
def test_junk_to_trash_learns_nothing_append_to_junk_learns_spam(rspamd, filter_server):
    srv = filter_server([rspamd_hook(rspamd)])
    marker = tag()
    with srv.smtp() as s:
        code, text = send(s, SENDER, [ALICE], msg(f"to trash {marker}"))
        assert code == 250, text
    base = rspamd.learned()
    m = srv.imap(ALICE)
    imap_ok(m.select("INBOX"))
    imap_ok(m.uid("MOVE", "1:*", "Junk"))
    wait_learned(rspamd, base, 1, 0, "after moving a message into Junk", srv)
    imap_ok(m.select("Junk"))
    imap_ok(m.uid("MOVE", "1:*", "Trash"))
    # APPEND into Junk learns spam; once that shows, the move to Trash (before it) would have
    # shown too.
    imap_ok(m.append("Junk", None, None, msg(f"appended {marker}")))
    wait_learned(rspamd, base, 2, 0, "after APPEND into Junk", srv)
    time.sleep(1)
    assert rspamd.learned() == (base[0] + 2, base[1]), "a move from Junk to Trash must not learn ham"
    m.logout()


@needs_rspamd
def test_learning_with_the_controller_down_does_not_hold_up_imap(rspamd, filter_server):
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    srv = filter_server([rspamd_hook(rspamd, controller=dead)])
    with srv.smtp() as s:
        for i in range(3):
            code, text = send(s, SENDER, [ALICE], msg(f"unlearnable {i}"))
            assert code == 250, text
    m = srv.imap(ALICE)
    imap_ok(m.select("INBOX"))
    imap_ok(m.uid("MOVE", "1:*", "Junk"))
    imap_ok(m.append("Junk", None, None, msg("appended while down")))
    imap_ok(m.select("Junk"))
    imap_ok(m.uid("MOVE", "1", "INBOX"))
    imap_ok(m.noop())
    m.logout()
    assert srv.running
    # Mail is still scanned (the normal worker is up).
    with srv.smtp() as s:
        code, text = send(s, SENDER, [ALICE], msg("scanned meanwhile"))
        assert code == 250, text
    [got] = with_marker(srv, ALICE, "scanned meanwhile")
    assert field(got, "X-Spam-Status"), got[:800]


# ---------------------------------------------------------------------------------------------
# Milter: the actions of the test milter


@pytest.fixture(scope="module")
def milter_server(tmp_path_factory, loopback_dns, test_milter):
    """A server with the test milter on every SMTP listener (default on_error: tempfail, so a
    protocol error shows as 451), shared by the action tests (each has its own Subject)."""
    s = Server(tmp_path_factory.mktemp("milter"), loopback_dns.addr,
               **with_preset(FILTERS, hooks=[milter_hook(test_milter.address)]))
    for u in (ALICE, BOB, CAROL, BLOCKED):
        s.add_user(u)
    s.start()
    yield s
    stop_all([s])


def milter_send(srv: Server, subject: str, rcpts=(ALICE,), extra: str = "", body: str | None = None) -> tuple[int, bytes]:
    with srv.smtp() as s:
        return send(s, SENDER, list(rcpts), msg(subject, body, extra=extra, to=", ".join(rcpts)))


@needs_pymilter
def test_milter_adds_a_header_and_changes_the_subject(milter_server):
    subject = f"plain {tag()}"
    code, text = milter_send(milter_server, subject)
    assert code == 250, text
    [m] = with_marker(milter_server, ALICE, subject)
    assert field(m, "X-Test-Milter") == ["seen"], m[:1000]
    assert field(m, "Subject") == [f"[milter] {subject}"], m[:1000]


@needs_pymilter
def test_milter_adds_a_recipient(milter_server):
    subject = f"ADDRCPT {tag()}"
    assert milter_send(milter_server, subject)[0] == 250
    assert len(with_marker(milter_server, ALICE, subject)) == 1
    assert len(with_marker(milter_server, CAROL, subject)) == 1


@needs_pymilter
def test_milter_deletes_a_recipient(milter_server):
    subject = f"DELRCPT {tag()}"
    assert milter_send(milter_server, subject, rcpts=(ALICE, BOB))[0] == 250
    assert len(with_marker(milter_server, ALICE, subject)) == 1
    assert with_marker(milter_server, BOB, subject) == []


@needs_pymilter
def test_milter_changes_the_sender(milter_server):
    subject = f"CHGFROM {tag()}"
    assert milter_send(milter_server, subject)[0] == 250
    [m] = [m for m in milter_server.stored_messages(ALICE, return_path=True) if subject.encode() in m]
    assert m.startswith(b"Return-Path: <changed@example.org>\r\n"), m[:200]


@needs_pymilter
def test_milter_inserts_a_header_at_the_top(milter_server):
    subject = f"INSHEADER {tag()}"
    assert milter_send(milter_server, subject)[0] == 250
    [m] = with_marker(milter_server, ALICE, subject)
    names = header_names(m)
    assert field(m, "X-Inserted") == ["first"], m[:1000]
    # Index 0: above every field the client sent (and above the appended X-Test-Milter).
    for original in ("from", "to", "subject", "date", "message-id", "x-test-milter"):
        assert names.index("x-inserted") < names.index(original), names


@needs_pymilter
def test_milter_deletes_a_header(milter_server):
    subject = f"DELHEADER {tag()}"
    assert milter_send(milter_server, subject, extra="X-Delete-Me: please\r\nX-Keep-Me: yes\r\n")[0] == 250
    [m] = with_marker(milter_server, ALICE, subject)
    assert field(m, "X-Delete-Me") == [] and field(m, "X-Keep-Me") == ["yes"], m[:1000]


@needs_pymilter
def test_milter_replaces_the_body(milter_server):
    subject = f"REPLACEBODY {tag()}"
    assert milter_send(milter_server, subject)[0] == 250
    [m] = with_marker(milter_server, ALICE, subject)
    assert m.split(b"\r\n\r\n", 1)[1] == b"replaced body\r\n", m


@needs_pymilter
def test_milter_rejects_with_its_own_code_and_text(milter_server):
    subject = f"FORBIDDEN {tag()}"
    code, text = milter_send(milter_server, subject)
    assert code == 550 and text.startswith(b"5.7.1") and b"forbidden keyword" in text, (code, text)
    assert with_marker(milter_server, ALICE, subject) == []


@needs_pymilter
def test_milter_rejects_one_recipient_at_rcpt(milter_server):
    subject = f"rcpt reject {tag()}"
    with milter_server.smtp() as s:
        assert s.mail(SENDER)[0] == 250
        code, text = s.rcpt(BLOCKED)
        assert code == 550 and b"5.7.1" in text and b"blocked by test milter" in text, (code, text)
        code, text = s.rcpt(ALICE)
        assert code == 250, (code, text)
        code, text = s.data(msg(subject))
        assert code == 250, (code, text)
    assert len(with_marker(milter_server, ALICE, subject)) == 1
    assert with_marker(milter_server, BLOCKED, subject) == []


@needs_pymilter
def test_milter_tempfails(milter_server):
    subject = f"TEMPFAIL {tag()}"
    code, text = milter_send(milter_server, subject)
    assert code == 451 and text.startswith(b"4.7.1"), (code, text)
    assert with_marker(milter_server, ALICE, subject) == []


@needs_pymilter
def test_milter_discards(milter_server):
    subject = f"DISCARD {tag()}"
    code, text = milter_send(milter_server, subject)
    assert code == 250, (code, text)
    for folder in ("INBOX", "Junk"):
        assert with_marker(milter_server, ALICE, subject, folder) == [], folder


@needs_pymilter
def test_milter_quarantines_into_junk(milter_server):
    subject = f"QUARANTINE {tag()}"
    assert milter_send(milter_server, subject)[0] == 250
    assert with_marker(milter_server, ALICE, subject) == []
    assert len(with_marker(milter_server, ALICE, subject, "Junk")) == 1


@needs_pymilter
def test_milter_sees_the_macros_and_the_session(milter_server, test_milter):
    subject = f"macros {tag()}"
    with milter_server.smtp() as s:
        s.ehlo("client.test")
        code, text = send(s, SENDER, [ALICE], msg(subject))
        assert code == 250, text
    queue_id = text.decode().rsplit(" ", 1)[1]
    events = poll(lambda: test_milter.session(subject), timeout=5)
    assert events, test_milter.events()[-20:]
    by = {}
    for e in events:
        by.setdefault(e["ev"], []).append(e)
    assert by.get("connect"), events
    connect = by["connect"][0]["macros"]
    assert connect.get("j") == milter_server.hostname, connect
    assert connect.get("{daemon_name}"), connect
    assert connect.get("{client_addr}") == "127.0.0.1", connect
    assert by["helo"][0]["helo"] == "client.test", by.get("helo")
    assert by["mail"][0]["sender"] == f"<{SENDER}>", by["mail"]
    assert [e["rcpt"] for e in by["rcpt"]] == [f"<{ALICE}>"], by["rcpt"]
    names = [e["name"].lower() for e in by["header"]]
    for h in ("from", "to", "subject", "message-id"):
        assert h in names, names
    eom = by["eom"][-1]
    assert eom["macros"].get("i") == queue_id, (eom["macros"], text)
    assert "{auth_authen}" not in by["mail"][0]["macros"], by["mail"]


@needs_pymilter
def test_milter_gets_the_authenticated_user_on_submission(milter_server, test_milter):
    subject = f"submitted {tag()}"
    with milter_server.submit_session(ALICE) as s:
        code, text = send(s, ALICE, [BOB], msg(subject, frm=ALICE, to=BOB))
        assert code == 250, text
    events = poll(lambda: test_milter.session(subject), timeout=5)
    mail = [e for e in events if e["ev"] == "mail"]
    assert mail and mail[-1]["macros"].get("{auth_authen}") == ALICE, events
    assert len(with_marker(milter_server, BOB, subject)) == 1


@needs_pymilter
def test_milter_on_a_unix_socket(filter_server):
    with Milter(unix=True) as m:
        srv = filter_server([milter_hook(m.address)])
        subject = f"over unix {tag()}"
        with srv.smtp() as s:
            code, text = send(s, SENDER, [ALICE], msg(subject))
            assert code == 250, text
        [got] = with_marker(srv, ALICE, subject)
        assert field(got, "X-Test-Milter") == ["seen"] and field(got, "Subject") == [f"[milter] {subject}"]


# ---------------------------------------------------------------------------------------------
# OpenDKIM


@needs_opendkim
def test_opendkim_signs_submitted_mail_only(opendkim, filter_server):
    srv = filter_server([milter_hook(opendkim.address, listeners=["submission"])])
    subject = f"signed {tag()}"
    with srv.submit_session(ALICE) as s:
        code, text = send(s, ALICE, [BOB], msg(subject, frm=f"Alice <{ALICE}>", to=BOB))
        assert code == 250, text
    [m] = with_marker(srv, BOB, subject)
    assert len(field(m, "DKIM-Signature")) == 1, m[:1500]
    assert "d=example.org" in field(m, "DKIM-Signature")[0] and "s=test" in field(m, "DKIM-Signature")[0]
    assert opendkim.verify(m), m[:2000]
    # Inbound on port 25: not signed (the milter is not on that listener).
    inbound = f"inbound {tag()}"
    with srv.smtp() as s:
        code, text = send(s, SENDER, [BOB], msg(inbound, frm=f"Alice <{ALICE}>", to=BOB))
        assert code == 250, text
    [n] = with_marker(srv, BOB, inbound)
    assert field(n, "DKIM-Signature") == []


@needs_opendkim
def test_opendkim_after_the_test_milter_signs_what_it_changed(opendkim, test_milter, filter_server):
    """Milters in a chain: OpenDKIM sees the message as the test milter left it (Subject
    changed, header inserted at the top, body replaced), so the signature holds on what is
    delivered."""
    srv = filter_server([milter_hook(test_milter.address, listeners=["submission"]),
                         milter_hook(opendkim.address, listeners=["submission"])])
    subject = f"INSHEADER REPLACEBODY chain {tag()}"
    with srv.submit_session(ALICE) as s:
        code, text = send(s, ALICE, [BOB], msg(subject, frm=f"Alice <{ALICE}>", to=BOB))
        assert code == 250, text
    [m] = with_marker(srv, BOB, subject)
    assert field(m, "Subject") == [f"[milter] {subject}"] and m.endswith(b"\r\n\r\nreplaced body\r\n"), m
    assert opendkim.verify(m), m[:2000]


# ---------------------------------------------------------------------------------------------
# Milters that hang or misbehave


SHORT = {"connect_timeout": "2s", "command_timeout": "2s", "content_timeout": "2s"}


@needs_pymilter
@pytest.mark.parametrize("on_error", ["continue", "tempfail"])
def test_hanging_milter_times_out(on_error, test_milter, filter_server):
    srv = filter_server([milter_hook(test_milter.address, on_error=on_error, **SHORT)])
    subject = f"HANG {tag()}"
    start = time.monotonic()
    with srv.smtp() as s:
        code, text = send(s, SENDER, [ALICE], msg(subject))
    took = time.monotonic() - start
    assert took < 15, f"the content timeout is 2 s; the reply took {took:.1f} s"
    if on_error == "continue":
        assert code == 250, (code, text)
        [m] = with_marker(srv, ALICE, subject)
        assert field(m, "X-Test-Milter") == [], "a timed-out milter's changes must not apply"
    else:
        assert code == 451, (code, text)
        assert with_marker(srv, ALICE, subject) == []


@needs_pymilter
@pytest.mark.parametrize("mode", ["garbage", "close", "slow", "slow-negotiation"])
@pytest.mark.parametrize("on_error", ["continue", "default"])
def test_misbehaving_milter_gets_a_clear_reply(mode, on_error, filter_server):
    """A milter that answers garbage, closes, or answers one byte a second: the client gets
    the entry's on_error policy (451 by default) within the timeouts, on every connection,
    and the listeners without the milter serve as ever."""
    with BadMilter(mode) as bad:
        hook = milter_hook(bad.address, on_error=None if on_error == "default" else on_error,
                           listeners=["smtp"], **SHORT)
        srv = filter_server([hook])
        for attempt in range(2):  # the second connection is served the same way
            subject = f"bad milter {mode} {attempt} {tag()}"
            start = time.monotonic()
            stage, code, text = transaction(srv, "smtp", SENDER, [ALICE], msg(subject))
            took = time.monotonic() - start
            assert took < 15, f"{mode}: timeouts are 2 s; the session took {took:.1f} s"
            if on_error == "continue":
                assert (stage, code) == ("data", 250), (stage, code, text)
                assert len(with_marker(srv, ALICE, subject)) == 1
            else:
                assert code == 451, (stage, code, text)
                assert with_marker(srv, ALICE, subject) == []
        assert bad.connections >= 1 and bad.commands[:1] == ["O"], (bad.connections, bad.commands)
        # Submission has no milter: served as ever, and the server is still up.
        with srv.submit_session(ALICE) as s:
            code, text = send(s, ALICE, [BOB], msg(f"meanwhile {tag()}", frm=ALICE, to=BOB))
            assert code == 250, text
        assert srv.running


@needs_pymilter
def test_unreachable_milter_follows_on_error(filter_server):
    addr = f"127.0.0.1:{free_port()}"  # nothing listens there
    cont = filter_server([milter_hook(addr, on_error="continue", **SHORT)], name="continue")
    default = filter_server([milter_hook(addr, **SHORT)], name="default")
    stage, code, text = transaction(cont, "smtp", SENDER, [ALICE], msg("no milter c"))
    assert (stage, code) == ("data", 250), (stage, code, text)
    stage, code, text = transaction(default, "smtp", SENDER, [ALICE], msg("no milter d"))
    assert code == 451, (stage, code, text)


@needs_rspamd
def test_check_validates_filter_entries_and_warns_when_one_does_not_answer(rspamd, corvus_factory):
    """`corvus check`: a filter that does not answer is a warning (filters may start after
    Corvus), a wrong key or address an error naming the entry, the key and the fix."""
    gone = f"127.0.0.1:{free_port()}"
    srv = corvus_factory(name="check", **with_preset(FILTERS, hooks=[
        {"rspamd": f"http://{gone}"}, milter_hook(gone), rspamd_hook(rspamd)]))
    r = srv.cli("check", check=False)
    assert r.returncode == 0, r.stderr
    assert f"warning: hooks[0]: rspamd does not answer (http://{gone}: " in r.stderr, r.stderr
    assert f"warning: hooks[1]: milter {gone} does not answer" in r.stderr, r.stderr
    assert "hooks[2]" not in r.stderr, r.stderr
    assert "3 filters" in r.stdout, r.stdout
    for hook, error in [
        ({"rspamd": rspamd.url, "config": {"junkscore": 6}},
         "hooks[0].config.junkscore: not a setting of rspamd (known: junk_score"),
        ({"rspamd": rspamd.url, "config": {"junk_score": "high"}},
         "hooks[0].config.junk_score: must be a number, e.g. 6.0"),
        ({"rspamd": "https://127.0.0.1:11333"}, "hooks[0].rspamd: \"https://127.0.0.1:11333\": https is not supported"),
        ({"milter": "8891"}, "hooks[0].milter: \"8891\" is not host:port or unix:/path"),
        ({"milter": gone, "script": "x.rhai"}, "hooks[0]: give one of script, plugin, rspamd and milter per entry"),
    ]:
        srv.write_config([hook])
        r = srv.cli("check", check=False)
        assert r.returncode != 0 and error in r.stderr, (hook, r.stderr)


@needs_rspamd
def test_learning_is_per_user_where_rspamd_keeps_statistics_per_user(filter_server):
    """With `per_user = true` in rspamd's classifier, what a user files into Junk lands in
    that user's statistics: Corvus names the user in `Deliver-To`."""
    with Rspamd(password=RSPAMD_PASSWORD, per_user=True) as r:
        srv = filter_server([rspamd_hook(r)])
        with srv.smtp() as s:
            code, text = send(s, SENDER, [BOB], msg(f"per user {tag()} quibbly frondle"))
            assert code == 250, text
        m = srv.imap(BOB)
        imap_ok(m.select("INBOX"))
        uids = imap_ok(m.uid("SEARCH", None, "ALL"))[0].split()
        imap_ok(m.uid("MOVE", b",".join(uids).decode(), "Junk"))
        m.logout()
        deadline = time.monotonic() + 20
        keys = []
        while time.monotonic() < deadline:
            keys = [k.decode() if isinstance(k, bytes) else k
                    for k in (redis_cmd(r.redis_port, "SMEMBERS", "BAYES_SPAM_keys") or [])]
            if any(BOB in k for k in keys):
                break
            time.sleep(0.2)
        assert any(BOB in k for k in keys), (keys, r.learns())
        key = next(k for k in keys if BOB in k)
        assert int(redis_cmd(r.redis_port, "HGET", key, "learns_spam") or 0) == 1
