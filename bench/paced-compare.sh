#!/usr/bin/env bash
# bench/paced-compare.sh OLD NEW [RUNS]: paced fan-out of two push-server builds, alternating,
# in one run on one machine: CONNS WebSocket subscribers on one channel (default 3000), MSGS
# messages (default 100) published one at a time GAP_MS apart (default 30), as portals publish.
# Prints per run and as medians: server CPU µs per delivery and the server's voluntary context
# switches (wake-ups), plus the share of the machine other processes used.
#   cargo build --release --workspace && bench/paced-compare.sh /tmp/push-server-old target/release/push-server 5
set -euo pipefail
cd "$(dirname "$0")/.."
OLD=$1 NEW=$2 RUNS=${3:-5}
CONNS=${CONNS:-3000} MSGS=${MSGS:-100} GAP_MS=${GAP_MS:-30}
BENCH=${BENCH:-target/release/push-bench}
dir=$(mktemp -d /tmp/paced.XXXXXX)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$dir"' EXIT
run_one() { # BIN LABEL
    local bin=$1 label=$2
    rm -f "$dir"/*.sock
    SECURITY_KEY=benchkey RUN_DIR=$dir STATE_DIR=$dir/state SUB_SOCK=$dir/sub.sock PUB_SOCK=$dir/pub.sock \
        SUB_LISTEN= PUB_LISTEN= LOG_LEVEL=warn MAX_CONN_PER_CHANNEL=100000 "$bin" 2>"$dir/$label.log" &
    local pid=$!
    for _ in $(seq 100); do [ -S "$dir/pub.sock" ] && break; sleep 0.05; done
    "$BENCH" fanout --sub "$dir/sub.sock" --pub "$dir/pub.sock" --key benchkey --pid "$pid" \
        --conns "$CONNS" --messages "$MSGS" --gap-ms "$GAP_MS" --timeout 120 2>/dev/null |
        tail -1 | jq -c --arg l "$label" '{build: $l, us: .cpu_us_per_delivery, switches: .server_voluntary_switches, lost, others: .others_cpu_pct}'
    kill "$pid"; wait "$pid" 2>/dev/null || true
}
for i in $(seq "$RUNS"); do
    run_one "$OLD" old
    run_one "$NEW" new
done | tee "$dir/all.jsonl"
jq -s -r 'group_by(.build)[] | (map(.us) | sort) as $u | (map(.switches) | sort) as $s |
    "\(.[0].build): medians of \(length) runs: \($u[length/2|floor]) µs server CPU per delivery, \($s[length/2|floor]) voluntary switches"' "$dir/all.jsonl"
