"""ACME (RFC 8555) against Pebble, the Let's Encrypt test CA (Debian package `pebble`), with
the test's DNS server on loopback as Pebble's resolver (issue 26).

Pebble serves its directory over TLS with a certificate from the test's own CA, which Corvus
trusts through `[tls] trust_roots`; it validates TLS-ALPN-01 on Corvus' `https` port and
HTTP-01 on its `http` port (Pebble's `tlsPort`/`httpPort`). The certificate Corvus then
presents on IMAPS and SMTPS is checked by Python's ssl (OpenSSL) against Pebble's own root,
fetched from Pebble's management interface. A short `certificateValidityPeriod` makes
Corvus renew while an IMAP IDLE session stays connected. Two nodes over one PostgreSQL
database (127.0.0.1 and 127.0.0.2, the same ports) order one certificate between them and
both present it; Pebble reaches the name at the first node only, which answers HTTP-01 from
the store when the second one is ordering.
"""

import hashlib
import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import time
import urllib.request

import pytest

from support.certs import issue_cert
from support.clients import PASSWORD
from support.dns import DnsServer
from support.net import free_port, port_open
from support.postgres import Postgres
from support.server import Server, stop_all
from support.wait import wait_for

PEBBLE = shutil.which("pebble")
NAME = "mail.acme.test"
pytestmark = pytest.mark.skipif(not PEBBLE, reason="pebble is not installed (apt-get install pebble)")


class Pebble:
    """A Pebble of the test's own: ACME on 127.0.0.1:port (certificate for localhost from
    the test CA), management on mgmt_port, validating on the given ports through `dns`."""

    def __init__(self, tmp, dns_addr, http_port, tls_port, validity=None):
        self.ca = issue_cert(tmp / "ca", ["Test CA"])
        cert, key, _ = issue_cert(tmp / "pebble-cert", ["localhost"], self.ca)
        self.port, self.mgmt = free_port(), free_port()
        cfg = {
            "listenAddress": f"127.0.0.1:{self.port}",
            "managementListenAddress": f"127.0.0.1:{self.mgmt}",
            "certificate": str(cert),
            "privateKey": str(key),
            "httpPort": http_port,
            "tlsPort": tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": False,
        }
        if validity:
            cfg["certificateValidityPeriod"] = validity
        path = tmp / "pebble.json"
        path.write_text(json.dumps({"pebble": cfg}))
        env = dict(os.environ, PEBBLE_VA_NOSLEEP="1", PEBBLE_WFE_NONCEREJECT="0")
        self.log = open(tmp / "pebble.log", "wb")
        self.proc = subprocess.Popen([PEBBLE, "-config", str(path), "-dnsserver", dns_addr],
                                     stdout=self.log, stderr=subprocess.STDOUT, env=env, cwd=tmp)
        wait_for(lambda: port_open(self.port) and port_open(self.mgmt), what="pebble listening")
        self.tmp = tmp

    @property
    def directory(self):
        return f"https://localhost:{self.port}/dir"

    def root_pem(self) -> str:
        """Pebble's issuing root (made anew at each start)."""
        ctx = ssl.create_default_context(cafile=str(self.tmp / "ca" / "cert.pem"))
        with urllib.request.urlopen(f"https://localhost:{self.mgmt}/roots/0", context=ctx) as r:
            return r.read().decode()

    def stop(self):
        self.proc.terminate()
        self.proc.wait(10)
        self.log.close()


@pytest.fixture
def acme_site(tmp_path):
    """(make, zone): make(challenge, validity) starts Pebble and a Corvus using it."""
    zone = DnsServer(ttl=0)
    zone.add(NAME, "A", "127.0.0.1")
    made = []

    def make(challenge, validity=None, directory=None):
        http_port, https_port = free_port(), free_port()
        pebble = Pebble(tmp_path, zone.addr, http_port, https_port, validity)
        directory = directory or pebble.directory
        srv = Server(tmp_path / "corvus", zone.addr, hostname=NAME, domains=["acme.test"],
                     listeners=("smtp", "submissions", "imaps"),
                     ports=None,
                     extra=f'[tls]\ntrust_roots = "{tmp_path / "ca" / "cert.pem"}"\n'
                           f'[acme]\ndirectory = "{directory}"\nemail = "postmaster@acme.test"\n'
                           f'domains = ["{NAME}"]\nchallenge = "{challenge}"\n')
        srv.ports.update(http=http_port, https=https_port)
        srv.write_config()
        made.append((srv, pebble))
        srv.start()
        return srv, pebble

    yield make, zone
    for srv, pebble in made:
        if srv.running:
            srv.stop(expect=0)
        pebble.stop()
    zone.close()


def presented(port: int, root_pem: str, host: str = "127.0.0.1") -> ssl.SSLSocket:
    """A TLS connection to host:port for NAME, verified against `root_pem` only."""
    ctx = ssl.create_default_context(cadata=root_pem)
    ctx.check_hostname = True
    s = socket.create_connection((host, port), timeout=10)
    return ctx.wrap_socket(s, server_hostname=NAME)


def serial(port: int, root_pem: str) -> int:
    with presented(port, root_pem) as s:
        der = s.getpeercert(binary_form=True)
    from cryptography import x509
    return x509.load_der_x509_certificate(der).serial_number


@pytest.mark.parametrize("challenge", ["tls-alpn-01", "http-01"])
def test_certificate_obtained_and_presented(acme_site, challenge):
    """Corvus registers, answers the challenge, gets a certificate, and its IMAPS and SMTPS
    listeners present it: an OpenSSL client that trusts only Pebble's root verifies it for
    mail.acme.test. Before that the self-signed certificate fails that client."""
    make, _ = acme_site
    srv, pebble = make(challenge)
    wait_for(lambda: "acme: certificate obtained and installed" in srv.logs(), what="the certificate", timeout=90)
    assert "acme: account registered" in srv.logs()
    root = pebble.root_pem()
    for listener in ("imaps", "submissions"):
        with presented(srv.ports[listener], root) as s:
            cert = s.getpeercert()
            assert ("DNS", NAME) in cert["subjectAltName"], cert
    # The stored certificate survives a restart: presented at once, no new order.
    srv.stop(expect=0)
    srv.start()
    with presented(srv.ports["imaps"], root):
        pass
    assert "acme: stored certificate installed" in srv.logs()


def test_an_unreachable_ca_is_retried_and_the_server_keeps_serving(acme_site):
    """With a directory nobody answers at, the server serves with its self-signed
    certificate (which Pebble's root does not verify), logs the failure with the retry
    delay (1 minute, doubling), and stays up."""
    make, _ = acme_site
    srv, pebble = make("tls-alpn-01", directory=f"https://localhost:{free_port()}/dir")
    wait_for(lambda: "acme: could not obtain a certificate" in srv.logs(), what="the failure", timeout=60)
    assert "retry_in=60s" in srv.logs(), srv.logs()[-2000:]
    with pytest.raises(ssl.SSLError):
        presented(srv.ports["imaps"], pebble.root_pem()).close()
    with srv.smtp() as s:
        assert s.noop()[0] == 250


def test_renewed_while_an_idle_session_stays_connected(acme_site):
    """A 45-second certificate is renewed at two thirds of its life: new handshakes get a new
    certificate (another serial), while an IMAP IDLE session opened before stays up and
    still hears a new message."""
    make, _ = acme_site
    srv, pebble = make("tls-alpn-01", validity=45)
    wait_for(lambda: "acme: certificate obtained and installed" in srv.logs(), what="the certificate", timeout=90)
    root = pebble.root_pem()
    first = serial(srv.ports["imaps"], root)
    user = srv.add_user("idler@acme.test")
    idle = presented(srv.ports["imaps"], root)
    f = idle.makefile("rb")
    assert f.readline().startswith(b"* OK")
    idle.sendall(b"a LOGIN idler@acme.test \"%s\"\r\n" % PASSWORD.encode())
    while not (line := f.readline()).startswith(b"a "):
        pass
    assert line.startswith(b"a OK"), line
    idle.sendall(b"b SELECT INBOX\r\nc IDLE\r\n")
    while not f.readline().startswith(b"+"):
        pass
    wait_for(lambda: srv.logs().count("acme: certificate obtained and installed") >= 2,
             what="the renewal", timeout=90)
    assert "acme: renewing the certificate" in srv.logs()
    second = serial(srv.ports["imaps"], root)
    assert second != first
    # The IDLE session opened under the old certificate is still there and hears mail.
    s = srv.smtp()
    s.sendmail("someone@example.net", [user], b"Subject: after renewal\r\n\r\nhi\r\n")
    s.quit()
    idle.settimeout(20)
    deadline = time.time() + 20
    heard = b""
    while time.time() < deadline and b"EXISTS" not in heard:
        heard = f.readline()
    assert b"EXISTS" in heard, heard
    idle.sendall(b"DONE\r\n")
    idle.close()


# --- two nodes over one store -----------------------------------------------------------


def leaf(host: str, port: int, root_pem: str) -> bytes | None:
    """The DER certificate host:port presents for NAME if it verifies against `root_pem`
    (None while it does not: the self-signed one)."""
    try:
        with presented(port, root_pem, host) as s:
            return s.getpeercert(binary_form=True)
    except ssl.SSLError:
        return None


@pytest.fixture
def acme_pair(tmp_path):
    """(a, b, pebble): two Corvus nodes, not started, on 127.0.0.1 and 127.0.0.2 with the
    same port numbers, over one PostgreSQL database of the test's own (whatever
    CORVUS_E2E_STORE says, as in test_multinode.py; its schema made), both with
    `[acme] challenge = "http-01"` for NAME, and one Pebble validating on their `http`
    port. The test's DNS zone puts NAME at 127.0.0.1 (node a) only."""
    zone = DnsServer(ttl=0)
    zone.add(NAME, "A", "127.0.0.1")
    pg = Postgres()
    pebble, nodes = None, []
    try:
        url = pg.database()
        ports = {name: free_port() for name in ("smtp", "submissions", "imaps", "http", "https")}
        pebble = Pebble(tmp_path, zone.addr, ports["http"], ports["https"])
        extra = (f'[tls]\ntrust_roots = "{tmp_path / "ca" / "cert.pem"}"\n'
                 f'[acme]\ndirectory = "{pebble.directory}"\nemail = "postmaster@acme.test"\n'
                 f'domains = ["{NAME}"]\nchallenge = "http-01"\n')
        for name, host in (("node-a", "127.0.0.1"), ("node-b", "127.0.0.2")):
            nodes.append(Server(tmp_path / name, zone.addr, hostname=NAME, domains=["acme.test"],
                                host=host, ports=dict(ports), shutdown_timeout="5s", extra=extra,
                                store={"backend": "postgres", "url": url, "pool_size": 4}))
        nodes[0].cli("store", "migrate")
        yield nodes[0], nodes[1], pebble
        stop_all(nodes)
    finally:
        for n in nodes:
            if n.running:
                n.kill()
        if pebble:
            pebble.stop()
        pg.close()
        zone.close()


def pebble_log(pebble: Pebble) -> str:
    return (pebble.tmp / "pebble.log").read_text(errors="replace")


def test_two_nodes_share_one_certificate_and_one_order(acme_pair):
    """Two nodes over one store with HTTP-01, started together: one takes the ordering lock
    and orders, the other waits for it and installs the stored certificate, so Pebble sees
    one order and issues one certificate, which both nodes present (same serial and
    fingerprint) on IMAPS and SMTPS. Pebble reaches NAME at node a only, so when node b
    is the one ordering, node a answers the challenge from the store. Node b restarted
    alone presents the stored certificate at once, with no new order."""
    a, b, pebble = acme_pair
    # Started together; b a moment first, so that it is more often the one ordering and a
    # answers its challenge from the store (which node takes the lock is a race: the
    # output says which did).
    started = time.monotonic()
    for n in (b, a):
        n.start(wait=False)
    for n in (b, a):
        n.wait_ready(list(n.ports.values()))
    root = pebble.root_pem()

    def both_present():
        return all(leaf(n.host, n.ports[listener], root)
                   for n in (a, b) for listener in ("imaps", "submissions"))

    try:
        wait_for(both_present, what="both nodes presenting a certificate from Pebble",
                 timeout=75, interval=1)
    except AssertionError:
        raise AssertionError(f"after {time.monotonic() - started:.0f}s:\n"
                             f"--- node a ---\n{a.logs()[-3000:]}\n--- node b ---\n{b.logs()[-3000:]}\n"
                             f"--- pebble ---\n{pebble_log(pebble)[-3000:]}") from None
    took = time.monotonic() - started

    # One order, one certificate.
    log = pebble_log(pebble)
    assert log.count("POST /order-plz") == 1, log
    issued = re.findall(r"Issued certificate serial ([0-9a-f]+) for order", log)
    assert len(issued) == 1, log

    # Both nodes present that certificate on both listeners.
    from cryptography import x509
    seen = {}
    for n in (a, b):
        for listener in ("imaps", "submissions"):
            der = leaf(n.host, n.ports[listener], root)
            cert = x509.load_der_x509_certificate(der)
            seen[(n.host, listener)] = (cert.serial_number, hashlib.sha256(der).hexdigest())
    assert len(set(seen.values())) == 1, seen
    shared = leaf(a.host, a.ports["imaps"], root)
    assert next(iter(seen.values()))[0] == int(issued[0], 16), (seen, issued)

    # Exactly one node ordered; the other waited and installed the stored certificate.
    logs = {"a": a.logs(), "b": b.logs()}
    ordered = [k for k, v in logs.items() if "acme: certificate obtained and installed" in v]
    assert len(ordered) == 1, logs
    orderer = ordered[0]
    waiter = "b" if orderer == "a" else "a"
    assert logs[orderer].count("acme: certificate obtained and installed") == 1, logs[orderer]
    assert "acme: another node is ordering the certificate; waiting for it" in logs[waiter], logs[waiter]
    assert "acme: certificate installed" in logs[waiter], logs[waiter]
    # Pebble validated at node a (the only address of NAME) whoever ordered.
    assert f"http://{NAME}:{a.ports['http']}/.well-known/acme-challenge/" in log, log
    print(f"node {orderer} ordered; both presented the certificate after {took:.0f}s")

    # Node b restarted alone: the stored certificate at once, no new order.
    b.stop(expect=0)
    before = {m: b.logs().count(m) for m in ("acme: stored certificate installed",
                                             "acme: certificate installed",
                                             "acme: certificate obtained and installed")}
    b.start()
    assert leaf(b.host, b.ports["imaps"], root) == shared
    assert b.logs().count("acme: stored certificate installed") == before["acme: stored certificate installed"] + 1, b.logs()
    # Its certificate task has looked at the store, and found nothing to order.
    wait_for(lambda: b.logs().count("acme: certificate installed") > before["acme: certificate installed"],
             what="node b's certificate task", timeout=20)
    time.sleep(1)
    log = pebble_log(pebble)
    assert log.count("POST /order-plz") == 1, log
    assert len(re.findall(r"Issued certificate serial", log)) == 1, log
    assert b.logs().count("acme: certificate obtained and installed") == before["acme: certificate obtained and installed"], b.logs()
