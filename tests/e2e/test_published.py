"""What a server publishes to the world without a token, on its `http` and `https`
listeners, and the DNS records that point the world at it:

- the MTA-STS policy (RFC 8461): `GET /.well-known/mta-sts.txt` on `mta-sts.<local domain>`,
  read with a parser of this module that follows the grammar of RFC 8461 §3.2;
- client autoconfiguration: Thunderbird's `config-v1.1.xml` (both of its paths), read with
  a Python port of the checks Thunderbird itself makes when it reads one (comm-central
  `mail/components/accountcreation/modules/readFromXML.sys.mjs`, with the `Sanitizer` and
  `hostnameUtils` functions it calls); Outlook's autodiscover POST; an Apple configuration
  profile (`.mobileconfig`), read with `plistlib` and checked against Apple's published
  payload schemas (apple/device-management: `TopLevel`, `CommonPayloadKeys`,
  `com.apple.mail.managed`);
- `corvus dns records DOMAIN`: zone-file lines, parsed with dnspython's zone parser, then
  served from the test's own DNS zone so that the admin API's DNS view
  (`GET /api/domains/{domain}/dns`) must find every one of them published;
- hostile input: oversized bodies and addresses, XML special characters, entities.

One server serves most of the module (`site`): every mail listener (smtp, imap, imaps,
pop3, pop3s, submission, submissions) plus http and https, hostname mail.example.org,
example.org local in the config and added.test added with `corvus domain add`, two DKIM
keys, and a loopback DNS zone of its own that answers with TTL 0 (so a record the test
changes is seen at once). Tests that need other listeners or other `[mta_sts]` settings
make servers of their own. `curl` is the independent client that shows the bytes are the
same whoever asks.
"""

from __future__ import annotations

import ipaddress
import os
import plistlib
import re
import select
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass

import dns.name
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.zone
import pytest

from support.dns import DnsServer
from support.http import Api, check, create_token, describe
from support.server import Server

HOST = "mail.example.org"
DOMAIN = "example.org"          # local in the config file
ADDED = "added.test"            # local through `corvus domain add`
FOREIGN = "elsewhere.test"      # not local
USER = f"alice@{DOMAIN}"
MAIL_LISTENERS = ("smtp", "imap", "imaps", "pop3", "pop3s", "submission", "submissions")
WEB = ("http", "https")
DKIM_KEYS = (("ed1", "ed25519"), ("rsa1", "rsa"))
# Thunderbird's order of the servers in a config file (best first), and how each is reached.
TB_ORDER = [("incomingServer", "imap", "imaps", "SSL"), ("incomingServer", "imap", "imap", "STARTTLS"),
            ("incomingServer", "pop3", "pop3s", "SSL"), ("incomingServer", "pop3", "pop3", "STARTTLS"),
            ("outgoingServer", "smtp", "submissions", "SSL"),
            ("outgoingServer", "smtp", "submission", "STARTTLS")]
SRV_LABELS = {"_imaps._tcp": "imaps", "_imap._tcp": "imap", "_pop3s._tcp": "pop3s",
              "_pop3._tcp": "pop3", "_submissions._tcp": "submissions",
              "_submission._tcp": "submission"}
AD_NS = "http://schemas.microsoft.com/exchange/autodiscover/responseschema/2006"
AD_OUTLOOK_NS = "http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a"
AD_REQUEST_NS = "http://schemas.microsoft.com/exchange/autodiscover/outlook/requestschema/2006"
AUTODISCOVER_PATHS = ("/autodiscover/autodiscover.xml", "/Autodiscover/Autodiscover.xml")
TB_PATHS = ("/mail/config-v1.1.xml", "/.well-known/autoconfig/mail/config-v1.1.xml")
UUID_RE = re.compile(r"^[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}$")


@dataclass
class Site:
    srv: Server
    zone: DnsServer
    api: Api  # the http listener, with an admin token
    dkim: dict  # selector -> the p= value `corvus dkim generate` printed


def dkim_generate(srv: Server, domain: str, selector: str, algorithm: str) -> str:
    """`corvus dkim generate`: the p= value of the TXT record it prints."""
    out = srv.cli("dkim", "generate", domain, "--selector", selector, "--algorithm", algorithm).stdout
    m = re.search(r'IN\s+TXT\s+((?:"[^"]*"\s*)+)', out)
    assert m, f"no TXT record in the output of dkim generate:\n{out}"
    value = "".join(re.findall(r'"([^"]*)"', m.group(1)))
    p = re.search(r"\bp=([A-Za-z0-9+/=]+)", value)
    assert p, value
    return p.group(1)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    base = tmp_path_factory.mktemp("published")
    zone = DnsServer(ttl=0)
    srv = Server(base / "srv", zone.addr, listeners=MAIL_LISTENERS + WEB, hostname=HOST,
                 domains=(DOMAIN,), shutdown_timeout="5s")
    srv.cli("domain", "add", ADDED)
    keys = {sel: dkim_generate(srv, DOMAIN, sel, alg) for sel, alg in DKIM_KEYS}
    srv.start()
    token = create_token(srv, "published")
    try:
        yield Site(srv, zone, Api(srv, token), keys)
    finally:
        if srv.running:
            srv.stop(expect=0)
        zone.close()


def public(srv: Server, listener: str = "http") -> Api:
    """The `listener` of `srv`, with no token."""
    return Api(srv, listener=listener)


def get(srv: Server, path: str, listener: str = "http", host: str | None = None, **kw):
    return public(srv, listener).get(path, token=None, headers={"Host": host} if host else None, **kw)


def media_type(r) -> str:
    return r.headers.get("Content-Type", "").split(";")[0].strip().lower()


def curl(*args: str, data: bytes | None = None) -> tuple[bytes, str]:
    """`curl` (the command-line client) with `args`, `data` on its standard input: (body,
    the status line and headers)."""
    exe = shutil.which("curl")
    if exe is None:
        pytest.skip("curl is not installed (apt-get install -y curl)")
    with tempfile.TemporaryDirectory() as tmp:
        head_file = os.path.join(tmp, "head")
        p = subprocess.run([exe, "-sS", "-k", "--max-time", "30", "-D", head_file, "-o", "-", *args],
                           input=data or b"", capture_output=True, timeout=60)
        assert p.returncode == 0, f"curl {' '.join(args)} -> {p.returncode}: {p.stderr.decode(errors='replace')}"
        with open(head_file, "rb") as f:
            head = f.read().decode("latin-1")
    return p.stdout, head


def curl_status(head: str) -> int:
    m = re.match(r"HTTP/[\d.]+ (\d{3})", head)
    assert m, head
    return int(m.group(1))


# --- RFC 8461 §3.2: the policy -------------------------------------------------------------------

# sub-domain = Let-dig [Ldh-str] (RFC 5321 §4.1.2); Domain = sub-domain *("." sub-domain).
_SUB = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
_MX_VALUE = re.compile(rf"^(?:\*\.)?{_SUB}(?:\.{_SUB})*$")
_EXT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,31}$")
_VCHAR = r"[\x21-\x3a\x3c-\x7e]"  # sts-policy-vchar: VCHAR except ";"


def parse_sts_policy(body: bytes) -> dict:
    """An MTA-STS policy as RFC 8461 §3.2 defines it: fields separated by CRLF or LF, each
    `key: value` (`sts-policy-field-delim = ":" *WSP`); exactly one version (STSv1), one
    mode (enforce / testing / none), one max_age (1 to 10 digits, at most 31557600),
    and one or more mx values (`["*."] Domain`) unless mode is none; extension fields of
    the extension grammar are allowed and ignored. Raises ValueError on anything else."""
    text = body.decode("ascii")  # the policy is ASCII (§3.2 grammar)
    fields: dict[str, list[str]] = {}
    lines = re.split(r"\r\n|\n", text)
    if lines and lines[-1] == "":
        lines.pop()  # the optional final delimiter
    for n, line in enumerate(lines, 1):
        line = line.rstrip(" \t")  # *WSP after a field
        m = re.match(r"^([^:]+):[ \t]*(.*)$", line)
        if not m:
            raise ValueError(f"line {n}: {line!r} is not 'key: value'")
        key, value = m.group(1), m.group(2)
        if key == "version":
            if value != "STSv1":
                raise ValueError(f"line {n}: version {value!r}")
        elif key == "mode":
            if value not in ("enforce", "testing", "none"):
                raise ValueError(f"line {n}: mode {value!r}")
        elif key == "max_age":
            if not re.fullmatch(r"\d{1,10}", value) or int(value) > 31557600:
                raise ValueError(f"line {n}: max_age {value!r}")
        elif key == "mx":
            if not _MX_VALUE.match(value):
                raise ValueError(f"line {n}: mx {value!r}")
        else:
            if not _EXT_NAME.match(key) or not re.fullmatch(rf"{_VCHAR}(?:[ \t]*{_VCHAR})*", value):
                raise ValueError(f"line {n}: extension field {line!r}")
        fields.setdefault(key, []).append(value)
    for key in ("version", "mode", "max_age"):
        if len(fields.get(key, [])) != 1:
            raise ValueError(f"{len(fields.get(key, []))} {key} fields (exactly one needed)")
    mode = fields["mode"][0]
    if mode != "none" and not fields.get("mx"):
        raise ValueError(f"mode {mode} and no mx")
    return {"version": fields["version"][0], "mode": mode, "max_age": int(fields["max_age"][0]),
            "mx": fields.get("mx", [])}


def check_policy(r, mode: str, mx: list[str], max_age: int) -> dict:
    """A policy response: 200, text/plain, every line ending CRLF, the lines in the order
    version, mode, mx…, max_age, and the values asked for."""
    assert r.status_code == 200, describe(r)
    assert media_type(r) == "text/plain", r.headers
    body = r.content
    assert body.endswith(b"\r\n") and b"\n" not in body.replace(b"\r\n", b""), body
    want = ["version: STSv1", f"mode: {mode}"] + [f"mx: {m}" for m in mx] + [f"max_age: {max_age}"]
    assert body.decode().split("\r\n")[:-1] == want, body
    policy = parse_sts_policy(body)
    assert policy == {"version": "STSv1", "mode": mode, "max_age": max_age, "mx": mx}, policy
    return policy


def test_sts_parser_follows_rfc_8461():
    """The test's own policy parser takes the RFC's example and refuses broken policies
    (so a pass below means something)."""
    example = b"version: STSv1\nmode: enforce\nmx: mail.example.com\nmx: *.example.net\nmx: backupmx.example.com\nmax_age: 604800\n"
    assert parse_sts_policy(example)["mx"] == ["mail.example.com", "*.example.net", "backupmx.example.com"]
    assert parse_sts_policy(b"version: STSv1\r\nmode: none\r\nmax_age: 1")["mode"] == "none"
    for bad in (b"mode: enforce\nmx: a.test\nmax_age: 1\n", b"version: STSv1\nmode: strict\nmx: a.test\nmax_age: 1\n",
                b"version: STSv1\nmode: enforce\nmax_age: 1\n", b"version: STSv1\nmode: testing\nmx: a.test\n",
                b"version: STSv1\nmode: testing\nmx: a..test\nmax_age: 1\n",
                b"version: STSv1\nmode: testing\nmx: a.test\nmax_age: 99999999999\n",
                b"version: STSv1\nversion: STSv1\nmode: testing\nmx: a.test\nmax_age: 1\n"):
        with pytest.raises(ValueError):
            parse_sts_policy(bad)


# --- MTA-STS ------------------------------------------------------------------------------------

@pytest.mark.parametrize("listener", WEB)
def test_mta_sts_policy_for_local_domains(site, listener):
    """`mta-sts.<domain>` of a config domain and of an added domain (any case, with or
    without a port in Host): the default policy, mode testing, mx the hostname, max_age 7 days."""
    for host in (f"mta-sts.{DOMAIN}", f"mta-sts.{ADDED}", f"MTA-STS.{DOMAIN.upper()}",
                 f"mta-sts.{DOMAIN}:{site.srv.ports[listener]}"):
        r = get(site.srv, "/.well-known/mta-sts.txt", listener, host=host)
        check_policy(r, "testing", [HOST], 7 * 86400)


@pytest.mark.parametrize("listener", WEB)
def test_mta_sts_for_a_foreign_domain_is_404(site, listener):
    """`mta-sts.<a domain that is not local>`: 404, and no policy in the answer."""
    for host in (f"mta-sts.{FOREIGN}", f"mta-sts.sub.{DOMAIN}"):
        r = get(site.srv, "/.well-known/mta-sts.txt", listener, host=host)
        assert r.status_code == 404, describe(r)
        assert b"STSv1" not in r.content, describe(r)


@pytest.mark.parametrize("mode", ["enforce", "testing", "none"])
def test_mta_sts_configured_policy(corvus_factory, mode):
    """[mta_sts] mode, max_age "1d" and mx patterns (a host and a wildcard) are what the
    policy says, on both listeners; with no mx configured the hostname stands, in lower case."""
    srv = corvus_factory(name=f"sts-{mode}", listeners=("smtp", "http", "https"), hostname="MX.Example.ORG",
                         shutdown_timeout="5s",
                         mta_sts={"mode": mode, "max_age": "1d", "mx": ["mx1.example.org", "*.example.org"]})
    srv.start()
    for listener in WEB:
        r = get(srv, "/.well-known/mta-sts.txt", listener, host=f"mta-sts.{DOMAIN}")
        check_policy(r, mode, ["mx1.example.org", "*.example.org"], 86400)
    srv.stop()
    del srv.sections["mta_sts"]["mx"]
    srv.write_config()
    srv.start()
    r = get(srv, "/.well-known/mta-sts.txt", "https", host=f"mta-sts.{DOMAIN}")
    check_policy(r, mode, ["mx.example.org"], 86400)


@pytest.mark.parametrize("key, value, named", [
    ("max_age", "366d", "mta_sts.max_age"),
    ("max_age", "31557601s", "mta_sts.max_age"),
    ("mx", ["mx1.example.org", "not a host"], "mta_sts.mx"),
    ("mx", ["*.*.example.org"], "mta_sts.mx"),
    ("mx", ["mx_1.example.org"], "mta_sts.mx"),
    ("mode", "strict", None),
])
def test_mta_sts_config_errors(corvus_factory, key, value, named):
    """A max_age over a year or an mx that is not a host name (or a `*.` wildcard of one) is
    a config error naming the key: `corvus check` fails and `corvus serve` does not start;
    an unknown mode is refused too."""
    srv = corvus_factory(name="sts-bad", listeners=("smtp", "http"), mta_sts={key: value})
    p = srv.cli("check", check=False)
    out = p.stdout + p.stderr
    assert p.returncode != 0, f"corvus check accepted [mta_sts] {key} = {value!r}:\n{out}"
    if named:
        assert named in out, f"the error does not name {named}:\n{out}"
    try:
        p = srv.cli("serve", check=False, timeout=30)
    except subprocess.TimeoutExpired:
        pytest.fail(f"corvus serve ran with [mta_sts] {key} = {value!r}")
    assert p.returncode != 0, p.stderr
    if named:
        assert named in p.stdout + p.stderr, p.stderr


@pytest.mark.parametrize("max_age, seconds", [("365d", 365 * 86400), ("1y", 31557600), ("1s", 1)])
def test_mta_sts_max_age_up_to_a_year_is_accepted(corvus_factory, max_age, seconds):
    """Up to a year (31557600 s, RFC 8461 §3.2) is accepted and served in seconds."""
    srv = corvus_factory(name="sts-year", listeners=("smtp", "http"), mta_sts={"max_age": max_age})
    srv.cli("check")
    srv.start()
    check_policy(get(srv, "/.well-known/mta-sts.txt", host=f"mta-sts.{DOMAIN}"), "testing",
                 ["mx.example.org"], seconds)


# --- Thunderbird -----------------------------------------------------------------------------------
#
# A port of Thunderbird's readFromXML (comm-central
# mail/components/accountcreation/modules/readFromXML.sys.mjs) and the Sanitizer and
# hostnameUtils functions it calls. Thunderbird skips a server entry it cannot read and
# fails only when no entry is left; `read_thunderbird_config` records every skipped entry
# so the test can require that there are none. It is stricter than Thunderbird in one
# place: a <port> must be digits (Thunderbird's parseInt would take "993abc").

class ThunderbirdRejects(Exception):
    pass


_TB_HOST = re.compile(r"^(([a-z0-9]|[a-z0-9][a-z0-9\-]{0,61}[a-z0-9])\.)*([a-z0-9]|[a-z0-9][a-z0-9\-]{0,61}[a-z0-9])\.?$",
                      re.I)


def _tb_legal_ipv4(s: str) -> bool:
    parts = s.split(".")
    if len(parts) != 4 or not all(re.fullmatch(r"0|[1-9][0-9]{0,9}", p) for p in parts):
        return False
    return all(int(p) < 256 for p in parts) and int(parts[0]) != 0


def _tb_legal_ipv6(s: str) -> bool:
    try:
        return ipaddress.IPv6Address(s) != ipaddress.IPv6Address("::")
    except ValueError:
        return False


def tb_hostname(value) -> str:
    """Sanitizer.hostname: non-empty after trimming; a %PLACEHOLDER% pattern, or a legal
    host name (RFC 952/1123, at most 255 characters) or IP address; lower-cased."""
    s = ("" if value is None else str(value)).strip()
    if not s:
        raise ThunderbirdRejects("string_empty.error (hostname)")
    if re.fullmatch(r"[a-zA-Z0-9\-.]*(%[A-Z0-9]+%[a-zA-Z0-9\-.]*)+", s):
        return s
    if not (_tb_legal_ipv4(s) or _tb_legal_ipv6(s) or (len(s) <= 255 and _TB_HOST.match(s))):
        raise ThunderbirdRejects(f"hostname_syntax.error: {s!r}")
    return s.lower()


def tb_port(value) -> int:
    """Sanitizer.integerRange(port, 1, 65535) (digits only here)."""
    s = ("" if value is None else str(value)).strip()
    if not re.fullmatch(r"\d+", s):
        raise ThunderbirdRejects(f"no_number.error: port {value!r}")
    n = int(s)
    if not 1 <= n <= 65535:
        raise ThunderbirdRejects(f"port {n} out of range")
    return n


def tb_translate(values: list[str], mapping: set[str], what: str) -> str:
    """The first of `values` that the mapping knows (Sanitizer.translate in a loop)."""
    for v in values:
        if v in mapping:
            return v
    raise ThunderbirdRejects(f"need proper <{what}> in XML: {values!r}")


TB_SOCKET_TYPES = {"plain", "SSL", "STARTTLS"}
TB_AUTH_IN = {"password-cleartext", "plain", "password-encrypted", "secure", "GSSAPI", "NTLM"}
TB_AUTH_OUT = TB_AUTH_IN | {"none", "client-IP-address", "smtp-after-pop"}
# OAuth2 is read only for hosts in Thunderbird's own OAuth2 provider list, which this server
# is not in: left out of both sets.


def _text(el) -> str | None:
    return None if el is None else "".join(el.itertext())


def read_thunderbird_config(body: bytes) -> dict:
    """readFromXML on a config-v1.1.xml document: {id, displayName, domains, incoming,
    outgoing, skipped}; raises ThunderbirdRejects where Thunderbird gives up."""
    try:
        root = ET.fromstring(body)
    except ET.ParseError as e:
        raise ThunderbirdRejects(f"not XML: {e}")
    provider = root.find("emailProvider") if root.tag == "clientConfig" else None
    if provider is None:
        raise ThunderbirdRejects("no_emailProvider.error")
    out = {"id": tb_hostname(provider.get("id")), "skipped": []}
    out["displayName"] = _text(provider.find("displayName"))
    domains = []
    for d in provider.findall("domain"):
        try:
            domains.append(tb_hostname(_text(d)))
        except ThunderbirdRejects as e:
            out["skipped"].append(f"<domain>: {e}")
    if not domains:
        raise ThunderbirdRejects("need proper <domain> in XML")
    out["domains"] = domains
    out["incoming"], out["outgoing"] = [], []
    for kind, key, types, auths in (("incomingServer", "incoming", ("pop3", "imap", "nntp", "exchange"), TB_AUTH_IN),
                                    ("outgoingServer", "outgoing", ("smtp",), TB_AUTH_OUT)):
        for x in provider.findall(kind):
            try:
                if x.get("type") not in types:
                    raise ThunderbirdRejects(f"type {x.get('type')!r} not allowed")
                entry = {"type": x.get("type"), "hostname": tb_hostname(_text(x.find("hostname"))),
                         "port": tb_port(_text(x.find("port")))}
                entry["socketType"] = tb_translate([_text(e) for e in x.findall("socketType")],
                                                   TB_SOCKET_TYPES, "socketType")
                entry["authentication"] = tb_translate([_text(e) for e in x.findall("authentication")],
                                                       auths, "authentication")
                needs_user = kind == "incomingServer" or entry["authentication"] in (
                    "password-cleartext", "plain", "password-encrypted", "secure")
                if needs_user:
                    # Thunderbird would take String(undefined); the format requires one.
                    if x.find("username") is None:
                        raise ThunderbirdRejects("no <username>")
                    entry["username"] = _text(x.find("username"))
                out[key].append(entry)
            except ThunderbirdRejects as e:
                out["skipped"].append(f"<{kind}>: {e}")
        if not out[key]:
            raise ThunderbirdRejects(f"Need proper <{kind}> in XML file: {out['skipped']}")
    return out


def check_thunderbird(r, srv: Server, domain: str, listeners=MAIL_LISTENERS) -> dict:
    """A config-v1.1.xml response for `domain`: what Thunderbird reads from it, every
    server entry usable, one per IMAP/POP3/submission listener in Thunderbird's order."""
    assert r.status_code == 200, describe(r)
    assert media_type(r) == "application/xml", r.headers
    root = ET.fromstring(r.content)
    assert root.tag == "clientConfig" and root.get("version") == "1.1", r.text
    provider = root.find("emailProvider")
    assert provider is not None and provider.get("id") == domain, r.text
    assert [_text(d) for d in provider.findall("domain")] == [domain], r.text
    assert (_text(provider.find("displayName")) or "").strip(), f"no <displayName>: {r.text}"
    config = read_thunderbird_config(r.content)
    assert not config["skipped"], f"Thunderbird would skip: {config['skipped']}\n{r.text}"
    assert config["id"] == domain and config["domains"] == [domain], config
    want = [(tag, kind, srv.ports[lst], sock) for tag, kind, lst, sock in TB_ORDER if lst in listeners]
    got = []
    for el in provider:
        if el.tag in ("incomingServer", "outgoingServer"):
            got.append((el.tag, el.get("type"), int(_text(el.find("port"))), _text(el.find("socketType"))))
    assert got == want, f"servers {got}, expected {want}:\n{r.text}"
    for entry in config["incoming"] + config["outgoing"]:
        assert entry["hostname"] == srv.hostname.lower(), entry
        assert entry["authentication"] == "password-cleartext", entry
        assert entry["username"] == "%EMAILADDRESS%", entry
    for el in provider:
        if el.tag in ("incomingServer", "outgoingServer"):
            assert [_text(e) for e in el.findall("hostname")] == [srv.hostname], r.text
    return config


def test_thunderbird_reader_port_refuses_what_thunderbird_refuses():
    """The port of readFromXML refuses documents Thunderbird refuses (so a pass means
    something)."""
    good = (b'<clientConfig version="1.1"><emailProvider id="example.org"><domain>example.org</domain>'
            b'<incomingServer type="imap"><hostname>mail.example.org</hostname><port>993</port>'
            b'<socketType>SSL</socketType><authentication>password-cleartext</authentication>'
            b'<username>%EMAILADDRESS%</username></incomingServer>'
            b'<outgoingServer type="smtp"><hostname>mail.example.org</hostname><port>465</port>'
            b'<socketType>SSL</socketType><authentication>password-cleartext</authentication>'
            b'<username>%EMAILADDRESS%</username></outgoingServer></emailProvider></clientConfig>')
    assert not read_thunderbird_config(good)["skipped"]
    for old, new in ((b"<port>993</port>", b"<port>0</port>"), (b"<port>465</port>", b"<port>70000</port>"),
                     (b"SSL</socketType><authentication>password-cleartext</authentication><username>%EMAILADDRESS%"
                      b"</username></incomingServer>",
                      b"TLS</socketType><authentication>password-cleartext</authentication><username>%EMAILADDRESS%"
                      b"</username></incomingServer>"),
                     (b'id="example.org"', b'id="exa mple.org"'), (b"<domain>example.org</domain>", b""),
                     (b'type="smtp"', b'type="ews"'), (b'type="imap"', b'type="jmap"'),
                     (b"<hostname>mail.example.org</hostname><port>993", b"<hostname>-mail.example.org</hostname><port>993")):
        assert old in good, old
        with pytest.raises(ThunderbirdRejects):
            read_thunderbird_config(good.replace(old, new))
    skipped = read_thunderbird_config(good.replace(b"</emailProvider>", b'<incomingServer type="pop3">'
                                                   b"<hostname>x</hostname><port>995</port><socketType>SSL"
                                                   b"</socketType><authentication>kerberos</authentication>"
                                                   b"<username>u</username></incomingServer></emailProvider>"))
    assert skipped["skipped"], skipped


@pytest.mark.parametrize("listener", WEB)
@pytest.mark.parametrize("path", TB_PATHS)
def test_thunderbird_autoconfig(site, listener, path):
    """config-v1.1.xml?emailaddress= for a config domain and an added domain, at both of
    Thunderbird's paths: what Thunderbird's reader takes, imaps, imap, pop3s, pop3,
    submissions, submission in that order with their ports and TLS kind."""
    for domain in (DOMAIN, ADDED):
        r = get(site.srv, path, listener, params={"emailaddress": f"alice@{domain}"})
        check_thunderbird(r, site.srv, domain)


@pytest.mark.parametrize("path", TB_PATHS)
def test_thunderbird_domain_from_the_host(site, path):
    """Without emailaddress the domain is the Host header's, less a leading `autoconfig.`
    (and a port); a Host that is not local is 404."""
    srv = site.srv
    for host, domain in ((f"autoconfig.{DOMAIN}", DOMAIN), (f"autoconfig.{ADDED}", ADDED),
                         (DOMAIN, DOMAIN), (f"autoconfig.{DOMAIN}:{srv.ports['http']}", DOMAIN)):
        check_thunderbird(get(srv, path, host=host), srv, domain)
    for host in (f"autoconfig.{FOREIGN}", FOREIGN, "autoconfig.", "127.0.0.1"):
        r = get(srv, path, host=host)
        assert r.status_code == 404, f"Host: {host}: {describe(r)}"


@pytest.mark.parametrize("path", TB_PATHS)
def test_thunderbird_refuses_foreign_domains_and_non_addresses(site, path):
    """A foreign domain is 404; `notanaddress` and addresses with <, > or a double quote are
    400; none of them gets a config document."""
    srv = site.srv
    for addr in (f"alice@{FOREIGN}", f"alice@sub.{DOMAIN}"):
        r = get(srv, path, params={"emailaddress": addr})
        assert r.status_code == 404, describe(r)
        assert b"clientConfig" not in r.content, describe(r)
    for addr in ("notanaddress", f"<alice@{DOMAIN}>", f"alice>@{DOMAIN}", f'"alice"@{DOMAIN}', f"a<b@{DOMAIN}",
                 "", "@", f"@{DOMAIN}", "alice@", f"alice@@{DOMAIN}"):
        r = get(srv, path, params={"emailaddress": addr})
        assert r.status_code == 400, f"emailaddress={addr!r}: {describe(r)}"
        assert b"clientConfig" not in r.content, describe(r)


@pytest.mark.parametrize("listener", WEB)
def test_thunderbird_config_with_curl(site, listener):
    """curl gets the same status, type and bytes as the Python client, at both paths."""
    srv = site.srv
    scheme = "https" if listener == "https" else "http"
    for path in TB_PATHS:
        url = f"{scheme}://127.0.0.1:{srv.ports[listener]}{path}?emailaddress=alice%40{DOMAIN}"
        body, head = curl(url)
        assert curl_status(head) == 200, head
        assert re.search(r"(?im)^content-type:\s*application/xml", head), head
        r = get(srv, path, listener, params={"emailaddress": f"alice@{DOMAIN}"})
        assert body == r.content, (body[:300], r.content[:300])
        check_thunderbird(r, srv, DOMAIN)
    # Host-only, as Thunderbird asks autoconfig.<domain>.
    body, head = curl("-H", f"Host: autoconfig.{ADDED}", f"{scheme}://127.0.0.1:{srv.ports[listener]}{TB_PATHS[0]}")
    assert curl_status(head) == 200, head
    assert read_thunderbird_config(body)["id"] == ADDED


# --- Outlook autodiscover ------------------------------------------------------------------------

def autodiscover_request(address: str) -> bytes:
    return (f'<?xml version="1.0" encoding="utf-8"?>\n<Autodiscover xmlns="{AD_REQUEST_NS}">\n'
            f"  <Request>\n    <EMailAddress>{address}</EMailAddress>\n"
            f"    <AcceptableResponseSchema>{AD_OUTLOOK_NS}</AcceptableResponseSchema>\n"
            "  </Request>\n</Autodiscover>\n").encode()


def post_autodiscover(srv: Server, body: bytes, listener: str = "http", path: str = AUTODISCOVER_PATHS[0]):
    return public(srv, listener).post(path, token=None, data=body,
                                      headers={"Content-Type": "text/xml; charset=utf-8"})


def check_autodiscover(r, srv: Server, address: str, want: list[tuple[str, str, str]]) -> list[dict]:
    """An autodiscover answer for `address`: the response schema's namespaces, an email
    account with settings, and one Protocol per protocol in `want` [(Type, listener,
    Encryption)], in that order."""
    assert r.status_code == 200, describe(r)
    assert media_type(r) in ("application/xml", "text/xml"), r.headers
    root = ET.fromstring(r.content)
    assert root.tag == f"{{{AD_NS}}}Autodiscover", root.tag
    responses = root.findall(f"{{{AD_OUTLOOK_NS}}}Response")
    assert len(responses) == 1, r.text
    accounts = responses[0].findall(f"{{{AD_OUTLOOK_NS}}}Account")
    assert len(accounts) == 1, r.text
    account = accounts[0]

    def one(el, name):
        found = el.findall(f"{{{AD_OUTLOOK_NS}}}{name}")
        assert len(found) == 1, f"{len(found)} <{name}> in {ET.tostring(el)[:300]!r}"
        return (found[0].text or "").strip()

    assert one(account, "AccountType") == "email", r.text
    assert one(account, "Action") == "settings", r.text
    protocols = []
    for p in account.findall(f"{{{AD_OUTLOOK_NS}}}Protocol"):
        protocols.append({k: one(p, k) for k in ("Type", "Server", "Port", "LoginName", "Encryption",
                                                   "AuthRequired")})
    got = [(p["Type"], int(p["Port"]), p["Encryption"]) for p in protocols]
    expected = [(t, srv.ports[lst], enc) for t, lst, enc in want]
    assert got == expected, f"protocols {got}, expected {expected}:\n{r.text}"
    for p in protocols:
        assert p["Server"] == srv.hostname and p["LoginName"] == address and p["AuthRequired"] == "on", p
    return protocols


@pytest.mark.parametrize("listener", WEB)
@pytest.mark.parametrize("path", AUTODISCOVER_PATHS)
def test_outlook_autodiscover(site, listener, path):
    """The usual request, at both spellings of the path: IMAP on imaps, POP3 on pop3s, SMTP on
    submissions (the best listener of each, implicit TLS: Encryption SSL), LoginName the
    address, for a config domain and an added one."""
    best = [("IMAP", "imaps", "SSL"), ("POP3", "pop3s", "SSL"), ("SMTP", "submissions", "SSL")]
    for domain in (DOMAIN, ADDED):
        address = f"alice@{domain}"
        check_autodiscover(post_autodiscover(site.srv, autodiscover_request(address), listener, path),
                           site.srv, address, best)


def test_autodiscover_errors(site):
    """GET is 405; a request naming no EMailAddress is 400; a foreign address is 404."""
    srv = site.srv
    for path in AUTODISCOVER_PATHS:
        r = get(srv, path)
        assert r.status_code == 405, describe(r)
    no_address = autodiscover_request("x").replace(b"<EMailAddress>x</EMailAddress>", b"")
    for body in (no_address, b"", b"not xml at all", autodiscover_request("")):
        r = post_autodiscover(srv, body)
        assert r.status_code == 400, f"{body[:80]!r}: {describe(r)}"
    for address in (f"alice@{FOREIGN}", f"alice@sub.{DOMAIN}"):
        r = post_autodiscover(srv, autodiscover_request(address))
        assert r.status_code == 404, describe(r)
        assert b"<Protocol>" not in r.content, describe(r)


def test_autodiscover_with_curl(site):
    """curl -X POST with the request body gets the same bytes as the Python client."""
    srv = site.srv
    req = autodiscover_request(USER)
    for listener in WEB:
        scheme = "https" if listener == "https" else "http"
        url = f"{scheme}://127.0.0.1:{srv.ports[listener]}{AUTODISCOVER_PATHS[1]}"
        body, head = curl("-X", "POST", "-H", "Content-Type: text/xml", "--data-binary", "@-", url, data=req)
        assert curl_status(head) == 200, head
        r = post_autodiscover(srv, req, listener, AUTODISCOVER_PATHS[1])
        assert body == r.content, (body[:300], r.content[:300])
        check_autodiscover(r, srv, USER, [("IMAP", "imaps", "SSL"), ("POP3", "pop3s", "SSL"),
                                          ("SMTP", "submissions", "SSL")])
    body, head = curl("-X", "GET", f"http://127.0.0.1:{srv.ports['http']}{AUTODISCOVER_PATHS[0]}")
    assert curl_status(head) == 405, head


# --- Apple configuration profile ------------------------------------------------------------------
#
# Apple's payload schemas (apple/device-management, mdm/profiles): TopLevel.yaml,
# CommonPayloadKeys.yaml and com.apple.mail.managed.yaml. Required keys and their types;
# the values of keys with a range list.

APPLE_TOP = {"PayloadIdentifier": str, "PayloadUUID": str, "PayloadType": str, "PayloadVersion": int,
             "PayloadContent": list}
APPLE_COMMON = {"PayloadIdentifier": str, "PayloadUUID": str, "PayloadType": str, "PayloadVersion": int}
APPLE_MAIL_REQUIRED = {"EmailAccountType": str, "IncomingMailServerAuthentication": str,
                       "IncomingMailServerHostName": str, "OutgoingMailServerAuthentication": str,
                       "OutgoingMailServerHostName": str}
APPLE_MAIL_OPTIONAL = {"EmailAccountDescription": str, "EmailAccountName": str, "EmailAddress": str,
                       "IncomingMailServerPortNumber": int, "IncomingMailServerUseSSL": bool,
                       "IncomingMailServerUsername": str, "OutgoingPasswordSameAsIncomingPassword": bool,
                       "OutgoingMailServerPortNumber": int, "OutgoingMailServerUseSSL": bool,
                       "OutgoingMailServerUsername": str, "PayloadDescription": str, "PayloadDisplayName": str,
                       "PayloadOrganization": str, "IncomingMailServerIMAPPathPrefix": str}
APPLE_AUTH = {"EmailAuthNone", "EmailAuthPassword", "EmailAuthCRAMMD5", "EmailAuthNTLM", "EmailAuthHTTPMD5"}


def check_types(d: dict, spec: dict, required: bool, where: str):
    for key, typ in spec.items():
        if key not in d:
            assert not required, f"{where}: required key {key} missing: {sorted(d)}"
            continue
        v = d[key]
        ok = isinstance(v, typ) and not (typ is int and isinstance(v, bool))
        assert ok, f"{where}: {key} = {v!r} is not {typ.__name__}"


def read_mobileconfig(r, address: str) -> dict:
    """A .mobileconfig response for `address`: headers, a plist that meets Apple's schemas."""
    assert r.status_code == 200, describe(r)
    assert media_type(r) == "application/x-apple-aspen-config", r.headers
    assert r.headers.get("Content-Disposition") == f'attachment; filename="{address}.mobileconfig"', r.headers
    profile = plistlib.loads(r.content)
    assert isinstance(profile, dict), profile
    check_types(profile, APPLE_TOP, True, "profile")
    assert profile["PayloadType"] == "Configuration" and profile["PayloadVersion"] == 1, profile
    assert len(profile["PayloadContent"]) >= 1, profile
    mail = profile["PayloadContent"][0]
    check_types(mail, APPLE_COMMON, True, "mail payload")
    check_types(mail, APPLE_MAIL_REQUIRED, True, "mail payload")
    check_types(mail, APPLE_MAIL_OPTIONAL, False, "mail payload")
    assert mail["PayloadType"] == "com.apple.mail.managed" and mail["PayloadVersion"] == 1, mail
    assert mail["EmailAccountType"] in ("EmailTypeIMAP", "EmailTypePOP"), mail
    assert mail["IncomingMailServerAuthentication"] in APPLE_AUTH, mail
    assert mail["OutgoingMailServerAuthentication"] in APPLE_AUTH, mail
    uuids = [profile["PayloadUUID"], mail["PayloadUUID"]]
    for u in uuids:
        assert UUID_RE.match(u), u
        uuid.UUID(u)
    # Globally unique, and identifiers unique within the profile (CommonPayloadKeys).
    assert uuids[0].lower() != uuids[1].lower(), uuids
    assert profile["PayloadIdentifier"] != mail["PayloadIdentifier"], profile
    return profile


def check_mail_payload(profile: dict, srv: Server, address: str, incoming: str, outgoing: str):
    """The account: `address` everywhere, the hostname, the ports of the `incoming` and
    `outgoing` listeners, TLS on both."""
    mail = profile["PayloadContent"][0]
    assert mail["EmailAddress"] == address, mail
    assert mail["EmailAccountType"] == ("EmailTypeIMAP" if incoming.startswith("imap") else "EmailTypePOP"), mail
    assert mail["IncomingMailServerHostName"] == srv.hostname, mail
    assert mail["OutgoingMailServerHostName"] == srv.hostname, mail
    assert mail["IncomingMailServerPortNumber"] == srv.ports[incoming], mail
    assert mail["OutgoingMailServerPortNumber"] == srv.ports[outgoing], mail
    assert mail["IncomingMailServerUseSSL"] is True and mail["OutgoingMailServerUseSSL"] is True, mail
    assert mail["IncomingMailServerUsername"] == address, mail
    assert mail["OutgoingMailServerUsername"] == address, mail


@pytest.mark.parametrize("listener", WEB)
def test_apple_mobileconfig(site, listener):
    """/mail/mobileconfig?emailaddress=: a profile Apple's schemas accept, IMAP on imaps and
    submission on submissions over TLS, the address as user name; asked twice, the same
    UUIDs (the same profile); another address, other UUIDs."""
    srv = site.srv
    first = read_mobileconfig(get(srv, "/mail/mobileconfig", listener, params={"emailaddress": USER}), USER)
    check_mail_payload(first, srv, USER, "imaps", "submissions")
    again = read_mobileconfig(get(srv, "/mail/mobileconfig", listener, params={"emailaddress": USER}), USER)
    assert (again["PayloadUUID"], again["PayloadContent"][0]["PayloadUUID"]) == \
        (first["PayloadUUID"], first["PayloadContent"][0]["PayloadUUID"])
    other = f"bob@{ADDED}"
    second = read_mobileconfig(get(srv, "/mail/mobileconfig", listener, params={"emailaddress": other}), other)
    check_mail_payload(second, srv, other, "imaps", "submissions")
    mine = {first["PayloadUUID"].lower(), first["PayloadContent"][0]["PayloadUUID"].lower()}
    theirs = {second["PayloadUUID"].lower(), second["PayloadContent"][0]["PayloadUUID"].lower()}
    assert not mine & theirs, (mine, theirs)


def test_mobileconfig_errors(site):
    """No emailaddress, or not an address: 400; a foreign domain: 404; no profile in either."""
    srv = site.srv
    for params in ({}, {"emailaddress": ""}, {"emailaddress": "notanaddress"}):
        r = get(srv, "/mail/mobileconfig", params=params)
        assert r.status_code == 400, f"{params}: {describe(r)}"
        assert b"<plist" not in r.content
    r = get(srv, "/mail/mobileconfig", params={"emailaddress": f"alice@{FOREIGN}"})
    assert r.status_code == 404, describe(r)
    assert b"<plist" not in r.content


# --- answers follow the listeners -----------------------------------------------------------------

def test_answers_follow_the_listeners(corvus_factory):
    """A server with imap, pop3s and submission only: Thunderbird gets imap (STARTTLS),
    pop3s (SSL) and submission (STARTTLS); autodiscover IMAP/TLS, POP3/SSL, SMTP/TLS; the
    Apple profile IMAP on the imap port and submission, TLS on both."""
    listeners = ("smtp", "imap", "pop3s", "submission")
    srv = corvus_factory(name="partial", listeners=listeners + ("http",), hostname=HOST, shutdown_timeout="5s")
    srv.start()
    for path in TB_PATHS:
        check_thunderbird(get(srv, path, params={"emailaddress": USER}), srv, DOMAIN, listeners)
    check_autodiscover(post_autodiscover(srv, autodiscover_request(USER)), srv, USER,
                       [("IMAP", "imap", "TLS"), ("POP3", "pop3s", "SSL"), ("SMTP", "submission", "TLS")])
    profile = read_mobileconfig(get(srv, "/mail/mobileconfig", params={"emailaddress": USER}), USER)
    check_mail_payload(profile, srv, USER, "imap", "submission")


# --- DNS records -----------------------------------------------------------------------------------

RECORD_LINE = re.compile(r"^(\S+)\s+(\d+)\s+IN\s+(\S+)\s+(\S.*?)\s*$")


@dataclass
class Rec:
    name: str       # absolute, lower case, with the final dot
    rtype: str
    rdata: object   # dns.rdata.Rdata

    @property
    def text(self) -> str:
        """The value as the admin API shows it: TXT strings joined, others presentation form."""
        if self.rtype == "TXT":
            return b"".join(self.rdata.strings).decode()
        return self.rdata.to_text()


def dns_records(srv: Server, domain: str) -> tuple[list[Rec], str]:
    """`corvus dns records DOMAIN`, checked line by line (comments start with `;`, records
    are `NAME 3600 IN TYPE VALUE` with absolute names) and parsed with dnspython, as a zone
    file and as single records: (records in printed order, the output)."""
    out = srv.cli("dns", "records", domain).stdout
    records = []
    for line in out.splitlines():
        if not line.strip() or line.startswith(";"):
            continue
        m = RECORD_LINE.match(line)
        assert m, f"not a zone-file record line: {line!r}\n{out}"
        name, ttl, rtype, value = m.groups()
        assert ttl == "3600", line
        assert name.endswith("."), f"name not absolute: {line!r}"
        assert rtype in ("MX", "TXT", "CNAME", "SRV"), line
        if rtype == "TXT":
            assert re.fullmatch(r'"[^"\\]*"(\s+"[^"\\]*")*', value), f"TXT value not in double quotes: {line!r}"
        rd = dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.from_text(rtype), value,
                                 origin=dns.name.root, relativize=False)
        records.append(Rec(name.lower(), rtype, rd))
    # The whole output is a valid zone file (no CNAME beside other data, every line parses).
    zone = dns.zone.from_text(out, origin=dns.name.root, relativize=False, check_origin=False)
    zoned = sorted((n.to_text().lower(), dns.rdatatype.to_text(rd.rdtype), rd.to_text())
                   for n, _, rd in zone.iterate_rdatas())
    assert zoned == sorted((r.name, r.rtype, r.rdata.to_text()) for r in records), (zoned, out)
    assert records, out
    return records, out


def find(records: list[Rec], name: str, rtype: str, prefix: str = "") -> list[Rec]:
    return [r for r in records if r.name == name.lower() and r.rtype == rtype and r.text.startswith(prefix)]


def only(records: list[Rec], name: str, rtype: str, prefix: str = "", out: str = "") -> Rec:
    found = find(records, name, rtype, prefix)
    assert len(found) == 1, f"{len(found)} {rtype} records {prefix!r}… at {name}:\n{out}"
    return found[0]


def sts_id(records: list[Rec], domain: str, out: str = "") -> str:
    rec = only(records, f"_mta-sts.{domain}.", "TXT", "v=STSv1", out)
    m = re.fullmatch(r"v=STSv1;\s*id=([A-Za-z0-9]{1,32});?", rec.text)
    assert m, f"_mta-sts record {rec.text!r} is not 'v=STSv1; id=<1 to 32 letters and digits>'"
    return m.group(1)


def check_records(records: list[Rec], out: str, srv: Server, domain: str, dkim: dict[str, str]):
    """Every record the contract lists, with its value for `srv`."""
    host = srv.hostname.lower() + "."
    d = domain + "."
    assert only(records, d, "MX", out=out).text == f"10 {host}", out
    assert only(records, d, "TXT", "v=spf1", out).text == "v=spf1 mx -all", out
    dkim_names = sorted(r.name for r in records if r.name.endswith(f"._domainkey.{d}"))
    assert dkim_names == sorted(f"{sel}._domainkey.{d}" for sel in dkim), out
    for sel, p in dkim.items():
        value = only(records, f"{sel}._domainkey.{d}", "TXT", "v=DKIM1", out).text
        assert re.search(rf"(?:^|;)\s*p={re.escape(p)}\s*(?:;|$)", value), (sel, value)
    assert re.fullmatch(r"v=DMARC1;.*", only(records, f"_dmarc.{d}", "TXT", "v=DMARC1", out).text), out
    assert only(records, f"mta-sts.{d}", "CNAME", out=out).text == host, out
    sts_id(records, domain, out)
    assert only(records, f"_smtp._tls.{d}", "TXT", "v=TLSRPTv1", out).text == \
        f"v=TLSRPTv1; rua=mailto:postmaster@{domain}", out
    assert only(records, f"autoconfig.{d}", "CNAME", out=out).text == host, out
    assert only(records, f"_autodiscover._tcp.{d}", "SRV", out=out).text == f"0 1 443 {host}", out
    for label, listener in SRV_LABELS.items():
        rec = only(records, f"{label}.{d}", "SRV", out=out)
        if listener in srv.ports:
            m = re.fullmatch(r"(\d+) 1 (\d+) (\S+)", rec.text)
            assert m and int(m.group(1)) <= 65535, f"{label}: {rec.text!r}"
            assert (int(m.group(2)), m.group(3)) == (srv.ports[listener], host), f"{label}: {rec.text!r}"
        else:
            assert rec.text == "0 0 0 .", f"{label} (not offered): {rec.text!r}"


def test_dns_records_of_a_local_domain(site):
    """`corvus dns records` for a config domain (with its two DKIM keys) and for an added
    domain (no keys): MX, SPF, DKIM, DMARC, MTA-STS, TLS-RPT, autoconfig, autodiscover and
    the six RFC 6186 SRV records with this server's ports."""
    records, out = dns_records(site.srv, DOMAIN)
    check_records(records, out, site.srv, DOMAIN, site.dkim)
    records, out = dns_records(site.srv, ADDED)
    check_records(records, out, site.srv, ADDED, {})
    # One policy for every domain: the same id.
    assert sts_id(records, ADDED) == sts_id(dns_records(site.srv, DOMAIN)[0], DOMAIN)


def test_dns_records_of_a_foreign_domain_fail(site):
    """A domain that is not local: non-zero exit, a message saying so, no records."""
    p = site.srv.cli("dns", "records", FOREIGN, check=False)
    assert p.returncode != 0, p.stdout
    assert re.search(r"not (a )?local", p.stdout + p.stderr, re.I), p.stdout + p.stderr
    assert " IN " not in p.stdout, p.stdout


def test_dns_records_stopped_and_running_and_services_not_offered(corvus_factory):
    """The command prints the same with the server stopped and running; a service without a
    listener is `0 0 0 .` (RFC 6186 §3)."""
    srv = corvus_factory(name="dnsrec", listeners=("smtp", "imap", "pop3s", "submission", "http"),
                         hostname=HOST, shutdown_timeout="5s")
    p = dkim_generate(srv, DOMAIN, "k1", "ed25519")
    stopped, out = dns_records(srv, DOMAIN)
    check_records(stopped, out, srv, DOMAIN, {"k1": p})
    srv.start()
    running, out_running = dns_records(srv, DOMAIN)
    assert out_running == out
    srv.stop()
    assert dns_records(srv, DOMAIN)[1] == out


def sts_id_stable(srv: Server, mode: str) -> str:
    """With `[mta_sts] mode = MODE` written: the `_mta-sts` id printed with the server
    stopped, which must be the same with it running and after a restart; the served policy
    says MODE. Leaves the server stopped."""
    srv.sections["mta_sts"]["mode"] = mode
    srv.write_config()
    records, out = dns_records(srv, DOMAIN)
    first = sts_id(records, DOMAIN, out)
    srv.start()
    assert sts_id(dns_records(srv, DOMAIN)[0], DOMAIN) == first, f"mode {mode}: id differs with the server running"
    check_policy(get(srv, "/.well-known/mta-sts.txt", host=f"mta-sts.{DOMAIN}"), mode, [HOST], 7 * 86400)
    srv.restart()
    assert sts_id(dns_records(srv, DOMAIN)[0], DOMAIN) == first, f"mode {mode}: id changed across a restart"
    srv.stop()
    return first


def test_mta_sts_id_follows_the_policy(corvus_factory):
    """The `_mta-sts` id is the same across restarts with the same config, and changes with
    each change of `[mta_sts] mode` (testing → enforce → testing); the served policy says
    the new mode."""
    srv = corvus_factory(name="stsid", listeners=("smtp", "http"), hostname=HOST, shutdown_timeout="5s",
                         mta_sts={"mode": "testing"})
    testing = sts_id_stable(srv, "testing")
    enforce = sts_id_stable(srv, "enforce")
    assert enforce != testing, f"testing → enforce: the id stayed {testing}"
    back = sts_id_stable(srv, "testing")
    assert back != enforce, f"enforce → testing: the id stayed {enforce}"


def test_mta_sts_mode_none_is_published_with_a_new_id(corvus_factory):
    """Switching to `mode = "none"` withdraws a policy only if senders see a new `_mta-sts`
    id and can fetch the "none" policy (RFC 8461 §8.3): the records stay published
    (`_mta-sts` TXT with an id other than enforce's, `mta-sts` CNAME), the policy says none."""
    srv = corvus_factory(name="stsnone", listeners=("smtp", "http"), hostname=HOST, shutdown_timeout="5s",
                         mta_sts={"mode": "enforce"})
    enforce = sts_id_stable(srv, "enforce")
    srv.sections["mta_sts"]["mode"] = "none"
    srv.write_config()
    records, out = dns_records(srv, DOMAIN)
    assert find(records, f"_mta-sts.{DOMAIN}.", "TXT", "v=STSv1"), f"mode none: no _mta-sts TXT record:\n{out}"
    assert only(records, f"mta-sts.{DOMAIN}.", "CNAME", out=out).text == HOST + ".", out
    none = sts_id_stable(srv, "none")
    assert none != enforce, f"enforce → none: the id stayed {enforce}"


def set_record(zone: DnsServer, name: str, rtype: str, text: str):
    """Replace the records of `rtype` at `name` in the zone by one."""
    key = name.lower().rstrip(".") + "."
    zone.zone[key] = [(t, v) for t, v in zone.zone.get(key, []) if t != rtype]
    zone.add(name, rtype, text)


def test_published_records_check_out_in_the_dns_view(site):
    """Every record `corvus dns records` prints, served from the test's DNS zone as dnspython
    parsed it: the admin API's DNS view lists the same records and finds each one published
    (ok); then the `_mta-sts` TXT record is changed to another id, and that record (only)
    is no longer ok."""
    srv, zone, api = site.srv, site.zone, site.api
    records, out = dns_records(srv, DOMAIN)
    saved = dict(zone.zone)
    try:
        for r in records:
            zone.add(r.name, r.rtype, r.rdata.to_text())
        view = check(api.get(f"/api/domains/{DOMAIN}/dns"), 200)
        assert view["domain"] == DOMAIN, view
        listed = sorted((v["name"].lower(), v["type"], v["value"]) for v in view["records"])
        printed = sorted((r.name, r.rtype, r.text) for r in records)
        assert listed == printed, f"the DNS view lists {listed}\nthe CLI printed {printed}"
        bad = [v for v in view["records"] if v["ok"] is not True]
        assert not bad, f"published exactly as printed, yet not ok: {bad}"
        sts = f"_mta-sts.{DOMAIN}."
        old = sts_id(records, DOMAIN)
        new = "0" if old != "0" else "1"
        set_record(zone, sts, "TXT", f"v=STSv1; id={new}")
        view = check(api.get(f"/api/domains/{DOMAIN}/dns"), 200)
        not_ok = [(v["name"].lower(), v["type"]) for v in view["records"] if v["ok"] is not True]
        assert not_ok == [(sts, "TXT")], f"with the id changed, not ok: {not_ok}\n{view}"
        rec = next(v for v in view["records"] if v["name"].lower() == sts)
        assert [p.replace(" ", "") for p in rec["published"]] == [f"v=STSv1;id={new}"], rec
    finally:
        zone.zone.clear()
        zone.zone.update(saved)


# --- hostile input ---------------------------------------------------------------------------------

def post_big(port: int, path: str, size: int, chunked: bool = False, timeout: float = 30) -> bytes:
    """POST `size` bytes to `path`, stopping as soon as the server answers (it may answer
    before reading the body); the raw answer ("" if the server closed without one)."""
    head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: text/xml\r\nConnection: close\r\n"
    head += "Transfer-Encoding: chunked\r\n\r\n" if chunked else f"Content-Length: {size}\r\n\r\n"
    chunk = b"<a>" + b"x" * 65530 + b"</a>"
    if chunked:
        piece = b"%x\r\n" % len(chunk) + chunk + b"\r\n"
    else:
        piece = chunk
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    got = b""
    try:
        sock.sendall(head.encode())
        sock.setblocking(False)
        sent, done_sending = 0, False
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            want_write = [sock] if not done_sending else []
            readable, writable, _ = select.select([sock], want_write, [], 1)
            if readable:
                try:
                    data = sock.recv(65536)
                except (ConnectionResetError, BlockingIOError):
                    data = b""
                if not data:
                    break
                got += data
                done_sending = True  # an answer: stop sending
                continue
            if writable and not done_sending:
                remaining = size - sent
                if remaining <= 0:
                    if chunked:
                        sock.setblocking(True)
                        sock.sendall(b"0\r\n\r\n")
                        sock.setblocking(False)
                    done_sending = True
                    continue
                data = piece if len(chunk) <= remaining else (
                    (b"%x\r\n" % remaining + chunk[:remaining] + b"\r\n") if chunked else chunk[:remaining])
                try:
                    n = sock.send(data)
                except (BrokenPipeError, ConnectionResetError):
                    done_sending = True
                    continue
                except BlockingIOError:
                    continue
                if n < len(data):
                    # Finish this piece (the chunk framing must stay whole).
                    sock.setblocking(True)
                    try:
                        sock.sendall(data[n:])
                    except (BrokenPipeError, ConnectionResetError):
                        done_sending = True
                    sock.setblocking(False)
                sent += min(len(chunk), remaining)
    finally:
        sock.close()
    return got


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_autodiscover_body_over_max_body_is_413(site, chunked):
    """A 2 MB autodiscover body (over the default [http] max_body of 1 MiB), with
    Content-Length or chunked: 413; the server still serves autodiscover and the policy."""
    srv = site.srv
    got = post_big(srv.ports["http"], AUTODISCOVER_PATHS[0], 2 * 1024 * 1024, chunked=chunked)
    m = re.match(rb"HTTP/1\.[01] (\d{3})", got)
    assert m and m.group(1) == b"413", f"expected 413, got {got[:300]!r}"
    assert srv.running
    check_autodiscover(post_autodiscover(srv, autodiscover_request(USER)), srv, USER,
                       [("IMAP", "imaps", "SSL"), ("POP3", "pop3s", "SSL"), ("SMTP", "submissions", "SSL")])
    check_policy(get(srv, "/.well-known/mta-sts.txt", host=f"mta-sts.{DOMAIN}"), "testing", [HOST], 7 * 86400)


def test_autodiscover_body_under_max_body_is_served(site):
    """A request padded to just under 1 MiB (whitespace and a comment) is still answered."""
    req = autodiscover_request(USER)
    padded = req.replace(b"<Request>", b"<Request><!--" + b"p" * (1024 * 1024 - len(req) - 200) + b"-->")
    assert len(padded) < 1024 * 1024
    check_autodiscover(post_autodiscover(site.srv, padded), site.srv, USER,
                       [("IMAP", "imaps", "SSL"), ("POP3", "pop3s", "SSL"), ("SMTP", "submissions", "SSL")])


def test_long_email_addresses_are_400(site):
    """An emailaddress of 10 KB (a long local part, or a long domain): 400 from Thunderbird's
    paths, the Apple profile and autodiscover."""
    srv = site.srv
    for addr in ("a" * 10240 + f"@{DOMAIN}", "alice@" + "d" * 10230 + f".{DOMAIN}"):
        for path in TB_PATHS + ("/mail/mobileconfig",):
            r = get(srv, path, params={"emailaddress": addr})
            assert r.status_code == 400, f"{path} with {len(addr)} bytes: {describe(r)}"
        r = post_autodiscover(srv, autodiscover_request(addr))
        assert r.status_code == 400, f"autodiscover with {len(addr)} bytes: {describe(r)}"
    assert get(srv, "/healthz").status_code == 200


def xml_answers_escape(r, address: str):
    """A 200 answer is well-formed XML in which the address reads back exactly (so it was
    escaped); any other answer carries no XML document."""
    if r.status_code == 200:
        root = ET.fromstring(r.content)  # raises if a special character broke the document
        texts = {t for el in root.iter() for t in [el.text or "", *el.attrib.values()]}
        assert address in texts or any(address in t for t in texts), r.text
    else:
        assert r.status_code in (400, 404), describe(r)
        assert not r.content.lstrip().startswith(b"<?xml"), describe(r)


def test_xml_special_characters_never_reach_the_answers(site):
    """Addresses of a local domain with ", <, > are 400 everywhere; with ' or & (atext
    characters RFC 5322 allows) either 400 or an answer where they come back escaped;
    an answer never contains the raw markup sent."""
    srv = site.srv
    refused = [f'a"b@{DOMAIN}', f"a<b@{DOMAIN}", f"a>b@{DOMAIN}", f"<script>@{DOMAIN}",
               f'alice@{DOMAIN}"><x', f"alice@{DOMAIN}<x/>"]
    maybe = [f"o'hara@{DOMAIN}", f"a&b@{DOMAIN}", f"a&amp;b@{DOMAIN}"]
    for addr in refused + maybe:
        for path in TB_PATHS + ("/mail/mobileconfig",):
            r = get(srv, path, params={"emailaddress": addr})
            if addr in refused:
                assert r.status_code == 400, f"{path}?emailaddress={addr!r}: {describe(r)}"
            elif path == "/mail/mobileconfig" and r.status_code == 200:
                assert plistlib.loads(r.content)["PayloadContent"][0]["EmailAddress"] == addr
            else:
                xml_answers_escape(r, DOMAIN if path != "/mail/mobileconfig" else addr)
            for raw in ("<script>", '"><x', "<x/>", "a<b", 'a"b'):
                assert raw.encode() not in r.content or raw not in addr, f"{path}: {raw!r} echoed: {describe(r)}"
    # Autodiscover: what an XML parser reads from the request is the address.
    cases = {
        f'a"b@{DOMAIN}': 400,                            # a raw quote is legal in XML text
        f"a&lt;b@{DOMAIN}": 400,                         # reads as a<b
        f"a&quot;b@{DOMAIN}": 400,                       # reads as a"b
        f"<![CDATA[a<b@{DOMAIN}]]>": 400,                # reads as a<b
        f"a&amp;b@{DOMAIN}": None,                       # reads as a&b: 400, or escaped
        f"o'hara@{DOMAIN}": None,
    }
    for inner, status in cases.items():
        r = post_autodiscover(srv, autodiscover_request(inner))
        if status is not None:
            assert r.status_code == status, f"EMailAddress {inner!r}: {describe(r)}"
        else:
            read_as = inner.replace("&amp;", "&")
            xml_answers_escape(r, read_as)
            if r.status_code == 200:
                login = ET.fromstring(r.content).find(f".//{{{AD_OUTLOOK_NS}}}LoginName")
                assert login is not None and login.text == read_as, r.text
    for path in TB_PATHS:
        r = get(srv, path, host="autoconfig.<b>x</b>")
        assert r.status_code in (400, 404), describe(r)
        assert media_type(r) not in ("application/xml", "text/xml"), describe(r)


def test_external_entities_are_not_expanded(site):
    """An autodiscover request that defines entities (an external file, a billion laughs) is
    refused quickly; no file content and no expansion comes back; the server still serves."""
    srv = site.srv
    xxe = (b'<?xml version="1.0"?>\n<!DOCTYPE a [<!ENTITY e SYSTEM "file:///etc/passwd">]>\n'
           + autodiscover_request("&e;").split(b"\n", 1)[1])
    laughs = (b'<?xml version="1.0"?>\n<!DOCTYPE a [<!ENTITY l0 "lol">'
              + b"".join(b'<!ENTITY l%d "&l%d;&l%d;&l%d;&l%d;&l%d;&l%d;&l%d;&l%d;&l%d;&l%d;">' % ((i,) + (i - 1,) * 10)
                         for i in range(1, 10))
              + b"]>\n" + autodiscover_request(f"&l9;@{DOMAIN}").split(b"\n", 1)[1])
    for body in (xxe, laughs):
        r = post_autodiscover(srv, body)
        assert r.status_code in (400, 404), describe(r)
        assert b"root:" not in r.content and b"lollol" not in r.content, describe(r)
    check_autodiscover(post_autodiscover(srv, autodiscover_request(USER)), srv, USER,
                       [("IMAP", "imaps", "SSL"), ("POP3", "pop3s", "SSL"), ("SMTP", "submissions", "SSL")])


def test_published_endpoints_need_no_token_and_keep_the_api_closed(site):
    """The published answers come without a token and set no cookie; the admin API next to
    them still wants its token."""
    srv = site.srv
    for r in (get(srv, "/.well-known/mta-sts.txt", host=f"mta-sts.{DOMAIN}"),
              get(srv, TB_PATHS[0], params={"emailaddress": USER}),
              get(srv, "/mail/mobileconfig", params={"emailaddress": USER}),
              post_autodiscover(srv, autodiscover_request(USER))):
        assert r.status_code == 200, describe(r)
        assert "Set-Cookie" not in r.headers, dict(r.headers)
    r = public(srv).get(f"/api/domains/{DOMAIN}/dns", token=None)
    assert r.status_code == 401, describe(r)
    r = public(srv).get("/api/users", token=None)
    assert r.status_code == 401, describe(r)
