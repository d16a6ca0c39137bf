"""Message traces (issue 25): `corvus trace ID`, `corvus trace --sender/--recipient/--since`,
`GET /api/trace/{id}` and `GET /api/traces`, for messages whose story has something to tell:
quarantined by a Rhai script, refused by DMARC, delivered to a remote MX on the second
attempt, bounced with a DSN. The contract is notes25/api-contract.md (trace object and
summary) and the issue's description of the CLI's sections.

One server serves the module (`world`): smtp, submission and http listeners, a script that
quarantines at the end of DATA (subject "quarantine me…"), a loopback DNS zone with SPF and
DMARC records, MXs for other.test at 127.0.0.5 and refuse.test at 127.0.0.6 (Python SMTP
servers the remote tests start: aiosmtpd, refusing the first RCPT with 451, or every one
with 550), and a null MX for nomail.test. Remote retries are 1 h apart, so only the test's
own retry request makes a second attempt.

Traces are written by the server's trace writer after the reply: every lookup polls (with
a deadline) until the trace shows what the test waits for.
"""

from __future__ import annotations

import datetime
import email.policy
import re
import smtplib
import time
from dataclasses import dataclass
from email.message import EmailMessage

import pytest

from support.clients import PASSWORD
from support.dns import DnsServer
from support.http import Api, check, check_error, create_token, queued_id, scrape, total, wait_trace
from support.net import free_port
from support.server import ALICE, BOB, Server
from support.wait import wait_for

QUARANTINE = """
fn on_data(ctx) {
    if ctx.subject.starts_with("quarantine me") { return quarantine("looks odd to the test script"); }
}
"""
TRACE_KEYS = {"id", "created", "message_id", "sender", "recipients", "size", "result", "reply",
              "connection", "sender_auth", "spam", "steps", "filed", "attempts"}
SUMMARY_KEYS = {"id", "created", "message_id", "sender", "recipients", "result"}
CONNECTION_KEYS = {"listener", "ip", "ptr", "fcrdns", "helo", "tls", "user"}
STEP_KEYS = {"at", "stage", "engine", "verdict", "reason", "micros"}
ATTEMPT_KEYS = {"at", "recipients", "mx", "tls", "reply", "result"}
SECTIONS = ("connection", "sender authentication", "spam", "steps", "filed", "delivery attempts")


@dataclass
class World:
    srv: Server
    zone: DnsServer
    api: Api
    mx_port: int


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    base = tmp_path_factory.mktemp("trace")
    zone = DnsServer()
    zone.add("spf-pass.test", "TXT", "v=spf1 ip4:127.0.0.5 -all")
    zone.add("_dmarc.dm-reject.test", "TXT", "v=DMARC1; p=reject")
    zone.add("other.test", "MX", "5 mx.other.test.")
    zone.add("mx.other.test", "A", "127.0.0.5")
    zone.add("nomail.test", "MX", "0 .")
    zone.add("refuse.test", "MX", "5 mx.refuse.test.")
    zone.add("mx.refuse.test", "A", "127.0.0.6")
    script = base / "quarantine.rhai"
    script.write_text(QUARANTINE)
    mx_port = free_port()
    srv = Server(
        base / "srv", zone.addr,
        listeners=("smtp", "submission", "http"),
        shutdown_timeout="5s",
        smtp={"allow_plaintext_auth": True},
        delivery={"port": mx_port, "retry": ["1h"]},
        hooks=[{"script": script}],
    )
    srv.add_user(ALICE)
    srv.add_user(BOB)
    srv.start()
    try:
        yield World(srv, zone, Api(srv, create_token(srv, "trace-e2e")), mx_port)
    finally:
        if srv.running:
            srv.stop(expect=0)
        zone.close()


# --- helpers -------------------------------------------------------------------------------------

def send(srv: Server, sender: str, to: str, subject: str, frm: str | None = None,
         source: str | None = None, listener: str = "smtp", login: str | None = None):
    """One transaction: (code, reply text of the end of DATA, Message-ID)."""
    m = EmailMessage()
    m["From"] = frm or sender
    m["To"] = to
    m["Subject"] = subject
    mid = f"<{time.time_ns()}.trace@client.example>"
    m["Message-ID"] = mid
    m["Date"] = "Mon, 07 Dec 2026 06:00:00 +0000"
    m.set_content("The body is not part of a trace.\n")
    s = smtplib.SMTP(srv.host, srv.ports[listener], local_hostname="client.example", timeout=30,
                     source_address=(source, 0) if source else None)
    try:
        s.ehlo()
        if login:
            s.login(login, PASSWORD)
        code, text = s.mail(sender)
        assert code == 250, (code, text)
        code, text = s.rcpt(to)
        assert code == 250, (code, text)
        code, text = s.data(m.as_bytes(policy=email.policy.SMTP))
        return code, text.decode(), mid
    finally:
        try:
            s.quit()
        except smtplib.SMTPException:
            pass


def cli_trace(srv: Server, *args: str, until=lambda out: True, what: str = "the trace") -> str:
    """`corvus trace ARGS…` until it succeeds with output for which `until` is true; the
    output."""
    last = {}

    def ready():
        p = srv.cli("trace", *args, check=False)
        last["out"] = f"rc {p.returncode}\n{p.stdout}{p.stderr}"
        if p.returncode == 0 and "no traces match" not in p.stdout and until(p.stdout):
            return p.stdout
        return None

    try:
        return wait_for(ready, what=f"{what} (corvus trace {' '.join(args)})", interval=0.2)
    except AssertionError as e:
        raise AssertionError(f"{e}; last output: {last.get('out')}") from None


def sections(out: str) -> dict[str, list[str]]:
    """The CLI's rendering: {section: [its indented lines, stripped]}; the first section is
    the header line "trace ID"."""
    found: dict[str, list[str]] = {}
    current = None
    for line in out.splitlines():
        if not line.strip():
            continue
        if not line[0].isspace():
            current = line.strip()
            found[current] = []
        else:
            assert current is not None, out
            found[current].append(line.strip())
    return found


def rows(out: str) -> list[dict]:
    """The search table: one dict per row (id, created, result, sender, recipients)."""
    lines = out.strip().splitlines()
    assert lines[0].split()[:5] == ["ID", "CREATED", "RESULT", "SENDER", "RECIPIENTS"], out
    return [dict(zip(("id", "created", "result", "sender", "recipients"), l.split(None, 4)))
            for l in lines[1:]]


def rfc3339(s: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(s.replace("Z", "+00:00"))


def check_shape(t: dict):
    """The trace object of the contract: its keys and their types."""
    assert set(t) >= TRACE_KEYS, sorted(TRACE_KEYS - set(t))
    rfc3339(t["created"])
    assert isinstance(t["recipients"], list) and isinstance(t["size"], int), t
    assert t["result"] in ("accepted", "rejected", "tempfailed", "discarded"), t
    assert set(t["connection"]) >= CONNECTION_KEYS, t["connection"]
    assert t["sender_auth"] is None or set(t["sender_auth"]) >= {"spf", "dkim", "dmarc", "arc"}, t
    assert t["spam"] is None or set(t["spam"]) >= {"engine", "score", "required", "action"}, t
    for s in t["steps"]:
        assert set(s) >= STEP_KEYS and isinstance(s["micros"], int), s
        rfc3339(s["at"])
    for f in t["filed"]:
        assert set(f) >= {"recipient", "user", "mailbox"}, f
    for a in t["attempts"]:
        assert set(a) >= ATTEMPT_KEYS and isinstance(a["recipients"], list), a
        rfc3339(a["at"])
        assert a["result"] in ("delivered", "deferred", "bounced"), a


# --- quarantined by a script ------------------------------------------------------------------

def test_quarantined_by_a_script(world):
    srv, api = world.srv, world.api
    sender = f"q{time.time_ns()}@remote.example"
    code, text, mid = send(srv, sender, BOB, "quarantine me please")
    assert code == 250, text
    qid = queued_id(text)
    out = cli_trace(srv, qid, until=lambda o: "filed" in sections(o))
    sec = sections(out)
    assert f"trace {qid}" in sec, out
    for name in ("connection", "sender authentication", "steps", "filed"):
        assert name in sec, f"no section {name!r}:\n{out}"
    assert "delivery attempts" not in sec, out
    assert any("smtp" in l and "127.0.0.1" in l and "client.example" in l for l in sec["connection"]), out
    # The script's step: time, stage, engine, verdict, reason, µs.
    step = [l for l in sec["steps"] if re.match(r"\S+\s+on_data\s", l) and "quarantine.rhai" in l]
    assert len(step) == 1, out
    assert re.search(r"\bquarantine\b", step[0].split("quarantine.rhai", 1)[1]), step
    assert "looks odd to the test script" in step[0] and re.search(r"\(\d+ µs\)$", step[0]), step
    assert sec["filed"] == [f"{BOB} -> {BOB} / Junk"], out
    # Filed where the trace says.
    assert any(b"quarantine me please" in m for m in srv.stored_messages(BOB, "Junk"))
    # The same through the API.
    t = wait_trace(api, qid, until=lambda t: t["filed"])
    check_shape(t)
    assert t["id"] == qid and t["sender"] == sender and t["recipients"] == [BOB], t
    assert t["message_id"] == mid and t["result"] == "accepted" and t["size"] > 0, t
    assert t["reply"].startswith("250") and qid in t["reply"], t
    c = t["connection"]
    assert (c["listener"], c["ip"], c["helo"], c["tls"], c["user"]) == (
        "smtp", "127.0.0.1", "client.example", None, None), c
    scripted = [s for s in t["steps"] if s["stage"] == "on_data" and "quarantine.rhai" in s["engine"]]
    assert len(scripted) == 1 and scripted[0]["verdict"] == "quarantine", t["steps"]
    assert "looks odd to the test script" in scripted[0]["reason"], scripted
    assert t["filed"] == [{"recipient": BOB, "user": BOB, "mailbox": "Junk"}], t["filed"]
    assert t["attempts"] == [] and t["spam"] is None, t
    # Looked up by Message-ID, with and without angle brackets.
    for key in (mid, mid.strip("<>")):
        assert check(api.get(f"/api/trace/{key}"), 200)["id"] == qid, key
        assert f"trace {qid}" in sections(cli_trace(srv, key)), key


# --- refused by DMARC ----------------------------------------------------------------------------

def test_refused_by_dmarc(world):
    """SPF passes for the envelope domain, which is not the From domain; the From domain
    publishes p=reject and there is no DKIM signature: 550, and the trace says why."""
    srv, api = world.srv, world.api
    sender = f"dm{time.time_ns()}@spf-pass.test"
    since = int(time.time()) - 2
    code, text, mid = send(srv, sender, BOB, "phish", frm="boss@dm-reject.test", source="127.0.0.5")
    assert code == 550 and "5.7.1" in text, (code, text)
    out = cli_trace(srv, "--sender", sender, "--since", str(since), what="the refused message in a search")
    found = rows(out)
    assert len(found) == 1, out
    row = found[0]
    assert row["result"] == "rejected" and row["sender"] == sender and row["recipients"] == BOB, row
    qid = row["id"]
    # Other filters find it too; a window after it does not.
    assert [r["id"] for r in rows(cli_trace(srv, "--sender", sender, "--recipient", BOB))] == [qid]
    assert [r["id"] for r in rows(cli_trace(srv, "--message-id", mid.strip("<>")))] == [qid]
    later = datetime.datetime.fromtimestamp(time.time() + 3600, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    p = srv.cli("trace", "--sender", sender, "--since", later)
    assert "no traces match" in p.stdout, p.stdout
    sec = sections(cli_trace(srv, qid))
    assert any("dmarc=fail" in l and "spf=pass" in l for l in sec.get("sender authentication", [])), sec
    policy = [l for l in sec["steps"] if re.match(r"\S+\s+policy\s", l)]
    assert policy and "DMARC" in policy[0] and re.search(r"\breject\b", policy[0]), sec["steps"]
    assert "filed" not in sec and "delivery attempts" not in sec, sec
    # The API: search by sender, then the trace.
    summaries = check(api.get("/api/traces", params={"sender": sender}), 200)
    assert [s["id"] for s in summaries] == [qid], summaries
    assert set(summaries[0]) == SUMMARY_KEYS and summaries[0]["result"] == "rejected", summaries
    t = check(api.get(f"/api/trace/{qid}"), 200)
    check_shape(t)
    assert t["result"] == "rejected" and t["reply"].startswith("550"), t
    assert t["message_id"] == mid and t["sender"] == sender, t
    assert t["sender_auth"]["dmarc"] == "fail" and t["sender_auth"]["spf"] == "pass", t["sender_auth"]
    steps = [s for s in t["steps"] if s["stage"] == "policy"]
    assert len(steps) == 1 and steps[0]["verdict"] == "reject" and "DMARC" in steps[0]["reason"], t["steps"]
    assert steps[0]["engine"] == "corvus", steps
    assert t["filed"] == [] and t["attempts"] == [], t
    assert t["connection"]["ip"] == "127.0.0.5", t["connection"]
    assert not any(b"Subject: phish" in m for m in srv.stored_messages(BOB))


# --- delivered remotely on the second attempt -------------------------------------------------

class FlakyMx:
    """aiosmtpd's handler: the first `refusals` RCPTs get 451, later ones are taken."""

    def __init__(self, refusals: int = 1):
        self.refusals = refusals
        self.got: list[tuple[str, list[str], bytes]] = []

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if self.refusals > 0:
            self.refusals -= 1
            return "451 4.3.0 test MX: try again later"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server, session, envelope):
        self.got.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.content))
        return "250 2.0.0 accepted by the test MX"


def test_remote_delivery_after_a_retry(world):
    from aiosmtpd.controller import Controller

    srv, api = world.srv, world.api
    carol = "carol@other.test"
    mx = FlakyMx(refusals=1)
    ctl = Controller(mx, hostname="127.0.0.5", port=world.mx_port)
    ctl.start()
    try:
        before, _, _ = scrape(api, None)
        since = int(time.time()) - 2
        code, text, mid = send(srv, ALICE, carol, "to the flaky MX", listener="submission", login=ALICE)
        assert code == 250, text
        qid = queued_id(text)
        t = wait_trace(api, qid, until=lambda t: len(t["attempts"]) >= 1, what="the first attempt")
        first = t["attempts"][0]
        assert first["result"] == "deferred" and "451" in first["reply"], first
        assert check(api.get(f"/api/queue/{qid}"), 200)["attempts"] == 1
        assert not mx.got
        check(api.post(f"/api/queue/{qid}/retry"), 200)
        wait_for(lambda: mx.got, what="delivery to the test MX after the retry")
        assert mx.got[0][0] == ALICE and mx.got[0][1] == [carol], mx.got
        t = wait_trace(api, qid, until=lambda t: len(t["attempts"]) >= 2, what="the second attempt")
        wait_for(lambda: api.get(f"/api/queue/{qid}").status_code == 404, what="the entry leaving the queue")
    finally:
        ctl.stop()
    check_shape(t)
    attempts = t["attempts"]
    assert [a["result"] for a in attempts] == ["deferred", "delivered"], attempts
    for a in attempts:
        assert a["recipients"] == [carol], a
    assert "451" in attempts[0]["reply"] and "250" in attempts[1]["reply"], attempts
    assert rfc3339(attempts[0]["at"]) <= rfc3339(attempts[1]["at"]), attempts
    assert t["result"] == "accepted" and t["filed"] == [] and t["message_id"] == mid, t
    c = t["connection"]
    assert c["listener"] == "submission" and c["user"] == ALICE, c
    queued = [s for s in t["steps"] if s["stage"] == "policy" and s["verdict"] == "queue"]
    assert len(queued) == 1 and carol in queued[0]["reason"], t["steps"]
    # The CLI: both attempts in order, and the message in a search.
    sec = sections(cli_trace(srv, qid, until=lambda o: o.count("delivered") >= 1))
    lines = sec["delivery attempts"]
    assert len(lines) == 2, sec
    assert "deferred" in lines[0] and "delivered" in lines[1], lines
    assert all(carol in l and "127.0.0.5" in l for l in lines), lines
    found = rows(cli_trace(srv, "--sender", ALICE, "--recipient", carol, "--since", str(since)))
    assert [(r["id"], r["result"]) for r in found] == [(qid, "accepted")], found
    summaries = check(api.get("/api/traces", params={"sender": ALICE, "recipient": carol}), 200)
    assert qid in [s["id"] for s in summaries], summaries
    assert check(api.get(f"/api/trace/{mid}"), 200)["id"] == qid
    after, _, _ = scrape(api, None)
    for result, n in (("deferred", 1), ("delivered", 1), ("bounced", 0)):
        d = (total(after, "corvus_queue_deliveries_total", result=result)
             - total(before, "corvus_queue_deliveries_total", result=result))
        assert d == n, f"corvus_queue_deliveries_total{{result={result!r}}} +{d:g}, expected +{n}"
    # Each attempt reached the MX: it names the host tried ("host [ip]").
    no_mx = [a for a in attempts if "127.0.0.5" not in (a["mx"] or "")]
    assert not no_mx, f"attempts without the MX they reached: {no_mx}"


class RefusingMx:
    """aiosmtpd's handler: every RCPT gets 550."""

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        return "550 5.1.1 test MX: no such user"


def test_remote_refusal_is_a_bounce_naming_the_mx(world):
    """A 5xx from the remote MX: one bounced attempt that names the MX it came from, the
    reply, and the DSN step."""
    from aiosmtpd.controller import Controller

    srv, api = world.srv, world.api
    ctl = Controller(RefusingMx(), hostname="127.0.0.6", port=world.mx_port)
    ctl.start()
    try:
        code, text, _ = send(srv, ALICE, "gone@refuse.test", "to a refusing MX", listener="submission",
                             login=ALICE)
        assert code == 250, text
        qid = queued_id(text)
        t = wait_trace(api, qid, until=lambda t: t["attempts"] and any(s["stage"] == "dsn" for s in t["steps"]),
                       what="the bounce and its DSN")
    finally:
        ctl.stop()
    check_shape(t)
    assert [a["result"] for a in t["attempts"]] == ["bounced"], t["attempts"]
    a = t["attempts"][0]
    assert a["recipients"] == ["gone@refuse.test"] and "550" in a["reply"], a
    assert [s["verdict"] for s in t["steps"] if s["stage"] == "dsn"] == ["failed"], t["steps"]
    # The MX that refused, by name (the DSN's Remote-MTA is the same name).
    assert a["mx"] and ("mx.refuse.test" in a["mx"] or "127.0.0.6" in a["mx"]), (
        f"the bounced attempt does not name the MX that refused: {a}")


# --- bounced at once, with a DSN -------------------------------------------------------------------

def test_bounce_and_dsn_are_traced(world):
    """nomail.test has a null MX (RFC 7505): the attempt is a bounce, and the DSN sent back
    to the sender is a step of the trace (stage dsn, engine queue)."""
    srv, api = world.srv, world.api
    before, _, _ = scrape(api, None)
    code, text, _ = send(srv, ALICE, "x@nomail.test", "to a null MX", listener="submission", login=ALICE)
    assert code == 250, text
    qid = queued_id(text)
    t = wait_trace(api, qid, until=lambda t: any(s["stage"] == "dsn" for s in t["steps"]),
                   what="the DSN step")
    check_shape(t)
    assert [a["result"] for a in t["attempts"]] == ["bounced"], t["attempts"]
    dsn = [s for s in t["steps"] if s["stage"] == "dsn"]
    assert len(dsn) == 1 and dsn[0]["engine"] == "queue" and dsn[0]["verdict"] == "failed", dsn
    assert ALICE in dsn[0]["reason"], dsn
    sec = sections(cli_trace(srv, qid))
    assert any(re.match(r"\S+\s+dsn\s+queue\s+failed\b", l) for l in sec["steps"]), sec["steps"]
    assert len(sec["delivery attempts"]) == 1 and "bounced" in sec["delivery attempts"][0], sec
    after = wait_for(lambda: (lambda s: s if total(s, "corvus_dsns_sent_total", result="failed")
                              > total(before, "corvus_dsns_sent_total", result="failed") else None)(
        scrape(api, None)[0]), what="the DSN counted")
    assert total(after, "corvus_dsns_sent_total", result="failed") - total(
        before, "corvus_dsns_sent_total", result="failed") == 1
    assert total(after, "corvus_queue_deliveries_total", result="bounced") - total(
        before, "corvus_queue_deliveries_total", result="bounced") == 1
    wait_for(lambda: any(b"multipart/report" in m for m in srv.stored_messages(ALICE)), what="the DSN in alice's INBOX")


# --- lookups that find nothing, and the CLI without a running server ------------------------------

def test_unknown_trace(world):
    srv, api = world.srv, world.api
    assert "NOSUCHID0000" in check_error(api.get("/api/trace/NOSUCHID0000"), 404)
    p = srv.cli("trace", "NOSUCHID0000", check=False)
    assert p.returncode != 0 and "NOSUCHID0000" in p.stderr, (p.returncode, p.stdout, p.stderr)
    p = srv.cli("trace", "--sender", "nobody-ever@nowhere.test")
    assert p.stdout.strip() == "no traces match", p.stdout


def test_trace_cli_with_the_server_stopped(corvus_factory):
    """`corvus trace` reads the store itself when no server runs."""
    srv = corvus_factory(name="offline", listeners=("smtp", "http"), shutdown_timeout="5s")
    srv.add_user(BOB)
    srv.start()
    api = Api(srv, create_token(srv, "offline"))
    sender = f"off{time.time_ns()}@remote.example"
    code, text, mid = send(srv, sender, BOB, "read later")
    assert code == 250, text
    qid = queued_id(text)
    wait_trace(api, qid, until=lambda t: t["filed"])
    live = srv.cli("trace", qid).stdout
    srv.stop()
    offline = srv.cli("trace", qid).stdout
    assert offline == live, (live, offline)
    assert sections(offline)["filed"] == [f"{BOB} -> {BOB} / INBOX"], offline
    assert [r["id"] for r in rows(srv.cli("trace", "--sender", sender).stdout)] == [qid]


def test_every_recipient_refused_at_rcpt_is_traced(world):
    """A transaction that never reaches DATA because every recipient was refused (an unknown
    user) is traced as rejected, with the refusal the client got; a transaction with an
    accepted recipient that the client abandons is not a refused message."""
    srv, api = world.srv, world.api
    sender = f"rcpt{time.time_ns()}@client.example"
    since = int(time.time()) - 2
    s = smtplib.SMTP(srv.host, srv.ports["smtp"], local_hostname="client.example", timeout=30)
    try:
        s.ehlo()
        assert s.mail(sender)[0] == 250
        code, text = s.rcpt(f"nobody{time.time_ns()}@example.org")
        assert code == 550 and b"5.1.1" in text, (code, text)
        code, _ = s.docmd("RSET")
        assert code == 250
        # Abandoned with an accepted recipient: not traced as refused.
        assert s.mail(sender)[0] == 250
        assert s.rcpt(BOB)[0] == 250
    finally:
        s.quit()
    found = wait_for(lambda: api.get("/api/traces", params={"sender": sender, "since": since}).json() or None,
                     what="the refused transaction in a search", timeout=20, interval=0.2)
    assert len(found) == 1 and found[0]["result"] == "rejected", found
    t = wait_trace(api, found[0]["id"])
    check_shape(t)
    assert t["reply"].startswith("550 5.1.1"), t["reply"]
    assert t["recipients"][0].startswith("nobody") and t["filed"] == [] and t["size"] == 0, t
    assert any(s["stage"] == "on_rcpt" and s["verdict"] == "reject" for s in t["steps"]), t["steps"]
