#!/usr/bin/env bash
# bench/idle-compare.sh OLD_BINARY NEW_BINARY [ROUNDS]
#
# Idle memory per connection of two push-server builds, measured in one run: for each round and
# each transport (WebSocket, long poll) a fresh server of each build in a private temp dir on
# Unix sockets, then `push-bench idle --conns $CONNS` against it. Builds alternate within a
# round so machine noise hits both. Prints one line per run and the median bytes per connection
# of each build and transport. push-bench is taken from NEW_BINARY's directory.
set -euo pipefail
OLD=$1 NEW=$2 ROUNDS=${3:-3}
CONNS=${CONNS:-5000}
BENCH=$(dirname "$NEW")/push-bench
TMP=$(mktemp -d)
PID=
cleanup() { [ -z "$PID" ] || kill "$PID" 2>/dev/null || true; rm -rf "$TMP"; }
trap cleanup EXIT

run() { # run BINARY TRANSPORT -> bytes per connection
    local d=$TMP/run
    rm -rf "$d" && mkdir -p "$d"
    RUN_DIR=$d STATE_DIR=$d/state SECURITY_KEY=idleKey SUB_LISTEN= PUB_LISTEN= LOG_LEVEL=warn "$1" >"$d/log" 2>&1 &
    PID=$!
    for _ in $(seq 100); do [ -S "$d/sub.sock" ] && [ -S "$d/pub.sock" ] && break; sleep 0.1; done
    "$BENCH" idle --conns "$CONNS" --transport "$2" --sub "$d/sub.sock" --pub "$d/pub.sock" \
        --pid "$PID" --key idleKey --timeout 120 2>/dev/null | tail -n 1 |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["bytes_per_conn"])'
    kill "$PID"; wait "$PID" 2>/dev/null || true; PID=
}

declare -A ALL
for r in $(seq "$ROUNDS"); do
    for t in ws lp; do
        for b in old new; do
            bin=$OLD; [ "$b" = new ] && bin=$NEW
            v=$(run "$bin" "$t")
            echo "round $r $t $b: $v B per connection"
            ALL[$b/$t]="${ALL[$b/$t]:-} $v"
        done
    done
done
median() { tr ' ' '\n' | grep . | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
for t in ws lp; do
    echo "median $t ($CONNS idle, $ROUNDS rounds): old $(echo "${ALL[old/$t]}" | median) B, new $(echo "${ALL[new/$t]}" | median) B"
done
