"""DANE for outbound SMTP (RFC 7672) against a DNSSEC-signed zone on loopback (issue 26).

Knot DNS (support/knot.py) serves a signed root zone holding both sites' records; site A
validates with the zone's key as its trust anchor (`[dns] dnssec`, `trust_anchors`). Site B
(mx.b.test on 127.0.0.2) presents a certificate no CA signed: only its TLSA record can
vouch for it. Cases: a matching DANE-EE record delivers over TLS checked against it; a
record that does not match defers (never a clear-text or unchecked fallback); bogus
signatures on the MX host's zone defer; an unsigned zone means no DANE (opportunistic TLS);
a flood of TLSA records is bounded.
"""

import hashlib
import re
import secrets
import time

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from support import knot
from support.certs import issue_cert
from support.mitm import StripStarttlsProxy
from support.net import free_port
from support.server import Server
from support.wait import wait_for

pytestmark = pytest.mark.skipif(not knot.available(), reason="knotd is not installed (Debian package knot)")

PW = "secret-pw"
B_IP = "127.0.0.2"


def spki_sha256(cert_path) -> str:
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    spki = cert.public_key().public_bytes(serialization.Encoding.DER,
                                          serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(spki).hexdigest()


@pytest.fixture
def dane_world(tmp_path):
    """make(tlsa, mx_host, bogus_zones, insecure_zones) -> (a, b): the zone, then B and A."""
    made = []

    def make(tlsa=None, mx_host="mx.b.test", bogus_zones=(), insecure_zones=(), ca_names=None,
             extra_records=(), a_extra="", mx_ip=B_IP, port=None):
        if ca_names:
            # A leaf for ca_names signed by a CA of the test; B sends the CA in its chain.
            ca = issue_cert(tmp_path / "b-ca", ["Test CA"])
            cert, key, _ = issue_cert(tmp_path / "b-cert", ca_names, ca)
            cert.write_bytes(cert.read_bytes() + (tmp_path / "b-ca" / "cert.pem").read_bytes())
        else:
            cert, key, _ = issue_cert(tmp_path / "b-cert", ["other.example"])  # self-signed, wrong name
        port = port or free_port()
        records = [
            ("a.test", "MX", "10 mx.a.test."),
            ("mx.a.test", "A", "127.0.0.1"),
            ("b.test", "MX", f"10 {mx_host}."),
            (mx_host, "A", mx_ip),
        ]
        records += list(extra_records)
        for t in (tlsa(cert) if callable(tlsa) else tlsa or []):
            records.append((f"_25._tcp.{mx_host}", "TLSA", t))
        dns = knot.SignedDns(tmp_path / "knot", records, bogus_zones=bogus_zones,
                             insecure_zones=insecure_zones)
        b = Server(tmp_path / "b", dns.addr, domains=["b.test"], hostname="mx.b.test", host=B_IP,
                   ports={"smtp": port},
                   extra=f'[tls]\ncert = "{cert}"\nkey = "{key}"\n')
        a = Server(tmp_path / "a", dns.addr, domains=["a.test"], hostname="mx.a.test",
                   smtp={"allow_plaintext_auth": True},
                   dns={"dnssec": True, "trust_anchors": [str(dns.trust_anchor_file)]},
                   extra=f'[delivery]\nport = {port}\nretry = ["1s"]\n{a_extra}')
        made.append((a, b, dns))
        a.add_user("alice@a.test", PW)
        b.add_user("bob@b.test", PW)
        b.start()
        a.start()
        return a, b, cert

    yield make
    for a, b, dns in made:
        for s in (a, b):
            if s.running:
                s.stop(expect=0)
        dns.close()


def submit(a: Server, body: bytes):
    s = a.smtp("submission")
    s.ehlo()
    s.login("alice@a.test", PW)
    s.sendmail("alice@a.test", ["bob@b.test"], b"From: <alice@a.test>\r\nTo: <bob@b.test>\r\nSubject: dane\r\n\r\n" + body)
    s.quit()


def delivered(b: Server, needle: bytes):
    return [m for m in b.stored_messages("bob@b.test") if needle in m]


def queue(a: Server) -> str:
    return a.cli("queue", "list").stdout


def test_matching_tlsa_delivers_over_tls_checked_against_it(dane_world):
    """DANE-EE 3 1 1 with B's key: A delivers, over TLS it calls DANE verified, although no CA
    signed B's certificate and its name is another."""
    a, b, _ = dane_world(lambda cert: [f"3 1 1 {spki_sha256(cert)}"])
    submit(a, b"dane ok\r\n")
    wait_for(lambda: delivered(b, b"dane ok"), what="delivery under DANE")
    assert "DANE verified" in a.logs()


def test_full_certificate_and_sha512_records_match_too(dane_world):
    """3 0 1 (whole certificate, SHA-256) beside a non-matching 3 1 2: one match suffices."""
    def records(cert):
        der = x509.load_pem_x509_certificate(cert.read_bytes()).public_bytes(serialization.Encoding.DER)
        return [f"3 1 2 {secrets.token_hex(64)}", f"3 0 1 {hashlib.sha256(der).hexdigest()}"]

    a, b, _ = dane_world(records)
    submit(a, b"cert match\r\n")
    wait_for(lambda: delivered(b, b"cert match"), what="delivery under DANE")


def test_mismatching_tlsa_defers(dane_world):
    """A TLSA record for another key: A does not deliver (no fallback to unchecked TLS or
    clear text), retries, and the queue says why."""
    a, b, _ = dane_world([f"3 1 1 {secrets.token_hex(32)}"])
    submit(a, b"must not go\r\n")
    wait_for(lambda: "no TLSA record matches" in queue(a), what="the DANE failure in the queue")
    time.sleep(2.5)
    assert not delivered(b, b"must not go")
    assert "DANE" in queue(a)
    # The trace of the message says so too, attempt by attempt.
    rows = a.cli("trace", "--recipient", "bob@b.test").stdout.strip().splitlines()
    trace = a.cli("trace", rows[1].split()[0]).stdout
    assert len(re.findall(r"no TLSA record matches", trace)) >= 2, trace


def ca_spki_sha256(tmp_path) -> str:
    return spki_sha256(tmp_path / "b-ca" / "cert.pem")


@pytest.mark.parametrize("names,ok", [(["mx.b.test"], True), (["other.example"], False)])
def test_dane_ta_checks_the_chain_and_the_name(dane_world, tmp_path, names, ok):
    """DANE-TA 2 1 1 naming the CA that B sends in its chain: a leaf for mx.b.test under it is
    delivered to; a leaf for another name under the same CA is not (RFC 7672 §3.1.2)."""
    a, b, _ = dane_world(lambda cert: [f"2 1 1 {ca_spki_sha256(tmp_path)}"], ca_names=names)
    submit(a, b"dane-ta\r\n")
    if ok:
        wait_for(lambda: delivered(b, b"dane-ta"), what="delivery under DANE-TA")
    else:
        wait_for(lambda: "DANE-TA" in queue(a), what="the DANE-TA failure in the queue")
        assert not delivered(b, b"dane-ta")


def test_bogus_signatures_defer(dane_world):
    """The MX host lives in a zone whose DS matches no key (bogus): A defers rather than
    treating the host as unsigned."""
    a, b, cert = dane_world(lambda cert: [f"3 1 1 {spki_sha256(cert)}"], mx_host="mx.bogus.test",
                            bogus_zones=("bogus.test",))
    submit(a, b"bogus zone\r\n")
    wait_for(lambda: "bogus" in queue(a), what="the bogus answer in the queue")
    time.sleep(2)
    assert not delivered(b, b"bogus zone")
    assert re.search(r"DANE: .*mx\.bogus\.test.*bogus", queue(a)), queue(a)


def test_an_unsigned_zone_means_no_dane(dane_world):
    """The MX host's zone is unsigned (insecure, proven by NSEC): no DANE, so opportunistic
    TLS delivers even with a TLSA record that would not match."""
    a, b, _ = dane_world([f"3 1 1 {secrets.token_hex(32)}"], mx_host="mx.plain.test",
                         insecure_zones=("plain.test",))
    submit(a, b"no dane\r\n")
    wait_for(lambda: delivered(b, b"no dane"), what="opportunistic delivery")
    assert "DANE verified" not in a.logs()


def test_a_tlsa_flood_is_bounded(dane_world):
    """300 TLSA records, none matching: A reads at most 100, defers, and keeps serving."""
    a, b, _ = dane_world([f"3 1 1 {secrets.token_hex(32)}" for _ in range(300)])
    submit(a, b"flood\r\n")
    wait_for(lambda: "no TLSA record matches" in queue(a), what="the DANE failure", timeout=30)
    assert "(100 usable record(s))" in queue(a), queue(a)
    assert not delivered(b, b"flood")
    with a.smtp() as s:
        assert s.noop()[0] == 250


def test_dane_wins_over_mta_sts(dane_world, tmp_path):
    """b.test publishes both an enforce MTA-STS policy (served by an HTTPS server of the test
    with a certificate A trusts) and a TLSA record for mx.b.test. B's certificate is
    self-signed for another name, so MTA-STS alone would hold the message; DANE, which wins
    where both exist (RFC 8461 §2), accepts it and the message is delivered."""
    import http.server
    import ssl
    import threading

    ca = issue_cert(tmp_path / "policy-ca", ["Test CA"])
    pcert, pkey, _ = issue_cert(tmp_path / "policy-cert", ["mta-sts.b.test"], ca)
    body = b"version: STSv1\r\nmode: enforce\r\nmx: mx.b.test\r\nmax_age: 86400\r\n"
    fetched = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_GET(self):
            fetched.append(self.path)
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    port = free_port()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.5", port), Handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(pcert, pkey)
    httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        a, b, _ = dane_world(
            lambda cert: [f"3 1 1 {spki_sha256(cert)}"],
            extra_records=[("_mta-sts.b.test", "TXT", "v=STSv1; id=1"),
                           ("mta-sts.b.test", "A", "127.0.0.5")],
            a_extra=f'mta_sts_port = {port}\n[tls]\ntrust_roots = "{tmp_path / "policy-ca" / "cert.pem"}"\n')
        submit(a, b"both policies\r\n")
        wait_for(lambda: delivered(b, b"both policies"), what="delivery under DANE")
        assert fetched, "the MTA-STS policy was fetched"
        assert "DANE verified" in a.logs()
    finally:
        httpd.shutdown()


@pytest.mark.parametrize("stripped", [False, True])
def test_unusable_tlsa_records_still_make_tls_mandatory(dane_world, stripped):
    """Only a PKIX-EE record (usage 1, unusable for SMTP, RFC 7672 §3.1.3): the server says
    it does TLS but not how to check it, so A delivers over TLS without authentication, and
    when a man in the middle strips STARTTLS A does not deliver at all."""
    port = free_port()
    mitm = None
    if stripped:
        mitm = StripStarttlsProxy("127.0.0.4", port, B_IP)
    try:
        a, b, _ = dane_world([f"1 1 1 {secrets.token_hex(32)}"], port=port,
                             mx_ip="127.0.0.4" if stripped else B_IP)
        submit(a, b"unusable\r\n")
        if stripped:
            wait_for(lambda: "does not offer STARTTLS" in queue(a), what="the refusal to go in clear text")
            assert mitm.stripped >= 1 and not delivered(b, b"unusable")
            assert "TLS required, unauthenticated" in queue(a)
        else:
            raw = wait_for(lambda: delivered(b, b"unusable"), what="delivery over TLS")[0]
            received = re.search(rb"^Received: from .*?(?=\r\n\S)", raw, re.M | re.S).group(0)
            assert b"by mx.b.test" in received and b"ESMTPS" in received, received
    finally:
        if mitm:
            mitm.close()
