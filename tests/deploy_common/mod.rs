//! Helpers for the deployment tests (`tests/nginx.rs`, `tests/packaging.rs`): temp dirs, free
//! ports, our server and a real nginx as child processes, a tiny HTTP/1.1 client. Every wait has
//! a deadline; processes are killed on drop and their logs printed when the test panicked.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Root of the repository (where Cargo.toml is).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A directory under the system temp dir, removed on drop (kept when the test panicked, so
/// the logs in it can be read).
pub struct TempDir {
    pub path: PathBuf,
}

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static SEQ: AtomicUsize = AtomicUsize::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path = std::env::temp_dir().join(format!(
            "push-deploy-{tag}-{}-{}-{nanos}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path).expect("create temp dir");
        // nginx workers may run as another user: let them traverse to the sockets.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
            .expect("chmod temp dir");
        TempDir { path }
    }

    pub fn join(&self, p: &str) -> PathBuf {
        self.path.join(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("(test files kept in {})", self.path.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// A loopback TCP port that was free a moment ago.
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().unwrap().port()
}

/// Polls `f` every 20 ms until it returns `Some`, or panics with `what` after `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `text` with every `from` replaced by `to`; panics when `from` does not occur, so a shipped
/// file that changes its defaults breaks the test instead of silently testing something else.
pub fn replace_required(text: &str, from: &str, to: &str) -> String {
    assert!(
        text.contains(from),
        "expected `{from}` in the shipped nginx snippet"
    );
    text.replace(from, to)
}

fn print_file(label: &str, path: &Path) {
    match std::fs::read_to_string(path) {
        Ok(s) => eprintln!(
            "----- {label} ({}) -----\n{s}\n----- end {label} -----",
            path.display()
        ),
        Err(e) => eprintln!("----- {label}: cannot read {}: {e}", path.display()),
    }
}

/// Sends SIGTERM to `child`, waits up to `grace`, then SIGKILLs it.
fn stop_child(child: &mut Child, grace: Duration) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .stderr(Stdio::null())
        .status();
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

// ---------------------------------------------------------------------------------------------
// our server

pub struct PushServer {
    child: Child,
    pub stderr_path: PathBuf,
    pub sub_sock: PathBuf,
    pub pub_sock: PathBuf,
    pub key: String,
}

impl PushServer {
    /// Starts `push-server` with a clean environment: Unix sockets in `<dir>/run`, mode 0666
    /// so nginx workers of any user can connect, debug logs to `<dir>/server.log`. `extra` adds
    /// or overrides environment variables. Returns once both sockets accept connections.
    pub fn start(dir: &TempDir, extra: &[(&str, &str)]) -> PushServer {
        let run = dir.join("run");
        std::fs::create_dir_all(&run).unwrap();
        std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o755)).unwrap();
        let sub_sock = run.join("sub.sock");
        let pub_sock = run.join("pub.sock");
        let stderr_path = dir.join("server.log");
        let key = "TestKey0123456789abcdef".to_string();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_push-server"));
        cmd.env_clear()
            .env("RUN_DIR", &run)
            .env("STATE_DIR", dir.join("state"))
            .env("SUB_SOCK", &sub_sock)
            .env("PUB_SOCK", &pub_sock)
            .env("SECURITY_KEY", &key)
            .env("SUB_LISTEN", "")
            .env("PUB_LISTEN", "")
            .env("SOCK_MODE", "0666")
            .env("LOG_LEVEL", "debug");
        for (k, v) in extra {
            cmd.env(k, v);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr_path).unwrap())
            .spawn()
            .expect("spawn push-server");
        let mut server = PushServer {
            child,
            stderr_path,
            sub_sock,
            pub_sock,
            key,
        };
        let (sub, publ) = (server.sub_sock.clone(), server.pub_sock.clone());
        wait_for("push-server sockets", Duration::from_secs(15), || {
            if let Ok(Some(status)) = server.child.try_wait() {
                panic!("push-server exited early: {status}");
            }
            let ok = std::os::unix::net::UnixStream::connect(&sub).is_ok()
                && std::os::unix::net::UnixStream::connect(&publ).is_ok();
            ok.then_some(())
        });
        server
    }

    /// Stops the server (SIGTERM, then SIGKILL after 5 s); dropping it later is harmless.
    pub fn stop(&mut self) {
        stop_child(&mut self.child, Duration::from_secs(5));
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// How many log lines contain `needle`.
    pub fn log_count(&self, needle: &str) -> usize {
        self.log().lines().filter(|l| l.contains(needle)).count()
    }

    /// Waits until more than `before` log lines contain `needle`.
    pub fn wait_log_count(&self, needle: &str, before: usize) {
        wait_for(
            &format!("server log line containing `{needle}`"),
            Duration::from_secs(10),
            || (self.log_count(needle) > before).then_some(()),
        );
    }

    /// `<id>.<hex hmac-sha1(key, id)>`, the signed CHANNEL_ID value of a subscriber.
    pub fn signed(&self, id: &str) -> String {
        format!("{id}.{}", self.sign(id))
    }

    /// The hex HMAC-SHA1 of `input` with the server's key (pairs `priv:pub`, `public:<pub>`).
    pub fn sign(&self, input: &str) -> String {
        let signer = push_server::signature::Signer::new(
            push_server::signature::Algo::Sha1,
            self.key.as_bytes(),
        );
        signer.sign_hex(input.as_bytes())
    }
}

impl Drop for PushServer {
    fn drop(&mut self) {
        stop_child(&mut self.child, Duration::from_secs(5));
        if std::thread::panicking() {
            print_file("push-server stderr", &self.stderr_path);
        }
    }
}

/// A random 32-hex-digit channel id.
pub fn channel_id() -> String {
    static SEQ: AtomicUsize = AtomicUsize::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let n = SEQ.fetch_add(1, Ordering::Relaxed) as u128;
    let v = nanos ^ (u128::from(std::process::id()) << 64) ^ (n << 100);
    format!("{v:032x}")
}

// ---------------------------------------------------------------------------------------------
// nginx

pub fn nginx_binary() -> PathBuf {
    for p in ["/usr/sbin/nginx", "/usr/bin/nginx", "/usr/local/sbin/nginx"] {
        if Path::new(p).exists() {
            return PathBuf::from(p);
        }
    }
    if let Ok(out) = Command::new("sh").args(["-c", "command -v nginx"]).output()
        && out.status.success()
    {
        let s = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if !s.is_empty() {
            return PathBuf::from(s);
        }
    }
    panic!("nginx not found: run scripts/test.sh, which installs it (apt-get install nginx)");
}

/// Renders the shipped snippets (`nginx/`, the socket layout) for a private nginx in front of
/// `server`: the three files go to `<dir>/nginx/`, and the returned nginx.conf includes them,
/// with the public server on `public` (plus `public_extra` inside its `server { }`) and the
/// internal publish server on `internal` instead of 8895. Panics when a shipped default it
/// replaces has moved, so a changed snippet breaks the test instead of testing something else.
pub fn shipped_nginx_conf(
    dir: &TempDir,
    server: &PushServer,
    public: u16,
    internal: u16,
    public_extra: &str,
) -> String {
    let read = |name: &str| {
        let path = repo_root().join("nginx").join(name);
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    };
    let ndir = dir.join("nginx");
    std::fs::create_dir_all(&ndir).unwrap();
    let http = replace_required(
        &read("push-server-http.conf"),
        "unix:/tmp/push-server/sub.sock",
        &format!("unix:{}", server.sub_sock.display()),
    );
    let http = replace_required(
        &http,
        "unix:/tmp/push-server/pub.sock",
        &format!("unix:{}", server.pub_sock.display()),
    );
    let pub_server = replace_required(
        &read("push-server-pub-server.conf"),
        "listen 127.0.0.1:8895",
        &format!("listen 127.0.0.1:{internal}"),
    );
    std::fs::write(ndir.join("push-server-http.conf"), http).unwrap();
    std::fs::write(
        ndir.join("push-server-sub-locations.conf"),
        read("push-server-sub-locations.conf"),
    )
    .unwrap();
    std::fs::write(ndir.join("push-server-pub-server.conf"), pub_server).unwrap();
    let n = ndir.display();
    format!(
        "worker_processes 1;
master_process off;
daemon off;
pid {n}/nginx.pid;
error_log {n}/error.log info;
events {{ worker_connections 256; }}
http {{
    access_log {n}/access.log;
    client_body_temp_path {n}/tmp/client_body;
    proxy_temp_path {n}/tmp/proxy;
    fastcgi_temp_path {n}/tmp/fastcgi;
    uwsgi_temp_path {n}/tmp/uwsgi;
    scgi_temp_path {n}/tmp/scgi;
    include {n}/push-server-http.conf;
    include {n}/push-server-pub-server.conf;
    server {{
        listen 127.0.0.1:{public};
        server_name _;
        include {n}/push-server-sub-locations.conf;
{public_extra}
        location / {{ return 404; }}
    }}
}}
"
    )
}

pub struct Nginx {
    child: Child,
    pub dir: PathBuf,
}

impl Nginx {
    /// Writes `conf` (a complete nginx.conf) to `<dir>/nginx/nginx.conf`, starts nginx in the
    /// foreground with that prefix and waits until every port in `ports` accepts connections.
    pub fn start(dir: &TempDir, conf: &str, ports: &[u16]) -> Nginx {
        let bin = nginx_binary();
        let ndir = dir.join("nginx");
        std::fs::create_dir_all(ndir.join("tmp")).unwrap();
        let conf_path = ndir.join("nginx.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let mut cmd = Command::new(&bin);
        cmd.arg("-p")
            .arg(format!("{}/", ndir.display()))
            .arg("-c")
            .arg(&conf_path);
        // -e (nginx >= 1.19.5) keeps nginx away from the system error log before it has read
        // the config; older builds just warn when that log is not writable.
        let help = Command::new(&bin).arg("-h").output();
        if let Ok(h) = help
            && String::from_utf8_lossy(&h.stderr).contains("-e filename")
        {
            cmd.arg("-e").arg(ndir.join("error.log"));
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(ndir.join("stdout.log")).unwrap())
            .stderr(std::fs::File::create(ndir.join("stderr.log")).unwrap())
            .spawn()
            .expect("spawn nginx");
        let mut nginx = Nginx { child, dir: ndir };
        wait_for("nginx listening", Duration::from_secs(15), || {
            if let Ok(Some(status)) = nginx.child.try_wait() {
                panic!("nginx exited early: {status}");
            }
            ports
                .iter()
                .all(|p| TcpStream::connect(("127.0.0.1", *p)).is_ok())
                .then_some(())
        });
        nginx
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // master_process off: one process, so killing it leaves no workers behind.
        stop_child(&mut self.child, Duration::from_secs(5));
        if std::thread::panicking() {
            print_file("nginx stderr", &self.dir.join("stderr.log"));
            print_file("nginx error.log", &self.dir.join("error.log"));
            print_file("nginx.conf", &self.dir.join("nginx.conf"));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP client

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Opens a connection with a read timeout (the deadline of every read on it).
pub fn connect(port: u16, timeout: Duration) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", port)).expect("connect to nginx");
    s.set_read_timeout(Some(timeout)).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

/// Writes one HTTP/1.1 request with `Connection: close`.
pub fn send_request(
    s: &mut TcpStream,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) {
    let mut req = format!("{method} {target} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    for (n, v) in headers {
        req.push_str(&format!("{n}: {v}\r\n"));
    }
    let has_length = headers
        .iter()
        .any(|(n, _)| n.eq_ignore_ascii_case("content-length"));
    if !has_length && (!body.is_empty() || method == "POST") {
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    s.write_all(body).unwrap();
}

/// Reads a whole response (until EOF; the request said `Connection: close`). Panics when the
/// read timeout of the stream passes first.
pub fn read_response(s: &mut TcpStream) -> Response {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => panic!(
                "reading the response failed ({e}); got so far: {:?}",
                String::from_utf8_lossy(&buf)
            ),
        }
    }
    let _ = s.shutdown(Shutdown::Both);
    parse_response(&buf)
}

/// One request, one response, with `timeout` as the deadline for the answer.
pub fn request(
    port: u16,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    timeout: Duration,
) -> Response {
    let mut s = connect(port, timeout);
    send_request(&mut s, method, target, headers, body);
    read_response(&mut s)
}

fn parse_response(buf: &[u8]) -> Response {
    let end = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no response head in {:?}", String::from_utf8_lossy(buf)));
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        .collect();
    let raw = &buf[end + 4..];
    let chunked = headers.iter().any(|(n, v)| {
        n.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked")
    });
    let body = if chunked { dechunk(raw) } else { raw.to_vec() };
    Response {
        status,
        headers,
        body,
    }
}

fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = raw.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size_str = String::from_utf8_lossy(&raw[..eol]);
        let size =
            usize::from_str_radix(size_str.split(';').next().unwrap_or("").trim(), 16).unwrap_or(0);
        raw = &raw[eol + 2..];
        if size == 0 || raw.len() < size {
            return out;
        }
        out.extend_from_slice(&raw[..size]);
        raw = &raw[(size + 2).min(raw.len())..];
    }
}
