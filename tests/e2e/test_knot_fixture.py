"""The signed DNS fixture of the DANE tests (support/knot.py), checked with a validator we did
not write: BIND's delv, given the fixture's root trust anchor and the fixture as its only
server. A TLSA answer under the root validates, a name under a bogus zone does not, a
NXDOMAIN comes with its NSEC proof and validates as a negative answer, and an answer under an
insecure zone is unsigned (provably so)."""

from __future__ import annotations

import re
import shutil
import subprocess

import dns.rcode
import dns.rdatatype
import pytest

from support import knot

DELV = shutil.which("delv")

pytestmark = [
    pytest.mark.skipif(not knot.available(), reason="knotd is not installed (Debian package knot)"),
    pytest.mark.skipif(DELV is None, reason="delv is not installed (Debian package bind9-dnsutils)"),
]

TLSA_HEX = "3f" * 32
RECORDS = [
    ("b.test", "MX", "10 mx.b.test."),
    ("mx.b.test", "A", "127.0.0.1"),
    ("_25._tcp.mx.b.test", "TLSA", f"3 1 1 {TLSA_HEX}"),
    ("bogus.test", "MX", "10 mx.bogus.test."),
    ("mx.bogus.test", "A", "127.0.0.1"),
    ("_25._tcp.mx.bogus.test", "TLSA", f"3 1 1 {TLSA_HEX}"),
    ("mx.plain.test", "A", "127.0.0.1"),
    ("_25._tcp.mx.plain.test", "TLSA", f"3 1 1 {TLSA_HEX}"),
]


@pytest.fixture(scope="module")
def signed(tmp_path_factory):
    d = knot.SignedDns(tmp_path_factory.mktemp("knot"), RECORDS, bogus_zones=["bogus.test"],
                       insecure_zones=["plain.test"])
    yield d
    d.close()


def bind_anchors(path, anchor_file) -> str:
    """The fixture's trust anchor (zone file lines) in delv's `trust-anchors` syntax."""
    lines = []
    for line in anchor_file.read_text().splitlines():
        name, _ttl, _class, _type, flags, proto, alg, key = line.split()
        lines.append(f'  "{name}" static-key {flags} {proto} {alg} "{key}";')
    path.write_text("trust-anchors {\n" + "\n".join(lines) + "\n};\n")
    return str(path)


def delv(signed, anchors: str, name: str, rtype: str) -> str:
    """delv's whole output (it exits 0 whether or not validation succeeds)."""
    host, port = signed.addr.split(":")
    r = subprocess.run([DELV, f"@{host}", "-p", port, "-a", anchors, "+root=.", name, rtype],
                       capture_output=True, text=True, timeout=30)
    return r.stdout + r.stderr


@pytest.fixture(scope="module")
def anchors(signed, tmp_path_factory):
    return bind_anchors(tmp_path_factory.mktemp("delv") / "anchors.conf", signed.trust_anchor_file)


def test_trust_anchor_file_is_root_dnskey_lines(signed):
    """One `. TTL IN DNSKEY 257 3 13 <base64>` line per key: what hickory's
    `TrustAnchors::from_file` parses (base64 in one token, no comments, no $ directives)."""
    lines = signed.trust_anchor_file.read_text().splitlines()
    assert lines
    for line in lines:
        assert re.fullmatch(r"\. \d+ IN DNSKEY 257 3 13 [A-Za-z0-9+/]+=*", line), line


def test_tlsa_under_root_validates(signed, anchors):
    out = delv(signed, anchors, "_25._tcp.mx.b.test", "TLSA")
    assert "; fully validated" in out, out
    assert re.search(r"_25\._tcp\.mx\.b\.test\.\s+60\s+IN\s+TLSA\s+3 1 1 ", out), out
    out = delv(signed, anchors, "b.test", "MX")
    assert "; fully validated" in out and "10 mx.b.test." in out, out


def test_name_under_bogus_zone_fails_validation(signed, anchors):
    for name, rtype in [("_25._tcp.mx.bogus.test", "TLSA"), ("bogus.test", "MX"),
                        ("nothing.bogus.test", "A")]:
        out = delv(signed, anchors, name, rtype)
        assert "fully validated" not in out, out
        assert "resolution failed: broken trust chain" in out, out
    # The server itself answers: it is the chain of trust that is broken.
    r = signed.query("_25._tcp.mx.bogus.test", "TLSA")
    assert r.rcode() == dns.rcode.NOERROR
    assert any(rr.rdtype == dns.rdatatype.TLSA for rr in r.answer)


def test_nxdomain_has_nsec_proof_that_validates(signed, anchors):
    r = signed.query("nothing.b.test", "TLSA")
    assert r.rcode() == dns.rcode.NXDOMAIN
    types = {rr.rdtype for rr in r.authority}
    assert {dns.rdatatype.NSEC, dns.rdatatype.RRSIG, dns.rdatatype.SOA} <= types, r
    out = delv(signed, anchors, "nothing.b.test", "TLSA")
    assert "; negative response, fully validated" in out and "NXDOMAIN" in out, out
    # NODATA too: a name that exists, without the type asked.
    r = signed.query("mx.b.test", "TLSA")
    assert r.rcode() == dns.rcode.NOERROR and not r.answer
    assert dns.rdatatype.NSEC in {rr.rdtype for rr in r.authority}, r
    out = delv(signed, anchors, "mx.b.test", "TLSA")
    assert "; negative response, fully validated" in out and "NXRRSET" in out, out


def test_a_key_other_than_the_anchor_validates_nothing(signed, tmp_path):
    """The control: delv's verdict does come from the fixture's anchor."""
    other = knot.SignedDns(tmp_path / "other", [("x.test", "A", "127.0.0.1")])
    try:
        wrong = bind_anchors(tmp_path / "wrong.conf", other.trust_anchor_file)
    finally:
        other.close()
    out = delv(signed, wrong, "_25._tcp.mx.b.test", "TLSA")
    assert "fully validated" not in out, out
    assert "resolution failed" in out, out


def test_name_under_insecure_zone_is_unsigned(signed, anchors):
    """Delegated without DS (proven by the root's NSEC): delv accepts the answer as
    unsigned, neither validated nor broken."""
    r = signed.query("_25._tcp.mx.plain.test", "TLSA")
    assert not any(rr.rdtype == dns.rdatatype.RRSIG for rr in r.answer), r
    out = delv(signed, anchors, "_25._tcp.mx.plain.test", "TLSA")
    assert "; unsigned answer" in out, out
    assert "fully validated" not in out and "resolution failed" not in out, out
