#!/usr/bin/env python3
"""Pool the rounds of several smtp_plugins.sh (or smtp_hooks.sh) runs into one figure.

    bench/smtp_plugins.sh 8000 8 16 > run1.txt   # as many runs as you like
    bench/pool_rounds.py run1.txt run2.txt …
    bench/pool_rounds.py --against "two bare" run1.txt …   # another configuration

Each round of a run is a pair: the plugin-free configuration, then the one with hooks, one
after the other on a fresh server. The rate ratio of a set of rounds is the plugin-free
rounds' total time over the hook rounds' total time (every round sends the same number of
messages). Printed: each run's ratio and CPU per message, then all rounds pooled with a
95 % bootstrap interval (5,000 resamples of the round pairs, fixed seed; with five runs or
more also one resampling whole runs, as rounds of one run share the machine's state). A goal
such as "at least 90 % of the plugin-free rate" is then judged on an estimate with its
uncertainty, not on one run of a noisy machine.
"""

import random
import re
import statistics
import sys

LINE = re.compile(
    r"round \d+, (?P<cfg>[^:]*?)\s*: \d+ messages in "
    r"(?P<secs>[\d.]+) s = \d+ msg/s, server CPU (?P<cpu>\d+)"
)


def rounds(path, against):
    """The (base secs, other secs, base cpu, other cpu) pairs of one run's output. The base
    is a round's first configuration ("no plugins", "no scripts"); the other is `against`,
    or else the round's second configuration."""
    by_cfg, order = {}, []
    for line in open(path, encoding="utf-8", errors="replace"):
        m = LINE.search(line)
        if not m:
            continue
        cfg = m.group("cfg")
        if cfg not in by_cfg:
            by_cfg[cfg] = []
            order.append(cfg)
        by_cfg[cfg].append((float(m.group("secs")), int(m.group("cpu"))))
    if len(order) < 2:
        return []
    other = against if against else order[1]
    if other not in by_cfg:
        sys.exit(f"{path}: no rounds of {other!r} (it has {', '.join(map(repr, order))})")
    return [(b[0], h[0], b[1], h[1]) for b, h in zip(by_cfg[order[0]], by_cfg[other])]


def ratio(pairs):
    return sum(p[0] for p in pairs) / sum(p[1] for p in pairs)


def main(args):
    against = None
    if args[:1] == ["--against"] and len(args) > 1:
        against, args = args[1], args[2:]
    paths = args
    if not paths:
        sys.exit(__doc__)
    pooled, per_run, runs = [], [], []
    for path in paths:
        pairs = rounds(path, against)
        if not pairs:
            print(f"{path}: no rounds found", file=sys.stderr)
            continue
        pooled += pairs
        runs.append(pairs)
        r = ratio(pairs)
        per_run.append(r)
        cpu0 = statistics.mean(p[2] for p in pairs)
        cpu1 = statistics.mean(p[3] for p in pairs)
        print(f"{path}: {len(pairs)} rounds, {r * 100:.1f} %, "
              f"CPU {cpu0:.0f} -> {cpu1:.0f} µs/msg (+{cpu1 - cpu0:.0f})")
    if not pooled:
        sys.exit("no rounds in any file")
    rng = random.Random(1)
    boots = sorted(ratio([rng.choice(pooled) for _ in pooled]) for _ in range(5000))
    # Rounds of one run share the machine's state of those minutes: resampling whole runs
    # gives the wider, more honest interval when there are enough of them.
    by_run = sorted(
        ratio([p for _ in runs for p in rng.choice(runs)]) for _ in range(5000)
    )
    cpu0 = statistics.mean(p[2] for p in pooled)
    cpu1 = statistics.mean(p[3] for p in pooled)
    print(f"pooled: {len(pooled)} rounds of {len(per_run)} runs, {ratio(pooled) * 100:.1f} % "
          f"(95 % bootstrap interval {boots[125] * 100:.1f}–{boots[4874] * 100:.1f} %), "
          f"runs from {min(per_run) * 100:.1f} to {max(per_run) * 100:.1f} %, "
          f"CPU {cpu0:.0f} -> {cpu1:.0f} µs/msg (+{cpu1 - cpu0:.0f})")
    if len(runs) >= 5:
        print(f"resampling whole runs: 95 % interval {by_run[125] * 100:.1f}–"
              f"{by_run[4874] * 100:.1f} %")


if __name__ == "__main__":
    main(sys.argv[1:])
