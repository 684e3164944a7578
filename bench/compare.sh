#!/usr/bin/env bash
# bench/compare.sh: push-server and nchan side by side, same parameters, one run, one machine.
#
#   bench/compare.sh            # about 3-5 minutes on 2 cores
#
# Installs nginx, libnginx-mod-nchan, redis-server and jq when missing (apt-get), builds the
# release binaries, then for each of
#   push         push-server, embedded store
#   nchan        nchan (bench/nchan.conf.in), memory store   (/sub/, /pub/)
#   push-redis   push-server with REDIS_SOCK (skipped while the server has no Redis store)
#   nchan-redis  nchan, Redis store (/rsub/, /rpub/; redis over TCP on 127.0.0.1)
# runs push-bench idle (WebSocket, then long poll, each on a fresh server), fanout, latency and
# churn, and prints a table with the ratios ours / nchan. Everything runs on Unix sockets in a
# private temp dir (redis: a private redis-server on a free loopback port and a Unix socket);
# every process the script starts is stopped on exit. The raw JSON lines (and the table) go to
# bench/results/<date>-compare.txt.
#
# Sizes (environment): CONNS (9000, the idle and latency subscribers; fits a 20000 fd limit),
# FANOUT_CONNS (9000), FANOUT_MSGS (50), LAT_RATE (5000 publishes/s), LAT_DURATION (10 s),
# LAT_REPEAT (3 latency runs per server; the table shows the one with the median p99),
# CHURN_CONNS (2000), CHURN_RATE (200 reconnects/s), CHURN_DURATION (10 s), OUT (result file),
# NCHAN_CONF (default bench/nchan.conf.in), FANOUT_RUNS, PACED_CONNS, PACED_MSGS, PACED_GAP_MS,
# ONLY_FANOUT (see below).
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD

CONNS=${CONNS:-9000}
FANOUT_CONNS=${FANOUT_CONNS:-9000}
FANOUT_MSGS=${FANOUT_MSGS:-50}
LAT_RATE=${LAT_RATE:-5000}
LAT_DURATION=${LAT_DURATION:-10}
LAT_REPEAT=${LAT_REPEAT:-3}
CHURN_CONNS=${CHURN_CONNS:-2000}
CHURN_RATE=${CHURN_RATE:-200}
CHURN_DURATION=${CHURN_DURATION:-10}
RUN_TIMEOUT=${RUN_TIMEOUT:-120}
NCHAN_CONF=${NCHAN_CONF:-$ROOT/bench/nchan.conf.in}
# The fan-out side by side, alternating push and nchan FANOUT_RUNS times each (medians): paced
# (PACED_CONNS WebSocket subscribers on one channel, PACED_MSGS messages published one at a time
# PACED_GAP_MS apart, as portals publish) and burst (the same subscribers, FANOUT_MSGS pipelined).
# ONLY_FANOUT=1 runs just this part.
FANOUT_RUNS=${FANOUT_RUNS:-5}
PACED_CONNS=${PACED_CONNS:-3000}
PACED_MSGS=${PACED_MSGS:-100}
PACED_GAP_MS=${PACED_GAP_MS:-30}
ONLY_FANOUT=${ONLY_FANOUT:-0}
OUT=${OUT:-$ROOT/bench/results/$(date +%F)-compare.txt}
NCHAN_MODULE=/usr/lib/nginx/modules/ngx_nchan_module.so
SECRET=benchsecret

log() { echo "compare: $*" >&2; }

# ---- packages --------------------------------------------------------------------------------
APT_UPDATED=0
ensure_pkg() { # ensure_pkg PATH-OR-COMMAND PACKAGE
    local what="$1" pkg="$2"
    if [ -e "$what" ] || type -P "$what" >/dev/null 2>&1; then
        return 0
    fi
    log "installing $pkg"
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo=sudo
    if [ "$APT_UPDATED" -eq 0 ]; then
        $sudo apt-get update -qq >/dev/null
        APT_UPDATED=1
    fi
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$pkg" >/dev/null
}
ensure_pkg nginx nginx
ensure_pkg "$NCHAN_MODULE" libnginx-mod-nchan
ensure_pkg redis-server redis-server
ensure_pkg redis-cli redis-tools
ensure_pkg jq jq
[ -f "$NCHAN_CONF" ] || { log "no nchan config at $NCHAN_CONF"; exit 1; }

# A freshly installed redis-server package may start a system redis; nothing here uses it.

log "building release binaries"
cargo build --release --quiet --workspace
SERVER=$ROOT/target/release/push-server
BENCH=$ROOT/target/release/push-bench

# ---- processes and cleanup -------------------------------------------------------------------
TMP=$(mktemp -d /tmp/pbcmp.XXXXXX)
PIDS=()          # processes started here (push-server, redis-server)
NGINX_DIRS=()    # nginx prefixes started here
cleanup() {
    set +e
    for d in "${NGINX_DIRS[@]}"; do
        if [ -f "$d/nginx.pid" ]; then
            local m
            m=$(cat "$d/nginx.pid")
            nginx -p "$d" -c "$d/nginx.conf" -s stop 2>/dev/null
            for _ in $(seq 50); do kill -0 "$m" 2>/dev/null || break; sleep 0.1; done
            kill -9 "$m" 2>/dev/null
        fi
    done
    for p in "${PIDS[@]}"; do
        kill "$p" 2>/dev/null
    done
    for p in "${PIDS[@]}"; do
        for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$p" 2>/dev/null
    done
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

forget_pid() { # drop a stopped pid from PIDS
    local keep=() p
    for p in "${PIDS[@]}"; do [ "$p" = "$1" ] || keep+=("$p"); done
    PIDS=("${keep[@]}")
}

# Private redis-server: a free loopback TCP port (nchan) and a Unix socket (push-server).
free_port() {
    local p
    for _ in $(seq 50); do
        p=$((20000 + RANDOM % 40000))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
            echo "$p"
            return 0
        fi
    done
    return 1
}
REDIS_SOCK=$TMP/redis.sock
REDIS_PORT=
for _ in 1 2 3; do
    REDIS_PORT=$(free_port)
    mkdir -p "$TMP/redis"
    redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --unixsocket "$REDIS_SOCK" \
        --unixsocketperm 700 --save '' --appendonly no --dir "$TMP/redis" \
        --logfile "$TMP/redis/log" --daemonize no >/dev/null 2>&1 &
    REDIS_PID=$!
    PIDS+=("$REDIS_PID")
    for _ in $(seq 50); do
        redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break
        kill -0 "$REDIS_PID" 2>/dev/null || break
        sleep 0.1
    done
    redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break
    forget_pid "$REDIS_PID"
    kill "$REDIS_PID" 2>/dev/null || true
    REDIS_PORT=
done
[ -n "$REDIS_PORT" ] || { log "could not start a private redis-server"; exit 1; }
log "private redis-server pid $REDIS_PID on 127.0.0.1:$REDIS_PORT and $REDIS_SOCK"

# start_push NAME [VAR=VALUE...]: a fresh push-server in $TMP/NAME; sets CUR_PID, CUR_SUB,
# CUR_PUB. Returns 1 when it exits or does not listen within 10 s (its log is kept).
start_push() {
    local name=$1
    shift
    local d=$TMP/$name
    rm -rf "$d"
    mkdir -p "$d"
    env RUN_DIR="$d" STATE_DIR="$d/state" SECURITY_KEY=$SECRET SUB_LISTEN= PUB_LISTEN= \
        LOG_LEVEL=warn MAX_CONN_PER_CHANNEL=100000 "$@" \
        "$SERVER" >"$d/log" 2>&1 &
    CUR_PID=$!
    PIDS+=("$CUR_PID")
    CUR_SUB=$d/sub.sock
    CUR_PUB=$d/pub.sock
    for _ in $(seq 100); do
        if ! kill -0 "$CUR_PID" 2>/dev/null; then
            forget_pid "$CUR_PID"
            return 1
        fi
        [ -S "$CUR_SUB" ] && [ -S "$CUR_PUB" ] && return 0
        sleep 0.1
    done
    stop_push
    return 1
}
# start_floor NAME: the floor of a fan-out (`push-bench floor`: accept, encode once, one write
# per delivery, nothing else) in $TMP/NAME; stopped with stop_push.
start_floor() {
    local d=$TMP/$1
    rm -rf "$d"
    mkdir -p "$d"
    "$BENCH" floor --sub "$d/sub.sock" --pub "$d/pub.sock" >"$d/log" 2>&1 &
    CUR_PID=$!
    PIDS+=("$CUR_PID")
    CUR_SUB=$d/sub.sock
    CUR_PUB=$d/pub.sock
    for _ in $(seq 100); do
        [ -S "$CUR_SUB" ] && [ -S "$CUR_PUB" ] && return 0
        sleep 0.1
    done
    return 1
}
stop_push() {
    kill "$CUR_PID" 2>/dev/null || true
    wait "$CUR_PID" 2>/dev/null || true
    forget_pid "$CUR_PID"
}

# start_nchan NAME: a fresh nginx + nchan in $TMP/NAME; sets CUR_PID (master), CUR_SUB, CUR_PUB.
start_nchan() {
    local d=$TMP/$1
    rm -rf "$d"
    mkdir -p "$d"
    sed -e "s|@PREFIX@|$d|g" -e "s|@REDIS_PORT@|$REDIS_PORT|g" "$NCHAN_CONF" >"$d/nginx.conf"
    NGINX_DIRS+=("$d")
    nginx -p "$d" -c "$d/nginx.conf" 2>"$d/start.log" || { cat "$d/start.log" >&2; return 1; }
    CUR_SUB=$d/sub.sock
    CUR_PUB=$d/pub.sock
    CUR_DIR=$d
    for _ in $(seq 100); do
        [ -s "$d/nginx.pid" ] && [ -S "$CUR_SUB" ] && [ -S "$CUR_PUB" ] && break
        sleep 0.1
    done
    CUR_PID=$(cat "$d/nginx.pid")
}
stop_nchan() {
    nginx -p "$CUR_DIR" -c "$CUR_DIR/nginx.conf" -s stop 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$CUR_PID" 2>/dev/null || break; sleep 0.1; done
}

# ---- runs ------------------------------------------------------------------------------------
mkdir -p "$(dirname "$OUT")"
{
    echo "# bench/compare.sh $(date -u +%FT%TZ) on $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), kernel $(uname -r)"
    echo "# git $(git rev-parse --short HEAD 2>/dev/null || echo '?') $(git status --porcelain --untracked-files=no 2>/dev/null | grep -q . && echo "(dirty)")"
    echo "# CONNS=$CONNS FANOUT_CONNS=$FANOUT_CONNS FANOUT_MSGS=$FANOUT_MSGS LAT_RATE=$LAT_RATE LAT_DURATION=$LAT_DURATION CHURN_CONNS=$CHURN_CONNS CHURN_RATE=$CHURN_RATE CHURN_DURATION=$CHURN_DURATION"
} >"$OUT"

declare -A R     # R[target/run] = JSON line
declare -A SKIP  # SKIP[target] = why

# bench TARGET RUN ARGS...: one push-bench run against the current server; records its JSON.
bench() {
    local target=$1 run=$2
    shift 2
    local args=("$@" --sub "$CUR_SUB" --pub "$CUR_PUB" --pid "$CUR_PID" --timeout "$RUN_TIMEOUT")
    case $target in
        push | push-redis | floor) args+=(--key "$SECRET") ;;
        *) args+=(--target "$target") ;;
    esac
    log "$target $run: push-bench ${args[*]}"
    local line rc=0
    line=$("$BENCH" "${args[@]}" 2>"$TMP/bench.err" | tail -n 1) || rc=$?
    if [ "$rc" -ne 0 ]; then
        log "$target $run: push-bench exit $rc: $(tail -n 3 "$TMP/bench.err" | tr '\n' ' ')"
    fi
    [ -n "$line" ] || line='{"ok":false,"error":"no output"}'
    echo "# $target $run: push-bench ${args[*]}" >>"$OUT"
    echo "$line" >>"$OUT"
    R[$target/$run]=$line
}

# run_all TARGET START STOP [START-ARGS...]
run_all() {
    local target=$1 start=$2 stop=$3
    shift 3
    $start "$target-ws" "$@" || return 1
    bench "$target" idle-ws idle --conns "$CONNS"
    $stop
    $start "$target-lp" "$@" || return 1
    bench "$target" idle-lp idle --conns "$CONNS" --transport lp
    $stop
    $start "$target-load" "$@" || return 1
    bench "$target" fanout fanout --conns "$FANOUT_CONNS" --messages "$FANOUT_MSGS"
    # Latency tails on a shared 2-core machine swing with other processes' load: run it
    # LAT_REPEAT times and keep the run with the median p99 (every run is in the JSON lines).
    local i lines=() p99s=()
    for i in $(seq "$LAT_REPEAT"); do
        bench "$target" "latency$i" latency --conns "$CONNS" --rate "$LAT_RATE" --duration "$LAT_DURATION"
        lines+=("${R[$target/latency$i]}")
    done
    R[$target/latency]=$(printf '%s\n' "${lines[@]}" | jq -s -c 'sort_by(.p99_us // 1e18) | .[(length - 1) / 2 | floor]')
    for i in $(seq "$LAT_REPEAT"); do
        p99s+=("$(jq -r '.p99_us // "-"' <<<"${R[$target/latency$i]}" | awk '{ if ($1 == "-") print "-"; else printf "%.0f", $1 }')")
    done
    R[$target/latency_all]=$(IFS=/; echo "${p99s[*]}")
    bench "$target" churn churn --conns "$CHURN_CONNS" --rate "$CHURN_RATE" --duration "$CHURN_DURATION"
    $stop
}

# get TARGET RUN JQ-EXPR: a number (or "-")
get() {
    local line=${R[$1/$2]:-}
    [ -n "$line" ] || { echo -; return; }
    local v
    v=$(jq -r "($3) // \"-\"" <<<"$line" 2>/dev/null) || v=-
    echo "${v:--}"
}
ratio() { # ratio A B -> A/B with two decimals, or "-"
    awk -v a="$1" -v b="$2" 'BEGIN { if (a == "-" || b == "-" || b + 0 == 0) print "-"; else printf "%.2f", a / b }'
}
fmt() { awk -v v="$1" -v d="${2:-0}" 'BEGIN { if (v == "-" || v == "null") print "-"; else printf "%.*f", d, v }'; }

# fanout_alternating LABEL ARGS...: push and nchan in turn, FANOUT_RUNS times, a fresh server
# each run; R[target/LABEL] becomes the run with the median CPU per delivery, and
# R[target/LABEL_all] lists every run's figure.
fanout_alternating() {
    local label=$1 i t lines
    shift
    for i in $(seq "$FANOUT_RUNS"); do
        start_push "push-$label$i" || return 1
        bench push "$label$i" fanout "$@"
        stop_push
        start_nchan "nchan-$label$i" || return 1
        bench nchan "$label$i" fanout "$@"
        stop_nchan
        start_floor "floor-$label$i" || return 1
        bench floor "$label$i" fanout "$@"
        stop_push
    done
    for t in push nchan floor; do
        lines=$(for i in $(seq "$FANOUT_RUNS"); do echo "${R[$t/$label$i]}"; done)
        R[$t/$label]=$(jq -s -c 'sort_by(.cpu_us_per_delivery // 1e18) | .[(length - 1) / 2 | floor]' <<<"$lines")
        R[$t/${label}_all]=$(jq -s -r 'map(.cpu_us_per_delivery // "-" | tostring) | join("/")' <<<"$lines")
        R[$t/${label}_others]=$(jq -s -r 'map(.others_cpu_pct // 0) | sort | .[(length - 1) / 2 | floor]' <<<"$lines")
    done
}

fanout_table() {
    echo
    echo "### Fan-out, alternating runs ($FANOUT_RUNS each, medians of server CPU per delivery)"
    echo
    echo "| workload | push-server (us/delivery) | nchan | ours / nchan | floor | ours / floor | push runs | nchan runs | floor runs | others' CPU (median %) |"
    echo "|---|---:|---:|---:|---:|---:|---|---|---|---:|"
    local label what a b f
    for label in paced burst; do
        case $label in
            paced) what="paced: $PACED_CONNS WS, $PACED_MSGS msgs one at a time, $PACED_GAP_MS ms apart" ;;
            burst) what="burst: $PACED_CONNS WS, $FANOUT_MSGS msgs pipelined" ;;
        esac
        a=$(get push "$label" .cpu_us_per_delivery)
        b=$(get nchan "$label" .cpu_us_per_delivery)
        f=$(get floor "$label" .cpu_us_per_delivery)
        echo "| $what | $(fmt "$a" 3) | $(fmt "$b" 3) | $(ratio "$a" "$b") | $(fmt "$f" 3) | $(ratio "$a" "$f") | ${R[push/${label}_all]:--} | ${R[nchan/${label}_all]:--} | ${R[floor/${label}_all]:--} | ${R[push/${label}_others]:--} |"
    done
}

run_fanout_alternating() {
    fanout_alternating paced --conns "$PACED_CONNS" --messages "$PACED_MSGS" --gap-ms "$PACED_GAP_MS" ||
        { log "fan-out runs: a server did not start"; exit 1; }
    fanout_alternating burst --conns "$PACED_CONNS" --messages "$FANOUT_MSGS" ||
        { log "fan-out runs: a server did not start"; exit 1; }
}

T0=$(date +%s)
if [ "$ONLY_FANOUT" = 1 ]; then
    run_fanout_alternating
    REPORT=$(fanout_table)
    echo "$REPORT"
    sed 's/^/# /' <<<"$REPORT" >>"$OUT"
    log "raw JSON lines: ${OUT#"$ROOT"/}"
    exit 0
fi
run_all push start_push stop_push || { log "push-server did not start"; exit 1; }
run_all nchan start_nchan stop_nchan || { log "nchan did not start"; exit 1; }
if start_push push-redis-probe REDIS_SOCK="$REDIS_SOCK"; then
    stop_push
    redis-cli -s "$REDIS_SOCK" flushall >/dev/null
    run_all push-redis start_push stop_push REDIS_SOCK="$REDIS_SOCK" ||
        SKIP[push-redis]="push-server with REDIS_SOCK failed to start"
else
    SKIP[push-redis]="server has no Redis store yet"
    log "push-redis skipped: $(tail -n 1 "$TMP/push-redis-probe/log")"
    echo "# push-redis: skipped: server has no Redis store yet ($(tail -n 1 "$TMP/push-redis-probe/log"))" >>"$OUT"
fi
redis-cli -p "$REDIS_PORT" flushall >/dev/null
run_all nchan-redis start_nchan stop_nchan || SKIP[nchan-redis]="nchan did not start"
run_fanout_alternating
log "runs took $(($(date +%s) - T0)) s"

# ---- table -----------------------------------------------------------------------------------

METRICS=(
    "idle RSS per WebSocket (B)|idle-ws|.bytes_per_conn|0"
    "idle RSS per long poll (B)|idle-lp|.bytes_per_conn|0"
    "fan-out deliveries/s (wall clock)|fanout|.deliveries_per_sec|0"
    "server CPU per delivery (us)|fanout|.cpu_us_per_delivery|3"
    "deliveries per server CPU-second|fanout|.deliveries_per_cpu_sec|0"
    "latency p50 (us)|latency|.p50_us|0"
    "latency p99 (us)|latency|.p99_us|0"
    "latency p999 (us)|latency|.p999_us|0"
    "churn RSS drift (%)|churn|.rss_drift_pct|2"
    "other processes' CPU during the latency run (% of machine)|latency|.others_cpu_pct|0|noratio"
)

table() {
    local ours=$1 peer=$2 title=$3
    echo
    echo "### $title"
    echo
    if [ -n "${SKIP[$ours]:-}" ]; then
        echo "$ours: skipped: ${SKIP[$ours]}"
    fi
    if [ -n "${SKIP[$peer]:-}" ]; then
        echo "$peer: skipped: ${SKIP[$peer]}"
    fi
    echo "| metric | $ours | $peer | ours / nchan |"
    echo "|---|---:|---:|---:|"
    local m name run expr dec opt a b
    for m in "${METRICS[@]}"; do
        IFS='|' read -r name run expr dec opt <<<"$m"
        if [ -n "${SKIP[$ours]:-}" ]; then a=-; else a=$(get "$ours" "$run" "$expr"); fi
        b=$(get "$peer" "$run" "$expr")
        if [ "$opt" = noratio ]; then
            echo "| $name | $(fmt "$a" "$dec") | $(fmt "$b" "$dec") | |"
        else
            echo "| $name | $(fmt "$a" "$dec") | $(fmt "$b" "$dec") | $(ratio "$a" "$b") |"
        fi
    done
    echo "| latency p99 of each run (us) | ${R[$ours/latency_all]:--} | ${R[$peer/latency_all]:--} | |"
    local bad=""
    local r t
    for r in idle-ws idle-lp fanout $(seq -f 'latency%g' "$LAT_REPEAT") churn; do
        for t in "$ours" "$peer"; do
            [ -n "${SKIP[$t]:-}" ] && continue
            [ "$(get "$t" "$r" .ok)" = true ] || bad+=" $t/$r"
        done
    done
    [ -z "$bad" ] || echo "failed checks (see the JSON lines):$bad"
}

targets() {
    local ws lp cpu wall nwall ncpu p99 drift
    ws=$(get push idle-ws .bytes_per_conn)
    lp=$(get push idle-lp .bytes_per_conn)
    cpu=$(get push fanout .deliveries_per_cpu_sec)
    ncpu=$(get nchan fanout .deliveries_per_cpu_sec)
    wall=$(get push fanout .deliveries_per_sec)
    nwall=$(get nchan fanout .deliveries_per_sec)
    p99=$(get push latency .p99_us)
    drift=$(get push churn .rss_drift_pct)
    check() { awk -v v="$2" -v lim="$3" -v op="$4" 'BEGIN { if (v == "-") print "n/a"; else if ((op == "le" && v + 0 <= lim) || (op == "ge" && v + 0 >= lim)) print "pass"; else print "FAIL" }'; }
    echo
    echo "### push-server targets (issue 7)"
    echo
    echo "| target | measured | |"
    echo "|---|---:|---|"
    echo "| RSS per idle WebSocket <= 1536 B | $(fmt "$ws") B | $(check x "$ws" 1536 le) |"
    echo "| RSS per idle long poll <= 1536 B | $(fmt "$lp") B | $(check x "$lp" 1536 le) |"
    echo "| fan-out >= 300000 deliveries per server CPU-second | $(fmt "$cpu") | $(check x "$cpu" 300000 ge) |"
    local rc rw
    rc=$(ratio "$cpu" "$ncpu")
    rw=$(ratio "$wall" "$nwall")
    echo "| fan-out >= 3x nchan (per server CPU-second) | ${rc}x | $(check x "$rc" 3 ge) |"
    echo "| fan-out >= 3x nchan (wall clock, load tool on the same 2 cores) | ${rw}x | $(check x "$rw" 3 ge) |"
    echo "| p99 publish->deliver <= 2000 us at $LAT_RATE/s, $CONNS subscribers | $(fmt "$p99") us | $(check x "$p99" 2000 le) |"
    echo "| RSS within 10 % of start after churn | $(fmt "$drift" 2) % | $(awk -v v="$drift" 'BEGIN { if (v == "-") print "n/a"; else if (v < 0 ? -v <= 10 : v <= 10) print "pass"; else print "FAIL" }') |"
}

REPORT=$(
    echo "Machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), kernel $(uname -r); $(nginx -v 2>&1 | sed 's/.*version: //'), libnginx-mod-nchan $(dpkg-query -W -f='${Version}' libnginx-mod-nchan 2>/dev/null || echo '?')"
    echo "Sizes: idle $CONNS conns; fanout $FANOUT_CONNS subscribers x $FANOUT_MSGS messages; latency $CONNS subscribers at $LAT_RATE/s for $LAT_DURATION s (median p99 of $LAT_REPEAT runs); churn $CHURN_CONNS conns at $CHURN_RATE/s for $CHURN_DURATION s"
    echo "RSS and CPU: push-server process; nchan: the nginx worker process (1 worker)"
    table push nchan "embedded / memory store"
    table push-redis nchan-redis "Redis store"
    fanout_table
    targets
)
echo "$REPORT"
sed 's/^/# /' <<<"$REPORT" >>"$OUT"
log "raw JSON lines: ${OUT#"$ROOT"/}"
