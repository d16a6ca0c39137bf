#!/usr/bin/env bash
# SMTP throughput with two WASM plugins on every hook point against the same server with no
# hooks: plugins/test-plugins/noop (every hook, adds a header at data) and misbehave in its
# harmless "reject only bad@…" mode (every hook, compares the recipient). Alternates the two
# configurations ROUNDS times, with smtp-source (Debian package postfix) on loopback only.
#
#   cargo build && tests/build-plugins --no-test && core/benches/smtp_plugins.sh [MESSAGES] [SESSIONS] [ROUNDS]
#
# BENCH_CORVUS picks the binary (default target/debug/corvus; target/release/corvus if built).
set -euo pipefail
cd "$(dirname "$0")/../.."
unset CORVUS_CONFIG CORVUS_BIN
BIN=${BENCH_CORVUS:-$PWD/target/debug/corvus}
PLUGINS=${CORVUS_PLUGIN_DIR:-$PWD/target/plugins/wasm32-wasip2/release}
MESSAGES=${1:-1000}
SESSIONS=${2:-8}
ROUNDS=${3:-3}
command -v smtp-source >/dev/null || { echo "smtp-source not found (apt-get install postfix)" >&2; exit 1; }
WORK=$(mktemp -d /tmp/corvus-plugin-bench.XXXXXX)
trap 'kill $PID $DNS_PID 2>/dev/null || true; rm -rf "$WORK"' EXIT
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
mkdir -p "$WORK/cache"
# A DNS responder that answers NXDOMAIN at once: without one, each session's reverse lookup
# (FCrDNS) waits for its timeout before the DATA reply, and the bench measures that timeout.
DNS_PORT=$(python3 -c 'import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
python3 core/benches/nxdomain_dns.py "$DNS_PORT" &
DNS_PID=$!

run() { # $1 = label, $2 = hooks toml
    rm -rf "$WORK/data"
    mkdir -p "$WORK/data"
    # Keep the compiled plugins between runs (startup is not what is measured).
    ln -s "$WORK/cache" "$WORK/data/plugin-cache"
    cat > "$WORK/corvus.toml" <<TOML
hostname = "mx.example.test"
data_dir = "$WORK/data"
domains = ["example.test"]
[listen]
smtp = "127.0.0.1:$PORT"
[dns]
nameservers = ["127.0.0.1:$DNS_PORT"]
# Sender authentication off: the bench measures plugin overhead, not SPF/DMARC.
[sender_auth]
enabled = false
[log]
level = "warn"
$2
TOML
    "$BIN" -c "$WORK/corvus.toml" serve >"$WORK/server.log" 2>&1 &
    PID=$!
    for _ in $(seq 300); do (echo >/dev/tcp/127.0.0.1/$PORT) 2>/dev/null && break; sleep 0.1; done
    "$BIN" -c "$WORK/corvus.toml" user add alice@example.test --password x >/dev/null
    local t0 t1 ticks0
    ticks0=$(awk '{print $14 + $15}' "/proc/$PID/stat")
    t0=$(date +%s.%N)
    smtp-source -c -s "$SESSIONS" -m "$MESSAGES" -l 2048 -S "Your invoice for November" \
        -f sender@remote.example -t alice@example.test "127.0.0.1:$PORT" >/dev/null
    t1=$(date +%s.%N)
    # Server CPU (utime + stime, all threads): robust to other load on the machine.
    local ticks
    ticks=$(awk '{print $14 + $15}' "/proc/$PID/stat")
    kill "$PID"; wait "$PID" || true
    python3 -c "import os; d=$t1-$t0; cpu=($ticks-$ticks0)/os.sysconf('SC_CLK_TCK'); print(f'$1: {$MESSAGES} messages in {d:.2f} s = {$MESSAGES/d:.0f} msg/s, server CPU {cpu*1e6/$MESSAGES:.0f} µs/msg')"
}

HOOKS="[[hooks]]
plugin = \"$PLUGINS/noop.wasm\"
config = { tag = \"bench\" }
[[hooks]]
plugin = \"$PLUGINS/misbehave.wasm\"
config = { mode = \"reject\", hook = \"rcpt\", when_rcpt = \"bad@example.test\" }
"
for r in $(seq "$ROUNDS"); do
    run "round $r, no plugins  " ""
    run "round $r, two plugins " "$HOOKS"
done
