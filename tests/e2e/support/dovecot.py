"""Dovecot from Debian's packages as a reference IMAP and POP3 server for differential tests:
started by the test with a private config (passwd-file users with plain passwords, Maildir in
a temp dir with `/` as separator, the same special-use mailboxes Corvus creates, plain IMAP
and POP3 on free loopback ports), stopped at the end. `available()` says whether the binary
is installed (tests/run installs dovecot-imapd and dovecot-pop3d).

`Dovecot(managesieve=True)` also serves ManageSieve (RFC 5804; dovecot-managesieved) on
`ports["sieve"]`, with the Sieve limits given in `sieve` (plugin settings such as
`sieve_max_script_size`); `tls=(cert, key)` turns on STARTTLS (PEM files, e.g. from
support/certs.py). `managesieve_available()` says whether managesieved is installed."""

from __future__ import annotations

import contextlib
import os
import pathlib
import shutil
import subprocess
import tempfile
import time

from .net import free_port, port_open
from .server import PASSWORD

DOVECOT = shutil.which("dovecot") or "/usr/sbin/dovecot"

# The mailboxes every Corvus account starts with, and their special uses (RFC 6154).
MAILBOXES = {"Sent": "\\Sent", "Drafts": "\\Drafts", "Trash": "\\Trash", "Junk": "\\Junk",
             "Archive": "\\Archive"}


def available() -> bool:
    return os.path.exists(DOVECOT)


def managesieve_available() -> bool:
    return available() and os.path.exists("/usr/lib/dovecot/managesieve")


class Dovecot:
    def __init__(self, managesieve: bool = False, tls: tuple | None = None, sieve: dict | None = None):
        # Outside pytest's 0700 temp dirs: Dovecot's auth process (user dovecot) reads the
        # passwd file and its mail processes (user nobody) write the Maildirs.
        base = pathlib.Path(tempfile.mkdtemp(prefix="corvus-dovecot-"))
        self.base = base
        os.chmod(base, 0o755)
        self.home = base / "home"
        self.home.mkdir(exist_ok=True)
        # Mail processes must not run as root: the users' mail belongs to nobody.
        os.chown(self.home, 65534, 65534)
        self.passwd = base / "passwd"
        self.passwd.write_text("")
        self.ports = {"imap": free_port(), "pop3": free_port()}
        protocols = "imap pop3"
        extra = ""
        if managesieve:
            self.ports["sieve"] = free_port()
            protocols += " sieve"
            settings = {"sieve": "file:~/sieve;active=~/.dovecot.sieve", **(sieve or {})}
            extra += ("service managesieve-login {\n  inet_listener sieve {\n"
                      f"    port = {self.ports['sieve']}\n  }}\n}}\nplugin {{\n"
                      + "".join(f"  {k} = {v}\n" for k, v in settings.items()) + "}\n")
        ssl = "no"
        if tls:
            # Dovecot's processes read the files as root at start (the `<` form).
            ssl = f"yes\nssl_cert = <{tls[0]}\nssl_key = <{tls[1]}"
        self.config = base / "dovecot.conf"
        self.log = base / "dovecot.log"
        # Corvus subscribes a new account's mailboxes: `auto = subscribe` does the same here.
        boxes = "  mailbox INBOX {\n    auto = subscribe\n  }\n" + "".join(
            f"  mailbox {name} {{\n    special_use = {use}\n    auto = subscribe\n  }}\n"
            for name, use in MAILBOXES.items()
        )
        self.config.write_text(f"""
base_dir = {base}/run
state_dir = {base}/state
log_path = {self.log}
protocols = {protocols}
listen = 127.0.0.1
ssl = {ssl}
disable_plaintext_auth = no
auth_mechanisms = plain login
first_valid_uid = 65534
mail_location = maildir:{self.home}/%u/Maildir:LAYOUT=fs
imap_capability = +CONDSTORE QRESYNC
namespace inbox {{
  inbox = yes
  separator = /
{boxes}}}
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {self.passwd}
}}
userdb {{
  driver = static
  args = uid=65534 gid=65534 home={self.home}/%u
}}
service imap-login {{
  inet_listener imap {{
    port = {self.ports['imap']}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
service pop3-login {{
  inet_listener pop3 {{
    port = {self.ports['pop3']}
  }}
  inet_listener pop3s {{
    port = 0
  }}
}}
{extra}""")
        self.proc: subprocess.Popen | None = None

    def add_user(self, user: str, password: str):
        with open(self.passwd, "a") as f:
            f.write(f"{user}:{{PLAIN}}{password}\n")

    def start(self):
        self.proc = subprocess.Popen([DOVECOT, "-c", str(self.config), "-F"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        for port in self.ports.values():
            while not port_open(port):
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    log = self.log.read_text() if self.log.exists() else ""
                    raise AssertionError(f"dovecot did not start:\n{log}")
                time.sleep(0.05)
        return self

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        shutil.rmtree(self.base, ignore_errors=True)



@contextlib.contextmanager
def beside(corvus, names):
    """A started Dovecot with the same accounts as the started server `corvus` (password
    PASSWORD), one per name in `names`: yields (dovecot, {name: address}) and stops both at
    the end. The accounts are made before Dovecot starts: its passwd-file is re-read only when
    its mtime changes, which can miss quick additions."""
    dovecot = Dovecot()
    users = {}
    for name in names:
        users[name] = corvus.add_user(name.replace("_", "-"))
        dovecot.add_user(users[name], PASSWORD)
    try:
        yield dovecot.start(), users
    finally:
        dovecot.stop()
        corvus.stop()
