#!/usr/bin/env python3
"""Writes the committed seed corpus: fuzz/corpus/<target>/seed-<name>.

Run from anywhere (`python3 fuzz/seeds.py`); it rewrites the seeds only. Each seed starts with
the selector bytes its target reads first (see the target's doc comment)."""
import hashlib
import hmac
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
PRIV = "098f6bcd4621d373cade4e832627b4f6"
PUB = "4c9184f37cff01bcdc32dc486ec36961"
SHARED = "ad0234829205b9033196ba818f7a872b"
KEY = b"secret"


def sig(data, algo=hashlib.sha1):
    return hmac.new(KEY, data.encode(), algo).hexdigest()


def write(target, name, data):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "seed-" + name), "wb") as f:
        f.write(data)


# ---- http_head: u16 LE max_head, then the stream -------------------------------------------
def http(name, text, max_head=8192):
    write("http_head", name, struct.pack("<H", max_head) + text)


pair = f"{PRIV}:{PUB}.{sig(PRIV + ':' + PUB)}"
shared = f"{SHARED}.{sig(SHARED)}"
http("lp", f"GET /bitrix/sub/?CHANNEL_ID={PRIV}.{sig(PRIV)} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
http("lp-pair-mid", (
    f"GET /bitrix/sub/?CHANNEL_ID={pair.replace(':', '%3A')}%2F{shared}"
    "&mid=17954797730000000000000003&revision=19 HTTP/1.1\r\n"
    "Host: push.example\r\nX-Real-IP: 10.0.0.7\r\nConnection: close\r\n\r\n").encode())
http("ws", (
    f"GET /bitrix/subws/?CHANNEL_ID={pair}/{shared}&binaryMode=true HTTP/1.1\r\n"
    "Host: x\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n"
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
http("ws-nginx-lp", (
    f"GET /bitrix/subws/?CHANNEL_ID={PRIV}.{sig(PRIV)} HTTP/1.0\r\n"
    "Upgrade: websocket\r\nConnection: close\r\nX-Forwarded-For: 1.2.3.4, 10.0.0.1\r\n\r\n").encode())
body = b'{"a":1}'
http("publish-signed", (
    f"POST /bitrix/pub/?CHANNEL_ID={PRIV}/{SHARED}&signature={sig(body.decode())} HTTP/1.1\r\n"
    f"Host: x\r\nContent-Length: {len(body)}\r\nMessage-Expiry: 120\r\n\r\n").encode() + body)
http("publish-pair", (
    f"POST /bitrix/pub/?CHANNEL_ID={pair}&tag=1&time=Tue%2C%2024%20Nov%202026%2000%3A24%3A41%20GMT"
    " HTTP/1.1\r\nContent-Length: 2\r\nContent-Type: application/x-www-form-urlencoded\r\n\r\n{}").encode())
http("online", f"GET /bitrix/pub/?CHANNEL_ID={PRIV}/{SHARED}/{PUB} HTTP/1.1\r\n\r\n".encode())
http("options", b"OPTIONS /bitrix/sub/ HTTP/1.1\r\nOrigin: https://portal\r\n\r\nOPTIONS /b HTTP/1.1\r\n\r\n")
http("server-stat", b"GET /server-stat/ HTTP/1.1\r\nHost: localhost\r\n\r\n")
http("rest-v4", b"POST /bitrix/rest/?CHANNEL_ID=" + pair.encode()
     + b" HTTP/1.1\r\nContent-Length: 4\r\n\r\n\x0a\x02\x1a\x00")
http("chunked", b"POST /bitrix/pub/ HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
http("bad-length", b"POST /bitrix/pub/ HTTP/1.1\r\nContent-Length: +5\r\nContent-Length: 5\r\n\r\nhello")
http("sha256", f"GET /bitrix/sub/?CHANNEL_ID={PRIV}.{sig(PRIV, hashlib.sha256)}&mid=%31 HTTP/1.1\r\n\r\n".encode())
http("small-limit", b"GET /bitrix/sub/?CHANNEL_ID=x HTTP/1.1\r\nHost: x\r\n\r\n", max_head=32)
# Regression: max_head + 4 overflowed for "no limit" (0xFFFF selects usize::MAX).
http("regress-no-limit", b"GET / HTTP/1.1\r\n\r\n", max_head=0xFFFF)


# ---- ws_reader: max_message selector, chunk seed, then client frames ------------------------
def frame(first, payload, mask=b"\x37\xfa\x21\x3d", length_form=None):
    n = len(payload)
    out = bytes([first])
    form = length_form or ("short" if n < 126 else "16" if n <= 0xFFFF else "64")
    if form == "short":
        out += bytes([0x80 | n])
    elif form == "16":
        out += bytes([0x80 | 126]) + struct.pack(">H", n)
    else:
        out += bytes([0x80 | 127]) + struct.pack(">Q", n)
    return out + mask + bytes(b ^ mask[i & 3] for i, b in enumerate(payload))


def ws(name, frames, sel=4, seed=0):  # sel 4: max_message 4096
    write("ws_reader", name, bytes([sel, seed]) + b"".join(frames))


v4_stats = bytes.fromhex("0a021a00")
ws("text", [frame(0x81, b"ping")])
ws("binary", [frame(0x82, v4_stats)])
ws("ping-pong-close", [frame(0x89, b"p"), frame(0x8A, b""), frame(0x88, b"\x03\xe8bye")])
ws("fragmented-binary", [frame(0x02, b"\x0a\x02"), frame(0x89, b"mid"), frame(0x00, b"\x1a"),
                         frame(0x80, b"\x00")], seed=7)
ws("fragmented-text", [frame(0x01, b"hel"), frame(0x80, b"lo"), frame(0x82, b"x")])
ws("len16", [frame(0x82, bytes(300))], seed=3)
ws("len64-small", [frame(0x82, b"abc", length_form="64")])
ws("too-big", [frame(0x82, bytes(200))], sel=2)  # max 125: 1009
ws("unmasked", [b"\x81\x02hi"])
ws("rsv", [frame(0xC1, b"x")])
ws("stray-continuation", [frame(0x80, b"x")])
ws("fragmented-ping", [frame(0x09, b"x")])
ws("partial", [frame(0x82, bytes(40))[:20]], seed=200)
# Regression: with no message limit (sel 8: usize::MAX) the frame end overflowed.
ws("regress-huge-length", [b"\x82\xff" + b"\xff" * 8 + b"\x01\x02\x03\x04"], sel=8)

# ---- v4_batch: selector (caller = sel % 3, limits = sel / 3 % 3), then a RequestBatch --------
BACKEND, CLIENT, ANON = 0, 1, 2
v4 = {
    "php-publish": (BACKEND, "0a2e0a2c0a2a0a140a10098f6bcd4621d373cade4e832627b4f610011a027b7d2080a3052a0a696d5f6d657373616765"),
    "browser-publish": (CLIENT, "0a690a670a650a280a104c9184f37cff01bcdc32dc486ec369611a1459a5001be5603756b5e23b55b51ebe63ce91b6611a377b226d6f64756c655f6964223a2274657374222c22636f6d6d616e64223a2268656c6c6f222c22706172616d73223a7b2261223a317d7d201e"),
    "browser-anon": (ANON, "0a021a00"),
    "server-stats": (BACKEND, "0a021a00"),
    "server-stats-client": (CLIENT, "0a021a00"),
    "registration": (BACKEND, "0a022200"),
    "channel-stats": (BACKEND, "0a1812160a140a10098f6bcd4621d373cade4e832627b4f61001"),
    "channel-stats-client": (CLIENT, "0a1812160a140a10098f6bcd4621d373cade4e832627b4f61001"),
    "empty-publish-unknown-fields": (BACKEND, "0a040a007801a80601"),
    "two-requests": (BACKEND, "0a020a000a021a00"),
    "wrong-wire-type": (BACKEND, "0801"),
    "fixed64-receiver": (BACKEND, "0a0d0a0b0a09090000000000000000"),
    "limits-1": (BACKEND + 3, "0a2e0a2c0a2a0a140a10098f6bcd4621d373cade4e832627b4f610011a027b7d2080a3052a0a696d5f6d657373616765"),
}
for name, (sel, hx) in v4.items():
    write("v4_batch", name, bytes([sel]) + bytes.fromhex(hx))

# ---- v5: selector (% 2: JSON-RPC body, token), then the bytes --------------------------------
v5 = {
    "backend-publish": (0, b'[{"jsonrpc":"2.0","method":"publish","params":{"channelList":["098f6bcd4621d373cade4e832627b4f6"],"userList":[1,2],"body":{"module_id":"im","command":"message","params":[],"extra":{}},"dictionary":{"d":1},"user_params":{"1":{"u":1}},"expiry":0,"type":"im_message"}}]'),
    "last-seen": (0, b'{"jsonrpc":"2.0","method":"getUsersLastSeen","params":{"userList":[1,7]}}'),
    "client-publish": (0, b'{"jsonrpc":"2.0","method":"publish","params":{"channelList":[{"publicId":"4c9184f37cff01bcdc32dc486ec36961","signature":"59a5001be5603756b5e23b55b51ebe63ce91b661"}],"body":{"module_id":"m","command":"c"}},"id":3}'),
    "deep": (0, b'[' * 70 + b']' * 70),
    "token": (1, b"eyJ0eXAiOiJKV1QiLCJhbGciOiJIUzI1NiJ9.eyJpc3MiOiJhYmMiLCJpYXQiOjE3MDAwMDAwMDAsImV4cCI6MTcwMDA0MzIwMCwic3ViIjoiMSIsImNoYW4iOiIwOThmNmJjZDQ2MjFkMzczY2FkZTRlODMyNjI3YjRmNiJ9.rqF6C_TFzLqD4jF6vRFmEssXTyEVx_KNp7WOBlxf5eA"),
    "token-alg-none": (3, b"eyJ0eXAiOiJKV1QiLCJhbGciOiJub25lIn0.eyJzdWIiOiIxIn0."),
}
for name, (sel, raw) in v5.items():
    write("v5", name, bytes([sel]) + raw)

# ---- config: the file content ----------------------------------------------------------------
with open(os.path.join(HERE, "..", "systemd", "push-server-multi.example"), "rb") as f:
    example = f.read()
conf = {
    "example-with-key": example + b"\nSECURITY_KEY=abc123\n",
    "legacy-0.4": b"SECURITY_KEY=\"Jefe1234\"\nGROUP=bitrix\nRUN_DIR=/tmp/push-server\n"
                  b"REDIS_SOCK=/var/run/redis/redis.sock\nSUBPATH=/bitrix/sub/\n"
                  b"IP_LIST='\"127.0.0.1\", \"10.0.0.0/24\"'\nUSER=bitrix\nWS_PORT=8895\n",
    "listeners": b"export SECURITY_KEY=k\nSUB_LISTEN=127.0.0.1:8010\nPUB_LISTEN=[::1]:9010\n"
                 b"SOCK_MODE=0o660\nSOCK_GROUP=www-data\n",
    "timings": b"SECURITY_KEY=k\nLONG_POLL_TIMEOUT=40.5\nHEADER_TIMEOUT=.25\nKEEPALIVE_TIMEOUT=75\n"
               b"WS_PING_INTERVAL=120\nSEND_TIMEOUT=604800\nSHUTDOWN_TIMEOUT=0.000000001\n",
    "limits": b"SECURITY_KEY=k\nMAX_PAYLOAD=67108864\nMAX_HEADER_SIZE=1024\nMAX_CONNECTIONS=1\n"
              b"OUTBOX_LIMIT=18446744073709551615\nSTORE_MAX_BYTES=1\nCHANNEL_HISTORY=4294967295\n",
    "redis-url": b"SECURITY_KEY=k\nREDIS_URL=redis://:p%40ss@127.0.0.1:6379\nREDIS_PREFIX=bx:\n",
    "conflict": b"SECURITY_KEY=k\nREDIS_SOCK=/r.sock\nREDIS_URL=unix:///r.sock\n",
    "quotes-comments": b"# c\r\n  SECURITY_KEY='k'  # trailing\r\nLOG_LEVEL=\"DEBUG\"\r\nSUBPATH=/a\\ b/ c\n"
                       b"RUN_DIR=\"/run/$USER\"\nSTATE_FILE=`x`\n",
    "unterminated": b"SECURITY_KEY=k\nGROUP='bitrix\nPUBPATH=\"/bitrix/pub/\n",
    "invalid-values": b"SECURITY_KEY=k-1\nSECURITY_ALGO=md5\nSOCK_MODE=0999\n",
    "same-socket": b"SECURITY_KEY=k\nSUB_SOCK=/tmp/a.sock\nPUB_SOCK=/tmp/a.sock\n",
    "sha256-dup-keys": b"SECURITY_KEY=a\nSECURITY_KEY=b\nSECURITY_ALGO=sha256\nMESSAGE_TTL=86400\n"
                       b"EXPIRY0_GRACE=0\nONLINE_TTL=130\nnot an assignment\n=x\n1A=2\n",
    "empty": b"",
    # Regression: a long RUN_DIR pushed the default socket paths past sun_path's 107 bytes.
    "regress-long-run-dir": b"SECURITY_KEY=k\nRUN_DIR=/" + b"d" * 99 + b"\n",
}
for name, data in conf.items():
    write("config", name, data)
