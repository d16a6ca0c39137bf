"""Restart persistence over real sockets: after SIGTERM (exit 0) and a restart, UIDVALIDITY,
UIDNEXT, HIGHESTMODSEQ, flags, keywords, mailboxes and subscriptions are unchanged, and UIDs
freed by EXPUNGE are never handed out again. Sessions get BYE on shutdown."""

import re


def snapshot(r, mailbox):
    sel = r.ok(f'SELECT "{mailbox}"')
    info = {}
    for key in ("UIDVALIDITY", "UIDNEXT", "HIGHESTMODSEQ"):
        info[key] = int([re.search(key.encode() + rb" (\d+)", l).group(1) for l in sel
                         if key.encode() in l][0])
    info["flags"] = {}
    for l in r.ok("FETCH 1:* (UID FLAGS)"):
        uid = int(re.search(rb"UID (\d+)", l).group(1))
        # \Recent is per session (the first SELECT after a COPY takes it), not stored state.
        flags = re.search(rb"FLAGS \(([^)]*)\)", l).group(1).split()
        info["flags"][uid] = sorted(f for f in flags if f != b"\\Recent")
    return info


def test_restart_keeps_uids_flags_and_mailboxes(make_server):
    srv = make_server()
    u = srv.add_user()
    srv.fill(u, 4, "p")
    r = srv.raw_imap(u, select="INBOX")
    r.ok("STORE 1 +FLAGS (\\Seen \\Flagged $Label1)")
    r.ok("STORE 2 +FLAGS (\\Answered $Work Junk)")
    r.ok("STORE 4 +FLAGS (\\Deleted)")
    r.ok("EXPUNGE")  # UID 4, the highest, is gone: UIDNEXT must stay 5
    r.ok('CREATE "Folder/Sub"')
    r.ok('UNSUBSCRIBE "Folder"')
    r.ok("COPY 1:2 Folder/Sub")
    before = snapshot(r, "INBOX")
    before_sub = snapshot(r, "Folder/Sub")
    lsub_before = sorted(r.ok('LSUB "" "*"'))
    assert before["UIDNEXT"] == 5 and sorted(before["flags"]) == [1, 2, 3]
    r.close()

    srv.restart()

    r = srv.raw_imap(u)
    assert snapshot(r, "INBOX") == before
    assert snapshot(r, "Folder/Sub") == before_sub
    assert sorted(r.ok('LSUB "" "*"')) == lsub_before
    # UIDs are never reused: the next delivery gets UID 5, not 4.
    srv.deliver(u, subject="after restart")
    r.ok("SELECT INBOX")
    uids = [int(re.search(rb"UID (\d+)", l).group(1)) for l in r.ok("UID FETCH 1:* (UID)")]
    assert uids == [1, 2, 3, 5]
    r.close()

    # Expunge everything, restart again: still no reuse, and the keywords defined before are
    # still offered in FLAGS.
    r = srv.raw_imap(u, select="INBOX")
    r.ok("STORE 1:* +FLAGS.SILENT (\\Deleted)")
    r.ok("EXPUNGE")
    r.close()
    srv.restart()
    srv.deliver(u, subject="after second restart")
    r = srv.raw_imap(u)
    info = snapshot(r, "INBOX")
    assert list(info["flags"]) == [6] and info["UIDNEXT"] == 7
    assert info["UIDVALIDITY"] == before["UIDVALIDITY"]
    r.close()


def test_flags_set_by_fetch_survive_restart(make_server):
    srv = make_server()
    u = srv.add_user()
    srv.deliver(u)
    r = srv.raw_imap(u, select="INBOX")
    r.ok("FETCH 1 BODY[]")  # sets \Seen as a side effect
    r.close()
    srv.restart()
    r = srv.raw_imap(u, select="INBOX")
    assert b"\\Seen" in r.ok("FETCH 1 FLAGS")[0]
    r.close()


def test_shutdown_sends_bye_to_idle_sessions(make_server):
    srv = make_server()
    u = srv.add_user()
    r = srv.raw_imap(u, select="INBOX")
    r.send("i IDLE\r\n")
    assert r.line().startswith(b"+")
    other = srv.raw_imap()  # not logged in
    assert srv.stop() == 0
    assert r.line().startswith(b"* BYE")
    assert other.line().startswith(b"* BYE")
    r.close()
    other.close()
    srv.start()  # the fixture expects to stop it again
