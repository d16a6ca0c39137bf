"""Inbound sender authentication: SPF, DKIM, DMARC, ARC and Authentication-Results.

A DNS server on loopback serves SPF, DKIM and DMARC records for a set of test domains (and
answers SERVFAIL for chosen names). Mail comes from chosen loopback source addresses
(127.0.0.X), so records like "v=spf1 ip4:127.0.0.5 -all" decide. Signatures and ARC seals
come from an independent implementation (dkimpy) and from Corvus's own outbound signer;
dkimpy also verifies, and Corvus's header results are checked against it.
"""

from __future__ import annotations

import base64
import hashlib
import re
import smtplib
import subprocess
import time

import dkim
import nacl.encoding
import nacl.signing
import pytest

from support.dns import DnsServer
from support.mail import without_return_path
from support.net import free_port
from support.server import Server
from support.wait import wait_for

PW = "secret-pw"
BOB = "bob@b.test"
HOST = "mx.b.test"


# --- keys -----------------------------------------------------------------------------------

def rsa_key() -> tuple[bytes, str]:
    """(PEM private key, base64 DER public key) from openssl, not from Corvus."""
    pem = subprocess.run(["openssl", "genrsa", "2048"], capture_output=True, check=True).stdout
    der = subprocess.run(["openssl", "rsa", "-pubout", "-outform", "DER"], input=pem,
                         capture_output=True, check=True).stdout
    return pem, base64.b64encode(der).decode()


def ed25519_key() -> tuple[bytes, str]:
    """(base64 seed as dkimpy wants it, base64 public key) from pynacl."""
    sk = nacl.signing.SigningKey.generate()
    return sk.encode(nacl.encoding.Base64Encoder), sk.verify_key.encode(nacl.encoding.Base64Encoder).decode()


def expired_signature(message: bytes, selector: bytes, domain: bytes, pem: bytes) -> bytes:
    """A DKIM-Signature made with dkimpy's own header code, with t= three days and x= two days
    ago (dkimpy's sign() has no x=)."""
    d = dkim.DKIM(message)
    pk = dkim.crypto.parse_pem_private_key(pem)
    canon = dkim.CanonicalizationPolicy.from_c_value(b"relaxed/simple")
    include = tuple(x.lower() for x in d.default_sign_headers())
    d.signature_algorithm = b"rsa-sha256"
    d.hasher = hashlib.sha256
    bh = base64.b64encode(hashlib.sha256(canon.canonicalize_body(d.body)).digest())
    now = int(time.time())
    fields = [
        (b"v", b"1"), (b"a", b"rsa-sha256"), (b"c", b"relaxed/simple"), (b"d", domain),
        (b"s", selector), (b"t", str(now - 3 * 86400).encode()), (b"x", str(now - 2 * 86400).encode()),
        (b"h", b" : ".join(include)), (b"bh", bh), (b"b", b"0" * 60),
    ]
    return b"DKIM-Signature: " + d.gen_header(fields, include, canon, b"DKIM-Signature", pk)


# --- messages and the Authentication-Results header ----------------------------------------

def message(frm: str, subject: str = "hello", body: str = "Hello there.\r\n", extra: str = "") -> bytes:
    return (
        f"From: <{frm}>\r\nTo: <{BOB}>\r\nSubject: {subject}\r\n"
        f"Date: Thu, 01 Jan 2026 00:00:00 +0000\r\nMessage-ID: <{time.time_ns()}@test>\r\n"
        f"{extra}\r\n{body}"
    ).encode()


def dkim_sign(msg: bytes, selector: str, domain: str, key: bytes, algo: bytes = b"rsa-sha256") -> bytes:
    return dkim.sign(msg, selector.encode(), domain.encode(), key, signature_algorithm=algo) + msg


def send(c: Server, mail_from: str, msg: bytes, source: str = "127.0.0.5", helo: str = "client.test",
         rcpt: str = BOB, port: int | None = None, host: str | None = None):
    """Send over the smtp listener from `source`; returns (code, text) of the end of data."""
    s = smtplib.SMTP(host or c.host, port or c.ports["smtp"], local_hostname=helo, timeout=30,
                     source_address=(source, 0))
    try:
        s.ehlo()
        code, text = s.mail(mail_from)
        if code != 250:
            return code, text.decode()
        code, text = s.rcpt(rcpt)
        assert code == 250, (code, text)
        code, text = s.data(msg)
        return code, text.decode()
    finally:
        try:
            s.quit()
        except smtplib.SMTPException:
            pass


def unfold(raw: bytes) -> str:
    head = raw.split(b"\r\n\r\n", 1)[0].decode("utf-8", "replace")
    return re.sub(r"\r\n[ \t]+", " ", head)


def our_results(raw: bytes, authserv: str = HOST) -> dict[str, list[str]]:
    """Parse our Authentication-Results: {method: [resinfo text, ...]} (comments removed)."""
    found = [l for l in unfold(raw).split("\r\n")
             if re.match(r"(?i)authentication-results:\s*%s\s*;" % re.escape(authserv), l)]
    assert len(found) == 1, f"expected one A-R from {authserv}:\n{unfold(raw)}"
    value = re.sub(r"\([^()]*\)", "", found[0].split(":", 1)[1])
    out: dict[str, list[str]] = {}
    for part in value.split(";")[1:]:
        part = re.sub(r"\s+", " ", part).strip()
        m = re.match(r"([a-z0-9-]+)=([a-z]+)(.*)", part)
        assert m, part
        out.setdefault(m.group(1), []).append(m.group(2) + m.group(3))
    return out


def result(raw: bytes, method: str, prop: str | None = None) -> str:
    """The result word of `method` (the resinfo with `prop` in it when several)."""
    for r in our_results(raw).get(method, []):
        if prop is None or prop in r:
            return r.split()[0]
    raise AssertionError(f"no {method} {prop or ''} in {our_results(raw)}")


def latest(c: Server, folder: str = "INBOX", user: str = BOB) -> bytes:
    uids = c.uids(user, folder)
    assert uids, f"nothing in {user} {folder}"
    return without_return_path(c.cat(user, folder, uids[-1]))


# --- the world ------------------------------------------------------------------------------

class World:
    def __init__(self, zone: DnsServer):
        self.zone = zone
        self.rsa_pem, rsa_pub = rsa_key()
        self.ed_priv, ed_pub = ed25519_key()
        self.arc_pem, arc_pub = rsa_key()
        z = zone.add
        # SPF
        z("spf-pass.test", "TXT", "v=spf1 ip4:127.0.0.5 -all")
        z("mail.spf-pass.test", "TXT", "v=spf1 ip4:127.0.0.5 -all")
        z("softfail.test", "TXT", "v=spf1 ip4:127.0.0.9 ~all")
        z("neutral.test", "TXT", "v=spf1 ?all")
        z("none.test", "A", "127.0.0.5")
        zone.fail("temperror.test")
        z("permerror.test", "TXT", "v=spf1 include -all")  # include needs a domain
        z("loop.test", "TXT", "v=spf1 include:loop.test -all")
        # Void lookups (RFC 7208 §4.6.4): names under void.test do not exist (NXDOMAIN). An
        # include of a name without SPF is a permerror by itself (§5.2), so the void terms
        # here are a, mx and exists.
        z("void3.test", "TXT", "v=spf1 a:nx1.void.test mx:nx2.void.test a:nx3.void.test ip4:127.0.0.5 -all")
        z("void3e.test", "TXT", "v=spf1 exists:nx1.void.test a:nx2.void.test exists:nx3.void.test ip4:127.0.0.5 -all")
        z("void2.test", "TXT", "v=spf1 a:nx1.void.test mx:nx2.void.test ip4:127.0.0.5 -all")
        # Two voids, then an exists that finds an address (not void): pass.
        z("void2e.test", "TXT", "v=spf1 exists:nx1.void.test a:nx2.void.test exists:none.test -all")
        # Three voids, but the match comes first: evaluation stops before the third.
        z("void-late.test", "TXT", "v=spf1 a:nx1.void.test mx:nx2.void.test ip4:127.0.0.5 a:nx3.void.test -all")
        # Voids reached through an include count too.
        z("void-inc.test", "TXT", "v=spf1 a:nx1.void.test include:void-inner.test -all")
        z("void-inner.test", "TXT", "v=spf1 a:nx2.void.test a:nx3.void.test ip4:127.0.0.5 -all")
        # DKIM signers: no SPF, DMARC p=none so the message is delivered and inspected.
        for d in ("dk.test", "mail.dk-align.test"):
            z(f"rsa._domainkey.{d}", "TXT", f"v=DKIM1; k=rsa; p={rsa_pub}")
            z(f"ed._domainkey.{d}", "TXT", f"v=DKIM1; k=ed25519; p={ed_pub}")
        z("_dmarc.dk.test", "TXT", "v=DMARC1; p=none")
        # DMARC
        z("_dmarc.dm-reject.test", "TXT", "v=DMARC1; p=reject")
        z("mail.dm-reject.test", "TXT", "v=spf1 ip4:127.0.0.5 -all")
        z("dm-reject.test", "TXT", "v=spf1 ip4:127.0.0.5 -all")
        z("_dmarc.dm-quar.test", "TXT", "v=DMARC1; p=quarantine")
        # pct= sampling (RFC 7489 §6.6.4): 0 and 100 decide every message the same way.
        z("_dmarc.dm-pct0.test", "TXT", "v=DMARC1; p=reject; pct=0")
        z("_dmarc.dm-qpct0.test", "TXT", "v=DMARC1; p=quarantine; pct=0")
        z("_dmarc.dm-pct100.test", "TXT", "v=DMARC1; p=reject; pct=100")
        z("_dmarc.dm-none.test", "TXT", "v=DMARC1; p=none")
        z("_dmarc.dm-strict.test", "TXT", "v=DMARC1; p=reject; aspf=s; adkim=s")
        z("sub.dm-strict.test", "TXT", "v=spf1 ip4:127.0.0.5 -all")
        z("_dmarc.dm-sp.test", "TXT", "v=DMARC1; p=none; sp=reject")
        z("_dmarc.dm-monitor.test", "TXT", "v=DMARC1; p=reject")
        z("_dmarc.dk-align.test", "TXT", "v=DMARC1; p=reject")
        # Independent ARC sealers (forwarders).
        for d in ("fwd.test", "fwd2.test"):
            z(f"arc._domainkey.{d}", "TXT", f"v=DKIM1; k=rsa; p={arc_pub}")
            z(d, "TXT", "v=spf1 ip4:127.0.0.7 -all")


@pytest.fixture(scope="module")
def zone():
    z = DnsServer(ttl=300)
    yield z
    z.close()


@pytest.fixture(scope="module")
def world(zone):
    return World(zone)


def make_receiver(base, zone, name="b", extra="", host="127.0.0.1", ports=None, domains=("b.test",),
                  hostname=HOST) -> Server:
    c = Server(base / name, zone.addr, domains=list(domains), hostname=hostname, host=host, ports=ports,
               smtp={"allow_plaintext_auth": True}, extra=extra)
    return c


@pytest.fixture(scope="module")
def mx(tmp_path_factory, zone, world):
    """The receiving server mx.b.test with bob@b.test, trusting fwd.test as an ARC sealer and
    only monitoring DMARC for dm-monitor.test."""
    extra = (
        "[sender_auth]\n"
        'trusted_arc_sealers = ["fwd.test"]\n'
        '[sender_auth.domains."dm-monitor.test"]\n'
        'dmarc = "monitor"\n'
    )
    c = make_receiver(tmp_path_factory.mktemp("mx"), zone, extra=extra)
    c.add_user(BOB, PW)
    c.start()
    yield c
    if c.running:
        c.stop(expect=0)


# --- SPF --------------------------------------------------------------------------------------

@pytest.mark.parametrize("sender,source,expected", [
    ("a@spf-pass.test", "127.0.0.5", "pass"),
    ("a@spf-pass.test", "127.0.0.6", "fail"),
    ("a@softfail.test", "127.0.0.5", "softfail"),
    ("a@neutral.test", "127.0.0.5", "neutral"),
    ("a@none.test", "127.0.0.5", "none"),
    ("a@temperror.test", "127.0.0.5", "temperror"),
    ("a@permerror.test", "127.0.0.5", "permerror"),
    ("a@loop.test", "127.0.0.5", "permerror"),  # include loop: stopped by the 10-lookup limit
    ("a@void3.test", "127.0.0.5", "permerror"),  # three void lookups (a, mx, a)
    ("a@void3e.test", "127.0.0.5", "permerror"),  # three void lookups (exists, a, exists)
    ("a@void-inc.test", "127.0.0.5", "permerror"),  # one void + two in the included record
    ("a@void2.test", "127.0.0.5", "pass"),  # two void lookups are allowed
    ("a@void2e.test", "127.0.0.5", "pass"),  # an exists that finds an address is not void
    ("a@void-late.test", "127.0.0.5", "pass"),  # matched before the third void lookup
])
def test_spf_results(mx, sender, source, expected):
    subject = f"spf {sender} {source}"
    code, text = send(mx, sender, message(sender, subject), source=source)
    assert code == 250, text
    raw = wait_for(lambda: next((m for m in mx.stored_messages(BOB) if subject.encode() in m), None),
                   what="delivery")
    assert result(raw, "spf", "smtp.mailfrom") == expected, our_results(raw)
    assert f"smtp.mailfrom={sender}" in our_results(raw)["spf"][0]


def test_spf_void_lookup_limit_is_explained(mx):
    sender = "x@void3.test"
    code, _ = send(mx, sender, message(sender, "void explained"))
    assert code == 250
    raw = latest(mx)
    assert b"void explained" in raw
    spf = [l for l in unfold(raw).split("\r\n") if l.startswith("Authentication-Results:")][0]
    assert "spf=permerror (mx.b.test: SPF record of x@void3.test is invalid: 3 void DNS lookups, more than 2" in spf, spf


def test_spf_helo_identity_and_null_sender(mx):
    code, _ = send(mx, "<>", message("x@none.test", "null sender"), helo="mail.spf-pass.test")
    assert code == 250
    raw = latest(mx)
    assert b"null sender" in raw
    res = our_results(raw)
    # No MAIL FROM identity: the HELO result is the SPF result.
    assert not any("smtp.mailfrom" in r for r in res["spf"]), res
    assert result(raw, "spf", "smtp.helo=mail.spf-pass.test") == "pass"
    code, _ = send(mx, "<>", message("x@none.test", "null sender bad helo"), helo="mail.spf-pass.test",
                   source="127.0.0.6")
    assert result(latest(mx), "spf", "smtp.helo") == "fail"


def test_spf_helo_address_literal_is_none_not_temperror(mx):
    """RFC 7208 §2.3: a HELO that is not a domain (an address literal) gets no HELO check:
    `none`, never `temperror` (issue 20, item 14)."""
    code, _ = send(mx, "<>", message("x@none.test", "literal helo"), helo="[127.0.0.5]")
    assert code == 250
    raw = latest(mx)
    assert b"literal helo" in raw
    assert result(raw, "spf", "smtp.helo") == "none", our_results(raw)


def test_spf_fail_is_accepted_by_default_and_refused_when_configured(tmp_path, zone, world):
    c = make_receiver(tmp_path, zone, extra="[sender_auth]\nspf_reject_fail = true\n")
    c.add_user(BOB, PW)
    c.start()
    s = smtplib.SMTP(c.host, c.ports["smtp"], local_hostname="client.test", source_address=("127.0.0.6", 0))
    s.ehlo()
    code, text = s.mail("a@spf-pass.test")
    assert code == 550 and text.startswith(b"5.7.23"), (code, text)
    # softfail and neutral are not hard fails
    code, _ = s.mail("a@softfail.test")
    assert code == 250
    s.rset()
    s.quit()
    code, _ = send(c, "a@spf-pass.test", message("a@spf-pass.test", "allowed"), source="127.0.0.5")
    assert code == 250
    c.stop()


# --- DKIM -------------------------------------------------------------------------------------

def dkim_case(world: World, case: str) -> bytes:
    msg = message("sender@dk.test", f"dkim {case}", body="Signed body.\r\nSecond line.\r\n")
    if case == "rsa":
        return dkim_sign(msg, "rsa", "dk.test", world.rsa_pem)
    if case == "ed25519":
        return dkim_sign(msg, "ed", "dk.test", world.ed_priv, b"ed25519-sha256")
    if case == "tampered-body":
        return dkim_sign(msg, "rsa", "dk.test", world.rsa_pem).replace(b"Second line.", b"Second line!")
    if case == "tampered-header":
        return dkim_sign(msg, "rsa", "dk.test", world.rsa_pem).replace(b"Subject: dkim tampered-header",
                                                                      b"Subject: dkim tampered-header!")
    if case == "expired":
        return expired_signature(msg, b"rsa", b"dk.test", world.rsa_pem) + msg
    if case == "missing-key":
        return dkim_sign(msg, "nokey", "dk.test", world.rsa_pem)
    raise ValueError(case)


@pytest.mark.parametrize("case,expected", [
    ("rsa", "pass"),
    ("ed25519", "pass"),
    ("tampered-body", "fail"),
    ("tampered-header", "fail"),
    ("expired", "fail"),
    ("missing-key", "permerror"),
])
def test_dkim_results_agree_with_dkimpy(mx, world, zone, case, expected):
    sent = dkim_case(world, case)
    code, text = send(mx, "sender@dk.test", sent)
    assert code == 250, text
    raw = wait_for(lambda: next((m for m in mx.stored_messages(BOB) if f"dkim {case}".encode() in m), None),
                   what="delivery")
    got = result(raw, "dkim")
    assert got == expected, our_results(raw)
    # The independent verifier agrees on pass / not pass, on what we received and on what
    # we stored (our added headers are not signed).
    assert dkim.verify(sent, dnsfunc=zone.resolve_txt) == (expected == "pass")
    assert dkim.verify(raw, dnsfunc=zone.resolve_txt) == (expected == "pass")
    dk = our_results(raw)["dkim"][0]
    assert "header.d=dk.test" in dk
    assert ("header.s=ed" if case == "ed25519" else "header.s=") in dk
    if case == "tampered-body":
        assert 'reason="body hash did not verify"' in dk
    if case == "expired":
        assert 'reason="signature expired"' in dk
    if case == "missing-key":
        assert 'reason="no key for signature"' in dk


def test_every_signature_is_verified(mx, world, zone):
    msg = message("sender@dk.test", "two signatures")
    once = dkim_sign(msg, "rsa", "dk.test", world.rsa_pem)
    twice = dkim.sign(once, b"ed", b"dk.test", world.ed_priv, signature_algorithm=b"ed25519-sha256") + once
    twice = dkim.sign(twice, b"nokey", b"dk.test", world.rsa_pem) + twice
    assert send(mx, "sender@dk.test", twice)[0] == 250
    raw = latest(mx)
    words = sorted(r.split()[0] for r in our_results(raw)["dkim"])
    assert words == ["pass", "pass", "permerror"], our_results(raw)


def test_no_signature_is_dkim_none(mx):
    assert send(mx, "a@none.test", message("a@none.test", "unsigned"))[0] == 250
    raw = latest(mx)
    assert result(raw, "dkim") == "none"
    assert result(raw, "dmarc") == "none"
    assert result(raw, "arc") == "none"


def test_one_plain_log_line_per_message_carries_the_results(mx):
    code, text = send(mx, "a@spf-pass.test", message("a@spf-pass.test", "log line"))
    assert code == 250
    queue_id = text.rsplit(" ", 1)[-1]
    logs = mx.logs()
    assert "\x1b[" not in logs, "ANSI colours in a log that is not a terminal"
    lines = [l for l in logs.splitlines() if queue_id in l]
    assert len(lines) == 1, lines
    for part in ("message accepted", "spf=pass", "dkim=none", "dmarc=", "arc=none",
                 "from=a@spf-pass.test"):
        assert part in lines[0], lines[0]


# --- DMARC ------------------------------------------------------------------------------------

def test_dmarc_reject_is_550_at_end_of_data(mx):
    before = len(mx.uids(BOB))
    # SPF passes for the envelope domain, but it is not aligned with From; no DKIM.
    code, text = send(mx, "a@spf-pass.test", message("boss@dm-reject.test", "phish"))
    assert code == 550 and text.startswith("5.7.1"), (code, text)
    assert "dm-reject.test" in text
    assert len(mx.uids(BOB)) == before
    assert all(b"Subject: phish" not in m for m in mx.stored_messages(BOB, "Junk"))


def test_dmarc_quarantine_files_into_junk(mx):
    code, text = send(mx, "a@spf-pass.test", message("boss@dm-quar.test", "quarantined"))
    assert code == 250, text
    raw = latest(mx, "Junk")
    assert b"Subject: quarantined" in raw
    assert result(raw, "dmarc") == "fail"
    assert "p=quarantine dis=quarantine" in unfold(raw)
    assert all(b"Subject: quarantined" not in m for m in mx.stored_messages(BOB))


def test_dmarc_none_policy_delivers_with_fail(mx):
    assert send(mx, "a@spf-pass.test", message("boss@dm-none.test", "p none"))[0] == 250
    raw = latest(mx)
    assert b"Subject: p none" in raw
    assert result(raw, "dmarc") == "fail"


def test_dmarc_pct_zero_applies_the_next_less_strict_policy(mx):
    # p=reject; pct=0: no message gets the policy, each one gets quarantine instead.
    code, text = send(mx, "a@spf-pass.test", message("boss@dm-pct0.test", "pct zero reject"))
    assert code == 250, (code, text)
    raw = latest(mx, "Junk")
    assert b"Subject: pct zero reject" in raw
    assert result(raw, "dmarc") == "fail"
    assert "(p=reject dis=quarantine pct=0 sampled-out)" in unfold(raw)
    # p=quarantine; pct=0: delivered to INBOX (policy none).
    code, text = send(mx, "a@spf-pass.test", message("boss@dm-qpct0.test", "pct zero quarantine"))
    assert code == 250, (code, text)
    raw = latest(mx)
    assert b"Subject: pct zero quarantine" in raw
    assert "(p=quarantine dis=none pct=0 sampled-out)" in unfold(raw)


def test_dmarc_pct_hundred_applies_the_policy(mx):
    before = len(mx.uids(BOB)), len(mx.uids(BOB, "Junk"))
    for i in range(3):
        code, text = send(mx, "a@spf-pass.test", message("boss@dm-pct100.test", f"pct hundred {i}"))
        assert code == 550 and text.startswith("5.7.1"), (code, text)
    assert (len(mx.uids(BOB)), len(mx.uids(BOB, "Junk"))) == before


@pytest.mark.parametrize("mail_from,frm,expected", [
    # Relaxed SPF alignment: envelope in a subdomain of the From domain.
    ("bounce@mail.dm-reject.test", "boss@dm-reject.test", "pass"),
    # Exact alignment.
    ("boss@dm-reject.test", "boss@dm-reject.test", "pass"),
])
def test_dmarc_spf_alignment_passes(mx, mail_from, frm, expected):
    subject = f"aligned {mail_from}"
    assert send(mx, mail_from, message(frm, subject))[0] == 250
    raw = latest(mx)
    assert subject.encode() in raw
    assert result(raw, "dmarc") == expected
    assert "header.from=dm-reject.test" in our_results(raw)["dmarc"][0]


def test_dmarc_strict_alignment_rejects_subdomain(mx):
    code, text = send(mx, "bounce@sub.dm-strict.test", message("boss@dm-strict.test", "strict"))
    assert code == 550, (code, text)


def test_dmarc_relaxed_dkim_alignment(mx, world):
    # d=mail.dk-align.test aligns (relaxed) with From: dk-align.test, which says p=reject.
    msg = dkim_sign(message("ceo@dk-align.test", "dkim aligned"), "rsa", "mail.dk-align.test", world.rsa_pem)
    code, text = send(mx, "a@none.test", msg)
    assert code == 250, text
    raw = latest(mx)
    assert result(raw, "dmarc") == "pass"
    assert result(raw, "dkim") == "pass"
    # Tampered: DKIM fails, SPF is not aligned → rejected.
    code, _ = send(mx, "a@none.test", msg.replace(b"Hello there.", b"Hello there!"))
    assert code == 550


def test_dmarc_subdomain_policy(mx):
    # No record at sub.dm-sp.test: the organizational domain's sp=reject applies.
    code, text = send(mx, "a@spf-pass.test", message("x@sub.dm-sp.test", "sp"))
    assert code == 550, (code, text)
    # The organizational domain itself has p=none.
    assert send(mx, "a@spf-pass.test", message("x@dm-sp.test", "p"))[0] == 250


def test_dmarc_per_domain_override_monitors(mx):
    code, text = send(mx, "a@spf-pass.test", message("boss@dm-monitor.test", "monitored"))
    assert code == 250, text
    raw = latest(mx)
    assert b"Subject: monitored" in raw
    assert result(raw, "dmarc") == "fail"
    assert "p=reject dis=none" in unfold(raw)


# --- Authentication-Results -------------------------------------------------------------------

def test_forged_results_removed_others_kept(mx):
    extra = (
        f"Authentication-Results: {HOST}; dkim=pass header.d=bank.test; dmarc=pass\r\n"
        f"Authentication-Results: {HOST.upper()}.;\r\n\tspf=pass\r\n"
        "Authentication-Results: elsewhere.test; spf=pass\r\n"
    )
    assert send(mx, "a@none.test", message("a@none.test", "forged", extra=extra))[0] == 250
    raw = latest(mx)
    head = unfold(raw)
    assert "header.d=bank.test" not in head
    assert len(re.findall(r"(?im)^authentication-results:\s*mx\.b\.test\.?\s*;", head)) == 1
    assert "Authentication-Results: elsewhere.test; spf=pass" in head
    # Ours is on top, before our Received.
    assert raw.startswith(b"Authentication-Results: mx.b.test;")
    assert raw.index(b"Received: ") > 0


def test_no_results_on_submission(mx):
    s = mx.smtp("submission")
    s.ehlo()
    s.login(BOB, PW)
    s.sendmail(BOB, [BOB], message(BOB, "from submission", extra=f"Authentication-Results: {HOST}; dkim=pass\r\n"))
    s.quit()
    raw = latest(mx)
    assert b"from submission" in raw
    assert raw.startswith(b"Received: ")
    # Submission keeps the user's headers as they are.
    assert raw.count(b"Authentication-Results:") == 1


def test_logged_in_client_on_smtp_gets_auth_result(tmp_path, zone, world):
    # AUTH on port 25 only when configured (smtp.auth_on_smtp).
    mx = make_receiver(tmp_path, zone)
    mx.smtp_cfg["auth_on_smtp"] = True
    mx.write_config()
    mx.add_user(BOB, PW)
    mx.start()
    try:
        s = mx.smtp("smtp")
        s.ehlo()
        s.login(BOB, PW)
        s.sendmail(BOB, [BOB], message(BOB, "smtp auth"))
        s.quit()
        raw = latest(mx)
        assert result(raw, "auth") == "pass"
        assert "smtp.auth=bob@b.test" in our_results(raw)["auth"][0]
        assert "spf" not in our_results(raw)
    finally:
        mx.stop(expect=None)  # its own server: not left running after the test


# --- ARC --------------------------------------------------------------------------------------

def arc_forward(world: World, original: bytes, sealer: str, results: str) -> bytes:
    """What a forwarder (mailing list) at `sealer` sends on: its Authentication-Results and
    an ARC set made by dkimpy."""
    pytest.importorskip("authres", reason="dkimpy's arc_sign needs the authres package")
    with_ar = f"Authentication-Results: {sealer}; {results}\r\n".encode() + original
    arc_set = dkim.arc_sign(with_ar, b"arc", sealer.encode(), world.arc_pem, sealer.encode())
    assert arc_set, "dkimpy made no ARC set"
    return b"".join(arc_set) + with_ar


def test_arc_chain_from_trusted_sealer_overrides_dmarc(mx, world, zone):
    # Forwarded by fwd.test (SPF passes for fwd.test, not aligned with From; no DKIM):
    # DMARC fails, but the ARC chain validates and fwd.test is trusted.
    original = message("boss@dm-reject.test", "via trusted list")
    fwd = arc_forward(world, original, "fwd.test", "spf=pass smtp.mailfrom=boss@dm-reject.test; dmarc=pass header.from=dm-reject.test")
    cv, _, why = dkim.arc_verify(fwd, dnsfunc=zone.resolve_txt)
    assert cv == dkim.CV_Pass, why
    code, text = send(mx, "list@fwd.test", fwd, source="127.0.0.7")
    assert code == 250, text
    raw = latest(mx)
    assert b"via trusted list" in raw
    assert result(raw, "arc") == "pass"
    assert result(raw, "dmarc") == "fail"
    assert "override=trusted ARC sealer fwd.test" in unfold(raw)
    assert "sealer=fwd.test" in unfold(raw)


def test_arc_chain_from_untrusted_sealer_does_not_override(mx, world):
    original = message("boss@dm-reject.test", "via untrusted list")
    fwd = arc_forward(world, original, "fwd2.test", "dmarc=pass header.from=dm-reject.test")
    code, text = send(mx, "list@fwd2.test", fwd, source="127.0.0.7")
    assert code == 550, (code, text)


def test_broken_arc_chain_fails_like_dkimpy(mx, world, zone):
    original = message("x@dm-none.test", "broken chain", body="Original body.\r\n")
    fwd = arc_forward(world, original, "fwd.test", "dmarc=pass header.from=dm-none.test")
    broken = fwd.replace(b"Original body.", b"Altered body.")
    cv, _, _ = dkim.arc_verify(broken, dnsfunc=zone.resolve_txt)
    assert cv == dkim.CV_Fail
    assert send(mx, "list@fwd.test", broken, source="127.0.0.7")[0] == 250
    raw = latest(mx)
    assert result(raw, "arc") == "fail"
    # Intact chain for comparison.
    assert send(mx, "list@fwd.test", fwd, source="127.0.0.7")[0] == 250
    assert result(latest(mx), "arc") == "pass"


# --- Two Corvus instances: outbound DKIM verified inbound; ARC sealing on forward -------------

@pytest.fixture
def sites(tmp_path, zone):
    """Site A (a.test, 127.0.0.1) delivering to site B (b.test on 127.0.0.2), both on the
    module's zone; B trusts a.test as an ARC sealer."""
    port = free_port()
    made = []
    a = Server(tmp_path / "a", zone.addr, domains=["a.test"], hostname="mx.a.test",
               smtp={"allow_plaintext_auth": True},
               extra=f'[delivery]\nport = {port}\nretry = ["1s"]\n')
    b = Server(tmp_path / "b2", zone.addr, domains=["b.test"], hostname=HOST, host="127.0.0.2",
               ports={"smtp": port}, smtp={"allow_plaintext_auth": True},
               extra='[sender_auth]\ntrusted_arc_sealers = ["a.test"]\n')
    made += [a, b]
    a.add_user("alice@a.test", PW)
    b.add_user(BOB, PW)
    if not zone.zone.get("b.test."):
        zone.add("b.test", "MX", "10 mx.b.test.")
        zone.add("mx.b.test", "A", "127.0.0.2")
        zone.add("a.test", "TXT", "v=spf1 ip4:127.0.0.1 -all")
        zone.add("_dmarc.a.test", "TXT", "v=DMARC1; p=reject")
        zone.add("spf-only.test", "TXT", "v=spf1 ip4:127.0.0.5 -all")
        zone.add("_dmarc.spf-only.test", "TXT", "v=DMARC1; p=reject")
    yield a, b
    for c in made:
        if c.running:
            c.stop(expect=0)


@pytest.mark.parametrize("algorithm", ["ed25519", "rsa"])
def test_corvus_signed_mail_passes_at_corvus(sites, zone, algorithm):
    a, b = sites
    selector = f"c{algorithm[:3]}"
    out = a.cli("dkim", "generate", "a.test", "--selector", selector, "--algorithm", algorithm).stdout
    zone.add(f"{selector}._domainkey.a.test", "TXT", re.search(r'IN TXT (".*")', out).group(1))
    a.start()
    b.start()
    s = a.smtp("submission")
    s.ehlo()
    s.login("alice@a.test", PW)
    s.sendmail("alice@a.test", [BOB], message("alice@a.test", f"from corvus {algorithm}"))
    s.quit()
    raw = wait_for(lambda: next(iter(b.stored_messages(BOB)), None), what="delivery to B")
    assert result(raw, "spf", "smtp.mailfrom") == "pass"
    assert result(raw, "dkim") == "pass"
    assert f"header.s={selector}" in our_results(raw)["dkim"][0]
    assert result(raw, "dmarc") == "pass"
    assert dkim.verify(raw, dnsfunc=zone.resolve_txt)


def test_alias_forward_is_arc_sealed_and_trusted_downstream(sites, zone):
    a, b = sites
    out = a.cli("dkim", "generate", "a.test", "--selector", "arcs", "--algorithm", "rsa").stdout
    zone.add("arcs._domainkey.a.test", "TXT", re.search(r'IN TXT (".*")', out).group(1))
    a.cli("alias", "add", "fwd@a.test", BOB)
    a.start()
    b.start()
    # spf-only.test: SPF passes at A (from 127.0.0.5), no DKIM, DMARC p=reject. At B the
    # forward comes from A's address, SPF fails and DMARC fails: only ARC tells B the truth.
    code, text = send(a, "news@spf-only.test", message("news@spf-only.test", "forward me").replace(
        f"To: <{BOB}>".encode(), b"To: <fwd@a.test>"), rcpt="fwd@a.test")
    assert code == 250, text
    raw = wait_for(lambda: next(iter(b.stored_messages(BOB)), None), timeout=30, what="forwarded to B")
    assert b"forward me" in raw
    # B saw A's seal, validated it, and trusted it over the failed DMARC.
    assert result(raw, "arc") == "pass", our_results(raw)
    assert result(raw, "spf", "smtp.mailfrom") == "fail"
    assert result(raw, "dmarc") == "fail"
    assert "override=trusted ARC sealer a.test" in unfold(raw)
    # A's own results travel in the ARC set and in its Authentication-Results.
    head = unfold(raw)
    assert re.search(r"ARC-Authentication-Results: i=1; mx\.a\.test;", head), head
    at_a = our_results(raw, "mx.a.test")
    assert at_a["spf"][0] == "pass smtp.mailfrom=news@spf-only.test", at_a
    assert at_a["dmarc"][0].startswith("pass"), at_a
    # An independent ARC verifier accepts Corvus's seal.
    cv, _, why = dkim.arc_verify(raw, dnsfunc=zone.resolve_txt)
    assert cv == dkim.CV_Pass, why


# --- DMARC aggregate reports ------------------------------------------------------------------

def test_dmarc_aggregate_report_sent_to_authorized_rua(tmp_path, zone, world):
    import email
    import email.policy
    import gzip
    import xml.etree.ElementTree as ET

    # rp.test asks for reports at bob@b.test (outside rp.test: b.test authorizes it) and at
    # spy@c.test (not authorized: gets nothing).
    zone.add("_dmarc.rp.test", "TXT", "v=DMARC1; p=quarantine; rua=mailto:bob@b.test,mailto:spy@c.test")
    zone.add("rp.test._report._dmarc.b.test", "TXT", "v=DMARC1")
    zone.add("rp.test", "TXT", "v=spf1 ip4:127.0.0.5 -all")
    c = make_receiver(tmp_path, zone, extra=(
        "[sender_auth.dmarc_reports]\nenabled = true\ninterval = \"4s\"\norg_name = \"B Test Mail\"\n"
    ))
    c.add_user(BOB, PW)
    c.start()
    # Two that pass (SPF aligned) from .5, one that fails from .6 (quarantined).
    for i in range(2):
        assert send(c, "a@rp.test", message("a@rp.test", f"rp pass {i}"), source="127.0.0.5")[0] == 250
    assert send(c, "a@rp.test", message("a@rp.test", "rp fail"), source="127.0.0.6")[0] == 250
    assert b"rp fail" in latest(c, "Junk")

    def reports():
        """Every report for rp.test so far, parsed (the three messages may straddle two
        periods); None until they account for all three messages."""
        found = []
        for raw in c.stored_messages(BOB):
            msg = email.message_from_bytes(raw, policy=email.policy.default)
            if not str(msg["Subject"]).startswith("Report Domain: rp.test "):
                continue
            parts = [p for p in msg.walk() if p.get_content_type() == "application/gzip"]
            assert len(parts) == 1
            found.append((msg, parts[0], ET.fromstring(gzip.decompress(parts[0].get_payload(decode=True)))))
        total = sum(int(r.findtext("row/count")) for _, _, x in found for r in x.findall("record"))
        return found if total >= 3 else None

    found = wait_for(reports, timeout=40, what="the aggregate report")
    rows: dict[str, list] = {}
    for msg, part, xml in found:
        assert "Submitter: B Test Mail Report-ID: <" in msg["Subject"]
        assert msg["To"].addresses[0].addr_spec == BOB and len(msg["To"].addresses) == 1  # spy@c.test did not authorize
        assert part.get_filename().startswith("B Test Mail!rp.test!")
        assert xml.findtext("policy_published/domain") == "rp.test"
        assert xml.findtext("policy_published/p") == "quarantine"
        assert xml.findtext("report_metadata/org_name") == "B Test Mail"
        for r in xml.findall("record"):
            rows.setdefault(r.findtext("row/source_ip"), []).append(r)
    assert set(rows) == {"127.0.0.5", "127.0.0.6"}
    assert sum(int(r.findtext("row/count")) for r in rows["127.0.0.5"]) == 2
    for ok in rows["127.0.0.5"]:
        assert ok.findtext("row/policy_evaluated/disposition") == "none"
        assert ok.findtext("row/policy_evaluated/spf") == "pass"
        assert ok.findtext("auth_results/spf/result") == "pass"
        assert ok.findtext("auth_results/spf/scope") == "mfrom"
    [bad] = rows["127.0.0.6"]
    assert bad.findtext("row/count") == "1"
    assert bad.findtext("row/policy_evaluated/disposition") == "quarantine"
    assert bad.findtext("row/policy_evaluated/spf") == "fail"
    assert bad.findtext("auth_results/spf/result") == "fail"
    assert bad.findtext("identifiers/header_from") == "rp.test"
    assert bad.findtext("identifiers/envelope_from") == "rp.test"
    c.stop()


# --- Hooks see the results and may decide ---------------------------------------------------

def test_script_sees_results_and_accept_overrides_dmarc(tmp_path, zone, world):
    script = tmp_path / "auth.rhai"
    script.write_text(
        "fn on_data(ctx) {\n"
        "    ctx.add_header(\"X-Script-Saw\", `spf=${ctx.spf} dkim=${ctx.dkim} dmarc=${ctx.dmarc}`);\n"
        "    if ctx.header(\"Subject\") == \"let me in\" { return accept(); }\n"
        "}\n"
    )
    c = make_receiver(tmp_path, zone, extra=f"[[hooks]]\nscript = {str(script)!r}\n".replace("'", '"'))
    c.add_user(BOB, PW)
    c.start()
    # p=reject and nothing aligned: refused, unless the script accepts it.
    code, _ = send(c, "a@spf-pass.test", message("boss@dm-reject.test", "keep out"))
    assert code == 550
    code, text = send(c, "a@spf-pass.test", message("boss@dm-reject.test", "let me in"))
    assert code == 250, text
    raw = latest(c)
    assert b"X-Script-Saw: spf=pass dkim=none dmarc=fail\r\n" in raw
    assert result(raw, "dmarc") == "fail"
    c.stop()


def test_script_decides_on_arc_and_dkim_domains(tmp_path, zone, world):
    """ctx.auth gives scripts the ARC result and sealer and the DKIM domains: this script trusts
    fwd2.test's ARC chain (the server does not) and files mail signed by dk.test (dkimpy)."""
    script = tmp_path / "auth.rhai"
    script.write_text(
        "fn on_data(ctx) {\n"
        "    let a = ctx.auth;\n"
        "    ctx.add_header(\"X-Script-Auth\", `${a.spf}/${a.spf_domain} ${a.dkim}/${a.dkim_domains} `\n"
        "        + `${a.dmarc}/${a.dmarc_domain}/${a.dmarc_policy} ${a.arc}/${a.arc_sealer} ${a.action}`);\n"
        "    if a.dmarc == \"fail\" && a.arc == \"pass\" && a.arc_sealer == \"fwd2.test\" { return accept(); }\n"
        "}\n"
        "fn on_delivery(ctx) {\n"
        "    if \"dk.test\" in ctx.auth.dkim_domains { ctx.file_into(\"Signed\"); }\n"
        "}\n"
    )
    c = make_receiver(tmp_path, zone, extra=f"[[hooks]]\nscript = {str(script)!r}\n".replace("'", '"'))
    c.add_user(BOB, PW)
    c.start()
    try:
        # An intact chain sealed by fwd2.test: DMARC p=reject fails, the script accepts.
        original = message("boss@dm-reject.test", "via fwd2 list", body="Original body.\r\n")
        fwd = arc_forward(world, original, "fwd2.test", "dmarc=pass header.from=dm-reject.test")
        assert dkim.arc_verify(fwd, dnsfunc=zone.resolve_txt)[0] == dkim.CV_Pass
        code, text = send(c, "list@fwd2.test", fwd, source="127.0.0.7")
        assert code == 250, (code, text)
        raw = latest(c)
        assert b"via fwd2 list" in raw
        assert (b"X-Script-Auth: pass/fwd2.test none/[] fail/dm-reject.test/reject pass/fwd2.test reject\r\n"
                in raw), unfold(raw)
        # The same chain broken: ARC fails, the script does not accept, DMARC rejects.
        broken = fwd.replace(b"Original body.", b"Altered body.")
        assert dkim.arc_verify(broken, dnsfunc=zone.resolve_txt)[0] == dkim.CV_Fail
        code, text = send(c, "list@fwd2.test", broken, source="127.0.0.7")
        assert code == 550, (code, text)
        # Signed by dk.test (dkimpy, ed25519): filed into Signed; unsigned stays in INBOX.
        signed = dkim_sign(message("sender@dk.test", "signed by dk"), "ed", "dk.test", world.ed_priv,
                           b"ed25519-sha256")
        assert send(c, "sender@dk.test", signed)[0] == 250
        raw = latest(c, "Signed")
        assert b"signed by dk" in raw
        assert b"X-Script-Auth: none/dk.test pass/[\"dk.test\"] pass/dk.test/none none/ accept\r\n" in raw, unfold(raw)
        assert send(c, "sender@dk.test", message("sender@dk.test", "not signed"))[0] == 250
        assert b"not signed" in latest(c)
        assert all(b"not signed" not in m for m in c.stored_messages(BOB, "Signed"))
    finally:
        c.stop()
