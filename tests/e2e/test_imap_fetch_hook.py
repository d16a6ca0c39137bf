"""The `fetch` hook over IMAP: a Rhai script from `[[hooks]]` sees each message before its
content is served (user, mailbox, UID, the message itself, client IP), logs an audit line,
and can refuse (NO [NOPERM]) or defer (NO [UNAVAILABLE]) single messages of a FETCH while the
others are served; a refused message is not marked \\Seen; a script that fails is a
tempfail by its on_error policy; other sessions keep working throughout."""

import imaplib

from support.mail import simple_message

SCRIPT = r'''
fn on_fetch(ctx) {
    log("info", `audit: ${ctx.user} fetches ${ctx.mailbox} uid ${ctx.uid} over ${ctx.protocol} from ${ctx.client_ip}`);
    if ctx.user.starts_with("loopy") { loop { } }          // fails: operations limit
    if ctx.mailbox == "Secret" { return reject("classified"); }
    if ctx.subject == "scan me" { return tempfail("being scanned"); }
}
'''


def server(make_server, tmp_path):
    script = tmp_path / "fetch_audit.rhai"
    script.write_text(SCRIPT)
    return make_server(extra=f'\n[[hooks]]\nscript = "{script}"\n')


def fetched(c) -> dict[int, bytes]:
    """Sequence number → body of the FETCH responses imaplib kept."""
    out = {}
    for item in c.response("FETCH")[1]:
        if isinstance(item, tuple):
            out[int(item[0].split()[0])] = item[1]
    return out


def test_fetch_hook_withholds_single_messages(make_server, tmp_path):
    srv = server(make_server, tmp_path)
    alice = srv.add_user("alice")
    bob = srv.add_user("bob")
    for subject in ("first", "scan me", "third"):
        srv.deliver(alice, subject=subject, body=f"body of {subject}\n")
    srv.deliver(bob, subject="for bob", body="bob's body\n")

    c = srv.imap(alice)
    c.select("INBOX")
    # Message 2 is deferred by the script; 1 and 3 are served in the same FETCH.
    typ, data = c.fetch("1:3", "(BODY[])")
    assert typ == "NO", (typ, data)
    assert data[0].startswith(b"[UNAVAILABLE]"), data
    bodies = fetched(c)
    assert sorted(bodies) == [1, 3], bodies
    assert b"body of first" in bodies[1] and b"body of third" in bodies[3]
    # BODY[] set \Seen on the served messages only.
    typ, data = c.fetch("1:3", "(FLAGS)")
    assert typ == "OK"
    flags = {int(d.split()[0]): d for d in data}
    assert b"\\Seen" in flags[1] and b"\\Seen" not in flags[2] and b"\\Seen" in flags[3], flags
    # Metadata is not content: served without asking the hook.
    typ, data = c.fetch("2", "(UID RFC822.SIZE FLAGS)")
    assert typ == "OK" and b"RFC822.SIZE" in data[0], data
    # UID FETCH and BINARY go through the hook too.
    typ, data = c.uid("FETCH", "2", "(BINARY.PEEK[1])")
    assert typ == "NO" and data[0].startswith(b"[UNAVAILABLE]"), data

    # A refused mailbox: NO [NOPERM], the session goes on.
    c.create("Secret")
    c.append("Secret", None, None, simple_message(subject="top secret"))
    c.select("Secret")
    typ, data = c.fetch("1", "(RFC822)")
    assert typ == "NO" and data[0].startswith(b"[NOPERM]"), data
    assert fetched(c) == {}
    assert c.noop()[0] == "OK"

    # Another user's session is not affected.
    b = srv.imap(bob)
    b.select("INBOX")
    typ, data = b.fetch("1", "(BODY.PEEK[TEXT])")
    assert typ == "OK" and b"bob's body" in data[0][1], data
    b.logout()
    c.logout()

    logs = srv.logs()
    assert f"audit: {alice} fetches INBOX uid 2 over imap from 127.0.0.1" in logs, logs
    assert f"audit: {alice} fetches Secret uid 1 over imap" in logs
    assert "fetch deferred by hook" in logs and "being scanned" in logs
    assert "fetch refused by hook" in logs and "classified" in logs


def test_failing_fetch_script_is_a_tempfail_and_others_go_on(make_server, tmp_path):
    srv = server(make_server, tmp_path)
    loopy = srv.add_user("loopy")
    other = srv.add_user("other")
    srv.deliver(loopy, subject="hi")
    srv.deliver(other, subject="hi")
    c = srv.imap(loopy)
    c.select("INBOX")
    typ, data = c.fetch("1", "(BODY.PEEK[])")
    assert typ == "NO" and data[0].startswith(b"[UNAVAILABLE]"), data
    assert c.fetch("1", "(FLAGS)")[0] == "OK"
    o = srv.imap(other)
    o.select("INBOX")
    typ, data = o.fetch("1", "(BODY.PEEK[])")
    assert typ == "OK" and b"Subject: hi" in data[0][1], data
    o.logout()
    # The looping session is still usable after its failed call.
    typ, data = c.fetch("1", "(BODY.PEEK[])")
    assert typ == "NO", data
    c.logout()
