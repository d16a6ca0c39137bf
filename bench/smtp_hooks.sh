#!/usr/bin/env bash
# SMTP throughput with three typical scripts at every hook point (bench/scripts/
# typical_*.rhai) against the same server with no scripts. Runs each configuration ROUNDS
# times, alternating, with smtp-source (Debian package postfix) on loopback only.
#
#   cargo build --release && bench/smtp_hooks.sh [MESSAGES] [SESSIONS] [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
unset CORVUS_CONFIG CORVUS_BIN
BIN=${BENCH_CORVUS:-$PWD/target/release/corvus}
MESSAGES=${1:-2000}
SESSIONS=${2:-8}
ROUNDS=${3:-3}
source bench/smtp_rounds.sh

HOOKS=""
for i in 1 2 3; do
    HOOKS+=$'[[hooks]]\n'"script = \"$PWD/bench/scripts/typical_$i.rhai\""$'\n'
done
for r in $(seq "$ROUNDS"); do
    bench_round "round $r, no scripts    " ""
    bench_round "round $r, three scripts " "$HOOKS"
done
