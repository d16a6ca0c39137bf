"""End-to-end tests of Rhai hook scripts: every example in scripts/ through real SMTP and IMAP
sessions, the failure policy for a script that loops forever, reload (`corvus reload` and
SIGHUP) while sessions are open, `corvus check` and `corvus script test`.

Each test starts its own `corvus serve` through conftest's `hook_server` (the HOOKS settings
of support/server.py, POP3 too) with the loopback DNS responder answering NXDOMAIN. Mail is
sent with smtplib and read back with imaplib.
"""

from __future__ import annotations

import imaplib
import poplib
import signal
import smtplib
import time

import pytest

from support.clients import rcpt_codes, rcpt_reply
from support.load import served_meanwhile, under_load
from support.mail import checked_header
from support.net import free_port
from support.server import HOOKS, PASSWORD, ROOT, run_corvus, toml_value
from support.wait import wait_for

DOMAIN = HOOKS["domains"][0]

SCRIPTS = ROOT / "scripts"


# ---------------------------------------------------------------------------------------------
# Fixture


@pytest.fixture
def corvus(hook_server):
    """corvus([{script=…, config={…}}, …], delivery=…): a started server with POP3 too and
    `delivery` as its [delivery] table."""
    return lambda hooks, delivery="": hook_server(hooks, pop3=True, extra=f"[delivery]\n{delivery}\n")


def message(subject="Hello", extra_headers="", body="Just a test.\r\n", to=f"alice@{DOMAIN}") -> str:
    return (f"From: <sender@remote.example>\r\nTo: <{to}>\r\nSubject: {subject}\r\n"
            f"{extra_headers}Message-ID: <{time.time_ns()}@remote.example>\r\n\r\n{body}")


# ---------------------------------------------------------------------------------------------
# Example scripts


def test_greylist_tempfails_then_accepts_after_the_delay(corvus):
    srv = corvus([{"script": SCRIPTS / "rcpt_greylist.rhai", "config": {"delay": "1s"}}])
    srv.add_user(f"alice@{DOMAIN}")
    with srv.smtp() as s:
        code, text = rcpt_reply(s, "a@remote.example", f"alice@{DOMAIN}")
        assert code == 451 and b"Greylisted" in text, (code, text)
        s.rset()
        code, _ = rcpt_reply(s, "a@remote.example", f"alice@{DOMAIN}")
        assert code == 451  # retried too early
        s.rset()
        # A different triplet is greylisted on its own.
        code, _ = rcpt_reply(s, "b@remote.example", f"alice@{DOMAIN}")
        assert code == 451
    time.sleep(2.2)
    with srv.smtp() as s:
        s.sendmail("a@remote.example", [f"alice@{DOMAIN}"], message("after greylisting"))
    assert any(b"after greylisting" in m for m in srv.messages(f"alice@{DOMAIN}"))
    # Traceability: the verdict's log line names the hook point, the script and the verdict.
    verdicts = [l for l in srv.logs().splitlines() if "hook verdict" in l]
    assert any("on_rcpt" in l and "rcpt_greylist.rhai" in l and "tempfail" in l for l in verdicts), verdicts
    assert "greylisted" in srv.logs()


def test_rate_limit_per_sender(corvus):
    srv = corvus([{"script": SCRIPTS / "mail_rate_limit.rhai", "config": {"max": 3, "window": "1h"}}])
    srv.add_user(f"alice@{DOMAIN}")
    with srv.smtp() as s:
        for i in range(3):
            s.sendmail("busy@remote.example", [f"alice@{DOMAIN}"], message(f"n{i}"))
        with pytest.raises(smtplib.SMTPSenderRefused) as e:
            s.sendmail("busy@remote.example", [f"alice@{DOMAIN}"], message("n3"))
        assert e.value.smtp_code == 450
        s.rset()
        # Another sender is counted on its own.
        s.sendmail("calm@remote.example", [f"alice@{DOMAIN}"], message("calm"))
    assert len(srv.messages(f"alice@{DOMAIN}")) == 4


def test_blocklist_rejects_sender_and_recipient(corvus):
    srv = corvus([{
        "script": SCRIPTS / "rcpt_blocklist.rhai",
        "config": {"senders": ["@bad.example"], "recipients": [f"gone@{DOMAIN}"]},
    }])
    srv.add_user(f"alice@{DOMAIN}")
    srv.add_user(f"gone@{DOMAIN}")
    with srv.smtp() as s:
        code, text = s.mail("Spammer@BAD.example")
        assert code == 550 and b"5.7.1" in text, (code, text)
        code, _ = s.mail("friend@good.example")
        assert code == 250
        code, _ = s.rcpt(f"gone@{DOMAIN}")
        assert code == 550
        code, _ = s.rcpt(f"alice@{DOMAIN}")
        assert code == 250


def test_subject_tag_header_is_in_the_stored_message(corvus):
    srv = corvus([{
        "script": SCRIPTS / "data_subject_tag.rhai",
        "config": {"header": "X-Corvus-Tag", "rules": [{"words": ["invoice"], "tag": "finance"}]},
    }])
    srv.add_user(f"alice@{DOMAIN}")
    with srv.smtp() as s:
        s.sendmail("a@remote.example", [f"alice@{DOMAIN}"], message("Your Invoice 42"))
        s.sendmail("a@remote.example", [f"alice@{DOMAIN}"], message("Lunch?"))
    msgs = srv.messages(f"alice@{DOMAIN}")
    tagged = [m for m in msgs if b"Invoice 42" in m]
    plain = [m for m in msgs if b"Lunch?" in m]
    assert len(tagged) == 1 and len(plain) == 1
    head = tagged[0].split(b"\r\n\r\n")[0]
    assert b"\r\nX-Corvus-Tag: finance\r\n" in b"\r\n" + head + b"\r\n", head
    assert b"X-Corvus-Tag" not in plain[0]


def test_fileinto_lands_in_a_new_folder(corvus):
    srv = corvus([{
        "script": SCRIPTS / "delivery_fileinto.rhai",
        "config": {"rules": [{"header": "List-Id", "contains": "rust-users", "folder": "Lists/Rust"}]},
    }])
    srv.add_user(f"alice@{DOMAIN}")
    srv.add_user(f"bob@{DOMAIN}")
    with srv.smtp() as s:
        s.sendmail("list@lists.example", [f"alice@{DOMAIN}", f"bob@{DOMAIN}"],
                   message("weekly digest", extra_headers="List-Id: Rust users <rust-users.lists.example>\r\n"))
        s.sendmail("a@remote.example", [f"alice@{DOMAIN}"], message("personal"))
    for user in ("alice", "bob"):
        sorted_ = srv.messages(f"{user}@{DOMAIN}", "Lists/Rust")
        assert len(sorted_) == 1 and b"weekly digest" in sorted_[0], user
    inbox = srv.messages(f"alice@{DOMAIN}")
    assert len(inbox) == 1 and b"personal" in inbox[0]


def test_auth_allowlist_refuses_a_correct_password_from_elsewhere(corvus):
    srv = corvus([{
        "script": SCRIPTS / "auth_ip_allowlist.rhai",
        "config": {"allow": ["192.0.2.0/24"], "listeners": ["submission"]},
    }])
    srv.add_user(f"alice@{DOMAIN}")
    with srv.smtp("submission") as s:
        with pytest.raises(smtplib.SMTPAuthenticationError) as e:
            s.login(f"alice@{DOMAIN}", PASSWORD)
        assert e.value.smtp_code == 535
    # The script covers only submission: the smtp listener and IMAP still let alice in.
    with srv.smtp() as s:
        s.login(f"alice@{DOMAIN}", PASSWORD)
    srv.imap(f"alice@{DOMAIN}").logout()
    assert "refused authentication of alice@example.test from 127.0.0.1 on submission" in srv.logs()


def test_auth_allowlist_allows_listed_networks(corvus):
    srv = corvus([{
        "script": SCRIPTS / "auth_ip_allowlist.rhai",
        "config": {"allow": ["192.0.2.0/24", "127.0.0.0/8"]},
    }])
    srv.add_user(f"alice@{DOMAIN}")
    with srv.smtp("submission") as s:
        s.login(f"alice@{DOMAIN}", PASSWORD)
        s.sendmail(f"alice@{DOMAIN}", [f"alice@{DOMAIN}"], message("from the office"))


def test_scripts_chain_in_order_first_verdict_wins(corvus):
    srv = corvus([
        {"script": SCRIPTS / "rcpt_blocklist.rhai", "config": {"recipients": [f"gone@{DOMAIN}"]}},
        {"script": SCRIPTS / "rcpt_greylist.rhai", "config": {"delay": "1h"}},
    ])
    srv.add_user(f"alice@{DOMAIN}")
    srv.add_user(f"gone@{DOMAIN}")
    with srv.smtp() as s:
        code, _ = rcpt_reply(s, "a@remote.example", f"gone@{DOMAIN}")
        assert code == 550  # the block list decides before the greylist sees it
        code, _ = s.rcpt(f"alice@{DOMAIN}")
        assert code == 451
        # The built-in policy runs first: no relaying whatever the scripts say.
        code, _ = s.rcpt("someone@elsewhere.example")
        assert code == 554


EVERY_POINT = """
fn on_connect(ctx) {
    if ctx.listener == "submission" { return reject(554, "5.7.1 submission closed today"); }
}
fn on_helo(ctx) {
    if ctx.helo == "bad.example" { return reject(550, "5.7.1 not you"); }
}
fn on_auth(ctx) {
    // External authentication: an address with no stored password.
    if ctx.username == "ext@example.test" && ctx.password == "external-secret" && !ctx.password_valid {
        return accept();
    }
}
fn on_mail(ctx) {
    if ctx.mail_from.starts_with("later@") { return tempfail(451, "4.7.1 come back later"); }
}
fn on_rcpt(ctx) {
    log("info", `rcpt ${ctx.rcpt} after ${ctx.rcpts.len()} from ${ctx.mail_from} helo ${ctx.helo} tls ${ctx.tls}`);
}
fn on_data(ctx) {
    switch ctx.subject {
        "discard me" => discard(),
        "quarantine me" => quarantine("looks odd"),
        "reject me" => reject(554, "5.7.1 not this one"),
        _ => ctx.add_header("X-Size-Seen", `${ctx.size}`),
    }
}
fn on_delivery(ctx) {
    ctx.add_header("X-For", ctx.rcpt);          // one copy per recipient
}
fn on_fetch(ctx) {
    if ctx.user.starts_with("carol") && ctx.protocol == "imap" { return reject("withheld"); }
}
"""


def test_every_hook_point_and_verdict_through_sessions(corvus, tmp_path):
    script = tmp_path / "every.rhai"
    script.write_text(EVERY_POINT)
    srv = corvus([{"script": script}])
    for u in ("alice", "bob", "carol"):
        srv.add_user(f"{u}@{DOMAIN}")
    with pytest.raises(smtplib.SMTPConnectError) as e:
        srv.smtp("submission")
    assert e.value.smtp_code == 554
    with srv.smtp() as s:
        assert s.ehlo("bad.example")[0] == 550
        assert s.ehlo("good.example")[0] == 250
        s.login("ext@example.test", "external-secret")  # accepted by the script alone
    with srv.smtp() as s:
        with pytest.raises(smtplib.SMTPAuthenticationError):
            s.login("ext@example.test", "wrong")
    with srv.smtp() as s:
        assert s.mail("later@remote.example")[0] == 451
        s.rset()
        to = [f"alice@{DOMAIN}", f"bob@{DOMAIN}"]
        s.sendmail("a@remote.example", to, message("discard me"))
        s.sendmail("a@remote.example", to, message("quarantine me"))
        with pytest.raises(smtplib.SMTPDataError) as e:
            s.sendmail("a@remote.example", to, message("reject me"))
        assert e.value.smtp_code == 554
        s.sendmail("a@remote.example", to, message("normal"))
        s.sendmail("a@remote.example", [f"carol@{DOMAIN}"], message("for carol"))
    for u in ("alice", "bob"):
        inbox = srv.messages(f"{u}@{DOMAIN}")
        assert len(inbox) == 1 and b"normal" in inbox[0], inbox
        head = inbox[0].split(b"\r\n\r\n")[0]
        assert f"X-For: {u}@{DOMAIN}".encode() in head and b"X-Size-Seen: " in head, head
        assert head.count(b"X-For:") == 1, head
        junk = srv.messages(f"{u}@{DOMAIN}", "Junk")
        assert len(junk) == 1 and b"quarantine me" in junk[0]
    m = srv.imap(f"carol@{DOMAIN}")
    m.select("INBOX")
    typ, data = m.fetch("1", "(BODY.PEEK[])")
    assert typ == "NO" and b"NOPERM" in data[0], (typ, data)
    typ, _ = m.fetch("1", "(FLAGS)")  # metadata is not content: served
    assert typ == "OK"
    m.logout()
    assert f"rcpt bob@{DOMAIN} after 1 from a@remote.example helo client.example tls false" in srv.logs()


EXTERNAL_AUTH = """
// Stands in for an external identity provider: the "password" is a token per user.
fn on_auth(ctx) {
    if !ctx.password_valid && ctx.password == "token-" + local_part(ctx.username) { return accept(); }
}
"""


def mailbox_names(m: imaplib.IMAP4) -> set[str]:
    typ, data = m.list()
    assert typ == "OK", data
    return {line.decode().rsplit(" ", 1)[-1].strip('"') for line in data}


def test_external_auth_provisions_the_account_on_first_login(corvus, tmp_path):
    """An address of a local domain that on_auth accepts without a stored password becomes an
    account on its first login: the six default mailboxes, IMAP and POP3 work, and from then
    on mail to it is delivered (before the first login RCPT refuses it like any unknown user)."""
    script = tmp_path / "external.rhai"
    script.write_text(EXTERNAL_AUTH)
    srv = corvus([{"script": script}])
    dave = f"dave@{DOMAIN}"
    with srv.smtp() as s:
        code, _ = rcpt_reply(s, "a@remote.example", dave)
        assert code == 550  # not an account yet
    assert dave not in srv.cli("user", "list").stdout.split()

    # First login over IMAP (imaplib): the mailboxes exist, APPEND and SELECT work.
    m = srv.imap(dave, "token-dave")
    assert mailbox_names(m) == {"INBOX", "Sent", "Drafts", "Trash", "Junk", "Archive"}
    typ, _ = m.append("Drafts", None, None, message("my draft", to=dave).encode())
    assert typ == "OK"
    typ, _ = m.append("INBOX", None, None, message("appended", to=dave).encode())
    assert typ == "OK"
    typ, data = m.select("INBOX")
    assert typ == "OK" and data[0] == b"1", data
    m.logout()
    assert dave in srv.cli("user", "list").stdout.split()
    # Only the hook lets it in: the account has no password, and a wrong token fails.
    with pytest.raises(imaplib.IMAP4.error):
        srv.imap(dave, "token-someone-else")
    with pytest.raises(imaplib.IMAP4.error):
        srv.imap(dave, "")

    # Mail to it is delivered now.
    with srv.smtp() as s:
        s.sendmail("a@remote.example", [dave], message("delivered after login", to=dave))
    # POP3 sees both INBOX messages.
    p = srv.pop3(dave, "token-dave")
    count, _ = p.stat()
    assert count == 2
    bodies = [b"\r\n".join(p.retr(i)[1]) for i in (1, 2)]
    assert any(b"Subject: appended" in b for b in bodies) and any(b"delivered after login" in b for b in bodies)
    p.quit()

    # A first login over POP3 provisions too.
    erin = f"erin@{DOMAIN}"
    p = srv.pop3(erin, "token-erin")
    assert p.stat() == (0, 0)
    p.quit()
    m = srv.imap(erin, "token-erin")
    assert "Junk" in mailbox_names(m)
    m.logout()

    # Outside the local domains the script's accept is not enough: no account, no login.
    with pytest.raises(imaplib.IMAP4.error):
        srv.imap("mallory@elsewhere.example", "token-mallory")
    with pytest.raises(poplib.error_proto):
        srv.pop3("mallory@elsewhere.example", "token-mallory")
    with srv.smtp() as s:
        with pytest.raises(smtplib.SMTPAuthenticationError):
            s.login("mallory@elsewhere.example", "token-mallory")
        s.login(f"frank@{DOMAIN}", "token-frank")  # SMTP AUTH provisions as well
    assert "mallory@elsewhere.example" not in srv.cli("user", "list").stdout.split()
    assert f"frank@{DOMAIN}" in srv.cli("user", "list").stdout.split()
    assert "account created on first login" in srv.logs()


OUTBOUND = """
fn on_data(ctx) {
    if ctx.subject == "trace me" { return accept(); }
}
fn on_delivery(ctx) {
    if !ctx.remote { return; }
    log("info", `outbound to ${ctx.rcpt} via ${ctx.mx} listener ${ctx.listener}`);
    if ctx.header("X-Classification") == "confidential" {
        return reject(550, "5.7.1 DLP: confidential mail stays inside");
    }
}
"""


def test_outbound_delivery_hook_and_queue_show_decisions(corvus, tmp_path):
    script = tmp_path / "outbound.rhai"
    script.write_text(OUTBOUND)
    # Every outbound attempt goes to a closed local port: mail stays queued unless a hook decides.
    srv = corvus([{"script": script}], delivery=f'relay = "127.0.0.1:{free_port()}"')
    srv.add_user(f"alice@{DOMAIN}")
    with srv.smtp("submission") as s:
        s.login(f"alice@{DOMAIN}", PASSWORD)
        s.mail(f"alice@{DOMAIN}")
        assert s.rcpt("bob@remote.example")[0] == 250
        code, text = s.data(message("trace me", to="bob@remote.example"))
        assert code == 250, text
        qid = text.decode().rsplit(" ", 1)[1]
        s.sendmail(f"alice@{DOMAIN}", ["carol@remote.example"],
                   message("plans", extra_headers="X-Classification: confidential\r\n", to="carol@remote.example"))
    # The data-stage decision is recorded with the queued message.
    shown = srv.cli("queue", "show", qid).stdout
    assert "on_data" in shown and "outbound.rhai" in shown and "Accept" in shown, shown
    # The confidential message is bounced by on_delivery before any connection is tried.
    bounce = wait_for(lambda: [m for m in srv.messages(f"alice@{DOMAIN}") if b"DLP: confidential" in m],
                      what="bounce to alice")
    assert b"carol@remote.example" in bounce[0]
    logs = wait_for(lambda: "outbound to bob@remote.example via 127.0.0.1 listener queue" in srv.logs() and srv.logs(),
                    what="outbound hook log")
    assert "outbound to carol@remote.example" in logs
    assert "bob@remote.example" in srv.cli("queue", "list").stdout  # still queued, retrying


# ---------------------------------------------------------------------------------------------
# Failure policy, reload, tooling

LOOPING = """
// Loops forever for recipients starting with "loop", else lets the chain continue.
fn on_rcpt(ctx) {
    if ctx.rcpt.starts_with("loop") {
        let i = 0;
        loop { i += 1; }
    }
}
"""


def test_looping_script_tempfails_and_others_keep_being_served(corvus, tmp_path):
    script = tmp_path / "loop.rhai"
    script.write_text(LOOPING)
    srv = corvus([{"script": script}])
    srv.add_user(f"alice@{DOMAIN}")
    srv.add_user(f"loop@{DOMAIN}")
    results = {}

    def looper(n):
        with srv.smtp() as s:
            results[n] = rcpt_codes(s, "a@remote.example", f"loop@{DOMAIN}", 5)

    # Meanwhile other sessions are served, and promptly.
    took = served_meanwhile(srv, looper, 3, lambda s, i: s.sendmail(
        "a@remote.example", [f"alice@{DOMAIN}"], message(f"ok {i}")), join=60)
    assert all(codes == [451] * 5 for codes in results.values()) and len(results) == 3, results
    assert len(srv.messages(f"alice@{DOMAIN}")) == 5
    assert took < 20, took
    logs = srv.logs()
    assert "hook failed" in logs and "loop.rhai:3:1: on_rcpt: too many operations" in logs, logs[-2000:]


def test_on_error_continue_and_reject(corvus, tmp_path):
    script = tmp_path / "loop.rhai"
    script.write_text(LOOPING)
    srv = corvus([
        {"script": script, "on_error": "continue"},
        {"script": SCRIPTS / "rcpt_blocklist.rhai", "config": {"recipients": [f"loop-blocked@{DOMAIN}"]}},
    ])
    srv.add_user(f"loop@{DOMAIN}")
    srv.add_user(f"loop-blocked@{DOMAIN}")
    with srv.smtp() as s:
        assert rcpt_reply(s, "a@remote.example", f"loop@{DOMAIN}")[0] == 250
        assert s.rcpt(f"loop-blocked@{DOMAIN}")[0] == 550  # next entry still decides
    srv.stop()
    srv2 = corvus([{"script": script, "on_error": "reject"}])
    with srv2.smtp() as s:
        assert rcpt_reply(s, "a@remote.example", f"loop@{DOMAIN}")[0] == 550


def test_reload_swaps_scripts_without_dropping_sessions(corvus, tmp_path):
    script = tmp_path / "policy.rhai"
    script.write_text('fn on_rcpt(ctx) { if ctx.rcpt.starts_with("bob") { return reject(550, "5.7.1 v1 says no"); } }\n')
    srv = corvus([{"script": script}])
    srv.add_user(f"alice@{DOMAIN}")
    srv.add_user(f"bob@{DOMAIN}")
    old = srv.smtp()  # a session open across the reloads
    code, text = rcpt_reply(old, "a@remote.example", f"bob@{DOMAIN}")
    assert code == 550 and b"v1" in text
    old.rset()

    # v2 refuses alice instead of bob.
    script.write_text('fn on_rcpt(ctx) { if ctx.rcpt.starts_with("alice") { return reject(550, "5.7.1 v2 says no"); } }\n')
    r = srv.cli("reload")
    assert "reloaded 1 hook script" in r.stdout
    code, text = rcpt_reply(old, "a@remote.example", f"alice@{DOMAIN}")
    assert code == 550 and b"v2" in text
    assert old.rcpt(f"bob@{DOMAIN}")[0] == 250
    old.rset()

    # A broken script is refused and v2 stays.
    script.write_text('fn on_rcpt(ctx) {\n    reject(550, "v3" \n}\n')
    r = srv.cli("reload", check=False)
    assert r.returncode != 0
    assert f"{script}:3:1:" in r.stderr, r.stderr
    code, text = rcpt_reply(old, "a@remote.example", f"alice@{DOMAIN}")
    assert code == 550 and b"v2" in text
    old.rset()

    # SIGHUP does the same as `corvus reload`; adding an entry to the config takes effect too.
    script.write_text("fn on_rcpt(ctx) { }\n")
    srv.write_config([{"script": script},
                      {"script": SCRIPTS / "rcpt_blocklist.rhai", "config": {"recipients": [f"bob@{DOMAIN}"]}}])
    before = srv.logs().count("hooks reloaded")
    srv.proc.send_signal(signal.SIGHUP)
    deadline = time.time() + 10
    while srv.logs().count("hooks reloaded") == before and time.time() < deadline:
        time.sleep(0.05)
    assert srv.logs().count("hooks reloaded") == before + 1
    code, _ = rcpt_reply(old, "a@remote.example", f"alice@{DOMAIN}")
    assert code == 250
    assert old.rcpt(f"bob@{DOMAIN}")[0] == 550
    old.data(message("survived three reloads"))
    old.quit()
    assert any(b"survived three reloads" in m for m in srv.messages(f"alice@{DOMAIN}"))


def test_reload_under_load(corvus, tmp_path):
    script = tmp_path / "policy.rhai"
    script.write_text("fn on_rcpt(ctx) { }\n")
    srv = corvus([{"script": script}])
    srv.add_user(f"alice@{DOMAIN}")
    send = lambda s: s.sendmail("a@remote.example", [f"alice@{DOMAIN}"], message("load"))  # noqa: E731
    # Sessions of 20 messages (max_messages_per_session is 100).
    with under_load(srv, send, per_session=20, join=60) as (errors, sent):
        for i in range(5):
            script.write_text(f"fn on_rcpt(ctx) {{ let generation = {i}; }}\n")
            srv.cli("reload")
            time.sleep(0.2)
    assert not errors, errors
    assert sent[0] > 0


def test_check_reports_syntax_errors_as_file_line_column(tmp_path):
    bad = tmp_path / "bad.rhai"
    bad.write_text("fn on_rcpt(ctx) {\n    let x = ;\n}\n")
    cfg = tmp_path / "corvus.toml"
    cfg.write_text(f'data_dir = {toml_value(tmp_path / "data")}\n[[hooks]]\nscript = "bad.rhai"\n')
    r = run_corvus("-c", cfg, "check")
    assert r.returncode == 2
    assert r.stderr.strip() == f"{bad}:2:13: Unexpected ';'", r.stderr
    bad.write_text("fn on_rcpt(ctx) { }\n")
    r = run_corvus("-c", cfg, "check")
    assert r.returncode == 0 and "1 hook script; store: sled at" in r.stdout, r.stdout + r.stderr
    # An unknown key in a [[hooks]] entry is refused.
    cfg.write_text('[[hooks]]\nscript = "bad.rhai"\nconfg = {}\n')
    r = run_corvus("-c", cfg, "check")
    assert r.returncode == 2 and "confg" in r.stderr


def test_script_test_prints_verdict_actions_and_logs(tmp_path):
    run = lambda *a: run_corvus("script", "test", *a)  # noqa: E731
    r = run(SCRIPTS / "rcpt_greylist.rhai", "--hook", "rcpt", "--from", "a@x.example", "--to", "b@y.example",
            "--ip", "1.2.3.4", "--config", '{"delay": "1h"}', "--repeat", "2")
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("verdict:  tempfail 451 4.7.1 Greylisted") == 2, r.stdout
    assert "log:      [info] greylisted 1.2.3.0/24 a@x.example b@y.example" in r.stdout
    msg = tmp_path / "m.eml"
    msg.write_text("From: a@x.example\nSubject: Invoice due\n\nPay.\n")
    r = run(SCRIPTS / "data_subject_tag.rhai", "--hook", "data", "--from", "a@x.example", "--to", "b@y.example",
            "--message", msg, "--config", '{"rules": [{"words": ["invoice"], "tag": "finance"}]}')
    assert "action:   add_header X-Corvus-Tag: finance" in r.stdout, r.stdout + r.stderr
    loop = tmp_path / "loop.rhai"
    loop.write_text(LOOPING)
    r = run(loop, "--hook", "rcpt", "--to", "loop@y.example")
    assert r.returncode == 1
    assert "error:    " in r.stdout and "too many operations" in r.stdout
    assert "verdict:  tempfail 451" in r.stdout and "(on_error = tempfail)" in r.stdout


INJECT = r"""
fn on_data(ctx) {
    // The subject comes from the sender; as an encoded word it decodes to CR LF.
    ctx.add_header("X-Echo-Subject", ctx.subject);
    ctx.add_header("X-Crlf", "x\r\nBcc: evil@example.net\r\n\r\nfake body");
    ctx.add_header("X-Lf", "y\nX-Injected: lf");
    ctx.add_header("X-Cr", "z\rX-Injected: cr");
    // Past the 998-octet line limit, with a field where a hard wrap would put it.
    ctx.add_header("X-Long", "LONG");
    for name in ["Bcc: evil@example.net\r\nX-A", "X Space", "X:Colon", "", "X-\u00e9", "X-A\nBcc"] {
        try { ctx.add_header(name, "v"); } catch (e) { log("info", `refused ${e}`); }
    }
}
"""


def test_script_headers_cannot_inject_fields_or_lines(corvus, tmp_path):
    """add_header with CR/LF in the value (literal, or a decoded encoded-word from the sender),
    with invalid field names, or with an over-long value: no extra field appears, the body is
    untouched, and no header line exceeds 998 octets."""
    script = tmp_path / "inject.rhai"
    script.write_text(INJECT.replace("LONG", "a" * 990 + "Bcc: evil@example.net " + "b" * 3000))
    srv = corvus([{"script": script}])
    srv.add_user(f"alice@{DOMAIN}")
    subject = "=?utf-8?q?hi=0D=0ABcc:_evil@example.net=0D=0A=0D=0Abody?="
    with srv.smtp() as s:
        s.sendmail("a@remote.example", [f"alice@{DOMAIN}"], message(subject, body="the real body\r\n"))
    [raw] = srv.messages(f"alice@{DOMAIN}")
    head, fields = checked_header(raw, b"the real body\r\n")
    for bad in (b"bcc", b"x-injected", b"fake body", b"x-a", b"x space", b"x", b""):
        assert bad not in fields, (bad, head.decode(errors="replace"))
    assert b"\r" not in head.replace(b"\r\n", b"") and b"\n" not in head.replace(b"\r\n", b"")
    for name in (b"x-echo-subject", b"x-crlf", b"x-lf", b"x-cr", b"x-long"):
        assert fields.count(name) == 1, (name, fields)
    assert b"X-Crlf: x  Bcc: evil@example.net    fake body" in head
    assert srv.logs().count("is not a header field name") == 6, srv.logs()[-3000:]
