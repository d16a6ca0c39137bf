"""Point a private Postfix instance's master.cf at a loopback port (no test dependencies, so
the SMTP benchmark imports it too)."""

from __future__ import annotations

import os


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
