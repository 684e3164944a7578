//! Integration-test harness: starts the real `push-server` binary on per-test Unix sockets in a
//! short temp dir, and offers raw HTTP, long-poll, publish, WebSocket and v3-frame helpers.
//!
//! Rules every test follows: all resources are per test (dir, sockets, channel ids), every wait
//! has a deadline, and the server's stderr is printed when a test panics.
#![allow(dead_code)]

pub mod redis_server;
pub use redis_server::Redis;

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, KeyInit, Mac};
use tungstenite::protocol::WebSocketConfig;
use tungstenite::{Message, WebSocket};

/// The signing key every test server gets (letters and digits only).
pub const KEY: &str = "testKey42";
/// A valid 26-digit mid older than anything the server can assign (epoch 2001).
pub const OLD_MID: &str = "10000000000000000000000001";
/// The only `Expires` value the client accepts on a 304 (docs/protocol.md#long-poll).
pub const EXPIRES_304: &str = "Thu, 01 Jan 1973 11:11:01 GMT";

pub const BIN: &str = env!("CARGO_BIN_EXE_push-server");

static COUNTER: AtomicU64 = AtomicU64::new(0);

fn unique() -> u64 {
    COUNTER.fetch_add(1, Ordering::SeqCst)
}

/// Polls `cond` every 10 ms until it holds or `timeout` passes; returns whether it held.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

// ---------------------------------------------------------------------------------------------
// ids and signatures

/// A fresh random-looking 32-hex channel id, unique per call and per process.
pub fn new_id() -> String {
    use sha1::Digest;
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_nanos();
    let seed = format!("{}-{}-{}", std::process::id(), nanos, unique());
    let digest = sha1::Sha1::digest(seed.as_bytes());
    hex(&digest)[..32].to_string()
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Lowercase hex HMAC-SHA1(key, input).
pub fn sign_with(key: &str, input: &str) -> String {
    let mut mac = <Hmac<sha1::Sha1> as KeyInit>::new_from_slice(key.as_bytes()).expect("any key");
    mac.update(input.as_bytes());
    hex(&mac.finalize().into_bytes())
}

/// Lowercase hex HMAC-SHA256(key, input).
pub fn sign256_with(key: &str, input: &str) -> String {
    let mut mac = <Hmac<sha2::Sha256> as KeyInit>::new_from_slice(key.as_bytes()).expect("any key");
    mac.update(input.as_bytes());
    hex(&mac.finalize().into_bytes())
}

pub fn sign(input: &str) -> String {
    sign_with(KEY, input)
}

/// `<id>.<sig(id)>`: a signed private or shared item.
pub fn signed(id: &str) -> String {
    format!("{id}.{}", sign(id))
}

/// `<priv>:<pub>.<sig(priv:pub)>`: a signed pair item.
pub fn signed_pair(private: &str, public: &str) -> String {
    let pair = format!("{private}:{public}");
    format!("{pair}.{}", sign(&pair))
}

/// Percent-encodes `/` and `:` as the JS client's `encodeURIComponent` does.
pub fn enc(s: &str) -> String {
    s.replace(':', "%3A").replace('/', "%2F")
}

pub fn is_mid(s: &str) -> bool {
    s.len() == 26 && s.bytes().all(|b| b.is_ascii_digit())
}

// ---------------------------------------------------------------------------------------------
// temp dirs

/// A short, unique directory under /tmp, removed on drop. Unix socket paths must stay short.
pub struct TestDir {
    pub path: PathBuf,
}

impl TestDir {
    pub fn new() -> TestDir {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock after 1970")
            .subsec_nanos();
        let path = PathBuf::from(format!(
            "/tmp/pst{}-{}-{}",
            std::process::id(),
            unique(),
            nanos % 100_000
        ));
        std::fs::create_dir_all(&path).expect("create test dir");
        TestDir { path }
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
}

impl Default for TestDir {
    fn default() -> Self {
        TestDir::new()
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

// ---------------------------------------------------------------------------------------------
// server process

pub struct ServerBuilder {
    env: Vec<(String, String)>,
    unset: Vec<String>,
    args: Vec<String>,
    zero_config: bool,
    shell: Option<String>,
}

impl ServerBuilder {
    /// Starts the server through `/bin/sh -c '<script>; exec push-server'`, e.g. to set a
    /// resource limit first.
    pub fn shell_prefix(mut self, script: &str) -> Self {
        self.shell = Some(script.to_string());
        self
    }

    /// Sets (or overrides) one environment variable of the server.
    pub fn env(mut self, key: &str, value: impl AsRef<str>) -> Self {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.to_string(), value.as_ref().to_string()));
        self
    }

    /// Removes one of the default variables.
    pub fn unset(mut self, key: &str) -> Self {
        self.env.retain(|(k, _)| k != key);
        self.unset.push(key.to_string());
        self
    }

    pub fn arg(mut self, a: impl AsRef<str>) -> Self {
        self.args.push(a.as_ref().to_string());
        self
    }

    /// Zero-config mode: no SECURITY_KEY in env (the caller sets the listen addresses).
    pub fn zero_config(mut self) -> Self {
        self.zero_config = true;
        self.env.retain(|(k, _)| k != "SECURITY_KEY");
        self
    }

    /// Uses `redis` as the store (REDIS_SOCK).
    pub fn redis(self, redis: &Redis) -> Self {
        let sock = redis.sock.display().to_string();
        self.env("REDIS_SOCK", sock)
    }

    /// Starts the server and waits until both sockets accept connections.
    ///
    /// With `PUSH_TEST_STORE=redis` in the test's environment, a server that was given no
    /// store of its own gets a private redis-server: the whole protocol suite then runs
    /// against the Redis store too (`scripts/test.sh` runs it both ways).
    pub fn start(mut self) -> Server {
        let own_redis = (std::env::var("PUSH_TEST_STORE").as_deref() == Ok("redis")
            && !self.zero_config
            && !self
                .env
                .iter()
                .any(|(k, _)| k == "REDIS_SOCK" || k == "REDIS_URL" || k == "REDIS_SENTINELS"))
        .then(Redis::start);
        if let Some(r) = &own_redis {
            self = self.redis(r);
        }
        let dir = TestDir::new();
        let sub = dir.join("sub.sock");
        let pubs = dir.join("pub.sock");
        let mut env: Vec<(String, String)> =
            vec![("RUN_DIR".into(), dir.path.display().to_string())];
        if !self.zero_config {
            // Per test, like the sockets (docs/persistence.md: the default is
            // /var/lib/push-server); a test that restarts on one STATE_DIR sets its own.
            env.push(("STATE_DIR".into(), dir.join("state").display().to_string()));
            env.push(("SUB_SOCK".into(), sub.display().to_string()));
            env.push(("PUB_SOCK".into(), pubs.display().to_string()));
            env.push(("LOG_LEVEL".into(), "debug".into()));
            env.push(("SECURITY_KEY".into(), KEY.into()));
            env.push(("SUB_LISTEN".into(), String::new()));
            env.push(("PUB_LISTEN".into(), String::new()));
        }
        env.retain(|(k, _)| !self.unset.contains(k));
        for (k, v) in self.env {
            env.retain(|(ek, _)| *ek != k);
            env.push((k, v));
        }
        let key = env
            .iter()
            .find(|(k, _)| k == "SECURITY_KEY")
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        let (sub, pubs) = (
            socket_from(&env, "SUB_SOCK", sub),
            socket_from(&env, "PUB_SOCK", pubs),
        );
        let mut cmd = match &self.shell {
            Some(script) => {
                let mut c = Command::new("/bin/sh");
                c.arg("-c")
                    .arg(format!("{script}; exec \"$0\" \"$@\""))
                    .arg(BIN);
                c
            }
            None => Command::new(BIN),
        };
        let mut child = cmd
            .env_clear()
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn push-server");
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let readers = vec![
            spawn_reader(child.stdout.take().expect("piped stdout"), stdout.clone()),
            spawn_reader(child.stderr.take().expect("piped stderr"), stderr.clone()),
        ];
        let mut server = Server {
            child,
            dir,
            sub,
            pubs,
            key,
            stdout,
            stderr,
            readers,
            exit: None,
            redis: own_redis,
        };
        server.wait_ready();
        if server.redis.is_some() {
            // The suite's servers expect a usable store from the start.
            server.wait_store_up();
        }
        server
    }
}

fn socket_from(env: &[(String, String)], key: &str, default: PathBuf) -> PathBuf {
    env.iter()
        .find(|(k, v)| k == key && !v.is_empty())
        .map(|(_, v)| PathBuf::from(v))
        .unwrap_or(default)
}

fn spawn_reader(mut r: impl Read + Send + 'static, buf: Arc<Mutex<Vec<u8>>>) -> JoinHandle<()> {
    thread::spawn(move || {
        let mut chunk = [0u8; 4096];
        loop {
            match r.read(&mut chunk) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Ok(0) | Err(_) => break,
                Ok(n) => buf
                    .lock()
                    .expect("log buffer")
                    .extend_from_slice(&chunk[..n]),
            }
        }
    })
}

/// A running server; killed on drop, and its output printed when the test panicked.
pub struct Server {
    child: Child,
    pub dir: TestDir,
    pub sub: PathBuf,
    pub pubs: PathBuf,
    pub key: String,
    stdout: Arc<Mutex<Vec<u8>>>,
    stderr: Arc<Mutex<Vec<u8>>>,
    readers: Vec<JoinHandle<()>>,
    exit: Option<ExitStatus>,
    /// The private redis-server of a `PUSH_TEST_STORE=redis` run, stopped after the server.
    pub redis: Option<Redis>,
}

impl Server {
    pub fn builder() -> ServerBuilder {
        ServerBuilder {
            env: Vec::new(),
            unset: Vec::new(),
            args: Vec::new(),
            zero_config: false,
            shell: None,
        }
    }

    /// A server with default settings.
    pub fn start() -> Server {
        Server::builder().start()
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if UnixStream::connect(&self.sub).is_ok() && UnixStream::connect(&self.pubs).is_ok() {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                self.exit = Some(status);
                panic!(
                    "push-server exited before it was ready ({status}); stderr:\n{}",
                    self.stderr_text()
                );
            }
            if Instant::now() >= deadline {
                panic!(
                    "push-server did not accept on {} and {} within 10 s",
                    self.sub.display(),
                    self.pubs.display()
                );
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits until `/health` says the store is up (with Redis: connected and subscribed).
    pub fn wait_store_up(&self) {
        let up = wait_until(Duration::from_secs(10), || {
            self.pub_request(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n")
                .status
                == 200
        });
        assert!(
            up,
            "store not up within 10 s; stderr:\n{}",
            self.stderr_text()
        );
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().expect("log buffer")).into_owned()
    }

    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout.lock().expect("log buffer")).into_owned()
    }

    /// Sends a signal with the `kill` command.
    pub fn signal(&self, sig: &str) {
        let st = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(st.success(), "kill -{sig} failed");
    }

    /// Waits for the process to exit; `None` if it is still running after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if self.exit.is_some() {
            return self.exit;
        }
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                self.exit = Some(st);
                return self.exit;
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGTERM and wait (up to 10 s) for exit; panics if it does not exit.
    pub fn stop(&mut self) -> ExitStatus {
        self.signal("TERM");
        match self.wait_exit(Duration::from_secs(10)) {
            Some(st) => st,
            None => panic!("push-server did not exit within 10 s of SIGTERM"),
        }
    }

    // ---- HTTP shortcuts

    pub fn sub_conn(&self) -> Conn {
        Conn::open(&self.sub)
    }

    pub fn pub_conn(&self) -> Conn {
        Conn::open(&self.pubs)
    }

    /// One raw request on a fresh sub-socket connection.
    pub fn sub_request(&self, raw: &[u8]) -> Response {
        http(&self.sub, raw)
    }

    /// One raw request on a fresh pub-socket connection.
    pub fn pub_request(&self, raw: &[u8]) -> Response {
        http(&self.pubs, raw)
    }

    /// `POST /bitrix/pub/?CHANNEL_ID=<channels>` as PHP sends it (HTTP/1.0, form Content-Type).
    pub fn publish(&self, channels: &str, body: &str, expiry: Option<u64>) -> Response {
        self.pub_request(&publish_request(channels, body.as_bytes(), expiry))
    }

    /// Publishes and asserts the documented success answer (200, empty body).
    pub fn publish_ok(&self, channels: &str, body: &str, expiry: Option<u64>) {
        let r = self.publish(channels, body, expiry);
        assert_eq!(
            r.status,
            200,
            "publish to {channels} should answer 200, got {} {:?}",
            r.status,
            r.body_str()
        );
        assert!(
            r.body.is_empty(),
            "publish 200 body should be empty, got {:?}",
            r.body_str()
        );
    }

    /// The legacy online query `GET /bitrix/pub/?CHANNEL_ID=a/b` with the same list as body.
    pub fn online(&self, ids: &[&str]) -> Response {
        let list = ids.join("/");
        let raw = format!(
            "GET /bitrix/pub/?CHANNEL_ID={list} HTTP/1.0\r\nHost: 127.0.0.1:8895\r\nContent-Length: {}\r\n\r\n{list}",
            list.len()
        );
        self.pub_request(raw.as_bytes())
    }

    /// Waits until the online query reports `id`: the server has registered a subscriber on it.
    pub fn wait_online(&self, id: &str) {
        let mut last = None;
        let ok = wait_until(Duration::from_secs(5), || {
            let r = self.online(&[id]);
            let hit = r.status == 200 && r.body_str().contains(id);
            last = Some(r);
            hit
        });
        if !ok {
            let r = last.expect("at least one query");
            panic!(
                "channel {id} never reported online by GET /bitrix/pub/ (used to sync the test): last answer {} {:?}",
                r.status,
                r.body_str()
            );
        }
    }

    /// Starts a long poll (HTTP/1.0 `GET /bitrix/sub/?<query>`) and returns the open connection.
    pub fn lp_begin(&self, query: &str) -> Conn {
        let mut c = self.sub_conn();
        c.send(&lp_request("/bitrix/sub/", query));
        c
    }

    /// One complete long poll on `/bitrix/sub/?<query>` (blocks until the server answers).
    pub fn lp(&self, query: &str) -> Response {
        self.lp_begin(query).read_response()
    }

    /// Opens a v3 WebSocket on `/bitrix/subws/?<query>`; panics if the handshake fails.
    pub fn ws(&self, query: &str) -> Ws {
        self.ws_path(&format!("/bitrix/subws/?{query}"))
    }

    pub fn ws_path(&self, path_and_query: &str) -> Ws {
        match Ws::connect(&self.sub, path_and_query, None) {
            Ok((ws, _)) => ws,
            Err(e) => panic!("WebSocket handshake on {path_and_query} failed: {e}"),
        }
    }

    /// `GET /server-stat/` parsed as JSON.
    pub fn server_stat(&self) -> serde_json::Value {
        let r = self.pub_request(b"GET /server-stat/ HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
        assert_eq!(r.status, 200, "GET /server-stat/: {:?}", r.body_str());
        serde_json::from_slice(&r.body)
            .unwrap_or_else(|e| panic!("server-stat is not JSON ({e}): {:?}", r.body_str()))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.exit.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        if thread::panicking() {
            eprintln!(
                "===== push-server stdout =====\n{}\n===== push-server stderr =====\n{}\n===== end =====",
                self.stdout_text(),
                self.stderr_text()
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// raw HTTP

pub fn publish_request(channels: &str, body: &[u8], expiry: Option<u64>) -> Vec<u8> {
    let mut head = format!(
        "POST /bitrix/pub/?CHANNEL_ID={channels} HTTP/1.0\r\nHost: 127.0.0.1:8895\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(e) = expiry {
        head.push_str(&format!("Message-Expiry: {e}\r\n"));
    }
    head.push_str("\r\n");
    let mut raw = head.into_bytes();
    raw.extend_from_slice(body);
    raw
}

/// A long-poll GET as nginx forwards `/bitrix/sub/` (HTTP/1.0, `Connection: close`).
pub fn lp_request(path: &str, query: &str) -> Vec<u8> {
    format!("GET {path}?{query} HTTP/1.0\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .into_bytes()
}

#[derive(Debug, Clone)]
pub struct Response {
    pub version: String,
    pub status: u16,
    pub reason: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The answer used `Transfer-Encoding: chunked`.
    pub chunked: bool,
}

impl Response {
    /// First header with this name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn body_str(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body parsed as v3 frames; panics with the body when it is not.
    pub fn frames(&self) -> Vec<Frame> {
        parse_frames(&self.body_str())
            .unwrap_or_else(|e| panic!("body is not v3 frames: {e}\nbody: {:?}", self.body_str()))
    }

    /// Asserts the documented error answer: status, `text/plain`, CORS header and exact body.
    pub fn assert_error(&self, status: u16, body: &str) {
        assert_eq!(
            (self.status, self.body_str().as_str()),
            (status, body),
            "expected error {status} {body:?}, got {} {:?}",
            self.status,
            self.body_str()
        );
        assert_content_type_text(self);
        assert_eq!(
            self.header("Access-Control-Allow-Origin"),
            Some("*"),
            "error answer lacks Access-Control-Allow-Origin: * ({:?})",
            self.headers
        );
    }
}

pub fn assert_content_type_text(r: &Response) {
    let ct = r.header("Content-Type").unwrap_or("");
    assert!(
        ct == "text/plain" || ct.starts_with("text/plain;"),
        "Content-Type should be text/plain, got {ct:?} (status {})",
        r.status
    );
}

/// One request on a fresh connection to `sock`; reads one response.
pub fn http(sock: &Path, raw: &[u8]) -> Response {
    let mut c = Conn::open(sock);
    c.send(raw);
    c.read_response()
}

/// A client connection with its own read buffer (for keep-alive and partial reads).
pub struct Conn {
    pub stream: UnixStream,
    buf: Vec<u8>,
}

impl Conn {
    pub fn open(sock: &Path) -> Conn {
        let stream =
            UnixStream::connect(sock).unwrap_or_else(|e| panic!("connect {}: {e}", sock.display()));
        stream
            .set_read_timeout(Some(Duration::from_secs(15)))
            .expect("set timeout");
        Conn {
            stream,
            buf: Vec::new(),
        }
    }

    pub fn set_timeout(&mut self, t: Duration) {
        self.stream.set_read_timeout(Some(t)).expect("set timeout");
    }

    pub fn send(&mut self, raw: &[u8]) {
        self.stream.write_all(raw).expect("write request");
    }

    pub fn try_send(&mut self, raw: &[u8]) -> io::Result<()> {
        self.stream.write_all(raw)
    }

    fn fill(&mut self) -> io::Result<usize> {
        let mut chunk = [0u8; 65536];
        let n = loop {
            match self.stream.read(&mut chunk) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                r => break r?,
            }
        };
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n)
    }

    /// Reads the response head only (up to the blank line) and returns it raw.
    pub fn read_head_raw(&mut self) -> io::Result<Vec<u8>> {
        loop {
            if let Some(end) = find(&self.buf, b"\r\n\r\n") {
                let head: Vec<u8> = self.buf.drain(..end + 4).collect();
                return Ok(head);
            }
            if self.fill()? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "connection closed before a complete response head (got {:?})",
                        String::from_utf8_lossy(&self.buf)
                    ),
                ));
            }
        }
    }

    /// Reads one response; panics with a clear message on timeout or early close.
    pub fn read_response(&mut self) -> Response {
        self.try_read_response()
            .unwrap_or_else(|e| panic!("reading HTTP response failed: {e}"))
    }

    pub fn try_read_response(&mut self) -> io::Result<Response> {
        let head = self.read_head_raw()?;
        let head = String::from_utf8_lossy(&head).into_owned();
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or("");
        let mut parts = status_line.splitn(3, ' ');
        let version = parts.next().unwrap_or("").to_string();
        let status: u16 = parts.next().and_then(|s| s.parse().ok()).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("bad status line {status_line:?}"),
            )
        })?;
        let reason = parts.next().unwrap_or("").to_string();
        let headers: Vec<(String, String)> = lines
            .filter(|l| !l.is_empty())
            .filter_map(|l| {
                l.split_once(':')
                    .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            })
            .collect();
        let get = |n: &str| {
            headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(n))
                .map(|(_, v)| v.clone())
        };
        let chunked = get("Transfer-Encoding")
            .map(|v| v.to_ascii_lowercase().contains("chunked"))
            .unwrap_or(false);
        let body = if status == 304 || status == 204 || (100..200).contains(&status) {
            Vec::new()
        } else if chunked {
            self.read_chunked()?
        } else if let Some(len) = get("Content-Length") {
            let len: usize = len.parse().map_err(|_| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("bad Content-Length {len:?}"),
                )
            })?;
            while self.buf.len() < len {
                if self.fill()? == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("body shorter than Content-Length {len}"),
                    ));
                }
            }
            self.buf.drain(..len).collect()
        } else {
            while self.fill()? > 0 {}
            std::mem::take(&mut self.buf)
        };
        Ok(Response {
            version,
            status,
            reason,
            headers,
            body,
            chunked,
        })
    }

    fn read_chunked(&mut self) -> io::Result<Vec<u8>> {
        let mut body = Vec::new();
        loop {
            let line_end = loop {
                if let Some(p) = find(&self.buf, b"\r\n") {
                    break p;
                }
                if self.fill()? == 0 {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
            };
            let line: Vec<u8> = self.buf.drain(..line_end + 2).collect();
            let size_txt = String::from_utf8_lossy(&line[..line_end]).into_owned();
            let size = usize::from_str_radix(size_txt.split(';').next().unwrap_or("").trim(), 16)
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad chunk size"))?;
            while self.buf.len() < size + 2 {
                if self.fill()? == 0 {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
            }
            body.extend(self.buf.drain(..size));
            self.buf.drain(..2);
            if size == 0 {
                return Ok(body);
            }
        }
    }

    /// Reads until EOF (or error); returns everything not yet consumed. Used to check that the
    /// server closed the connection, and that nothing unexpected followed.
    pub fn read_to_end(&mut self) -> io::Result<Vec<u8>> {
        loop {
            match self.fill() {
                Ok(0) => return Ok(std::mem::take(&mut self.buf)),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {
                    return Ok(std::mem::take(&mut self.buf));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// True when the server closed the connection within `timeout` (EOF or reset).
    pub fn closed_within(&mut self, timeout: Duration) -> bool {
        self.set_timeout(timeout);
        self.read_to_end().is_ok()
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

// ---------------------------------------------------------------------------------------------
// v3 frames

pub const NMS: &str = "#!NGINXNMS!#";
pub const NME: &str = "#!NGINXNME!#";

/// One v3 frame: the fixed fields plus the raw spliced `text`.
#[derive(Debug, Clone, PartialEq)]
pub struct Frame {
    pub id: u64,
    pub mid: String,
    pub channel: String,
    pub tag: String,
    pub time: String,
    /// The body exactly as spliced between `"text":` and the closing `}`.
    pub text: String,
}

/// Parses a payload that must consist of v3 frames only (no bytes between or around them), with
/// the fields in the documented order. `text` is taken raw, so non-JSON bodies work.
pub fn parse_frames(payload: &str) -> Result<Vec<Frame>, String> {
    let mut out = Vec::new();
    let mut rest = payload;
    if rest.is_empty() {
        return Err("empty payload (an empty 200 / WS message resets the client's mid)".into());
    }
    while !rest.is_empty() {
        let after = rest
            .strip_prefix(NMS)
            .ok_or_else(|| format!("expected {NMS} at {:?}", truncate(rest)))?;
        let end = after
            .find(NME)
            .ok_or_else(|| format!("missing {NME} after {:?}", truncate(after)))?;
        out.push(parse_object(&after[..end])?);
        rest = &after[end + NME.len()..];
    }
    Ok(out)
}

fn truncate(s: &str) -> String {
    s.chars().take(120).collect()
}

fn parse_object(obj: &str) -> Result<Frame, String> {
    let err = |what: &str| format!("frame object {:?}: {what}", truncate(obj));
    let s = obj
        .strip_prefix("{\"id\":")
        .ok_or_else(|| err("must start with {\"id\":"))?;
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    let id: u64 = s[..digits].parse().map_err(|_| err("id not an integer"))?;
    let s = s[digits..]
        .strip_prefix(",\"mid\":\"")
        .ok_or_else(|| err("expected ,\"mid\":\" after id"))?;
    let (mid, s) = take_string(s).ok_or_else(|| err("bad mid"))?;
    let s = s
        .strip_prefix(",\"channel\":\"")
        .ok_or_else(|| err("expected ,\"channel\":\" after mid"))?;
    let (channel, s) = take_string(s).ok_or_else(|| err("bad channel"))?;
    let s = s
        .strip_prefix(",\"tag\":\"")
        .ok_or_else(|| err("expected ,\"tag\":\" after channel"))?;
    let (tag, s) = take_string(s).ok_or_else(|| err("bad tag"))?;
    let s = s
        .strip_prefix(",\"time\":\"")
        .ok_or_else(|| err("expected ,\"time\":\" after tag"))?;
    let (time, s) = take_string(s).ok_or_else(|| err("bad time"))?;
    let s = s
        .strip_prefix(",\"text\":")
        .ok_or_else(|| err("expected ,\"text\": after time"))?;
    let text = s
        .strip_suffix('}')
        .ok_or_else(|| err("must end with }"))?
        .to_string();
    if serde_json::from_str::<serde_json::Value>(&text).is_ok() {
        serde_json::from_str::<serde_json::Value>(obj)
            .map_err(|e| err(&format!("not JSON: {e}")))?;
    }
    Ok(Frame {
        id,
        mid,
        channel,
        tag,
        time,
        text,
    })
}

/// Takes a simple JSON string body (no escapes expected in these fields) up to its quote.
fn take_string(s: &str) -> Option<(String, &str)> {
    let end = s.find('"')?;
    Some((s[..end].to_string(), &s[end + 1..]))
}

// ---------------------------------------------------------------------------------------------
// WebSocket client

#[derive(Debug)]
pub enum WsEvent {
    Text(String),
    Binary(Vec<u8>),
    Ping,
    Pong,
    /// A close frame: code and reason (code 1005 when the frame had no payload).
    Close(u16, String),
    /// Nothing arrived before the timeout.
    Timeout,
    /// The connection ended without (further) close frame: EOF, reset, protocol error.
    Gone(String),
}

pub struct Ws {
    pub ws: WebSocket<UnixStream>,
    /// Frames received but not yet handed out by `frames`.
    pending: Vec<Frame>,
    /// Raw text messages in arrival order (for "one WS message" checks).
    pub messages: Vec<String>,
}

impl Ws {
    pub fn connect(
        sock: &Path,
        path_and_query: &str,
        config: Option<WebSocketConfig>,
    ) -> Result<(Ws, tungstenite::handshake::client::Response), String> {
        let stream = UnixStream::connect(sock).map_err(|e| format!("connect: {e}"))?;
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(|e| e.to_string())?;
        let url = format!("ws://localhost{path_and_query}");
        let (ws, resp) = tungstenite::client::client_with_config(url.as_str(), stream, config)
            .map_err(|e| format!("{e}"))?;
        Ok((
            Ws {
                ws,
                pending: Vec::new(),
                messages: Vec::new(),
            },
            resp,
        ))
    }

    /// Asserts that no data message and no close arrives for `period` (pings are fine).
    pub fn expect_silence(&mut self, period: Duration) {
        let end = Instant::now() + period;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            match self.recv(left) {
                WsEvent::Timeout => return,
                WsEvent::Ping | WsEvent::Pong => {}
                other => panic!("expected silence for {period:?}, got {other:?}"),
            }
        }
    }

    /// Next event within `timeout`.
    pub fn recv(&mut self, timeout: Duration) -> WsEvent {
        self.ws
            .get_ref()
            .set_read_timeout(Some(timeout.max(Duration::from_millis(1))))
            .expect("set timeout");
        let read = loop {
            match self.ws.read() {
                Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                r => break r,
            }
        };
        match read {
            Ok(Message::Text(t)) => WsEvent::Text(t.as_str().to_string()),
            Ok(Message::Binary(b)) => WsEvent::Binary(b.to_vec()),
            Ok(Message::Ping(_)) => WsEvent::Ping,
            Ok(Message::Pong(_)) => WsEvent::Pong,
            Ok(Message::Close(Some(cf))) => {
                WsEvent::Close(u16::from(cf.code), cf.reason.as_str().to_string())
            }
            Ok(Message::Close(None)) => WsEvent::Close(1005, String::new()),
            Ok(Message::Frame(_)) => WsEvent::Gone("raw frame".into()),
            Err(tungstenite::Error::Io(e))
                if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::TimedOut =>
            {
                WsEvent::Timeout
            }
            Err(e) => WsEvent::Gone(e.to_string()),
        }
    }

    /// Next data message (text) within `timeout`, skipping pings/pongs; panics on anything else.
    pub fn next_text(&mut self, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.recv(left) {
                WsEvent::Text(t) => {
                    self.messages.push(t.clone());
                    return t;
                }
                WsEvent::Ping | WsEvent::Pong => continue,
                WsEvent::Timeout => panic!("no WebSocket message within {timeout:?}"),
                other => panic!("expected a text WebSocket message, got {other:?}"),
            }
        }
    }

    /// Collects exactly `n` v3 frames (across WS messages) within `timeout`; panics otherwise.
    pub fn frames(&mut self, n: usize, timeout: Duration) -> Vec<Frame> {
        let deadline = Instant::now() + timeout;
        while self.pending.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                panic!(
                    "expected {n} v3 frames within {timeout:?}, got {}: {:?}",
                    self.pending.len(),
                    self.pending.iter().map(|f| &f.text).collect::<Vec<_>>()
                );
            }
            match self.recv(left) {
                WsEvent::Text(t) => {
                    let frames = parse_frames(&t).unwrap_or_else(|e| {
                        panic!("WS text message is not made of v3 frames: {e}\nmessage: {t:?}")
                    });
                    self.messages.push(t);
                    self.pending.extend(frames);
                }
                WsEvent::Ping | WsEvent::Pong | WsEvent::Timeout => {}
                other => panic!(
                    "while waiting for {n} frames (have {}): got {other:?}",
                    self.pending.len()
                ),
            }
        }
        self.pending.drain(..n).collect()
    }

    /// Collects frames until one whose text equals `marker`; returns all frames up to and
    /// including it.
    pub fn frames_until(&mut self, marker: &str, timeout: Duration) -> Vec<Frame> {
        let deadline = Instant::now() + timeout;
        let mut got = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                panic!(
                    "marker {marker:?} not received within {timeout:?}; got {:?}",
                    got.iter().map(|f: &Frame| &f.text).collect::<Vec<_>>()
                );
            }
            let f = self.frames(1, left).remove(0);
            let done = f.text == marker;
            got.push(f);
            if done {
                return got;
            }
        }
    }

    /// Waits for a close frame within `timeout`, skipping data; returns (code, reason).
    pub fn expect_close(&mut self, timeout: Duration) -> (u16, String) {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.recv(left) {
                WsEvent::Close(c, r) => {
                    // Send the close reply now, as a browser does (tungstenite queues it).
                    let _ = self.ws.flush();
                    return (c, r);
                }
                WsEvent::Text(_) | WsEvent::Binary(_) | WsEvent::Ping | WsEvent::Pong => {}
                WsEvent::Timeout => panic!("no close frame within {timeout:?}"),
                WsEvent::Gone(e) => panic!("connection ended without a close frame: {e}"),
            }
        }
    }

    /// Asserts that nothing but pings arrives for `d` (the socket stays open and quiet).
    pub fn assert_quiet(&mut self, d: Duration) {
        let deadline = Instant::now() + d;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            match self.recv(left) {
                WsEvent::Timeout => return,
                WsEvent::Ping | WsEvent::Pong => {}
                other => panic!("expected a quiet socket, got {other:?}"),
            }
        }
    }

    pub fn send_text(&mut self, t: &str) -> Result<(), tungstenite::Error> {
        self.ws.send(Message::text(t.to_string()))
    }
}

/// Seconds since the epoch.
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

/// A free loopback TCP port (bound and released; small race accepted).
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local addr").port()
}

pub const SEC: Duration = Duration::from_secs(1);
pub const WAIT: Duration = Duration::from_secs(5);

/// The outcome of a short-lived command.
#[derive(Debug)]
pub struct RunOutput {
    /// Exit code; `None` when it was killed after the timeout (or by a signal).
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

pub trait RunWithTimeout {
    fn run_with_timeout(&mut self, t: Duration) -> RunOutput;
}

impl RunWithTimeout for Command {
    /// Runs to completion with piped output, killed after `t`.
    fn run_with_timeout(&mut self, t: Duration) -> RunOutput {
        let mut child = self
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        let out = Arc::new(Mutex::new(Vec::new()));
        let err = Arc::new(Mutex::new(Vec::new()));
        let readers = [
            spawn_reader(child.stdout.take().expect("piped stdout"), out.clone()),
            spawn_reader(child.stderr.take().expect("piped stderr"), err.clone()),
        ];
        let deadline = Instant::now() + t;
        let status = loop {
            if let Some(st) = child.try_wait().expect("try_wait") {
                break Some(st);
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            thread::sleep(Duration::from_millis(10));
        };
        for r in readers {
            let _ = r.join();
        }
        let text = |b: &Arc<Mutex<Vec<u8>>>| {
            String::from_utf8_lossy(&b.lock().expect("buffer")).into_owned()
        };
        RunOutput {
            code: status.and_then(|s| s.code()),
            stdout: text(&out),
            stderr: text(&err),
        }
    }
}
