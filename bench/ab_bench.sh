#!/usr/bin/env bash
# One run of the built-in load generator against a fresh server, for A/B comparisons of two
# builds (BENCHMARKS.md). Needs bench/nxdomain_dns.py running.
#
#   MODE="--smtp 127.0.0.1:12525" CLIENTS=10 DUR=15s bench/ab_bench.sh SERVER_BIN CLIENT_BIN LABEL
#   MODE="--imap 127.0.0.1:12143" ...
# Prints the load generator's table and the server's CPU ticks (user + system) over the run.
set -e
srv="$1"; cli="$2"; label="$3"
d=$(mktemp -d /tmp/bench-XXXX)
cat > $d/corvus.toml <<TOML
hostname = "localhost"
data_dir = "$d/data"
domains = ["localhost"]
[listen]
smtp = "127.0.0.1:12525"
imap = "127.0.0.1:12143"
[dns]
nameservers = ["127.0.0.1:10053"]
[imap]
allow_plaintext_auth = true
[log]
level = "warn"
TOML
"$srv" -c $d/corvus.toml user add bench@localhost --password bench >/dev/null
"$srv" -c $d/corvus.toml serve > $d/out.log 2>&1 &
pid=$!
sleep 2
c0=$(awk '{print $14+$15}' /proc/$pid/stat)
"$cli" bench $MODE --user bench@localhost --password bench --clients ${CLIENTS:-10} --duration ${DUR:-20s} --server-pid $pid > $d/bench.txt 2>&1 || true
c1=$(awk '{print $14+$15}' /proc/$pid/stat)
kill $pid; wait $pid || true
echo "server cpu ticks: $((c1-c0))" >> $d/bench.txt
echo "== $label"; cat $d/bench.txt
rm -rf $d
