//! `push-server check` and `push-server sign`: an administrator's end-to-end test of a
//! deployment, the way the portal uses it (docs/operations.md, "Checking a deployment").
//!
//! `check` reads the same configuration the server reads, signs fresh channels with its key,
//! subscribes by long poll and by WebSocket (through nginx when `--sub-url` is given, else on
//! `SUB_SOCK`), publishes as the portal's PHP does (a v3 text publish, a signed v4 protobuf
//! batch, and a large text message), and checks that every message arrives. Each step prints
//! one line with the time it took; a failed step names its likely cause. The exit status is 0
//! only when every step passed.

use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use prost::Message as _;

use crate::channel::ChannelId;
use crate::config::{self, Config};
use crate::proto;
use crate::signature::Signer;

/// How long one step may take before it counts as a timeout.
const STEP_TIMEOUT: Duration = Duration::from_secs(5);
/// Size of the large message: well above nginx's in-memory body buffer (so nginx spools it to
/// a temp file, as it does for the portal's big messages), well below the 1 MiB defaults.
const LARGE_BODY: usize = 256 * 1024;

/// Where a request goes: one of the server's sockets, or a plain-HTTP URL (nginx).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    Unix(PathBuf),
    Tcp { host: String, port: u16 },
}

impl Endpoint {
    /// `http://host[:port][/path]`; the path is ignored (the route paths come from the
    /// configuration).
    pub fn parse_url(url: &str) -> Result<Endpoint, String> {
        let rest = url.strip_prefix("http://").ok_or_else(|| {
            format!("{url}: give a plain http:// URL (nginx's internal or local port)")
        })?;
        let authority = rest.split(['/', '?']).next().unwrap_or("");
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, after) = v6
                .split_once(']')
                .ok_or_else(|| format!("{url}: unterminated [ in the host"))?;
            (h.to_string(), after.strip_prefix(':'))
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), Some(p)),
                None => (authority.to_string(), None),
            }
        };
        if host.is_empty() {
            return Err(format!("{url}: no host"));
        }
        let port = match port {
            None => 80,
            Some(p) => p
                .parse()
                .map_err(|_| format!("{url}: the port is not a number"))?,
        };
        Ok(Endpoint::Tcp { host, port })
    }

    fn host_header(&self) -> String {
        match self {
            Endpoint::Unix(_) => "localhost".into(),
            Endpoint::Tcp { host, port } if host.contains(':') => format!("[{host}]:{port}"),
            Endpoint::Tcp { host, port } => format!("{host}:{port}"),
        }
    }

    fn connect(&self, timeout: Duration) -> io::Result<Stream> {
        match self {
            Endpoint::Unix(p) => UnixStream::connect(p).map(Stream::Unix),
            Endpoint::Tcp { host, port } => {
                let mut last = io::Error::new(io::ErrorKind::NotFound, "no address");
                for addr in (host.as_str(), *port).to_socket_addrs()? {
                    match TcpStream::connect_timeout(&addr, timeout) {
                        Ok(s) => {
                            let _ = s.set_nodelay(true);
                            return Ok(Stream::Tcp(s));
                        }
                        Err(e) => last = e,
                    }
                }
                Err(last)
            }
        }
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Unix(p) => write!(f, "unix:{}", p.display()),
            Endpoint::Tcp { .. } => write!(f, "http://{}", self.host_header()),
        }
    }
}

/// A connected socket of either kind.
pub enum Stream {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Stream {
    fn set_read_timeout(&self, d: Duration) -> io::Result<()> {
        // A zero timeout means "block forever" to the OS; never ask for that.
        let d = Some(d.max(Duration::from_millis(1)));
        match self {
            Stream::Unix(s) => s.set_read_timeout(d),
            Stream::Tcp(s) => s.set_read_timeout(d),
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => s.read(buf),
            Stream::Tcp(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => s.write(buf),
            Stream::Tcp(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Unix(s) => s.flush(),
            Stream::Tcp(s) => s.flush(),
        }
    }
}

// ---- failures and their likely causes ----

/// What a failed step most likely means for the administrator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cause {
    NotRunning,
    SocketAccess,
    BadGateway,
    MissingLocation,
    Denied,
    KeyMismatch,
    BodyLimit,
    StoreDown,
    Timeout,
    Unexpected,
}

impl Cause {
    pub fn text(self) -> &'static str {
        match self {
            Cause::NotRunning => {
                "the server is not running, or the socket path or URL is wrong \
                 (SUB_SOCK, PUB_SOCK, RUN_DIR; `systemctl status push-server`)"
            }
            Cause::SocketAccess => {
                "this user may not open the socket: its group or mode (GROUP or SOCK_GROUP, \
                 SOCK_MODE); run the check as root or as a member of the group"
            }
            Cause::BadGateway => {
                "nginx cannot reach the server's socket: the socket's group or mode (the nginx \
                 worker's user must be in GROUP, SOCK_MODE 0660), or the server is not running"
            }
            Cause::MissingLocation => {
                "a missing nginx location for this path (nginx/push-server-sub-locations.conf in \
                 the public server, nginx/push-server-pub-server.conf for publishing), or \
                 SUBPATH / SUBWSPATH / PUBPATH differ from nginx's locations"
            }
            Cause::Denied => {
                "nginx refuses this path on this server (403): the URL names the wrong server \
                 block (the internal server of nginx/push-server-pub-server.conf serves only \
                 publishing and stats), or an allow/deny rule is in the way"
            }
            Cause::KeyMismatch => {
                "a key mismatch: SECURITY_KEY or SECURITY_ALGO of the configuration read here \
                 differ from the running server's (the portal's signature key must be the same)"
            }
            Cause::BodyLimit => {
                "the body limit: nginx's client_max_body_size or MAX_PAYLOAD is below the size \
                 of the portal's messages"
            }
            Cause::StoreDown => {
                "the message store is unavailable (Redis down or unreachable; see /health and \
                 `journalctl -u push-server`)"
            }
            Cause::Timeout => {
                "proxy buffering or timeouts in nginx: the push locations need \
                 `proxy_buffering off` and a proxy_read_timeout above LONG_POLL_TIMEOUT (the \
                 shipped snippets set both)"
            }
            Cause::Unexpected => {
                "an unexpected answer; see `journalctl -u push-server` and nginx's error log"
            }
        }
    }
}

#[derive(Debug)]
pub struct Failure {
    pub detail: String,
    pub cause: Cause,
}

impl Failure {
    fn new(detail: impl Into<String>, cause: Cause) -> Failure {
        Failure {
            detail: detail.into(),
            cause,
        }
    }

    fn io(what: &str, e: &io::Error) -> Failure {
        let cause = match e.kind() {
            io::ErrorKind::ConnectionRefused | io::ErrorKind::NotFound => Cause::NotRunning,
            io::ErrorKind::PermissionDenied => Cause::SocketAccess,
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => Cause::Timeout,
            _ => Cause::Unexpected,
        };
        let detail = if cause == Cause::Timeout {
            format!("{what}: no answer within {} s", STEP_TIMEOUT.as_secs())
        } else {
            format!("{what}: {e}")
        };
        Failure::new(detail, cause)
    }

    /// An HTTP answer other than the expected one.
    fn status(what: &str, status: u16, body: &[u8]) -> Failure {
        let text = String::from_utf8_lossy(&body[..body.len().min(200)]);
        let text = text.trim();
        let cause = match status {
            502 => Cause::BadGateway,
            504 => Cause::Timeout,
            404 => Cause::MissingLocation,
            403 => Cause::Denied,
            413 => Cause::BodyLimit,
            503 => Cause::StoreDown,
            400 if text.starts_with("4010") || text.starts_with("4026") => Cause::KeyMismatch,
            _ => Cause::Unexpected,
        };
        let shown = if text.starts_with('<') {
            // nginx's own HTML error page says nothing the status does not.
            String::new()
        } else {
            format!(" {text:?}")
        };
        Failure::new(format!("{what}: answered {status}{shown}"), cause)
    }
}

// ---- a small HTTP/1.1 client ----

/// A complete HTTP response.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

/// The response in `buf` if it is complete (`eof`: the peer closed).
fn parse_response(buf: &[u8], eof: bool) -> Result<Option<Response>, String> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut head = httparse::Response::new(&mut headers);
    let head_len = match head.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if eof => {
            return Err("connection closed before a complete answer".into());
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(format!("not an HTTP answer: {e}")),
    };
    let status = head.code.unwrap_or(0);
    let header = |name: &str| {
        head.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(h.value).trim().to_ascii_lowercase())
    };
    let rest = &buf[head_len..];
    if header("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        return match dechunk(rest) {
            Some(body) => Ok(Some(Response { status, body })),
            None if eof => Err("connection closed inside a chunked body".into()),
            None => Ok(None),
        };
    }
    if let Some(len) = header("content-length") {
        let len: usize = len.parse().map_err(|_| "bad Content-Length".to_string())?;
        return if rest.len() >= len {
            Ok(Some(Response {
                status,
                body: rest[..len].to_vec(),
            }))
        } else if eof {
            Err("connection closed inside the body".into())
        } else {
            Ok(None)
        };
    }
    if status == 304 || status == 204 || status / 100 == 1 || eof {
        return Ok(Some(Response {
            status,
            body: rest.to_vec(),
        }));
    }
    Ok(None)
}

/// The body of a complete chunked encoding, or None while it is incomplete.
fn dechunk(mut raw: &[u8]) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line_end = raw.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&raw[..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        raw = &raw[line_end + 2..];
        if size == 0 {
            return Some(body);
        }
        if raw.len() < size + 2 {
            return None;
        }
        body.extend_from_slice(&raw[..size]);
        raw = &raw[size + 2..];
    }
}

/// A request whose answer is being read (a held long poll reads it much later).
struct Pending {
    stream: Stream,
    buf: Vec<u8>,
    eof: bool,
}

impl Pending {
    fn send(ep: &Endpoint, head: &str, body: &[u8], what: &str) -> Result<Pending, Failure> {
        let mut stream = ep
            .connect(STEP_TIMEOUT)
            .map_err(|e| Failure::io(&format!("{what}: connect to {ep}"), &e))?;
        let mut raw = head.as_bytes().to_vec();
        raw.extend_from_slice(body);
        stream
            .write_all(&raw)
            .map_err(|e| Failure::io(&format!("{what}: send"), &e))?;
        Ok(Pending {
            stream,
            buf: Vec::new(),
            eof: false,
        })
    }

    /// Reads for at most `wait`; the response once it is complete.
    fn poll(&mut self, wait: Duration, what: &str) -> Result<Option<Response>, Failure> {
        let until = Instant::now() + wait;
        loop {
            if let Some(r) = parse_response(&self.buf, self.eof)
                .map_err(|e| Failure::new(format!("{what}: {e}"), Cause::Unexpected))?
            {
                return Ok(Some(r));
            }
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            let _ = self.stream.set_read_timeout(left);
            let mut chunk = [0u8; 16 * 1024];
            match self.stream.read(&mut chunk) {
                Ok(0) => self.eof = true,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Failure::io(what, &e)),
            }
        }
    }

    /// Waits up to [`STEP_TIMEOUT`] for the complete response.
    fn wait(mut self, what: &str) -> Result<Response, Failure> {
        self.poll(STEP_TIMEOUT, what)?.ok_or_else(|| {
            Failure::new(
                format!("{what}: no answer within {} s", STEP_TIMEOUT.as_secs()),
                Cause::Timeout,
            )
        })
    }
}

fn request_head(ep: &Endpoint, method: &str, target: &str, len: usize, extra: &str) -> String {
    format!(
        "{method} {target} HTTP/1.1\r\nHost: {}\r\nUser-Agent: push-server-check\r\n\
         Connection: close\r\nContent-Length: {len}\r\n{extra}\r\n",
        ep.host_header()
    )
}

fn request(
    ep: &Endpoint,
    method: &str,
    target: &str,
    extra: &str,
    body: &[u8],
    what: &str,
) -> Result<Response, Failure> {
    let head = request_head(ep, method, target, body.len(), extra);
    Pending::send(ep, &head, body, what)?.wait(what)
}

// ---- the check ----

/// Options of `push-server check`.
#[derive(Debug, Default)]
pub struct CheckArgs {
    pub config: Option<PathBuf>,
    pub sub_url: Option<String>,
    pub pub_url: Option<String>,
}

/// 16 random bytes from `/dev/urandom` (the clock if that fails).
pub fn random_bytes() -> [u8; 16] {
    let mut b = [0u8; 16];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        let _ = f.read_exact(&mut b);
    }
    if b == [0; 16] {
        b = crate::message::now_ms()
            .to_le_bytes()
            .repeat(2)
            .try_into()
            .unwrap_or([1; 16]);
    }
    b
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Loads the configuration as the server would, for `check` and `sign`.
fn load_config(path: Option<&Path>) -> Result<Config, String> {
    let env = |k: &str| std::env::var(k).ok();
    let cfg = config::load(path, &env).map_err(|e| e.to_string())?;
    if cfg.zero_config {
        return Err(format!(
            "no configuration file ({}) and no SECURITY_KEY in the environment: a zero-config \
             server makes up its key at each start; give the check the key it printed \
             (SECURITY_KEY=… push-server check) or --config FILE",
            config::DEFAULT_CONFIG_PATH
        ));
    }
    Ok(cfg)
}

/// `push-server sign CHANNEL`: prints `CHANNEL.SIGNATURE` for manual subscriptions.
pub fn sign(config: Option<&Path>, channel: &str) -> ExitCode {
    let cfg = match load_config(config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("push-server sign: {e}");
            return ExitCode::from(2);
        }
    };
    if ChannelId::from_hex(channel.as_bytes()).is_none() {
        eprintln!(
            "push-server sign: {channel:?} is not a channel id (32 lowercase hex digits, as the \
             portal makes them)"
        );
        return ExitCode::from(2);
    }
    let signer = Signer::new(cfg.algo, cfg.security_key.as_bytes());
    println!("{channel}.{}", signer.sign_hex(channel.as_bytes()));
    ExitCode::SUCCESS
}

/// Prints one line per step; counts failures.
struct Report {
    failed: usize,
    passed: usize,
}

impl Report {
    fn line(&mut self, started: Instant, name: &str, result: &Result<String, Failure>) {
        let ms = started.elapsed().as_secs_f64() * 1000.0;
        match result {
            Ok(detail) => {
                self.passed += 1;
                println!("ok    {ms:8.1} ms  {name}: {detail}");
            }
            Err(f) => {
                self.failed += 1;
                println!("FAIL  {ms:8.1} ms  {name}: {}", f.detail);
                println!("                   likely cause: {}", f.cause.text());
            }
        }
    }

    fn skip(&mut self, name: &str) {
        self.failed += 1;
        println!("skip               {name}: an earlier step failed");
    }
}

/// One signed channel of the check.
struct Channel {
    hex: String,
    signed: String,
    id: ChannelId,
}

impl Channel {
    fn new(signer: &Signer) -> Channel {
        let id = ChannelId(random_bytes());
        let hex = id.to_hex();
        let signed = format!("{hex}.{}", signer.sign_hex(hex.as_bytes()));
        Channel { hex, signed, id }
    }
}

struct Ctx {
    cfg: Config,
    signer: Signer,
    sub: Endpoint,
    publ: Endpoint,
}

impl Ctx {
    /// `GET PUBPATH?CHANNEL_ID=…`: true when the server reports the channel online.
    fn online(&self, ch: &Channel) -> Result<bool, Failure> {
        let target = format!("{}?CHANNEL_ID={}", self.cfg.paths.publish, ch.hex);
        let r = request(
            &self.publ,
            "GET",
            &target,
            "",
            ch.hex.as_bytes(),
            "online query",
        )?;
        if r.status != 200 {
            return Err(Failure::status("online query", r.status, &r.body));
        }
        Ok(String::from_utf8_lossy(&r.body).contains(&ch.hex))
    }

    fn message(token: &str, step: &str, pad: usize) -> String {
        format!(
            r#"{{"module_id":"pull","command":"push_server_check","params":{{"token":"{token}","step":"{step}","pad":"{}"}}}}"#,
            "x".repeat(pad)
        )
    }

    /// A v3 text publish as the portal sends it.
    fn publish_text(&self, ch: &Channel, body: &str) -> Result<String, Failure> {
        let target = format!("{}?CHANNEL_ID={}", self.cfg.paths.publish, ch.hex);
        let r = request(
            &self.publ,
            "POST",
            &target,
            "Content-Type: text/plain\r\nMessage-Expiry: 60\r\n",
            body.as_bytes(),
            "publish",
        )?;
        if r.status != 200 {
            return Err(Failure::status("publish", r.status, &r.body));
        }
        Ok(format!("200, {} bytes to {}", body.len(), self.publ))
    }

    /// A v4 protobuf batch as the portal sends it: `binaryMode=true`, `hostname`, and the
    /// body's signature in `signature`.
    fn publish_binary(&self, ch: &Channel, body: &str) -> Result<String, Failure> {
        let batch = proto::RequestBatch {
            requests: vec![proto::Request {
                command: Some(proto::request::Command::IncomingMessages(
                    proto::IncomingMessagesRequest {
                        messages: vec![proto::IncomingMessage {
                            receivers: vec![proto::Receiver {
                                id: ch.id.0.to_vec(),
                                is_private: true,
                                signature: Vec::new(),
                            }],
                            sender: None,
                            body: body.as_bytes().to_vec(),
                            expiry: 60,
                            r#type: Vec::new(),
                        }],
                    },
                )),
            }],
        };
        let bytes = batch.encode_to_vec();
        let target = format!(
            "{}?binaryMode=true&hostname=push-server-check&signature={}",
            self.cfg.paths.publish,
            self.signer.sign_hex(&bytes)
        );
        let r = request(
            &self.publ,
            "POST",
            &target,
            "Content-Type: application/octet-stream\r\n",
            &bytes,
            "binary publish",
        )?;
        if r.status != 200 {
            return Err(Failure::status("binary publish", r.status, &r.body));
        }
        Ok(format!(
            "200, {} bytes of protobuf to {}",
            bytes.len(),
            self.publ
        ))
    }

    /// Waits until the server reports `ch` online, watching the subscriber's own connection
    /// for an early refusal meanwhile.
    fn wait_online(
        &self,
        ch: &Channel,
        mut refused: impl FnMut() -> Result<(), Failure>,
    ) -> Result<String, Failure> {
        let started = Instant::now();
        let mut queries = 0;
        loop {
            queries += 1;
            if self.online(ch)? {
                let plural = if queries == 1 { "y" } else { "ies" };
                return Ok(format!(
                    "the server reports the channel online (after {queries} online quer{plural})"
                ));
            }
            refused()?;
            if started.elapsed() > STEP_TIMEOUT {
                return Err(Failure::new(
                    format!(
                        "the channel was not reported online within {} s",
                        STEP_TIMEOUT.as_secs()
                    ),
                    Cause::Timeout,
                ));
            }
        }
    }
}

/// `push-server check`: returns 0 when every step passed, 1 when one failed, 2 when the
/// configuration or the arguments are unusable.
pub fn check(args: &CheckArgs) -> ExitCode {
    let mut report = Report {
        failed: 0,
        passed: 0,
    };
    let t = Instant::now();
    let cfg = match load_config(args.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            report.line(t, "config", &Err(Failure::new(e, Cause::Unexpected)));
            return ExitCode::from(2);
        }
    };
    let endpoint = |url: &Option<String>, sock: &Path| match url {
        Some(u) => Endpoint::parse_url(u),
        None => Ok(Endpoint::Unix(sock.to_path_buf())),
    };
    let (sub, publ) = match (
        endpoint(&args.sub_url, &cfg.sub_sock),
        endpoint(&args.pub_url, &cfg.pub_sock),
    ) {
        (Ok(s), Ok(p)) => (s, p),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("push-server check: {e}");
            return ExitCode::from(2);
        }
    };
    for w in &cfg.warnings {
        eprintln!("warning: {w}");
    }
    let source = cfg
        .source
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "the environment".into());
    report.line(
        t,
        "config",
        &Ok(format!(
            "{source}, {} key, subscribe at {sub}, publish at {publ}",
            cfg.algo.name()
        )),
    );
    let signer = Signer::new(cfg.algo, cfg.security_key.as_bytes());
    let ctx = Ctx {
        cfg,
        signer,
        sub,
        publ,
    };

    let t = Instant::now();
    let lp_channel = Channel::new(&ctx.signer);
    let ws_channel = Channel::new(&ctx.signer);
    report.line(
        t,
        "sign",
        &Ok(format!(
            "two fresh channels, e.g. CHANNEL_ID={}",
            lp_channel.signed
        )),
    );

    let token = hex(&random_bytes());
    long_poll_steps(&ctx, &lp_channel, &token, &mut report);
    websocket_steps(&ctx, &ws_channel, &token, &mut report);

    if report.failed == 0 {
        println!("check passed: {} steps", report.passed);
        ExitCode::SUCCESS
    } else {
        println!(
            "check failed: {} of {} steps did not pass",
            report.failed,
            report.failed + report.passed
        );
        ExitCode::from(1)
    }
}

/// Runs `step`, prints its line; false when it failed (later steps of the group are skipped).
fn run_step(
    report: &mut Report,
    name: &str,
    step: impl FnOnce() -> Result<String, Failure>,
) -> bool {
    let t = Instant::now();
    let result = step();
    report.line(t, name, &result);
    result.is_ok()
}

fn long_poll_steps(ctx: &Ctx, ch: &Channel, token: &str, report: &mut Report) {
    let names = ["long poll", "publish v3 (text)", "long poll delivery"];
    let target = format!("{}?CHANNEL_ID={}", ctx.cfg.paths.sub, ch.signed);
    let what = format!("long poll on {}", ctx.sub);
    let mut pending = None;
    let subscribed = run_step(report, names[0], || {
        let head = request_head(&ctx.sub, "GET", &target, 0, "");
        let mut p = Pending::send(&ctx.sub, &head, b"", &what)?;
        let r = ctx.wait_online(ch, || match p.poll(Duration::from_millis(20), &what)? {
            Some(r) => Err(Failure::status(&what, r.status, &r.body)),
            None => Ok(()),
        });
        pending = Some(p);
        r
    });
    // The publish runs even without a subscriber: it checks the publish path and the key.
    let body = Ctx::message(token, "v3", 0);
    let published = run_step(report, names[1], || ctx.publish_text(ch, &body));
    let Some(pending) = pending.filter(|_| subscribed && published) else {
        report.skip(names[2]);
        return;
    };
    run_step(report, names[2], || {
        let r = pending.wait(&what)?;
        if r.status != 200 {
            return Err(Failure::status(&what, r.status, &r.body));
        }
        if !String::from_utf8_lossy(&r.body).contains(token) {
            return Err(Failure::new(
                format!("{what}: 200 without the published message"),
                Cause::Unexpected,
            ));
        }
        Ok(format!("200 with the message ({} bytes)", r.body.len()))
    });
}

type Ws = tungstenite::WebSocket<Stream>;

/// Reads WebSocket messages for at most `wait`: Ok(true) when a text message contains
/// `needle`, Ok(false) when none did in time.
fn ws_read(ws: &mut Ws, wait: Duration, needle: Option<&str>, what: &str) -> Result<bool, Failure> {
    use tungstenite::{Error, Message};
    let until = Instant::now() + wait;
    loop {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(false);
        }
        let _ = ws.get_ref().set_read_timeout(left);
        match ws.read() {
            Ok(Message::Text(t)) => {
                if needle.is_some_and(|n| t.as_str().contains(n)) {
                    return Ok(true);
                }
            }
            Ok(Message::Binary(b)) => {
                if needle.is_some_and(|n| String::from_utf8_lossy(&b).contains(n)) {
                    return Ok(true);
                }
            }
            Ok(Message::Close(frame)) => {
                let (code, reason) = frame
                    .map(|f| (u16::from(f.code), f.reason.to_string()))
                    .unwrap_or((1005, String::new()));
                let cause = if code == 4010 {
                    Cause::KeyMismatch
                } else if code == 1009 {
                    Cause::BodyLimit
                } else {
                    Cause::Unexpected
                };
                return Err(Failure::new(
                    format!("{what}: the server closed the WebSocket with {code} {reason:?}"),
                    cause,
                ));
            }
            Ok(_) => {}
            Err(Error::Io(e))
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(Error::Io(e)) => return Err(Failure::io(what, &e)),
            Err(e) => {
                return Err(Failure::new(format!("{what}: {e}"), Cause::Unexpected));
            }
        }
    }
}

fn ws_connect(ctx: &Ctx, ch: &Channel, what: &str) -> Result<Ws, Failure> {
    use tungstenite::HandshakeError;
    let stream = ctx
        .sub
        .connect(STEP_TIMEOUT)
        .map_err(|e| Failure::io(&format!("{what}: connect to {}", ctx.sub), &e))?;
    let _ = stream.set_read_timeout(STEP_TIMEOUT);
    let url = format!(
        "ws://{}{}?CHANNEL_ID={}",
        ctx.sub.host_header(),
        ctx.cfg.paths.subws,
        ch.signed
    );
    match tungstenite::client::client(url.as_str(), stream) {
        Ok((ws, _)) => Ok(ws),
        Err(HandshakeError::Failure(tungstenite::Error::Http(r))) => Err(Failure::status(
            what,
            r.status().as_u16(),
            r.body().as_deref().unwrap_or_default(),
        )),
        Err(HandshakeError::Failure(tungstenite::Error::Io(e))) => Err(Failure::io(what, &e)),
        Err(HandshakeError::Interrupted(_)) => Err(Failure::new(
            format!(
                "{what}: no handshake answer within {} s",
                STEP_TIMEOUT.as_secs()
            ),
            Cause::Timeout,
        )),
        Err(HandshakeError::Failure(e)) => Err(Failure::new(
            format!("{what}: handshake failed: {e}"),
            Cause::Unexpected,
        )),
    }
}

fn websocket_steps(ctx: &Ctx, ch: &Channel, token: &str, report: &mut Report) {
    let names = [
        "websocket",
        "publish v4 (protobuf)",
        "websocket delivery",
        "publish v3, 256 KiB",
        "websocket delivery, 256 KiB",
    ];
    let what = format!("WebSocket on {}", ctx.sub);
    let mut socket = None;
    let opened = run_step(report, names[0], || {
        let mut ws = ws_connect(ctx, ch, &what)?;
        let r = ctx
            .wait_online(ch, || {
                ws_read(&mut ws, Duration::from_millis(20), None, &what).map(|_| ())
            })
            .map(|online| format!("101 Switching Protocols; {online}"));
        socket = Some(ws);
        r
    });
    let deliver = |ws: &mut Ws, needle: &str| -> Result<String, Failure> {
        let t = Instant::now();
        if ws_read(ws, STEP_TIMEOUT, Some(needle), &what)? {
            Ok(format!(
                "the message arrived {:.1} ms after the publish was answered",
                t.elapsed().as_secs_f64() * 1000.0
            ))
        } else {
            Err(Failure::new(
                format!(
                    "{what}: the message did not arrive within {} s",
                    STEP_TIMEOUT.as_secs()
                ),
                Cause::Timeout,
            ))
        }
    };
    let v4_token = format!("{token}-v4");
    let body = Ctx::message(&v4_token, "v4", 0);
    // As for the long poll, the publish runs even without a subscriber.
    let published = run_step(report, names[1], || ctx.publish_binary(ch, &body));
    let Some(mut ws) = socket.filter(|_| opened && published) else {
        names[2..].iter().for_each(|n| report.skip(n));
        return;
    };
    if !run_step(report, names[2], || deliver(&mut ws, &v4_token)) {
        names[3..].iter().for_each(|n| report.skip(n));
        return;
    }
    let large_token = format!("{token}-large");
    let body = Ctx::message(&large_token, "large", LARGE_BODY);
    if !run_step(report, names[3], || ctx.publish_text(ch, &body)) {
        report.skip(names[4]);
        return;
    }
    run_step(report, names[4], || deliver(&mut ws, &large_token));
    let _ = ws.close(None);
    let _ = ws.flush();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            Endpoint::parse_url("http://127.0.0.1:8895/bitrix/pub/"),
            Ok(Endpoint::Tcp {
                host: "127.0.0.1".into(),
                port: 8895
            })
        );
        assert_eq!(
            Endpoint::parse_url("http://portal.example"),
            Ok(Endpoint::Tcp {
                host: "portal.example".into(),
                port: 80
            })
        );
        assert_eq!(
            Endpoint::parse_url("http://[::1]:8010").map(|e| e.to_string()),
            Ok("http://[::1]:8010".into())
        );
        assert!(Endpoint::parse_url("https://portal.example").is_err());
        assert!(Endpoint::parse_url("http://:80").is_err());
    }

    #[test]
    fn responses() {
        let r = parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", false)
            .unwrap()
            .unwrap();
        assert_eq!((r.status, r.body.as_slice()), (200, &b"ok"[..]));
        assert!(
            parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok", false)
                .unwrap()
                .is_none()
        );
        let chunked =
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n1\r\n!\r\n0\r\n\r\n";
        let r = parse_response(chunked, false).unwrap().unwrap();
        assert_eq!(r.body, b"ok!");
        let r = parse_response(b"HTTP/1.1 304 Not Modified\r\n\r\n", false)
            .unwrap()
            .unwrap();
        assert_eq!(r.status, 304);
    }

    #[test]
    fn causes() {
        let c = |s, b: &str| Failure::status("x", s, b.as_bytes()).cause;
        assert_eq!(c(400, "4010: Wrong Channel Id."), Cause::KeyMismatch);
        assert_eq!(c(400, "4026: Wrong request signature."), Cause::KeyMismatch);
        assert_eq!(c(404, "<html>"), Cause::MissingLocation);
        assert_eq!(c(413, ""), Cause::BodyLimit);
        assert_eq!(c(502, ""), Cause::BadGateway);
        assert_eq!(c(400, "4013: Wrong Request Data."), Cause::Unexpected);
        let refused = io::Error::from(io::ErrorKind::ConnectionRefused);
        assert_eq!(Failure::io("x", &refused).cause, Cause::NotRunning);
    }
}
