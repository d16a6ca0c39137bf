#!/usr/bin/env python3
"""The operations side under load (issue 25): message traces and metrics with many traces kept.

Starts a fresh release Corvus (sled, or PostgreSQL with --pg URL) with the http listener,
fills it with TRACES traces by sending mail with the built-in load generator (`corvus bench
--smtp`, 5 KB messages, c=10: every message gets a trace), waits until the trace writer has
written them all, then times:

- `GET /api/traces` (newest 100, no filter), a search by sender that matches nothing (the
  whole index is read), and a search in the last minute;
- `GET /api/trace/{id}` of one message, and `corvus trace ID` (a process, over the control
  socket);
- `GET /metrics`.

Each request is repeated REPEAT times; the median and the maximum are printed.

    cargo build --release && bench/nxdomain_dns.py 10053 &
    bench/trace_search.py [--traces 100000] [--repeat 20] [--pg postgresql://…]
"""

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = pathlib.Path(__file__).resolve().parents[1]
BIN = os.environ.get("BENCH_CORVUS", str(ROOT / "target" / "release" / "corvus"))


def timed(fn, repeat):
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times), max(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--traces", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--pg", help="PostgreSQL URL (schema migrated) instead of sled")
    a = ap.parse_args()
    d = tempfile.mkdtemp(prefix="trace-bench-")
    store = f'[store]\nbackend = "postgres"\nurl = "{a.pg}"\n' if a.pg else ""
    conf = pathlib.Path(d, "corvus.toml")
    conf.write_text(f"""hostname = "localhost"
data_dir = "{d}/data"
domains = ["localhost"]
[listen]
smtp = "127.0.0.1:12525"
http = "127.0.0.1:12080"
[dns]
nameservers = ["127.0.0.1:10053"]
[log]
level = "warn"
[trace]
max_traces = {a.traces * 2}
{store}""")
    run = lambda *args: subprocess.run([BIN, "-c", str(conf), *args], check=True,
                                       capture_output=True, text=True).stdout
    run("user", "add", "bench@localhost", "--password", "bench")
    token = run("token", "create", "bench").strip().splitlines()[-1]
    srv = subprocess.Popen([BIN, "-c", str(conf), "serve"], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    base = "http://127.0.0.1:12080"

    def get(path):
        req = urllib.request.Request(base + path, headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.read()

    try:
        time.sleep(1.5)
        count = lambda: json.loads(get("/api/stats"))["samples"][-1]["smtp_accepted"]
        started = time.time()
        while count() < a.traces:
            left = a.traces - count()
            subprocess.run([BIN, "bench", "--smtp", "127.0.0.1:12525", "--user", "bench@localhost",
                            "--password", "bench", "--clients", "10",
                            "--duration", f"{max(1, left // 9000)}s"],
                           check=True, capture_output=True)
        sent = count()
        print(f"sent {sent} messages in {time.time() - started:.0f} s")
        # The writer is behind the 250s: wait until the newest trace is searchable.
        deadline = time.time() + 600
        newest = None
        while time.time() < deadline:
            newest = json.loads(get("/api/traces?limit=1"))
            total = len(json.loads(get("/api/traces?limit=1000&since=0")))
            if newest and total >= 1000:
                break
            time.sleep(0.5)
        metrics = get("/metrics").decode()
        dropped = [l for l in metrics.splitlines() if l.startswith("corvus_trace_events_dropped_total")]
        print(f"trace events dropped: {dropped}")
        qid = newest[0]["id"]
        rows = [
            ("GET /api/traces (newest 100)", lambda: get("/api/traces")),
            ("GET /api/traces?sender=nobody (whole index)", lambda: get("/api/traces?sender=nobody%40nowhere")),
            ("GET /api/traces?since=now-60s", lambda: get(f"/api/traces?since={int(time.time()) - 60}")),
            ("GET /api/trace/{id}", lambda: get(f"/api/trace/{qid}")),
            ("corvus trace ID (process + control socket)", lambda: run("trace", qid)),
            ("GET /metrics", lambda: get("/metrics")),
        ]
        print(f"{'request':<48} {'median ms':>10} {'max ms':>10}")
        for name, fn in rows:
            med, mx = timed(fn, a.repeat)
            print(f"{name:<48} {med:>10.1f} {mx:>10.1f}")
        rss = int(open(f"/proc/{srv.pid}/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        print(f"server RSS {rss / 2**20:.0f} MiB")
    finally:
        srv.terminate()
        srv.wait(timeout=60)
        subprocess.run(["rm", "-rf", d])


if __name__ == "__main__":
    sys.exit(main())
