#!/usr/bin/env bash
# bench/stack-memory.sh [CONNS]: memory per idle subscriber of the whole stack as deployed:
# nginx (one worker, the shipped snippets nginx/push-server-http.conf and
# nginx/push-server-sub-locations.conf, as an admin includes them) in front of push-server on its
# Unix sockets, and nchan (bench/nchan.conf.in) in the same run for comparison. Opens CONNS idle
# WebSockets, then CONNS idle long polls (default 3000), through nginx on a loopback port, and
# prints the RSS growth per connection of the nginx worker and of push-server, then of nchan's
# worker. Every measurement gets fresh servers (a heap that already grew would hide growth).
#
# Environment:
#   COOKIE=BYTES        a Cookie header of that size on every subscribe request (browsers send
#                       the portal's cookies; default 0)
#   SERVER_EXTRA='...'  directives added to the portal's server block (try a knob)
#   SNIPPET_SED='...'   sed script applied to the copied sub-locations snippet (try a knob)
#   NCHAN=0             skip nchan
#   FANOUT_SIZE=BYTES   also: nginx worker CPU per delivery of BYTES-byte messages, 1000
#                       WebSockets x 100 paced publishes through nginx (proxy_buffer_size sets
#                       how many reads and writes a message takes there)
# Needs nginx, libnginx-mod-nchan (for nchan), jq and a release build
# (cargo build --release --workspace).
set -euo pipefail
cd "$(dirname "$0")/.."
CONNS=${1:-3000}
COOKIE=${COOKIE:-0}
NCHAN=${NCHAN:-1}
BIN=target/release/push-server
BENCH=target/release/push-bench
D=$(mktemp -d /tmp/stackmem.XXXXXX)
RUN=$D/run
mkdir -p "$RUN" "$D/nchan"
# stop_nginx DIR: stops the nginx started from DIR and waits until its master is gone.
stop_nginx() {
    [ -s "$1/nginx.pid" ] || return 0
    local m
    m=$(cat "$1/nginx.pid")
    kill "$m" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$m" 2>/dev/null || break; sleep 0.05; done
    rm -f "$1/nginx.pid"
}
trap 'kill $(jobs -p) 2>/dev/null; stop_nginx "$D"; stop_nginx "$D/nchan"; rm -rf "$D"' EXIT
PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
sed "s|/tmp/push-server/|$RUN/|g" nginx/push-server-http.conf >"$D/http.conf"
sed "${SNIPPET_SED:-}" nginx/push-server-sub-locations.conf >"$D/sub-locations.conf"
cat >"$D/nginx.conf" <<CONF
daemon on;
# The bench runs as root; the worker must reach the 0660 sockets.
user root;
worker_processes 1;
worker_rlimit_nofile 19500;
pid $D/nginx.pid;
error_log $D/error.log warn;
events { worker_connections 19000; }
http {
  access_log off;
  client_body_temp_path $D/body;
  proxy_temp_path $D/proxy;
  include $D/http.conf;
  server {
    listen 127.0.0.1:$PORT;
    ${SERVER_EXTRA:-}
    include $D/sub-locations.conf;
  }
}
CONF
sed -e "s|@PREFIX@|$D/nchan|g" -e "s|@REDIS_PORT@|1|g" bench/nchan.conf.in >"$D/nchan/nginx.conf"
# start_nginx DIR: a fresh nginx from DIR/nginx.conf; prints its worker's pid.
start_nginx() {
    nginx -p "$1" -c "$1/nginx.conf" || exit 1
    for _ in $(seq 100); do [ -s "$1/nginx.pid" ] && pgrep -P "$(cat "$1/nginx.pid")" >/dev/null && break; sleep 0.05; done
    pgrep -P "$(cat "$1/nginx.pid")" | head -1
}
# idle ARGS...: push-bench idle; prints bytes per connection.
idle() {
    "$BENCH" idle --conns "$CONNS" --cookie "$COOKIE" --timeout 120 "$@" 2>"$D/bench.err" |
        tail -1 | jq -r '.bytes_per_conn // "failed"'
}
# run TRANSPORT WHO: one idle run through fresh nginx and push-server, measuring nginx's worker
# or push-server (WHO = nginx | ours).
run() {
    rm -f "$RUN"/*.sock
    RUN_DIR=$RUN STATE_DIR=$RUN/state SECURITY_KEY=stackKey SUB_LISTEN= PUB_LISTEN= LOG_LEVEL=warn \
        "$BIN" >"$D/server.log" 2>&1 &
    local sp=$! worker
    for _ in $(seq 100); do [ -S "$RUN/sub.sock" ] && break; sleep 0.05; done
    worker=$(start_nginx "$D")
    local pid=$sp
    [ "$2" = nginx ] && pid=$worker
    idle --sub "127.0.0.1:$PORT" --pub "$RUN/pub.sock" --key stackKey --pid "$pid" --transport "$1"
    stop_nginx "$D"
    kill "$sp"
    wait "$sp" 2>/dev/null || true
}
nchan() {
    local worker
    worker=$(start_nginx "$D/nchan")
    idle --target nchan --sub "$D/nchan/sub.sock" --pub "$D/nchan/pub.sock" --pid "$worker" --transport "$1"
    stop_nginx "$D/nchan"
}
kb() { [[ $1 =~ ^[0-9.]+$ ]] && awk -v b="$1" 'BEGIN { printf "%.2f KB", b / 1024 }' || echo "$1"; }
for transport in ws lp; do
    n=$(run "$transport" nginx)
    o=$(run "$transport" ours)
    t=failed
    [[ $n =~ ^[0-9.]+$ && $o =~ ^[0-9.]+$ ]] && t=$(awk -v a="$n" -v b="$o" 'BEGIN { print a + b }')
    line="$transport ($CONNS idle, cookie $COOKIE B): nginx $(kb "$n") + push-server $(kb "$o") = $(kb "$t")"
    if [ "$NCHAN" = 1 ]; then
        line="$line; nchan $(kb "$(nchan "$transport")")"
    fi
    echo "$line"
done
if [ -n "${FANOUT_SIZE:-}" ]; then
    rm -f "$RUN"/*.sock
    RUN_DIR=$RUN STATE_DIR=$RUN/state SECURITY_KEY=stackKey SUB_LISTEN= PUB_LISTEN= LOG_LEVEL=warn \
        "$BIN" >"$D/server.log" 2>&1 &
    sp=$!
    for _ in $(seq 100); do [ -S "$RUN/sub.sock" ] && break; sleep 0.05; done
    worker=$(start_nginx "$D")
    us=$("$BENCH" fanout --sub "127.0.0.1:$PORT" --pub "$RUN/pub.sock" --key stackKey \
        --pid "$worker" --conns 1000 --messages 100 --gap-ms 20 --size "$FANOUT_SIZE" \
        --timeout 120 2>"$D/bench.err" | tail -1 | jq -r '.cpu_us_per_delivery // "failed"')
    stop_nginx "$D"
    kill "$sp"
    wait "$sp" 2>/dev/null || true
    echo "fan-out of $FANOUT_SIZE-byte messages: nginx worker $us us of CPU per delivery"
fi
