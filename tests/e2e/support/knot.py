"""A DNSSEC-signed authoritative DNS server on loopback, for the DANE tests (RFC 7672): Knot
DNS from Debian's packages (knot), started by the test with a private config and stopped at
the end. `available()` says whether knotd is installed.

`SignedDns(tmp_dir, records)` serves the root zone "." holding `records`, `(name, type,
text)` tuples in presentation format as for `DnsServer.add` ("10 mx.b.test." for MX,
"3 1 1 <hex>" for TLSA). Knot signs it on load (one ECDSA P-256 key, algorithm 13, as
single-type signing key, with NSEC): positive answers carry RRSIGs, NXDOMAIN and NODATA carry
NSEC proofs. `trust_anchor_file` holds the root's DNSKEY as a resolver's trust anchor
(`. TTL IN DNSKEY 257 3 13 <base64>`, one record a line, what hickory's
`TrustAnchors::from_file` reads), so a validating resolver with that anchor and `addr` as
its only name server finds these answers Secure.

Each name of `bogus_zones` ("bogus.test") is a child zone of its own, signed with its own
key, while the root delegates it with a DS matching no key: every answer at or under it is
Bogus to such a resolver. Each name of `insecure_zones` is an unsigned child zone, delegated
without DS (the root's NSEC proves there is none): its answers are Insecure. The records at
or under such a name go into that zone.

Knot answers a DS question at a child's apex from the parent zone, and anything else from
the deepest zone it serves, so one server on one port plays both root and child. The name
"localhost." (the zones' NS, 127.0.0.1) is the fixture's own. `query(name, type)` asks it
directly (dnspython, DO bit set); `close()` stops it. Start and stop take about 0.25 s.
"""

from __future__ import annotations

import base64
import os
import pathlib
import secrets
import shutil
import signal
import subprocess
import time
import weakref

import dns.exception
import dns.flags
import dns.message
import dns.query
import dns.rdatatype

from .net import free_port

KNOTD = shutil.which("knotd") or "/usr/sbin/knotd"


def available() -> bool:
    return os.path.exists(KNOTD)


def _fqdn(name: str) -> str:
    return name.lower().rstrip(".") + "."


def _under(name: str, zone: str) -> bool:
    return name == zone or name.endswith("." + zone)


def _stop(proc: subprocess.Popen):
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _quote_txt(text: str) -> str:
    """TXT text as DnsServer.add takes it: quoted here unless already quoted."""
    if text.startswith('"'):
        return text
    return " ".join('"%s"' % text[i:i + 250] for i in range(0, len(text), 250))


class SignedDns:
    """knotd on 127.0.0.1 (`addr` is "127.0.0.1:PORT", UDP and TCP), its files in `tmp_dir`;
    answers are signed and `ttl` is the TTL of every record (and the negative TTL)."""

    def __init__(self, tmp_dir, records, bogus_zones=(), insecure_zones=(), ttl: int = 60):
        self.dir = pathlib.Path(tmp_dir) / "knot"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.ttl = ttl
        self.port = free_port()
        self.addr = "127.0.0.1:%d" % self.port
        self.bogus_zones = {_fqdn(z) for z in bogus_zones}
        self.insecure_zones = {_fqdn(z) for z in insecure_zones}
        # Deepest first: a record goes into the deepest zone it falls under.
        children = sorted(self.bogus_zones | self.insecure_zones, key=len, reverse=True)
        self.log = self.dir / "knotd.log"
        self.trust_anchor_file = self.dir / "root.anchor"

        zones: dict[str, list[str]] = {".": []}
        zones.update((z, []) for z in children)
        for z in children:
            # The delegation, in the deepest zone above.
            parent = next((p for p in children if p != z and _under(z, p)), ".")
            zones[parent].append(f"{z} {ttl} IN NS localhost.")
            if z in self.bogus_zones:
                # A DS of a supported algorithm and digest type that matches none of the
                # child's keys.
                zones[parent].append(
                    f"{z} {ttl} IN DS {secrets.randbelow(65536)} 13 2 {secrets.token_hex(32)}")
        zones["."].append(f"localhost. {ttl} IN A 127.0.0.1")
        for name, rtype, text in records:
            name = _fqdn(name)
            rtype = rtype.upper()
            if rtype == "TXT":
                text = _quote_txt(text)
            zone = next((z for z in children if _under(name, z)), ".")
            zones[zone].append(f"{name} {ttl} IN {rtype} {text}")

        zone_conf = []
        for i, (zone, lines) in enumerate(zones.items()):
            file = self.dir / f"zone{i}.zone"
            # $ORIGIN . : a name without its final dot is absolute, as for DnsServer.
            file.write_text("\n".join([
                "$ORIGIN .",
                f"{zone} {ttl} IN SOA localhost. hostmaster.localhost. 1 3600 600 86400 {ttl}",
                f"{zone} {ttl} IN NS localhost.",
                *lines, ""]))
            zone_conf.append(f'  - domain: "{zone}"\n    file: "{file}"\n')
            if zone in self.insecure_zones:
                zone_conf.append("    dnssec-signing: off\n")

        run = self.dir / "run"
        run.mkdir(exist_ok=True)
        (self.dir / "db").mkdir(exist_ok=True)
        self.config = self.dir / "knot.conf"
        # Knot runs as the user starting it (root:root by default): no `user`.
        self.config.write_text(f"""server:
    rundir: "{run}"
    pidfile: "{run}/knot.pid"
    listen: 127.0.0.1@{self.port}
    udp-workers: 1
    tcp-workers: 1
    background-workers: 1

control:
    listen: "{run}/knot.sock"

database:
    storage: "{self.dir}/db"
    journal-db-max-size: 32M
    kasp-db-max-size: 32M
    timer-db-max-size: 32M
    catalog-db-max-size: 32M

log:
  - target: stderr
    any: info

policy:
  - id: test
    algorithm: ecdsap256sha256
    single-type-signing: on
    nsec3: off
    dnskey-ttl: {ttl}
    zone-max-ttl: {ttl}
    propagation-delay: 0
    cds-cdnskey-publish: none

template:
  - id: default
    storage: "{self.dir}"
    dnssec-signing: on
    dnssec-policy: test
    zonefile-sync: -1
    journal-content: none

zone:
{''.join(zone_conf)}""")
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen([KNOTD, "-c", str(self.config)], stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, stderr=log)
        # Stopped at the latest when this process exits, whatever the test did.
        self._finalizer = weakref.finalize(self, _stop, self.proc)
        try:
            self._wait_loaded(list(zones))
            self._write_trust_anchor()
        except BaseException:
            self.close()
            raise

    def query(self, name: str, rtype: str, tcp: bool = False, timeout: float = 2.0):
        """A dnspython query with the DO bit set; the response message."""
        q = dns.message.make_query(_fqdn(name), rtype, want_dnssec=True)
        q.flags &= ~dns.flags.RD
        send = dns.query.tcp if tcp else dns.query.udp
        return send(q, "127.0.0.1", timeout=timeout, port=self.port)

    def _wait_loaded(self, zones: list[str], timeout: float = 10.0):
        """Until every zone's SOA is served, with its RRSIG unless the zone is insecure."""
        deadline = time.monotonic() + timeout
        pending = list(zones)
        while pending:
            if self.proc.poll() is not None:
                raise RuntimeError(f"knotd exited with {self.proc.returncode}: {self._log_tail()}")
            try:
                r = self.query(pending[0], "SOA", timeout=0.2)
                signed = any(rr.rdtype == dns.rdatatype.RRSIG for rr in r.answer)
                if r.answer and (signed or pending[0] in self.insecure_zones):
                    pending.pop(0)
                    continue
            except (OSError, dns.exception.Timeout):
                pass
            if "zone event 'load' failed" in self._log_tail():
                raise RuntimeError(f"knotd could not load a zone: {self._log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"knotd did not serve signed {pending}: {self._log_tail()}")
            time.sleep(0.02)

    def _write_trust_anchor(self):
        r = self.query(".", "DNSKEY", tcp=True)
        keys = [rd for rrset in r.answer if rrset.rdtype == dns.rdatatype.DNSKEY for rd in rrset]
        sep = [k for k in keys if k.flags & 1] or keys
        # The key in one base64 token: dnspython's to_text would split it into chunks.
        self.trust_anchor_file.write_text("".join(
            f". {self.ttl} IN DNSKEY {k.flags} {k.protocol} {int(k.algorithm)} "
            f"{base64.b64encode(k.key).decode()}\n" for k in sep))

    def _log_tail(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-2000:]
        except OSError:
            return ""

    def close(self):
        """Stop knotd (SIGTERM; it exits in milliseconds)."""
        self._finalizer()
