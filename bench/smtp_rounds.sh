# Shared by smtp_hooks.sh and smtp_plugins.sh (sourced, not run): one Corvus per round on a
# fresh data dir, smtp-source against it, rate and server CPU per message printed.
# The caller sets BIN, MESSAGES and SESSIONS, and calls `bench_round LABEL HOOKS_TOML`.
# BENCH_SOURCE_FLAGS adds smtp-source options, e.g. "-d" (all of a session's messages over one
# connection instead of one connection per message).

command -v smtp-source >/dev/null || { echo "smtp-source not found (apt-get install postfix)" >&2; exit 1; }
WORK=$(mktemp -d /tmp/corvus-smtp-bench.XXXXXX)
PID=
trap 'kill $PID $DNS_PID 2>/dev/null || true; rm -rf "$WORK"' EXIT
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
mkdir -p "$WORK/cache"
# A DNS responder that answers NXDOMAIN at once: without one, each session's reverse lookup
# (FCrDNS) waits for its timeout before the DATA reply, and the bench measures that timeout.
DNS_PORT=$(python3 -c 'import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
python3 bench/nxdomain_dns.py "$DNS_PORT" &
DNS_PID=$!

bench_round() { # $1 = label, $2 = hooks toml
    rm -rf "$WORK/data"
    mkdir -p "$WORK/data"
    # Keep compiled plugins between rounds (startup is not what is measured).
    ln -s "$WORK/cache" "$WORK/data/plugin-cache"
    cat > "$WORK/corvus.toml" <<TOML
hostname = "mx.example.test"
data_dir = "$WORK/data"
domains = ["example.test"]
[listen]
smtp = "127.0.0.1:$PORT"
[dns]
nameservers = ["127.0.0.1:$DNS_PORT"]
# Sender authentication off: the benches measure hooks, not SPF/DMARC.
[sender_auth]
enabled = false
# With BENCH_SOURCE_FLAGS=-d a connection carries MESSAGES / SESSIONS messages.
[smtp]
max_messages_per_session = 1000000
[log]
level = "warn"
$2
TOML
    "$BIN" -c "$WORK/corvus.toml" serve >"$WORK/server.log" 2>&1 &
    PID=$!
    for _ in $(seq 300); do (echo >/dev/tcp/127.0.0.1/$PORT) 2>/dev/null && break; sleep 0.1; done
    "$BIN" -c "$WORK/corvus.toml" user add alice@example.test --password x >/dev/null
    local t0 t1 ticks0 ticks switches
    # Server CPU (utime + stime, all threads): robust to other load on the machine.
    ticks0=$(awk '{print $14 + $15}' "/proc/$PID/stat")
    t0=$(date +%s.%N)
    # shellcheck disable=SC2086 # BENCH_SOURCE_FLAGS holds extra smtp-source options
    smtp-source -c -s "$SESSIONS" -m "$MESSAGES" -l 2048 -S "Your invoice for November" ${BENCH_SOURCE_FLAGS:-} \
        -f sender@remote.example -t alice@example.test "127.0.0.1:$PORT" >/dev/null
    t1=$(date +%s.%N)
    ticks=$(awk '{print $14 + $15}' "/proc/$PID/stat")
    # Context switches of all the server's threads (live ones; a thread that exited is lost).
    switches=$(cat /proc/$PID/task/*/status 2>/dev/null | awk '/ctxt_switches/ {n += $2} END {print n + 0}')
    kill "$PID"; wait "$PID" || true
    python3 -c "import os; d=$t1-$t0; cpu=($ticks-$ticks0)/os.sysconf('SC_CLK_TCK'); print(f'$1: {$MESSAGES} messages in {d:.2f} s = {$MESSAGES/d:.0f} msg/s, server CPU {cpu*1e6/$MESSAGES:.0f} µs/msg, {$switches/$MESSAGES:.1f} context switches/msg')"
}
