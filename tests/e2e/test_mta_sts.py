"""Outbound MTA-STS (RFC 8461) and REQUIRETLS (RFC 8689), end to end (issue 26).

Site A (alice@a.test) delivers to site B (bob@b.test, MX mx.b.test on 127.0.0.2), both
Corvus, with a DNS zone on loopback. B's certificate is signed by a test CA that A trusts
through `[tls] trust_roots`. B's policy is served by B itself over its `https` listener
(`[mta_sts]`), or, where a test needs a policy server that misbehaves, by a small HTTPS
server in the test on 127.0.0.5. A fetches policies from the port the test chose
(`[delivery] mta_sts_port`). A man-in-the-middle proxy on 127.0.0.4 strips STARTTLS from
B's EHLO answer. aiosmtpd plays a receiver with STARTTLS but without REQUIRETLS.
"""

import http.server
import re
import ssl
import threading
import time

import pytest

from support.certs import issue_cert
from support.dns import DnsServer
from support.mitm import StripStarttlsProxy
from support.net import free_port
from support.server import Server
from support.wait import wait_for

PW = "secret-pw"
B_IP = "127.0.0.2"
MITM_IP = "127.0.0.4"
POLICY_IP = "127.0.0.5"


class World:
    """The zone, the CA, and the two sites (made by `sites`)."""

    def __init__(self, tmp_path):
        self.tmp = tmp_path
        self.zone = DnsServer(ttl=0)  # tests change records mid-way
        self.ca = issue_cert(tmp_path / "ca", ["Test CA"])
        self.servers: list[Server] = []
        self.closers = []
        self.smtp_port = free_port()
        self.https_port = free_port()

    def cert(self, name, names, trusted=True):
        return issue_cert(self.tmp / name, names, self.ca if trusted else None)

    def sites(self, *, b_names=("mx.b.test", "mta-sts.b.test"), policy="enforce", mx=("mx.b.test",),
              txt="v=STSv1; id=1", policy_ip=B_IP, mx_ip=B_IP, start_b=True, a_delivery="", a_extra=""):
        """A and B; B publishes `policy` (None: no `_mta-sts` record) with `mx`."""
        z = self.zone
        cert, key, _ = self.cert("b-cert", list(b_names))
        z.add("b.test", "MX", "10 mx.b.test.")
        z.add("mx.b.test", "A", mx_ip)
        z.add("mta-sts.b.test", "A", policy_ip)
        if policy is not None:
            z.add("_mta-sts.b.test", "TXT", txt)
        z.add("a.test", "MX", "10 mx.a.test.")
        z.add("mx.a.test", "A", "127.0.0.1")
        mx_list = ", ".join('"%s"' % m for m in mx)
        b = Server(self.tmp / "b", z.addr, domains=["b.test"], hostname="mx.b.test", host=B_IP,
                   ports={"smtp": self.smtp_port, "https": self.https_port},
                   extra=f'[tls]\ncert = "{cert}"\nkey = "{key}"\n'
                         f'[mta_sts]\nmode = "{policy or "none"}"\nmx = [{mx_list}]\nmax_age = "1d"\n')
        a = Server(self.tmp / "a", z.addr, domains=["a.test"], hostname="mx.a.test",
                   smtp={"allow_plaintext_auth": True},
                   extra=f'[delivery]\nport = {self.smtp_port}\nretry = ["1s"]\n'
                         f'mta_sts_port = {self.https_port}\nmta_sts_timeout = "3s"\n{a_delivery}\n'
                         f'[tls]\ntrust_roots = "{self.tmp / "ca" / "cert.pem"}"\n{a_extra}')
        self.servers += [a, b]
        a.add_user("alice@a.test", PW)
        b.add_user("bob@b.test", PW)
        if start_b:
            b.start()
        a.start()
        return a, b

    def close(self):
        for s in self.servers:
            if s.running:
                s.stop(expect=0)
        for c in self.closers:
            c()
        self.zone.close()


@pytest.fixture
def world(tmp_path):
    w = World(tmp_path)
    yield w
    w.close()


def submit(a: Server, body: bytes, *, to="bob@b.test", headers=b"", requiretls=False):
    s = a.smtp("submission")
    s.ehlo()
    s.starttls(context=ssl._create_unverified_context())
    s.ehlo()
    s.login("alice@a.test", PW)
    msg = b"From: <alice@a.test>\r\nTo: <%s>\r\nSubject: sts\r\n%s\r\n%s" % (to.encode(), headers, body)
    s.sendmail("alice@a.test", [to], msg, mail_options=["REQUIRETLS"] if requiretls else [])
    s.quit()


def queue_error(a: Server) -> str:
    return a.cli("queue", "list").stdout


def trace_of(a: Server, rcpt="bob@b.test") -> str:
    """The trace of the newest message to `rcpt` ("" when there is none yet)."""
    lines = a.cli("trace", "--recipient", rcpt).stdout.strip().splitlines()
    if len(lines) < 2 or lines[0].split()[:1] != ["ID"]:
        return ""
    return a.cli("trace", lines[1].split()[0]).stdout


def delivered_to_b(b: Server, needle: bytes):
    return [m for m in b.stored_messages("bob@b.test") if needle in m]


# --- a policy server that misbehaves -----------------------------------------------------------

class PolicyServer:
    """HTTPS on POLICY_IP:port with a certificate for mta-sts.b.test (trusted or not);
    `behaviour` picks the answer."""

    def __init__(self, world: World, port: int, behaviour: str, trusted=True):
        cert, key, _ = world.cert("policy-cert", ["mta-sts.b.test"], trusted)
        self.behaviour = behaviour
        self.requests = 0
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                owner.requests += 1
                b = owner.behaviour
                if b == "slow":
                    time.sleep(10)
                if b == "redirect":
                    self.send_response(301)
                    self.send_header("Location", "https://elsewhere.test/.well-known/mta-sts.txt")
                    self.end_headers()
                    return
                if b == "error":
                    self.send_response(500)
                    self.end_headers()
                    return
                body = {
                    "good": b"version: STSv1\r\nmode: enforce\r\nmx: mx.b.test\r\nmax_age: 86400\r\n",
                    "slow": b"version: STSv1\r\nmode: enforce\r\nmx: mx.b.test\r\nmax_age: 86400\r\n",
                    "big": b"version: STSv1\r\nmode: enforce\r\nmx: mx.b.test\r\nmax_age: 86400\r\n" + b"x: y\r\n" * 20000,
                    "malformed": b"<html><body>It works!</body></html>\r\n",
                    "html": b"version: STSv1\r\nmode: enforce\r\nmx: mx.b.test\r\nmax_age: 86400\r\n",
                }[b]
                self.send_response(200)
                self.send_header("Content-Type", "text/html" if b == "html" else "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                try:
                    self.wfile.write(body)
                except OSError:
                    pass

        self.httpd = http.server.ThreadingHTTPServer((POLICY_IP, port), Handler)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        world.closers.append(self.close)

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def StripStarttls(world: World, port: int) -> StripStarttlsProxy:
    """The proxy on MITM_IP:port in front of B_IP:port, closed with the world."""
    p = StripStarttlsProxy(MITM_IP, port, B_IP)
    world.closers.append(p.close)
    return p


# --- MTA-STS ------------------------------------------------------------------------------------

def test_enforce_with_a_matching_certificate_delivers_over_verified_tls(world):
    """B publishes an enforce policy from its own https listener; A fetches it (through
    trust_roots) and delivers over STARTTLS with B's certificate verified for mx.b.test."""
    a, b = world.sites()
    submit(a, b"under enforce\r\n")
    raw = wait_for(lambda: delivered_to_b(b, b"under enforce"), what="delivery to B")[0]
    assert b"TLS" in raw.split(b"\r\n\r\n")[0]
    assert "MTA-STS policy fetched" in a.logs()
    t = wait_for(lambda: (lambda t: t if "delivered" in t else None)(trace_of(a)), what="trace")
    assert "verified" in t and "certificate not verified" not in t, t


def test_enforce_with_a_mismatched_certificate_is_deferred_and_retried(world):
    """B's SMTP certificate names other.example (and the policy host) but not mx.b.test:
    under enforce, A does not deliver, retries, and the queue and trace say why."""
    a, b = world.sites(b_names=("mta-sts.b.test", "other.example"))
    submit(a, b"must wait\r\n")
    wait_for(lambda: "MTA-STS policy of b.test (enforce)" in queue_error(a), what="the policy failure in the queue")
    time.sleep(3)  # retries
    assert not delivered_to_b(b, b"must wait")
    q = queue_error(a)
    assert "bob@b.test" in q and "certificate" in q.lower(), q
    t = trace_of(a)
    assert "MTA-STS policy of b.test (enforce)" in t, t
    assert len(re.findall(r"deferred", t)) >= 2, t


def test_starttls_stripped_by_a_man_in_the_middle_is_deferred(world):
    """mx.b.test resolves to a proxy that removes STARTTLS from B's EHLO answer: without a
    policy A would deliver in clear text (checked first, with mode none); under enforce it
    does not, and says the host offers no STARTTLS."""
    mitm = StripStarttls(world, world.smtp_port)
    a, b = world.sites(policy="enforce", mx_ip=MITM_IP)
    submit(a, b"stripped\r\n")
    wait_for(lambda: "STARTTLS" in queue_error(a), what="the stripping noticed")
    assert mitm.stripped >= 1
    time.sleep(2)
    assert not delivered_to_b(b, b"stripped")
    assert "does not offer STARTTLS" in queue_error(a), queue_error(a)


def test_without_a_policy_the_stripping_proxy_wins(world):
    """The control for the test above: no `_mta-sts` record, same proxy: opportunistic TLS is
    stripped and the message goes in clear text (what MTA-STS exists to prevent)."""
    mitm = StripStarttls(world, world.smtp_port)
    a, b = world.sites(policy=None, mx_ip=MITM_IP)
    submit(a, b"in clear\r\n")
    raw = wait_for(lambda: delivered_to_b(b, b"in clear"), what="clear-text delivery")[0]
    assert mitm.stripped >= 1
    b_received = re.search(rb"^Received: from .*?(?=\r\n\S)", raw, re.M | re.S).group(0)
    assert b"by mx.b.test" in b_received and b"with ESMTP " in b_received, b_received


def test_testing_mode_delivers_and_reports(world):
    """A testing policy with a certificate that fails: A delivers anyway and logs what would
    have failed."""
    a, b = world.sites(policy="testing", b_names=("mta-sts.b.test", "other.example"))
    submit(a, b"testing mode\r\n")
    wait_for(lambda: delivered_to_b(b, b"testing mode"), what="delivery under testing")
    assert "MTA-STS policy of b.test (testing)" in a.logs()
    assert "would have failed the policy" in a.logs()


def test_an_mx_host_outside_the_policy_is_not_used(world):
    """The policy names only mx.b.test; DNS (spoofed, say) says the MX is evil.b.test: under
    enforce A does not connect there."""
    a, b = world.sites(mx=("mx.b.test",), start_b=False)
    world.zone.zone["b.test."] = [("MX", "10 evil.b.test.")]
    world.zone.add("evil.b.test", "A", B_IP)
    b.start()
    submit(a, b"not to evil\r\n")
    wait_for(lambda: "is not one of mx.b.test" in queue_error(a), what="the refusal of evil.b.test")
    assert not delivered_to_b(b, b"not to evil")


def test_a_cached_policy_outlives_a_failed_fetch(world):
    """A fetched the policy (enforce, mx.b.test) with a first message. Then the `_mta-sts` id
    changes and the policy server answers 500: A keeps the cached policy (RFC 8461 §5.1), so
    a spoofed MX outside it is still refused."""
    port = world.https_port
    policy = PolicyServer(world, port, "good")
    a, b = world.sites(policy_ip=POLICY_IP, policy="none")
    submit(a, b"first\r\n")
    wait_for(lambda: delivered_to_b(b, b"first"), what="first delivery")
    assert policy.requests == 1
    world.zone.zone["_mta-sts.b.test."] = [("TXT", '"v=STSv1; id=2"')]
    policy.behaviour = "error"
    world.zone.zone["b.test."] = [("MX", "10 evil.b.test.")]
    world.zone.add("evil.b.test", "A", B_IP)
    submit(a, b"second\r\n")
    wait_for(lambda: "is not one of mx.b.test" in queue_error(a), what="the cached policy applied")
    assert policy.requests >= 2, "the changed id made A fetch again"
    assert "answered 500" in a.logs()
    assert not delivered_to_b(b, b"second")


@pytest.mark.parametrize("behaviour,problem", [
    ("big", "larger than 65536"),
    ("malformed", "not \"key: value\""),
    ("redirect", "answered 301"),
    ("html", "not text/plain"),
    ("slow", "no answer within"),
    ("untrusted", "TLS with mta-sts.b.test"),
])
def test_a_bad_policy_server_means_no_policy(world, behaviour, problem):
    """A policy that is too big, malformed, redirected, of the wrong type, too slow, or served
    with a certificate A does not trust is no policy: the message is delivered as without
    MTA-STS (B's certificate would fail enforce), and A's log and trace say what was wrong."""
    PolicyServer(world, world.https_port, "good" if behaviour == "untrusted" else behaviour,
                 trusted=behaviour != "untrusted")
    a, b = world.sites(policy_ip=POLICY_IP, policy="none", b_names=("other.example",))
    submit(a, b"despite %s\r\n" % behaviour.encode())
    wait_for(lambda: delivered_to_b(b, b"despite"), what="delivery without a policy", timeout=30)
    assert problem in a.logs(), a.logs()[-3000:]
    assert problem in trace_of(a)
    assert a.running


# --- REQUIRETLS ---------------------------------------------------------------------------------

def test_requiretls_is_offered_only_over_tls(world):
    """Inbound: REQUIRETLS is advertised after STARTTLS only, and MAIL FROM with it in a
    clear-text session is refused with 530 5.7.10."""
    a, _ = world.sites(policy=None)
    s = a.smtp("submission")
    code, text = s.ehlo()
    assert b"REQUIRETLS" not in text
    assert s.docmd("MAIL FROM:<alice@a.test> REQUIRETLS") == (530, b"5.7.10 REQUIRETLS needs a TLS session; use STARTTLS first")
    s.starttls(context=ssl._create_unverified_context())
    code, text = s.ehlo()
    assert b"REQUIRETLS" in text
    s.quit()


def test_requiretls_delivers_over_verified_tls_under_a_policy(world):
    """REQUIRETLS to B (enforce policy, matching certificate, REQUIRETLS offered): delivered."""
    a, b = world.sites()
    submit(a, b"required tls\r\n", requiretls=True)
    wait_for(lambda: delivered_to_b(b, b"required tls"), what="REQUIRETLS delivery")


def bounce_to_alice(a: Server, needle: bytes):
    return [m for m in a.stored_messages("alice@a.test") if needle in m]


def test_requiretls_without_a_policy_bounces(world):
    """REQUIRETLS to a domain with no MTA-STS policy (and no DNSSEC): nothing authenticates
    the MX, so the message bounces at once with 5.7.30, the body not returned."""
    a, b = world.sites(policy=None)
    submit(a, b"secret body\r\n", requiretls=True)
    dsn = wait_for(lambda: bounce_to_alice(a, b"5.7.30"), what="the 5.7.30 bounce")[0]
    assert b"secret body" not in dsn
    assert b"text/rfc822-headers" in dsn
    assert not delivered_to_b(b, b"secret body")


def test_requiretls_to_a_server_without_it_bounces(world):
    """The receiver (aiosmtpd with STARTTLS and a certificate A trusts) does not offer
    REQUIRETLS: A does not send it the message and bounces it with 5.7.30."""
    from aiosmtpd.controller import Controller

    got = []

    class Handler:
        async def handle_DATA(self, server, session, envelope):
            got.append(envelope.content)
            return "250 OK"

    cert, key, _ = world.cert("aio-cert", ["mx.b.test", "mta-sts.b.test"])
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    PolicyServer(world, world.https_port, "good")
    ctl = Controller(Handler(), hostname=B_IP, port=world.smtp_port, tls_context=ctx,
                     require_starttls=False)
    ctl.start()
    world.closers.append(ctl.stop)
    a, _ = world.sites(policy_ip=POLICY_IP, start_b=False)
    submit(a, b"needs requiretls\r\n", requiretls=True)
    dsn = wait_for(lambda: bounce_to_alice(a, b"5.7.30"), what="the bounce")[0]
    assert b"REQUIRETLS" in dsn
    assert not got


def test_tls_required_no_overrides_the_policy(world):
    """`TLS-Required: No` (RFC 8689 §5): the sender asks that recipient policies be ignored;
    with B's certificate failing enforce, the message is delivered anyway."""
    a, b = world.sites(b_names=("mta-sts.b.test", "other.example"))
    submit(a, b"no tls required\r\n", headers=b"TLS-Required: No\r\n")
    wait_for(lambda: delivered_to_b(b, b"no tls required"), what="delivery despite the policy")


# --- TLS reporting (RFC 8460) -------------------------------------------------------------------

# The report's JSON as RFC 8460 §4.4 defines it, written as a JSON Schema (the RFC gives the
# fields, their types and which are required, but no schema file).
TLSRPT_SCHEMA = {
    "type": "object",
    "required": ["organization-name", "date-range", "contact-info", "report-id", "policies"],
    "properties": {
        "organization-name": {"type": "string"},
        "contact-info": {"type": "string"},
        "report-id": {"type": "string"},
        "date-range": {
            "type": "object",
            "required": ["start-datetime", "end-datetime"],
            "properties": {
                "start-datetime": {"type": "string", "format": "date-time",
                                   "pattern": r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$"},
                "end-datetime": {"type": "string", "format": "date-time",
                                 "pattern": r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$"},
            },
        },
        "policies": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["policy", "summary"],
                "properties": {
                    "policy": {
                        "type": "object",
                        "required": ["policy-type", "policy-domain"],
                        "properties": {
                            "policy-type": {"enum": ["tlsa", "sts", "no-policy-found"]},
                            "policy-string": {"type": "array", "items": {"type": "string"}},
                            "policy-domain": {"type": "string"},
                            "mx-host": {"type": "array", "items": {"type": "string"}},
                        },
                    },
                    "summary": {
                        "type": "object",
                        "required": ["total-successful-session-count", "total-failure-session-count"],
                        "properties": {
                            "total-successful-session-count": {"type": "integer", "minimum": 0},
                            "total-failure-session-count": {"type": "integer", "minimum": 0},
                        },
                    },
                    "failure-details": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["result-type", "failed-session-count"],
                            "properties": {
                                "result-type": {"enum": [
                                    "starttls-not-supported", "certificate-host-mismatch",
                                    "certificate-expired", "certificate-not-trusted",
                                    "validation-failure", "tlsa-invalid", "dnssec-invalid",
                                    "dane-required", "sts-policy-fetch-error", "sts-policy-invalid",
                                    "sts-webpki-invalid"]},
                                "sending-mta-ip": {"type": "string"},
                                "receiving-mx-hostname": {"type": "string"},
                                "receiving-mx-helo": {"type": "string"},
                                "receiving-ip": {"type": "string"},
                                "failed-session-count": {"type": "integer", "minimum": 1},
                                "additional-information": {"type": "string"},
                                "failure-reason-code": {"type": "string"},
                            },
                        },
                    },
                },
            },
        },
    },
}

REPORTS = '[tls_reports]\nenabled = true\ninterval = "3s"\norg_name = "Site A"\n'


def check_report(report: dict) -> dict:
    import jsonschema

    jsonschema.validate(report, TLSRPT_SCHEMA)
    assert report["organization-name"] == "Site A"
    assert len(report["policies"]) == 1
    return report["policies"][0]


def tlsrpt_mail(a: Server):
    """The TLS report messages in tlsrpt@a.test's INBOX, parsed: (message, report JSON)."""
    import email
    import gzip
    import json

    out = []
    for raw in a.stored_messages("tlsrpt@a.test"):
        m = email.message_from_bytes(raw)
        parts = [p for p in m.walk() if p.get_content_type() == "application/tlsrpt+gzip"]
        if parts:
            out.append((m, json.loads(gzip.decompress(parts[0].get_payload(decode=True)))))
    return out


def test_tls_report_by_mail_counts_a_testing_mode_failure(world):
    """Testing policy, B's certificate for another name: the message is delivered and the
    daily (here 3 s) TLS report, mailed to the rua of _smtp._tls.b.test as
    multipart/report; report-type="tlsrpt", counts one certificate-host-mismatch at
    mx.b.test [127.0.0.2] under the sts policy; the JSON passes RFC 8460's schema."""
    world.zone.add("_smtp._tls.b.test", "TXT", "v=TLSRPTv1; rua=mailto:tlsrpt@a.test")
    a, b = sites_with_reports(world, policy="testing", b_names=("mta-sts.b.test", "other.example"))
    submit(a, b"reported\r\n")
    wait_for(lambda: delivered_to_b(b, b"reported"), what="delivery under testing")
    (m, report), = wait_for(lambda: tlsrpt_mail(a), what="the TLS report", timeout=30)
    assert m.get_content_type() == "multipart/report" and m.get_param("report-type") == "tlsrpt"
    assert m["TLS-Report-Domain"] == "b.test" and m["TLS-Report-Submitter"] == "Site A"
    assert m["Subject"].startswith("Report Domain: b.test Submitter: Site A Report-ID: <")
    p = check_report(report)
    assert p["policy"]["policy-type"] == "sts" and p["policy"]["policy-domain"] == "b.test"
    assert "mode: testing" in p["policy"]["policy-string"] and p["policy"]["mx-host"] == ["mx.b.test"]
    assert p["summary"] == {"total-successful-session-count": 0, "total-failure-session-count": 1}
    (d,) = p["failure-details"]
    assert d["result-type"] == "certificate-host-mismatch", d
    assert d["receiving-mx-hostname"] == "mx.b.test" and d["receiving-ip"] == B_IP, d


def sites_with_reports(world, **kw):
    """world.sites with TLS reports on at A and a mailbox for them."""
    a, b = world.sites(a_extra=REPORTS, **kw)
    a.add_user("tlsrpt@a.test", PW)
    return a, b


class ReportReceiver:
    """HTTPS on localhost:port taking POSTed reports (certificate from the test CA)."""

    def __init__(self, world: World):
        cert, key, _ = world.cert("rua-cert", ["localhost"])
        self.posts = []
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                owner.posts.append((self.path, self.headers["Content-Type"], body))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.port = free_port()
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        world.closers.append(self.httpd.shutdown)


def test_tls_report_by_https_counts_successes_under_enforce(world):
    """Enforce policy, B's certificate right: two messages, two successful sessions (the
    second on a new connection or counted once when reused); the report is POSTed to the
    https rua as application/tlsrpt+gzip and passes the schema, with no failures."""
    import gzip
    import json

    rx = ReportReceiver(world)
    world.zone.add("_smtp._tls.b.test", "TXT", f"v=TLSRPTv1; rua=https://localhost:{rx.port}/tlsrpt")
    a, b = sites_with_reports(world)
    submit(a, b"first ok\r\n")
    wait_for(lambda: delivered_to_b(b, b"first ok"), what="delivery")
    wait_for(lambda: rx.posts, what="the POSTed report", timeout=30)
    path, ctype, body = rx.posts[0]
    assert path == "/tlsrpt" and ctype == "application/tlsrpt+gzip"
    p = check_report(json.loads(gzip.decompress(body)))
    assert p["policy"]["policy-type"] == "sts" and "mode: enforce" in p["policy"]["policy-string"]
    assert p["summary"]["total-failure-session-count"] == 0
    assert p["summary"]["total-successful-session-count"] == 1
    assert not p.get("failure-details")


def test_tls_report_counts_a_failed_policy_fetch(world):
    """The policy server answers 500 and nothing is cached: the report says
    sts-policy-fetch-error."""
    world.zone.add("_smtp._tls.b.test", "TXT", "v=TLSRPTv1; rua=mailto:tlsrpt@a.test")
    PolicyServer(world, world.https_port, "error")
    a, b = sites_with_reports(world, policy_ip=POLICY_IP, policy="none")
    submit(a, b"no policy\r\n")
    wait_for(lambda: delivered_to_b(b, b"no policy"), what="delivery without policy")
    (_, report), = wait_for(lambda: tlsrpt_mail(a), what="the TLS report", timeout=30)
    p = check_report(report)
    assert [d["result-type"] for d in p["failure-details"]] == ["sts-policy-fetch-error"], p


def test_requiretls_is_passed_to_the_next_hop(world):
    """A next hop that offers REQUIRETLS (aiosmtpd taught the keyword, with STARTTLS and a
    certificate A trusts, under an enforce policy) receives the message with
    `MAIL FROM:<…> REQUIRETLS`, over TLS."""
    from aiosmtpd.controller import Controller
    from aiosmtpd.smtp import SMTP

    seen = []

    class RequireTls(SMTP):
        async def smtp_MAIL(self, arg):
            if arg and re.search(r"\sREQUIRETLS\b", arg, re.I):
                seen.append(("REQUIRETLS", self.session.ssl is not None))
                arg = re.sub(r"\sREQUIRETLS\b", "", arg, flags=re.I)
            await super().smtp_MAIL(arg)

    class Handler:
        async def handle_EHLO(self, server, session, envelope, hostname, responses):
            session.host_name = hostname
            return responses[:-1] + ["250-REQUIRETLS", responses[-1]]

        async def handle_DATA(self, server, session, envelope):
            seen.append(("DATA", envelope.content))
            return "250 OK"

    class Ctl(Controller):
        def factory(self):
            return RequireTls(self.handler, **self.SMTP_kwargs)

    cert, key, _ = world.cert("aio-cert", ["mx.b.test", "mta-sts.b.test"])
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    PolicyServer(world, world.https_port, "good")
    ctl = Ctl(Handler(), hostname=B_IP, port=world.smtp_port, tls_context=ctx, require_starttls=False)
    ctl.start()
    world.closers.append(ctl.stop)
    a, _ = world.sites(policy_ip=POLICY_IP, start_b=False)
    submit(a, b"passed on\r\n", requiretls=True)
    wait_for(lambda: any(k == "DATA" for k, _ in seen), what="the message at the next hop")
    assert ("REQUIRETLS", True) in seen, seen
