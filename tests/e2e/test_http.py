"""The HTTP listener (issue 25): health checks, Prometheus `/metrics`, the admin JSON API with
bearer tokens, its OpenAPI document, and the listener's hardening. The contract is
notes25/api-contract.md: every assertion here is a request and what that contract (or the
issue's list of metric names) says the answer is.

One server serves the module (`site`): smtp, submission, imap, http and https listeners; a
Rhai script that rejects at RCPT (sender refuse-rcpt@…) and at the end of DATA (subject
"reject me"); a loopback DNS zone of its own; remote mail for remote.test goes to an MX
where nothing listens, so it stays queued (retry in 1 h: only an API retry tries again).
Tests that need other settings (a console directory, PostgreSQL that goes away, a
stopped server) make servers of their own.

Clients: `requests` for the API, `prometheus_client`'s parsers for /metrics,
`openapi_spec_validator` for the document, raw sockets where a client library would tidy
the request up (encoded dot segments, headers sent slowly); smtplib and imaplib for mail.
"""

from __future__ import annotations

import base64
import datetime
import email.policy
import imaplib
import json
import re
import smtplib
import signal
import socket
import subprocess
import time
import urllib.parse
from dataclasses import dataclass
from email.message import EmailMessage

import pytest
from openapi_spec_validator import validate

from support.clients import PASSWORD
from support.dns import DnsServer
from support.http import (Api, check, check_error, closed_within, create_token, describe,
                          get_raw, parse_openmetrics, queued_id, raw_request, scrape, series,
                          total, wait_trace)
from support.net import free_port, port_open
from support.postgres import Postgres
from support.server import ALICE, BOB, CORVUS_BIN, ON_POSTGRES, Server, child_env, run_corvus
from support.wait import wait_for

METRICS_TOKEN = "metrics-secret-e2e"
MAX_BODY = 4096
ADDED = "added.test"  # a domain the tests add; its MX and SPF are published
REMOTE = "remote.test"  # its MX (127.0.0.9) does not answer: mail there stays queued
SCRIPT = """
fn on_rcpt(ctx) {
    if ctx.mail_from.starts_with("refuse-rcpt@") { return reject(550, "5.7.1 refused by the test script"); }
}
fn on_data(ctx) {
    if ctx.subject.starts_with("reject me") { return reject(554, "5.7.1 rejected by the test script"); }
}
"""
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'")

# Every route of the contract, in OpenAPI's template syntax (the document's server is /api).
CONTRACT_ROUTES = {
    "GET /users", "POST /users", "DELETE /users/{address}", "PUT /users/{address}/password",
    "GET /domains", "POST /domains", "DELETE /domains/{domain}", "GET /domains/{domain}/dns",
    "GET /aliases", "POST /aliases", "DELETE /aliases/{alias}",
    "GET /dkim", "POST /dkim",
    "GET /queue", "GET /queue/{id}", "POST /queue/{id}/retry", "POST /queue/retry",
    "DELETE /queue/{id}",
    "POST /reload", "GET /trace/{id}", "GET /traces", "GET /stats",
    "GET /users/{address}/sieve", "GET /users/{address}/sieve/{name}",
    "PUT /users/{address}/sieve/{name}", "DELETE /users/{address}/sieve/{name}",
    "PUT /users/{address}/active-sieve",
}
# Path parameters for requests that must reach the handler: values that name nothing.
DUMMY = {"address": "nobody@example.org", "domain": "nowhere.test", "alias": "noalias@example.org",
         "id": "00DEADBEEF000000", "name": "noscript"}


@dataclass
class Site:
    srv: Server
    zone: DnsServer
    token: str
    api: Api
    script: object  # pathlib.Path


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    base = tmp_path_factory.mktemp("http")
    zone = DnsServer()
    zone.add(ADDED, "MX", "10 mx.example.org.")
    zone.add(ADDED, "TXT", "v=spf1 mx -all")
    zone.add(REMOTE, "MX", f"10 mx.{REMOTE}.")
    zone.add(f"mx.{REMOTE}", "A", "127.0.0.9")
    script = base / "policy.rhai"
    script.write_text(SCRIPT)
    srv = Server(
        base / "srv", zone.addr,
        listeners=("smtp", "submission", "imap", "http", "https"),
        shutdown_timeout="5s",
        smtp={"allow_plaintext_auth": True},
        imap={"allow_plaintext_auth": True},
        # The tests fail logins on purpose; the throttle must not refuse the next ones.
        limits={"max_auth_failures": 100, "max_auth_failures_per_ip": 1000},
        http={"metrics_token": METRICS_TOKEN, "header_timeout": "1s", "max_body": MAX_BODY},
        delivery={"port": free_port(), "retry": ["1h"]},
        hooks=[{"script": script}],
    )
    srv.add_user(ALICE)
    srv.add_user(BOB)
    srv.start()
    token = create_token(srv, "e2e")
    try:
        yield Site(srv, zone, token, Api(srv, token), script)
    finally:
        if srv.running:
            srv.stop(expect=0)
        zone.close()


def message(subject: str, to: str = BOB, sender: str = "sender@remote.example") -> bytes:
    m = EmailMessage()
    m["From"] = sender
    m["To"] = to
    m["Subject"] = subject
    m["Message-ID"] = f"<{time.time_ns()}.{subject.replace(' ', '-')}@remote.example>"
    m.set_content("Hello.\n")
    return m.as_bytes(policy=email.policy.SMTP)


def send(srv: Server, subject: str, to: str = BOB, sender: str = "sender@remote.example",
         listener: str = "smtp", login: str | None = None) -> tuple[int, str]:
    """One transaction; the reply to the end of DATA (code, text)."""
    with srv.smtp(listener) as s:
        s.ehlo("client.example")
        if login:
            s.login(login, PASSWORD)
        code, text = s.mail(sender)
        assert code == 250, (code, text)
        code, text = s.rcpt(to)
        assert code == 250, (code, text)
        code, text = s.data(message(subject, to, sender))
        return code, text.decode()


def imap_login_fails(srv: Server, user: str, password: str) -> bool:
    c = srv.imap()
    try:
        c.login(user, password)
    except imaplib.IMAP4.error:
        return True
    finally:
        try:
            c.logout()
        except (imaplib.IMAP4.error, OSError):
            pass
    return False


def rfc3339(s: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(s.replace("Z", "+00:00"))


# --- health ------------------------------------------------------------------------------------

def test_healthz_and_readyz_need_no_token(site):
    r = site.api.get("/healthz", token=None)
    assert r.status_code == 200 and r.text.strip() == "ok", describe(r)
    r = site.api.get("/readyz", token=None)
    assert r.status_code == 200 and r.text.strip() == "ready", describe(r)


@pytest.fixture(scope="module")
def own_pg():
    """A PostgreSQL of this module's own, which a test stops: the session's, which every
    other server of the run uses, is never touched."""
    if not ON_POSTGRES:
        pytest.skip("readiness against an unavailable store needs PostgreSQL (CORVUS_E2E_STORE=postgres): "
                    "sled is embedded in the process and cannot become unavailable")
    p = Postgres()
    yield p
    p.close()


def test_readyz_is_503_while_the_database_is_down(own_pg, corvus_factory):
    if not own_pg.running():
        own_pg.start()
    srv = corvus_factory(name="pg-ready", listeners=("smtp", "http"), shutdown_timeout="5s",
                         store={"backend": "postgres", "url": own_pg.database(), "pool_size": 2})
    srv.cli("store", "migrate")
    srv.start()
    api = Api(srv)
    r = api.get("/readyz", token=None)
    assert r.status_code == 200 and r.text.strip() == "ready", describe(r)
    own_pg.stop("fast")
    try:
        # (A Response is false when its status is >= 400: wait for a tuple.)
        r, = wait_for(lambda: (lambda r: (r,) if r.status_code == 503 else None)(
            api.get("/readyz", token=None, timeout=20)), what="/readyz 503 with the database stopped",
            timeout=30, interval=0.5)
        assert r.text.startswith("not ready: ") and len(r.text.strip()) > len("not ready:"), describe(r)
        # The process still serves: only readiness changed.
        r = api.get("/healthz", token=None)
        assert r.status_code == 200, describe(r)
        assert srv.running
    finally:
        if not own_pg.running():
            own_pg.start()
    r, = wait_for(lambda: (lambda r: (r,) if r.status_code == 200 else None)(
        api.get("/readyz", token=None, timeout=20)), what="/readyz 200 again with the database back",
        timeout=30, interval=0.5)
    assert r.text.strip() == "ready", describe(r)


# --- metrics -----------------------------------------------------------------------------------

def test_metrics_token(site):
    r = site.api.get("/metrics", token=None)
    assert r.status_code == 401, describe(r)
    assert r.headers.get("WWW-Authenticate", "").startswith("Bearer"), dict(r.headers)
    assert "corvus_" not in r.text
    r = site.api.get("/metrics", token="not-the-metrics-token")
    assert r.status_code == 401, describe(r)
    assert "corvus_" not in r.text
    r = site.api.get("/metrics", token=METRICS_TOKEN)
    assert r.status_code == 200, describe(r)
    assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4"), r.headers
    assert "# EOF" not in r.text


def test_openmetrics_is_negotiated(site):
    r = site.api.get("/metrics", token=METRICS_TOKEN,
                     headers={"Accept": "application/openmetrics-text; version=1.0.0,text/plain;q=0.5"})
    assert r.status_code == 200, describe(r)
    assert r.headers["Content-Type"].startswith("application/openmetrics-text"), r.headers
    assert r.text.rstrip("\n").endswith("# EOF"), r.text[-200:]
    samples = parse_openmetrics(r.text)  # the strict OpenMetrics parser
    assert total(samples, "corvus_connections_total", listener="smtp") >= 0
    assert series(samples, "corvus_connections_total"), "no corvus_connections_total in OpenMetrics"


COUNTERS = ["corvus_connections_total", "corvus_smtp_transactions_total",
            "corvus_local_deliveries_total", "corvus_queue_deliveries_total",
            "corvus_dsns_sent_total", "corvus_hook_calls_total",
            "corvus_sender_auth_results_total", "corvus_auth_attempts_total",
            "corvus_tls_handshakes_total", "corvus_trace_events_dropped_total",
            "process_cpu_seconds_total"]
GAUGES = ["corvus_sessions_open", "corvus_queue_entries", "corvus_queue_oldest_age_seconds",
          "process_resident_memory_bytes", "process_open_fds", "process_start_time_seconds"]
HISTOGRAMS = ["corvus_hook_duration_seconds", "corvus_store_operation_duration_seconds"]
LABELS = {
    "corvus_connections_total": {"listener", "result"},
    "corvus_sessions_open": {"listener"},
    "corvus_smtp_transactions_total": {"listener", "result", "reason"},
    "corvus_local_deliveries_total": {"mailbox"},
    "corvus_queue_deliveries_total": {"result"},
    "corvus_dsns_sent_total": {"result"},
    "corvus_hook_calls_total": {"point", "engine", "entry", "verdict"},
    "corvus_hook_duration_seconds_count": {"point", "engine", "entry"},
    "corvus_sender_auth_results_total": {"method", "result"},
    "corvus_auth_attempts_total": {"protocol", "result"},
    "corvus_tls_handshakes_total": {"protocol", "version", "result"},
    "corvus_store_operation_duration_seconds_count": {"op"},
}


def test_metric_names_types_and_labels(site):
    """Every metric the issue names, with its type and labels (after a delivery and an
    https request, so the histograms and the TLS counter have series)."""
    assert send(site.srv, "for the metric names")[0] == 250
    assert Api(site.srv, listener="https").get("/healthz", token=None).status_code == 200
    samples, types, text = scrape(site.api, METRICS_TOKEN)
    problems = []
    present = {n for (n, _) in samples}
    for name in COUNTERS:
        family = name[: -len("_total")]
        if name not in present or not re.search(rf"(?m)^{re.escape(name)}[{{ ]", text):
            problems.append(f"no counter sample {name}")
        elif types.get(family) != "counter":
            problems.append(f"{name}: type {types.get(family)}, not counter")
    for name in GAUGES:
        if name not in present:
            problems.append(f"no gauge {name}")
        elif types.get(name) != "gauge":
            problems.append(f"{name}: type {types.get(name)}, not gauge")
    for name in HISTOGRAMS:
        for part in ("_bucket", "_sum", "_count"):
            if name + part not in present:
                problems.append(f"no {name}{part}")
        if types.get(name) != "histogram":
            problems.append(f"{name}: type {types.get(name)}, not histogram")
    for name, want in LABELS.items():
        for labels in series(samples, name):
            if set(labels) != want:
                problems.append(f"{name} labels {sorted(labels)}, expected {sorted(want)}")
                break
    kinds = {ls["mailbox"] for ls in series(samples, "corvus_local_deliveries_total")}
    if kinds != {"inbox", "junk", "other"}:
        problems.append(f"corvus_local_deliveries_total mailbox values {kinds}")
    now = time.time()
    start = samples.get(("process_start_time_seconds", frozenset()))
    if start is None or not now - 86400 < start <= now:
        problems.append(f"process_start_time_seconds = {start}")
    if not samples.get(("process_resident_memory_bytes", frozenset()), 0) > 0:
        problems.append("process_resident_memory_bytes is not > 0")
    if not samples.get(("process_open_fds", frozenset()), 0) > 0:
        problems.append("process_open_fds is not > 0")
    assert not problems, "\n".join(problems)


def test_counters_rise_by_exactly_the_traffic(site):
    """3 messages accepted and 2 rejected by the script at the end of DATA (one SMTP
    session, which also has one recipient refused by the script), 2 IMAP LOGIN failures (a
    connection each) and 1 SMTP AUTH failure (on submission): each series moves by exactly
    that much."""
    srv, api = site.srv, site.api
    before, _, _ = scrape(api, METRICS_TOKEN)
    with srv.smtp() as s:
        s.ehlo("client.example")
        for i in range(3):
            s.sendmail("sender@remote.example", [BOB], message(f"counted {i}"))
        for i in range(2):
            with pytest.raises(smtplib.SMTPDataError) as e:
                s.sendmail("sender@remote.example", [BOB], message(f"reject me {i}"))
            assert e.value.smtp_code == 554
        assert s.mail("refuse-rcpt@remote.example")[0] == 250
        assert s.rcpt(BOB)[0] == 550
        s.rset()
    for _ in range(2):
        assert imap_login_fails(srv, ALICE, "wrong password")
    with srv.smtp("submission") as s:
        s.ehlo("client.example")
        # One AUTH command (smtplib's login() would try the next mechanism after a 535).
        plain = base64.b64encode(f"\0{ALICE}\0wrong password".encode()).decode()
        assert s.docmd("AUTH", f"PLAIN {plain}")[0] == 535

    def settled():
        now, _, _ = scrape(api, METRICS_TOKEN)
        open_now = total(now, "corvus_sessions_open")
        return now if open_now == total(before, "corvus_sessions_open") else None

    after = wait_for(settled, what="every session closed (corvus_sessions_open back)")

    def delta(name, **labels):
        return total(after, name, **labels) - total(before, name, **labels)

    expected = [
        (("corvus_smtp_transactions_total", dict(listener="smtp", result="accepted", reason="")), 3),
        (("corvus_smtp_transactions_total", dict(listener="smtp", result="rejected", reason="hook")), 2),
        (("corvus_smtp_transactions_total", dict(result="rejected")), 2),
        (("corvus_smtp_transactions_total", dict(result="tempfailed")), 0),
        (("corvus_smtp_recipients_refused_total", dict(result="hook")), 1),
        (("corvus_local_deliveries_total", dict(mailbox="inbox")), 3),
        (("corvus_local_deliveries_total", dict(mailbox="junk")), 0),
        (("corvus_hook_calls_total", dict(point="on_data", engine="rhai", verdict="reject")), 2),
        (("corvus_hook_calls_total", dict(point="on_data", engine="rhai")), 5),
        (("corvus_hook_calls_total", dict(point="on_rcpt", engine="rhai", verdict="reject")), 1),
        (("corvus_hook_duration_seconds_count", dict(point="on_data", engine="rhai")), 5),
        (("corvus_sender_auth_results_total", dict(method="dmarc")), 5),
        (("corvus_sender_auth_results_total", dict(method="spf")), 5),
        (("corvus_auth_attempts_total", dict(protocol="imap", result="failure")), 2),
        (("corvus_auth_attempts_total", dict(protocol="smtp", result="failure")), 1),
        (("corvus_auth_attempts_total", dict(result="success")), 0),
        (("corvus_connections_total", dict(listener="smtp", result="accepted")), 1),
        (("corvus_connections_total", dict(listener="imap", result="accepted")), 2),
        (("corvus_connections_total", dict(listener="submission", result="accepted")), 1),
        (("corvus_connections_total", dict(result="refused")), 0),
    ]
    wrong = [f"{name}{labels}: +{delta(name, **labels):g}, expected +{n}"
             for (name, labels), n in expected if delta(name, **labels) != n]
    assert not wrong, "\n".join(wrong)


# --- tokens ------------------------------------------------------------------------------------

def every_route():
    """(method, path) of every contract route, path parameters filled with DUMMY values."""
    for route in sorted(CONTRACT_ROUTES):
        method, template = route.split(" ", 1)
        yield method, "/api" + re.sub(r"\{(\w+)\}", lambda m: DUMMY[m.group(1)], template)


def test_every_api_route_needs_a_valid_token(site):
    api = site.api
    for method, path in every_route():
        for token in (None, "corvus_" + "0" * 64, site.token + "x"):
            check_error(api.request(method, path, token=token, json={}), 401)
        r = api.request(method, path, headers={"Authorization": "Basic " + "YWxpY2U6cHc="}, json={})
        check_error(r, 401)
    # The document itself is public.
    assert api.get("/api/openapi.json", token=None).status_code == 200


def test_token_create_list_revoke(site):
    srv, api = site.srv, site.api
    t2 = create_token(srv, "revoke-me")
    assert t2 != site.token
    check(api.get("/api/users", token=t2), 200)
    listing = srv.cli("token", "list").stdout
    assert re.search(r"(?m)^revoke-me\b", listing) and re.search(r"(?m)^e2e\b", listing), listing
    assert t2 not in listing and site.token not in listing, listing
    # A name is taken once.
    r = srv.cli("token", "create", "revoke-me", check=False)
    assert r.returncode != 0, r.stdout
    srv.cli("token", "revoke", "revoke-me")
    check_error(api.get("/api/users", token=t2), 401)
    assert "revoke-me" not in srv.cli("token", "list").stdout
    check(api.get("/api/users"), 200)  # the other token still works


def test_tokens_made_and_revoked_with_the_server_stopped(corvus_factory):
    """The token CLI works on the store directly when no server runs."""
    srv = corvus_factory(name="offline", listeners=("smtp", "http"), shutdown_timeout="5s")
    token = create_token(srv, "offline")
    srv.start()
    api = Api(srv, token)
    check(api.get("/api/users"), 200)
    srv.stop()
    srv.cli("token", "revoke", "offline")
    srv.start()
    check_error(api.get("/api/users"), 401)


# --- users ----------------------------------------------------------------------------------

def test_users_create_password_delete(site):
    srv, api = site.srv, site.api
    carol = "carol@example.org"
    users = check(api.get("/api/users"), 200)
    addresses = [u["address"] for u in users]
    assert all(set(u) == {"address"} for u in users), users
    assert ALICE in addresses and BOB in addresses and carol not in addresses, users
    assert addresses == sorted(addresses), addresses
    r = check(api.post("/api/users", json={"address": carol, "password": "first-pw"}), 201)
    assert r["address"] == carol and isinstance(r["message"], str), r
    assert carol in [u["address"] for u in check(api.get("/api/users"), 200)]
    check_error(api.post("/api/users", json={"address": carol, "password": "other"}), 409)
    srv.imap(carol, "first-pw").logout()
    r = check(api.put(f"/api/users/{carol}/password", json={"password": "second-pw"}), 200)
    assert isinstance(r["message"], str), r
    srv.imap(carol, "second-pw").logout()
    assert imap_login_fails(srv, carol, "first-pw")
    # The address may come percent-encoded.
    quoted = urllib.parse.quote(carol, safe="")
    check(api.put(f"/api/users/{quoted}/password", json={"password": "third-pw"}), 200)
    srv.imap(carol, "third-pw").logout()
    err = check_error(api.put("/api/users/nobody@example.org/password", json={"password": "x"}), 404)
    assert "nobody@example.org" in err, err
    r = check(api.delete(f"/api/users/{carol}"), 200)
    assert isinstance(r["message"], str), r
    assert carol not in [u["address"] for u in check(api.get("/api/users"), 200)]
    check_error(api.delete(f"/api/users/{carol}"), 404)
    assert imap_login_fails(srv, carol, "third-pw")


def test_user_in_another_domain_needs_create_domain(site):
    api = site.api
    user = "dave@fresh.test"
    err = check_error(api.post("/api/users", json={"address": user, "password": "pw-1"}), 400)
    assert "fresh.test" in err, err
    assert "fresh.test" not in [d["domain"] for d in check(api.get("/api/domains"), 200)]
    check(api.post("/api/users", json={"address": user, "password": "pw-1", "create_domain": True}), 201)
    try:
        domains = check(api.get("/api/domains"), 200)
        assert {"domain": "fresh.test", "source": "store"} in domains, domains
        site.srv.imap(user, "pw-1").logout()
    finally:
        check(api.delete(f"/api/users/{user}"), 200)
        check(api.delete("/api/domains/fresh.test"), 200)


# --- domains and DNS ---------------------------------------------------------------------------

def test_domains_add_list_dns_delete(site):
    api = site.api
    domains = check(api.get("/api/domains"), 200)
    assert {"domain": "example.org", "source": "config"} in domains, domains
    r = check(api.post("/api/domains", json={"domain": ADDED}), 201)
    assert r["domain"] == ADDED and isinstance(r["message"], str), r
    domains = check(api.get("/api/domains"), 200)
    assert {"domain": ADDED, "source": "store"} in domains, domains
    view = check(api.get(f"/api/domains/{ADDED}/dns"), 200)
    assert view["domain"] == ADDED, view
    by_purpose = {}
    for rec in view["records"]:
        assert set(rec) >= {"type", "name", "value", "purpose", "published", "ok"}, rec
        assert rec["type"] in ("MX", "TXT", "CNAME", "SRV") and isinstance(rec["published"], list), rec
        by_purpose.setdefault(rec["purpose"], []).append(rec)
    assert set(by_purpose) >= {"MX", "SPF", "DMARC"}, view
    mx, spf, dmarc = by_purpose["MX"][0], by_purpose["SPF"][0], by_purpose["DMARC"][0]
    # Published in the zone: MX (to this server's hostname) and SPF. Not published: DMARC.
    assert mx["type"] == "MX" and "mx.example.org" in mx["value"], mx
    assert [p.rstrip(".") for p in mx["published"]] == ["10 mx.example.org"] and mx["ok"] is True, mx
    assert spf["type"] == "TXT" and spf["value"].startswith("v=spf1"), spf
    assert spf["published"] == ["v=spf1 mx -all"] and spf["ok"] is True, spf
    assert dmarc["type"] == "TXT" and dmarc["value"].startswith("v=DMARC1"), dmarc
    assert dmarc["name"].rstrip(".") == f"_dmarc.{ADDED}", dmarc
    assert dmarc["published"] == [] and dmarc["ok"] is False, dmarc
    check_error(api.get("/api/domains/nowhere.test/dns"), 404)
    check(api.delete(f"/api/domains/{ADDED}"), 200)
    assert ADDED not in [d["domain"] for d in check(api.get("/api/domains"), 200)]
    check_error(api.delete(f"/api/domains/{ADDED}"), 404)
    check_error(api.delete("/api/domains/nowhere.test"), 404)
    # A domain of the config file is not removed through the API.
    assert api.delete("/api/domains/example.org").status_code >= 400
    assert {"domain": "example.org", "source": "config"} in check(api.get("/api/domains"), 200)


def test_adding_an_existing_domain_is_409(site):
    """A domain added twice, and a domain the config file makes local already: 409."""
    api = site.api
    check(api.post("/api/domains", json={"domain": "twice.test"}), 201)
    problems = []
    try:
        for domain in ("twice.test", "example.org"):
            r = api.post("/api/domains", json={"domain": domain})
            if r.status_code != 409:
                problems.append(f"expected 409: {describe(r)}")
                if r.status_code == 201 and domain == "example.org":
                    # Undo: it went into the store next to the config's entry.
                    check(api.delete("/api/domains/example.org"), 200)
    finally:
        check(api.delete("/api/domains/twice.test"), 200)
    assert not problems, "\n".join(problems)
    assert {"domain": "example.org", "source": "config"} in check(api.get("/api/domains"), 200)


# --- aliases -----------------------------------------------------------------------------------

def test_aliases_add_list_deliver_delete(site):
    srv, api = site.srv, site.api
    team = "team@example.org"
    r = check(api.post("/api/aliases", json={"alias": team, "targets": [ALICE, BOB]}), 201)
    assert r["alias"] == team and isinstance(r["message"], str), r
    listed = [a for a in check(api.get("/api/aliases"), 200) if a["alias"] == team]
    assert len(listed) == 1 and sorted(listed[0]["targets"]) == sorted([ALICE, BOB]), listed
    counts = {u: srv.mailboxes(u)["INBOX"] for u in (ALICE, BOB)}
    assert send(srv, "to the team", to=team)[0] == 250
    assert {u: srv.mailboxes(u)["INBOX"] for u in (ALICE, BOB)} == {u: n + 1 for u, n in counts.items()}
    check(api.delete(f"/api/aliases/{team}"), 200)
    assert team not in [a["alias"] for a in check(api.get("/api/aliases"), 200)]
    check_error(api.delete(f"/api/aliases/{team}"), 404)
    check_error(api.post("/api/aliases", json={"alias": team, "targets": []}), 400)


# --- DKIM --------------------------------------------------------------------------------------

def test_dkim_generate_list_and_dns_view(site):
    api, zone = site.api, site.zone
    made = {}
    for selector, algorithm in (("e2e-ed", "ed25519"), ("e2e-rsa", "rsa")):
        k = check(api.post("/api/dkim", json={"domain": "example.org", "selector": selector,
                                              "algorithm": algorithm}), 201)
        assert set(k) >= {"domain", "selector", "algorithm", "record_name", "record_value"}, k
        assert k["domain"] == "example.org" and k["selector"] == selector, k
        assert algorithm in k["algorithm"], k
        assert k["record_name"].rstrip(".") == f"{selector}._domainkey.example.org", k
        assert k["record_value"].startswith("v=DKIM1"), k
        assert f"k={'ed25519' if algorithm == 'ed25519' else 'rsa'}" in k["record_value"], k
        assert re.search(r"\bp=[A-Za-z0-9+/=]{40,}", k["record_value"]), k
        made[selector] = k
    listed = check(api.get("/api/dkim"), 200)
    for k in made.values():
        assert k in listed, (k, listed)
    # Publish the ed25519 key only: the DNS view finds it, and not the RSA one.
    zone.add("e2e-ed._domainkey.example.org", "TXT", made["e2e-ed"]["record_value"])
    view = check(api.get("/api/domains/example.org/dns"), 200)
    dkim = {r["name"].rstrip("."): r for r in view["records"] if r["purpose"] == "DKIM"}
    ed, rsa = dkim["e2e-ed._domainkey.example.org"], dkim["e2e-rsa._domainkey.example.org"]
    assert ed["value"] == made["e2e-ed"]["record_value"] and ed["ok"] is True, ed
    assert [p.replace(" ", "") for p in ed["published"]] == [ed["value"].replace(" ", "")], ed
    assert rsa["ok"] is False and rsa["published"] == [], rsa
    check_error(api.post("/api/dkim", json={"domain": "example.org", "selector": "x",
                                            "algorithm": "dsa"}), 400)


# --- the queue ---------------------------------------------------------------------------------

def queue_entry(api: Api, qid: str):
    return next((e for e in check(api.get("/api/queue"), 200) if e["id"] == qid), None)


def test_queue_list_show_retry_delete(site):
    srv, api = site.srv, site.api
    rcpt = f"carol@{REMOTE}"
    code, text = send(srv, "queued for remote", to=rcpt, sender=ALICE, listener="submission",
                      login=ALICE)
    assert code == 250, text
    qid = queued_id(text)
    # The first attempt happens at once and fails (nothing answers at the MX).
    e = wait_for(lambda: (lambda e: e if e and e["attempts"] >= 1 and e["last_error"] else None)(
        queue_entry(api, qid)), what="the first failed attempt")
    assert set(e) >= {"id", "sender", "recipients", "attempts", "created", "next_attempt", "last_error"}, e
    assert e["sender"] == ALICE and e["recipients"] == [rcpt] and e["attempts"] == 1, e
    created, next_attempt = rfc3339(e["created"]), rfc3339(e["next_attempt"])
    assert next_attempt - created > datetime.timedelta(minutes=30), e  # retry = ["1h"]
    assert isinstance(e["last_error"], str) and e["last_error"], e
    shown = check(api.get(f"/api/queue/{qid}"), 200)
    assert {k: shown[k] for k in e} == e, (shown, e)
    assert isinstance(shown["decisions"], list) and isinstance(shown["size"], int) and shown["size"] > 0, shown
    assert "Subject: queued for remote" in shown["headers"], shown
    assert "Hello." not in shown["headers"], shown  # headers only
    samples, _, _ = scrape(api, METRICS_TOKEN)
    assert total(samples, "corvus_queue_entries") >= 1
    assert total(samples, "corvus_queue_domain_recipients", domain=REMOTE) == 1, \
        series(samples, "corvus_queue_domain_recipients")
    assert total(samples, "corvus_queue_oldest_age_seconds") >= 0
    deferred = total(samples, "corvus_queue_deliveries_total", result="deferred")
    # One retry now: exactly one more attempt, one more deferred delivery.
    r = check(api.post(f"/api/queue/{qid}/retry"), 200)
    assert isinstance(r["message"], str), r
    wait_for(lambda: (queue_entry(api, qid) or {}).get("attempts") == 2, what="the retried attempt")
    wait_for(lambda: total(scrape(api, METRICS_TOKEN)[0], "corvus_queue_deliveries_total",
                           result="deferred") == deferred + 1, what="deferred +1")
    # Retry everything.
    r = check(api.post("/api/queue/retry"), 200)
    assert isinstance(r["message"], str), r
    wait_for(lambda: (queue_entry(api, qid) or {}).get("attempts") == 3, what="the retry of all")
    check(api.delete(f"/api/queue/{qid}"), 200)
    assert queue_entry(api, qid) is None
    for r in (api.get(f"/api/queue/{qid}"), api.delete(f"/api/queue/{qid}"),
              api.post(f"/api/queue/{qid}/retry")):
        assert qid in check_error(r, 404)
    assert "queue is empty" in srv.cli("queue", "list").stdout


# --- reload ------------------------------------------------------------------------------------

def test_reload_swaps_scripts_and_reports_script_errors(site):
    srv, api = site.srv, site.api
    r = check(api.post("/api/reload"), 200)
    assert isinstance(r["message"], str), r
    good = site.script.read_text()
    try:
        site.script.write_text('fn on_data(ctx) {\n    reject(550, "broken" \n}\n')
        check_error(api.post("/api/reload"), 400)
        # The scripts loaded before stay in force.
        assert send(srv, "reject me after a failed reload")[0] == 554
        site.script.write_text("fn on_data(ctx) { }\n")
        check(api.post("/api/reload"), 200)
        assert send(srv, "reject me, but no script says so now")[0] == 250
    finally:
        site.script.write_text(good)
        check(api.post("/api/reload"), 200)
    assert send(srv, "reject me again")[0] == 554


def test_reload_without_a_config_file_is_400(tmp_path, loopback_dns):
    """`corvus serve` on the embedded default (no config file; listeners moved to free ports
    through CORVUS_LISTEN__* variables) has no file to reload from: POST /api/reload is 400
    with an error."""
    keys = ("smtp", "submission", "submissions", "imap", "imaps", "pop3", "pop3s", "http")
    ports = {k: free_port() for k in keys}
    env = {f"CORVUS_LISTEN__{k.upper()}": f"127.0.0.1:{p}" for k, p in ports.items()}
    env["CORVUS_DATA_DIR"] = str(tmp_path / "data")
    env["CORVUS_DNS__NAMESERVERS"] = f'["{loopback_dns.addr}"]'
    log = open(tmp_path / "serve.log", "wb")
    proc = subprocess.Popen([CORVUS_BIN, "serve"], cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT,
                            env=child_env(env))
    try:
        wait_for(lambda: proc.poll() is not None or (port_open(ports["http"])
                                                     and (tmp_path / "data" / "control.sock").exists()),
                 what="the embedded-default server listening", timeout=60)
        assert proc.poll() is None, (tmp_path / "serve.log").read_text()
        out = run_corvus("token", "create", "noconf", env=env)
        assert out.returncode == 0, out.stdout + out.stderr
        api = Api(token=out.stdout.strip().splitlines()[-1], base=f"http://127.0.0.1:{ports['http']}")
        check(api.get("/api/users"), 200)
        check_error(api.post("/api/reload"), 400)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=30)
        log.close()
    assert rc == 0, (tmp_path / "serve.log").read_text()


# --- traces and stats --------------------------------------------------------------------------

def test_trace_endpoints(site):
    api = site.api
    sender = f"tr{time.time_ns()}@remote.example"
    code, text = send(site.srv, "traced", sender=sender)
    assert code == 250, text
    qid = queued_id(text)
    t = wait_trace(api, qid)
    assert set(t) >= {"id", "created", "message_id", "sender", "recipients", "size", "result", "reply",
                      "connection", "sender_auth", "spam", "steps", "filed", "attempts"}, t
    assert t["id"] == qid and t["sender"] == sender and t["recipients"] == [BOB], t
    assert t["result"] == "accepted" and t["reply"].startswith("250") and qid in t["reply"], t
    rfc3339(t["created"])
    mid = t["message_id"]
    assert mid.startswith("<") and mid.endswith(">"), t
    for key in (mid, mid.strip("<>"), urllib.parse.quote(mid, safe="")):
        assert check(api.get(f"/api/trace/{key}"), 200)["id"] == qid, key
    found = check(api.get("/api/traces", params={"sender": sender}), 200)
    assert [s["id"] for s in found] == [qid], found
    assert set(found[0]) == {"id", "created", "message_id", "sender", "recipients", "result"}, found
    assert found[0]["result"] == "accepted" and found[0]["message_id"] == mid, found
    assert [s["id"] for s in check(api.get("/api/traces", params={"message_id": mid.strip("<>")}), 200)] == [qid]
    assert len(check(api.get("/api/traces", params={"limit": 1}), 200)) == 1
    future = int(time.time()) + 3600
    assert check(api.get("/api/traces", params={"sender": sender, "since": future}), 200) == []
    past = (datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(minutes=5)).strftime(
        "%Y-%m-%dT%H:%M:%SZ")
    assert [s["id"] for s in check(api.get("/api/traces", params={"sender": sender, "since": past}), 200)] == [qid]
    assert check(api.get("/api/traces", params={"sender": sender, "until": past}), 200) == []
    check_error(api.get("/api/traces", params={"since": "yesterday"}), 400)
    err = check_error(api.get("/api/trace/NOSUCHTRACE0000"), 404)
    assert "NOSUCHTRACE0000" in err, err


def test_traces_are_newest_first(site):
    """Four messages from one sender in quick succession: the search lists them newest
    first (the contract's order), whether or not they fall in the same second."""
    api = site.api
    sender = f"order{time.time_ns()}@remote.example"
    ids = []
    for i in range(4):
        code, text = send(site.srv, f"order {i}", sender=sender)
        assert code == 250, text
        ids.append(queued_id(text))
    for qid in ids:
        wait_trace(api, qid)
    found = [s["id"] for s in check(api.get("/api/traces", params={"sender": sender}), 200)]
    assert found == ids[::-1], f"sent (oldest first) {ids}, listed {found}"


def test_stats(site):
    api = site.api
    stats = check(api.get("/api/stats"), 200)
    assert stats["interval"] == 30 and stats["samples"], stats
    keys = {"t", "connections_open", "smtp_accepted", "smtp_rejected", "smtp_tempfailed",
            "rcpt_refused", "queue_entries", "deliveries_local", "deliveries_remote", "auth_failures"}
    for s in stats["samples"]:
        assert set(s) >= keys and all(isinstance(s[k], int) for k in keys), s
    last = stats["samples"][-1]
    assert abs(last["t"] - time.time()) < 60, last
    samples, _, _ = scrape(api, METRICS_TOKEN)
    assert last["smtp_accepted"] == total(samples, "corvus_smtp_transactions_total", result="accepted"), last
    assert last["smtp_rejected"] == total(samples, "corvus_smtp_transactions_total", result="rejected"), last
    assert last["auth_failures"] == total(samples, "corvus_auth_attempts_total", result="failure"), last
    assert last["rcpt_refused"] == total(samples, "corvus_smtp_recipients_refused_total"), last
    assert last["deliveries_local"] == total(samples, "corvus_local_deliveries_total"), last


# --- bad input ---------------------------------------------------------------------------------

def test_malformed_and_invalid_json_is_400(site):
    api = site.api
    js = {"Content-Type": "application/json"}
    cases = [
        ("POST", "/api/users", b"{not json", js),
        ("POST", "/api/users", b'{"address": "x@example.org", "password": ', js),
        ("POST", "/api/users", b'["x@example.org", "pw"]', js),
        ("POST", "/api/users", b'{"address": "x@example.org"}', js),
        ("POST", "/api/users", b'{"address": 42, "password": "pw"}', js),
        ("POST", "/api/users", b'{"address": "x@example.org", "password": ""}', js),
        ("POST", "/api/users", b'{"address": "no-at-sign", "password": "pw"}', js),
        ("POST", "/api/users", b'{"address": "x@example.org", "password": "pw"}', {"Content-Type": "text/plain"}),
        ("PUT", f"/api/users/{ALICE}/password", b"{", js),
        ("POST", "/api/domains", b"{}", js),
        ("POST", "/api/domains", b'{"domain": "not a domain!"}', js),
        ("POST", "/api/aliases", b'{"alias": "a@example.org", "targets": "b@example.org"}', js),
        ("POST", "/api/dkim", b'{"selector": "s"}', js),
    ]
    problems = []
    for method, path, body, headers in cases:
        r = api.request(method, path, data=body, headers=headers)
        try:
            check_error(r, 400)
        except AssertionError as e:
            problems.append(f"{body!r}: {e}")
    created = [u["address"] for u in check(api.get("/api/users"), 200) if u["address"] == "x@example.org"]
    for u in created:
        check(api.delete(f"/api/users/{u}"), 200)
    assert not problems, "\n".join(problems)
    assert not created
    # ALICE's password is unchanged.
    site.srv.imap(ALICE).logout()


# --- the OpenAPI document ----------------------------------------------------------------------

def test_openapi_document_validates_and_lists_the_served_routes(site):
    api = site.api
    r = api.get("/api/openapi.json", token=None)
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("application/json"), describe(r)
    doc = r.json()
    validate(doc)
    assert doc["openapi"].startswith("3.0"), doc["openapi"]
    prefix = urllib.parse.urlparse((doc.get("servers") or [{"url": ""}])[0]["url"]).path.rstrip("/")
    documented = set()
    for template, ops in doc["paths"].items():
        for method in ops:
            if method in ("get", "post", "put", "delete", "patch"):
                documented.add(f"{method.upper()} {prefix}{template}")
    want = {r.split(" ", 1)[0] + " /api" + r.split(" ", 1)[1] for r in CONTRACT_ROUTES}
    assert want <= documented, f"routes of the contract missing from the document: {sorted(want - documented)}"
    extra = documented - want - {"GET /api/openapi.json"}
    assert not extra, f"documented routes not in the contract: {sorted(extra)}"
    # Every documented operation reaches a handler: never "no such API endpoint", never 405;
    # a 404 names the (dummy) resource it did not find.
    problems = []
    for route in sorted(documented):
        method, template = route.split(" ", 1)
        params = re.findall(r"\{(\w+)\}", template)
        path = re.sub(r"\{(\w+)\}", lambda m: DUMMY[m.group(1)], template)
        r = api.request(method, path, json={} if method in ("POST", "PUT") else None)
        if r.status_code == 405:
            problems.append(f"{route}: 405 {r.text[:100]!r}")
        elif r.status_code == 404:
            err = r.json().get("error", "") if r.content else ""
            if not params or not any(DUMMY[p] in err for p in params):
                problems.append(f"{route}: 404 not about its resource: {r.text[:150]!r}")
        elif r.status_code >= 500:
            problems.append(f"{route}: {r.status_code} {r.text[:150]!r}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("method, path", [
    ("GET", "/api/nope"), ("GET", "/api/v2/users"), ("GET", "/api/users/alice@example.org"),
    ("GET", "/api/users/alice@example.org/password/x"), ("POST", "/api/queue/X/retry/now"),
    ("GET", "/api/trace"), ("GET", "/api/tokens"), ("DELETE", "/api/dkim/example.org"),
    ("GET", "/apix"), ("GET", "/nope"),
])
def test_undocumented_paths_are_404(site, method, path):
    r = site.api.request(method, path)
    if path.startswith("/api/") and not (method == "GET" and path == "/api/users/alice@example.org"):
        check_error(r, 404)
    else:
        # A documented path with an undocumented method may say 405 instead.
        assert r.status_code in (404, 405), describe(r)


# --- hardening ---------------------------------------------------------------------------------

def test_body_over_max_body_is_413(site):
    """max_body = 4096: a bigger body, with Content-Length or chunked, is 413 and does
    nothing; one just under the limit is served."""
    api = site.api
    js = {"Content-Type": "application/json"}
    big = json.dumps({"address": "big@example.org", "password": "x" * (MAX_BODY + 1000)}).encode()
    problems = []
    r = api.post("/api/users", data=big, headers=js)
    if r.status_code != 413:
        problems.append(f"body of {len(big)} bytes with Content-Length: expected 413: {describe(r)}")
    r = api.post("/api/users", data=iter([big[:1000], big[1000:]]), headers=js)
    assert r.request.headers.get("Transfer-Encoding") == "chunked"
    if r.status_code != 413:
        problems.append(f"chunked body of {len(big)} bytes: expected 413: {describe(r)}")
    assert "big@example.org" not in [u["address"] for u in check(api.get("/api/users"), 200)]
    ok = json.dumps({"address": "big@example.org", "password": "x" * (MAX_BODY - 200)}).encode()
    assert len(ok) < MAX_BODY
    check(api.post("/api/users", data=ok, headers=js), 201)
    check(api.delete("/api/users/big@example.org"), 200)
    assert not problems, "\n".join(problems)


def test_slow_headers_are_cut_off(site):
    """header_timeout = 1s: a client that keeps sending header lines, slowly, never finishing
    the request, is disconnected soon after the timeout; it never gets a 2xx."""
    with socket.create_connection(("127.0.0.1", site.srv.ports["http"]), timeout=5) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        closed, after, got = closed_within(s, 8, trickle=b"X-Slow: a\r\n", every=0.25)
    assert closed, f"still connected after {after:.1f} s of slow headers; got {got[:200]!r}"
    assert after < 4, f"disconnected only after {after:.1f} s (header_timeout = 1s)"
    assert not re.match(rb"HTTP/1\.[01] 2", got), got[:200]


def test_silent_connection_is_cut_off(site):
    """A connection that never sends a byte holds a connection slot: it too is closed after
    header_timeout."""
    with socket.create_connection(("127.0.0.1", site.srv.ports["http"]), timeout=5) as s:
        closed, after, got = closed_within(s, 8)
    assert closed, f"a silent connection is still open after {after:.1f} s (header_timeout = 1s)"
    assert after < 4, f"closed only after {after:.1f} s"


TRAVERSALS = [
    "/admin/..%2f..%2fetc%2fpasswd",
    "/admin/..%2F..%2F..%2F..%2F..%2F..%2Fetc%2Fpasswd",
    "/admin/%2e%2e/%2e%2e/etc/passwd",
    "/admin/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
    "/admin/%2e%2e/",
    "/admin/..%5c..%5cetc%5cpasswd",
    "/admin/%252e%252e%252fetc%252fpasswd",
    "/admin/../../etc/passwd",
    "/admin/....//....//etc/passwd",
    "/admin/%2fetc%2fpasswd",
    "/admin/.%2e/.%2e/etc/passwd",
    "/admin/index.html%00.js",
]


def test_path_traversal_under_admin_is_404(site):
    port = site.srv.ports["http"]
    status, headers, body = get_raw(port, "/admin/")
    assert status == 200 and b"<html" in body.lower(), (status, body[:200])
    for path in TRAVERSALS:
        status, _, body = get_raw(port, path)
        assert status == 404, f"GET {path} -> {status} {body[:200]!r}"
        assert b"root:" not in body, f"GET {path} -> {body[:200]!r}"


def test_path_traversal_with_a_console_directory(corvus_factory, tmp_path):
    """CORVUS_CONSOLE_DIR serves /admin/ from a directory: nothing outside it is reachable."""
    console = tmp_path / "console"
    console.mkdir()
    (console / "index.html").write_text("<!doctype html><html><body>from the directory</body></html>\n")
    (tmp_path / "secret.txt").write_text("TOP-SECRET-OUTSIDE-THE-CONSOLE\n")
    (console / ".hidden").write_text("TOP-SECRET-DOTFILE\n")
    srv = corvus_factory(name="console-dir", listeners=("smtp", "http"), shutdown_timeout="5s")
    srv.start(env={"CORVUS_CONSOLE_DIR": str(console)})
    port = srv.ports["http"]
    status, headers, body = get_raw(port, "/admin/")
    assert status == 200 and b"from the directory" in body, (status, body[:200])
    assert headers.get("content-security-policy"), headers
    paths = TRAVERSALS + ["/admin/..%2fsecret.txt", "/admin/%2e%2e%2fsecret.txt", "/admin/%2e%2e/secret.txt",
                          "/admin/../secret.txt", "/admin/.hidden", "/admin/%2ehidden",
                          f"/admin/{urllib.parse.quote(str(tmp_path / 'secret.txt'), safe='')}"]
    for path in paths:
        status, _, body = get_raw(port, path)
        assert status == 404, f"GET {path} -> {status} {body[:200]!r}"
        assert b"TOP-SECRET" not in body and b"root:" not in body, f"GET {path} -> {body[:200]!r}"


def test_security_headers_and_console_csp(site):
    api = site.api
    responses = {
        "GET /healthz": api.get("/healthz", token=None),
        "GET /api/users (no token)": api.get("/api/users", token=None),
        "GET /api/users": api.get("/api/users"),
        "GET /api/nope": api.get("/api/nope"),
        "GET /admin/": api.get("/admin/", token=None),
        "GET /admin/app.js": api.get("/admin/app.js", token=None),
        "GET /admin/app.css": api.get("/admin/app.css", token=None),
    }
    for what, r in responses.items():
        assert r.headers.get("X-Content-Type-Options") == "nosniff", (what, dict(r.headers))
        assert r.headers.get("X-Frame-Options") == "DENY", (what, dict(r.headers))
        assert r.headers.get("Referrer-Policy") == "no-referrer", (what, dict(r.headers))
    for what in ("GET /admin/", "GET /admin/app.js", "GET /admin/app.css"):
        r = responses[what]
        assert r.status_code == 200, describe(r)
        csp = re.sub(r"\s+", " ", r.headers.get("Content-Security-Policy", "")).strip()
        assert csp == CSP, (what, csp)
    assert responses["GET /admin/"].headers["Content-Type"].startswith("text/html"), responses["GET /admin/"].headers
    assert "javascript" in responses["GET /admin/app.js"].headers["Content-Type"]
    assert responses["GET /admin/app.css"].headers["Content-Type"].startswith("text/css")
    # What the CSP forbids is not in the page: no inline script, style or handler.
    html = responses["GET /admin/"].text
    assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", html, re.I), "inline <script> in index.html"
    assert not re.search(r"<style\b", html, re.I), "<style> block in index.html"
    for tag in re.findall(r"<[a-zA-Z][^>]*>", html):
        assert not re.search(r"\sstyle\s*=", tag, re.I), f"style= attribute in index.html: {tag}"
        assert not re.search(r"\son[a-z]+\s*=", tag, re.I), f"inline event handler in index.html: {tag}"
        assert not re.search(r"\s(src|href)\s*=\s*[\"']?(https?:)?//", tag, re.I), f"external resource: {tag}"


def test_https_listener(site):
    srv = site.srv
    https = Api(srv, site.token, listener="https")
    before, _, _ = scrape(site.api, METRICS_TOKEN)
    r = https.get("/healthz", token=None)
    assert r.status_code == 200 and r.text.strip() == "ok", describe(r)
    assert r.headers.get("X-Frame-Options") == "DENY"
    assert ALICE in [u["address"] for u in check(https.get("/api/users"), 200)]
    # Plain HTTP to the TLS port is a failed handshake, not a response.
    status = None
    try:
        status, _, _ = raw_request(srv.ports["https"], b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                                   timeout=5)
    except (AssertionError, OSError):
        pass
    assert status is None or status >= 400, status
    after = wait_for(lambda: (lambda s: s if total(s, "corvus_tls_handshakes_total", protocol="http", result="failure")
                              > total(before, "corvus_tls_handshakes_total", protocol="http", result="failure")
                              else None)(scrape(site.api, METRICS_TOKEN)[0]),
                     what="the failed handshake counted")
    ok = (total(after, "corvus_tls_handshakes_total", protocol="http", result="success")
          - total(before, "corvus_tls_handshakes_total", protocol="http", result="success"))
    failed = (total(after, "corvus_tls_handshakes_total", protocol="http", result="failure")
              - total(before, "corvus_tls_handshakes_total", protocol="http", result="failure"))
    assert (ok, failed) == (2, 1), series(after, "corvus_tls_handshakes_total")


def test_grafana_dashboard_queries_only_metrics_the_server_exports(site):
    """examples/grafana/corvus.json: every metric a panel queries is a family /metrics has
    (a renamed metric would leave a panel silently empty)."""
    root = __import__("pathlib").Path(__file__).resolve().parents[2]
    dashboard = json.loads((root / "examples" / "grafana" / "corvus.json").read_text())
    _, types, text = scrape(site.api, token=METRICS_TOKEN)
    # Families with no series yet are not in the text: add the ones the names test checks.
    exported = (set(types) | {c[: -len("_total")] for c in COUNTERS} | set(GAUGES)
                | set(HISTOGRAMS) | {"corvus_queue_domain_recipients"})
    wanted = set()
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            for name in re.findall(r"\b((?:corvus|process)_[a-z0-9_]+)", target["expr"]):
                # Samples of a family: name_total (counter), name_bucket (histogram).
                base = re.sub(r"_(total|bucket|sum|count)$", "", name)
                wanted.add(base)
    assert wanted, "the dashboard queries no metrics"
    missing = sorted(w for w in wanted if w not in exported)
    assert not missing, f"dashboard queries metrics /metrics lacks: {missing}"


def test_connections_over_max_connections_are_closed_and_the_rest_served(corvus_factory):
    """[http] max_connections = 2: with two connections held open, a third is closed at once
    without a reply; once they go, requests are served again."""
    srv = corvus_factory(name="http-cap", listeners=("smtp", "http"), shutdown_timeout="5s",
                         http={"max_connections": 2, "header_timeout": "30s"})
    srv.start()
    port = srv.ports["http"]
    held = []

    def hold():
        # A served connection kept open (retried while the startup probe's slot is freed).
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        if s.recv(4096).startswith(b"HTTP/1.1 200"):
            return s
        s.close()
        return None

    try:
        for _ in range(2):
            held.append(wait_for(hold, what="a connection served under the cap", timeout=10))
        with socket.create_connection(("127.0.0.1", port), timeout=5) as third:
            third.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            try:
                got = third.recv(4096)
            except ConnectionResetError:
                got = b""
            assert got == b"", f"a third connection was served over the cap: {got[:100]!r}"
    finally:
        for s in held:
            s.close()
    def served():
        try:
            status, _, body = get_raw(port, "/healthz")
        except AssertionError:  # closed without a reply: the slots are not free yet
            return None
        return body if status == 200 else None

    body = wait_for(served, what="/healthz served again after the held connections closed", timeout=10)
    assert body.strip() == b"ok", body


def test_cross_site_requests_carry_no_credentials_and_are_refused(site):
    """CSRF: the API authenticates only by the Authorization header, which a page on another
    site cannot make a browser send (no cookies are used, and no CORS header lets another
    origin in). A cross-site form post, with or without cookies, is refused and changes
    nothing; a CORS preflight gets no Access-Control-Allow-Origin; the server keeps serving."""
    api = site.api
    victim = f"csrf{time.time_ns()}@example.org"
    evil = {"Origin": "http://evil.example", "Referer": "http://evil.example/page"}
    form = f"address={victim}&password=pw"
    for extra in ({}, {"Cookie": "session=stolen; token=" + site.token}):
        r = api.post("/api/users", token=None, data=form,
                     headers={**evil, **extra, "Content-Type": "application/x-www-form-urlencoded"})
        assert r.status_code == 401, describe(r)
        assert "access-control-allow-origin" not in {k.lower() for k in r.headers}, dict(r.headers)
        assert not r.headers.get("Set-Cookie"), dict(r.headers)
    # text/plain is the other content type a form can send: not JSON to this API.
    r = api.post("/api/users", data='{"address": "%s", "password": "pw"}' % victim,
                 headers={**evil, "Content-Type": "text/plain"})
    assert r.status_code in (400, 415) and r.json().get("error"), describe(r)
    # The preflight a browser makes before a cross-site request with Authorization.
    r = api.request("OPTIONS", "/api/users", token=None,
                    headers={**evil, "Access-Control-Request-Method": "DELETE",
                             "Access-Control-Request-Headers": "authorization"})
    assert "access-control-allow-origin" not in {k.lower() for k in r.headers}, dict(r.headers)
    # Nothing was created; the server still serves.
    users = [u["address"] for u in api.get("/api/users").json()]
    assert victim not in users, users
    assert api.get("/healthz", token=None).status_code == 200
