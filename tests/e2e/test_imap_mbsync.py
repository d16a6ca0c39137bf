"""A real synchronising client: mbsync (isync) keeps a local Maildir and a Corvus account in
sync over IMAPS, both ways: initial full sync (messages and folders from either side appear on
the other), then a flag change and a deletion made on either side propagate.

The server's self-signed certificate is given to mbsync as CertificateFile (a host
certificate, trusted by exact match), so TLS is verified, not switched off."""

import os
import pathlib
import re
import shutil
import subprocess
import time

import pytest

from support.mail import simple_message

MBSYNC = shutil.which("mbsync")
pytestmark = pytest.mark.skipif(MBSYNC is None, reason="mbsync (isync) not installed")
PASS = "mbsync-secret-1"


def write_rc(tmp: pathlib.Path, srv, user: str) -> pathlib.Path:
    maildir = tmp / "mail"
    maildir.mkdir(exist_ok=True)
    rc = tmp / "mbsyncrc"
    rc.write_text(f"""
IMAPAccount corvus
Host 127.0.0.1
Port {srv.ports["imaps"]}
User {user}
Pass {PASS}
SSLType IMAPS
CertificateFile {srv.data_dir / "tls" / "cert.pem"}
SystemCertificates no
Timeout 30

IMAPStore remote
Account corvus

MaildirStore local
Path {maildir}/
Inbox {maildir}/INBOX
SubFolders Verbatim

Channel corvus
Far :remote:
Near :local:
Patterns *
Create Both
Remove None
Expunge Both
SyncState *
Sync All
""")
    return rc


def mbsync(rc: pathlib.Path):
    r = subprocess.run([MBSYNC, "-c", str(rc), "-a"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, f"mbsync failed ({r.returncode}):\n{r.stdout}\n{r.stderr}"
    return r


def local_state(maildir: pathlib.Path, folder: str) -> dict[str, str]:
    """{subject: maildir flag letters} of the messages in a local folder."""
    out = {}
    base = maildir / folder
    for sub in ("cur", "new"):
        d = base / sub
        if not d.is_dir():
            continue
        for f in d.iterdir():
            text = f.read_bytes()
            m = re.search(rb"^Subject: (.*?)\r?$", text, re.M)
            subject = m.group(1).decode() if m else "?"
            flags = f.name.split(":2,", 1)[1] if ":2," in f.name else ""
            out[subject] = flags
    return out


def remote_state(srv, user, mailbox) -> dict[str, set]:
    r = srv.raw_imap(user, tls=True, password=PASS)
    r.ok(f'EXAMINE "{mailbox}"')
    out = {}
    for l in r.ok("FETCH 1:* (FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])"):
        subj = re.search(rb"Subject: (.*?)\r\n", l).group(1).decode()
        out[subj] = set(re.search(rb"FLAGS \(([^)]*)\)", l).group(1).decode().split())
    r.close()
    return out


def find_local(maildir, folder, subject) -> pathlib.Path:
    for sub in ("cur", "new"):
        d = maildir / folder / sub
        for f in d.iterdir() if d.is_dir() else []:
            if f"Subject: {subject}\r".encode() in f.read_bytes() or \
                    f"Subject: {subject}\n".encode() in f.read_bytes():
                return f
    raise AssertionError(f"{subject} not in local {folder}")


def add_local_message(maildir, folder, subject, flags=""):
    for sub in ("cur", "new", "tmp"):
        (maildir / folder / sub).mkdir(parents=True, exist_ok=True)
    name = f"{time.time_ns()}.{os.getpid()}.localhost" + (f":2,{flags}" if flags else "")
    where = "cur" if flags else "new"
    (maildir / folder / where / name).write_bytes(simple_message(subject))


def test_mbsync_two_way_sync(make_server, tmp_path):
    srv = make_server(imap={"allow_plaintext_auth": False})
    user = srv.add_user(password=PASS)
    for i in range(3):
        srv.deliver(user, subject=f"server-{i}")
    r = srv.raw_imap(user, tls=True, password=PASS)
    r.ok('CREATE "Projects/Alpha"')
    msg = simple_message("server-archived")
    r.ok(b"APPEND Archive (\\Flagged \\Seen) {%d+}\r\n%s" % (len(msg), msg))
    r.close()
    maildir = tmp_path / "mail"
    rc = write_rc(tmp_path, srv, user)
    maildir.mkdir(exist_ok=True)
    add_local_message(maildir, "INBOX", "local-new")
    add_local_message(maildir, "LocalOnly", "local-folder-msg", flags="S")

    # 1. Initial two-way sync.
    mbsync(rc)
    assert set(local_state(maildir, "INBOX")) == {"server-0", "server-1", "server-2",
                                                  "local-new"}
    assert local_state(maildir, "Archive") == {"server-archived": "FS"}
    assert (maildir / "Projects" / "Alpha" / "cur").is_dir()
    assert set(remote_state(srv, user, "INBOX")) == {"server-0", "server-1", "server-2",
                                                     "local-new"}
    assert remote_state(srv, user, "LocalOnly") == {"local-folder-msg": {"\\Seen"}}
    # A second run with no changes is a no-op and still succeeds.
    mbsync(rc)
    assert len(local_state(maildir, "INBOX")) == 4

    # 2. Flag changes both ways.
    r = srv.raw_imap(user, tls=True, password=PASS)
    r.ok("SELECT INBOX")
    seq = int(r.ok("SEARCH SUBJECT server-1")[0].split()[2])
    r.ok(f"STORE {seq} +FLAGS (\\Seen \\Answered)")
    r.close()
    f = find_local(maildir, "INBOX", "server-2")
    base, _, flags = f.name.partition(":2,")
    f.rename(maildir / "INBOX" / "cur" / (base + ":2," + "".join(sorted(set(flags + "F")))))
    mbsync(rc)
    assert set(local_state(maildir, "INBOX")["server-1"]) == {"R", "S"}
    assert "\\Flagged" in remote_state(srv, user, "INBOX")["server-2"]

    # 3. Deletions both ways: expunged on the server, and removed locally.
    r = srv.raw_imap(user, tls=True, password=PASS)
    r.ok("SELECT INBOX")
    seq = int(r.ok("SEARCH SUBJECT server-0")[0].split()[2])
    r.ok(f"STORE {seq} +FLAGS (\\Deleted)")
    r.ok("EXPUNGE")
    r.close()
    find_local(maildir, "INBOX", "local-new").unlink()
    mbsync(rc)
    assert set(local_state(maildir, "INBOX")) == {"server-1", "server-2"}
    assert set(remote_state(srv, user, "INBOX")) == {"server-1", "server-2"}

    # 4. New mail after the first sync arrives locally; the state is stable afterwards.
    srv.deliver(user, subject="server-late")
    mbsync(rc)
    assert set(local_state(maildir, "INBOX")) == {"server-1", "server-2", "server-late"}
    mbsync(rc)
    assert set(remote_state(srv, user, "INBOX")) == {"server-1", "server-2", "server-late"}
