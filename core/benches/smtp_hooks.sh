#!/usr/bin/env bash
# SMTP throughput with three typical scripts at every hook point (benches/scripts/
# typical_*.rhai) against the same server with no scripts. Runs each configuration ROUNDS
# times, alternating, with smtp-source (Debian package postfix) on loopback only.
#
#   cargo build --release && core/benches/smtp_hooks.sh [MESSAGES] [SESSIONS] [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/../.."
unset CORVUS_CONFIG CORVUS_BIN
BIN=${BENCH_CORVUS:-$PWD/target/release/corvus}
MESSAGES=${1:-2000}
SESSIONS=${2:-8}
ROUNDS=${3:-3}
command -v smtp-source >/dev/null || { echo "smtp-source not found (apt-get install postfix)" >&2; exit 1; }
WORK=$(mktemp -d /tmp/corvus-smtp-bench.XXXXXX)
trap 'kill $PID $DNS_PID 2>/dev/null || true; rm -rf "$WORK"' EXIT
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
# Answer DNS at once (NXDOMAIN): otherwise every DATA waits for the FCrDNS lookup's timeout.
DNS_PORT=$(python3 -c 'import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
python3 core/benches/nxdomain_dns.py "$DNS_PORT" &
DNS_PID=$!

run() { # $1 = label, $2 = hooks toml
    rm -rf "$WORK/data"
    cat > "$WORK/corvus.toml" <<TOML
hostname = "mx.example.test"
data_dir = "$WORK/data"
domains = ["example.test"]
[listen]
smtp = "127.0.0.1:$PORT"
[dns]
nameservers = ["127.0.0.1:$DNS_PORT"]
# The bench measures scripts, not SPF/DMARC.
[sender_auth]
enabled = false
[log]
level = "warn"
$2
TOML
    "$BIN" -c "$WORK/corvus.toml" serve >"$WORK/server.log" 2>&1 &
    PID=$!
    for _ in $(seq 100); do (echo >/dev/tcp/127.0.0.1/$PORT) 2>/dev/null && break; sleep 0.1; done
    "$BIN" -c "$WORK/corvus.toml" user add alice@example.test --password x >/dev/null
    local t0 t1
    t0=$(date +%s.%N)
    smtp-source -c -s "$SESSIONS" -m "$MESSAGES" -l 2048 -S "Your invoice for November" \
        -f sender@remote.example -t alice@example.test "127.0.0.1:$PORT" >/dev/null
    t1=$(date +%s.%N)
    kill "$PID"; wait "$PID" || true
    python3 -c "import sys; d=$t1-$t0; print(f'$1: {$MESSAGES} messages in {d:.2f} s = {$MESSAGES/d:.0f} msg/s')"
}

HOOKS=""
for i in 1 2 3; do
    HOOKS+=$'[[hooks]]\n'"script = \"$PWD/core/benches/scripts/typical_$i.rhai\""$'\n'
done
for r in $(seq "$ROUNDS"); do
    run "round $r, no scripts    " ""
    run "round $r, three scripts " "$HOOKS"
done
