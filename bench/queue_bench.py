#!/usr/bin/env python3
"""Benchmark (not a test): messages per second through Corvus's outbound queue to a fast
remote sink, at delivery concurrency 10 and 100.

The messages are first queued with the sink down (so submission speed does not count), then
the sink starts and `corvus queue flush` releases them; the figure is messages delivered per
second until the sink has all of them.

    python3 bench/queue_bench.py [--corvus target/release/corvus] [-n 2000]
"""
import argparse
import asyncio
import os
import pathlib
import smtplib
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Sink:
    """A minimal, fast SMTP sink (asyncio) that accepts everything and counts messages."""

    def __init__(self, host, port):
        self.host, self.port, self.count = host, port, 0
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        threading.Thread(target=self._run, daemon=True).start()
        self.ready.wait()

    def _run(self):
        asyncio.set_event_loop(self.loop)
        self.server = self.loop.run_until_complete(asyncio.start_server(self.handle, self.host, self.port, backlog=1024))
        self.ready.set()
        self.loop.run_forever()

    async def handle(self, r, w):
        w.write(b"220 sink ESMTP\r\n")
        in_data = False
        while True:
            line = await r.readline()
            if not line:
                break
            if in_data:
                if line == b".\r\n":
                    in_data = False
                    self.count += 1
                    w.write(b"250 2.0.0 ok\r\n")
                continue
            cmd = line[:4].upper()
            if cmd == b"EHLO":
                w.write(b"250-sink\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 SIZE 100000000\r\n")
            elif cmd == b"DATA":
                in_data = True
                w.write(b"354 go\r\n")
            elif cmd == b"QUIT":
                w.write(b"221 bye\r\n")
                await w.drain()
                break
            else:
                w.write(b"250 ok\r\n")
            if not r._buffer:  # flush when the pipeline is drained
                await w.drain()
        w.close()


def run(corvus, n, conc):
    base = pathlib.Path(tempfile.mkdtemp(prefix="corvus-qbench-"))
    sub, sink_port = free_port(), free_port()
    cfg = base / "corvus.toml"
    cfg.write_text(f"""hostname = "mx.bench.test"
data_dir = "{base}/data"
domains = ["bench.test"]
[listen]
submission = "127.0.0.1:{sub}"
[limits]
max_connections_per_ip = 1000
[smtp]
allow_plaintext_auth = true
max_messages_per_session = 100000
[delivery]
relay = "127.0.0.1:{sink_port}"
relay_require_tls = false
retry = ["1h"]
max_concurrency = {conc}
max_per_domain = {conc}
[log]
level = "warn"
""")
    subprocess.run([corvus, "-c", str(cfg), "user", "add", "a@bench.test", "--password", "pw"], check=True, capture_output=True)
    proc = subprocess.Popen([corvus, "-c", str(cfg), "serve"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", sub), 0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        body = b"Subject: bench\r\n\r\n" + (b"x" * 76 + b"\r\n") * 64  # ~5 KB

        def sender(k):
            s = smtplib.SMTP("127.0.0.1", sub)
            s.login("a@bench.test", "pw")
            for _ in range(k):
                s.sendmail("a@bench.test", ["r@remote.test"], body)
            s.quit()

        per = n // 10
        with ThreadPoolExecutor(10) as ex:
            list(ex.map(sender, [per] * 10))
        total = per * 10
        sink = Sink("127.0.0.1", sink_port)
        t0 = time.monotonic()
        subprocess.run([corvus, "-c", str(cfg), "queue", "flush"], check=True, capture_output=True)
        while sink.count < total:
            time.sleep(0.01)
            if time.monotonic() - t0 > 600:
                raise SystemExit(f"timeout: {sink.count}/{total}")
        dt = time.monotonic() - t0
        return total, dt
    finally:
        proc.terminate()
        proc.wait()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--corvus", default=os.environ.get("CORVUS_BIN", "target/release/corvus"))
    ap.add_argument("-n", type=int, default=2000)
    args = ap.parse_args()
    print(f"{'concurrency':>11} {'messages':>9} {'seconds':>8} {'msg/s':>8}")
    for conc in (10, 100):
        total, dt = run(args.corvus, args.n, conc)
        print(f"{conc:>11} {total:>9} {dt:>8.2f} {total / dt:>8.0f}")


if __name__ == "__main__":
    sys.exit(main())
