#!/usr/bin/env python3
"""The first IMAP SELECT of a big mailbox after a server restart (a benchmark, not a test).

Fills a mailbox with N small messages once (over IMAP, with the first binary), then, for each
round and each binary in turn: starts the server on that data, times SELECT INBOX on three
fresh connections (the first one reads sled from disk into the metadata cache), stops it.
Comparing binaries on the same data (e.g. two allocators) is what it is for.

    bench/imap_first_select.py BIN [BIN...] [--messages 100000] [--rounds 3] [--dir DIR]

--dir keeps the filled data between invocations (it is filled when it does not exist yet).
"""
import argparse
import os
import pathlib
import shutil
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import imap_bench as ib  # noqa: E402  (login, fill, the Corvus runner)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bins", nargs="+")
    ap.add_argument("--messages", type=int, default=100000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--dir", help="data to reuse (filled when missing)")
    args = ap.parse_args()
    base = pathlib.Path(args.dir) if args.dir else pathlib.Path(tempfile.mkdtemp(prefix="corvus-first-select-"))
    user = "bench@example.org"
    try:
        fresh = not (base / "data").exists()
        base.mkdir(parents=True, exist_ok=True)
        server = ib.Corvus(base, args.bins[0])
        if fresh:
            server.start()
            server.add_user("bench")
            t = time.perf_counter()
            ib.fill(server.port, user, "INBOX", 0, args.messages, conns=4)
            print(f"filled {args.messages} messages in {time.perf_counter() - t:.1f} s", flush=True)
            server.stop()
        for _ in range(args.rounds):
            for binary in args.bins:
                server.binary = binary
                server.start()
                times = []
                for _ in range(3):
                    c = ib.login(server.port, user)
                    dt, _ = c.timed("SELECT INBOX")
                    times.append(dt * 1000)
                    c.close()
                rss = int(open(f"/proc/{server.pid()}/status").read().split("VmRSS:")[1].split()[0])
                server.stop()
                print(f"{binary}: SELECT {times[0]:.1f} ms first, then {times[1]:.1f} / {times[2]:.1f} ms;"
                      f" RSS {rss // 1024} MB", flush=True)
    finally:
        if not args.dir:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
