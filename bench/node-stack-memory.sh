#!/usr/bin/env bash
# bench/node-stack-memory.sh NODE_DIR [CONNS]: memory per idle subscriber of the Node.js push
# server 0.4.0 (an installed tree: server.js, node_modules/; nothing is fetched or built), one
# sub process on Redis, directly and behind nginx with the BitrixVM-style push config (the
# maps, locations and proxy settings of the VM's nginx, upstream `nodejs_sub`), and, in the
# same run and under the same nginx config, push-server on SUB_LISTEN as
# nginx/push-server-bitrixvm-upstreams.conf sets it up: the baseline. Measures as
# bench/stack-memory.sh does (push-bench idle: RSS growth per open connection), with fresh
# processes, nginx included, for every run. CONNS defaults to 3000 (at most 3000: Node holds a
# long poll only 40 s). Needs node, nginx, redis-server, jq, python3 and a release build
# (cargo build --release --workspace). Node listens on TCP ports below the ephemeral range,
# on every interface (0.4.0 ignores its `hostname` setting), for the run.
set -euo pipefail
cd "$(dirname "$0")/.."
NODE_DIR=$(cd "${1:?usage: $0 NODE_DIR [CONNS]}" && pwd)
CONNS=${2:-3000}
[ "$CONNS" -le 3000 ] || { echo "CONNS is at most 3000" >&2; exit 2; }
[ -f "$NODE_DIR/server.js" ] || { echo "$NODE_DIR has no server.js" >&2; exit 2; }
BIN=$PWD/target/release/push-server
BENCH=$PWD/target/release/push-bench
KEY=stackKey
D=$(mktemp -d /tmp/nodemem.XXXXXX)
RUN=$D/run
mkdir -p "$RUN" "$D/logs"
ulimit -n 19000
stop_nginx() { [ -f "$D/nginx.pid" ] && kill "$(cat "$D/nginx.pid")" 2>/dev/null; rm -f "$D/nginx.pid"; }
trap 'kill $(jobs -p) 2>/dev/null; stop_nginx; rm -rf "$D"' EXIT
# A port below the ephemeral range (32768+): thousands of client connections must not take it.
free_port() {
    python3 -c '
import random, socket
while True:
    p = random.randint(20000, 32000)
    try:
        socket.socket().bind(("127.0.0.1", p))
        print(p)
        break
    except OSError:
        pass'
}
PORT=$(free_port) SUB=$(free_port) STAT=$(free_port) SHIM=$(free_port)

redis-server --port 0 --unixsocket "$D/redis.sock" --save "" --appendonly no >"$D/redis.log" 2>&1 &
for _ in $(seq 100); do [ -S "$D/redis.sock" ] && break; sleep 0.05; done

# One sub process as the VM's push-server-multi generates it (clusterMode, Redis), plus a
# /server-stat/ listener in the same process so push-bench can see it count its subscribers.
# statTLLMsec 200: the process rewrites its `stats` entry every 200 ms instead of 60 s, so
# the count is current (push-bench waits for it).
cat >"$D/sub.json" <<JSON
{"servers": [{"name": "sub", "port": $SUB, "hostname": "127.0.0.1", "backlog": 1024, "routes": {"sub": "/bitrix/subws/"}},
             {"name": "stat", "port": $STAT, "hostname": "127.0.0.1", "routes": {"stat": "/server-stat/"}}],
 "clusterMode": true, "processUniqueId": "sub-bench",
 "storage": {"type": "redis", "socket": "$D/redis.sock", "onlineTTL": 120, "onlineDelta": 10, "statTLLMsec": 200},
 "security": {"key": "$KEY"}, "debug": {"folderName": "$D/logs", "ip": [], "trustProxy": true}}
JSON

# The BitrixVM push config (maps, upstream, the subws/sub locations, the proxy settings around
# them); only the upstream's address differs per target.
start_nginx() {
    cat >"$D/nginx.conf" <<CONF
daemon on;
user root;
worker_processes 1;
worker_rlimit_nofile 10240;
pid $D/nginx.pid;
error_log $D/error.log warn;
events { worker_connections 10240; }
http {
  access_log off;
  client_body_temp_path $D/body;
  proxy_temp_path $D/proxy;
  map \$http_upgrade \$connection_upgrade { default upgrade; '' close; }
  map \$http_upgrade \$replace_upgrade { default \$http_upgrade; '' websocket; }
  upstream nodejs_sub { ip_hash; keepalive 1024; server $1; }
  proxy_connect_timeout 300; proxy_send_timeout 300; proxy_read_timeout 300;
  proxy_buffer_size 64k; proxy_buffers 8 256k; client_max_body_size 1024m;
  gzip on; gzip_proxied any; gzip_types text/plain;
  server {
    listen 127.0.0.1:$PORT;
    proxy_set_header X-Real-IP \$remote_addr;
    proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
    proxy_set_header Host \$host:80;
    location ~* ^/bitrix/subws/ {
      access_log off; proxy_pass http://nodejs_sub; proxy_http_version 1.1;
      proxy_set_header Upgrade \$replace_upgrade; proxy_set_header Connection \$connection_upgrade;
      proxy_read_timeout 43800; proxy_max_temp_file_size 0;
    }
    location ~* ^/bitrix/sub/ {
      access_log off; rewrite ^/bitrix/sub/(.*)\$ /bitrix/subws/\$1 break; proxy_pass http://nodejs_sub;
      proxy_read_timeout 43800; proxy_max_temp_file_size 0;
    }
  }
}
CONF
    nginx -p "$D" -c "$D/nginx.conf"
    for _ in $(seq 100); do [ -s "$D/nginx.pid" ] && pgrep -P "$(cat "$D/nginx.pid")" >/dev/null && break; sleep 0.05; done
    pgrep -P "$(cat "$D/nginx.pid")" | head -1
}

# Node answers /server-stat/ chunked, which push-bench does not read: this relays it with a
# Content-Length.
python3 -c '
import http.server, sys, urllib.request
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = urllib.request.urlopen("http://127.0.0.1:%s/server-stat/" % sys.argv[2]).read()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()' "$SHIM" "$STAT" &

rss() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
wait_port() { for _ in $(seq 200); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return; sleep 0.05; done; echo "port $1 never opened" >&2; exit 1; }

# run TARGET TRANSPORT VIA MEASURE: one idle run of CONNS subscribers with fresh processes.
# TARGET node|push, VIA direct|nginx, MEASURE server|nginx (the nginx worker); prints bytes
# per connection.
run() {
    local target=$1 transport=$2 via=$3 measure=$4 sp pub upstream
    if [ "$target" = node ]; then
        (cd "$NODE_DIR" && exec node server.js --config "$D/sub.json") >"$D/node.log" 2>&1 </dev/null &
        sp=$!
        wait_port "$SUB"; wait_port "$STAT"
        upstream=127.0.0.1:$SUB pub=127.0.0.1:$SHIM
    else
        rm -f "$RUN"/*.sock
        RUN_DIR=$RUN STATE_DIR=$RUN/state SECURITY_KEY=$KEY SUB_LISTEN=127.0.0.1:$SUB PUB_LISTEN= LOG_LEVEL=warn \
            "$BIN" >"$D/server.log" 2>&1 &
        sp=$!
        wait_port "$SUB"
        upstream=127.0.0.1:$SUB pub=$RUN/pub.sock
    fi
    local sub=$upstream pid=$sp worker=""
    if [ "$via" = nginx ]; then
        worker=$(start_nginx "$upstream")
        sub=127.0.0.1:$PORT
        [ "$measure" = nginx ] && pid=$worker
    fi
    sleep 1 # let a fresh Node finish its start-up allocations
    local r
    r=$("$BENCH" idle --sub "$sub" --pub "$pub" --key "$KEY" --pid "$pid" \
        --conns "$CONNS" --transport "$transport" --timeout 120 2>"$D/bench.err" | tail -1 | jq -r '.bytes_per_conn // "failed"')
    [ "$r" = failed ] && tail -2 "$D/bench.err" >&2
    echo "$r"
    stop_nginx
    kill "$sp"; wait "$sp" 2>/dev/null || true
    sleep 0.5
}

kb() { [ "$1" = failed ] && echo failed || awk -v b="$1" 'BEGIN { printf "%.1f KB", b / 1024 }'; }
for transport in ws lp; do
    for target in node push; do
        d=$(run "$target" "$transport" direct server)
        s=$(run "$target" "$transport" nginx server)
        n=$(run "$target" "$transport" nginx nginx)
        name=$([ "$target" = node ] && echo "Node 0.4.0 sub" || echo "push-server")
        echo "$transport ($CONNS idle) $name: direct $(kb "$d"); behind nginx: nginx worker $(kb "$n") + $name $(kb "$s")"
    done
done
