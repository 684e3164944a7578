#!/usr/bin/env bash
# bench/redis-publish.sh [RUNS]: publish rate of one push-server instance on the Redis store,
# next to the embedded store and to Redis's own ceiling, in one run on one machine.
#
# Per run (alternating, a fresh server each time, default 5 runs):
#   rate      push-bench fanout --conns 1 --messages MSGS --pub-conns PC: MSGS single-recipient
#             publishes from PC concurrent keep-alive publishers (default 40000, 64), with the
#             Redis store and with the embedded store. Prints answered publishes/s, push-server
#             CPU µs per publish and redis-server CPU µs per publish.
#   latency   push-bench latency at RATE publishes/s (default 40000) for DURATION s to SUBS
#             subscribers on their own channels (per-user channels, as portals publish):
#             p50/p99 from the publish to its delivery (the answer goes out in the same loop
#             pass as the delivery).
# Once per run of the script, the floor: the publish script alone, EVALSHA after EVALSHA
# pipelined by redis-cli --pipe with no server in between, with 1 message per call (one call
# per request) and GROUP messages per call (what one instance sends under load): Redis's own
# CPU per message and the most publishes/s Redis itself can do.
# Needs redis-server, redis-cli, jq, python3 and a release build (cargo build --release
# --workspace).
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-5}
MSGS=${MSGS:-40000} PC=${PC:-64} RATE=${RATE:-40000} DURATION=${DURATION:-5} SUBS=${SUBS:-1000}
GROUP=${GROUP:-64} FLOOR_MSGS=${FLOOR_MSGS:-64000}
BIN=${BIN:-target/release/push-server}
BENCH=${BENCH:-target/release/push-bench}
for t in redis-server redis-cli jq python3; do
    command -v "$t" >/dev/null || { echo "redis-publish.sh: $t is needed" >&2; exit 1; }
done
dir=$(mktemp -d /tmp/redispub.XXXXXX)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$dir"' EXIT
redis-server --port 0 --unixsocket "$dir/redis.sock" --unixsocketperm 700 --save '' \
    --appendonly no --dir "$dir" --daemonize no >"$dir/redis.log" 2>&1 &
rpid=$!
for _ in $(seq 100); do redis-cli -s "$dir/redis.sock" ping >/dev/null 2>&1 && break; sleep 0.05; done
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
tick_us=$((1000000 / $(getconf CLK_TCK)))

start_server() { # STORE(redis|embedded) -> sets pid
    rm -rf "$dir/run" && mkdir -p "$dir/run"
    local rs=""
    [ "$1" = redis ] && rs=$dir/redis.sock && redis-cli -s "$rs" flushall >/dev/null
    SECURITY_KEY=benchkey RUN_DIR=$dir/run STATE_DIR=$dir/run/state REDIS_SOCK=$rs \
        SUB_LISTEN= PUB_LISTEN= LOG_LEVEL=warn MAX_CONN_PER_CHANNEL=100000 "$BIN" \
        2>"$dir/$1.log" &
    pid=$!
    for _ in $(seq 100); do [ -S "$dir/run/pub.sock" ] && break; sleep 0.05; done
}
bench() { # SCENARIO ARGS...
    "$BENCH" "$@" --sub "$dir/run/sub.sock" --pub "$dir/run/pub.sock" --key benchkey \
        --pid "$pid" --timeout 120 2>/dev/null | tail -1
}
run_rate() { # STORE
    start_server "$1"
    local r0 p0 out
    r0=$(cpu_ticks "$rpid")
    p0=$(cpu_ticks "$pid")
    out=$(bench fanout --conns 1 --messages "$MSGS" --pub-conns "$PC")
    local rt=$(($(cpu_ticks "$rpid") - r0)) pt=$(($(cpu_ticks "$pid") - p0))
    echo "$out" | jq -c --arg s "$1" --argjson r $((rt * tick_us)) --argjson p $((pt * tick_us)) \
        --argjson n "$MSGS" '{test: "rate", store: $s, per_s: .deliveries_per_sec, ok: .ok,
        lost, us_ours: ($p / $n), us_redis: (if $s == "redis" then $r / $n else null end),
        others: .others_cpu_pct}'
    kill "$pid"; wait "$pid" 2>/dev/null || true
}
run_latency() { # STORE
    start_server "$1"
    bench latency --conns "$SUBS" --rate "$RATE" --duration "$DURATION" --pub-conns "$PC" |
        jq -c --arg s "$1" '{test: "latency", store: $s, rate: .answered_rate, ok, lost,
        p50_us, p99_us, others: .others_cpu_pct}'
    kill "$pid"; wait "$pid" 2>/dev/null || true
}

# The floor: RESP for FLOOR_MSGS messages in calls of N, each message to its own channel.
floor() { # N
    local n=$1 sha
    sha=$(redis-cli -s "$dir/redis.sock" script load "$(cat src/store/redis/publish.lua)")
    python3 - "$sha" "$n" "$FLOOR_MSGS" >"$dir/floor.resp" <<'PY'
import sys
sha, n, total = sys.argv[1].encode(), int(sys.argv[2]), int(sys.argv[3])
out = sys.stdout.buffer
body = b'{"module_id":"bench","command":"x","params":{"n":1},"extra":{}}'
rest = b'\x12' + bytes([len(body)]) + body
def cmd(args):
    out.write(b'*%d\r\n' % len(args))
    for a in args:
        out.write(b'$%d\r\n%s\r\n' % (len(a), a))
k = 0
for _ in range(total // n):
    args = [b'EVALSHA', sha, b'0', b'', b'floor', b'0', b'0', b'%d' % n, b'86400', b'100',
            b'99999999999999999999']
    for _ in range(n):
        ch = b'%016x' % k
        k += 1
        rec = b'\x0a\x14\x08\x01\x12\x10' + ch
        args += [b'86400', rest, rec, b'c' + ch]
    cmd(args)
PY
    redis-cli -s "$dir/redis.sock" flushall >/dev/null
    local r0 t0 t1 rt
    r0=$(cpu_ticks "$rpid")
    t0=$(date +%s%N)
    redis-cli -s "$dir/redis.sock" --pipe <"$dir/floor.resp" >/dev/null
    t1=$(date +%s%N)
    rt=$(($(cpu_ticks "$rpid") - r0))
    jq -cn --argjson n "$n" --argjson m "$FLOOR_MSGS" --argjson ns $((t1 - t0)) \
        --argjson r $((rt * tick_us)) '{test: "floor", per_call: $n,
        per_s: ($m / ($ns / 1e9) | floor), us_redis: ($r / $m)}'
}

{
    floor 1
    floor "$GROUP"
    for _ in $(seq "$RUNS"); do
        run_rate redis
        run_rate embedded
    done
    for _ in $(seq "$RUNS"); do
        run_latency redis
        run_latency embedded
    done
} | tee "$dir/all.jsonl"
echo "medians of $RUNS runs:"
jq -s -r 'map(select(.test == "rate")) | group_by(.store)[] |
    def med(f): map(f) | sort | .[length / 2 | floor];
    "rate \(.[0].store): \(med(.per_s)) publishes/s, \(med(.us_ours)) µs push-server CPU and \(med(.us_redis)) µs redis CPU per publish, others \(med(.others)) %"' "$dir/all.jsonl"
jq -s -r 'map(select(.test == "latency")) | group_by(.store)[] |
    def med(f): map(f) | sort | .[length / 2 | floor];
    "latency \(.[0].store) at '"$RATE"'/s: answered \(med(.rate))/s, p50 \(med(.p50_us)) µs, p99 \(med(.p99_us)) µs"' "$dir/all.jsonl"
