#!/bin/sh
# Checks that an installed Node.js push server 0.4.0 and push-server can share one Redis:
# starts a private redis-server, a Node sub and pub process from NODE_DIR and push-server
# (target/release/push-server, or $PUSH_SERVER), runs the checks of docs/redis.md
# ("Sharing Redis with Node 0.4.0 processes"), prints PASS/FAIL per check and exits non-zero
# on any failure. It neither fetches nor builds anything. Bounded to 5 minutes. The Node
# processes listen on random TCP ports, on every interface (0.4.0 ignores its `hostname`
# setting), for the seconds of the run; push-server and Redis on Unix sockets.
#
#   tools/node-coexist.sh /opt/push-server
set -eu
if [ $# -ne 1 ] || [ ! -f "$1/server.js" ] || [ ! -d "$1/node_modules/ws" ]; then
	echo "usage: $0 NODE_DIR   (an installed Node.js push server 0.4.0: server.js, node_modules/)" >&2
	exit 2
fi
here=$(cd "$(dirname "$0")" && pwd)
PUSH_SERVER=${PUSH_SERVER:-$here/../target/release/push-server}
for tool in node redis-server redis-cli "$PUSH_SERVER"; do
	command -v "$tool" >/dev/null 2>&1 || { echo "missing: $tool" >&2; exit 2; }
done
NODE_DIR=$1 PUSH_SERVER=$PUSH_SERVER exec timeout -k 10 300 node "$here/node-coexist.js"
