"""End-to-end tests of WASM plugins: every example plugin in plugins/ through real SMTP (and
IMAP) sessions, misbehaving plugins (infinite loop, memory bomb, panic, trap, huge host-call
argument) failing only their own calls while other sessions continue, a plugin trying to leave
its sandbox (files, sockets, environment), reload under load,
`corvus check` and `corvus plugin test`.

Each test starts its own `corvus serve` through conftest's `hook_server` (the HOOKS settings of
support/server.py) with a DNS responder of its own (conftest's `dns`: NXDOMAIN except for the
block-list names a test adds). Mail is sent with smtplib and read back with imaplib. The plugins are built by tests/build-plugins into target/plugins (CORVUS_PLUGIN_DIR
overrides where they are looked for).
"""

from __future__ import annotations

import base64
import os
import pathlib
import re
import signal
import smtplib
import time

import pytest

from support.clients import rcpt_codes, rcpt_reply
from support.load import served_meanwhile, under_load
from support.mail import checked_header
from support.server import HOOKS, PASSWORD, ROOT, run_corvus, toml_value

DOMAIN = HOOKS["domains"][0]

PLUGIN_DIR = pathlib.Path(
    os.environ.get("CORVUS_PLUGIN_DIR") or ROOT / "target" / "plugins" / "wasm32-wasip2" / "release"
)


def plugin(name: str) -> pathlib.Path:
    p = PLUGIN_DIR / (name.replace("-", "_") + ".wasm")
    if not p.is_file():
        pytest.fail(f"{p} is missing: run tests/build-plugins first")
    return p


# ---------------------------------------------------------------------------------------------
# Fixture


@pytest.fixture
def corvus(hook_server, dns):
    """corvus([{plugin=…, config={…}}, …], name, extra, start): a server (started unless
    `start` is false) that uses this test's DNS responder (conftest's `dns`)."""
    return lambda hooks, name=None, extra="", start=True: hook_server(
        hooks, name=name, extra=extra, start=start, dns_addr=dns.addr)


def message(subject="Hello", extra_headers="", body="Just a test.\r\n", to=f"alice@{DOMAIN}") -> str:
    return (f"From: <sender@remote.example>\r\nTo: <{to}>\r\nSubject: {subject}\r\n"
            f"Date: Mon, 1 Jan 2024 10:00:00 +0000\r\n"
            f"{extra_headers}Message-ID: <{time.time_ns()}@remote.example>\r\n\r\n{body}")


def header(raw: bytes, name: str) -> str | None:
    head = raw.split(b"\r\n\r\n", 1)[0].decode(errors="replace")
    for line in head.split("\r\n"):
        if line.lower().startswith(name.lower() + ":"):
            return line.split(":", 1)[1].strip()
    return None


# ---------------------------------------------------------------------------------------------
# Example plugins


def test_spam_score_header_and_quarantine(corvus):
    srv = corvus([{"plugin": plugin("data-spam-score"), "config": {"threshold": 5.0}}])
    srv.add_user(f"alice@{DOMAIN}")
    with srv.smtp() as s:
        s.sendmail("a@remote.example", [f"alice@{DOMAIN}"], message("Lunch tomorrow", body="Noon?\r\n"))
        s.sendmail("a@remote.example", [f"alice@{DOMAIN}"],
                   message("YOU HAVE WON THE LOTTERY!!!",
                           body="Dear friend, click here for free money. Viagra! Act now.\r\n"))
    inbox = srv.messages(f"alice@{DOMAIN}")
    assert len(inbox) == 1 and b"Lunch tomorrow" in inbox[0]
    assert header(inbox[0], "X-Spam-Score") == "0.0 / 5.0", inbox[0][:600]
    junk = srv.messages(f"alice@{DOMAIN}", "Junk")
    assert len(junk) == 1 and b"LOTTERY" in junk[0]
    score = float(header(junk[0], "X-Spam-Score").split()[0])
    assert score >= 5.0
    assert "WORD(viagra)" in header(junk[0], "X-Spam-Tests")
    assert "data_spam_score.wasm" in srv.logs() and "quarantine" in srv.logs()


def test_spam_score_reject_threshold(corvus):
    srv = corvus([{"plugin": plugin("data-spam-score"), "config": {"threshold": 3.0, "reject_threshold": 6.0}}])
    srv.add_user(f"alice@{DOMAIN}")
    with srv.smtp() as s:
        with pytest.raises(smtplib.SMTPDataError) as e:
            s.sendmail("a@remote.example", [f"alice@{DOMAIN}"],
                       message("FREE MONEY WINNER!!!", body="viagra cialis lottery you have won\r\n"))
        assert e.value.smtp_code == 550 and b"looks like spam" in e.value.smtp_error


def test_dnsbl_refuses_listed_clients_at_connect(corvus, dns):
    # The client is 127.0.0.1; bl.test lists it, clean.test does not.
    dns.add("1.0.0.127.bl.test", "A", "127.0.0.2")
    listed = corvus([{"plugin": plugin("connect-dnsbl"), "config": {"zones": ["clean.test", "bl.test"]}}], "a")
    with pytest.raises(smtplib.SMTPConnectError) as e:
        smtplib.SMTP("127.0.0.1", listed.ports["smtp"], timeout=30)
    assert e.value.smtp_code == 554 and b"blocked using bl.test" in e.value.smtp_error
    assert "1.0.0.127.clean.test" in dns.queries and "1.0.0.127.bl.test" in dns.queries
    assert "is listed in bl.test" in listed.logs()

    clean = corvus([{"plugin": plugin("connect-dnsbl"), "config": {"zones": ["clean.test"]}}], "b")
    clean.add_user(f"alice@{DOMAIN}")
    with clean.smtp() as s:
        s.sendmail("a@remote.example", [f"alice@{DOMAIN}"], message("not listed"))
    assert len(clean.messages(f"alice@{DOMAIN}")) == 1


def attachment_message(filename: str, content: bytes, ctype="application/octet-stream") -> str:
    b64 = base64.encodebytes(content).decode().replace("\n", "\r\n")
    return (
        f"From: <a@remote.example>\r\nTo: <alice@{DOMAIN}>\r\nSubject: files\r\nMIME-Version: 1.0\r\n"
        f"Content-Type: multipart/mixed; boundary=\"XYZ\"\r\n\r\n"
        f"--XYZ\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n"
        f"--XYZ\r\nContent-Type: {ctype}\r\nContent-Disposition: attachment; filename=\"{filename}\"\r\n"
        f"Content-Transfer-Encoding: base64\r\n\r\n{b64}--XYZ--\r\n"
    )


def test_attachment_filter_by_name_and_magic(corvus):
    srv = corvus([{"plugin": plugin("data-attachment-filter")}])
    srv.add_user(f"alice@{DOMAIN}")
    pe = b"MZ\x90\x00\x03\x00\x00\x00" + b"\x00" * 120
    with srv.smtp() as s:
        with pytest.raises(smtplib.SMTPDataError) as e:
            s.sendmail("a@remote.example", [f"alice@{DOMAIN}"], attachment_message("invoice.pdf.exe", b"%PDF-1.4 hello"))
        assert e.value.smtp_code == 552 and b"invoice.pdf.exe" in e.value.smtp_error
        with pytest.raises(smtplib.SMTPDataError) as e:
            s.sendmail("a@remote.example", [f"alice@{DOMAIN}"], attachment_message("invoice.pdf", pe, "application/pdf"))
        assert e.value.smtp_code == 552 and b"Windows executable" in e.value.smtp_error
        s.sendmail("a@remote.example", [f"alice@{DOMAIN}"], attachment_message("report.pdf", b"%PDF-1.4 fine"))
    inbox = srv.messages(f"alice@{DOMAIN}")
    assert len(inbox) == 1 and b"report.pdf" in inbox[0]


def test_rate_limit_counts_in_kv_across_sessions_and_restarts(corvus):
    hooks = [{"plugin": plugin("mail-rate-limit"), "config": {"limit": 3, "window": "1h"}}]
    srv = corvus(hooks)
    srv.add_user(f"alice@{DOMAIN}")
    for i in range(3):  # one session per message: the counter lives in kv, not the instance
        with srv.smtp() as s:
            s.sendmail("busy@remote.example", [f"alice@{DOMAIN}"], message(f"n{i}"))
    with srv.smtp() as s:
        with pytest.raises(smtplib.SMTPSenderRefused) as e:
            s.sendmail("busy@remote.example", [f"alice@{DOMAIN}"], message("n3"))
        assert e.value.smtp_code == 451 and b"Too many messages" in e.value.smtp_error
        s.sendmail("calm@remote.example", [f"alice@{DOMAIN}"], message("other sender"))
    # The kv store persists: still limited after a restart.
    srv.stop()
    srv.start()
    with srv.smtp() as s:
        code, _ = s.mail("busy@remote.example")
        assert code == 451
    assert len(srv.messages(f"alice@{DOMAIN}")) == 4


def test_auth_table_logs_in_from_config(corvus):
    srv = corvus([{"plugin": plugin("auth-table"),
                   "config": {"mode": "required", "users": {f"table@{DOMAIN}": "from the table",
                                                            f"alice@{DOMAIN}": "table password"}}}])
    srv.add_user(f"alice@{DOMAIN}")
    srv.add_user(f"bob@{DOMAIN}")
    # A user only in the table logs in with the table's password.
    with srv.smtp("submission") as s:
        assert s.login(f"table@{DOMAIN}", "from the table")[0] == 235
    # For a user in the table, the table's password is required, not the store's.
    with srv.smtp("submission") as s:
        with pytest.raises(smtplib.SMTPAuthenticationError) as e:
            s.login(f"alice@{DOMAIN}", PASSWORD)
        assert e.value.smtp_code == 535
    with srv.smtp("submission") as s:
        assert s.login(f"alice@{DOMAIN}", "table password")[0] == 235
    # Users not in the table are left to the account store.
    with srv.smtp("submission") as s:
        assert s.login(f"bob@{DOMAIN}", PASSWORD)[0] == 235
    with srv.smtp("submission") as s:
        with pytest.raises(smtplib.SMTPAuthenticationError):
            s.login(f"nobody@{DOMAIN}", "x")


def test_plugins_and_scripts_chain_in_order(corvus, tmp_path):
    script = tmp_path / "tag.rhai"
    script.write_text('fn on_data(ctx) { ctx.add_header("X-Script", "seen"); }\n')
    srv = corvus([
        {"plugin": plugin("data-attachment-filter")},
        {"script": script},
        {"plugin": plugin("data-spam-score")},
    ])
    srv.add_user(f"alice@{DOMAIN}")
    with srv.smtp() as s:
        s.sendmail("a@remote.example", [f"alice@{DOMAIN}"], message("chained"))
    m = srv.messages(f"alice@{DOMAIN}")[0]
    assert header(m, "X-Script") == "seen" and header(m, "X-Spam-Score") is not None


# ---------------------------------------------------------------------------------------------
# Misbehaving plugins


@pytest.mark.parametrize("mode,reason", [
    ("loop", "CPU time limit exceeded"),
    ("oom", "memory limit exceeded"),
    ("panic", "panic on purpose"),
    ("trap", "trap"),
    ("big-kv", "at most 65536 bytes"),
])
def test_misbehaving_plugin_fails_its_call_and_others_continue(corvus, mode, reason):
    srv = corvus([{"plugin": plugin("misbehave"), "config": {"mode": mode, "when_rcpt": f"bad@{DOMAIN}"}}])
    srv.add_user(f"alice@{DOMAIN}")
    srv.add_user(f"bad@{DOMAIN}")
    results = {}

    def bad_session(n):
        with srv.smtp() as s:
            codes = rcpt_codes(s, "a@remote.example", f"bad@{DOMAIN}", 3)
            # The same session still works for a good recipient after its plugin failed.
            codes.append(rcpt_reply(s, "a@remote.example", f"alice@{DOMAIN}")[0])
            results[n] = codes

    took = served_meanwhile(srv, bad_session, 2, lambda s, i: s.sendmail(
        "a@remote.example", [f"alice@{DOMAIN}"], message(f"ok {i}")))
    assert len(results) == 2 and all(c == [451, 451, 451, 250] for c in results.values()), results
    assert len(srv.messages(f"alice@{DOMAIN}")) == 5
    assert took < 30, took
    logs = srv.logs()
    assert "hook failed" in logs and reason in logs, logs[-3000:]
    assert srv.proc.poll() is None


def test_plugins_cannot_reach_files_network_or_environment(corvus, tmp_path):
    """No file system, network or environment for a plugin beyond its imports: misbehave's
    "escape" mode tries each through the standard library (WASI underneath) and reports how
    it ended; every attempt must be denied, and nothing must reach the TCP listener or the
    file system."""
    import socket

    secret = tmp_path / "secret.txt"
    secret.write_text("the server's secret\n")
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    listener.settimeout(1.0)
    address = "127.0.0.1:%d" % listener.getsockname()[1]
    srv = corvus([{"plugin": plugin("misbehave"),
                   "config": {"mode": "escape", "hook": "data", "name": address, "value": str(secret)}}])
    srv.add_user(f"alice@{DOMAIN}")
    with srv.smtp() as s:
        s.sendmail("a@remote.example", [f"alice@{DOMAIN}"], message("escape"))
    [raw] = srv.messages(f"alice@{DOMAIN}")
    report = header(raw, "X-Escape")
    assert report, raw[:1000]
    attempts = dict(item.split("=", 1) for item in report.split("; "))
    assert set(attempts) == {"read", "list", "create", "tcp", "udp", "lookup", "env"}, report
    for what in ("read", "list", "create", "tcp", "udp", "lookup"):
        assert attempts[what].startswith("denied"), (what, report)
    assert attempts["env"] == "empty", report
    with pytest.raises(socket.timeout):
        listener.accept()
    listener.close()
    assert not (tmp_path / "secret.txt.escaped").exists()


def test_plugin_limits_come_from_the_config(corvus):
    """[plugins] sets the per-call CPU and memory limits: a memory bomb fails at 16 MiB and a
    loop at 20 ms of CPU, each failing only its own call."""
    limits = '[plugins]\ncpu_time = "20ms"\nmemory_mib = 16\nmax_message = 1048576\n'
    for mode, reason in [("oom", "memory limit exceeded (16 MiB)"), ("loop", "CPU time limit exceeded (20 ms)")]:
        srv = corvus([{"plugin": plugin("misbehave"), "config": {"mode": mode, "when_rcpt": f"bad@{DOMAIN}"}}],
                     name=mode, extra=limits)
        srv.add_user(f"alice@{DOMAIN}")
        srv.add_user(f"bad@{DOMAIN}")
        with srv.smtp() as s:
            assert rcpt_reply(s, "a@remote.example", f"bad@{DOMAIN}")[0] == 451
            s.rset()
            assert rcpt_reply(s, "a@remote.example", f"alice@{DOMAIN}")[0] == 250
        assert reason in srv.logs(), srv.logs()[-3000:]
        srv.stop()


def test_plugin_wall_time_bounds_a_call_that_waits_on_dns(corvus, dns):
    """A call waiting on DNS answers that never come is cut at `wall_time`, though each
    lookup alone is within `dns_timeout`: that call fails (451), the next one works."""
    limits = '[plugins]\ncpu_time = "20ms"\nwall_time = "400ms"\ndns_timeout = "300ms"\n'
    srv = corvus([{"plugin": plugin("misbehave"),
                   "config": {"mode": "dns-wait", "name": "never.example", "lookups": 10,
                              "when_rcpt": f"bad@{DOMAIN}"}}], extra=limits)
    dns.silence("never.example")
    srv.add_user(f"alice@{DOMAIN}")
    srv.add_user(f"bad@{DOMAIN}")
    with srv.smtp() as s:
        t = time.monotonic()
        assert rcpt_reply(s, "a@remote.example", f"bad@{DOMAIN}")[0] == 451
        waited = time.monotonic() - t
        s.rset()
        assert rcpt_reply(s, "a@remote.example", f"alice@{DOMAIN}")[0] == 250
    # Ten lookups of 300 ms would take 3 s; the call ends at 400 ms (plus a tick).
    assert 0.35 < waited < 1.5, waited
    assert "timed out after 400 ms" in srv.logs(), srv.logs()[-3000:]
    assert dns.queries.count("never.example") >= 2


def test_check_reports_bad_plugin_limits(tmp_path):
    cfg = tmp_path / "corvus.toml"
    cfg.write_text(f"data_dir = {toml_value(tmp_path / 'data')}\n[plugins]\nmemory_mib = 8\nmax_message = 16777216\n")
    r = run_corvus("-c", cfg, "check")
    assert r.returncode != 0
    assert "plugins.max_message" in r.stderr and "memory_mib" in r.stderr, r.stderr
    cfg.write_text(f"data_dir = {toml_value(tmp_path / 'data')}\n[plugins]\nmemory = 8\n")
    r = run_corvus("-c", cfg, "check")
    assert r.returncode != 0 and "memory" in r.stderr, r.stderr


def test_on_error_continue_skips_a_failing_plugin(corvus):
    srv = corvus([
        {"plugin": plugin("misbehave"), "config": {"mode": "panic"}, "on_error": "continue"},
        {"plugin": plugin("misbehave"), "config": {"mode": "reject", "when_rcpt": f"no@{DOMAIN}"}},
    ])
    srv.add_user(f"alice@{DOMAIN}")
    srv.add_user(f"no@{DOMAIN}")
    with srv.smtp() as s:
        assert rcpt_reply(s, "a@remote.example", f"alice@{DOMAIN}")[0] == 250
        code, text = s.rcpt(f"no@{DOMAIN}")
        assert code == 550 and b"misbehave says no" in text


def test_wrong_wit_version_is_refused_at_start_and_by_check(corvus, tmp_path):
    srv = corvus([{"plugin": plugin("wrong-version")}], name="wrong", start=False)
    with pytest.raises(AssertionError) as e:
        srv.start()
    assert "built for corvus:plugin@0.9.0" in str(e.value) and "provides corvus:plugin@0.4.1 and 0.3.0" in str(e.value)
    r = srv.cli("check", check=False)
    assert r.returncode == 2 and "built for corvus:plugin@0.9.0" in r.stderr, r.stderr
    # A plugin built for the older 0.2 interface is refused the same way, with the fix.
    srv.write_config([{"plugin": plugin("previous-version")}])
    r = srv.cli("check", check=False)
    assert r.returncode == 2 and "built for corvus:plugin@0.2.0" in r.stderr, r.stderr
    assert "provides corvus:plugin@0.4.1 and 0.3.0; rebuild it" in r.stderr, r.stderr


def test_check_validates_plugins_and_their_config(tmp_path):
    cfg = tmp_path / "corvus.toml"
    good = plugin("mail-rate-limit")
    cfg.write_text(f'data_dir = {toml_value(tmp_path / "data")}\n[[hooks]]\nplugin = {toml_value(good)}\n'
                   f'config = {{ window = "soon" }}\n')
    r = run_corvus("-c", cfg, "check")
    assert r.returncode == 2 and 'init: window: "soon" is not a duration' in r.stderr, r.stderr
    cfg.write_text(f'data_dir = {toml_value(tmp_path / "data")}\n[[hooks]]\nplugin = {toml_value(good)}\n')
    r = run_corvus("-c", cfg, "check")
    assert r.returncode == 0 and "1 plugin; store: sled at" in r.stdout, r.stdout + r.stderr
    # The compiled plugin is cached in data_dir for the server.
    assert list((tmp_path / "data" / "plugin-cache").glob("*.cwasm"))


def test_plugin_test_command(tmp_path):
    r = run_corvus("plugin", "test", plugin("auth-table"), "--hook", "auth",
                   "--username", "alice@example.com", "--password", "w",
                   "--config", '{"users": {"alice@example.com": "w"}}')
    assert r.returncode == 0, r.stdout + r.stderr
    assert "verdict:  accept" in r.stdout and "logged in from the table" in r.stdout, r.stdout


# ---------------------------------------------------------------------------------------------
# Reload


def test_reload_under_load(corvus, tmp_path):
    srv = corvus([{"plugin": plugin("noop")}])
    srv.add_user(f"alice@{DOMAIN}")
    srv.add_user(f"no@{DOMAIN}")
    send = lambda s: s.sendmail("a@remote.example", [f"alice@{DOMAIN}"], message("load"))  # noqa: E731
    with under_load(srv, send, per_session=10) as (errors, sent):
        generations = [
            [{"plugin": plugin("noop"), "config": {"tag": "g1"}}],
            [{"plugin": plugin("data-spam-score")}, {"plugin": plugin("noop")}],
            [{"plugin": plugin("misbehave"), "config": {"mode": "reject", "when_rcpt": f"no@{DOMAIN}"}}],
        ]
        for hooks in generations:
            srv.write_config(hooks)
            r = srv.cli("reload")
            assert "reloaded" in r.stdout
            time.sleep(0.3)
        # A broken generation is refused; the running one stays.
        srv.write_config([{"plugin": plugin("wrong-version")}])
        r = srv.cli("reload", check=False)
        assert r.returncode != 0 and "corvus:plugin@0.9.0" in r.stderr
    assert not errors, errors
    assert sent[0] > 0
    with srv.smtp() as s:
        assert rcpt_reply(s, "a@remote.example", f"no@{DOMAIN}")[0] == 550
    # SIGHUP reloads too.
    srv.write_config([{"plugin": plugin("noop")}])
    before = srv.logs().count("hooks reloaded")
    srv.proc.send_signal(signal.SIGHUP)
    deadline = time.time() + 20
    while srv.logs().count("hooks reloaded") == before and time.time() < deadline:
        time.sleep(0.05)
    with srv.smtp() as s:
        assert rcpt_reply(s, "a@remote.example", f"no@{DOMAIN}")[0] == 250


def test_plugin_headers_cannot_inject_fields_or_lines(corvus):
    """A plugin's add-headers with CR/LF in the value, or over-long, adds exactly one field and
    no line over 998 octets; an invalid field name fails the call (on_error decides) and adds
    nothing."""
    long_value = "a" * 990 + "Bcc: evil@example.net " + "b" * 3000
    hdr = lambda name, value, **kw: dict(  # noqa: E731
        {"plugin": plugin("misbehave"), "config": {"mode": "header", "hook": "data", "name": name, "value": value}},
        **kw)
    srv = corvus([
        hdr("X-Crlf", "x\r\nBcc: evil@example.net\r\n\r\nfake body"),
        hdr("X-Lf", "y\nX-Injected: lf"),
        hdr("X-Long", long_value),
        hdr("Bcc: evil@example.net\r\nX-A", "v", on_error="continue"),
        hdr("X Space", "v", on_error="continue"),
    ])
    srv.add_user(f"alice@{DOMAIN}")
    with srv.smtp() as s:
        s.sendmail("a@remote.example", [f"alice@{DOMAIN}"], message("inject", body="the real body\r\n"))
    [raw] = srv.messages(f"alice@{DOMAIN}")
    head, fields = checked_header(raw, b"the real body\r\n")
    for bad in (b"bcc", b"x-injected", b"fake body", b"x-a", b"x space"):
        assert bad not in fields, (bad, head.decode(errors="replace"))
    for name in (b"x-crlf", b"x-lf", b"x-long"):
        assert fields.count(name) == 1, (name, fields)
    assert header(raw, "X-Crlf") == "x  Bcc: evil@example.net    fake body"
    assert srv.logs().count("is not a header field name") == 2, srv.logs()[-3000:]


def test_plugin_state_lasts_one_session_though_instances_are_reused(corvus):
    """The server keeps instances between sessions; the SDK sees a new `context.session`
    and builds its plugin value again: every session starts with fresh `&mut self` state
    (noop counts its calls), while two messages in one session share the session's
    instance."""
    srv = corvus([{"plugin": plugin("noop"), "config": {"tag": "e2e"}}])
    srv.add_user(f"alice@{DOMAIN}")
    for i in range(4):
        with srv.smtp() as s:
            s.sendmail("x@remote.example", [f"alice@{DOMAIN}"], message(f"single {i}"))
    with srv.smtp() as s:
        s.sendmail("x@remote.example", [f"alice@{DOMAIN}"], message("first of two"))
        s.sendmail("x@remote.example", [f"alice@{DOMAIN}"], message("second of two"))
    got = {}
    for raw in srv.messages(f"alice@{DOMAIN}"):
        got[header(raw, "Subject")] = header(raw, "X-Noop")
    singles = {got[f"single {i}"] for i in range(4)}
    assert len(singles) == 1, got  # the same count in every session: state starts afresh
    first = int(got["first of two"].split("calls=")[1])
    second = int(got["second of two"].split("calls=")[1])
    assert got["first of two"] in singles and second > first, got


def test_plugins_see_the_sender_authentication_facts(corvus):
    """The `auth` import answers what the server's checks found for the message:
    the same results it writes into Authentication-Results, plus the domains."""
    srv = corvus([{"plugin": plugin("noop"), "config": {"auth": True}}])
    srv.add_user(f"alice@{DOMAIN}")
    with srv.smtp() as s:
        s.sendmail("x@remote.example", [f"alice@{DOMAIN}"], message("facts"))
    raw = srv.messages(f"alice@{DOMAIN}")[-1]
    head = re.sub(r"\r\n[ \t]+", " ", raw.split(b"\r\n\r\n", 1)[0].decode())
    facts = re.search(r"^X-Noop-Auth: (.*?)\r?$", head, re.M | re.I).group(1)
    results = re.search(r"^Authentication-Results: (.*?)\r?$", head, re.M | re.I).group(1)
    spf = re.search(r"spf=(\w+)", results).group(1)
    dmarc = re.search(r"dmarc=(\w+)", results).group(1)
    assert facts.startswith(f"spf={spf} (remote.example) "), (facts, results)
    assert f" dmarc={dmarc} (remote.example, " in facts, (facts, results)
    assert " dkim=none [] " in facts and " arc=none () " in facts, facts
    assert facts.endswith(" action=accept"), facts


def test_plugins_read_the_session_facts_and_the_message_from_the_context(corvus):
    """Hooks get a `context` resource and ask it for what they need: noop writes every fact
    it read, and the length of the message it fetched, into headers."""
    srv = corvus([{"plugin": plugin("noop"), "config": {"facts": True, "read_message": True}}])
    srv.add_user(f"alice@{DOMAIN}")
    srv.add_user(f"bob@{DOMAIN}")
    body = message("context facts")
    with srv.smtp() as s:
        s.ehlo("client.example")
        s.sendmail("x@remote.example", [f"alice@{DOMAIN}", f"bob@{DOMAIN}"], body)
    raw = srv.messages(f"alice@{DOMAIN}")[-1]
    facts = header(raw, "X-Noop-Facts")
    assert facts.startswith("hook=data listener=smtp ip=127.0.0.1 "), facts
    assert " helo=client.example tls=false user= from=x@remote.example " in facts, facts
    assert f" rcpts=alice@{DOMAIN},bob@{DOMAIN} " in facts, facts
    size = int(header(raw, "X-Noop-Size"))
    assert facts.endswith(f" size={size} truncated=false message={size}"), facts
    # The message the plugin read is the one that arrived (before the server's headers).
    assert size >= len(body.encode()), (size, len(body))
