//! The v4 binary protocol (docs/protocol.md#v4-protobuf, docs/protocol.md#trusted-publish-php,
//! docs/protocol.md#online-query). Messages are encoded and decoded with the crate's own prost
//! types; byte-exact checks use the hex of docs/protocol.md#worked-examples.

mod common;

use std::time::Duration;

use common::*;
use prost::Message as _;
use push_server::proto::{self, request, response};

/// The ids of docs/protocol.md#worked-examples.
const PRIV: &str = "098f6bcd4621d373cade4e832627b4f6";
const PUB: &str = "4c9184f37cff01bcdc32dc486ec36961";
const T4013: &str = "4013: Wrong Request Data.";

fn unhex(s: &str) -> Vec<u8> {
    let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

/// Subscriber query for a v4 connection on `item` (a signed item or pair).
fn v4q(item: &str) -> String {
    format!("CHANNEL_ID={}&binaryMode=true&revision=19", enc(item))
}

fn v3q(item: &str) -> String {
    format!("CHANNEL_ID={}&revision=19", enc(item))
}

// ---- protobuf builders ----

fn trusted(id: &str, private: bool) -> proto::Receiver {
    proto::Receiver {
        id: unhex(id),
        is_private: private,
        signature: Vec::new(),
    }
}

/// A browser receiver: a public id with the raw digest of `HMAC(key, "public:" + id)`.
fn public_with(key: &str, id: &str) -> proto::Receiver {
    proto::Receiver {
        id: unhex(id),
        is_private: false,
        signature: unhex(&sign_with(key, &format!("public:{id}"))),
    }
}

fn public(id: &str) -> proto::Receiver {
    public_with(KEY, id)
}

fn incoming(receivers: Vec<proto::Receiver>, body: &[u8], expiry: u32) -> proto::IncomingMessage {
    proto::IncomingMessage {
        receivers,
        sender: None,
        body: body.to_vec(),
        expiry,
        r#type: b"test_message".to_vec(),
    }
}

fn messages(msgs: Vec<proto::IncomingMessage>) -> request::Command {
    request::Command::IncomingMessages(proto::IncomingMessagesRequest { messages: msgs })
}

fn stats(ids: Vec<proto::Receiver>) -> request::Command {
    request::Command::ChannelStats(proto::ChannelStatsRequest { channels: ids })
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

/// One message to `receivers` as a whole batch.
fn one(receivers: Vec<proto::Receiver>, body: &[u8], expiry: u32) -> Vec<u8> {
    batch(vec![messages(vec![incoming(receivers, body, expiry)])])
}

// ---- decoding what comes back ----

/// One received v4 message.
#[derive(Debug, Clone, PartialEq)]
struct Out {
    /// The 13-byte id hex-encoded: the 26-digit mid.
    mid: String,
    body: Vec<u8>,
    created: u32,
    expiry: u32,
    sender: Option<proto::Sender>,
}

fn decode_response(bytes: &[u8]) -> proto::ResponseBatch {
    proto::ResponseBatch::decode(bytes)
        .unwrap_or_else(|e| panic!("not a ResponseBatch ({e}): {bytes:02x?}"))
}

/// Every outgoing message of a batch, in order; any other response is a failure here.
fn outgoing(bytes: &[u8]) -> Vec<Out> {
    let mut out = Vec::new();
    for r in decode_response(bytes).responses {
        let Some(response::Command::OutgoingMessages(m)) = r.command else {
            panic!("expected outgoingMessages, got {r:?}");
        };
        for m in m.messages {
            assert_eq!(m.id.len(), 13, "binary mid must be 13 bytes");
            out.push(Out {
                mid: hex(&m.id),
                body: m.body,
                created: m.created,
                expiry: m.expiry,
                sender: m.sender,
            });
        }
    }
    out
}

fn channel_stats(bytes: &[u8]) -> Vec<proto::ChannelStats> {
    let b = decode_response(bytes);
    assert_eq!(b.responses.len(), 1, "{b:?}");
    match &b.responses[0].command {
        Some(response::Command::ChannelStats(s)) => s.channels.clone(),
        other => panic!("expected channelStats, got {other:?}"),
    }
}

fn backend() -> Option<proto::Sender> {
    Some(proto::Sender {
        r#type: 2,
        id: Vec::new(),
    })
}

fn client(public_id: &str) -> Option<proto::Sender> {
    Some(proto::Sender {
        r#type: 1,
        id: unhex(public_id),
    })
}

// ---- transport helpers ----

fn binary_request(path_and_query: &str, body: &[u8]) -> Vec<u8> {
    let mut raw = format!(
        "POST {path_and_query} HTTP/1.0\r\nHost: 127.0.0.1:8895\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    raw.extend_from_slice(body);
    raw
}

/// `POST /bitrix/pub/?binaryMode=true` as PHP sends it.
fn pub_bin(s: &Server, body: &[u8]) -> Response {
    s.pub_request(&binary_request(
        "/bitrix/pub/?binaryMode=true&hostname=portal.example",
        body,
    ))
}

fn pub_bin_ok(s: &Server, body: &[u8]) {
    let r = pub_bin(s, body);
    assert_eq!(
        (r.status, r.body_str().as_str()),
        (200, ""),
        "binary publish should answer 200 with an empty body"
    );
    assert_content_type_text(&r);
}

/// `POST <path>?<query>` on the public listener (client publishing).
fn rest(s: &Server, path: &str, query: &str, body: &[u8]) -> Response {
    s.sub_request(&binary_request(&format!("{path}?{query}"), body))
}

fn assert_octet_stream(r: &Response) {
    assert_eq!(r.status, 200, "{:?}", r.body_str());
    assert_eq!(
        r.header("Content-Type"),
        Some("application/octet-stream"),
        "{:?}",
        r.headers
    );
    assert_eq!(r.header("Access-Control-Allow-Origin"), Some("*"));
    assert!(!r.body.is_empty(), "a 200 body is never empty");
}

impl Ws {
    /// Next data message, which must be binary (docs/protocol.md#websocket), skipping pings.
    fn next_binary(&mut self, timeout: Duration) -> Vec<u8> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.recv(left) {
                WsEvent::Binary(b) => return b,
                WsEvent::Ping | WsEvent::Pong => continue,
                WsEvent::Timeout => panic!("no binary WebSocket message within {timeout:?}"),
                WsEvent::Text(t) => {
                    panic!("a v4 socket must never get text (docs/protocol.md#websocket): {t:?}")
                }
                other => panic!("expected a binary WebSocket message, got {other:?}"),
            }
        }
    }

    /// Exactly `n` v4 messages across WS messages; also returns the per-WS-message counts.
    fn v4_messages(&mut self, n: usize, timeout: Duration) -> (Vec<Out>, Vec<usize>) {
        let deadline = std::time::Instant::now() + timeout;
        let mut got = Vec::new();
        let mut sizes = Vec::new();
        while got.len() < n {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            assert!(!left.is_zero(), "expected {n} v4 messages, got {got:?}");
            let batch = outgoing(&self.next_binary(left));
            sizes.push(batch.len());
            got.extend(batch);
        }
        assert_eq!(got.len(), n, "more messages than expected: {got:?}");
        (got, sizes)
    }

    fn send_binary(&mut self, bytes: &[u8]) {
        self.ws
            .send(tungstenite::Message::binary(bytes.to_vec()))
            .expect("send binary message");
    }
}

fn bodies(v: &[Out]) -> Vec<String> {
    v.iter()
        .map(|o| String::from_utf8_lossy(&o.body).into_owned())
        .collect()
}

// ---------------------------------------------------------------------------------------------
// subscribers

#[test]
fn l4_binary_long_poll_answers_one_response_batch() {
    let s = Server::start();
    let ch = new_id();
    let mut poll = s.lp_begin(&v4q(&signed(&ch)));
    s.wait_online(&ch);
    s.publish_ok(&ch, r#"{"n":1}"#, Some(86400));
    let r = poll.read_response();
    assert_octet_stream(&r);
    let got = outgoing(&r.body);
    assert_eq!(bodies(&got), [r#"{"n":1}"#]);
    assert!(is_mid(&got[0].mid), "{}", got[0].mid);
    assert_eq!(got[0].sender, backend());

    // Resume by mid: the newer stored messages at once, ascending, in one ResponseBatch.
    for i in 2..=4 {
        s.publish_ok(&ch, &format!(r#"{{"n":{i}}}"#), Some(86400));
    }
    let r = s.lp(&format!("{}&mid={}", v4q(&signed(&ch)), got[0].mid));
    assert_octet_stream(&r);
    let more = outgoing(&r.body);
    assert_eq!(bodies(&more), [r#"{"n":2}"#, r#"{"n":3}"#, r#"{"n":4}"#]);
    assert!(more.windows(2).all(|w| w[0].mid < w[1].mid));
    assert!(more[0].mid > got[0].mid);
}

#[test]
fn w3_binary_socket_gets_only_binary_response_batches() {
    let s = Server::start();
    let ch = new_id();
    s.publish_ok(&ch, r#""stored""#, Some(86400));
    let mut ws = s.ws(&format!("{}&mid={OLD_MID}", v4q(&signed(&ch))));
    // Backlog first, as one binary message.
    let (backlog, sizes) = ws.v4_messages(1, WAIT);
    assert_eq!(
        (bodies(&backlog), sizes),
        (vec![r#""stored""#.into()], vec![1])
    );
    // Live: a text publish and a binary publish; a client text frame in between is ignored.
    s.publish_ok(&ch, r#""text-published""#, None);
    ws.send_text("ignored").expect("send text");
    pub_bin_ok(
        &s,
        &one(vec![trusted(&ch, true)], b"\"binary-published\"", 0),
    );
    let (live, _) = ws.v4_messages(2, WAIT);
    assert_eq!(
        bodies(&live),
        [r#""text-published""#, r#""binary-published""#]
    );
    assert!(backlog[0].mid < live[0].mid && live[0].mid < live[1].mid);
    ws.assert_quiet(Duration::from_millis(300));
}

#[test]
fn w4_w6_v4_backlog_in_chunks_of_200_ascending() {
    let s = Server::start();
    let ch = new_id();
    let mut first = s.ws(&v4q(&signed(&ch)));
    s.publish_ok(&ch, "\"m0\"", Some(86400));
    let m0 = first.v4_messages(1, WAIT).0.remove(0);
    drop(first);
    let sent: Vec<String> = (1..=250).map(|i| format!("{{\"n\":{i}}}")).collect();
    for chunk in sent.chunks(100) {
        let msgs = chunk
            .iter()
            .map(|b| incoming(vec![trusted(&ch, true)], b.as_bytes(), 86400))
            .collect();
        pub_bin_ok(&s, &batch(vec![messages(msgs)]));
    }
    let mut ws = s.ws(&format!("{}&mid={}", v4q(&signed(&ch)), m0.mid));
    let (got, sizes) = ws.v4_messages(250, WAIT);
    assert_eq!(sizes, [200, 50], "200 per WS message, gap-free");
    assert_eq!(bodies(&got), sent);
    assert!(
        got.windows(2).all(|w| w[0].mid < w[1].mid),
        "ascending mids within and across WS messages (docs/protocol.md#resuming-by-mid)"
    );
    // Live messages follow.
    s.publish_ok(&ch, "\"live\"", None);
    assert_eq!(bodies(&ws.v4_messages(1, WAIT).0), ["\"live\""]);
}

#[test]
fn w7_v4_client_text_frames_are_ignored() {
    let s = Server::start();
    let ch = new_id();
    let mut ws = s.ws(&v4q(&signed_pair(&ch, &new_id())));
    ws.send_text("hello").expect("send text");
    ws.send_text("#!NGINXNMS!#{}#!NGINXNME!#")
        .expect("send text");
    ws.assert_quiet(Duration::from_millis(300));
    s.publish_ok(&ch, "\"still open\"", None);
    assert_eq!(bodies(&ws.v4_messages(1, WAIT).0), ["\"still open\""]);
}

#[test]
fn w11_invalid_client_messages_close_with_the_code_and_publish_nothing() {
    let s = Server::start();
    let target = new_id();
    let mut watcher = s.ws(&v4q(&signed_pair(&new_id(), &target)));
    let good = || public(&target);
    let mut bad_sig = public(&target);
    bad_sig.signature[0] ^= 1;
    let mut private = public(&target);
    private.is_private = true;
    let valid_then_invalid = {
        let mut b = one(vec![good()], b"\"half\"", 60);
        b.extend(batch(vec![request::Command::ServerStats(
            proto::ServerStatsRequest {},
        )]));
        b
    };
    let mut truncated = one(vec![good()], b"\"cut\"", 60);
    truncated.pop();
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        ("garbage", unhex("0102030405"), 4013, T4013),
        ("truncated", truncated, 4013, T4013),
        ("no command", unhex("0a00"), 4013, T4013),
        (
            "serverStats",
            unhex("0a021a00"),
            4014,
            "4014: Request command is not allowed.",
        ),
        (
            "registration",
            unhex("0a022200"),
            4014,
            "4014: Request command is not allowed.",
        ),
        (
            "101 messages",
            batch(vec![messages(
                (0..101).map(|_| incoming(vec![good()], b"1", 0)).collect(),
            )]),
            4016,
            "4016: Request exceeded the maximum number of messages.",
        ),
        (
            "no receivers",
            one(Vec::new(), b"1", 0),
            4017,
            "4017: No channels found.",
        ),
        (
            "stats without ids",
            batch(vec![stats(Vec::new())]),
            4017,
            "4017: No channels found.",
        ),
        (
            "101 stats ids",
            batch(vec![stats((0..101).map(|_| good()).collect())]),
            4018,
            "4018: Request exceeded the maximum number of channels.",
        ),
        (
            "private receiver",
            one(vec![private], b"1", 0),
            4020,
            "4020: Private channel is not allowed.",
        ),
        (
            "missing signature",
            one(vec![trusted(&target, false)], b"1", 0),
            4021,
            "4021: Channel has an invalid signature.",
        ),
        (
            "wrong signature",
            one(vec![bad_sig], b"1", 0),
            4021,
            "4021: Channel has an invalid signature.",
        ),
        (
            "valid request, then a forbidden one",
            valid_then_invalid,
            4014,
            "4014: Request command is not allowed.",
        ),
    ];
    for (what, bytes, code, reason) in cases {
        let mut ws = s.ws(&v4q(&signed_pair(&new_id(), &new_id())));
        ws.send_binary(&bytes);
        assert_eq!(ws.expect_close(WAIT), (code, reason.to_string()), "{what}");
    }
    watcher.assert_quiet(Duration::from_millis(300));
    // The server still serves.
    let mut ws = s.ws(&v4q(&signed_pair(&new_id(), &new_id())));
    ws.send_binary(&one(vec![good()], b"\"fine\"", 0));
    assert_eq!(bodies(&watcher.v4_messages(1, WAIT).0), ["\"fine\""]);
}

// ---------------------------------------------------------------------------------------------
// binary

#[test]
fn b1_sender_and_created_are_set_and_identical_for_every_subscriber() {
    let s = Server::start();
    let ch = new_id();
    let mut a = s.ws(&v4q(&signed(&ch)));
    let mut b = s.ws(&v4q(&signed(&ch)));
    let mut v3 = s.ws(&v3q(&signed(&ch)));
    let mut poll = s.lp_begin(&v4q(&signed(&ch)));
    s.wait_online(&ch);
    let before = now_secs();
    s.publish_ok(&ch, "\"x\"", Some(60));
    let raw_a = a.next_binary(WAIT);
    let raw_b = b.next_binary(WAIT);
    assert_eq!(raw_a, raw_b, "one encoding shared by all v4 subscribers");
    assert!(
        raw_a.ends_with(&[0x2a, 0x02, 0x08, 0x02]),
        "backend sender must be the bytes 2a 02 08 02: {raw_a:02x?}"
    );
    let m = outgoing(&raw_a).remove(0);
    assert_eq!(m.sender, backend());
    assert!(
        (before..=now_secs()).contains(&u64::from(m.created)),
        "created {} is unix seconds",
        m.created
    );
    // fixed32: tag 0x25, then little-endian seconds.
    let mut fixed = vec![0x25];
    fixed.extend_from_slice(&m.created.to_le_bytes());
    assert!(raw_a.windows(5).any(|w| w == fixed.as_slice()));
    let lp = outgoing(&poll.read_response().body).remove(0);
    assert_eq!(lp, m, "long poll gets the same message");
    let f = v3.frames(1, WAIT).remove(0);
    assert_eq!(f.mid, m.mid);
    assert_eq!(
        f.time,
        push_server::message::http_date(u64::from(m.created)),
        "v3 time and v4 created describe the same second"
    );
}

#[test]
fn b2_subscriber_example_is_reproduced_by_a_real_publish() {
    let s = Server::start();
    let ch = new_id();
    let mut ws = s.ws(&v4q(&signed(&ch)));
    let body = r#"{"module_id":"im","command":"test","params":{}}"#;
    s.publish_ok(&ch, body, Some(86400));
    let raw = ws.next_binary(WAIT);
    let m = outgoing(&raw).remove(0);
    // docs/protocol.md#v4-protobuf with this message's id and created substituted.
    let want = unhex(&format!(
        "0a510a4f0a4d 0a0d {} 122f {} 1880a305 25 {} 2a020802",
        m.mid,
        hex(body.as_bytes()),
        hex(&m.created.to_le_bytes())
    ));
    assert_eq!(want.len(), 83);
    assert_eq!(raw, want);
}

#[test]
fn b3_php_example_publishes_to_the_private_channel() {
    let s = Server::start();
    let mut v4 = s.ws(&v4q(&signed(PRIV)));
    let mut v3 = s.ws(&v3q(&signed(PRIV)));
    let example = unhex(
        "0a2e0a2c0a2a 0a14 0a10 098f6bcd4621d373cade4e832627b4f6 1001 1a02 7b7d 2080a305 2a0a 696d5f6d657373616765",
    );
    assert_eq!(example.len(), 48);
    pub_bin_ok(&s, &example);
    let m = v4.v4_messages(1, WAIT).0.remove(0);
    assert_eq!((m.body.as_slice(), m.expiry), (&b"{}"[..], 86400));
    assert_eq!(v3.frames(1, WAIT)[0].text, "{}");
    // Stored for its expiry: replayable by mid.
    let r = s.lp(&format!("{}&mid={OLD_MID}", v3q(&signed(PRIV))));
    assert_eq!(r.frames()[0].mid, m.mid);
    let stat = s.server_stat();
    assert_eq!(stat[0]["daily"]["messages"]["im_message"], 1, "{stat}");
    assert_eq!(
        stat[0]["daily"]["requests"]["incomingMessages"], 1,
        "{stat}"
    );
}

#[test]
fn b4_zero_message_publish_answers_200_and_publishes_nothing() {
    let s = Server::start();
    let ch = new_id();
    let mut ws = s.ws(&v4q(&signed(&ch)));
    pub_bin_ok(&s, &unhex("0a020a00"));
    ws.assert_quiet(Duration::from_millis(300));
    let stat = s.server_stat();
    assert_eq!(
        stat[0]["daily"]["messages"],
        serde_json::json!({}),
        "{stat}"
    );
}

#[test]
fn b5_undecodable_bodies_are_4013_and_the_server_keeps_serving() {
    let s = Server::start();
    let ch = new_id();
    let mut ws = s.ws(&v4q(&signed(&ch)));
    let mut truncated = one(vec![trusted(&ch, true)], b"\"cut\"", 60);
    truncated.pop();
    let cases = [
        ("garbage", unhex("0102030405")),
        ("truncated", truncated),
        ("empty body", Vec::new()),
        ("request without command", unhex("0a00")),
        ("varint where a request belongs", unhex("0801")),
        ("varint where incomingMessages belongs", unhex("0a02 0801")),
        (
            "fixed64 where a receiver belongs",
            unhex("0a0b 0a09 0a07 09 0000000000000000"),
        ),
        ("length past the end", unhex("0a05 0a03 0a01")),
    ];
    for (what, body) in cases {
        let r = pub_bin(&s, &body);
        r.assert_error(400, T4013);
        assert!(!what.is_empty());
    }
    ws.assert_quiet(Duration::from_millis(200));
    pub_bin_ok(&s, &one(vec![trusted(&ch, true)], b"\"ok\"", 0));
    assert_eq!(bodies(&ws.v4_messages(1, WAIT).0), ["\"ok\""]);
    s.publish_ok(&ch, "\"legacy\"", None);
    assert_eq!(bodies(&ws.v4_messages(1, WAIT).0), ["\"legacy\""]);
}

#[test]
fn b6_limits_answer_4016_4017_4018_4019() {
    let s = Server::start();
    let ch = new_id();
    let mut ws = s.ws(&v4q(&signed(&ch)));
    let rcv = || trusted(&ch, true);
    let cases = [
        (
            batch(vec![messages(
                (0..101).map(|_| incoming(vec![rcv()], b"1", 0)).collect(),
            )]),
            "4016: Request exceeded the maximum number of messages.",
        ),
        (one(Vec::new(), b"1", 0), "4017: No channels found."),
        (
            one((0..101).map(|_| rcv()).collect(), b"1", 0),
            "4018: Request exceeded the maximum number of channels.",
        ),
        (
            one(vec![trusted(&ch[..30], true)], b"1", 0),
            "4019: Request has an invalid channel id.",
        ),
        (batch(vec![stats(Vec::new())]), "4017: No channels found."),
        (
            batch(vec![stats((0..101).map(|_| rcv()).collect())]),
            "4018: Request exceeded the maximum number of channels.",
        ),
        (
            batch(vec![stats(vec![trusted(&ch[..30], true)])]),
            "4019: Request has an invalid channel id.",
        ),
        (unhex("0a022200"), "4015: Wrong Request Command."),
    ];
    for (body, want) in cases {
        pub_bin(&s, &body).assert_error(400, want);
    }
    ws.assert_quiet(Duration::from_millis(200));
    // The limits themselves are accepted: 100 messages, 100 receivers.
    pub_bin_ok(
        &s,
        &batch(vec![messages(
            (0..100).map(|_| incoming(vec![rcv()], b"1", 0)).collect(),
        )]),
    );
    assert_eq!(ws.v4_messages(100, WAIT).0.len(), 100);
    let mut wide: Vec<proto::Receiver> = (0..99).map(|_| trusted(&new_id(), true)).collect();
    wide.push(rcv());
    pub_bin_ok(&s, &one(wide, b"\"wide\"", 0));
    assert_eq!(bodies(&ws.v4_messages(1, WAIT).0), ["\"wide\""]);
}

#[test]
fn b7_every_request_of_a_batch_is_processed_in_order() {
    let s = Server::start();
    let ch = new_id();
    let offline = new_id();
    let mut ws = s.ws(&v4q(&signed(&ch)));
    let body = batch(vec![
        messages(vec![incoming(vec![trusted(&ch, true)], b"\"m1\"", 0)]),
        stats(vec![trusted(&ch, true), trusted(&offline, true)]),
        messages(vec![
            incoming(vec![trusted(&ch, true)], b"\"m2\"", 0),
            incoming(vec![trusted(&ch, true)], b"\"m3\"", 0),
        ]),
        request::Command::ServerStats(proto::ServerStatsRequest {}),
    ]);
    let r = pub_bin(&s, &body);
    assert_octet_stream(&r);
    let answers = decode_response(&r.body).responses;
    assert_eq!(
        answers.len(),
        2,
        "one Response per stats request: {answers:?}"
    );
    let Some(response::Command::ChannelStats(cs)) = &answers[0].command else {
        panic!("{answers:?}")
    };
    assert_eq!(
        cs.channels
            .iter()
            .map(|c| (hex(&c.id), c.is_online))
            .collect::<Vec<_>>(),
        [(ch.clone(), true), (offline, false)]
    );
    assert!(matches!(
        answers[1].command,
        Some(response::Command::ServerStats(_))
    ));
    assert_eq!(
        bodies(&ws.v4_messages(3, WAIT).0),
        ["\"m1\"", "\"m2\"", "\"m3\""]
    );
    // Two publish requests without stats: both processed, answered with an empty 200.
    pub_bin_ok(
        &s,
        &batch(vec![
            messages(vec![incoming(vec![trusted(&ch, true)], b"\"a\"", 0)]),
            messages(vec![incoming(vec![trusted(&ch, true)], b"\"b\"", 0)]),
        ]),
    );
    assert_eq!(bodies(&ws.v4_messages(2, WAIT).0), ["\"a\"", "\"b\""]);
    // An invalid later request fails the whole batch: nothing of it is published (docs/protocol.md#trusted-publish-php).
    let bad = batch(vec![
        messages(vec![incoming(vec![trusted(&ch, true)], b"\"never\"", 0)]),
        messages(vec![incoming(Vec::new(), b"\"never\"", 0)]),
    ]);
    pub_bin(&s, &bad).assert_error(400, "4017: No channels found.");
    ws.assert_quiet(Duration::from_millis(300));
}

#[test]
fn b8_browser_example_reaches_every_subscriber_of_the_public_id() {
    let s = Server::builder().env("SECURITY_KEY", "secret").start();
    let pair = |p: &str, q: &str| {
        let pq = format!("{p}:{q}");
        format!("{pq}.{}", sign_with("secret", &pq))
    };
    assert_eq!(
        pair(PRIV, PUB),
        format!("{PRIV}:{PUB}.e9d67434a2735d6a4865b3e64b514f7e648008d7")
    );
    // Subscribers of 4c91…6961 (the public id of the pair in docs/protocol.md#worked-examples), in both modes.
    let mut target_v4 = s.ws(&v4q(&pair(PRIV, PUB)));
    let mut target_v3 = s.ws(&v3q(&pair(PRIV, PUB)));
    // The publisher: another user's pair.
    let (their_priv, their_pub) = (new_id(), new_id());
    let mut publisher = s.ws(&v4q(&pair(&their_priv, &their_pub)));
    let example = unhex(
        "0a69 0a67 0a65 0a28 0a10 4c9184f37cff01bcdc32dc486ec36961 1a14 59a5001be5603756b5e23b55b51ebe63ce91b661
         1a37 7b226d6f64756c655f6964223a2274657374222c22636f6d6d616e64223a2268656c6c6f222c22706172616d73223a7b2261223a317d7d 201e",
    );
    assert_eq!(example.len(), 107);
    publisher.send_binary(&example);
    let body = r#"{"module_id":"test","command":"hello","params":{"a":1}}"#;
    let m = target_v4.v4_messages(1, WAIT).0.remove(0);
    assert_eq!(m.body, body.as_bytes());
    assert_eq!(m.sender, client(&their_pub));
    assert_eq!(m.expiry, 30);
    let f = target_v3.frames(1, WAIT).remove(0);
    assert_eq!((f.mid.as_str(), f.text.as_str()), (m.mid.as_str(), body));
    publisher.assert_quiet(Duration::from_millis(200));
    // A publisher subscribed to the target gets its own message, sent by its public id.
    target_v4.send_binary(&example);
    let own = target_v4.v4_messages(1, WAIT).0.remove(0);
    assert_eq!(own.sender, client(PUB));
    assert!(own.mid > m.mid);
}

#[test]
fn b9_client_publish_errors_on_websocket_and_rest() {
    let s = Server::start();
    let target = new_id();
    let mut watcher = s.ws(&v4q(&signed_pair(&new_id(), &target)));
    let valid = one(vec![public(&target)], b"\"x\"", 0);
    let mut private = public(&target);
    private.is_private = true;
    let mut wrong = public(&target);
    wrong.signature = unhex(&sign_with("otherKey", &format!("public:{target}")));

    // WebSocket: a socket without a public id (priv.sig only) → 4012.
    let mut ws = s.ws(&v4q(&signed(&new_id())));
    ws.send_binary(&valid);
    assert_eq!(
        ws.expect_close(WAIT),
        (4012, "4012: Public Channel Id is Required.".to_string())
    );
    for (r, code, text) in [
        (
            private.clone(),
            4020,
            "4020: Private channel is not allowed.",
        ),
        (
            wrong.clone(),
            4021,
            "4021: Channel has an invalid signature.",
        ),
    ] {
        let mut ws = s.ws(&v4q(&signed_pair(&new_id(), &new_id())));
        ws.send_binary(&one(vec![r], b"\"x\"", 0));
        assert_eq!(ws.expect_close(WAIT), (code, text.to_string()));
    }

    // REST: the same checks as HTTP answers.
    let pair_q = format!("CHANNEL_ID={}", enc(&signed_pair(&new_id(), &new_id())));
    let cases = [
        (
            String::new(),
            valid.clone(),
            "4012: Public Channel Id is Required.",
        ),
        (
            format!("CHANNEL_ID={}", enc(&signed(&new_id()))),
            valid.clone(),
            "4012: Public Channel Id is Required.",
        ),
        (
            format!("CHANNEL_ID={}:{}", new_id(), new_id()),
            valid.clone(),
            "4012: Public Channel Id is Required.",
        ),
        (pair_q.clone(), unhex("0102030405"), T4013),
        (
            pair_q.clone(),
            one(vec![private], b"\"x\"", 0),
            "4020: Private channel is not allowed.",
        ),
        (
            pair_q.clone(),
            one(vec![wrong], b"\"x\"", 0),
            "4021: Channel has an invalid signature.",
        ),
    ];
    for (query, body, want) in cases {
        rest(&s, "/bitrix/rest/", &query, &body).assert_error(400, want);
    }
    watcher.assert_quiet(Duration::from_millis(300));
}

#[test]
fn b10_rest_and_pubweb_publish_with_an_empty_200() {
    let s = Server::start();
    let target = new_id();
    let mut watcher = s.ws(&v4q(&signed_pair(&new_id(), &target)));
    let (me_priv, me_pub) = (new_id(), new_id());
    let me = format!("CHANNEL_ID={}", enc(&signed_pair(&me_priv, &me_pub)));
    for path in ["/bitrix/rest/", "/bitrix/pubweb/"] {
        let body = format!("\"via {path}\"");
        let r = rest(
            &s,
            path,
            &me,
            &one(vec![public(&target)], body.as_bytes(), 0),
        );
        assert_eq!((r.status, r.body_str().as_str()), (200, ""), "{path}");
        assert_eq!(r.header("Access-Control-Allow-Origin"), Some("*"));
        let m = watcher.v4_messages(1, WAIT).0.remove(0);
        assert_eq!(m.body, body.as_bytes());
        assert_eq!(m.sender, client(&me_pub));
    }
    // Untrusted serverStats → 4014.
    rest(&s, "/bitrix/rest/", &me, &unhex("0a021a00"))
        .assert_error(400, "4014: Request command is not allowed.");
    // channelStats: the answer is the HTTP body.
    let r = rest(
        &s,
        "/bitrix/rest/",
        &me,
        &batch(vec![stats(vec![public(&target), public(&new_id())])]),
    );
    assert_octet_stream(&r);
    let entries = channel_stats(&r.body);
    assert_eq!(
        entries.iter().map(|e| e.is_online).collect::<Vec<_>>(),
        [true, false]
    );
    assert!(entries.iter().all(|e| !e.is_private));
    // ... and on the WebSocket, a binary message to the asking socket.
    let mut asker = s.ws(&v4q(&signed_pair(&new_id(), &new_id())));
    asker.send_binary(&batch(vec![stats(vec![public(&target)])]));
    let entries = channel_stats(&asker.next_binary(WAIT));
    assert_eq!((hex(&entries[0].id), entries[0].is_online), (target, true));
    // CORS preflight on the REST path.
    let r = s.sub_request(b"OPTIONS /bitrix/rest/ HTTP/1.0\r\nHost: x\r\n\r\n");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("Access-Control-Allow-Origin"), Some("*"));
}

/// Appends a field with wire type 2 (length-delimited).
fn ld(out: &mut Vec<u8>, field: u32, payload: &[u8]) {
    prost::encoding::encode_key(field, prost::encoding::WireType::LengthDelimited, out);
    prost::encoding::encode_varint(payload.len() as u64, out);
    out.extend_from_slice(payload);
}

fn varint(out: &mut Vec<u8>, field: u32, v: u64) {
    prost::encoding::encode_key(field, prost::encoding::WireType::Varint, out);
    prost::encoding::encode_varint(v, out);
}

#[test]
fn b11_unknown_fields_and_non_utf8_bodies_do_not_break_decoding() {
    let s = Server::start();
    let ch = new_id();
    let mut v4 = s.ws(&v4q(&signed(&ch)));
    let body = [0xff, 0xfe, 0x00, 0x80, b'x'];
    let mut receiver = Vec::new();
    ld(&mut receiver, 1, &unhex(&ch));
    varint(&mut receiver, 2, 1);
    varint(&mut receiver, 9, 7); // unknown
    let mut msg = Vec::new();
    ld(&mut msg, 1, &receiver);
    ld(&mut msg, 3, &body);
    varint(&mut msg, 4, 60);
    ld(&mut msg, 5, &[0xc3, 0x28]); // type: invalid UTF-8 too
    ld(&mut msg, 15, b"junk"); // unknown
    let mut inc = Vec::new();
    ld(&mut inc, 1, &msg);
    inc.extend_from_slice(&[0x3d, 1, 2, 3, 4]); // unknown fixed32 field 7
    let mut req = Vec::new();
    ld(&mut req, 1, &inc);
    varint(&mut req, 10, 1); // unknown
    let mut raw = Vec::new();
    ld(&mut raw, 1, &req);
    ld(&mut raw, 99, b"x"); // unknown
    pub_bin_ok(&s, &raw);
    let m = v4.v4_messages(1, WAIT).0.remove(0);
    assert_eq!(m.body, body, "body relayed byte-exact");
    assert_eq!(m.expiry, 60);
}

// ---------------------------------------------------------------------------------------------
// stats

#[test]
fn s4_binary_channel_stats_one_entry_per_id_in_order() {
    let s = Server::start();
    let (ws_ch, lp_ch, off, pub_id) = (new_id(), new_id(), new_id(), new_id());
    let _ws = s.ws(&v4q(&signed_pair(&ws_ch, &pub_id)));
    let _poll = s.lp_begin(&v4q(&signed(&lp_ch)));
    s.wait_online(&lp_ch);
    let ids = [
        (off.clone(), true, false),
        (ws_ch.clone(), true, true),
        (pub_id.clone(), false, true),
        (lp_ch.clone(), true, true),
        (ws_ch.clone(), false, true),
    ];
    let req = batch(vec![stats(
        ids.iter().map(|(id, p, _)| trusted(id, *p)).collect(),
    )]);
    let r = pub_bin(&s, &req);
    assert_octet_stream(&r);
    let got: Vec<(String, bool, bool)> = channel_stats(&r.body)
        .into_iter()
        .map(|c| (hex(&c.id), c.is_private, c.is_online))
        .collect();
    assert_eq!(got, ids);
    // isOnline=false is not encoded; the offline entry is exactly id + isPrivate.
    let mut off_entry = Vec::new();
    ld(&mut off_entry, 1, &unhex(&off));
    varint(&mut off_entry, 2, 1);
    let mut wrapped = Vec::new();
    ld(&mut wrapped, 1, &off_entry);
    assert!(
        r.body
            .windows(wrapped.len())
            .any(|w| w == wrapped.as_slice())
    );
}

#[test]
fn s5_stats_example_for_an_online_channel_is_exactly_28_bytes() {
    let s = Server::start();
    let _ws = s.ws(&v3q(&signed(PRIV)));
    let r = pub_bin(
        &s,
        &unhex("0a18 1216 0a14 0a10 098f6bcd4621d373cade4e832627b4f6 1001"),
    );
    assert_octet_stream(&r);
    assert_eq!(
        r.body,
        unhex("0a1a 1218 0a16 0a10 098f6bcd4621d373cade4e832627b4f6 1001 1801")
    );
}

#[test]
fn s6_binary_server_stats_is_the_server_stat_array() {
    let s = Server::start();
    let _ws = s.ws(&v4q(&signed(&new_id())));
    let r = pub_bin(&s, &unhex("0a021a00"));
    assert_octet_stream(&r);
    let b = decode_response(&r.body);
    assert_eq!(b.responses.len(), 1);
    let Some(response::Command::ServerStats(j)) = &b.responses[0].command else {
        panic!("{b:?}")
    };
    let bin: serde_json::Value = serde_json::from_slice(&j.json).expect("JSON");
    let get = s.server_stat();
    let (bin, get) = (&bin[0], &get[0]);
    let keys = |v: &serde_json::Value| {
        let mut k: Vec<String> = v.as_object().expect("object").keys().cloned().collect();
        k.sort();
        k
    };
    assert_eq!(keys(bin), keys(get));
    for k in [
        "pid",
        "processUniqueId",
        "limits",
        "channels",
        "websockets",
        "clusterMode",
    ] {
        assert_eq!(bin[k], get[k], "{k}");
    }
    assert_eq!(bin["websockets"], 1);
    assert_eq!(get["daily"]["requests"]["serverStats"], 2, "{get}");
}

#[test]
fn s1_legacy_online_query_with_binary_mode_answers_protobuf() {
    let s = Server::start();
    let (on, off) = (new_id(), new_id());
    let _ws = s.ws(&v3q(&signed(&on)));
    let list = format!("{off}/{on}");
    let raw = format!(
        "GET /bitrix/pub/?CHANNEL_ID={list}&binaryMode=true HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Length: {}\r\n\r\n{list}",
        list.len()
    );
    let r = s.pub_request(raw.as_bytes());
    assert_octet_stream(&r);
    let got: Vec<(String, bool, bool)> = channel_stats(&r.body)
        .into_iter()
        .map(|c| (hex(&c.id), c.is_private, c.is_online))
        .collect();
    assert_eq!(got, [(off, true, false), (on.clone(), true, true)]);
    // Without the flag: the JSON form.
    assert!(s.online(&[&on]).body_str().contains(&on));
}

// ---------------------------------------------------------------------------------------------
// v3 and v4 side by side

#[test]
fn v3_and_v4_subscribers_receive_identical_sequences() {
    let s = Server::start();
    let (ch, pub_id) = (new_id(), new_id());
    let item = signed_pair(&ch, &pub_id);
    let mut v3 = s.ws(&v3q(&item));
    let mut v4 = s.ws(&v4q(&item));
    let rest_q = format!("CHANNEL_ID={}", enc(&signed_pair(&new_id(), &new_id())));
    let mut sent = Vec::new();
    for i in 0..30 {
        let body = format!("{{\"n\":{i}}}");
        match i % 3 {
            0 => s.publish_ok(&ch, &body, Some(3600)),
            1 => pub_bin_ok(&s, &one(vec![trusted(&ch, true)], body.as_bytes(), 3600)),
            _ => {
                let r = rest(
                    &s,
                    "/bitrix/rest/",
                    &rest_q,
                    &one(vec![public(&pub_id)], body.as_bytes(), 3600),
                );
                assert_eq!(r.status, 200, "{:?}", r.body_str());
            }
        }
        sent.push(body);
    }
    let frames = v3.frames(30, WAIT);
    let (live, _) = v4.v4_messages(30, WAIT);
    assert_eq!(
        frames.iter().map(|f| f.text.clone()).collect::<Vec<_>>(),
        sent
    );
    assert_eq!(bodies(&live), sent);
    for (f, m) in frames.iter().zip(&live) {
        assert_eq!(f.mid, m.mid);
        assert_eq!(
            f.time,
            push_server::message::http_date(u64::from(m.created))
        );
    }
    // Replays by mid agree too, in both long-poll encodings.
    let r3 = s.lp(&format!("{}&mid={OLD_MID}", v3q(&item)));
    let r4 = s.lp(&format!("{}&mid={OLD_MID}", v4q(&item)));
    let replay3: Vec<(String, String)> = r3.frames().into_iter().map(|f| (f.mid, f.text)).collect();
    let replay4 = outgoing(&r4.body);
    assert_eq!(replay4, live, "v4 replay equals the live v4 sequence");
    assert_eq!(
        replay3,
        live.iter()
            .map(|m| (m.mid.clone(), String::from_utf8_lossy(&m.body).into_owned()))
            .collect::<Vec<_>>()
    );
}

#[test]
fn v4_websocket_message_over_the_limit_closes_1009() {
    let s = Server::start();
    let mut ws = s.ws(&v4q(&signed_pair(&new_id(), &new_id())));
    // The server may close before it has read everything; a write error is fine.
    let _ = ws
        .ws
        .send(tungstenite::Message::binary(vec![0u8; 1_048_577]));
    assert_eq!(ws.expect_close(WAIT).0, 1009);
}

#[test]
fn binary_publish_checks_an_optional_body_signature() {
    let s = Server::start();
    let ch = new_id();
    let mut ws = s.ws(&v4q(&signed(&ch)));
    let body = one(vec![trusted(&ch, true)], b"\"signed\"", 0);
    let sig = {
        use hmac::{Hmac, KeyInit, Mac};
        let mut mac = <Hmac<sha1::Sha1> as KeyInit>::new_from_slice(KEY.as_bytes()).expect("key");
        mac.update(&body);
        hex(&mac.finalize().into_bytes())
    };
    let wrong = "0".repeat(40);
    let r = s.pub_request(&binary_request(
        &format!("/bitrix/pub/?binaryMode=true&signature={wrong}"),
        &body,
    ));
    r.assert_error(400, "4026: Wrong request signature.");
    ws.assert_quiet(Duration::from_millis(200));
    let r = s.pub_request(&binary_request(
        &format!("/bitrix/pub/?binaryMode=true&clientId=x&signature={sig}"),
        &body,
    ));
    assert_eq!((r.status, r.body_str().as_str()), (200, ""));
    assert_eq!(bodies(&ws.v4_messages(1, WAIT).0), ["\"signed\""]);
}
