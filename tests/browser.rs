//! The official client in a real browser, through a real nginx (issue 14): Debian's chromium,
//! driven by playwright-core (`tests/browser/drive.mjs`, pinned in tests/browser/package-lock.json),
//! opens the test page `tests/browser/page.html`. A private nginx runs the shipped snippets
//! (`nginx/`) in front of the real server on Unix sockets, and also serves the page and the
//! client's browser build (the UMD bundle of `@bitrix24/b24jssdk`, from tests/interop/node_modules).
//!
//! Four pages at once, one per mode: v3 and v4, WebSocket and long poll. Each gets published
//! messages (text, and protobuf for v4 as PHP publishes them), is then evicted by the server (a
//! second connection on its `priv:pub` pair with `MAX_CONN_PER_CHANNEL=1`: close 4029, or 429 for
//! a held poll), misses messages while away and must get them on its reconnect by `mid`; then
//! the client is evicted again, a message published, the server stopped and started again on
//! the same journal (docs/persistence.md) before the client is back, and another message
//! published; then the server is restarted once more while every client is connected. Every
//! page must end with every message once, in order, and each reconnect must carry the last
//! `mid` the client had. Screenshots of each page go to `target/browser/`.
//!
//! Needs /usr/bin/chromium, node >= 20 and `npm ci` in tests/browser and tests/interop
//! (scripts/test.sh installs all of them); without them the test prints a SKIP line.

mod deploy_common;

use deploy_common::*;
use prost::Message as _;
use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const CHROMIUM: &str = "/usr/bin/chromium";
const MODES: [&str; 4] = ["v3-ws", "v3-lp", "v4-ws", "v4-lp"];
/// Deadline of one step for every page. A reconnect after a failed attempt waits 15-18 s in
/// the official client (its back-off), so steps that follow a restart allow for one.
const STEP: Duration = Duration::from_secs(45);

fn repo(rel: &str) -> PathBuf {
    repo_root().join(rel)
}

/// Why the test cannot run here, or `None`.
fn missing() -> Option<String> {
    if !Path::new(CHROMIUM).exists() {
        return Some(format!("{CHROMIUM} is missing (apt-get install chromium)"));
    }
    let node = Command::new("node")
        .args(["-p", "process.versions.node.split('.')[0]"])
        .output();
    let major: u32 = match node {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout)
            .trim()
            .parse()
            .unwrap_or(0),
        _ => return Some("node is not installed".into()),
    };
    if major < 20 {
        return Some(format!("node {major} is too old (>= 20 needed)"));
    }
    for (file, how) in [
        (
            "tests/browser/node_modules/playwright-core/package.json",
            "npm ci in tests/browser",
        ),
        (
            "tests/interop/node_modules/@bitrix24/b24jssdk/dist/umd/index.js",
            "npm ci in tests/interop",
        ),
    ] {
        if !repo(file).exists() {
            return Some(format!("{file} is missing ({how})"));
        }
    }
    None
}

// ---------------------------------------------------------------------------------------------
// the browser

/// One page: its mode and the channels PHP would give such a client.
struct Page {
    id: String,
    mode: &'static str,
    /// The private and shared channel ids (what PHP publishes to).
    private: String,
    shared_id: String,
    /// The signed items of the page's config.
    private_item: String,
    shared_item: String,
    public_item: String,
}

impl Page {
    fn binary(&self) -> bool {
        self.mode.starts_with("v4")
    }
    fn websocket(&self) -> bool {
        self.mode.ends_with("-ws")
    }
}

/// The node process that runs chromium, and every event it printed.
struct Browser {
    child: Child,
    stdin: Option<ChildStdin>,
    rx: Receiver<Option<String>>,
    events: Vec<Value>,
    /// Lines that were not JSON (node's own errors), for the report.
    other: Vec<String>,
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
    eof: bool,
}

impl Browser {
    fn spawn(base: &str, pages: &[Page]) -> Browser {
        let list: Vec<Value> = pages
            .iter()
            .map(|p| {
                json!({"id": p.id, "mode": p.mode, "priv": p.private_item,
                    "shared": p.shared_item, "public": p.public_item})
            })
            .collect();
        let mut child = Command::new("node")
            .arg("drive.mjs")
            .current_dir(repo("tests/browser"))
            .env("BASE", base)
            .env("PAGES", Value::Array(list).to_string())
            .env("SHOTS", repo("target/browser"))
            .env("CHROMIUM", CHROMIUM)
            .env("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn node tests/browser/drive.mjs");
        let (tx, rx) = mpsc::channel();
        let stdout = child.stdout.take().expect("piped stdout");
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(Some(line)).is_err() {
                    return;
                }
            }
            let _ = tx.send(None);
        });
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let mut err = child.stderr.take().expect("piped stderr");
        let sink = stderr.clone();
        thread::spawn(move || {
            let mut s = String::new();
            let _ = err.read_to_string(&mut s);
            sink.lock().unwrap().push_str(&s);
        });
        Browser {
            stdin: child.stdin.take(),
            child,
            rx,
            events: Vec::new(),
            other: Vec::new(),
            stderr,
            eof: false,
        }
    }

    fn report(&self) -> String {
        let events: Vec<String> = self.events.iter().map(Value::to_string).collect();
        format!(
            "--- browser events ---\n{}\n--- other output ---\n{}\n--- node stderr ---\n{}\n---",
            events.join("\n"),
            self.other.join("\n"),
            self.stderr.lock().unwrap()
        )
    }

    /// Reads one more event before `deadline`; false on timeout or end of output.
    fn read_one(&mut self, deadline: Instant) -> bool {
        if self.eof {
            return false;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match self.rx.recv_timeout(left) {
            Ok(Some(line)) => {
                match serde_json::from_str::<Value>(&line) {
                    Ok(v) => self.events.push(v),
                    Err(_) => self.other.push(line),
                }
                true
            }
            Ok(None) | Err(RecvTimeoutError::Disconnected) => {
                self.eof = true;
                false
            }
            Err(RecvTimeoutError::Timeout) => false,
        }
    }

    /// Waits for an event at index `from` or later that matches `pred`; returns its index.
    fn wait_from(
        &mut self,
        from: usize,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> usize {
        let deadline = Instant::now() + timeout;
        let mut i = from;
        loop {
            while i < self.events.len() {
                if pred(&self.events[i]) {
                    return i;
                }
                i += 1;
            }
            if !self.read_one(deadline) && (self.eof || Instant::now() >= deadline) {
                panic!(
                    "browser: no {what} within {timeout:?}{}\n{}",
                    if self.eof { " (the driver exited)" } else { "" },
                    self.report()
                );
            }
        }
    }

    /// Like `wait_from`, but `None` on timeout.
    fn try_from(
        &mut self,
        from: usize,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Option<usize> {
        let deadline = Instant::now() + timeout;
        let mut i = from;
        loop {
            while i < self.events.len() {
                if pred(&self.events[i]) {
                    return Some(i);
                }
                i += 1;
            }
            if !self.read_one(deadline) {
                assert!(!self.eof, "the browser driver exited\n{}", self.report());
                if Instant::now() >= deadline {
                    return None;
                }
            }
        }
    }

    fn wait_msg(&mut self, page: &Page, seq: u64) {
        let id = page.id.clone();
        self.wait_from(0, &format!("message {seq} on page {id}"), STEP, |v| {
            v["page"] == id.as_str() && v["ev"] == "msg" && v["seq"] == seq
        });
    }

    fn command(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("driver stdin");
        writeln!(stdin, "{line}").expect("write to the driver");
        stdin.flush().unwrap();
    }

    fn screenshots(&mut self, name: &str) {
        let from = self.events.len();
        self.command(&format!("shot {name}"));
        let n = name.to_string();
        self.wait_from(
            from,
            &format!("screenshots {name}"),
            Duration::from_secs(30),
            |v| v["ev"] == "shots-done" && v["name"] == n.as_str(),
        );
    }

    /// The events of one page.
    fn of(&self, page: &Page) -> Vec<&Value> {
        self.events
            .iter()
            .filter(|v| v["page"] == page.id.as_str())
            .collect()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if self.stdin.is_some() {
            let _ = self.stdin.as_mut().map(|s| writeln!(s, "quit"));
            self.stdin = None;
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------------
// the portal's side: signing, publishing, evicting

struct Portal<'a> {
    server: &'a PushServer,
    /// nginx's public server (browsers) and internal server (PHP).
    public: u16,
    internal: u16,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn body(command: &str, params: &str) -> String {
    format!(
        r#"{{"module_id":"browser","command":"{command}","params":{params},"extra":{{"server_time":"2026-11-25T12:00:00+00:00","server_time_unix":{},"server_name":"portal.test","revision_web":19,"revision_mobile":3}}}}"#,
        now_secs()
    )
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

impl Portal<'_> {
    fn page(&self, n: usize, mode: &'static str) -> Page {
        let (private, public, shared) = (channel_id(), channel_id(), channel_id());
        let pair = format!("{private}:{public}");
        Page {
            id: format!("{n}-{mode}"),
            mode,
            private_item: format!("{pair}.{}", self.server.sign(&pair)),
            shared_item: self.server.signed(&shared),
            public_item: format!("{public}.{}", self.server.sign(&format!("public:{public}"))),
            shared_id: shared,
            private,
        }
    }

    /// Message `seq` to the page's private (or shared) channel.
    fn seq(&self, page: &Page, seq: u64, to_shared: bool) {
        // v4 portals publish protobuf, and text too (protobuf off, the site checker).
        let protobuf = page.binary() && seq % 2 == 1;
        self.publish(
            page,
            to_shared,
            "seq",
            &format!(r#"{{"seq":{seq}}}"#),
            protobuf,
        );
    }

    /// Publishes as PHP does through the internal server: a text publish or a protobuf batch.
    fn publish(&self, page: &Page, to_shared: bool, command: &str, params: &str, protobuf: bool) {
        let channel = if to_shared {
            &page.shared_id
        } else {
            &page.private
        };
        let b = body(command, params);
        let r = if protobuf {
            let batch = push_server::proto::RequestBatch {
                requests: vec![push_server::proto::Request {
                    command: Some(push_server::proto::request::Command::IncomingMessages(
                        push_server::proto::IncomingMessagesRequest {
                            messages: vec![push_server::proto::IncomingMessage {
                                receivers: vec![push_server::proto::Receiver {
                                    id: unhex(channel),
                                    is_private: true,
                                    signature: Vec::new(),
                                }],
                                sender: None,
                                body: b.into_bytes(),
                                expiry: 86400,
                                r#type: b"browser_seq".to_vec(),
                            }],
                        },
                    )),
                }],
            };
            request(
                self.internal,
                "POST",
                "/bitrix/pub/?binaryMode=true",
                &[("Content-Type", "application/x-www-form-urlencoded")],
                &batch.encode_to_vec(),
                Duration::from_secs(10),
            )
        } else {
            request(
                self.internal,
                "POST",
                &format!("/bitrix/pub/?CHANNEL_ID={channel}"),
                &[("Message-Expiry", "86400")],
                b.as_bytes(),
                Duration::from_secs(10),
            )
        };
        assert_eq!(
            r.status, 200,
            "publish through nginx for {}: {r:?}",
            page.id
        );
    }

    fn wait_online(&self, page: &Page) {
        wait_for(&format!("page {} online", page.id), STEP, || {
            let r = request(
                self.internal,
                "GET",
                &format!("/bitrix/pub/?CHANNEL_ID={}", page.private),
                &[],
                b"",
                Duration::from_secs(10),
            );
            (r.status == 200 && r.text().contains(&page.private)).then_some(())
        });
    }

    /// A second WebSocket on the page's `priv:pub` pair, through nginx: with
    /// `MAX_CONN_PER_CHANNEL=1` the server closes the oldest connection on the pair.
    fn intruder(&self, page: &Page) -> TcpStream {
        let mut s = connect(self.public, Duration::from_secs(10));
        let query = format!(
            "/bitrix/subws/?CHANNEL_ID={}{}",
            page.private_item.replace(':', "%3A"),
            if page.binary() {
                "&binaryMode=true"
            } else {
                ""
            }
        );
        let req = format!(
            "GET {query} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        s.write_all(req.as_bytes()).unwrap();
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            match s.read(&mut b) {
                Ok(1) => head.push(b[0]),
                other => panic!(
                    "intruder handshake: {other:?} after {:?}",
                    String::from_utf8_lossy(&head)
                ),
            }
        }
        assert!(
            head.starts_with(b"HTTP/1.1 101"),
            "intruder handshake through nginx: {}",
            String::from_utf8_lossy(&head)
        );
        s
    }

    /// Evicts the page's client: intruders until the page reports the server's close (4029 on a
    /// WebSocket, 429 on a held poll). A poll between two requests misses the intruder, whose
    /// own connection the next poll then evicts; so try again. Returns the intruders (kept open
    /// while the client is away) and the index of the close event.
    fn evict(&self, browser: &mut Browser, page: &Page) -> (Vec<TcpStream>, usize) {
        let deadline = Instant::now() + STEP;
        let mut intruders = Vec::new();
        let id = page.id.clone();
        loop {
            assert!(
                Instant::now() < deadline,
                "page {id} was never closed by the server\n{}",
                browser.report()
            );
            let from = browser.events.len();
            intruders.push(self.intruder(page));
            let closed = browser.try_from(from, Duration::from_secs(2), |v| {
                v["page"] == id.as_str()
                    && ((v["ev"] == "ws-close" && v["code"] == 4029)
                        || (v["ev"] == "lp-response" && v["status"] == 429))
            });
            if let Some(i) = closed {
                return (intruders, i);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// checks

/// The `mid` query parameter of a subscription URL.
fn mid_of(url: &str) -> Option<String> {
    url.split(['?', '&'])
        .find_map(|kv| kv.strip_prefix("mid="))
        .map(str::to_string)
}

/// What one page saw, checked: every message once and in order, the reconnects after the
/// server's closes carried the last mid, the right transport and format, no failures.
fn check_page(browser: &Browser, page: &Page, count: u64) -> Value {
    let events = browser.of(page);
    let report = || {
        let lines: Vec<String> = events.iter().map(|v| v.to_string()).collect();
        format!("page {}:\n{}", page.id, lines.join("\n"))
    };
    let seqs: Vec<u64> = events
        .iter()
        .filter(|v| v["ev"] == "msg")
        .filter_map(|v| v["seq"].as_u64())
        .collect();
    let expected: Vec<u64> = (1..=count).collect();
    assert_eq!(
        seqs,
        expected,
        "messages lost, duplicated or out of order\n{}",
        report()
    );
    let failures: Vec<&&Value> = events
        .iter()
        .filter(|v| v["ev"] == "failure" || v["ev"] == "rest-call")
        .collect();
    assert!(failures.is_empty(), "failures: {failures:?}\n{}", report());
    // The client drops a message it has seen (and logs it) and logs what it cannot parse.
    let problems: Vec<&&Value> = events
        .iter()
        .filter(|v| v["ev"] == "log")
        .filter(|v| {
            let m = v["message"].as_str().unwrap_or_default().to_lowercase();
            m.contains("duplicate") || m.contains("parse")
        })
        .collect();
    assert!(
        problems.is_empty(),
        "client reported problems: {problems:?}\n{}",
        report()
    );

    // Transport: only WebSockets or only polls, binaryMode as the version says.
    let connects: Vec<&&Value> = events
        .iter()
        .filter(|v| v["ev"] == "ws-connect" || v["ev"] == "lp-request")
        .collect();
    let want = if page.websocket() {
        "ws-connect"
    } else {
        "lp-request"
    };
    for c in &connects {
        assert_eq!(c["ev"], want, "wrong transport\n{}", report());
        let url = c["url"].as_str().unwrap_or_default();
        assert_eq!(
            url.contains("binaryMode=true"),
            page.binary(),
            "binaryMode in {url}\n{}",
            report()
        );
    }

    // Every server close is followed by a reconnect that carries the last mid seen before it.
    let closes: Vec<usize> = events
        .iter()
        .enumerate()
        .filter(|(_, v)| {
            (v["ev"] == "ws-close" && v["code"] != 1000)
                || (v["ev"] == "lp-response" && v["status"] != 200 && v["status"] != 304)
        })
        .map(|(i, _)| i)
        .collect();
    // Two evictions; a WebSocket also sees the restart while connected (1001, or 1006 when
    // its reconnect meets the stopped server); a poll sees it as a 304 and maybe a 502.
    assert!(closes.len() >= 2, "expected two evictions\n{}", report());
    if page.websocket() {
        let restart = events
            .iter()
            .any(|v| v["ev"] == "ws-close" && (v["code"] == 1001 || v["code"] == 1006));
        assert!(restart, "no close for the restart\n{}", report());
    }
    for &i in &closes {
        let last_mid = events[..i]
            .iter()
            .rev()
            .find(|v| v["ev"] == "msg")
            .and_then(|v| v["mid"].as_str());
        // The client's next connection, by number: its handler may open it before the page
        // reports the close.
        let closed_n = events[i]["n"].as_u64().unwrap_or(0);
        let Some(next) = events.iter().find(|v| {
            (v["ev"] == "ws-connect" || v["ev"] == "lp-request") && v["n"].as_u64() > Some(closed_n)
        }) else {
            panic!("no reconnect after {}\n{}", events[i], report());
        };
        let sent = mid_of(next["url"].as_str().unwrap_or_default());
        assert_eq!(
            sent.as_deref(),
            last_mid,
            "the reconnect after {} did not resume from the last mid\n{}",
            events[i],
            report()
        );
    }
    json!({"page": page.id, "seqs": seqs, "server_closes": closes.len(), "connections": connects.len()})
}

// ---------------------------------------------------------------------------------------------

#[test]
fn official_client_in_chromium_through_nginx_survives_eviction_and_restart() {
    if let Some(why) = missing() {
        println!(
            "SKIP official_client_in_chromium_through_nginx_survives_eviction_and_restart: {why}; scripts/test.sh installs it"
        );
        return;
    }
    let started = Instant::now();
    let dir = TempDir::new("browser");
    let env = [("MAX_CONN_PER_CHANNEL", "1"), ("LONG_POLL_TIMEOUT", "2")];
    let mut server = PushServer::start(&dir, &env);
    let (public, internal) = (free_port(), free_port());
    let extra = format!(
        "        location ^~ /browser-test/b24jssdk/ {{
            alias {}/;
            types {{ application/javascript js; }}
        }}
        location ^~ /browser-test/ {{
            alias {}/;
            types {{ text/html html; application/javascript js; }}
        }}",
        repo("tests/interop/node_modules/@bitrix24/b24jssdk/dist/umd").display(),
        repo("tests/browser").display()
    );
    let conf = shipped_nginx_conf(&dir, &server, public, internal, &extra);
    let _nginx = Nginx::start(&dir, &conf, &[public, internal]);
    let _ = std::fs::remove_dir_all(repo("target/browser"));

    let pages: Vec<Page> = {
        let portal = Portal {
            server: &server,
            public,
            internal,
        };
        MODES
            .iter()
            .enumerate()
            .map(|(n, m)| portal.page(n + 1, m))
            .collect()
    };
    let mut browser = Browser::spawn(&format!("http://127.0.0.1:{public}"), &pages);
    browser.wait_from(0, "the browser driver ready", STEP, |v| v["ev"] == "ready");

    {
        let portal = Portal {
            server: &server,
            public,
            internal,
        };
        for p in &pages {
            portal.wait_online(p);
        }
        // 1. live messages
        for p in &pages {
            for seq in 1..=2 {
                portal.seq(p, seq, false);
            }
        }
        for p in &pages {
            browser.wait_msg(p, 2);
        }
        // 2. evicted; published while away (private and shared); back by mid; live again
        let mut intruders = Vec::new();
        for p in &pages {
            intruders.push(portal.evict(&mut browser, p).0);
            portal.seq(p, 3, false);
            portal.seq(p, 4, true);
        }
        for p in &pages {
            browser.wait_msg(p, 4);
            portal.seq(p, 5, false);
        }
        for p in &pages {
            browser.wait_msg(p, 5);
        }
        browser.screenshots("1-after-eviction");
        // 3. evicted again, a message published while away, and the server restarted before
        //    the client is back: the new process has it from the journal
        for p in &pages {
            intruders.push(portal.evict(&mut browser, p).0);
            portal.seq(p, 6, false);
        }
    }
    let stop = Instant::now();
    server.stop();
    let _ = std::fs::rename(
        dir.join("server.log"),
        dir.join("server-before-restart.log"),
    );
    let server = PushServer::start(&dir, &env);
    let restart_ms = stop.elapsed().as_millis();
    let portal = Portal {
        server: &server,
        public,
        internal,
    };
    for p in &pages {
        portal.seq(p, 7, false);
    }
    for p in &pages {
        browser.wait_msg(p, 7);
    }
    // 4. restarted while every client is connected: WebSockets get 1001, held polls 304, and
    //    the clients come back by mid
    for p in &pages {
        portal.wait_online(p);
    }
    let mut server = server;
    server.stop();
    let _ = std::fs::rename(dir.join("server.log"), dir.join("server-second-start.log"));
    let server = PushServer::start(&dir, &env);
    let portal = Portal {
        server: &server,
        public,
        internal,
    };
    for p in &pages {
        portal.seq(p, 8, false);
    }
    for p in &pages {
        browser.wait_msg(p, 8);
        portal.publish(p, false, "end", r#"{"count":8}"#, false);
    }
    for p in &pages {
        let id = p.id.clone();
        browser.wait_from(0, &format!("end on page {id}"), STEP, |v| {
            v["page"] == id.as_str() && v["ev"] == "end"
        });
    }
    browser.screenshots("2-after-restart");
    let summaries: Vec<Value> = pages.iter().map(|p| check_page(&browser, p, 8)).collect();
    for p in &pages {
        assert!(
            repo(&format!("target/browser/2-after-restart-{}.png", p.id)).is_file(),
            "no screenshot for {}",
            p.id
        );
    }
    eprintln!(
        "browser test: {} pages, restart took {restart_ms} ms, whole test {:?}: {}",
        pages.len(),
        started.elapsed(),
        Value::Array(summaries)
    );
}
