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

    def make(tlsa=None, mx_host="mx.b.test", bogus_zones=(), insecure_zones=()):
        cert, key, _ = issue_cert(tmp_path / "b-cert", ["other.example"])  # self-signed, wrong name
        port = free_port()
        records = [
            ("a.test", "MX", "10 mx.a.test."),
            ("mx.a.test", "A", "127.0.0.1"),
            ("b.test", "MX", f"10 {mx_host}."),
            (mx_host, "A", B_IP),
        ]
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
                   extra=f'[delivery]\nport = {port}\nretry = ["1s"]\n')
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
