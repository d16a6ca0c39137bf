#!/usr/bin/env bash
# SMTP throughput with two WASM plugins on every hook point against the same server with no
# hooks: plugins/test-plugins/noop (every hook, adds a header at data) and misbehave in its
# harmless "reject only bad@…" mode (every hook, compares the recipient). Alternates the two
# configurations ROUNDS times, with smtp-source (Debian package postfix) on loopback only.
#
#   cargo build && tests/build-plugins --no-test && bench/smtp_plugins.sh [MESSAGES] [SESSIONS] [ROUNDS]
#
# Single runs swing by several percent with the machine's state; pool many with
#   bench/pool_rounds.py run1.txt run2.txt …   (rate ratio with a 95 % interval)
# BENCH_CORVUS picks the binary (default target/debug/corvus; target/release/corvus if built).
# BENCH_BARE=1 adds a third configuration each round: two test-plugins/raw-answer entries in
# "bare" mode (every hook, `next` at once, no SDK, no import call), the least two plugins on
# every hook can cost.
set -euo pipefail
cd "$(dirname "$0")/.."
unset CORVUS_CONFIG CORVUS_BIN
BIN=${BENCH_CORVUS:-$PWD/target/debug/corvus}
PLUGINS=${CORVUS_PLUGIN_DIR:-$PWD/target/plugins/wasm32-wasip2/release}
MESSAGES=${1:-1000}
SESSIONS=${2:-8}
ROUNDS=${3:-3}
source bench/smtp_rounds.sh

HOOKS="[[hooks]]
plugin = \"$PLUGINS/noop.wasm\"
config = { tag = \"bench\" }
[[hooks]]
plugin = \"$PLUGINS/misbehave.wasm\"
config = { mode = \"reject\", hook = \"rcpt\", when_rcpt = \"bad@example.test\" }
"
BARE="[[hooks]]
plugin = \"$PLUGINS/raw_answer.wasm\"
config = { mode = \"bare\" }
[[hooks]]
plugin = \"$PLUGINS/raw_answer.wasm\"
config = { mode = \"bare\" }
"
for r in $(seq "$ROUNDS"); do
    bench_round "round $r, no plugins  " ""
    bench_round "round $r, two plugins " "$HOOKS"
    if [ "${BENCH_BARE:-}" = 1 ]; then
        bench_round "round $r, two bare    " "$BARE"
    fi
done
