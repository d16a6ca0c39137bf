#!/usr/bin/python3
"""Test milter for the Corvus end-to-end tests (pymilter, Debian's python3-milter: run it with
/usr/bin/python3, the interpreter that package installs for).

Usage: keyword_milter.py SOCKET LOGFILE, where SOCKET is `inet:PORT@127.0.0.1` or
`unix:/path/to.sock` (libmilter syntax).

Every callback appends one JSON line to LOGFILE: {"ev": …, "conn": N, …}, with `conn` the
number of the milter connection (one per connection from the MTA), so a test can find the
events of its own session. Each line carries the macros the callback could read (those in
MACROS that the MTA sent; libmilter keeps the macros of earlier stages of the message).

What it does is driven by keywords in the Subject or the body of the message (at end of
message, eom):
  (always)     adds `X-Test-Milter: seen`, and changes the Subject to `[milter] <subject>`
  ADDRCPT      adds the recipient <carol@example.org>
  DELRCPT      deletes the second recipient of the transaction
  CHGFROM      changes the envelope sender to <changed@example.org>
  INSHEADER    inserts `X-Inserted: first` at index 0 (the top of the header)
  DELHEADER    deletes the header field X-Delete-Me
  REPLACEBODY  replaces the body with "replaced body\r\n"
  QUARANTINE   quarantines the message ("test quarantine"), then accepts it
  FORBIDDEN    rejects it: 550 5.7.1 forbidden keyword
  TEMPFAIL     tempfails it: 451 4.7.1 try again later (test milter)
  DISCARD      discards it
  HANG         sleeps for an hour in eom (for the MTA's timeouts)
and at RCPT the recipient blocked@example.org is rejected: 550 5.7.1 recipient blocked by
test milter. The final keywords are checked in the order FORBIDDEN, TEMPFAIL, DISCARD.
"""

import itertools
import json
import sys
import threading
import time

import Milter
from Milter import noreply

SOCKET, LOG = sys.argv[1], sys.argv[2]
MACROS = ("j", "{daemon_name}", "{daemon_addr}", "{daemon_port}", "v", "_", "i",
          "{client_addr}", "{client_port}", "{client_name}", "{client_ptr}",
          "{tls_version}", "{cipher}", "{cipher_bits}",
          "{auth_type}", "{auth_authen}", "{auth_author}",
          "{mail_addr}", "{mail_host}", "{mail_mailer}",
          "{rcpt_addr}", "{rcpt_host}", "{rcpt_mailer}")

_lock = threading.Lock()
_conns = itertools.count(1)


def record(ev, **kw):
    line = json.dumps(dict(ev=ev, **kw), default=repr) + "\n"
    with _lock, open(LOG, "a") as f:
        f.write(line)


def text(v):
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else v


class TestMilter(Milter.Base):
    def __init__(self):
        self.conn = next(_conns)
        self.reset()

    def reset(self):
        self.rcpts, self.subject, self.bodybuf = [], None, b""

    def macros(self):
        out = {}
        for m in MACROS:
            v = self.getsymval(m)
            if v is not None:
                out[m] = text(v)
        return out

    def log(self, ev, **kw):
        record(ev, conn=self.conn, macros=self.macros(), **kw)

    def connect(self, hostname, family, hostaddr):
        self.log("connect", hostname=text(hostname), family=family, hostaddr=hostaddr)
        return Milter.CONTINUE

    def hello(self, helo):
        self.log("helo", helo=text(helo))
        return Milter.CONTINUE

    def envfrom(self, sender, *params):
        self.reset()
        self.log("mail", sender=text(sender), params=[text(p) for p in params])
        return Milter.CONTINUE

    def envrcpt(self, rcpt, *params):
        rcpt = text(rcpt)
        self.log("rcpt", rcpt=rcpt, params=[text(p) for p in params])
        if "blocked@example.org" in rcpt.lower():
            self.setreply("550", "5.7.1", "recipient blocked by test milter")
            return Milter.REJECT
        self.rcpts.append(rcpt)
        return Milter.CONTINUE

    def data(self):
        self.log("data")
        return Milter.CONTINUE

    @noreply
    def header(self, name, value):
        name, value = text(name), text(value)
        if name.lower() == "subject" and self.subject is None:
            self.subject = value
        self.log("header", name=name, value=value)
        return Milter.CONTINUE

    @noreply
    def eoh(self):
        self.log("eoh")
        return Milter.CONTINUE

    @noreply
    def body(self, chunk):
        self.bodybuf += chunk
        return Milter.CONTINUE

    def eom(self):
        subject = self.subject or ""
        words = subject + "\n" + self.bodybuf.decode("utf-8", "replace")
        has = lambda k: k in words  # noqa: E731
        self.log("eom", subject=subject, rcpts=self.rcpts, body_len=len(self.bodybuf),
                 body=self.bodybuf[:2000].decode("utf-8", "replace"))
        if has("HANG"):
            time.sleep(3600)
        if has("FORBIDDEN"):
            self.setreply("550", "5.7.1", "forbidden keyword")
            return Milter.REJECT
        if has("TEMPFAIL"):
            self.setreply("451", "4.7.1", "try again later (test milter)")
            return Milter.TEMPFAIL
        if has("DISCARD"):
            return Milter.DISCARD
        self.addheader("X-Test-Milter", "seen")
        if self.subject is not None:
            self.chgheader("Subject", 1, "[milter] " + subject)
        if has("ADDRCPT"):
            self.addrcpt("<carol@example.org>")
        if has("DELRCPT") and len(self.rcpts) > 1:
            self.delrcpt(self.rcpts[1])
        if has("CHGFROM"):
            self.chgfrom("<changed@example.org>")
        if has("INSHEADER"):
            self.addheader("X-Inserted", "first", 0)
        if has("DELHEADER"):
            self.chgheader("X-Delete-Me", 1, "")
        if has("REPLACEBODY"):
            self.replacebody(b"replaced body\r\n")
        if has("QUARANTINE"):
            self.quarantine("test quarantine")
        return Milter.ACCEPT

    def abort(self):
        self.log("abort")
        return Milter.CONTINUE

    def close(self):
        record("close", conn=self.conn)
        return Milter.CONTINUE


def main():
    Milter.factory = TestMilter
    Milter.set_flags(Milter.ADDHDRS | Milter.CHGHDRS | Milter.ADDRCPT | Milter.DELRCPT
                     | Milter.CHGFROM | Milter.MODBODY | Milter.QUARANTINE)
    record("start", socket=SOCKET)
    Milter.runmilter("corvus-test", SOCKET, 60)


if __name__ == "__main__":
    main()
