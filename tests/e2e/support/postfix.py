"""Postfix from Debian's packages as a reference SMTP server for differential tests: an
instance of its own (/etc/postfix-corvustest, listed in the default instance's
alternate_config_directories), the MX of example.org with
virtual mailboxes for alice and bob, no trusted networks (mynetworks is a documentation
address), relaying refused like Corvus refuses it, smtpd on a free loopback port. Needs root
(tests/run installs the package). `available()` says whether it can run here."""

from __future__ import annotations

import os
import shutil
import subprocess
import time

from .net import free_port, port_open

INSTANCE = "postfix-corvustest"
CONF = f"/etc/{INSTANCE}"


def listen_on(conf_dir: str, port: int):
    """Rewrite `conf_dir/master.cf`: smtpd listens on 127.0.0.1:`port` instead of :25, and no
    service is chrooted (a chroot needs copies of /etc files a fresh instance does not have)."""
    path = os.path.join(conf_dir, "master.cf")
    with open(path) as f:
        lines = f.read().splitlines()
    out = []
    for line in lines:
        fields = line.split()
        if line and not line[0].isspace() and not line.startswith("#") and len(fields) >= 8:
            if fields[1] == "inet" and fields[7] == "smtpd":
                fields[0] = f"127.0.0.1:{port}"
            fields[4] = "n"
            line = "  ".join(fields[:7]) + "  " + " ".join(fields[7:])
        out.append(line)
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")


def sh(*cmd, check=True):
    r = subprocess.run(list(cmd), capture_output=True, text=True)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {r.stdout}{r.stderr}")
    return r


def available() -> bool:
    return (os.geteuid() == 0 and bool(shutil.which("postfix")) and bool(shutil.which("postconf"))
            and os.path.exists("/etc/postfix/main.cf.proto"))


class Postfix:
    def __init__(self, users: list[str], domain: str = "example.org"):
        self.port = free_port()
        if not os.path.exists("/etc/postfix/main.cf"):
            # Installed with "No configuration": the default instance needs a main.cf to list
            # ours in alternate_config_directories (it stays stopped; only ours runs).
            shutil.copy("/etc/postfix/main.cf.proto", "/etc/postfix/main.cf")
        alternates = sh("postconf", "-h", "alternate_config_directories").stdout.split()
        if CONF not in alternates:
            sh("postconf", "-e", "alternate_config_directories = " + " ".join(alternates + [CONF]))
        os.makedirs(CONF, exist_ok=True)
        self.stop()
        shutil.copy("/etc/postfix/main.cf.proto", os.path.join(CONF, "main.cf"))
        shutil.copy("/etc/postfix/master.cf", os.path.join(CONF, "master.cf"))
        data = f"/var/lib/{INSTANCE}"
        os.makedirs(data, exist_ok=True)
        shutil.chown(data, "postfix")
        os.makedirs(f"/var/spool/{INSTANCE}", exist_ok=True)  # `postfix check` fills it
        with open(os.path.join(CONF, "vmailbox"), "w") as f:
            # postmaster@ must exist at every domain (RFC 5321 §4.5.1), as Corvus provides it.
            f.writelines(f"{u} {u.split('@')[0]}/\n" for u in [*users, f"postmaster@{domain}"])
        params = {
            "compatibility_level": "3.6",
            # main.cf.proto leaves these empty (the Debian package fills them in at install).
            "setgid_group": "postdrop",
            "mail_owner": "postfix",
            "sendmail_path": "/usr/sbin/sendmail",
            "mailq_path": "/usr/bin/mailq",
            "newaliases_path": "/usr/bin/newaliases",
            "html_directory": "no",
            "manpage_directory": "/usr/share/man",
            "sample_directory": "/usr/share/doc/postfix/examples",
            "readme_directory": "no",
            "queue_directory": f"/var/spool/{INSTANCE}",
            "data_directory": data,
            "myhostname": "mx.example.org",
            "mydestination": "",
            "virtual_mailbox_domains": domain,
            "virtual_mailbox_maps": f"texthash:{CONF}/vmailbox",
            "virtual_mailbox_base": f"/var/spool/{INSTANCE}-mail",
            "virtual_uid_maps": "static:65534",
            "virtual_gid_maps": "static:65534",
            "inet_interfaces": "loopback-only",
            "inet_protocols": "ipv4",
            "mynetworks": "192.0.2.1/32",
            "smtpd_relay_restrictions":
                "permit_mynetworks, permit_sasl_authenticated, reject_unauth_destination",
            "message_size_limit": str(50 * 1024 * 1024),
            "maillog_file": f"/var/log/{INSTANCE}.log",
            "smtputf8_enable": "yes",
            # RFC 5321 §4.1.4: a client must send EHLO/HELO before MAIL; Corvus insists.
            "smtpd_helo_required": "yes",
            "biff": "no",
        }
        os.makedirs(params["virtual_mailbox_base"], exist_ok=True)
        os.chown(params["virtual_mailbox_base"], 65534, 65534)
        sh("postconf", "-c", CONF, "-e", *[f"{k}={v}" for k, v in params.items()])
        listen_on(CONF, self.port)
        sh("postfix", "-c", CONF, "check", check=False)

    def start(self):
        sh("postfix", "-c", CONF, "start")
        deadline = time.monotonic() + 30
        while not port_open(self.port):
            if time.monotonic() > deadline:
                raise AssertionError(f"postfix is not listening on {self.port}")
            time.sleep(0.1)
        return self

    def stop(self):
        if sh("postfix", "-c", CONF, "status", check=False).returncode == 0:
            sh("postfix", "-c", CONF, "stop", check=False)
            for _ in range(100):
                if sh("postfix", "-c", CONF, "status", check=False).returncode != 0:
                    break
                time.sleep(0.1)
