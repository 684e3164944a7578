//! What the memory-lean shipped snippets (small header buffers and request pool in
//! `push-server-http.conf`; `proxy_pass_request_headers off` and 512-byte proxy buffers in the
//! subscriber locations, see nginx/README.md) must still carry, through the system nginx over
//! TCP: a message near `MAX_PAYLOAD` to a WebSocket and a long poll, a browser's long cookies
//! with a long `CHANNEL_ID` list, and a v5 token of a real portal's length.
//!
//! Needs the `nginx` binary (Debian package `nginx`); `scripts/test.sh` installs it.

mod deploy_common;

use deploy_common::*;
use std::net::TcpStream;
use std::time::Duration;
use tungstenite::client::IntoClientRequest;
use tungstenite::http::HeaderValue;
use tungstenite::{Message, WebSocket};

/// `MAX_PAYLOAD`'s default (src/config/keys.rs), equal to the snippets' `client_max_body_size 1m`.
const MAX_PAYLOAD: usize = 1_048_576;

/// nginx and our server with the shipped snippets, rendered as `shipped_nginx_conf` does.
/// Field order = drop order.
struct Stack {
    _nginx: Nginx,
    server: PushServer,
    public: u16,
    internal: u16,
    _dir: TempDir,
}

impl Stack {
    fn start() -> Stack {
        let dir = TempDir::new("nginx-limits");
        let server = PushServer::start(&dir, &[]);
        let (public, internal) = (free_port(), free_port());
        let conf = shipped_nginx_conf(&dir, &server, public, internal, "");
        let nginx = Nginx::start(&dir, &conf, &[public, internal]);
        Stack {
            _nginx: nginx,
            server,
            public,
            internal,
            _dir: dir,
        }
    }

    /// Publish through the internal server; expects `200`.
    fn publish(&self, channel: &str, body: &str) {
        let r = request(
            self.internal,
            "POST",
            &format!("/bitrix/pub/?CHANNEL_ID={channel}"),
            &[],
            body.as_bytes(),
            Duration::from_secs(20),
        );
        assert_eq!(r.status, 200, "publish of {} bytes: {r:?}", body.len());
    }

    /// A WebSocket on `/bitrix/subws/?<query>` with `headers`; panics unless nginx answers 101.
    fn websocket(&self, query: &str, headers: &[(&'static str, String)]) -> WebSocket<TcpStream> {
        let stream = connect(self.public, Duration::from_secs(20));
        let url = format!("ws://127.0.0.1:{}/bitrix/subws/?{query}", self.public);
        let mut req = url.into_client_request().unwrap();
        for (name, value) in headers {
            req.headers_mut()
                .insert(*name, HeaderValue::from_str(value).unwrap());
        }
        let (ws, resp) = tungstenite::client(req, stream)
            .unwrap_or_else(|e| panic!("WebSocket handshake through nginx failed: {e}"));
        assert_eq!(resp.status().as_u16(), 101);
        ws
    }

    /// Sends a long poll on `/bitrix/sub/?<query>` and waits until the server holds it (logged
    /// once registered; one thread handles the request to the end, so a publish after this
    /// cannot overtake it).
    fn long_poll(&self, query: &str, headers: &[(&str, String)]) -> TcpStream {
        let needle = "/bitrix/sub/ from 127.0.0.1";
        let before = self.server.log_count(needle);
        let mut s = connect(self.public, Duration::from_secs(20));
        let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        send_request(
            &mut s,
            "GET",
            &format!("/bitrix/sub/?{query}"),
            &headers,
            b"",
        );
        self.server.wait_log_count(needle, before);
        s
    }

    /// Waits until the server logged one more WebSocket on `/bitrix/subws/`.
    fn wait_websocket_logged(&self, before: usize) {
        self.server
            .wait_log_count("/bitrix/subws/ from 127.0.0.1", before);
    }

    fn websockets_logged(&self) -> usize {
        self.server.log_count("/bitrix/subws/ from 127.0.0.1")
    }
}

/// The next text frame, skipping pings, pongs and the v5 keep-alive `ping` text.
fn next_text(ws: &mut WebSocket<TcpStream>) -> String {
    loop {
        match ws.read() {
            Ok(Message::Text(t)) if t.as_str() != "ping" => return t.as_str().to_owned(),
            Ok(Message::Text(_) | Message::Ping(_) | Message::Pong(_)) => continue,
            Ok(other) => panic!("unexpected WebSocket message: {other:?}"),
            Err(e) => panic!("no WebSocket message through nginx: {e}"),
        }
    }
}

/// A JSON message of exactly `len` bytes, padded in `params.pad`.
fn message_of_len(command: &str, len: usize) -> String {
    let shell = format!(r#"{{"module_id":"deploy","command":"{command}","params":{{"pad":""}}}}"#);
    let pad = "x".repeat(len - shell.len());
    let m = format!(r#"{{"module_id":"deploy","command":"{command}","params":{{"pad":"{pad}"}}}}"#);
    assert_eq!(m.len(), len);
    m
}

/// What a browser sends to a Bitrix portal besides the handshake: a `Cookie` line of `cookie`
/// bytes (`BITRIX_SM_*`, session, analytics) and the usual identification headers.
fn browser_headers(cookie: usize) -> Vec<(&'static str, String)> {
    let mut c = String::from("PHPSESSID=8b1a9953c4611296a827abf8c47804d7");
    let mut i = 0;
    while c.len() < cookie {
        c.push_str(&format!(
            "; BITRIX_SM_UIDH_{i}=3f2b8c9e0d1a4b5c6d7e8f90a1b2c3d4e5f60718"
        ));
        i += 1;
    }
    c.truncate(cookie);
    vec![
        ("Cookie", c),
        (
            "User-Agent",
            "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) \
             Chrome/131.0.0.0 Safari/537.36"
                .into(),
        ),
        ("Origin", "https://portal.example.com".into()),
        (
            "Accept-Language",
            "ru-RU,ru;q=0.9,en-US;q=0.8,en;q=0.7".into(),
        ),
        ("Cache-Control", "no-cache".into()),
    ]
}

/// A message just under `MAX_PAYLOAD`, published through the internal server, reaches a
/// WebSocket and a long poll whole: nginx relays it through the 512-byte proxy buffers of the
/// subscriber locations, piece by piece.
#[test]
fn message_near_max_payload_reaches_websocket_and_long_poll() {
    let stack = Stack::start();
    let id = channel_id();
    let q = format!("CHANNEL_ID={}", stack.server.signed(&id));
    let before = stack.websockets_logged();
    let mut ws = stack.websocket(&q, &[]);
    stack.wait_websocket_logged(before);
    let mut lp = stack.long_poll(&q, &[]);
    let big = message_of_len("big", MAX_PAYLOAD - 64);
    stack.publish(&id, &big);

    let t = next_text(&mut ws);
    assert!(
        t.contains(&format!(r#""text":{big}"#)),
        "WebSocket frame of {} bytes lacks the published message",
        t.len()
    );
    let r = read_response(&mut lp);
    assert_eq!(r.status, 200, "long poll: status {}", r.status);
    assert!(
        r.text().contains(&format!(r#""text":{big}"#)),
        "long-poll answer of {} bytes lacks the published message",
        r.body.len()
    );
    let _ = ws.close(None);
}

/// 7 KB of cookies (one `Cookie` line, as browsers send it) and 50 signed channels in the URL:
/// the request head starts in nginx's 512-byte client header buffer, continues in
/// `large_client_header_buffers`, and is still shorter than our `MAX_HEADER_SIZE` when it
/// reaches us, since the subscriber locations pass on only the headers we read.
#[test]
fn long_cookies_and_many_channels_subscribe() {
    let stack = Stack::start();
    let ids: Vec<String> = (0..50).map(|_| channel_id()).collect();
    let list: Vec<String> = ids.iter().map(|id| stack.server.signed(id)).collect();
    let q = format!("CHANNEL_ID={}&revision=19", list.join("/"));
    let headers = browser_headers(7000);

    let before = stack.websockets_logged();
    let mut ws = stack.websocket(&q, &headers);
    stack.wait_websocket_logged(before);
    let mut lp = stack.long_poll(&q, &headers);
    let m = message_of_len("many", 200);
    stack.publish(&ids[49], &m);

    let t = next_text(&mut ws);
    assert!(t.contains(&format!(r#""text":{m}"#)), "WebSocket got {t}");
    let r = read_response(&mut lp);
    assert_eq!(r.status, 200, "long poll: {r:?}");
    assert!(r.text().contains(&format!(r#""text":{m}"#)), "{r:?}");
    let _ = ws.close(None);
}

/// Protocol v5 (docs/v5.md): a token the size a portal issues (its host id as issuer, a user, a
/// dozen channels) in the query string, with a browser's cookies, on both transports.
#[test]
fn v5_token_of_portal_length_subscribes() {
    let stack = Stack::start();
    let ids: Vec<String> = (0..12).map(|_| channel_id()).collect();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = serde_json::json!({
        "iss": "b24-7f3a9c2e1d5b4a6f8e0c2d4b6a8f0e1c3d5b7a9f",
        "sub": "1234",
        "chan": ids.join(","),
        "iat": now,
        "exp": now + 43200,
    });
    let token = push_server::jwt::sign(&claims.to_string(), stack.server.key.as_bytes());
    assert!(token.len() > 700, "token of {} bytes", token.len());
    let q = format!("token={token}&jsonRpc=true&revision=19");
    let headers = browser_headers(3000);

    let before = stack.websockets_logged();
    let mut ws = stack.websocket(&q, &headers);
    stack.wait_websocket_logged(before);
    let mut lp = stack.long_poll(&q, &headers);
    stack.publish(
        &ids[11],
        r#"{"module_id":"deploy","command":"v5","params":{}}"#,
    );

    let t = next_text(&mut ws);
    let m: serde_json::Value = serde_json::from_str(&t).unwrap_or_else(|e| panic!("{e}: {t}"));
    assert_eq!(m["params"]["body"]["command"], "v5", "{t}");
    let r = read_response(&mut lp);
    assert_eq!(r.status, 200, "long poll: {r:?}");
    let m: serde_json::Value =
        serde_json::from_slice(&r.body).unwrap_or_else(|e| panic!("{e}: {r:?}"));
    assert_eq!(m["params"]["body"]["command"], "v5", "{r:?}");
    let _ = ws.close(None);
}
