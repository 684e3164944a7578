//! Hostile clients: malformed HTTP and WebSocket input, protocol abuse (v3, v4) and resource
//! exhaustion. Every case attacks, asserts the documented answer (status, close code) or a
//! clean close, then proves the server still serves with a live round trip (a publish on
//! pub.sock to a fresh signed channel, received on sub.sock) and checks the server's RSS
//! against the bound the case states.
//!
//! Cases run in groups on a shared server (`run`): each case is reported by name, a failing
//! case does not stop the others of its group, and the group fails listing its failed cases.
//! Clients that never read use non-blocking or write-timeout sockets; every wait has a
//! deadline.

mod common;

use common::*;
use prost::Message as _;
use push_server::proto::{self, request, response};
use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
/// The default OUTBOX_LIMIT (README).
const OUTBOX: u64 = 4 * MIB;

// ---------------------------------------------------------------------------------------------
// helpers: servers, RSS, round trips

/// A hostile-suite server: quiet logs (a flood must not fill the harness's log buffer).
fn server() -> ServerBuilder {
    Server::builder().env("LOG_LEVEL", "warn")
}

fn embedded_store() -> bool {
    std::env::var("PUSH_TEST_STORE").as_deref() != Ok("redis")
}

/// The server's resident set size in bytes (VmRSS of /proc/<pid>/status).
fn rss(s: &Server) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", s.pid()))
        .unwrap_or_else(|e| panic!("server process gone (read /proc/{}/status: {e})", s.pid()));
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .expect("VmRSS line");
    let kb: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .expect("VmRSS value");
    kb * 1024
}

/// The server process still exists (a zombie counts as gone).
fn alive(s: &Server) -> bool {
    std::fs::read_to_string(format!("/proc/{}/status", s.pid())).is_ok_and(|st| {
        !st.lines()
            .any(|l| l.starts_with("State:") && l.contains('Z'))
    })
}

fn assert_rss(s: &Server, base: u64, bound: u64, what: &str) {
    let now = rss(s);
    assert!(
        now <= base + bound,
        "{what}: RSS grew by {} KiB (from {} KiB to {} KiB), bound {} KiB",
        now.saturating_sub(base) / KIB,
        base / KIB,
        now / KIB,
        bound / KIB
    );
}

/// Samples RSS every 20 ms for `period` and returns the largest value.
fn max_rss_over(s: &Server, period: Duration) -> u64 {
    let end = Instant::now() + period;
    let mut max = rss(s);
    while Instant::now() < end {
        thread::sleep(Duration::from_millis(20));
        max = max.max(rss(s));
    }
    max
}

fn cid(id: &str) -> String {
    format!("CHANNEL_ID={}", enc(&signed(id)))
}

fn v4q(item: &str) -> String {
    format!("CHANNEL_ID={}&binaryMode=true&revision=19", enc(item))
}

/// The live round trip every case ends with: a long poll on a fresh signed channel gets the
/// message published on pub.sock.
fn round_trip(s: &Server) {
    let ch = new_id();
    let mut lp = s.lp_begin(&cid(&ch));
    s.wait_online(&ch);
    let body = format!("\"rt-{ch}\"");
    s.publish_ok(&ch, &body, None);
    let r = lp
        .try_read_response()
        .unwrap_or_else(|e| panic!("round trip: long poll not answered: {e}"));
    assert_eq!(r.status, 200, "round trip: {:?}", r.body_str());
    assert_eq!(r.frames()[0].text, body, "round trip");
}

/// The same over WebSocket.
fn round_trip_ws(s: &Server) {
    let ch = new_id();
    let mut ws = s.ws(&cid(&ch));
    let body = format!("\"rtws-{ch}\"");
    s.publish_ok(&ch, &body, None);
    assert_eq!(ws.frames(1, WAIT)[0].text, body, "WebSocket round trip");
}

/// Publishes a marker to `ch` and asserts it is the next thing `watcher` gets: whatever was
/// refused before it published nothing.
fn assert_nothing_published(s: &Server, watcher: &mut Ws, ch: &str) {
    let marker = format!("\"marker-{}\"", new_id());
    s.publish_ok(ch, &marker, None);
    let f = watcher.frames(1, WAIT);
    assert_eq!(
        f[0].text, marker,
        "a refused request published something to {ch}"
    );
}

type CaseFn = fn(&Server);

/// One case: name, the RSS growth it may cause (bytes, checked after its round trip), body.
struct Case(&'static str, u64, CaseFn);

/// Runs the cases in order on `s`: each attack, then a round trip and the RSS check. Reports
/// every case by name; fails at the end listing the failed ones.
fn run(s: &Server, cases: &[Case]) {
    let mut failed = Vec::new();
    for Case(name, bound, f) in cases {
        let t0 = Instant::now();
        let base = rss(s);
        let r = catch_unwind(AssertUnwindSafe(|| {
            f(s);
            round_trip(s);
            assert_rss(s, base, *bound, name);
        }));
        match r {
            Ok(()) => eprintln!("case {name}: ok ({:?})", t0.elapsed()),
            Err(e) => {
                let msg = e
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                let state = if alive(s) {
                    ""
                } else {
                    " [server process gone]"
                };
                eprintln!("case {name}: FAIL ({:?}){state}: {msg}", t0.elapsed());
                failed.push(*name);
            }
        }
    }
    assert!(failed.is_empty(), "failed cases: {failed:?}");
}

/// Sends `raw` on a fresh connection from a writer thread (the server may stop reading), and
/// reads one response; `Err` when the connection ends without one.
fn send_and_read(sock: &Path, raw: Vec<u8>) -> io::Result<Response> {
    let mut c = Conn::open(sock);
    c.set_timeout(WAIT);
    let mut w = c.stream.try_clone()?;
    w.set_write_timeout(Some(Duration::from_secs(3)))?;
    let writer = thread::spawn(move || {
        let _ = w.write_all(&raw);
    });
    let r = c.try_read_response();
    let _ = writer.join();
    r
}

/// Writes `chunk` repeatedly on a non-blocking socket until `total` bytes went in or `limit`
/// passed (the server stopped reading); returns the bytes written.
fn flood(stream: &UnixStream, chunk: &[u8], total: usize, limit: Duration) -> usize {
    stream.set_nonblocking(true).expect("nonblocking");
    let end = Instant::now() + limit;
    let mut sent = 0usize;
    let mut off = 0usize;
    let mut w = stream;
    while sent < total && Instant::now() < end {
        match w.write(&chunk[off..]) {
            Ok(n) => {
                sent += n;
                off = (off + n) % chunk.len();
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                thread::sleep(Duration::from_millis(2));
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    sent
}

// ---------------------------------------------------------------------------------------------
// helpers: raw WebSocket client

/// A client frame: `first` is FIN/RSV/opcode, masked with a fixed key.
fn masked(first: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = masked_header(first, payload.len() as u64);
    let mask = [0x37u8, 0xfa, 0x21, 0x3d];
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
    f
}

/// A masked frame header declaring `len` payload bytes (the payload not included).
fn masked_header(first: u8, len: u64) -> Vec<u8> {
    let mut f = vec![first];
    match len {
        n if n < 126 => f.push(0x80 | n as u8),
        n if n <= 0xFFFF => {
            f.push(0x80 | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(0x80 | 127);
            f.extend_from_slice(&n.to_be_bytes());
        }
    }
    f.extend_from_slice(&[0x37, 0xfa, 0x21, 0x3d]);
    f
}

fn close_payload(code: u16, reason: &str) -> Vec<u8> {
    let mut p = code.to_be_bytes().to_vec();
    p.extend_from_slice(reason.as_bytes());
    p
}

/// A WebSocket client on a raw socket: sends arbitrary bytes, parses server frames itself
/// (and never answers pings unless told to).
struct RawWs {
    s: UnixStream,
    buf: Vec<u8>,
}

#[derive(Debug)]
enum Got {
    Frame(u8, Vec<u8>),
    Eof,
    Timeout,
}

impl RawWs {
    fn connect(sock: &Path, path_and_query: &str) -> RawWs {
        Self::connect_with(sock, path_and_query, &[])
    }

    /// Handshake; `extra` is written right after the request in the same write.
    fn connect_with(sock: &Path, path_and_query: &str, extra: &[u8]) -> RawWs {
        let mut s = UnixStream::connect(sock).expect("connect sub.sock");
        let mut req = format!(
            "GET {path_and_query} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        .into_bytes();
        req.extend_from_slice(extra);
        s.write_all(&req).expect("write handshake");
        s.set_read_timeout(Some(WAIT)).expect("timeout");
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let end = loop {
            if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break p + 4;
            }
            let n = s.read(&mut chunk).expect("read handshake answer");
            assert!(n > 0, "EOF before the handshake answer");
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        assert!(
            head.starts_with("HTTP/1.1 101"),
            "expected 101 for {path_and_query}, got {head:?}"
        );
        buf.drain(..end);
        RawWs { s, buf }
    }

    fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.s.write_all(bytes)
    }

    fn fill(&mut self, want: usize, deadline: Instant) -> io::Result<bool> {
        while self.buf.len() < want {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::ErrorKind::TimedOut.into());
            }
            self.s.set_read_timeout(Some(left))?;
            let old = self.buf.len();
            let grow = (want - old).clamp(65536, 4 << 20);
            self.buf.resize(old + grow, 0);
            let r = self.s.read(&mut self.buf[old..]);
            match r {
                Ok(0) => {
                    self.buf.truncate(old);
                    return Ok(false);
                }
                Ok(n) => self.buf.truncate(old + n),
                Err(e) => {
                    self.buf.truncate(old);
                    match e.kind() {
                        io::ErrorKind::Interrupted => {}
                        io::ErrorKind::ConnectionReset => return Ok(false),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
                            return Err(io::ErrorKind::TimedOut.into());
                        }
                        _ => return Err(e),
                    }
                }
            }
        }
        Ok(true)
    }

    /// Next server frame (opcode, payload), EOF, or nothing within `timeout`.
    fn next(&mut self, timeout: Duration) -> Got {
        let deadline = Instant::now() + timeout;
        let step = |me: &mut RawWs, n| match me.fill(n, deadline) {
            Ok(true) => Ok(()),
            Ok(false) => Err(Got::Eof),
            Err(_) => Err(Got::Timeout),
        };
        if let Err(g) = step(self, 2) {
            return g;
        }
        let (len, hdr) = match self.buf[1] & 0x7F {
            126 => {
                if let Err(g) = step(self, 4) {
                    return g;
                }
                (u16::from_be_bytes([self.buf[2], self.buf[3]]) as usize, 4)
            }
            127 => {
                if let Err(g) = step(self, 10) {
                    return g;
                }
                let b: [u8; 8] = self.buf[2..10].try_into().expect("8 bytes");
                (u64::from_be_bytes(b) as usize, 10)
            }
            n => (n as usize, 2),
        };
        assert_eq!(self.buf[1] & 0x80, 0, "server frames are never masked");
        if let Err(g) = step(self, hdr + len) {
            return g;
        }
        let op = self.buf[0] & 0x0F;
        let payload = self.buf[hdr..hdr + len].to_vec();
        self.buf.drain(..hdr + len);
        Got::Frame(op, payload)
    }

    /// Reads until a close frame; data frames and pings are collected, not answered.
    /// `Err` names what came instead (EOF without a close frame, or silence).
    fn close_code(&mut self, timeout: Duration) -> Result<(u16, Vec<Vec<u8>>), String> {
        let deadline = Instant::now() + timeout;
        let mut data = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next(left) {
                Got::Frame(0x8, p) => {
                    let code = if p.len() >= 2 {
                        u16::from_be_bytes([p[0], p[1]])
                    } else {
                        1005
                    };
                    return Ok((code, data));
                }
                Got::Frame(0x1 | 0x2, p) => data.push(p),
                Got::Frame(..) => {}
                Got::Eof => {
                    return Err(format!(
                        "EOF without a close frame (after {} data frames)",
                        data.len()
                    ));
                }
                Got::Timeout => return Err(format!("no close frame within {timeout:?}")),
            }
        }
    }

    /// Next data frame, skipping pings (answered with a pong when `pong`).
    fn data(&mut self, timeout: Duration) -> Vec<u8> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next(left) {
                Got::Frame(0x1 | 0x2, p) => return p,
                Got::Frame(0x9, p) => {
                    let _ = self.send(&masked(0x8A, &p));
                }
                Got::Frame(0xA, _) => {}
                other => panic!("expected a data frame, got {other:?}"),
            }
        }
    }

    /// Asserts a close frame with one of `codes` arrives before EOF.
    fn expect_close_in(&mut self, codes: &[u16], what: &str) {
        match self.close_code(WAIT) {
            Ok((c, _)) => assert!(codes.contains(&c), "{what}: close code {c}, want {codes:?}"),
            Err(e) => panic!("{what}: {e}"),
        }
    }
}

/// `(mid, text)` of every v3 frame of a payload, without the JSON checks of `parse_frames`
/// (fast enough for megabytes in a debug build).
fn fast_frames(payload: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut rest = payload;
    while !rest.is_empty() {
        assert!(
            rest.starts_with(NMS.as_bytes()),
            "expected a v3 frame at {:?}",
            String::from_utf8_lossy(&rest[..rest.len().min(80)])
        );
        let body = &rest[NMS.len()..];
        let end = find(body, NME.as_bytes()).expect("frame end");
        let obj = &body[..end];
        let m = find(obj, b"\"mid\":\"").expect("mid") + 7;
        let mid = String::from_utf8_lossy(&obj[m..m + 26]).into_owned();
        let t = find(obj, b",\"text\":").expect("text") + 8;
        out.push((mid, obj[t..obj.len() - 1].to_vec()));
        rest = &body[end + NME.len()..];
    }
    out
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The numbered bodies `"<tag>-<n>-<filler>"` a flood test publishes; returns n.
fn body_index(text: &[u8], tag: &str) -> Option<usize> {
    let t = std::str::from_utf8(text).ok()?;
    let rest = t.strip_prefix('"')?.strip_prefix(tag)?.strip_prefix('-')?;
    rest.split('-').next()?.parse().ok()
}

fn numbered(tag: &str, i: usize, size: usize) -> String {
    let head = format!("\"{tag}-{i}-");
    let fill = size.saturating_sub(head.len() + 1);
    format!("{head}{}\"", "x".repeat(fill))
}

/// Sends a publish (`Message-Expiry: 3600`) and checks the 200.
fn publish_kept(s: &Server, ch: &str, body: &str) {
    let r = s.pub_request(&publish_request(ch, body.as_bytes(), Some(3600)));
    assert_eq!(r.status, 200, "publish: {:?}", r.body_str());
}

/// The mid of a fresh marker message on `ch` (seen by a WebSocket subscriber).
fn marker_mid(s: &Server, ch: &str) -> String {
    let mut ws = s.ws(&cid(ch));
    let m = format!("\"mark-{}\"", new_id());
    publish_kept(s, ch, &m);
    let f = ws.frames(1, WAIT).remove(0);
    assert_eq!(f.text, m);
    f.mid
}

fn metric(s: &Server, name: &str) -> Option<f64> {
    let r = s.pub_request(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert_eq!(r.status, 200, "GET /metrics");
    r.body_str()
        .lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| l.split_whitespace().next() == Some(name))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

// ---- v4 protobuf builders

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

fn trusted(id: &str) -> proto::Receiver {
    proto::Receiver {
        id: unhex(id),
        is_private: true,
        signature: Vec::new(),
    }
}

fn public(id: &str) -> proto::Receiver {
    proto::Receiver {
        id: unhex(id),
        is_private: false,
        signature: unhex(&sign(&format!("public:{id}"))),
    }
}

fn incoming(receivers: Vec<proto::Receiver>, body: &[u8]) -> proto::IncomingMessage {
    proto::IncomingMessage {
        receivers,
        sender: None,
        body: body.to_vec(),
        expiry: 0,
        r#type: b"hostile".to_vec(),
    }
}

fn batch(commands: Vec<request::Command>) -> Vec<u8> {
    proto::RequestBatch {
        requests: commands
            .into_iter()
            .map(|c| proto::Request { command: Some(c) })
            .collect(),
    }
    .encode_to_vec()
}

fn messages(msgs: Vec<proto::IncomingMessage>) -> request::Command {
    request::Command::IncomingMessages(proto::IncomingMessagesRequest { messages: msgs })
}

fn one(receivers: Vec<proto::Receiver>, body: &[u8]) -> Vec<u8> {
    batch(vec![messages(vec![incoming(receivers, body)])])
}

fn binary_request(path_and_query: &str, body: &[u8]) -> Vec<u8> {
    let mut raw = format!(
        "POST {path_and_query} HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    raw.extend_from_slice(body);
    raw
}

fn pub_bin(s: &Server, body: &[u8]) -> Response {
    s.pub_request(&binary_request("/bitrix/pub/?binaryMode=true", body))
}

/// Bodies of the outgoing messages of a v4 WebSocket message.
fn v4_bodies(bytes: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
    let b = proto::ResponseBatch::decode(bytes).expect("a ResponseBatch");
    let mut out = Vec::new();
    for r in b.responses {
        if let Some(response::Command::OutgoingMessages(m)) = r.command {
            out.extend(m.messages.into_iter().map(|m| (m.id, m.body)));
        }
    }
    out
}

// =============================================================================================
// HTTP: malformed requests on the default server

/// A watcher WebSocket on a fresh channel, for "nothing was published" checks.
fn watched(s: &Server) -> (String, Ws) {
    let ch = new_id();
    let ws = s.ws(&cid(&ch));
    (ch, ws)
}

/// Refused publish: `head` (with `{ch}` replaced) + body "hello"; `status` expected; the
/// watcher on ch sees nothing.
fn refused_publish(s: &Server, head: &str, status: u16) {
    let (ch, mut w) = watched(s);
    let raw = format!("{}\"hello\"", head.replace("{ch}", &ch));
    let r = send_and_read(&s.pubs, raw.into_bytes())
        .unwrap_or_else(|e| panic!("no answer to {head:?}: {e}"));
    assert_eq!(r.status, status, "{head:?}: {:?}", r.body_str());
    assert_nothing_published(s, &mut w, &ch);
}

fn sub_status(s: &Server, raw: &[u8], want: &[u16]) -> Response {
    let r = send_and_read(&s.sub, raw.to_vec())
        .unwrap_or_else(|e| panic!("no answer to {:?}: {e}", String::from_utf8_lossy(raw)));
    assert!(
        want.contains(&r.status),
        "{:?}: status {} (want {want:?}) {:?}",
        String::from_utf8_lossy(&raw[..raw.len().min(100)]),
        r.status,
        r.body_str()
    );
    r
}

/// Garbage request line → 400. RSS bound: +4 MiB.
fn garbage_request_line(s: &Server) {
    sub_status(s, b"GARBAGE\r\n\r\n", &[400]);
    sub_status(
        s,
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",
        &[400],
    );
}

/// NUL bytes in the request line and in a header value → 400. RSS bound: +4 MiB.
fn nul_bytes(s: &Server) {
    sub_status(
        s,
        b"GET /bitrix/sub/?CHANNEL_ID=\0 HTTP/1.1\r\n\r\n",
        &[400],
    );
    sub_status(s, b"GET / HTTP/1.1\r\nX-A: a\0b\r\n\r\n", &[400]);
    refused_publish(
        s,
        "POST /bitrix/pub/?CHANNEL_ID={ch}\0 HTTP/1.1\r\nContent-Length: 7\r\n\r\n",
        400,
    );
}

/// A 9000-byte header value (head over MAX_HEADER_SIZE) → 431. RSS bound: +4 MiB.
fn huge_header_value(s: &Server) {
    let raw = format!("GET / HTTP/1.1\r\nX-Big: {}\r\n\r\n", "v".repeat(9000));
    sub_status(s, raw.as_bytes(), &[431]);
}

/// obs-fold (a header continued on the next line) → 400, nothing published. RSS bound: +4 MiB.
fn obs_fold(s: &Server) {
    refused_publish(
        s,
        "POST /bitrix/pub/?CHANNEL_ID={ch} HTTP/1.1\r\nX-A: a\r\n  folded\r\nContent-Length: 7\r\n\r\n",
        400,
    );
}

/// A header line without a colon → 400. RSS bound: +4 MiB.
fn header_without_colon(s: &Server) {
    sub_status(s, b"GET / HTTP/1.1\r\nNoColonHere\r\n\r\n", &[400]);
}

/// Two different Content-Lengths → 400, nothing published. RSS bound: +4 MiB.
fn conflicting_content_length(s: &Server) {
    refused_publish(
        s,
        "POST /bitrix/pub/?CHANNEL_ID={ch} HTTP/1.1\r\nContent-Length: 7\r\nContent-Length: 3\r\n\r\n",
        400,
    );
}

/// A comma list `Content-Length: 7, 7` → 400, nothing published. RSS bound: +4 MiB.
fn content_length_list(s: &Server) {
    refused_publish(
        s,
        "POST /bitrix/pub/?CHANNEL_ID={ch} HTTP/1.1\r\nContent-Length: 7, 7\r\n\r\n",
        400,
    );
}

/// `Content-Length: +7` → 400, nothing published (reproduction 7). RSS bound: +4 MiB.
fn content_length_plus(s: &Server) {
    refused_publish(
        s,
        "POST /bitrix/pub/?CHANNEL_ID={ch} HTTP/1.1\r\nContent-Length: +7\r\n\r\n",
        400,
    );
}

/// `Content-Length: -1` → 400, nothing published (reproduction 7). RSS bound: +4 MiB.
fn content_length_minus(s: &Server) {
    refused_publish(
        s,
        "POST /bitrix/pub/?CHANNEL_ID={ch} HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
        400,
    );
}

/// `Content-Length: 7 7` → 400, nothing published (reproduction 7). RSS bound: +4 MiB.
fn content_length_two_numbers(s: &Server) {
    refused_publish(
        s,
        "POST /bitrix/pub/?CHANNEL_ID={ch} HTTP/1.1\r\nContent-Length: 7 7\r\n\r\n",
        400,
    );
}

/// `Content-Length: 0x7` → 400, nothing published (reproduction 7). RSS bound: +4 MiB.
fn content_length_hex(s: &Server) {
    refused_publish(
        s,
        "POST /bitrix/pub/?CHANNEL_ID={ch} HTTP/1.1\r\nContent-Length: 0x7\r\n\r\n",
        400,
    );
}

/// `Content-Length:` (empty) → 400, nothing published (reproduction 7). RSS bound: +4 MiB.
fn content_length_empty(s: &Server) {
    refused_publish(
        s,
        "POST /bitrix/pub/?CHANNEL_ID={ch} HTTP/1.1\r\nContent-Length:\r\n\r\n",
        400,
    );
}

/// Content-Length over usize (2^64) → 400 or 413, nothing published. RSS bound: +4 MiB.
fn content_length_overflow(s: &Server) {
    let (ch, mut w) = watched(s);
    let raw = format!(
        "POST /bitrix/pub/?CHANNEL_ID={ch} HTTP/1.1\r\nContent-Length: 18446744073709551616\r\n\r\n\"hello\""
    );
    let r = send_and_read(&s.pubs, raw.into_bytes()).expect("an answer");
    assert!(r.status == 400 || r.status == 413, "status {}", r.status);
    assert_nothing_published(s, &mut w, &ch);
}

/// `Transfer-Encoding: chunked` → 400, nothing published. RSS bound: +4 MiB.
fn transfer_encoding_chunked(s: &Server) {
    refused_publish(
        s,
        "POST /bitrix/pub/?CHANNEL_ID={ch} HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n7\r\n",
        400,
    );
}

/// `Transfer-Encoding` together with `Content-Length` (smuggling) → 400, nothing published. RSS bound: +4 MiB.
fn transfer_encoding_with_length(s: &Server) {
    refused_publish(
        s,
        "POST /bitrix/pub/?CHANNEL_ID={ch} HTTP/1.1\r\nContent-Length: 7\r\nTransfer-Encoding: identity\r\n\r\n",
        400,
    );
}

/// HTTP/0.9 request line (no version) → 400 or a clean close, never a hang. RSS bound: +4 MiB.
fn http09(s: &Server) {
    let mut c = s.sub_conn();
    c.send(b"GET /\r\n\r\n");
    let rest = c.read_to_end().expect("closed within 15 s");
    let text = String::from_utf8_lossy(&rest);
    assert!(
        rest.is_empty() || text.starts_with("HTTP/1.1 400") || text.starts_with("HTTP/1.0 400"),
        "HTTP/0.9: {text:?}"
    );
}

/// Unknown HTTP versions (HTTP/1.2, HTTP/2.0, HTTP/9) → 400. RSS bound: +4 MiB.
fn bad_versions(s: &Server) {
    for v in ["HTTP/1.2", "HTTP/2.0", "HTTP/9", "HTTX/1.1"] {
        sub_status(s, format!("GET / {v}\r\n\r\n").as_bytes(), &[400]);
    }
}

/// Absurd methods (unknown token, 4 KB method) → 404/405/400 on both sockets, nothing published. RSS bound: +4 MiB.
fn absurd_methods(s: &Server) {
    sub_status(s, b"BREW /bitrix/sub/ HTTP/1.1\r\n\r\n", &[400, 404, 405]);
    let long = format!("{} / HTTP/1.1\r\n\r\n", "M".repeat(4000));
    sub_status(s, long.as_bytes(), &[400, 404, 405]);
    let (ch, mut w) = watched(s);
    for m in ["PUT", "DELETE", "PATCH", "PUBLISH"] {
        let raw = format!(
            "{m} /bitrix/pub/?CHANNEL_ID={ch} HTTP/1.1\r\nContent-Length: 7\r\n\r\n\"hello\""
        );
        let r = send_and_read(&s.pubs, raw.into_bytes()).expect("answer");
        assert!([400, 404, 405].contains(&r.status), "{m}: {}", r.status);
    }
    assert_nothing_published(s, &mut w, &ch);
}

/// LF-only line ends → 400 or 408 (HEADER_TIMEOUT), never served or held forever. RSS bound: +4 MiB.
fn lf_only_head(s: &Server) {
    let mut c = s.sub_conn();
    c.set_timeout(Duration::from_secs(14));
    c.send(b"GET /bitrix/sub/ HTTP/1.1\nHost: x\n\n");
    let rest = c.read_to_end().expect("closed within 14 s");
    let text = String::from_utf8_lossy(&rest);
    assert!(
        rest.is_empty() || text.contains(" 400 ") || text.contains(" 408 "),
        "LF-only head: {text:?}"
    );
}

/// Invalid percent-encoding in CHANNEL_ID (long poll) → 400 4010. RSS bound: +4 MiB.
fn bad_percent_encoding(s: &Server) {
    for q in [
        "CHANNEL_ID=%zz%",
        "CHANNEL_ID=%",
        "CHANNEL_ID=%E2%82",
        "CHANNEL_ID=%00",
    ] {
        let r = sub_status(
            s,
            format!("GET /bitrix/sub/?{q} HTTP/1.0\r\n\r\n").as_bytes(),
            &[400],
        );
        assert_eq!(r.body_str(), "4010: Wrong Channel Id.", "{q}");
    }
}

/// A query of 8000 bytes (just under MAX_HEADER_SIZE) of junk → 400 4010. RSS bound: +4 MiB.
fn overlong_query(s: &Server) {
    let q = format!("CHANNEL_ID={}", "%41".repeat(2600));
    let r = sub_status(
        s,
        format!("GET /bitrix/sub/?{q} HTTP/1.0\r\n\r\n").as_bytes(),
        &[400],
    );
    assert_eq!(r.body_str(), "4010: Wrong Channel Id.");
}

/// 2000 pipelined keep-alive OPTIONS on one connection, all read → 2000 × 200. RSS bound: +8 MiB.
fn keep_alive_abuse(s: &Server) {
    let mut c = s.sub_conn();
    let mut w = c.stream.try_clone().expect("clone");
    let writer = thread::spawn(move || {
        let raw = b"OPTIONS /bitrix/sub/ HTTP/1.1\r\nHost: x\r\n\r\n".repeat(2000);
        let _ = w.write_all(&raw);
    });
    for i in 0..2000 {
        let r = c
            .try_read_response()
            .unwrap_or_else(|e| panic!("answer {i} of 2000: {e}"));
        assert_eq!(r.status, 200);
    }
    writer.join().expect("writer");
}

/// Requests after `Connection: close` on the same connection are not answered; the first is. RSS bound: +4 MiB.
fn pipelined_after_close(s: &Server) {
    let mut c = s.sub_conn();
    c.send(b"OPTIONS /bitrix/sub/ HTTP/1.1\r\nConnection: close\r\n\r\nOPTIONS /bitrix/sub/ HTTP/1.1\r\n\r\n");
    assert_eq!(c.read_response().status, 200);
    let rest = c.read_to_end().expect("closed");
    assert!(
        rest.is_empty(),
        "answered after Connection: close: {rest:?}"
    );
}

/// Half-close: a publish then shutdown(Write) is still answered 200 and delivered; a long poll
/// that half-closes is dropped cleanly. RSS bound: +4 MiB.
fn half_close(s: &Server) {
    let (ch, mut w) = watched(s);
    let mut c = s.pub_conn();
    c.send(&publish_request(&ch, b"\"half\"", None));
    c.stream
        .shutdown(std::net::Shutdown::Write)
        .expect("shutdown");
    assert_eq!(c.read_response().status, 200);
    assert_eq!(w.frames(1, WAIT)[0].text, "\"half\"");
    let mut lp = s.lp_begin(&cid(&new_id()));
    lp.stream
        .shutdown(std::net::Shutdown::Write)
        .expect("shutdown");
    assert!(lp.closed_within(WAIT), "a half-closed long poll is dropped");
}

/// 2000 connect-and-close on each socket (some with half a request) → nothing leaks. RSS bound: +8 MiB.
fn connect_close_storm(s: &Server) {
    for i in 0..2000 {
        for sock in [&s.sub, &s.pubs] {
            let mut c = UnixStream::connect(sock).expect("connect");
            if i % 3 == 0 {
                let _ = c.write_all(b"POST /bitrix/pub/?CHANNEL_ID=ab HTTP/1.1\r\nContent-Len");
            } else if i % 3 == 1 {
                let _ = c.write_all(b"GET /bitrix/sub/?CHANNEL_ID=x HTTP/1.0\r\n\r\n");
            }
        }
    }
}

/// 500 long polls opened and dropped before any answer, then 500 WebSockets dropped without
/// a close frame → the server forgets them (online query shows none). RSS bound: +8 MiB.
fn subscribe_and_vanish(s: &Server) {
    let count = |k: &str| s.server_stat()[0][k].as_u64().expect("count");
    let (ws0, lp0) = (count("websockets"), count("pollings"));
    let ch = new_id();
    for _ in 0..500 {
        let mut c = s.sub_conn();
        c.send(&lp_request("/bitrix/sub/", &cid(&ch)));
    }
    let ws: Vec<RawWs> = (0..500)
        .map(|_| RawWs::connect(&s.sub, &format!("/bitrix/subws/?{}", cid(&ch))))
        .collect();
    assert!(count("websockets") >= ws0 + 500);
    drop(ws);
    let gone = wait_until(WAIT, || {
        count("websockets") <= ws0 && count("pollings") <= lp0
    });
    assert!(
        gone,
        "vanished subscribers still counted: {} websockets, {} long polls",
        count("websockets"),
        count("pollings")
    );
}

/// Body shorter than Content-Length then idle → 408 within HEADER_TIMEOUT=1, nothing published. RSS bound: +4 MiB.
fn short_body_then_idle(s: &Server) {
    let (ch, mut w) = watched(s);
    let mut c = s.pub_conn();
    c.send(
        format!(
            "POST /bitrix/pub/?CHANNEL_ID={ch} HTTP/1.1\r\nContent-Length: 100\r\n\r\n\"short\""
        )
        .as_bytes(),
    );
    let t0 = Instant::now();
    let r = c.try_read_response().expect("a 408");
    assert_eq!(r.status, 408, "{:?}", r.body_str());
    assert!(
        t0.elapsed() < Duration::from_secs(4),
        "408 after {:?}",
        t0.elapsed()
    );
    assert_nothing_published(s, &mut w, &ch);
}

/// Slowloris: a head one byte every 100 ms → 408/close within HEADER_TIMEOUT=1 (+2 s). RSS bound: +4 MiB.
fn slowloris(s: &Server) {
    let mut c = s.sub_conn();
    let t0 = Instant::now();
    let head = b"GET /bitrix/sub/?CHANNEL_ID=abcdef HTTP/1.1\r\nHost: x\r\nX-A: b\r\n\r\n";
    let mut closed = false;
    for &b in head.iter() {
        if c.try_send(&[b]).is_err() {
            closed = true;
            break;
        }
        thread::sleep(Duration::from_millis(100));
        if t0.elapsed() > Duration::from_secs(3) {
            break;
        }
    }
    let rest = c.read_to_end().unwrap_or_default();
    let text = String::from_utf8_lossy(&rest);
    assert!(
        closed || rest.is_empty() || text.contains(" 408 "),
        "slowloris answer {text:?}"
    );
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "cut after {:?}",
        t0.elapsed()
    );
}

/// An idle WebSocket handshake head never finished → closed within HEADER_TIMEOUT=1. RSS bound: +4 MiB.
fn unfinished_upgrade(s: &Server) {
    let mut c = s.sub_conn();
    c.send(b"GET /bitrix/subws/?CHANNEL_ID=x HTTP/1.1\r\nUpgrade: websocket\r\n");
    assert!(c.closed_within(Duration::from_secs(4)), "not cut");
}

#[test]
fn http_malformed() {
    let s = server().start();
    run(
        &s,
        &[
            Case("garbage_request_line", 4 * MIB, garbage_request_line),
            Case("nul_bytes", 4 * MIB, nul_bytes),
            Case("huge_header_value", 4 * MIB, huge_header_value),
            Case("obs_fold", 4 * MIB, obs_fold),
            Case("header_without_colon", 4 * MIB, header_without_colon),
            Case(
                "conflicting_content_length",
                4 * MIB,
                conflicting_content_length,
            ),
            Case("content_length_list", 4 * MIB, content_length_list),
            Case("content_length_plus", 4 * MIB, content_length_plus),
            Case("content_length_minus", 4 * MIB, content_length_minus),
            Case(
                "content_length_two_numbers",
                4 * MIB,
                content_length_two_numbers,
            ),
            Case("content_length_hex", 4 * MIB, content_length_hex),
            Case("content_length_empty", 4 * MIB, content_length_empty),
            Case("content_length_overflow", 4 * MIB, content_length_overflow),
            Case(
                "transfer_encoding_chunked",
                4 * MIB,
                transfer_encoding_chunked,
            ),
            Case(
                "transfer_encoding_with_length",
                4 * MIB,
                transfer_encoding_with_length,
            ),
            Case("http09", 4 * MIB, http09),
            Case("bad_versions", 4 * MIB, bad_versions),
            Case("absurd_methods", 4 * MIB, absurd_methods),
            Case("bad_percent_encoding", 4 * MIB, bad_percent_encoding),
            Case("overlong_query", 4 * MIB, overlong_query),
            Case("keep_alive_abuse", 8 * MIB, keep_alive_abuse),
            Case("pipelined_after_close", 4 * MIB, pipelined_after_close),
            Case("half_close", 4 * MIB, half_close),
            Case("connect_close_storm", 8 * MIB, connect_close_storm),
            Case("subscribe_and_vanish", 8 * MIB, subscribe_and_vanish),
        ],
    );
}

#[test]
fn http_timeouts() {
    let s = server().env("HEADER_TIMEOUT", "1").start();
    run(
        &s,
        &[
            Case("short_body_then_idle", 4 * MIB, short_body_then_idle),
            Case("slowloris", 4 * MIB, slowloris),
            Case("unfinished_upgrade", 4 * MIB, unfinished_upgrade),
            Case("lf_only_head", 4 * MIB, lf_only_head),
        ],
    );
}

// ---- heads of 64 KiB or more in one write (reproduction 6): a readable 431, not a reset

fn big_head_431(s: &Server, raw: Vec<u8>, what: &str) {
    let r = send_and_read(&s.sub, raw)
        .unwrap_or_else(|e| panic!("{what}: no readable 431 before the connection ended: {e}"));
    assert_eq!(r.status, 431, "{what}");
}

/// 10 000 headers (~100 KB) in one write → 431 readable before EOF. RSS bound: +4 MiB.
fn head_10k_headers(s: &Server) {
    let mut raw = b"GET /bitrix/sub/ HTTP/1.1\r\n".to_vec();
    for i in 0..10_000 {
        raw.extend_from_slice(format!("X-H{i}: v\r\n").as_bytes());
    }
    raw.extend_from_slice(b"\r\n");
    big_head_431(s, raw, "10k headers");
}

/// A 64 KiB URL → 431 readable before EOF. RSS bound: +4 MiB.
fn head_64k_url(s: &Server) {
    let raw = format!("GET /bitrix/sub/?x={} HTTP/1.1\r\n\r\n", "a".repeat(65536));
    big_head_431(s, raw.into_bytes(), "64 KiB URL");
}

/// 10 000 signed channel ids in CHANNEL_ID (~750 KB) → 431 readable before EOF. RSS bound: +8 MiB.
fn head_10k_channel_ids(s: &Server) {
    let one = enc(&signed(&new_id()));
    let list = vec![one; 10_000].join("%2F");
    let raw = format!("GET /bitrix/sub/?CHANNEL_ID={list} HTTP/1.1\r\n\r\n");
    big_head_431(s, raw.into_bytes(), "10k channel ids");
}

/// The same 64 KiB URL on pub.sock as a publish → 431, nothing published. RSS bound: +4 MiB.
fn head_64k_publish(s: &Server) {
    let (ch, mut w) = watched(s);
    let raw = format!(
        "POST /bitrix/pub/?CHANNEL_ID={ch}&x={} HTTP/1.1\r\nContent-Length: 7\r\n\r\n\"hello\"",
        "a".repeat(65536)
    );
    let r =
        send_and_read(&s.pubs, raw.into_bytes()).unwrap_or_else(|e| panic!("no readable 431: {e}"));
    assert_eq!(r.status, 431);
    assert_nothing_published(s, &mut w, &ch);
}

#[test]
fn http_big_heads() {
    let s = server().start();
    run(
        &s,
        &[
            Case("head_10k_headers", 4 * MIB, head_10k_headers),
            Case("head_64k_url", 4 * MIB, head_64k_url),
            Case("head_10k_channel_ids", 8 * MIB, head_10k_channel_ids),
            Case("head_64k_publish", 4 * MIB, head_64k_publish),
        ],
    );
}

// ---- pipelining floods

/// Reproduction 1: a long poll on X, then 20 000 pipelined online queries for X in one write
/// (read concurrently): no crash, 20 000 answers, the long poll survives. Bound: 32 MiB.
#[test]
fn online_query_pipeline_20k() {
    let s = server().start();
    let base = rss(&s);
    let x = new_id();
    let mut lp = s.lp_begin(&cid(&x));
    s.wait_online(&x);
    let mut c = s.pub_conn();
    c.set_timeout(Duration::from_secs(10));
    let mut w = c.stream.try_clone().expect("clone");
    let raw = format!("GET /bitrix/pub/?CHANNEL_ID={x} HTTP/1.1\r\n\r\n").repeat(20_000);
    let writer = thread::spawn(move || w.write_all(raw.as_bytes()).is_ok());
    let mut n = 0usize;
    let mut last = None;
    while n < 20_000 {
        match c.try_read_response() {
            Ok(r) => {
                assert_eq!(r.status, 200, "answer {n}: {:?}", r.body_str());
                n += 1;
                last = Some(r);
            }
            Err(e) => panic!(
                "only {n} of 20000 answers: {e} (server process {})",
                if alive(&s) { "still running" } else { "gone" }
            ),
        }
    }
    assert!(
        writer.join().expect("writer"),
        "the server stopped taking requests"
    );
    assert!(
        last.expect("answers").body_str().contains(&x),
        "the last online answer lists X"
    );
    assert_rss(&s, base, 32 * MIB, "online pipeline");
    s.publish_ok(&x, "\"survived\"", None);
    let r = lp.try_read_response().expect("the long poll survives");
    assert_eq!(r.frames()[0].text, "\"survived\"");
    round_trip(&s);
    assert_rss(&s, base, 32 * MIB, "online pipeline");
}

/// Reproduction 2: a sub.sock client pipelining 404s and never reading: RSS growth
/// ≤ OUTBOX_LIMIT + 16 MiB while it hangs; round trip after it closes.
fn never_read_404_flood(total: usize) {
    let s = server().start();
    round_trip(&s);
    let base = rss(&s);
    let c = UnixStream::connect(&s.sub).expect("connect");
    let chunk = b"GET / HTTP/1.1\r\n\r\n".repeat(65536);
    let sent = flood(&c, &chunk, total, Duration::from_secs(3));
    let max = max_rss_over(&s, Duration::from_secs(1));
    eprintln!(
        "404 flood: {} KiB sent, RSS +{} KiB",
        sent as u64 / KIB,
        max.saturating_sub(base) / KIB
    );
    assert!(
        max <= base + OUTBOX + 16 * MIB,
        "404 flood ({} MiB written): RSS grew by {} KiB while the client hangs (bound OUTBOX_LIMIT + 16 MiB)",
        sent as u64 / MIB,
        max.saturating_sub(base) / KIB
    );
    drop(c);
    round_trip(&s);
    assert_rss(&s, base, OUTBOX + 16 * MIB, "after the 404 flood");
}

#[test]
fn pipelined_404_never_read_22mib() {
    never_read_404_flood(22 << 20);
}

#[test]
fn pipelined_404_never_read_64mib() {
    never_read_404_flood(64 << 20);
}

/// Pipelined publishes whose answers are never read: bounded (OUTBOX_LIMIT + 16 MiB), and what
/// was published reaches a subscriber in order, gap-free.
#[test]
fn pipelined_publishes_never_read() {
    let s = server().start();
    round_trip(&s);
    let base = rss(&s);
    let ch = new_id();
    let mut ws = s.ws(&cid(&ch));
    let mut chunk = Vec::new();
    for i in 0..2000 {
        let body = numbered("pp", i, 40);
        chunk.extend_from_slice(
            format!(
                "POST /bitrix/pub/?CHANNEL_ID={ch} HTTP/1.1\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        );
    }
    let c = UnixStream::connect(&s.pubs).expect("connect");
    // One pass over the 2000 numbered publishes only (no repeats: numbers stay unique).
    let sent = flood(&c, &chunk, chunk.len(), Duration::from_secs(3));
    let reader_stop = Arc::new(AtomicBool::new(false));
    let max = max_rss_over(&s, Duration::from_millis(500));
    reader_stop.store(true, Ordering::SeqCst);
    assert!(
        max <= base + OUTBOX + 16 * MIB,
        "unread publish answers: RSS +{} KiB",
        max.saturating_sub(base) / KIB
    );
    drop(c);
    s.publish_ok(&ch, "\"end\"", None);
    let got = ws.frames_until("\"end\"", Duration::from_secs(20));
    let idx: Vec<usize> = got[..got.len() - 1]
        .iter()
        .map(|f| body_index(f.text.as_bytes(), "pp").expect("numbered"))
        .collect();
    assert!(
        idx.iter().enumerate().all(|(i, &n)| i == n),
        "publishes out of order or with gaps ({} of them, {sent} bytes sent)",
        idx.len()
    );
    round_trip(&s);
    assert_rss(&s, base, OUTBOX + 16 * MIB, "pipelined publishes");
}

// =============================================================================================
// WebSocket frames

fn ws_pair(s: &Server) -> (String, RawWs) {
    let ch = new_id();
    let ws = RawWs::connect(&s.sub, &format!("/bitrix/subws/?{}", cid(&ch)));
    (ch, ws)
}

fn violation(s: &Server, bytes: &[u8], codes: &[u16], what: &str) {
    let (_ch, mut ws) = ws_pair(s);
    let _ = ws.send(bytes);
    ws.expect_close_in(codes, what);
}

/// An unmasked client frame → close 1002. RSS bound: +4 MiB.
fn ws_unmasked(s: &Server) {
    violation(s, b"\x81\x05hello", &[1002], "unmasked text");
}

/// RSV bits set → close 1002. RSS bound: +4 MiB.
fn ws_reserved_bits(s: &Server) {
    violation(s, &masked(0xC1, b"x"), &[1002], "RSV1");
    violation(s, &masked(0x91, b"x"), &[1002], "RSV3");
}

/// Reserved data opcode 0x3 → close 1002. RSS bound: +4 MiB.
fn ws_bad_data_opcode(s: &Server) {
    violation(s, &masked(0x83, b"x"), &[1002], "opcode 3");
}

/// Reserved control opcode 0xB → close 1002. RSS bound: +4 MiB.
fn ws_bad_control_opcode(s: &Server) {
    violation(s, &masked(0x8B, b"x"), &[1002], "opcode 0xB");
}

/// A fragmented ping (FIN=0 control frame) → close 1002. RSS bound: +4 MiB.
fn ws_fragmented_control(s: &Server) {
    violation(s, &masked(0x09, b"p"), &[1002], "fragmented ping");
}

/// A ping with a 126-byte payload (control over 125) → close 1002. RSS bound: +4 MiB.
fn ws_oversize_control(s: &Server) {
    violation(s, &masked(0x89, &[0u8; 126]), &[1002], "126-byte ping");
}

/// A frame declaring 2^63 bytes → close 1009 (1002 accepted) without waiting for the body. RSS bound: +4 MiB.
fn ws_len_2_63(s: &Server) {
    violation(
        s,
        &masked_header(0x82, 1 << 63),
        &[1009, 1002],
        "2^63 length",
    );
    violation(
        s,
        &masked_header(0x82, u64::MAX),
        &[1009, 1002],
        "2^64-1 length",
    );
}

/// A frame declaring 10 MiB (only the header sent) → close 1009 before the body. RSS bound: +4 MiB.
fn ws_len_10mib(s: &Server) {
    violation(
        s,
        &masked_header(0x81, 10 << 20),
        &[1009],
        "10 MiB text frame",
    );
}

/// A continuation frame without a started message → close 1002. RSS bound: +4 MiB.
fn ws_orphan_continuation(s: &Server) {
    violation(s, &masked(0x80, b"x"), &[1002], "orphan continuation");
}

/// A new text frame while a fragmented message is open → close 1002. RSS bound: +4 MiB.
fn ws_interleaved_data(s: &Server) {
    let mut b = masked(0x01, b"part");
    b.extend(masked(0x81, b"new"));
    violation(s, &b, &[1002], "text inside a fragmented message");
}

/// Fragments adding up to more than MAX_PAYLOAD → close 1009. RSS bound: +8 MiB.
fn ws_fragments_over_limit(s: &Server) {
    let (_ch, mut ws) = ws_pair(s);
    let part = vec![b'a'; 256 * 1024];
    let mut b = masked(0x02, &part);
    for _ in 0..4 {
        b.extend(masked(0x00, &part));
    }
    let mut w = ws.s.try_clone().expect("clone");
    w.set_write_timeout(Some(Duration::from_secs(3)))
        .expect("timeout");
    let writer = thread::spawn(move || {
        let _ = w.write_all(&b);
    });
    ws.expect_close_in(&[1009], "5 × 256 KiB fragments");
    let _ = writer.join();
}

/// Close frames with invalid codes (999, 1005, 1006, 5000) and a 1-byte payload → the server
/// ends the connection (close frame or EOF), nothing else. RSS bound: +4 MiB.
fn ws_invalid_close_codes(s: &Server) {
    for p in [
        close_payload(999, ""),
        close_payload(1005, ""),
        close_payload(1006, "x"),
        close_payload(5000, "bye"),
        vec![0x03],
        close_payload(1000, "\u{fffd}\u{fffd}"),
    ] {
        let (_ch, mut ws) = ws_pair(s);
        ws.send(&masked(0x88, &p)).expect("send close");
        match ws.close_code(WAIT) {
            Ok(_) => {}
            Err(e) => assert!(e.starts_with("EOF"), "close payload {p:?}: {e}"),
        }
        assert!(
            matches!(ws.next(WAIT), Got::Eof),
            "connection not ended after close payload {p:?}"
        );
    }
}

/// 10 000 empty binary and text frames on a v3 socket → ignored, the socket keeps delivering. RSS bound: +4 MiB.
fn ws_empty_frames_flood(s: &Server) {
    let (ch, mut ws) = ws_pair(s);
    let mut b = Vec::new();
    for i in 0..10_000 {
        b.extend(masked(if i % 2 == 0 { 0x81 } else { 0x82 }, b""));
    }
    ws.send(&b).expect("send");
    s.publish_ok(&ch, "\"alive\"", None);
    let d = ws.data(WAIT);
    assert_eq!(fast_frames(&d)[0].1, b"\"alive\"");
}

/// A ping flood (20 000 pings) by a client that reads: every ping gets its pong, in order. RSS bound: +8 MiB.
fn ws_ping_flood_reading(s: &Server) {
    let (ch, mut ws) = ws_pair(s);
    let mut w = ws.s.try_clone().expect("clone");
    let writer = thread::spawn(move || {
        let mut b = Vec::new();
        for i in 0..20_000u32 {
            b.extend(masked(0x89, &i.to_be_bytes()));
        }
        w.write_all(&b).is_ok()
    });
    let mut next = 0u32;
    let deadline = Instant::now() + Duration::from_secs(20);
    while next < 20_000 {
        match ws.next(deadline.saturating_duration_since(Instant::now())) {
            Got::Frame(0xA, p) => {
                assert_eq!(p, next.to_be_bytes(), "pong out of order");
                next += 1;
            }
            Got::Frame(0x9, _) => {}
            other => panic!("after {next} pongs: {other:?}"),
        }
    }
    assert!(writer.join().expect("writer"));
    s.publish_ok(&ch, "\"after pings\"", None);
    assert_eq!(fast_frames(&ws.data(WAIT))[0].1, b"\"after pings\"");
}

/// Frames written in the same write as the handshake (a ping) → 101, then the pong. RSS bound: +4 MiB.
fn ws_frames_with_handshake(s: &Server) {
    let ch = new_id();
    let mut ws = RawWs::connect_with(
        &s.sub,
        &format!("/bitrix/subws/?{}", cid(&ch)),
        &masked(0x89, b"early"),
    );
    match ws.next(WAIT) {
        Got::Frame(0xA, p) => assert_eq!(p, b"early"),
        other => panic!("expected the pong to the early ping, got {other:?}"),
    }
    s.publish_ok(&ch, "\"early-ok\"", None);
    assert_eq!(fast_frames(&ws.data(WAIT))[0].1, b"\"early-ok\"");
}

/// A client that half-closes its WebSocket (FIN without close frame) → connection ended. RSS bound: +4 MiB.
fn ws_half_close(s: &Server) {
    let (_ch, mut ws) = ws_pair(s);
    ws.s.shutdown(std::net::Shutdown::Write).expect("shutdown");
    match ws.next(WAIT) {
        Got::Eof | Got::Frame(0x8, _) => {}
        other => panic!("half-closed WebSocket still open: {other:?}"),
    }
}

/// 1000 text frames to a v4 socket → ignored (docs/protocol.md#websocket); binary delivery continues. RSS bound: +4 MiB.
fn ws_text_to_v4(s: &Server) {
    let ch = new_id();
    let mut ws = RawWs::connect(&s.sub, &format!("/bitrix/subws/?{}", v4q(&signed(&ch))));
    let mut b = Vec::new();
    for _ in 0..1000 {
        b.extend(masked(0x81, b"{\"jsonrpc\":\"2.0\"}"));
    }
    ws.send(&b).expect("send");
    s.publish_ok(&ch, "\"v4-alive\"", None);
    let d = ws.data(WAIT);
    assert_eq!(v4_bodies(&d)[0].1, b"\"v4-alive\"");
}

/// A v4 client message fragmented and never finished (600 KiB first fragment) → the socket
/// still receives, nothing is published; finishing it beyond MAX_PAYLOAD → 1009. RSS bound: +8 MiB.
fn ws_v4_unfinished_fragment(s: &Server) {
    let target = new_id();
    let mut watcher = s.ws(&v4q(&signed_pair(&new_id(), &target)));
    let (me, _) = (new_id(), ());
    let mut ws = RawWs::connect(
        &s.sub,
        &format!("/bitrix/subws/?{}", v4q(&signed_pair(&me, &new_id()))),
    );
    let msg = one(vec![public(&target)], &vec![b'z'; 600 * 1024]);
    ws.send(&masked(0x02, &msg)).expect("first fragment");
    s.publish_ok(&me, "\"live\"", None);
    assert_eq!(v4_bodies(&ws.data(WAIT))[0].1, b"\"live\"");
    let mut w = ws.s.try_clone().expect("clone");
    w.set_write_timeout(Some(Duration::from_secs(3)))
        .expect("timeout");
    let rest = masked(0x80, &vec![b'z'; 600 * 1024]);
    let writer = thread::spawn(move || {
        let _ = w.write_all(&rest);
    });
    ws.expect_close_in(&[1009], "fragmented v4 message over MAX_PAYLOAD");
    let _ = writer.join();
    watcher.assert_quiet(Duration::from_millis(200));
}

/// v4 client publish of garbage on a WebSocket → close 4013, nothing published. RSS bound: +4 MiB.
fn ws_v4_garbage(s: &Server) {
    let mut ws = RawWs::connect(
        &s.sub,
        &format!("/bitrix/subws/?{}", v4q(&signed_pair(&new_id(), &new_id()))),
    );
    ws.send(&masked(
        0x82,
        &[0xff, 0xff, 0xff, 0xff, 0xff, 0x0f, 1, 2, 3],
    ))
    .expect("send");
    ws.expect_close_in(&[4013], "garbage v4 message");
}

/// v4 client publish of 101 messages on a WebSocket → close 4016, none published. RSS bound: +4 MiB.
fn ws_v4_too_many_messages(s: &Server) {
    let target = new_id();
    let mut watcher = s.ws(&v4q(&signed_pair(&new_id(), &target)));
    let mut ws = RawWs::connect(
        &s.sub,
        &format!("/bitrix/subws/?{}", v4q(&signed_pair(&new_id(), &new_id()))),
    );
    let b = batch(vec![messages(
        (0..101)
            .map(|_| incoming(vec![public(&target)], b"1"))
            .collect(),
    )]);
    ws.send(&masked(0x82, &b)).expect("send");
    ws.expect_close_in(&[4016], "101 messages");
    watcher.assert_quiet(Duration::from_millis(200));
}

/// v4 client publish to a 15-byte receiver id → closed with 4019 or 4021, nothing published. RSS bound: +4 MiB.
fn ws_v4_invalid_receiver(s: &Server) {
    let mut ws = RawWs::connect(
        &s.sub,
        &format!("/bitrix/subws/?{}", v4q(&signed_pair(&new_id(), &new_id()))),
    );
    let r = proto::Receiver {
        id: vec![0xab; 15],
        is_private: false,
        signature: vec![0; 20],
    };
    ws.send(&masked(0x82, &one(vec![r], b"x"))).expect("send");
    ws.expect_close_in(&[4019, 4021], "15-byte receiver id");
}

#[test]
fn websocket_frames() {
    let s = server().start();
    run(
        &s,
        &[
            Case("ws_unmasked", 4 * MIB, ws_unmasked),
            Case("ws_reserved_bits", 4 * MIB, ws_reserved_bits),
            Case("ws_bad_data_opcode", 4 * MIB, ws_bad_data_opcode),
            Case("ws_bad_control_opcode", 4 * MIB, ws_bad_control_opcode),
            Case("ws_fragmented_control", 4 * MIB, ws_fragmented_control),
            Case("ws_oversize_control", 4 * MIB, ws_oversize_control),
            Case("ws_len_2_63", 4 * MIB, ws_len_2_63),
            Case("ws_len_10mib", 4 * MIB, ws_len_10mib),
            Case("ws_orphan_continuation", 4 * MIB, ws_orphan_continuation),
            Case("ws_interleaved_data", 4 * MIB, ws_interleaved_data),
            Case("ws_fragments_over_limit", 8 * MIB, ws_fragments_over_limit),
            Case("ws_invalid_close_codes", 4 * MIB, ws_invalid_close_codes),
            Case("ws_empty_frames_flood", 4 * MIB, ws_empty_frames_flood),
            Case("ws_ping_flood_reading", 8 * MIB, ws_ping_flood_reading),
            Case(
                "ws_frames_with_handshake",
                4 * MIB,
                ws_frames_with_handshake,
            ),
            Case("ws_half_close", 4 * MIB, ws_half_close),
            Case("ws_text_to_v4", 4 * MIB, ws_text_to_v4),
            Case(
                "ws_v4_unfinished_fragment",
                8 * MIB,
                ws_v4_unfinished_fragment,
            ),
            Case("ws_v4_garbage", 4 * MIB, ws_v4_garbage),
            Case("ws_v4_too_many_messages", 4 * MIB, ws_v4_too_many_messages),
            Case("ws_v4_invalid_receiver", 4 * MIB, ws_v4_invalid_receiver),
        ],
    );
}

/// Reproduction 3: a WebSocket sending 48 MiB of masked pings and never reading: RSS growth
/// ≤ OUTBOX_LIMIT + 16 MiB.
#[test]
fn ws_ping_flood_never_read() {
    let s = server().start();
    round_trip(&s);
    let base = rss(&s);
    let (_ch, ws) = ws_pair(&s);
    let mut chunk = Vec::new();
    while chunk.len() < (1 << 20) {
        chunk.extend(masked(0x89, b"pi"));
    }
    let sent = flood(&ws.s, &chunk, 48 << 20, Duration::from_secs(3));
    let max = max_rss_over(&s, Duration::from_secs(1));
    eprintln!(
        "ping flood: {} KiB sent, RSS +{} KiB",
        sent as u64 / KIB,
        max.saturating_sub(base) / KIB
    );
    assert!(
        max <= base + OUTBOX + 16 * MIB,
        "ping flood ({} MiB written): RSS +{} KiB (bound OUTBOX_LIMIT + 16 MiB)",
        sent as u64 / MIB,
        max.saturating_sub(base) / KIB
    );
    drop(ws);
    round_trip_ws(&s);
    assert_rss(&s, base, OUTBOX + 16 * MIB, "after the ping flood");
}

/// Reproduction 8a: a WebSocket that stops reading while > OUTBOX_LIMIT is published to it is
/// cut; reading again it sees some complete messages, then close 1008, then EOF. Bound 32 MiB.
#[test]
fn ws_slow_consumer_sees_1008() {
    let s = server().start();
    round_trip(&s);
    let base = rss(&s);
    let (ch, mut slow) = ws_pair(&s);
    let mut good = s.ws(&cid(&ch));
    for i in 0..100 {
        s.publish_ok(&ch, &numbered("slow", i, 100_000), None);
        if i % 10 == 9 {
            // keep the reading subscriber close behind
            let _ = good.frames(10, WAIT);
        }
    }
    let (code, data) = slow
        .close_code(WAIT)
        .unwrap_or_else(|e| panic!("slow consumer: {e}"));
    assert_eq!(code, 1008, "slow consumer close code");
    assert!(data.len() < 100, "the slow consumer was not cut");
    for d in &data {
        fast_frames(d); // complete frames only
    }
    assert!(
        matches!(slow.next(WAIT), Got::Eof),
        "EOF after the close frame"
    );
    round_trip_ws(&s);
    assert_rss(&s, base, 32 * MIB, "slow consumer");
}

/// Reproduction 8b: a peer that never answers pings (WS_PING_INTERVAL=1) gets close 1001 or
/// 1011 before EOF. Bound 4 MiB.
#[test]
fn ws_no_pong_gets_close_frame() {
    let s = server().env("WS_PING_INTERVAL", "1").start();
    round_trip(&s);
    let base = rss(&s);
    let (_ch, mut ws) = ws_pair(&s);
    let (code, _) = ws
        .close_code(Duration::from_secs(6))
        .unwrap_or_else(|e| panic!("silent peer: {e}"));
    assert!(code == 1001 || code == 1011, "close code {code}");
    assert!(
        matches!(ws.next(WAIT), Got::Eof),
        "EOF after the close frame"
    );
    round_trip(&s);
    assert_rss(&s, base, 4 * MIB, "no pong");
}

// =============================================================================================
// v3 protocol abuse

/// Long poll with a signature made with another key → 400 4010. RSS bound: +4 MiB.
fn v3_bad_signature_lp(s: &Server) {
    let a = new_id();
    let item = format!("{a}.{}", sign_with("otherKey", &a));
    let r = s.lp(&format!("CHANNEL_ID={}", enc(&item)));
    r.assert_error(400, "4010: Wrong Channel Id.");
}

/// Signatures of the wrong length, non-hex, or empty → 400 4010. RSS bound: +4 MiB.
fn v3_malformed_signature(s: &Server) {
    let a = new_id();
    let sig = sign(&a);
    for item in [
        format!("{a}.{}", &sig[..39]),
        format!("{a}.{sig}0"),
        format!("{a}.{}", "z".repeat(40)),
        format!("{a}."),
        format!("{a}.{}", sig.to_uppercase()),
        format!(".{sig}"),
    ] {
        let r = s.lp(&format!("CHANNEL_ID={}", enc(&item)));
        r.assert_error(400, "4010: Wrong Channel Id.");
    }
}

/// WebSocket with a bad signature → 101, then close 4010 (clients reload their config). RSS bound: +4 MiB.
fn v3_bad_signature_ws(s: &Server) {
    let a = new_id();
    let mut ws = RawWs::connect(
        &s.sub,
        &format!(
            "/bitrix/subws/?CHANNEL_ID={}",
            enc(&format!("{a}.{}", sign_with("x1", &a)))
        ),
    );
    ws.expect_close_in(&[4010], "bad signature WebSocket");
}

/// Malformed mids (letters, 27 digits, negative, 2^128) count as absent (docs/protocol.md#subscribing): the long poll is
/// held and gets the next live message, no old backlog. RSS bound: +4 MiB.
fn v3_bad_mid(s: &Server) {
    for mid in [
        "abc",
        "100000000000000000000000001",
        "-1",
        "340282366920938463463374607431768211456",
        "%00",
    ] {
        let ch = new_id();
        publish_kept(s, &ch, "\"old\"");
        let mut lp = s.lp_begin(&format!("{}&mid={mid}", cid(&ch)));
        s.wait_online(&ch);
        s.publish_ok(&ch, "\"new\"", None);
        let r = lp.read_response();
        assert_eq!(r.status, 200, "mid {mid}");
        let texts: Vec<String> = r.frames().into_iter().map(|f| f.text).collect();
        assert!(
            texts.contains(&"\"new\"".to_string()),
            "mid {mid}: {texts:?}"
        );
    }
}

/// 1000 signed ids in one long poll (~76 KB head) → a readable 431 (as reproduction 6). RSS bound: +4 MiB.
fn v3_1000_ids(s: &Server) {
    let list: Vec<String> = (0..1000).map(|_| enc(&signed(&new_id()))).collect();
    let raw = format!(
        "GET /bitrix/sub/?CHANNEL_ID={} HTTP/1.0\r\n\r\n",
        list.join("%2F")
    );
    let r = send_and_read(&s.sub, raw.into_bytes()).expect("a readable answer");
    assert_eq!(r.status, 431);
}

/// 1000 empty ids (`CHANNEL_ID=////…`) and an empty CHANNEL_ID → 400 4010. RSS bound: +4 MiB.
fn v3_empty_ids(s: &Server) {
    for q in [
        format!("CHANNEL_ID={}", "/".repeat(1000)),
        format!("CHANNEL_ID={}", "%2F".repeat(1000)),
        "CHANNEL_ID=".to_string(),
        "CHANNEL_ID".to_string(),
        "channel_id=x".to_string(),
    ] {
        s.lp(&q).assert_error(400, "4010: Wrong Channel Id.");
    }
}

/// 100 valid ids on one WebSocket (many subscriptions per connection), × 20 connections →
/// every connection gets every channel's message. RSS bound: +8 MiB.
fn v3_many_subscriptions(s: &Server) {
    let ids: Vec<String> = (0..90).map(|_| new_id()).collect();
    let q = format!(
        "CHANNEL_ID={}",
        ids.iter()
            .map(|i| enc(&signed(i)))
            .collect::<Vec<_>>()
            .join("%2F")
    );
    let mut socks: Vec<Ws> = (0..20).map(|_| s.ws(&q)).collect();
    for i in &ids {
        s.publish_ok(i, &format!("\"{i}\""), None);
    }
    for ws in socks.iter_mut() {
        assert_eq!(ws.frames(90, WAIT).len(), 90);
    }
}

/// Publish to 101 channels (over MAX_CHANNELS_PER_REQUEST) → 400 4018, nothing published. RSS bound: +4 MiB.
fn v3_publish_too_many_channels(s: &Server) {
    let (ch, mut w) = watched(s);
    let mut list: Vec<String> = (0..100).map(|_| new_id()).collect();
    list.insert(0, ch.clone());
    let r = s.publish(&list.join("/"), "\"wide\"", None);
    r.assert_error(
        400,
        "4018: Request exceeded the maximum number of channels.",
    );
    assert_nothing_published(s, &mut w, &ch);
}

/// Publish with invalid channel ids (31 hex, non-hex, 33 hex, signed item) → 400 4019. RSS bound: +4 MiB.
fn v3_publish_invalid_ids(s: &Server) {
    let (ch, mut w) = watched(s);
    for bad in [
        format!("{ch}/{}", &ch[..31]),
        format!("{ch}/{}", "g".repeat(32)),
        format!("{ch}/{ch}0"),
        format!("{ch}/%00"),
    ] {
        let r = s.publish(&bad, "\"bad\"", None);
        r.assert_error(400, "4019: Request has an invalid channel id.");
    }
    assert_nothing_published(s, &mut w, &ch);
}

/// Publish with no channels or an empty body → 4017 / 4013, nothing published. RSS bound: +4 MiB.
fn v3_publish_empty(s: &Server) {
    let (ch, mut w) = watched(s);
    s.publish("", "\"x\"", None)
        .assert_error(400, "4017: No channels found.");
    let r = s.publish(&ch, "", None);
    assert_eq!(r.status, 400, "empty body: {:?}", r.body_str());
    assert_nothing_published(s, &mut w, &ch);
}

/// The same channel 100 times in one publish → delivered once. RSS bound: +4 MiB.
fn v3_publish_duplicates(s: &Server) {
    let (ch, mut w) = watched(s);
    let list = vec![ch.clone(); 100].join("/");
    s.publish_ok(&list, "\"dup\"", None);
    s.publish_ok(&ch, "\"after\"", None);
    let texts: Vec<String> = w.frames(2, WAIT).into_iter().map(|f| f.text).collect();
    assert_eq!(texts, ["\"dup\"", "\"after\""]);
}

/// Online query for 101 ids → 400 4018. RSS bound: +4 MiB.
fn v3_online_too_many(s: &Server) {
    let ids: Vec<String> = (0..101).map(|_| new_id()).collect();
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let r = s.online(&refs);
    r.assert_error(
        400,
        "4018: Request exceeded the maximum number of channels.",
    );
}

/// Trusted routes on sub.sock (publish, server-stat, metrics) → 404, nothing published. RSS bound: +4 MiB.
fn v3_trusted_routes_on_sub(s: &Server) {
    let (ch, mut w) = watched(s);
    let r = s.sub_request(&publish_request(&ch, b"\"sneak\"", None));
    assert_eq!(r.status, 404);
    for p in ["/server-stat/", "/metrics", "/health"] {
        let r = s.sub_request(format!("GET {p} HTTP/1.0\r\n\r\n").as_bytes());
        assert_eq!(r.status, 404, "{p}");
    }
    assert_nothing_published(s, &mut w, &ch);
}

#[test]
fn v3_protocol() {
    let s = server().start();
    run(
        &s,
        &[
            Case("v3_bad_signature_lp", 4 * MIB, v3_bad_signature_lp),
            Case("v3_malformed_signature", 4 * MIB, v3_malformed_signature),
            Case("v3_bad_signature_ws", 4 * MIB, v3_bad_signature_ws),
            Case("v3_bad_mid", 4 * MIB, v3_bad_mid),
            Case("v3_1000_ids", 4 * MIB, v3_1000_ids),
            Case("v3_empty_ids", 4 * MIB, v3_empty_ids),
            Case("v3_many_subscriptions", 8 * MIB, v3_many_subscriptions),
            Case(
                "v3_publish_too_many_channels",
                4 * MIB,
                v3_publish_too_many_channels,
            ),
            Case("v3_publish_invalid_ids", 4 * MIB, v3_publish_invalid_ids),
            Case("v3_publish_empty", 4 * MIB, v3_publish_empty),
            Case("v3_publish_duplicates", 4 * MIB, v3_publish_duplicates),
            Case("v3_online_too_many", 4 * MIB, v3_online_too_many),
            Case(
                "v3_trusted_routes_on_sub",
                4 * MIB,
                v3_trusted_routes_on_sub,
            ),
        ],
    );
}

// =============================================================================================
// v4 protocol abuse (binary publish on pub.sock, client publish on sub.sock)

const T4013: &str = "4013: Wrong Request Data.";

fn v4_watched(s: &Server) -> (String, Ws) {
    let ch = new_id();
    let ws = s.ws(&v4q(&signed(&ch)));
    (ch, ws)
}

/// Garbage, hostile varints (length 2^63, an 11-byte varint), truncation, zero tags → 4013. RSS bound: +4 MiB.
fn v4_garbage(s: &Server) {
    let (ch, mut w) = watched(s);
    for body in [
        vec![0xde, 0xad, 0xbe, 0xef],
        unhex("0affffffffffffffff7f"),
        unhex("0affffffffffffffffffff01"),
        unhex("0a020a"),
        vec![0u8; 4096],
    ] {
        pub_bin(s, &body).assert_error(400, T4013);
    }
    assert_nothing_published(s, &mut w, &ch);
}

/// One message with 40 000 receivers (huge repeated field, ~800 KB) → 4018, nothing published. RSS bound: +16 MiB.
fn v4_huge_receivers(s: &Server) {
    let (ch, mut w) = watched(s);
    let mut rcv: Vec<proto::Receiver> = vec![trusted(&ch)];
    rcv.extend((0..40_000).map(|_| trusted("0123456789abcdef0123456789abcdef")));
    let body = one(rcv, b"\"wide\"");
    assert!(body.len() < 1 << 20);
    pub_bin(s, &body).assert_error(
        400,
        "4018: Request exceeded the maximum number of channels.",
    );
    assert_nothing_published(s, &mut w, &ch);
}

/// 50 000 empty requests in one batch → 4013; 20 000 one-byte messages → 4016; nothing
/// published. RSS bound: +16 MiB.
fn v4_huge_batches(s: &Server) {
    let (ch, mut w) = watched(s);
    pub_bin(s, &unhex("0a00").repeat(50_000)).assert_error(400, T4013);
    let many = batch(vec![messages(
        (0..20_000)
            .map(|_| incoming(vec![trusted(&ch)], b"1"))
            .collect(),
    )]);
    pub_bin(s, &many).assert_error(
        400,
        "4016: Request exceeded the maximum number of messages.",
    );
    // 101 requests of one message each: the limit is per request, or in total.
    let split: Vec<request::Command> = (0..101)
        .map(|_| messages(vec![incoming(vec![trusted(&ch)], b"1")]))
        .collect();
    let r = pub_bin(s, &batch(split));
    assert!(r.status == 200 || r.status == 400, "{}", r.status);
    if r.status == 200 {
        // Accepted: then every message arrives (each once), before the marker.
        let mut n = 0;
        let marker = format!("\"m-{}\"", new_id());
        s.publish_ok(&ch, &marker, None);
        loop {
            let f = w.frames(1, WAIT).remove(0);
            if f.text == marker {
                break;
            }
            assert_eq!(f.text, "1");
            n += 1;
        }
        assert_eq!(n, 101);
    }
    assert_nothing_published(s, &mut w, &ch);
}

/// Invalid channel ids in a binary publish (15, 17, 0 bytes) → 4019, nothing published. RSS bound: +4 MiB.
fn v4_invalid_ids(s: &Server) {
    let (ch, mut w) = watched(s);
    for id in [vec![0xab; 15], vec![0xab; 17], Vec::new()] {
        let r = proto::Receiver {
            id,
            is_private: true,
            signature: Vec::new(),
        };
        pub_bin(s, &one(vec![trusted(&ch), r], b"\"x\""))
            .assert_error(400, "4019: Request has an invalid channel id.");
    }
    assert_nothing_published(s, &mut w, &ch);
}

/// Binary publish body over MAX_PAYLOAD → 413, nothing published. RSS bound: +8 MiB.
fn v4_oversize_body(s: &Server) {
    let (ch, mut w) = watched(s);
    let body = one(vec![trusted(&ch)], &vec![b'q'; 1 << 20]);
    let r = send_and_read(
        &s.pubs,
        binary_request("/bitrix/pub/?binaryMode=true", &body),
    )
    .expect("413");
    assert_eq!(r.status, 413);
    assert_nothing_published(s, &mut w, &ch);
}

/// Client publish (REST) errors: garbage → 4013, no pair → 4012, private receiver → 4020,
/// unsigned receiver → 4021, serverStats → 4014; nothing published. RSS bound: +8 MiB.
fn v4_rest_errors(s: &Server) {
    let (target, mut w) = v4_watched_pub(s);
    let pair = format!("CHANNEL_ID={}", enc(&signed_pair(&new_id(), &new_id())));
    let mut private = public(&target);
    private.is_private = true;
    let mut unsigned = public(&target);
    unsigned.signature.clear();
    let cases: Vec<(String, Vec<u8>, &str)> = vec![
        (pair.clone(), vec![0xff; 64], T4013),
        (
            String::new(),
            one(vec![public(&target)], b"1"),
            "4012: Public Channel Id is Required.",
        ),
        (
            pair.clone(),
            one(vec![private], b"1"),
            "4020: Private channel is not allowed.",
        ),
        (
            pair.clone(),
            one(vec![unsigned], b"1"),
            "4021: Channel has an invalid signature.",
        ),
        (
            pair.clone(),
            unhex("0a021a00"),
            "4014: Request command is not allowed.",
        ),
    ];
    for (q, body, want) in cases {
        let r = s.sub_request(&binary_request(&format!("/bitrix/rest/?{q}"), &body));
        r.assert_error(400, want);
    }
    let r = send_and_read(
        &s.sub,
        binary_request(&format!("/bitrix/rest/?{pair}"), &vec![0u8; (1 << 20) + 1]),
    )
    .expect("413");
    assert_eq!(r.status, 413);
    w.assert_quiet(Duration::from_millis(200));
}

/// A watcher on the public id `target` of a pair (v4 WebSocket).
fn v4_watched_pub(s: &Server) -> (String, Ws) {
    let target = new_id();
    let ws = s.ws(&v4q(&signed_pair(&new_id(), &target)));
    (target, ws)
}

/// Channel stats with 30 000 ids (~660 KB) → 4018. RSS bound: +16 MiB.
fn v4_huge_stats(s: &Server) {
    let ids: Vec<proto::Receiver> = (0..30_000).map(|_| trusted(&new_id())).collect();
    let body = batch(vec![request::Command::ChannelStats(
        proto::ChannelStatsRequest { channels: ids },
    )]);
    pub_bin(s, &body).assert_error(
        400,
        "4018: Request exceeded the maximum number of channels.",
    );
}

#[test]
fn v4_protocol() {
    let s = server().start();
    run(
        &s,
        &[
            Case("v4_garbage", 4 * MIB, v4_garbage),
            Case("v4_huge_receivers", 16 * MIB, v4_huge_receivers),
            Case("v4_huge_batches", 16 * MIB, v4_huge_batches),
            Case("v4_invalid_ids", 4 * MIB, v4_invalid_ids),
            Case("v4_oversize_body", 8 * MIB, v4_oversize_body),
            Case("v4_rest_errors", 8 * MIB, v4_rest_errors),
            Case("v4_huge_stats", 16 * MIB, v4_huge_stats),
        ],
    );
    let _ = v4_watched;
}

// =============================================================================================
// resource exhaustion

/// 3000 WebSockets on one channel: one publish reaches all. RSS bound: +3000 × 8 KiB + 16 MiB.
fn many_websockets(s: &Server) {
    let ch = new_id();
    let mut socks: Vec<RawWs> = (0..3000)
        .map(|_| RawWs::connect(&s.sub, &format!("/bitrix/subws/?{}", cid(&ch))))
        .collect();
    s.publish_ok(&ch, "\"to-3000\"", None);
    for (i, ws) in socks.iter_mut().enumerate() {
        let d = ws.data(WAIT);
        assert_eq!(fast_frames(&d)[0].1, b"\"to-3000\"", "socket {i}");
    }
}

/// 2000 held long polls on one channel: one publish answers all. RSS bound: +2000 × 8 KiB + 16 MiB.
fn many_long_polls(s: &Server) {
    let ch = new_id();
    let held = || s.server_stat()[0]["pollings"].as_u64().expect("pollings");
    let before = held();
    let mut polls: Vec<Conn> = (0..2000).map(|_| s.lp_begin(&cid(&ch))).collect();
    assert!(
        wait_until(Duration::from_secs(10), || held() >= before + 2000),
        "2000 long polls not held: {}",
        held()
    );
    s.publish_ok(&ch, "\"to-2000\"", None);
    for (i, c) in polls.iter_mut().enumerate() {
        let r = c
            .try_read_response()
            .unwrap_or_else(|e| panic!("poll {i}: {e}"));
        assert_eq!(r.frames()[0].text, "\"to-2000\"", "poll {i}");
    }
}

/// 20 000 publishes to distinct channels on keep-alive connections (store and registry
/// pressure). RSS bound: +32 MiB.
fn many_channels(s: &Server) {
    let mut c = s.pub_conn();
    let mut w = c.stream.try_clone().expect("clone");
    let writer = thread::spawn(move || {
        let mut raw = Vec::new();
        for _ in 0..20_000 {
            let ch = new_id();
            raw.extend_from_slice(
                format!(
                    "POST /bitrix/pub/?CHANNEL_ID={ch} HTTP/1.1\r\nContent-Length: 3\r\n\r\n\"x\""
                )
                .as_bytes(),
            );
        }
        w.write_all(&raw).is_ok()
    });
    for i in 0..20_000 {
        let r = c
            .try_read_response()
            .unwrap_or_else(|e| panic!("publish {i}: {e}"));
        assert_eq!(r.status, 200);
    }
    assert!(writer.join().expect("writer"));
}

#[test]
fn resource_exhaustion() {
    let s = server().start();
    run(
        &s,
        &[
            Case(
                "many_websockets",
                3000 * 8 * KIB + 16 * MIB,
                many_websockets,
            ),
            Case(
                "many_long_polls",
                2000 * 8 * KIB + 16 * MIB,
                many_long_polls,
            ),
            Case("many_channels", 32 * MIB, many_channels),
        ],
    );
}

// =============================================================================================
// store and backlog bounds

/// Reproduction 4: 300 × 1 MB messages to one channel read by a text and a v4 WebSocket:
/// push_store_bytes ≤ STORE_MAX_BYTES (64 MiB), RSS growth ≤ STORE_MAX_BYTES + 64 MiB.
#[test]
fn store_cap_holds_under_1mb_messages() {
    if !embedded_store() {
        return; // STORE_MAX_BYTES and push_store_bytes are the embedded store's
    }
    let cap = 64 * MIB;
    let s = server().env("STORE_MAX_BYTES", cap.to_string()).start();
    round_trip(&s);
    let base = rss(&s);
    let ch = new_id();
    let n = 300usize;
    let counts: Vec<Arc<AtomicUsize>> = (0..2).map(|_| Arc::new(AtomicUsize::new(0))).collect();
    let readers: Vec<thread::JoinHandle<usize>> = [false, true]
        .into_iter()
        .zip(counts.clone())
        .map(|(binary, count)| {
            let q = if binary { v4q(&signed(&ch)) } else { cid(&ch) };
            let mut ws = RawWs::connect(&s.sub, &format!("/bitrix/subws/?{q}"));
            thread::spawn(move || {
                let mut got = 0usize;
                while got < n {
                    let d = ws.data(Duration::from_secs(30));
                    got += if binary {
                        v4_bodies(&d).len()
                    } else {
                        fast_frames(&d).len()
                    };
                    count.store(got, Ordering::SeqCst);
                }
                got
            })
        })
        .collect();
    let mut max = 0;
    for i in 0..n {
        // The readers stay within 2 messages (well under OUTBOX_LIMIT): they are not slow.
        let behind = || {
            counts
                .iter()
                .map(|c| c.load(Ordering::SeqCst))
                .min()
                .unwrap_or(0)
                + 2
                < i
        };
        assert!(
            wait_until(Duration::from_secs(10), || !behind()),
            "readers stuck at {:?} of {i}",
            counts
                .iter()
                .map(|c| c.load(Ordering::SeqCst))
                .collect::<Vec<_>>()
        );
        publish_kept(&s, &ch, &numbered("big", i, 1_000_000));
        if i % 20 == 0 {
            max = max.max(rss(&s));
        }
    }
    for r in readers {
        assert_eq!(r.join().expect("reader"), n);
    }
    let stored = metric(&s, "push_store_bytes").expect("push_store_bytes");
    assert!(
        stored <= cap as f64,
        "push_store_bytes {stored} over STORE_MAX_BYTES {cap}"
    );
    max = max.max(rss(&s));
    assert!(
        max <= base + cap + 64 * MIB,
        "RSS +{} KiB (bound STORE_MAX_BYTES + 64 MiB)",
        max.saturating_sub(base) / KIB
    );
    round_trip(&s);
    assert_rss(&s, base, cap + 64 * MIB, "store cap");
}

/// Reproduction 5: 10 non-reading WebSocket resumers of a 50 MB backlog (1000 × 50 KiB):
/// RSS growth ≤ 10 × OUTBOX_LIMIT + 32 MiB while they hang, back within baseline + 32 MiB
/// 10 s after they close; a reading resumer gets all 1000 in order, each once.
#[test]
fn backlog_resumers_bounded() {
    let s = server()
        .env("CHANNEL_HISTORY", "2000")
        .env("STORE_MAX_BYTES", (512 * MIB).to_string())
        .start();
    round_trip(&s);
    let ch = new_id();
    let first = marker_mid(&s, &ch);
    for i in 0..1000 {
        publish_kept(&s, &ch, &numbered("bl", i, 50 * 1024));
    }
    let base = rss(&s);
    let q = format!("/bitrix/subws/?{}&mid={first}", cid(&ch));
    let hung: Vec<RawWs> = (0..10).map(|_| RawWs::connect(&s.sub, &q)).collect();
    let max = max_rss_over(&s, Duration::from_secs(2));
    eprintln!("10 resumers: RSS +{} KiB", max.saturating_sub(base) / KIB);
    let hung_ok = max <= base + 10 * OUTBOX + 32 * MIB;
    drop(hung);
    let settled = wait_until(Duration::from_secs(10), || rss(&s) <= base + 32 * MIB);
    let after_close = rss(&s);
    // One resumer that reads: 1000 messages, in order, each once.
    let mut reader = RawWs::connect(&s.sub, &q);
    let mut got = Vec::new();
    while got.len() < 1000 {
        let d = reader.data(Duration::from_secs(20));
        for (_, text) in fast_frames(&d) {
            got.push(body_index(&text, "bl").expect("numbered body"));
        }
    }
    assert_eq!(
        got,
        (0..1000).collect::<Vec<_>>(),
        "backlog in order, each once"
    );
    drop(reader);
    round_trip(&s);
    assert!(
        hung_ok && settled,
        "10 hanging resumers: RSS +{} KiB (bound 10 × OUTBOX_LIMIT + 32 MiB: {}); 10 s after they \
         closed: +{} KiB (bound 32 MiB: {})",
        max.saturating_sub(base) / KIB,
        if hung_ok { "ok" } else { "exceeded" },
        after_close.saturating_sub(base) / KIB,
        if settled { "ok" } else { "exceeded" }
    );
}

/// Reproduction 9a: long polls resuming by mid while large messages are published: every
/// message once, in order. Bound: stored bytes (~23 MiB) + 64 MiB.
#[test]
fn long_poll_backlog_during_large_publishes() {
    let s = Arc::new(server().start());
    round_trip(&s);
    let base = rss(&s);
    let ch = new_id();
    let first = marker_mid(&s, &ch);
    for i in 0..200 {
        publish_kept(&s, &ch, &numbered("lp", i, 20 * 1024));
    }
    let done = Arc::new(AtomicUsize::new(0));
    let publisher = {
        let (s, ch, done) = (s.clone(), ch.clone(), done.clone());
        thread::spawn(move || {
            for i in 200..500 {
                publish_kept(&s, &ch, &numbered("lp", i, 64 * 1024));
                done.store(i, Ordering::SeqCst);
            }
        })
    };
    let mut mid = first;
    let mut got = Vec::new();
    let mut max = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while got.len() < 500 && Instant::now() < deadline {
        let r = s.lp(&format!("{}&mid={mid}", cid(&ch)));
        max = max.max(rss(&s));
        if r.status == 304 {
            continue;
        }
        assert_eq!(r.status, 200, "{:?}", r.body_str());
        for (m, text) in fast_frames(&r.body) {
            got.push(body_index(&text, "lp").expect("numbered"));
            mid = m;
        }
    }
    publisher.join().expect("publisher");
    assert_eq!(got, (0..500).collect::<Vec<_>>(), "each once, in order");
    assert!(
        max <= base + 23 * MIB + 64 * MIB,
        "RSS +{} KiB",
        max.saturating_sub(base) / KIB
    );
    round_trip(&s);
    assert_rss(&s, base, 23 * MIB + 64 * MIB, "long poll backlog");
}

/// Reproduction 9b: a WebSocket resuming by mid (300 × 16 KiB backlog) while 300 live 8 KiB
/// messages arrive, the publisher at most 64 messages (512 KiB) ahead of the reader: each
/// once, in order, the reader never cut. Bound: stored bytes (~7 MiB) + 32 MiB.
#[test]
fn ws_resume_during_live_publishes() {
    let s = Arc::new(server().start());
    round_trip(&s);
    let base = rss(&s);
    let ch = new_id();
    let first = marker_mid(&s, &ch);
    for i in 0..300 {
        publish_kept(&s, &ch, &numbered("wr", i, 16 * 1024));
    }
    let received = Arc::new(AtomicUsize::new(0));
    let mut ws = RawWs::connect(&s.sub, &format!("/bitrix/subws/?{}&mid={first}", cid(&ch)));
    let publisher = {
        let (s, ch, received) = (s.clone(), ch.clone(), received.clone());
        thread::spawn(move || {
            for i in 300..600 {
                let paced = wait_until(Duration::from_secs(20), || {
                    received.load(Ordering::SeqCst) + 364 >= i
                });
                if !paced {
                    return;
                }
                publish_kept(&s, &ch, &numbered("wr", i, 8 * 1024));
            }
        })
    };
    let mut got = Vec::new();
    let mut max = 0;
    while got.len() < 600 {
        let d = match ws.next(Duration::from_secs(20)) {
            Got::Frame(0x1, d) => d,
            Got::Frame(0x9 | 0xA, _) => continue,
            other => panic!(
                "after {} messages: {other:?}; server log: {}",
                got.len(),
                s.stderr_text()
                    .lines()
                    .filter(|l| l.contains("slow") || l.contains("WARN"))
                    .collect::<Vec<_>>()
                    .join(" | ")
            ),
        };
        for (_, text) in fast_frames(&d) {
            got.push(body_index(&text, "wr").expect("numbered"));
        }
        received.store(got.len(), Ordering::SeqCst);
        max = max.max(rss(&s));
    }
    publisher.join().expect("publisher");
    assert_eq!(got, (0..600).collect::<Vec<_>>(), "each once, in order");
    assert!(
        max <= base + 7 * MIB + 32 * MIB,
        "RSS +{} KiB",
        max.saturating_sub(base) / KIB
    );
    round_trip(&s);
    assert_rss(&s, base, 7 * MIB + 32 * MIB, "ws resume");
}
