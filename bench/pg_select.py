#!/usr/bin/env python3
"""IMAP SELECT of a big mailbox on PostgreSQL (a benchmark, not a test): the first SELECT
after a Corvus node starts (it reads the mailbox's metadata from the database into its
cache) and the SELECTs after it.

    cargo build --release -p corvus
    sudo bench/pg_select.py                          # 100,000 messages, 3 rounds
    sudo bench/pg_select.py --sled                   # the same on sled too, side by side
    sudo bench/pg_select.py --messages 10000 --rounds 1 --bin /path/to/corvus   # quick

What it does:
  1. starts a throwaway PostgreSQL (bench/pg_cluster.py: initdb in the run's temporary
     directory, Unix socket only, PostgreSQL's durable defaults: fsync on, synchronous_commit
     on), creates the schema with `corvus store migrate` and one account;
  2. fills its INBOX with --messages small messages (~600 bytes, imap_bench's) by pipelined
     IMAP APPEND over --fill-conns connections to one node. Each APPEND is one transaction;
     so that filling takes a minute or two instead of one WAL flush per message, the fill
     runs with `synchronous_commit = off` (ALTER SYSTEM, reloaded; --fill-durable keeps it
     on). The fill is setup, not a figure, like imap_bench's Dovecot fill with
     `mail_fsync = never`. Afterwards the setting is reset (and checked: every measurement
     runs durable), then CHECKPOINT and VACUUM (ANALYZE) bring the database to the state
     autovacuum keeps a mailbox built over time in;
  3. --rounds times: starts a node (a new process: empty metadata cache), logs in on a fresh
     connection and times `SELECT INBOX` (first), then the same on --repeat more fresh
     connections (median and min), and SELECT again on one connection (min); with the CPU
     the node and PostgreSQL spent on the first SELECT and, on average, on a repeated one
     (utime+stime from /proc, in 10 ms clock ticks; PostgreSQL: the whole cluster, as in
     smtp_bench) and the node's RSS; then stops the node;
  4. one more round after restarting PostgreSQL as well (its shared buffers empty; the
     kernel's page cache stays warm: nothing here drops it on a shared machine).
  With --sled, steps 2 and 3 run on a sled store too (same messages, same client).

A run of 100,000 messages takes a few minutes, most of it the fill (its rate is printed;
at 1,500 APPENDs/s, 70 s); --sled adds the sled fill.

Everything is on 127.0.0.1 in a temporary directory removed at the end (--keep keeps it).
Root is needed to run PostgreSQL as the `postgres` user (as tests/e2e do); PostgreSQL's
binaries from Debian's packages (the newest /usr/lib/postgresql/*/bin, or CORVUS_PG_BIN).
The client is imap_bench's: raw sockets, timings include reading every response byte.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import imap_bench as ib  # noqa: E402  (client, fill, the Corvus runner)
from pg_cluster import PgCluster  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")


def ticks(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        rest = f.read().rsplit(")", 1)[1].split()
    return int(rest[11]) + int(rest[12])


class Node(ib.Corvus):
    """imap_bench's Corvus (IMAP and SMTP on loopback, log level warn), optionally on
    PostgreSQL."""

    def __init__(self, base: pathlib.Path, binary: str, store_url: str | None, pool_size: int):
        base.mkdir(parents=True, exist_ok=True)
        super().__init__(base, binary)
        self.name = "Corvus-pg" if store_url else "Corvus-sled"
        if store_url:
            with open(self.config, "a") as f:
                f.write(f'[store]\nbackend = "postgres"\nurl = "{store_url}"\npool_size = {pool_size}\n')

    def cli(self, *args: str) -> str:
        p = subprocess.run([self.binary, "-c", str(self.config), *args], capture_output=True,
                           text=True, env=ib.corvus_env())
        if p.returncode != 0:
            raise RuntimeError(f"corvus {' '.join(args)} failed: {p.stdout}{p.stderr}")
        return p.stdout


def timed_round(node: Node, user: str, repeat: int, db: PgCluster | None, label: str) -> dict:
    """Start the node, time SELECTs as described in the module docstring, stop it."""
    node.start()
    try:
        c = ib.login(node.port, user)
        cpu0, pg0 = ticks(node.pid()), db.cpu_ticks() if db else 0
        first, nbytes = c.timed("SELECT INBOX")
        cpu1, pg1 = ticks(node.pid()), db.cpu_ticks() if db else 0
        c.close()
        again, cpu_again, pg_again = [], 0, 0
        for _ in range(repeat):
            c = ib.login(node.port, user)
            a0, p0 = ticks(node.pid()), db.cpu_ticks() if db else 0
            again.append(c.timed("SELECT INBOX")[0])
            cpu_again += ticks(node.pid()) - a0
            pg_again += (db.cpu_ticks() - p0) if db else 0
            c.close()
        c = ib.login(node.port, user)
        c.cmd("SELECT INBOX")
        reselect = min(c.timed("SELECT INBOX")[0] for _ in range(repeat))
        c.close()
        rss = ib.rss_kb(node.pid())
    finally:
        node.stop()
    r = {
        "round": label,
        "first_select_ms": first * 1000,
        "select_median_ms": statistics.median(again) * 1000 if again else None,
        "select_min_ms": min(again) * 1000 if again else None,
        "reselect_min_ms": reselect * 1000,
        "select_response_bytes": nbytes,
        "first_select_corvus_cpu_ms": (cpu1 - cpu0) * 1000 / CLK_TCK,
        "first_select_postgres_cpu_ms": (pg1 - pg0) * 1000 / CLK_TCK if db else None,
        "select_corvus_cpu_ms": cpu_again * 1000 / CLK_TCK / max(1, repeat),
        "select_postgres_cpu_ms": pg_again * 1000 / CLK_TCK / max(1, repeat) if db else None,
        "rss_after_kb": rss,
    }
    print(f"[{node.name}] {label}: SELECT {r['first_select_ms']:.1f} ms first, then median "
          f"{fmt(r['select_median_ms'])} ms (min {fmt(r['select_min_ms'])}) on {repeat} fresh "
          f"connections, {r['reselect_min_ms']:.2f} ms again on one connection; first SELECT's CPU: "
          f"Corvus {r['first_select_corvus_cpu_ms']:.0f} ms"
          + (f", PostgreSQL {r['first_select_postgres_cpu_ms']:.0f} ms" if db else "")
          + f"; a repeated SELECT's: Corvus {r['select_corvus_cpu_ms']:.1f} ms"
          + (f", PostgreSQL {r['select_postgres_cpu_ms']:.1f} ms" if db else "")
          + f"; RSS {rss // 1024} MB", flush=True)
    return r


def fmt(v, spec=".2f"):
    return "—" if v is None else format(v, spec)


def run(kind: str, base: pathlib.Path, args) -> dict:
    res: dict = {"store": kind, "messages": args.messages}
    db = None
    if kind == "postgres":
        db = PgCluster(base / "pg")
        db.init()
        db.start()
        url = db.create_database("corvus")
        res["postgres_url"] = url
    else:
        url = None
    node = Node(base / "corvus", args.bin, url, args.pool_size)
    try:
        if db:
            node.cli("store", "migrate")
        user = node.add_user("bench")
        fast_fill = db is not None and not args.fill_durable
        if fast_fill:
            db.psql("ALTER SYSTEM SET synchronous_commit = off")
            db.psql("SELECT pg_reload_conf()")
        node.start()
        try:
            t = time.perf_counter()
            ib.fill(node.port, user, "INBOX", 0, args.messages, conns=args.fill_conns)
            res["fill_s"] = time.perf_counter() - t
            c = ib.login(node.port, user)
            c.sock.sendall(b"S STATUS INBOX (MESSAGES)\r\n")
            got = None
            while got is None:
                line = c._read_line()
                if line.startswith(b"* STATUS"):
                    got = int(line.rsplit(b"MESSAGES", 1)[1].strip(b" )"))
                elif line.startswith(b"S "):
                    raise RuntimeError(line)
            c.close()
        finally:
            node.stop()
        res["in_inbox"] = got
        if got != args.messages:
            raise RuntimeError(f"INBOX holds {got} messages after appending {args.messages}")
        how = ("synchronous_commit off during the fill" if fast_fill
               else "durable" if db else "sled, durable")
        print(f"[{node.name}] filled {args.messages} messages in {res['fill_s']:.1f} s "
              f"({args.messages / res['fill_s']:.0f}/s, {how}); INBOX holds {got}", flush=True)
        if db:
            if fast_fill:
                db.psql("ALTER SYSTEM RESET synchronous_commit")
                db.psql("SELECT pg_reload_conf()")
            db.psql("CHECKPOINT")
            t = time.perf_counter()
            db.psql("VACUUM (ANALYZE)", db="corvus")
            res["vacuum_analyze_s"] = time.perf_counter() - t
            res["postgres_settings"] = db.settings("corvus")
            if not db.durable("corvus"):
                raise RuntimeError(f"PostgreSQL is not durable: {res['postgres_settings']}")
            s = res["postgres_settings"]
            print(f"[{node.name}] PostgreSQL {s['server_version']}: "
                  + ", ".join(f"{k} = {v}" for k, v in s.items() if k != "server_version")
                  + f"; [store] pool_size {args.pool_size}", flush=True)
        rounds = []
        for i in range(args.rounds):
            rounds.append(timed_round(node, user, args.repeat, db, f"round {i + 1}, node restarted"))
        if db:
            db.restart()
            rounds.append(timed_round(node, user, args.repeat, db,
                                      "PostgreSQL and node restarted"))
        res["rounds"] = rounds
    finally:
        if db:
            db.close()
    return res


def _interrupted(_signum, _frame):
    raise KeyboardInterrupt


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", default=os.environ.get("CORVUS_BIN", str(ib.ROOT / "target/release/corvus")))
    ap.add_argument("--messages", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=3, help="node restarts (each: first SELECT, then --repeat)")
    ap.add_argument("--repeat", type=int, default=5, help="SELECTs on fresh connections after the first")
    ap.add_argument("--fill-conns", type=int, default=4)
    ap.add_argument("--fill-durable", action="store_true",
                    help="fill with synchronous_commit on (slower: one WAL flush per message)")
    ap.add_argument("--pool-size", type=int, default=16, help="[store] pool_size")
    ap.add_argument("--sled", action="store_true", help="also run on a sled store, side by side")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, _interrupted)  # e.g. timeout(1): clean up like Ctrl-C
    if not os.access(args.bin, os.X_OK):
        raise SystemExit(f"{args.bin}: no Corvus binary (cargo build --release -p corvus, or --bin)")
    base = pathlib.Path(tempfile.mkdtemp(prefix="corvus-pg-select-"))
    os.chmod(base, 0o711)  # PostgreSQL runs as postgres and must reach its directory below
    results = []
    try:
        kinds = ["postgres"] + (["sled"] if args.sled else [])
        for kind in kinds:
            results.append(run(kind, base / kind, args))
    finally:
        if args.keep:
            print("kept", base)
        else:
            shutil.rmtree(base, ignore_errors=True)
    print()
    print(f"SELECT INBOX of {args.messages} messages ({os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.1f} at the end):")
    print()
    print("| store | round | first SELECT ms | repeated, fresh connections: median (min) ms "
          "| again on one connection ms | CPU ms (Corvus + PostgreSQL): first SELECT | a repeated one "
          "| RSS MB |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for res in results:
        for r in res["rounds"]:
            pg, pg2 = r["first_select_postgres_cpu_ms"], r["select_postgres_cpu_ms"]
            print(f"| {res['store']} | {r['round']} | {r['first_select_ms']:.1f} | "
                  f"{fmt(r['select_median_ms'])} ({fmt(r['select_min_ms'])}) | {r['reselect_min_ms']:.2f} | "
                  f"{r['first_select_corvus_cpu_ms']:.0f}" + (f" + {pg:.0f}" if pg is not None else "")
                  + f" | {r['select_corvus_cpu_ms']:.1f}" + (f" + {pg2:.1f}" if pg2 is not None else "")
                  + f" | {r['rss_after_kb'] // 1024} |")
    print()
    print("CPU from /proc in clock ticks (10 ms): the first SELECT's is one sample, a repeated "
          "SELECT's the mean over --repeat.")
    for res in results:
        print(json.dumps({k: (round(v, 2) if isinstance(v, float) else v)
                          for k, v in res.items() if k != "rounds"}))
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
