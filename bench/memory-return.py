#!/usr/bin/env python3
"""bench/memory-return.py: does a push-server binary give freed memory back to the OS?

    python3 bench/memory-return.py target/release/push-server

Starts the binary on Unix sockets in a temp dir (embedded store) and prints one JSON line of
RSS figures (MiB, from /proc/PID/status VmRSS) for two phases, each followed by 10 s of light
traffic (one small publish per second):

  churn:   a v3 and a v4 WebSocket subscriber read along while 200 x 1 MB messages are
           published with STORE_MAX_BYTES=32 MiB, so ~200 MB of messages and of all their
           encodings are built and then evicted;
  backlog: 50 x 1 MB are stored, then 10 WebSocket clients resume from the oldest id and never
           read (their backlog frames pile up in the server until they are cut off or close),
           then all 10 close.

Everything is local (Unix sockets), bounded in time, and the server is stopped at the end.
"""

import hashlib
import hmac
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time

KEY = "benchKey42"
MB = 1_000_000
MIB = 1 << 20


def rss(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def signed(cid):
    sig = hmac.new(KEY.encode(), cid.encode(), hashlib.sha1).hexdigest()
    return f"{cid}.{sig}"


def http(sock_path, raw):
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(30)
    s.connect(sock_path)
    s.sendall(raw)
    data = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    s.close()
    return data


def publish(pub, cid, body):
    head = (
        f"POST /bitrix/pub/?CHANNEL_ID={cid} HTTP/1.0\r\nHost: localhost\r\n"
        f"Content-Length: {len(body)}\r\nMessage-Expiry: 86400\r\n\r\n"
    ).encode()
    r = http(pub, head + body)
    if not r.startswith(b"HTTP/1.1 200") and not r.startswith(b"HTTP/1.0 200"):
        raise RuntimeError(f"publish failed: {r[:200]!r}")


def ws_open(sub, query):
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(30)
    s.connect(sub)
    s.sendall(
        (
            f"GET /bitrix/subws/?{query} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = s.recv(1)
        if not chunk:
            raise RuntimeError("handshake: closed")
        head += chunk
    if b" 101 " not in head.split(b"\r\n", 1)[0]:
        raise RuntimeError(f"handshake: {head!r}")
    return s


def reader(s, stop):
    """Reads and drops everything (the server's frames are unmasked; no parsing needed)."""
    s.settimeout(0.5)
    while not stop.is_set():
        try:
            if not s.recv(1 << 20):
                return
        except socket.timeout:
            continue
        except OSError:
            return


def light_traffic(pub, cid, seconds):
    for i in range(seconds):
        publish(pub, cid, b'{"tick":%d}' % i)
        time.sleep(1)


def main():
    binary = sys.argv[1]
    tmp = tempfile.mkdtemp(prefix="pmem-")
    sub, pub = os.path.join(tmp, "sub.sock"), os.path.join(tmp, "pub.sock")
    env = {
        "RUN_DIR": tmp,
        "SUB_SOCK": sub,
        "PUB_SOCK": pub,
        "SUB_LISTEN": "",
        "PUB_LISTEN": "",
        "SECURITY_KEY": KEY,
        "LOG_LEVEL": "warn",
        "STORE_MAX_BYTES": str(32 * MIB),
        "OUTBOX_LIMIT": str(16 * MIB),
    }
    proc = subprocess.Popen([binary], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    out = {"binary": binary}
    try:
        deadline = time.time() + 10
        while not (os.path.exists(sub) and os.path.exists(pub)):
            if time.time() > deadline or proc.poll() is not None:
                raise RuntimeError("server did not start")
            time.sleep(0.05)
        time.sleep(0.2)
        pid = proc.pid
        tick = "f" * 32
        out["start"] = rss(pid) / MIB

        # churn: ~200 MB through the store and both encodings, evicted by the 32 MiB cap.
        cid = "a" * 32
        stop = threading.Event()
        readers = []
        for q in ("", "&binaryMode=true"):
            s = ws_open(sub, f"CHANNEL_ID={signed(cid)}&revision=19{q}")
            t = threading.Thread(target=reader, args=(s, stop), daemon=True)
            t.start()
            readers.append((s, t))
        time.sleep(0.3)
        pad = b"x" * MB
        peak = 0
        for i in range(200):
            publish(pub, cid, b'{"i":%d,"pad":"' % i + pad + b'"}')
            peak = max(peak, rss(pid))
            time.sleep(0.01)
        out["churn_peak"] = peak / MIB
        stop.set()
        for s, t in readers:
            t.join()
            s.close()
        light_traffic(pub, tick, 10)
        out["churn_after_10s"] = rss(pid) / MIB

        # backlog: 10 non-reading clients resume 50 x 1 MB, then close.
        cid = "b" * 32
        for i in range(50):
            publish(pub, cid, b'{"j":%d,"pad":"' % i + pad + b'"}')
        out["backlog_stored"] = rss(pid) / MIB
        clients = [
            ws_open(sub, f"CHANNEL_ID={signed(cid)}&revision=19&mid=10000000000000000000000001")
            for _ in range(10)
        ]
        peak = 0
        for _ in range(30):
            peak = max(peak, rss(pid))
            time.sleep(0.1)
        out["backlog_peak"] = peak / MIB
        for c in clients:
            c.close()
        light_traffic(pub, tick, 10)
        out["backlog_after_10s"] = rss(pid) / MIB
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
    print(json.dumps({k: round(v, 1) if isinstance(v, float) else v for k, v in out.items()}))


if __name__ == "__main__":
    main()
