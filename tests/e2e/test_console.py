"""The web admin console (issue 25) in a real browser: headless Chromium driven by Selenium
(support/browser.py) against a Corvus server with its http listener.

One server and one browser serve the whole module; each test signs in again if it finds the
sign-in screen. Every step waits for a concrete element (a table row with the address, the
section's aria-busy="false"), never for time. Each test ends by checking the browser's
console log: no error, no Content Security Policy violation. A screenshot of every screen
goes to tests/e2e/artifacts/console/<store>/ (or $CORVUS_TEST_ARTIFACTS/console/<store>/).

CORVUS_CONSOLE_DIR, when set, is passed to the server so that it serves the console files
from that directory instead of the copies embedded in the binary (editing without a rebuild).
"""

from __future__ import annotations

import email.policy
import os
import re
import smtplib
import urllib.parse
import urllib.request
from dataclasses import dataclass
from email.message import EmailMessage

import pytest

from support.browser import Browser, artifacts_dir
from support.clients import PASSWORD
from support.dns import DnsServer
from support.http import Api, check
from support.server import ALICE, E2E_STORE, Server

NEW_USER = "carol@example.org"
NEW_PASSWORD = "console-pw-1"
NEW_DOMAIN = "console.test"
UNREACHABLE = "dave@unreachable.test"  # its domain answers SERVFAIL: the entry stays queued
SUBMITTER = "erin@example.org"
SIEVE_USER = "frank@example.org"  # the Sieve test's: nobody else's mail is filtered
SIEVE_GOOD = 'require "fileinto";\nif header :contains "Subject" "report" {\n    fileinto "Archive";\n}\n'
SIEVE_BROKEN = 'require "fileinto";\nkeep;\n   frobnicate "x";\n'  # unknown command at line 3, column 4


@dataclass
class Console:
    server: Server
    browser: Browser
    token: str
    url: str  # .../admin/


@pytest.fixture(scope="module")
def console(tmp_path_factory):
    dns = DnsServer()
    dns.add(NEW_DOMAIN, "MX", "10 mx.example.org.")
    dns.fail("unreachable.test")
    base = tmp_path_factory.mktemp("console")
    # A script that looks at every message and lets it through: its verdict is a step of
    # each trace (the built-in policy letting a message through is not recorded).
    script = base / "look.rhai"
    script.write_text('fn on_data(ctx) { if ctx.subject == "never sent" { return reject("no"); } }\n')
    srv = Server(base / "srv", dns.addr,
                 listeners=("smtp", "submission", "http"), shutdown_timeout="5s",
                 hooks=[{"script": script}])
    srv.add_user(ALICE)
    srv.add_user(SUBMITTER)
    srv.add_user(SIEVE_USER)
    env = {}
    if os.environ.get("CORVUS_CONSOLE_DIR"):
        env["CORVUS_CONSOLE_DIR"] = os.environ["CORVUS_CONSOLE_DIR"]
    browser = None
    try:
        srv.start(env=env)
        token = srv.cli("token", "create", "console-test").stdout.strip().splitlines()[-1]
        browser = Browser(artifacts_dir("console") / E2E_STORE)
        yield Console(srv, browser, token, f"http://127.0.0.1:{srv.ports['http']}/admin/")
    finally:
        if browser is not None:
            browser.quit()
        try:
            if srv.running:
                srv.stop(expect=0)
        finally:
            dns.close()


def signed_in(c: Console) -> Browser:
    """The console open and signed in (signing in if the sign-in screen shows)."""
    b = c.browser
    if not b.driver.current_url.startswith(c.url):
        b.open(c.url)
    b.wait(lambda d: b.find("#app").is_displayed() or b.find("#signin").is_displayed(),
           "the console or its sign-in screen")
    if b.find("#signin").is_displayed():
        b.fill("#signin-token", c.token)
        b.click("#signin-submit")
        b.visible("#app")
    return b


def goto(b: Browser, view: str):
    """Open a section from the sidebar and wait until it has loaded."""
    b.click(f"#nav-{view}")
    return b.ready(view)


def row(css_table: str, attr: str, value: str) -> str:
    return f'{css_table} tbody tr[{attr}="{value}"]'


def confirm_dialog(b: Browser, text: str | None = None):
    """Answer the console's modal dialog: type `text` into it if given, then OK."""
    b.visible("#dialog")
    if text is not None:
        b.fill("#dialog-input", text)
    b.click("#dialog-ok")
    b.gone("#dialog")


def send(c: Console, to: str, msg: EmailMessage, sender: str = "sender@remote.test",
         login: str | None = None) -> str:
    """One message over SMTP (submission with `login`); the queue id of the 250 reply."""
    if login:
        s = c.server.submit_session(login)
    else:
        s = smtplib.SMTP("127.0.0.1", c.server.ports["smtp"], local_hostname="client.remote.test",
                         timeout=30)
        s.ehlo()
    try:
        s.mail(sender)
        code, _ = s.rcpt(to)
        assert code == 250, code
        code, reply = s.data(msg.as_bytes(policy=email.policy.SMTP))
        assert code == 250, (code, reply)
    finally:
        s.quit()
    m = re.search(rb"queued as (\S+)", reply)
    assert m, reply
    return m.group(1).decode()


def message(to: str, subject: str, sender: str = "sender@remote.test") -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = to
    msg["Subject"] = subject
    msg["Message-ID"] = f"<console-{os.getpid()}-{subject.replace(' ', '-')}@remote.test>"
    msg.set_content("Hello from the console test.\n")
    return msg


def network_401(entry: dict) -> bool:
    """Chromium logs a failed fetch as a SEVERE network entry; a refused token is one."""
    return entry.get("source") == "network" and " 401 " in entry.get("message", "")


# --- tests -------------------------------------------------------------------------------------


def test_console_is_served_with_a_strict_csp(console):
    for path in ("", "app.js", "app.css"):
        with urllib.request.urlopen(console.url + path, timeout=10) as r:
            assert r.status == 200, path
            csp = r.headers.get("Content-Security-Policy", "")
            assert "script-src 'self'" in csp and "style-src 'self'" in csp, (path, csp)
            assert "unsafe-inline" not in csp and "unsafe-eval" not in csp, csp
            assert r.headers.get("X-Content-Type-Options") == "nosniff", path


def test_a_wrong_token_is_refused(console):
    b = console.browser
    b.open(console.url)
    b.visible("#signin-form")
    b.screenshot("signin")
    b.fill("#signin-token", "not-a-valid-token")
    b.click("#signin-submit")
    error = b.text_in("#signin-error", "401")
    assert error.is_displayed()
    assert "not accepted" in error.text
    assert not b.find("#app").is_displayed()
    assert b.js("return sessionStorage.length") == 0
    b.screenshot("signin-wrong-token")
    b.assert_clean_log(allowed=network_401)


def test_sign_in_shows_the_dashboard(console):
    b = console.browser
    b.open(console.url)
    b.fill("#signin-token", console.token)
    b.click("#signin-submit")
    b.visible("#app")
    b.ready("dashboard")
    charts = b.wait(lambda d: len(b.find_all("#charts figure svg")) >= 5 and b.find_all("#charts figure svg"),
                    "the five dashboard charts")
    titles = [e.text for e in b.find_all("#charts figcaption")]
    assert any("SMTP" in t for t in titles) and any("Queue" in t for t in titles), titles
    assert all(svg.size["width"] > 100 for svg in charts)  # drawn, styled by app.css
    # The token is in session storage only: not in the URL, not in a cookie.
    assert b.js("return sessionStorage.getItem('corvus.admin.token')") == console.token
    assert console.token not in b.driver.current_url
    assert not b.driver.get_cookies()
    assert b.js("return document.documentElement.dataset.cspViolations") == "0"
    b.screenshot("dashboard")
    b.assert_clean_log()


def test_users_add_set_password_delete(console):
    b = signed_in(console)
    goto(b, "users")
    b.visible(row("#users-table", "data-address", ALICE))

    # An API error is shown: adding an existing user is a 409.
    b.fill("#user-add-address", ALICE)
    b.fill("#user-add-password", "whatever")
    b.click("#user-add-submit")
    b.text_in("#error", "409")

    b.fill("#user-add-address", NEW_USER)
    b.fill("#user-add-password", PASSWORD)
    b.click("#user-add-submit")
    new_row = b.visible(row("#users-table", "data-address", NEW_USER))
    assert b.find("td", new_row).text == NEW_USER
    assert not b.find("#error").is_displayed()
    b.visible("#notice")
    b.screenshot("users")

    b.click('[data-testid="user-set-password"]', within=new_row)
    confirm_dialog(b, NEW_PASSWORD)
    b.visible("#notice")
    s = console.server.submit_session(NEW_USER, NEW_PASSWORD)  # the new password works
    s.quit()

    b.click('[data-testid="user-delete"]', within=b.find(row("#users-table", "data-address", NEW_USER)))
    b.screenshot("users-delete-confirm")
    confirm_dialog(b)
    b.gone(row("#users-table", "data-address", NEW_USER))
    b.ready("users")
    assert b.find_all(row("#users-table", "data-address", ALICE))
    b.assert_clean_log(allowed=lambda e: e.get("source") == "network" and " 409 " in e.get("message", ""))


def test_domains_and_dns_records(console):
    b = signed_in(console)
    goto(b, "domains")
    config_row = b.visible(row("#domains-table", "data-domain", "example.org"))
    assert "config" in config_row.text

    b.fill("#domain-add-name", NEW_DOMAIN)
    b.click("#domain-add-submit")
    new_row = b.visible(row("#domains-table", "data-domain", NEW_DOMAIN))
    assert "store" in new_row.text
    b.screenshot("domains")

    b.click('[data-testid="domain-dns"]', within=new_row)
    b.ready("dns")
    assert b.find("#dns-domain").text == NEW_DOMAIN
    mx = b.visible('#dns-table tbody tr[data-purpose="MX"]')
    cells = [td.text for td in b.find_all("td", mx)]
    assert cells[1] == "MX" and NEW_DOMAIN in cells[2], cells
    assert "mx.example.org" in cells[4], cells  # what the test's DNS publishes
    assert cells[5] in ("ok", "mismatch"), cells
    purposes = {r.get_attribute("data-purpose") for r in b.find_all('#dns-table tbody tr[data-testid="dns-row"]')}
    assert {"MX", "SPF"} <= purposes, purposes
    spf = b.find('#dns-table tbody tr[data-purpose="SPF"]')
    assert spf.get_attribute("data-ok") == "false" and "mismatch" in spf.text  # nothing published
    b.screenshot("dns")

    goto(b, "domains")
    b.click('[data-testid="domain-delete"]', within=b.visible(row("#domains-table", "data-domain", NEW_DOMAIN)))
    confirm_dialog(b)
    b.gone(row("#domains-table", "data-domain", NEW_DOMAIN))
    b.assert_clean_log()


def test_aliases_and_dkim(console):
    b = signed_in(console)
    goto(b, "aliases")
    alias = "team@example.org"
    b.fill("#alias-add-alias", alias)
    b.fill("#alias-add-targets", f"{ALICE}, {SUBMITTER}")
    b.click("#alias-add-submit")
    r = b.visible(row("#aliases-table", "data-alias", alias))
    assert ALICE in r.text and SUBMITTER in r.text
    b.screenshot("aliases")
    b.click('[data-testid="alias-delete"]', within=r)
    confirm_dialog(b)
    b.gone(row("#aliases-table", "data-alias", alias))

    goto(b, "dkim")
    b.fill("#dkim-add-domain", "example.org")
    b.fill("#dkim-add-selector", "console")
    b.click("#dkim-add-submit")
    r = b.visible('#dkim-table tbody tr[data-domain="example.org"][data-selector="console"]')
    assert "console._domainkey.example.org" in r.text
    assert "v=DKIM1" in r.text
    b.screenshot("dkim")
    b.assert_clean_log()


def test_trace_of_a_received_message(console):
    # Client-chosen text that is markup if a page ever treats it as HTML: a quoted local
    # part of the envelope sender and a Message-ID, both valid and kept by the trace.
    sender = '"<i id=xss-sender>x</i>"@remote.test'
    msg = message(ALICE, "trace me", sender=sender)
    msg.replace_header("Message-ID", f'<console-{os.getpid()}."<b id=xss-msgid>y</b>"@remote.test>')
    qid = send(console, ALICE, msg, sender=sender)
    b = signed_in(console)
    goto(b, "traces")

    b.fill("#trace-search-recipient", ALICE)
    b.click("#trace-search-submit")
    found = b.visible(row("#traces-table", "data-id", qid))
    assert sender in found.text and "accepted" in found.text
    b.screenshot("traces")

    found.click()
    b.ready("trace")
    assert b.find("#trace-id").text == qid
    summary = b.find("#trace-summary")
    assert msg["Message-ID"] in summary.text and ALICE in summary.text and sender in summary.text
    assert not b.find_all("#xss-sender, #xss-msgid"), "trace text was interpreted as HTML"
    assert "queued as" in summary.text
    assert "127.0.0.1" in b.find("#trace-connection").text
    steps = b.find_all('#trace-steps tbody tr[data-testid="trace-step"]')
    assert steps, "no steps shown"
    assert all(len(b.find_all("td", s)) == 6 for s in steps)
    filed = b.visible('#trace-filed tbody tr[data-testid="trace-filed-row"]')
    assert ALICE in filed.text and "INBOX" in filed.text
    b.screenshot("trace")

    # The same trace by its Message-ID, typed in.
    goto(b, "traces")
    b.fill("#trace-open-id", msg["Message-ID"])
    b.click("#trace-open-submit")
    b.ready("trace")
    b.text_in("#trace-id", qid)
    assert b.find_all('#trace-steps tbody tr[data-testid="trace-step"]')

    # An unknown id: the API's 404 and its error text are shown.
    goto(b, "traces")
    b.fill("#trace-open-id", "NO-SUCH-TRACE")
    b.click("#trace-open-submit")
    error = b.text_in("#error", "404")
    assert "NO-SUCH-TRACE" in error.text
    assert not b.find("#trace-body").is_displayed()  # nothing of the previous trace
    b.screenshot("trace-not-found")
    b.assert_clean_log(allowed=lambda e: e.get("source") == "network" and " 404 " in e.get("message", ""))


def test_queue_details_retry_delete(console):
    qid = send(console, UNREACHABLE, message(UNREACHABLE, "queued", sender=SUBMITTER),
               sender=SUBMITTER, login=SUBMITTER)
    b = signed_in(console)
    goto(b, "queue")
    entry = b.visible(row("#queue-table", "data-id", qid))
    assert UNREACHABLE in entry.text and SUBMITTER in entry.text

    b.click('[data-testid="queue-details"]', within=entry)
    detail = b.visible("#queue-detail")
    b.text_in("#queue-detail-id", qid)
    assert UNREACHABLE in detail.text
    assert "Subject: queued" in b.find("#queue-detail-headers").text
    b.screenshot("queue")

    b.click('[data-testid="queue-retry"]', within=b.find(row("#queue-table", "data-id", qid)))
    b.visible("#notice")
    b.ready("queue")
    b.click("#queue-retry-all")
    b.visible("#notice")
    b.ready("queue")

    b.click('[data-testid="queue-delete"]', within=b.visible(row("#queue-table", "data-id", qid)))
    confirm_dialog(b)
    b.gone(row("#queue-table", "data-id", qid))
    assert not b.find("#queue-detail").is_displayed()
    b.assert_clean_log()


def sieve_list(c: Console, user: str) -> list[str]:
    """`corvus sieve list USER`: one name a line, the active one followed by TAB active."""
    return sorted(c.server.cli("sieve", "list", user).stdout.splitlines())


def test_sieve_scripts_of_a_user(console):
    # A script name that is markup if the page ever treats it as HTML.
    spare = "spare <i id=xss-sieve>x</i>"
    b = signed_in(console)
    goto(b, "users")
    b.click('[data-testid="user-sieve"]', within=b.visible(row("#users-table", "data-address", SIEVE_USER)))
    b.ready("sieve")
    assert b.find("#sieve-user").text == SIEVE_USER
    assert "#/users/" in b.driver.current_url and b.driver.current_url.endswith("/sieve")
    b.visible('#sieve-table tbody tr[data-testid="empty"]')
    assert b.find('[aria-current="page"]').get_attribute("id") == "nav-users"

    # A broken script is refused with the compiler's line and column; nothing is stored and
    # the text stays in the form, to be fixed.
    b.fill("#sieve-add-name", "filing")
    b.fill("#sieve-add-script", SIEVE_BROKEN)
    b.click("#sieve-add-submit")
    error = b.text_in("#error", "400")
    assert re.search(r"line 3, column 4\b", error.text), error.text
    b.ready("sieve")
    assert not b.find_all('#sieve-table tbody tr[data-testid="sieve-row"]')
    assert b.find("#sieve-add-script").get_attribute("value") == SIEVE_BROKEN
    assert sieve_list(console, SIEVE_USER) == []
    b.screenshot("sieve-compile-error")

    b.fill("#sieve-add-script", SIEVE_GOOD)
    b.click("#sieve-add-submit")
    filing = b.visible(row("#sieve-table", "data-name", "filing"))
    assert filing.get_attribute("data-active") == "false" and "inactive" in filing.text
    b.visible("#notice")
    assert not b.find("#error").is_displayed()
    assert b.find("#sieve-add-name").get_attribute("value") == ""  # the form is cleared

    b.fill("#sieve-add-name", spare)
    b.fill("#sieve-add-script", "keep;\n")
    b.click("#sieve-add-submit")
    spare_row = b.visible(row("#sieve-table", "data-name", spare))
    assert spare in spare_row.text
    assert not b.find_all("#xss-sieve"), "a script name was interpreted as HTML"

    # Activate one: the console marks it, the API and the CLI agree, and it cannot be deleted.
    b.click('[data-testid="sieve-activate"]', within=b.find(row("#sieve-table", "data-name", "filing")))
    active = b.visible('#sieve-table tbody tr[data-name="filing"][data-active="true"]')
    assert "active" in active.text and "inactive" not in active.text
    assert not b.find('[data-testid="sieve-delete"]', active).is_enabled()
    assert b.find(row("#sieve-table", "data-name", spare)).get_attribute("data-active") == "false"
    assert sieve_list(console, SIEVE_USER) == ["filing\tactive", spare]
    api = Api(console.server, console.token)
    user = "/api/users/" + urllib.parse.quote(SIEVE_USER, safe="")
    assert check(api.get(f"{user}/sieve/filing"), 200) == {"name": "filing", "active": True,
                                                           "script": SIEVE_GOOD}
    b.screenshot("sieve")

    # Edit the other one in the editor: a broken version is refused, a good one stored.
    b.click('[data-testid="sieve-edit"]', within=b.find(row("#sieve-table", "data-name", spare)))
    b.visible("#sieve-editor")
    b.text_in("#sieve-editor-name", spare)
    assert b.find("#sieve-editor-script").get_attribute("value") == "keep;\n"
    b.fill("#sieve-editor-script", SIEVE_BROKEN)
    b.click("#sieve-editor-save")
    error = b.text_in("#error", "400")
    assert re.search(r"line 3, column 4\b", error.text), error.text
    assert console.server.cli("sieve", "get", SIEVE_USER, spare).stdout == "keep;\n"
    b.fill("#sieve-editor-script", "discard;\n")
    b.click("#sieve-editor-save")
    b.visible("#notice")
    b.ready("sieve")
    assert not b.find("#error").is_displayed()
    assert console.server.cli("sieve", "get", SIEVE_USER, spare).stdout == "discard;\n"
    b.screenshot("sieve-editor")

    # Delete the inactive one (its editor closes with it).
    b.click('[data-testid="sieve-delete"]', within=b.find(row("#sieve-table", "data-name", spare)))
    confirm_dialog(b)
    b.gone(row("#sieve-table", "data-name", spare))
    b.gone("#sieve-editor")
    assert sieve_list(console, SIEVE_USER) == ["filing\tactive"]

    # Deactivate, then delete the last one too.
    b.click('[data-testid="sieve-deactivate"]', within=b.find(row("#sieve-table", "data-name", "filing")))
    b.visible('#sieve-table tbody tr[data-name="filing"][data-active="false"]')
    assert sieve_list(console, SIEVE_USER) == ["filing"]
    assert check(api.get(f"{user}/sieve"), 200) == [{"name": "filing", "active": False}]
    b.click('[data-testid="sieve-delete"]', within=b.find(row("#sieve-table", "data-name", "filing")))
    confirm_dialog(b)
    b.visible('#sieve-table tbody tr[data-testid="empty"]')
    assert sieve_list(console, SIEVE_USER) == []
    b.assert_clean_log(allowed=lambda e: e.get("source") == "network" and " 400 " in e.get("message", ""))


def test_sign_out_forgets_the_token(console):
    b = signed_in(console)
    b.click("#signout")
    b.visible("#signin-form")
    assert not b.find("#app").is_displayed()
    assert b.js("return sessionStorage.length") == 0
    b.driver.refresh()
    b.visible("#signin-form")
    b.screenshot("signed-out")
    b.assert_clean_log()
