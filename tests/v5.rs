//! Protocol v5 (docs/v5.md): token subscribers on WebSocket and long poll, the backend
//! endpoint `/bitrix/api/`, routing by user and channel, per-recipient merging, resume,
//! keep-alive and client requests. Runs on both stores (`PUSH_TEST_STORE=redis`).

mod common;

use std::time::Duration;

use common::*;
use serde_json::{Value, json};

const PRIV: &str = "098f6bcd4621d373cade4e832627b4f6";
const SHARED: &str = "ad0234829205b9033196ba818f7a872b";
const T: Duration = Duration::from_secs(5);

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A token as the portal signs it, for `user` (0: none) and the comma-joined `chan`.
fn token_with(key: &str, user: u64, chan: &str, iat: u64, exp: u64) -> String {
    let mut claims = json!({"iss": "host1", "iat": iat, "exp": exp});
    if user > 0 {
        claims["sub"] = json!(user.to_string());
    }
    if !chan.is_empty() {
        claims["chan"] = json!(chan);
    }
    push_server::jwt::sign(&claims.to_string(), key.as_bytes())
}

fn token(user: u64, chan: &str) -> String {
    token_with(KEY, user, chan, now(), now() + 43200)
}

fn v5q(token: &str) -> String {
    format!("token={}&jsonRpc=true&revision=19", enc(token))
}

/// `POST /bitrix/api/` as PHP sends it, signed unless `signature` is given.
fn backend_raw(server: &Server, body: &str, signature: Option<&str>) -> Response {
    let sig = signature.map_or_else(|| sign(body), str::to_owned);
    let raw = format!(
        "POST /bitrix/api/?hostId=host1&signature={sig}&hostname=portal HTTP/1.1\r\nHost: portal\r\nContent-Type: application/x-www-form-urlencoded\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    server.pub_request(raw.as_bytes())
}

/// A signed backend call; asserts 200 and returns the parsed JSON answer.
fn backend(server: &Server, body: &Value) -> Value {
    let r = backend_raw(server, &body.to_string(), None);
    assert_eq!(r.status, 200, "backend call {body}: {}", r.body_str());
    serde_json::from_slice(&r.body).unwrap_or_else(|e| panic!("{e}: {:?}", r.body_str()))
}

fn publish(params: Value) -> Value {
    json!([{"jsonrpc": "2.0", "method": "publish", "params": params}])
}

/// Next JSON-RPC text on a v5 WebSocket, skipping the keep-alive `ping`.
fn next_json(ws: &mut Ws) -> Value {
    loop {
        let t = ws.next_text(T);
        if t != "ping" {
            return serde_json::from_str(&t).unwrap_or_else(|e| panic!("{e}: {t}"));
        }
    }
}

fn wait_user_connected(server: &Server, user: u64) {
    let ok = wait_until(T, || {
        let a = backend(
            server,
            &json!({"jsonrpc":"2.0","method":"getUsersLastSeen","params":{"userList":[user]}}),
        );
        a["result"][user.to_string()] == json!(0)
    });
    assert!(ok, "user {user} never reported connected");
}

#[test]
fn user_and_channel_publish_arrives_once_merged_per_recipient() {
    let server = Server::start();
    let mut ws = server.ws(&v5q(&token(5, &format!("{SHARED},{PRIV}"))));
    let mut other = server.ws(&v5q(&token(6, SHARED)));
    wait_user_connected(&server, 5);
    wait_user_connected(&server, 6);
    let mut v3 = server.lp_begin(&format!("CHANNEL_ID={}", enc(&signed(PRIV))));
    server.wait_online(PRIV);
    // As Event::add(users) sends it: the users and their private ids.
    let answer = backend(
        &server,
        &publish(json!({
            "channelList": [PRIV],
            "userList": [5, 6],
            "body": {"module_id": "im", "command": "message", "params": {"a": 1, "b": 1}, "extra": {"revision_web": 19}},
            "dictionary": {"b": 2, "d": "</>"},
            "user_params": {"5": {"b": 5, "u": true}},
            "expiry": 0,
            "type": "im_message"
        })),
    );
    assert_eq!(
        answer,
        json!([{"jsonrpc": "2.0", "id": null, "result": {}}])
    );
    let m = next_json(&mut ws);
    assert_eq!(m["method"], "incoming.message", "{m}");
    assert!(is_mid(m["params"]["mid"].as_str().unwrap()), "{m}");
    assert_eq!(m["params"]["sender"], json!({"type": 2}));
    assert_eq!(
        m["params"]["body"]["params"],
        json!({"a": 1, "b": 5, "d": "</>", "u": true}),
        "user_params win over the dictionary: {m}"
    );
    let o = next_json(&mut other);
    assert_eq!(
        o["params"]["body"]["params"],
        json!({"a": 1, "b": 2, "d": "</>"})
    );
    assert_eq!(o["params"]["mid"], m["params"]["mid"]);
    // Reached by user and by channel: once.
    ws.expect_silence(Duration::from_millis(400));
    // v3 on the private id: the body as compact JSON text with the dictionary merged.
    let r = v3.read_response();
    let frames = r.frames();
    assert_eq!(frames.len(), 1, "{}", r.body_str());
    let text: Value = serde_json::from_str(&frames[0].text).unwrap();
    assert_eq!(text["params"], json!({"a": 1, "b": 2, "d": "</>"}));
}

#[test]
fn v3_publish_reaches_token_channel_and_user_only_publish_skips_v3() {
    let server = Server::start();
    let mut ws = server.ws(&v5q(&token(0, &format!("{PRIV},{SHARED}"))));
    server.wait_online(SHARED);
    server.publish_ok(
        SHARED,
        r#"{"module_id":"m","command":"c","params":{"x":"\/"}}"#,
        None,
    );
    let m = next_json(&mut ws);
    assert_eq!(
        m["params"]["body"],
        json!({"module_id":"m","command":"c","params":{"x":"/"}})
    );
    // Plain text has no v5 form: skipped, the socket stays.
    server.publish_ok(SHARED, "not json", None);
    server.publish_ok(SHARED, r#"{"module_id":"m","command":"after"}"#, None);
    assert_eq!(next_json(&mut ws)["params"]["body"]["command"], "after");
    // userList only: a v3 subscriber of nothing user-shaped gets nothing.
    let mut v3 = server.ws(&format!("CHANNEL_ID={}", enc(&signed(PRIV))));
    server.wait_online(PRIV);
    backend(
        &server,
        &publish(json!({"userList": [9], "body": {"module_id":"m","command":"u"}})),
    );
    v3.expect_silence(Duration::from_millis(300));
}

#[test]
fn bad_tokens_get_4010_on_both_transports() {
    let server = Server::builder().env("HOST_ID", "host1").start();
    let t = now();
    let bad = [
        token_with("otherKey", 5, PRIV, t, t + 100),
        token_with(KEY, 5, PRIV, t - 200, t - 1),
        token_with(KEY, 5, PRIV, t + 3600, t + 7200),
        {
            let good = token(5, PRIV);
            let body = good.split('.').nth(1).unwrap().to_owned();
            format!("eyJ0eXAiOiJKV1QiLCJhbGciOiJub25lIn0.{body}.")
        },
        "garbage".to_owned(),
    ];
    for tok in &bad {
        let r = server.lp(&v5q(tok));
        r.assert_error(400, "4010: Wrong Channel Id.");
        let mut ws = server.ws(&v5q(tok));
        assert_eq!(
            ws.expect_close(T),
            (4010, "4010: Wrong Channel Id.".to_owned())
        );
    }
    // iat within JWT_LEEWAY (60 s) is fine; another issuer is not.
    let mut ws = server.ws(&v5q(&token_with(KEY, 5, PRIV, t + 30, t + 100)));
    wait_user_connected(&server, 5);
    ws.expect_silence(Duration::from_millis(100));
    let other_host = push_server::jwt::sign(
        &json!({"iss": "host2", "exp": t + 100, "sub": "5"}).to_string(),
        KEY.as_bytes(),
    );
    server
        .lp(&v5q(&other_host))
        .assert_error(400, "4010: Wrong Channel Id.");
}

#[test]
fn long_poll_receives_and_resumes_user_messages() {
    let server = Server::start();
    let tok = token(7, SHARED);
    // Stored per user while nobody listens.
    backend(
        &server,
        &publish(json!({"userList": [7], "body": {"module_id":"m","command":"one"}})),
    );
    backend(
        &server,
        &publish(json!({"userList": [7], "body": {"module_id":"m","command":"two"}})),
    );
    let r = server.lp(&format!("{}&mid={OLD_MID}", v5q(&tok)));
    assert_eq!(r.status, 200, "{}", r.body_str());
    assert_eq!(r.header("Content-Type"), Some("text/plain"));
    let all: Value = serde_json::from_slice(&r.body).unwrap();
    let cmds: Vec<&str> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["params"]["body"]["command"].as_str().unwrap())
        .collect();
    assert_eq!(cmds, ["one", "two"]);
    let last = all[1]["params"]["mid"].as_str().unwrap().to_owned();
    // Live: a held poll completes with a single object.
    let mut poll = server.lp_begin(&format!("{}&mid={last}", v5q(&tok)));
    wait_user_connected(&server, 7);
    backend(
        &server,
        &publish(json!({"userList": [7], "body": {"module_id":"m","command":"three"}})),
    );
    let r = poll.read_response();
    let m: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(m["params"]["body"]["command"], "three", "{m}");
    // Nothing new: 304 with the mid.
    let mid = m["params"]["mid"].as_str().unwrap().to_owned();
    let server = Server::builder().env("LONG_POLL_TIMEOUT", "0.5").start();
    let r = server.lp(&format!("{}&mid={mid}", v5q(&tok)));
    assert_eq!(r.status, 304);
    assert_eq!(r.header("Last-Message-Id"), Some(mid.as_str()));
}

#[test]
fn backend_endpoint_answers() {
    let server = Server::start();
    // No or a wrong signature: 400 4026, nothing published.
    let body =
        publish(json!({"userList": [1], "body": {"module_id":"m","command":"c"}})).to_string();
    backend_raw(&server, &body, Some("00")).assert_error(400, "4026: Wrong request signature.");
    let raw = format!(
        "POST /bitrix/api/ HTTP/1.1\r\nHost: portal\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    server
        .pub_request(raw.as_bytes())
        .assert_error(400, "4026: Wrong request signature.");
    // Not on the public listener.
    assert_eq!(server.sub_request(raw.as_bytes()).status, 404);
    // Errors are 200 with JSON-RPC error objects.
    for (body, code) in [
        ("{bad".to_owned(), -32700),
        (format!("{}1{}", "[".repeat(200), "]".repeat(200)), -32700),
        ("[]".to_owned(), -32600),
        (json!({"jsonrpc":"2.0","method":"nope"}).to_string(), -32601),
    ] {
        let r = backend_raw(&server, &body, None);
        assert_eq!(r.status, 200);
        let v: Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(v["error"]["code"], code, "{body}: {v}");
    }
    // A batch is checked element by element.
    let a = backend(
        &server,
        &json!([
            {"jsonrpc":"2.0","method":"publish","params":{"userList":[1],"body":{"module_id":"m","command":"c"}}},
            {"jsonrpc":"2.0","method":"publish","params":{"channelList":["nothex"],"body":{}}},
            {"jsonrpc":"2.0","method":"publish","params":{"body":{}}}
        ]),
    );
    assert_eq!(a[0]["result"], json!({}));
    assert_eq!(a[1]["error"]["code"], -32602);
    assert_eq!(
        a[1]["error"]["message"],
        "4019: Request has an invalid channel id."
    );
    assert_eq!(a[2]["error"]["message"], "4017: No channels found.");
    // Over MAX_PAYLOAD: 413.
    let server = Server::builder().env("MAX_PAYLOAD", "1000").start();
    let big = publish(
        json!({"userList":[1],"body":{"module_id":"m","command":"c","params":{"x":"y".repeat(2000)}}}),
    );
    assert_eq!(backend_raw(&server, &big.to_string(), None).status, 413);
}

#[test]
fn last_seen_and_metrics() {
    let server = Server::builder().env("ONLINE_TTL", "1").start();
    let ask = |users: Value| {
        backend(
            &server,
            &json!({"jsonrpc":"2.0","method":"getUsersLastSeen","params":{"userList":users}}),
        )
    };
    assert_eq!(ask(json!([1, 2])), json!({"jsonrpc":"2.0","result":{}}));
    let t = now();
    let a = backend(
        &server,
        &json!({"jsonrpc":"2.0","method":"updateUsersLastSeen","params":{"2": t - 300}}),
    );
    assert_eq!(a, json!({"jsonrpc":"2.0","result":{}}));
    let mut ws = server.ws(&v5q(&token(1, SHARED)));
    wait_user_connected(&server, 1);
    let r = ask(json!([1, 2, 3]));
    assert_eq!(r["result"]["1"], 0, "{r}");
    let ago = r["result"]["2"].as_u64().unwrap();
    assert!((300..310).contains(&ago), "{r}");
    assert!(r["result"].get("3").is_none());
    ws.ws.close(None).ok();
    // Offline ONLINE_TTL after the last connection is gone.
    assert!(wait_until(T, || ask(json!([1]))["result"]["1"].as_u64() > Some(0)));
    let m = String::from_utf8_lossy(&server.pub_request(b"GET /metrics HTTP/1.0\r\n\r\n").body)
        .into_owned();
    assert!(
        m.contains("push_v5_requests_total{source=\"backend\"}"),
        "{m}"
    );
    assert!(m.contains("push_v5_errors_total"), "{m}");
}

#[test]
fn keep_alive_and_client_requests() {
    let server = Server::builder().env("WS_PING_INTERVAL", "1").start();
    let mut ws = server.ws(&v5q(&token(3, &format!("{PRIV},{SHARED}"))));
    // The text ping comes, and pong / mack are accepted without an answer.
    assert_eq!(ws.next_text(T), "ping");
    ws.send_text("pong").unwrap();
    ws.send_text("mack:17954797730000000000000003").unwrap();
    ws.send_text(r#"{"jsonrpc":"2.0","method":"ping","params":{},"id":1}"#)
        .unwrap();
    assert_eq!(
        next_json(&mut ws),
        json!({"jsonrpc":"2.0","id":1,"result":{}})
    );
    ws.send_text(r#"{"jsonrpc":"2.0","method":"listChannels","params":{},"id":2}"#)
        .unwrap();
    assert_eq!(
        next_json(&mut ws)["result"]["channels"],
        json!([PRIV, SHARED])
    );
    for (req, code) in [
        (r#"{"jsonrpc":"2.0","method":"nope","id":3}"#, -32601),
        ("{oops", -32700),
        (
            r#"{"jsonrpc":"2.0","method":"subscribeStatusChange","params":{},"id":4}"#,
            -32602,
        ),
        (
            r#"{"jsonrpc":"2.0","method":"publish","params":{"channelList":["4c9184f37cff01bcdc32dc486ec36961.00"],"body":{"module_id":"m","command":"c"}},"id":5}"#,
            -32602,
        ),
    ] {
        ws.send_text(req).unwrap();
        let a = next_json(&mut ws);
        assert_eq!(a["error"]["code"], code, "{req}: {a}");
    }
    // The socket stays open through the errors; a client publish to the user's own id arrives
    // with the user as the sender.
    ws.send_text(
        r#"{"jsonrpc":"2.0","method":"publish","params":{"userList":[3],"body":{"module_id":"m","command":"self"}},"id":6}"#,
    )
    .unwrap();
    let mut got = Vec::new();
    while got.len() < 2 {
        got.push(next_json(&mut ws));
    }
    let answer = got.iter().find(|v| v.get("id").is_some()).unwrap();
    assert_eq!(answer["result"], json!({}));
    let msg = got.iter().find(|v| v.get("method").is_some()).unwrap();
    assert_eq!(msg["params"]["sender"], json!({"type":1,"id":"3"}));
    // Ping keeps coming while the client answers: no close for a few intervals.
    for _ in 0..3 {
        assert_eq!(ws.next_text(T), "ping");
        ws.send_text("pong").unwrap();
    }
}

/// Next `incoming.message` on a v5 WebSocket, skipping pings and answers.
fn next_message(ws: &mut Ws, within: Duration) -> Value {
    let deadline = std::time::Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let t = ws.next_text(left);
        if t == "ping" {
            continue;
        }
        let v: Value = serde_json::from_str(&t).unwrap();
        if v["method"] == "incoming.message" {
            return v;
        }
    }
}

#[test]
fn watched_users_status_changes_are_pushed() {
    let server = Server::builder().env("ONLINE_TTL", "1").start();
    let mut watcher = server.ws(&v5q(&token(1, SHARED)));
    watcher
        .send_text(
            r#"{"jsonrpc":"2.0","method":"subscribeStatusChange","params":{"userId":2},"id":1}"#,
        )
        .unwrap();
    assert_eq!(
        next_json(&mut watcher),
        json!({"jsonrpc":"2.0","id":1,"result":{}})
    );
    let mut two = server.ws(&v5q(&token(2, SHARED)));
    let m = next_message(&mut watcher, T);
    let body = &m["params"]["body"];
    assert_eq!(body["module_id"], "online");
    assert_eq!(body["command"], "userStatusChange");
    assert_eq!(body["params"], json!({"user_id": 2, "online": true}));
    assert!(body["extra"]["server_time_unix"].as_f64().unwrap() > 1e9);
    assert!(is_mid(m["params"]["mid"].as_str().unwrap()));
    two.ws.close(None).ok();
    let m = next_message(&mut watcher, Duration::from_secs(10));
    assert_eq!(
        m["params"]["body"]["params"],
        json!({"user_id": 2, "online": false})
    );
    // After unsubscribing (the SDK re-sends the id as a string), nothing more comes.
    watcher
        .send_text(r#"{"jsonrpc":"2.0","method":"unsubscribeStatusChange","params":{"userId":"2"},"id":2}"#)
        .unwrap();
    assert_eq!(next_json(&mut watcher)["result"], json!({}));
    let _two = server.ws(&v5q(&token(2, SHARED)));
    wait_user_connected(&server, 2);
    watcher.expect_silence(Duration::from_millis(500));
}

#[test]
fn a_silent_v5_socket_is_closed_after_two_unanswered_pings() {
    // WS_PING_INTERVAL=1: v5 pings every second, and the patience is WS_PING_INTERVAL but at
    // least two pings (docs/v5.md, "Keep-alive"): the close comes after the second ping.
    let server = Server::builder().env("WS_PING_INTERVAL", "1").start();
    let mut ws = server.ws(&v5q(&token(3, SHARED)));
    let mut pings = 0;
    let deadline = std::time::Instant::now() + T;
    let close = loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        assert!(!left.is_zero(), "no close within {T:?} ({pings} pings)");
        match ws.recv(left) {
            WsEvent::Text(t) if t == "ping" => pings += 1,
            WsEvent::Close(code, reason) => break (code, reason),
            WsEvent::Timeout => {}
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(close.0, 1001, "{close:?}");
    assert_eq!(pings, 2, "closed after {pings} unanswered pings");
}

#[test]
fn backend_calls_must_name_host_id_when_it_is_set() {
    let server = Server::builder().env("HOST_ID", "host1").start();
    let mut ws = server.ws(&v5q(&token(4, SHARED)));
    wait_user_connected(&server, 4);
    let call = |query_host: Option<&str>, header_host: Option<&str>, command: &str| {
        let body = publish(json!({"userList": [4], "body": {"module_id":"m","command":command}}))
            .to_string();
        let mut target = format!("/bitrix/api/?signature={}", sign(&body));
        if let Some(h) = query_host {
            target.push_str(&format!("&hostId={h}"));
        }
        let header = header_host.map_or(String::new(), |h| format!("X-HostId: {h}\r\n"));
        let raw = format!(
            "POST {target} HTTP/1.1\r\nHost: portal\r\n{header}Connection: close\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let r = server.pub_request(raw.as_bytes());
        assert_eq!(r.status, 200, "{}", r.body_str());
        serde_json::from_slice::<Value>(&r.body).unwrap()
    };
    for (q, h) in [(Some("host2"), None), (None, Some("host2")), (None, None)] {
        let a = call(q, h, "refused");
        assert_eq!(a["error"]["code"], -32600, "{q:?} {h:?}: {a}");
        assert_eq!(a["error"]["message"], "Wrong host id");
    }
    assert_eq!(call(Some("host1"), None, "query")[0]["result"], json!({}));
    assert_eq!(call(None, Some("host1"), "header")[0]["result"], json!({}));
    let cmds: Vec<Value> = (0..2)
        .map(|_| next_message(&mut ws, T)["params"]["body"]["command"].clone())
        .collect();
    assert_eq!(
        cmds,
        [json!("query"), json!("header")],
        "nothing refused arrives"
    );
}

#[test]
fn max_conn_per_channel_caps_v5_connections_per_user_and_guest_channel() {
    let server = Server::builder().env("MAX_CONN_PER_CHANNEL", "1").start();
    // Two users on the portal's shared channel: the shared id is never capped.
    let mut five = server.ws(&v5q(&token(5, SHARED)));
    let mut six = server.ws(&v5q(&token(6, SHARED)));
    wait_user_connected(&server, 5);
    wait_user_connected(&server, 6);
    // A second connection of user 5 closes the oldest.
    let _five_again = server.ws(&v5q(&token(5, SHARED)));
    assert_eq!(
        five.expect_close(T),
        (4029, "4029: Too many connections".to_owned())
    );
    six.expect_silence(Duration::from_millis(300));
    // A guest token (`private,public`, no user): capped on its private id.
    let guest = format!("{PRIV},4c9184f37cff01bcdc32dc486ec36961");
    let mut g1 = server.ws(&v5q(&token(0, &guest)));
    server.wait_online(PRIV);
    let _g2 = server.ws(&v5q(&token(0, &guest)));
    assert_eq!(g1.expect_close(T).0, 4029);
}
