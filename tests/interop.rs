//! Interop with the official JavaScript pull client (issue 5): the `PullClient` of the npm package
//! `@bitrix24/b24jssdk`, unmodified, run by node (`tests/interop/pull-client.mjs`) against the real
//! binary. One test per mode: v3 text and v4 binary, each over WebSocket and over long polling.
//!
//! Each run: the client connects with an injected config; the test publishes messages (text
//! publishes, and protobuf publishes in the v4 modes), then closes the client from the server side
//! by opening a second connection on its channel with `MAX_CONN_PER_CHANNEL=1` (the oldest, the
//! client, gets close 4029 or, for a pending poll, 429), publishes more while the client is away,
//! lets it reconnect and resume by `mid`, publishes live again and finally an `end` message. The
//! script checks every message arrived once and in order, that it logged no parse error or
//! duplicate, that the reconnect carried the last mid, and prints a JSON summary asserted here.
//!
//! v5 (`js_sdk_v5_*`, tests/interop/pull-client-v5.mjs; docs/v5.md, "The official client"): the
//! same client with a token, driven through `/bitrix/api/`, on WebSocket and long poll.
//!
//! Needs node >= 20 and `npm ci` in tests/interop (scripts/test.sh does both); without them the
//! tests fail with a message saying so.

mod common;

use common::*;
use prost::Message as _;
use push_server::proto;
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// Deadline for the script's whole run; each mode takes about 1-2 s.
const NODE_TIMEOUT: Duration = Duration::from_secs(25);
/// The v5 WebSocket run keeps its first connection open past the client's 20 s watchdog.
const V5_NODE_TIMEOUT: Duration = Duration::from_secs(70);

fn interop_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop")
}

/// Fails with a clear message when node or the npm packages are missing.
fn preflight() {
    let out = Command::new("node").arg("--version").output();
    let version = match out {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).trim().to_string(),
        Ok(o) => panic!(
            "`node --version` failed ({}): the interop tests need node >= 20 (scripts/test.sh installs it)",
            o.status
        ),
        Err(e) => panic!(
            "node is not installed ({e}): the interop tests need node >= 20 and `npm ci` in tests/interop (scripts/test.sh does both)"
        ),
    };
    let major: u32 = version
        .trim_start_matches('v')
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .unwrap_or(0);
    assert!(
        major >= 20,
        "node {version} is too old: @bitrix24/b24jssdk needs node ^20 || >=22"
    );
    for pkg in ["@bitrix24/b24jssdk", "ws"] {
        let p = interop_dir()
            .join("node_modules")
            .join(pkg)
            .join("package.json");
        assert!(
            p.exists(),
            "npm package {pkg} is not installed ({} missing): run `npm ci` in tests/interop (scripts/test.sh does)",
            p.display()
        );
    }
}

// ---------------------------------------------------------------------------------------------
// the node process

enum Line {
    Json(Value),
    Text(String),
    Eof,
}

struct Node {
    child: Child,
    rx: Receiver<Line>,
    /// Everything it printed so far (for failure messages).
    transcript: Vec<String>,
    stderr: Arc<Mutex<Vec<u8>>>,
    summary: Option<Value>,
    eof: bool,
}

impl Node {
    fn spawn(mode: &str, sub_url: &str, private: &str, shared: &str, public: &str) -> Node {
        // v4: the client publishes to its own public channel once it has message 5 (after the
        // reconnect), and must receive it back as a CLIENT message.
        let client_publish_at = if mode.starts_with("v4") { "5" } else { "0" };
        let timeout = (NODE_TIMEOUT.as_millis() - 2000).to_string();
        Node::spawn_script(
            "pull-client.mjs",
            &[
                ("MODE", mode),
                ("SUB_URL", sub_url),
                ("CHANNEL_PRIVATE", private),
                ("CHANNEL_SHARED", shared),
                ("PUBLIC_ID", public),
                ("CLIENT_PUBLISH_AT", client_publish_at),
                ("TIMEOUT_MS", &timeout),
            ],
        )
    }

    fn spawn_script(script: &str, envs: &[(&str, &str)]) -> Node {
        let mut child = Command::new("node")
            .arg(script)
            .current_dir(interop_dir())
            .envs(envs.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn node");
        let (tx, rx) = mpsc::channel();
        let stdout = child.stdout.take().expect("piped stdout");
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let msg = match serde_json::from_str::<Value>(&line) {
                    Ok(v) => Line::Json(v),
                    Err(_) => Line::Text(line),
                };
                if tx.send(msg).is_err() {
                    return;
                }
            }
            let _ = tx.send(Line::Eof);
        });
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let mut err = child.stderr.take().expect("piped stderr");
        let sink = stderr.clone();
        thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = std::io::Read::read_to_end(&mut err, &mut buf);
            sink.lock().expect("stderr buffer").extend_from_slice(&buf);
        });
        Node {
            child,
            rx,
            transcript: Vec::new(),
            stderr,
            summary: None,
            eof: false,
        }
    }

    fn report(&self) -> String {
        format!(
            "--- node stdout ---\n{}\n--- node stderr ---\n{}\n---",
            self.transcript.join("\n"),
            String::from_utf8_lossy(&self.stderr.lock().expect("stderr buffer"))
        )
    }

    /// Next line within the deadline; `None` on timeout or end of output.
    fn next(&mut self, deadline: Instant) -> Option<Value> {
        if self.eof {
            return None;
        }
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(Line::Json(v)) => {
                    self.transcript.push(v.to_string());
                    if let Some(s) = v.get("summary") {
                        self.summary = Some(s.clone());
                    }
                    return Some(v);
                }
                Ok(Line::Text(t)) => self.transcript.push(t),
                Ok(Line::Eof) | Err(RecvTimeoutError::Disconnected) => {
                    self.eof = true;
                    return None;
                }
                Err(RecvTimeoutError::Timeout) => return None,
            }
        }
    }

    /// Waits for an event matching `pred`; panics with the transcript if none comes in time.
    fn wait_event(
        &mut self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + timeout;
        while let Some(v) = self.next(deadline) {
            if pred(&v) {
                return v;
            }
        }
        panic!(
            "node client: no {what} within {timeout:?}{}\n{}",
            if self.eof { " (it exited)" } else { "" },
            self.report()
        );
    }

    /// Like `wait_event`, but an event already read (while waiting for another) counts too.
    fn seen_or_wait(&mut self, what: &str, timeout: Duration, pred: impl Fn(&Value) -> bool) {
        let seen = self
            .transcript
            .iter()
            .any(|l| serde_json::from_str::<Value>(l).is_ok_and(|v| pred(&v)));
        if !seen {
            self.wait_event(what, timeout, pred);
        }
    }

    /// Like `wait_event`, but returns `None` on timeout instead of panicking (still panics if
    /// the script exited).
    fn try_event(&mut self, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Option<Value> {
        let deadline = Instant::now() + timeout;
        while let Some(v) = self.next(deadline) {
            if pred(&v) {
                return Some(v);
            }
        }
        assert!(!self.eof, "node client exited early\n{}", self.report());
        None
    }

    fn wait_msg(&mut self, seq: u64) {
        self.wait_event(&format!("message seq {seq}"), WAIT, |v| {
            v["ev"] == "msg" && v["seq"] == seq
        });
    }

    /// Waits for the summary and the exit; returns the summary and whether it exited 0.
    fn finish(&mut self) -> (Value, bool) {
        let deadline = Instant::now() + V5_NODE_TIMEOUT;
        while self.summary.is_none() && self.next(deadline).is_some() {}
        let Some(summary) = self.summary.clone() else {
            panic!("node client printed no summary\n{}", self.report());
        };
        let exited = wait_until(WAIT, || matches!(self.child.try_wait(), Ok(Some(_))));
        assert!(exited, "node client did not exit after its summary");
        let ok = self.child.wait().expect("wait node").success();
        (summary, ok)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if !matches!(self.child.try_wait(), Ok(Some(_))) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// publishing

#[derive(Clone, Copy, PartialEq, Debug)]
enum Publish {
    Text,
    Protobuf,
}

fn body(command: &str, params: &str) -> String {
    format!(
        r#"{{"module_id":"interop","command":"{command}","params":{params},"extra":{{"server_time":"2026-11-25T12:00:00+00:00","server_time_unix":{},"server_name":"portal.test","revision_web":19,"revision_mobile":3}}}}"#,
        now_secs()
    )
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

/// A PHP-style protobuf publish: one message to private/shared ids, expiry 86400.
fn publish_protobuf(s: &Server, channel: &str, body: &str) {
    let batch = proto::RequestBatch {
        requests: vec![proto::Request {
            command: Some(proto::request::Command::IncomingMessages(
                proto::IncomingMessagesRequest {
                    messages: vec![proto::IncomingMessage {
                        receivers: vec![proto::Receiver {
                            id: unhex(channel),
                            is_private: true,
                            signature: Vec::new(),
                        }],
                        sender: None,
                        body: body.as_bytes().to_vec(),
                        expiry: 86400,
                        r#type: b"interop_seq".to_vec(),
                    }],
                },
            )),
        }],
    };
    let bytes = batch.encode_to_vec();
    let mut raw = format!(
        "POST /bitrix/pub/?binaryMode=true HTTP/1.0\r\nHost: 127.0.0.1:8895\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n",
        bytes.len()
    )
    .into_bytes();
    raw.extend_from_slice(&bytes);
    let r = s.pub_request(&raw);
    assert_eq!(
        r.status,
        200,
        "binary publish to {channel} should answer 200, got {} {:?}",
        r.status,
        r.body_str()
    );
}

fn publish(s: &Server, how: Publish, channel: &str, command: &str, params: &str) {
    let b = body(command, params);
    match how {
        Publish::Text => s.publish_ok(channel, &b, Some(86400)),
        Publish::Protobuf => publish_protobuf(s, channel, &b),
    }
}

// ---------------------------------------------------------------------------------------------
// one run

fn run(mode: &str) {
    preflight();
    let websocket = mode.ends_with("-ws");
    let binary = mode.starts_with("v4");
    // v4 portals publish protobuf; a v4 page also gets the text publishes (protobuf switched
    // off, site checker), so the v4 modes mix both. v3 portals publish text only.
    let kinds: Vec<Publish> = if binary {
        vec![Publish::Text, Publish::Protobuf]
    } else {
        vec![Publish::Text]
    };
    let how = |seq: u64| kinds[(seq as usize) % kinds.len()];

    let port = free_port();
    let mut builder = Server::builder()
        .env("SUB_LISTEN", format!("127.0.0.1:{port}"))
        .env("MAX_CONN_PER_CHANNEL", "1");
    if !websocket {
        // Short polls, so the client also goes through 304 + Last-Message-Id.
        builder = builder.env("LONG_POLL_TIMEOUT", "0.5");
    }
    let s = builder.start();
    assert!(
        wait_until(WAIT, || TcpStream::connect(("127.0.0.1", port)).is_ok()),
        "SUB_LISTEN 127.0.0.1:{port} does not accept"
    );

    // The client's channels as PHP builds them for a v4 portal: a signed private:public pair
    // (which MAX_CONN_PER_CHANNEL applies to) and the shared channel.
    let (private, public, shared) = (new_id(), new_id(), new_id());
    let private_item = signed_pair(&private, &public);
    let public_item = format!("{public}.{}", sign(&format!("public:{public}")));
    let mut node = Node::spawn(
        mode,
        &format!("http://127.0.0.1:{port}"),
        &private_item,
        &signed(&shared),
        &public_item,
    );

    // 1. connected: the server sees the subscription; a poll first runs into a 304 (its
    //    Last-Message-Id must become the client's mid, which the script checks)
    s.wait_online(&private);
    if !websocket {
        node.wait_event("304 answer to a poll", WAIT, |v| {
            v["ev"] == "lp-response" && v["status"] == 304
        });
    }

    // 2. live messages on the first connection
    for seq in 1..=2 {
        publish(
            &s,
            how(seq),
            &private,
            "seq",
            &format!(r#"{{"seq":{seq}}}"#),
        );
    }
    node.wait_msg(2);

    // 3. close the client from the server side: a second connection on its private:public pair
    //    evicts the oldest one (4029 for a socket, 429 for a pending poll). A poll may be between
    //    requests at that instant; then its next request evicts the intruder instead, so retry.
    let intruder_query = format!(
        "/bitrix/subws/?CHANNEL_ID={}{}",
        enc(&private_item),
        if binary { "&binaryMode=true" } else { "" }
    );
    let deadline = Instant::now() + WAIT;
    let mut intruders = Vec::new();
    loop {
        assert!(
            Instant::now() < deadline,
            "the client was never closed by MAX_CONN_PER_CHANNEL\n{}",
            node.report()
        );
        intruders.push(s.ws_path(&intruder_query));
        let closed = node.try_event(Duration::from_secs(1), |v| {
            (v["ev"] == "ws-close" && v["code"] == 4029)
                || (v["ev"] == "lp-response" && v["status"] == 429)
        });
        if closed.is_some() {
            break;
        }
    }

    // 4. published while the client is away (it comes back after ~0.5 s): it must get them as
    //    backlog by mid on its next connection
    publish(&s, how(3), &private, "seq", r#"{"seq":3}"#);
    publish(&s, how(4), &shared, "seq", r#"{"seq":4}"#);
    node.wait_msg(4);

    // 5. live again, then the end marker
    for seq in 5..=6 {
        publish(
            &s,
            how(seq),
            &private,
            "seq",
            &format!(r#"{{"seq":{seq}}}"#),
        );
    }
    node.wait_msg(6);
    // The client's own publish may come back before or after seq 6: look at what was already
    // read while waiting for seq 6 before waiting for more.
    let seen_own = node
        .transcript
        .iter()
        .any(|l| serde_json::from_str::<Value>(l).is_ok_and(|v| v["ev"] == "client-msg"));
    if binary && !seen_own {
        node.wait_event("the client's own publish coming back", WAIT, |v| {
            v["ev"] == "client-msg"
        });
    }
    publish(&s, how(7), &private, "end", r#"{"count":6}"#);
    let (summary, exit_ok) = node.finish();
    drop(intruders);

    let pretty = serde_json::to_string_pretty(&summary).unwrap_or_default();
    eprintln!("{mode} summary (shown with --nocapture): {pretty}");
    assert!(
        summary["ok"] == true && exit_ok,
        "official client in mode {mode} reported failures: {}\n{}",
        summary["failures"],
        node.report()
    );
    // What the script checked, asserted once more from its summary.
    assert_eq!(
        summary["seqs"],
        serde_json::json!([1, 2, 3, 4, 5, 6]),
        "{pretty}"
    );
    let closes = summary["serverCloses"].as_array().expect("serverCloses");
    assert!(!closes.is_empty(), "no server-side close seen: {pretty}");
    let resume = &summary["resumes"][0];
    assert!(
        resume["reconnectMid"].as_str().is_some_and(is_mid),
        "the reconnect carried no mid: {pretty}"
    );
    assert_eq!(resume["reconnectMid"], resume["lastMidBefore"], "{pretty}");
    // seq 3 and 4 were published while the client was away: both arrive in the first transport
    // message of the reconnect (backlog by mid), in order.
    let msgs = summary["messages"].as_array().expect("messages");
    for seq in [3, 4] {
        let m = msgs
            .iter()
            .find(|m| m["seq"] == seq)
            .expect("message present");
        assert_eq!(
            (&m["conn"], &m["transportMessage"]),
            (&resume["nextConn"], &serde_json::json!(1)),
            "seq {seq} should be the backlog of the reconnect: {pretty}"
        );
    }
    if websocket {
        assert_eq!(closes[0]["code"], 4029, "{pretty}");
        assert_eq!(
            closes[0]["reason"], "4029: Too many connections",
            "{pretty}"
        );
    } else {
        assert_eq!(closes[0]["status"], 429, "{pretty}");
    }
    if !websocket {
        assert!(
            summary["notModified"].as_u64().is_some_and(|n| n >= 1),
            "no 304 seen: {pretty}"
        );
    }
    if binary {
        let cm = &summary["clientMessages"];
        assert_eq!(cm.as_array().map(Vec::len), Some(1), "{pretty}");
        assert_eq!(cm[0]["sender"]["type"], 1, "{pretty}");
        assert_eq!(cm[0]["sender"]["id"], public.as_str(), "{pretty}");
    }
    let transport = &summary["transport"];
    if binary {
        assert_eq!(transport["textMessages"], 0, "{pretty}");
        for m in msgs {
            assert_eq!(m["sender"]["type"], 2, "BACKEND sender expected: {pretty}");
        }
    } else {
        assert_eq!(transport["binaryMessages"], 0, "{pretty}");
    }
}

#[test]
fn js_sdk_v3_websocket() {
    run("v3-ws");
}

#[test]
fn js_sdk_v3_long_polling() {
    run("v3-lp");
}

#[test]
fn js_sdk_v4_websocket() {
    run("v4-ws");
}

#[test]
fn js_sdk_v4_long_polling() {
    run("v4-lp");
}

// ---------------------------------------------------------------------------------------------
// v5 (docs/v5.md): the same client with `server.version` 5 and a `jwt`, driven through the
// backend endpoint (tests/interop/pull-client-v5.mjs)

/// `POST /bitrix/api/` as PHP sends it; asserts 200 and returns the JSON answer.
fn backend(s: &Server, body: &Value) -> Value {
    let body = body.to_string();
    let raw = format!(
        "POST /bitrix/api/?hostId=host1&signature={}&hostname=portal.test HTTP/1.1\r\nHost: portal.test\r\nContent-Type: application/x-www-form-urlencoded\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        sign(&body),
        body.len()
    );
    let r = s.pub_request(raw.as_bytes());
    assert_eq!(r.status, 200, "backend call {body}: {}", r.body_str());
    serde_json::from_slice(&r.body).unwrap_or_else(|e| panic!("{e}: {:?}", r.body_str()))
}

/// A backend `publish` of an `interop` message to users and/or channels, answered `result`.
fn backend_publish(s: &Server, users: &[u64], channels: &[&str], command: &str, params: Value) {
    let a = backend(
        s,
        &serde_json::json!([{"jsonrpc": "2.0", "method": "publish", "params": {
            "userList": users,
            "channelList": channels,
            "body": {"module_id": "interop", "command": command, "params": params,
                     "extra": {"server_time_unix": now_secs(), "revision_web": 19}},
            "expiry": 86400,
        }}]),
    );
    assert_eq!(a[0]["result"], serde_json::json!({}), "{a}");
}

fn v5_token(user: u64, chan: &str) -> String {
    let mut claims =
        serde_json::json!({"iss": "host1", "iat": now_secs(), "exp": now_secs() + 43200});
    if user > 0 {
        claims["sub"] = Value::from(user.to_string());
    }
    claims["chan"] = Value::from(chan);
    push_server::jwt::sign(&claims.to_string(), KEY.as_bytes())
}

fn v5_query(token: &str) -> String {
    format!("token={}&jsonRpc=true&revision=19", enc(token))
}

fn user_connected(s: &Server, user: u64) -> bool {
    let a = backend(
        s,
        &serde_json::json!({"jsonrpc":"2.0","method":"getUsersLastSeen","params":{"userList":[user]}}),
    );
    a["result"][user.to_string()] == 0
}

/// Next `incoming.message` on a raw v5 WebSocket, skipping `ping` and answers.
fn v5_next_message(ws: &mut Ws) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let t = ws.next_text(deadline.saturating_duration_since(Instant::now()));
        if t == "ping" {
            continue;
        }
        let v: Value = serde_json::from_str(&t).expect("JSON-RPC text");
        if v["method"] == "incoming.message" {
            return v;
        }
    }
}

fn run_v5(websocket: bool) {
    preflight();
    const USER: u64 = 1;
    let port = free_port();
    let mut builder = Server::builder()
        .env("SUB_LISTEN", format!("127.0.0.1:{port}"))
        .env("HOST_ID", "host1")
        .env("MAX_CONN_PER_CHANNEL", "1")
        .env("ONLINE_TTL", "1");
    if !websocket {
        builder = builder.env("LONG_POLL_TIMEOUT", "0.5");
    }
    let s = builder.start();
    assert!(
        wait_until(WAIT, || TcpStream::connect(("127.0.0.1", port)).is_ok()),
        "SUB_LISTEN 127.0.0.1:{port} does not accept"
    );
    let shared = new_id();
    let token = v5_token(USER, &shared);
    let mode = if websocket { "v5-ws" } else { "v5-lp" };
    let timeout = (V5_NODE_TIMEOUT.as_millis() - 5000).to_string();
    let mut node = Node::spawn_script(
        "pull-client-v5.mjs",
        &[
            ("MODE", mode),
            ("SUB_URL", &format!("http://127.0.0.1:{port}")),
            ("JWT", &token),
            ("USER_ID", &USER.to_string()),
            ("CHANNEL_PRIVATE", &signed(&new_id())),
            ("CHANNEL_SHARED", &signed(&shared)),
            ("TIMEOUT_MS", &timeout),
        ],
    );
    let opened = Instant::now();
    assert!(
        wait_until(WAIT, || user_connected(&s, USER)),
        "the client's user never connected\n{}",
        node.report()
    );

    // 1. live: to its user, and to a channel of its token
    backend_publish(&s, &[USER], &[], "seq", serde_json::json!({"seq": 1}));
    backend_publish(&s, &[], &[&shared], "seq", serde_json::json!({"seq": 2}));
    node.wait_msg(2);

    let action = |node: &mut Node, s: &Server, what: &str, params: Value| -> Value {
        backend_publish(s, &[USER], &[], "do", params);
        node.wait_event(&format!("action {what}"), WAIT, |v| {
            v["ev"] == "action" && v["action"] == what
        })
    };
    if websocket {
        // 2. getUsersLastSeen: 0 for itself (connected), the portal's time for user 2, and user
        //    3 left out (the SDK asks the portal's REST for it)
        let a = backend(
            &s,
            &serde_json::json!({"jsonrpc":"2.0","method":"updateUsersLastSeen","params":{"2": now_secs() - 300}}),
        );
        assert_eq!(a["result"], serde_json::json!({}), "{a}");
        let done = action(
            &mut node,
            &s,
            "lastSeen",
            serde_json::json!({"action": "lastSeen", "users": [USER, 2, 3]}),
        );
        assert_eq!(done["error"], Value::Null, "{done}\n{}", node.report());
        let answer = node
            .transcript
            .iter()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["ev"] == "rpc-answer")
            .map(|v| v["answer"].clone())
            .find(|a| a["result"].get("1").is_some())
            .unwrap_or_else(|| panic!("no getUsersLastSeen answer seen\n{}", node.report()));
        assert_eq!(answer["result"]["1"], 0, "{answer}");
        let ago = answer["result"]["2"].as_u64().expect("user 2");
        assert!((300..310).contains(&ago), "{answer}");
        assert!(answer["result"].get("3").is_none(), "{answer}");

        // 3. a watched user's status changes
        let done = action(
            &mut node,
            &s,
            "watch",
            serde_json::json!({"action": "watch", "user": 2}),
        );
        assert_eq!(done["error"], Value::Null, "{done}");
        let mut two = s.ws(&v5_query(&v5_token(2, &new_id())));
        node.wait_event("user 2 online", WAIT, |v| {
            v["ev"] == "user-status" && v["userId"] == 2 && v["isOnline"] == true
        });
        two.ws.close(None).ok();
        node.wait_event("user 2 offline", Duration::from_secs(10), |v| {
            v["ev"] == "user-status" && v["userId"] == 2 && v["isOnline"] == false
        });

        // 4. it publishes: to its own user (it comes back to it as a client message), and to
        //    a public id that a guest connection holds
        let done = action(
            &mut node,
            &s,
            "publishSelf",
            serde_json::json!({"action": "publishSelf"}),
        );
        assert_eq!(done["result"], serde_json::json!({}), "{done}");
        node.seen_or_wait("its own publish coming back", WAIT, |v| {
            v["ev"] == "client-msg" && v["command"] == "fromClient"
        });
        let (guest_priv, guest_pub) = (new_id(), new_id());
        let mut guest = s.ws(&v5_query(&v5_token(
            0,
            &format!("{guest_priv},{guest_pub}"),
        )));
        s.wait_online(&guest_pub);
        let item = format!("{guest_pub}.{}", sign(&format!("public:{guest_pub}")));
        let done = action(
            &mut node,
            &s,
            "publishChannel",
            serde_json::json!({"action": "publishChannel", "channel": item}),
        );
        assert_eq!(done["result"], serde_json::json!({}), "{done}");
        let m = v5_next_message(&mut guest);
        assert_eq!(m["params"]["body"]["command"], "toChannel", "{m}");
        assert_eq!(
            m["params"]["sender"],
            serde_json::json!({"type": 1, "id": "1"}),
            "{m}"
        );

        // 5. the watchdog (20 s without a `ping`) never fires: keep the first connection
        //    open for 25 s, watching for a close
        let left = Duration::from_secs(25).saturating_sub(opened.elapsed());
        let closed = node.try_event(left, |v| v["ev"] == "ws-close" || v["ev"] == "failure");
        assert!(
            closed.is_none(),
            "the client's first connection ended: {closed:?}\n{}",
            node.report()
        );
    }

    // 6. a server-side close: a second connection of the same user closes the oldest (4029,
    //    or 429 for a held poll; a poll between requests evicts the intruder instead: retry)
    let deadline = Instant::now() + WAIT;
    let mut intruders = Vec::new();
    loop {
        assert!(
            Instant::now() < deadline,
            "the client was never closed by MAX_CONN_PER_CHANNEL\n{}",
            node.report()
        );
        intruders.push(s.ws(&v5_query(&token)));
        let closed = node.try_event(Duration::from_secs(1), |v| {
            (v["ev"] == "ws-close" && v["code"] == 4029)
                || (v["ev"] == "lp-response" && v["status"] == 429)
        });
        if closed.is_some() {
            break;
        }
    }
    // 7. published while it is away, then live again
    backend_publish(&s, &[USER], &[], "seq", serde_json::json!({"seq": 3}));
    backend_publish(&s, &[], &[&shared], "seq", serde_json::json!({"seq": 4}));
    node.wait_msg(4);
    backend_publish(
        &s,
        &[USER],
        &[&shared],
        "seq",
        serde_json::json!({"seq": 5}),
    );
    node.wait_msg(5);
    backend_publish(&s, &[USER], &[], "end", serde_json::json!({"count": 5}));
    let (summary, exit_ok) = node.finish();
    drop(intruders);

    let pretty = serde_json::to_string_pretty(&summary).unwrap_or_default();
    eprintln!("{mode} summary (shown with --nocapture): {pretty}");
    assert!(
        summary["ok"] == true && exit_ok,
        "official client in mode {mode} reported failures: {}\n{}",
        summary["failures"],
        node.report()
    );
    assert_eq!(
        summary["seqs"],
        serde_json::json!([1, 2, 3, 4, 5]),
        "{pretty}"
    );
    let msgs = summary["messages"].as_array().expect("messages");
    for m in msgs {
        assert_eq!(m["sender"]["type"], 2, "backend sender expected: {pretty}");
    }
    // The reconnect resumed by the last mid it had; seq 3 and 4 came as its backlog, in one
    // transport message.
    let m3 = msgs.iter().find(|m| m["seq"] == 3).expect("seq 3");
    let m4 = msgs.iter().find(|m| m["seq"] == 4).expect("seq 4");
    assert_eq!(m3["conn"], m4["conn"], "{pretty}");
    assert_eq!(m3["transportMessage"], m4["transportMessage"], "{pretty}");
    let resume = summary["resumes"]
        .as_array()
        .expect("resumes")
        .iter()
        .find(|r| r["conn"] == m3["conn"])
        .cloned()
        .unwrap_or_else(|| panic!("no resume entry for the reconnect: {pretty}"));
    assert!(
        resume["mid"].as_str().is_some_and(is_mid),
        "the reconnect carried no mid: {pretty}"
    );
    assert_eq!(resume["mid"], resume["lastMidBefore"], "{pretty}");
    if websocket {
        let closes = summary["serverCloses"].as_array().expect("serverCloses");
        assert_eq!(closes[0]["code"], 4029, "{pretty}");
        // Every `ping` answered with `pong`, at most 10 s apart, and the first connection
        // lived past the 20 s watchdog.
        let pings = summary["pings"].as_u64().unwrap_or(0);
        assert!(pings >= 2, "{pretty}");
        assert_eq!(summary["sent"]["pong"], pings, "{pretty}");
        for gap in summary["pingGaps"].as_array().expect("pingGaps") {
            assert!(gap.as_u64().is_some_and(|g| g <= 10_500), "{pretty}");
        }
        let first = &summary["connections"][0];
        let lived = closes[0]["at"].as_u64().unwrap_or(0) - first["opened"].as_u64().unwrap_or(0);
        assert!(
            lived > 20_000,
            "first connection lived {lived} ms: {pretty}"
        );
        let cm = &summary["clientMessages"];
        assert_eq!(
            cm[0]["sender"],
            serde_json::json!({"type": 1, "id": "1"}),
            "{pretty}"
        );
        assert_eq!(
            summary["statusChanges"],
            serde_json::json!([{"userId": 2, "isOnline": true}, {"userId": 2, "isOnline": false}]),
            "{pretty}"
        );
    } else {
        let closes = summary["connections"]
            .as_array()
            .expect("connections")
            .iter()
            .filter(|c| c["status"] == 429)
            .count();
        assert!(closes >= 1, "{pretty}");
        assert_eq!(summary["pings"], 0, "a long poll gets no ping: {pretty}");
        // Its `mack:`s go to the publish URL: accepted quietly.
        let posts = summary["posts"].as_array().expect("posts");
        assert!(!posts.is_empty(), "{pretty}");
        for p in posts {
            assert_eq!(p["status"], 200, "{pretty}");
        }
    }
}

#[test]
fn js_sdk_v5_websocket() {
    run_v5(true);
}

#[test]
fn js_sdk_v5_long_polling() {
    run_v5(false);
}
