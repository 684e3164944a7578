#!/usr/bin/env bash
# bench/stack-memory.sh [CONNS] [TUNED]: memory per idle subscriber of the whole stack as
# deployed: nginx (one worker, the shipped snippets: nginx/push-server-http.conf and
# nginx/push-server-sub-locations.conf) in front of push-server on its Unix sockets. Opens
# CONNS idle WebSockets, then CONNS idle long polls (default 3000 each, fresh servers), through
# nginx on a loopback port, and prints the RSS growth per connection of the nginx worker and
# of push-server. TUNED=1 adds the small-buffer settings of the issue (proxy_buffer_size 1k;
# client_header_buffer_size 512; request_pool_size 1k; connection_pool_size 256) to the server
# block. Needs nginx and a release build (cargo build --release --workspace).
set -euo pipefail
cd "$(dirname "$0")/.."
CONNS=${1:-3000}
TUNED=${2:-0}
BIN=target/release/push-server
BENCH=target/release/push-bench
D=$(mktemp -d /tmp/stackmem.XXXXXX)
RUN=$D/run
mkdir -p "$RUN"
trap 'kill $(jobs -p) 2>/dev/null; [ -f "$D/nginx.pid" ] && kill "$(cat "$D/nginx.pid")" 2>/dev/null; rm -rf "$D"' EXIT
PORT=$((20000 + RANDOM % 30000))
tune=""
[ "$TUNED" = 1 ] && tune="proxy_buffer_size 1k; client_header_buffer_size 512; request_pool_size 1k; connection_pool_size 256;"
sed "s|/tmp/push-server/|$RUN/|g" nginx/push-server-http.conf >"$D/http.conf"
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
    $tune
    include @SNIPPETS@;
  }
}
CONF
sed -i "s|@SNIPPETS@|$PWD/nginx/push-server-sub-locations.conf|" "$D/nginx.conf"
nginx -p "$D" -c "$D/nginx.conf"
sleep 0.5
WORKER=$(pgrep -P "$(cat "$D/nginx.pid")" | head -1)
rss() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
# run TRANSPORT PID-OF: one idle run through nginx, measuring the process named (nginx's worker
# or push-server) as push-bench does: RSS growth per open connection.
run() {
    rm -f "$RUN"/*.sock
    RUN_DIR=$RUN STATE_DIR=$RUN/state SECURITY_KEY=stackKey SUB_LISTEN= PUB_LISTEN= LOG_LEVEL=warn \
        "$BIN" >"$D/server.log" 2>&1 &
    SP=$!
    for _ in $(seq 100); do [ -S "$RUN/sub.sock" ] && break; sleep 0.05; done
    local pid=$SP
    [ "$2" = nginx ] && pid=$WORKER
    "$BENCH" idle --sub "127.0.0.1:$PORT" --pub "$RUN/pub.sock" --key stackKey --pid "$pid" \
        --conns "$CONNS" --transport "$1" --timeout 120 2>"$D/bench.err" | tail -1 | jq -r '.bytes_per_conn // "failed"'
    kill "$SP"; wait "$SP" 2>/dev/null || true
}
for transport in ws lp; do
    n=$(run "$transport" nginx)
    o=$(run "$transport" ours)
    tail -2 "$D/bench.err" >&2
    echo "$transport ($CONNS idle, tuned=$TUNED): nginx worker $n B + push-server $o B per connection"
done
