"""Start `corvus serve` with no config file in a working directory, check it listens where
the embedded default says, then SIGTERM it. Prints one JSON object with what it saw.

Run by test_foundation.test_embedded_default, directly or inside a fresh network namespace
(`unshare -n`) when another server already holds ports 2525/2587/2465/2080 on this machine.
"""

import json
import os
import signal
import smtplib
import subprocess
import sys
import time

# Run as a script too: tests/e2e on the path, so `support` is a package.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from support.dns import DnsServer  # noqa: E402
from support.net import port_open  # noqa: E402
from support.server import CORVUS_BIN, child_env  # noqa: E402

EMBEDDED_PORTS = {"smtp": 2525, "submission": 2587, "submissions": 2465, "http": 2080, "managesieve": 14190}


def probe(workdir: str) -> dict:
    result = {"busy": [p for p in EMBEDDED_PORTS.values() if port_open(p)]}
    if result["busy"]:
        return result
    dns = DnsServer()
    env = child_env()
    # Keep FCrDNS lookups on loopback; everything else is the embedded default.
    env["CORVUS_DNS__NAMESERVERS"] = f'["{dns.addr}"]'
    out_path = os.path.join(workdir, "out.log")
    with open(out_path, "wb") as f:
        proc = subprocess.Popen(
            [CORVUS_BIN, "serve"], cwd=workdir, stdout=f, stderr=subprocess.STDOUT, env=env
        )
    try:
        deadline = time.monotonic() + 30
        pending = list(EMBEDDED_PORTS.values())
        while pending and time.monotonic() < deadline and proc.poll() is None:
            if port_open(pending[0]):
                pending.pop(0)
            else:
                time.sleep(0.05)
        result["not_listening"] = pending
        if not pending:
            s = smtplib.SMTP("127.0.0.1", 2525, timeout=10)
            code, msg = s.ehlo("client.test")
            result["ehlo"] = [code, msg.decode(errors="replace")]
            s.quit()
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            result["exit"] = proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            result["exit"] = "timeout"
        dns.close()
    with open(out_path, errors="replace") as f:
        result["output"] = f.read()
    result["data_dir"] = os.path.isdir(os.path.join(workdir, "corvus-data"))
    return result


if __name__ == "__main__":
    print(json.dumps(probe(sys.argv[1])))
