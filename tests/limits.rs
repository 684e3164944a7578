//! HTTP limits, timeouts and connection handling (docs/protocol.md#routes-and-http, docs/protocol.md#connection-cap).

mod common;

use common::*;
use std::time::{Duration, Instant};

fn cid(id: &str) -> String {
    format!("CHANNEL_ID={}", enc(&signed(id)))
}

#[test]
fn oversize_header_gets_431_and_close() {
    let s = Server::start();
    for sock in [&s.sub, &s.pubs] {
        let mut c = Conn::open(sock);
        let filler = "a".repeat(10_000);
        let raw = format!("GET /bitrix/sub/?x=1 HTTP/1.1\r\nHost: x\r\nX-Filler: {filler}\r\n\r\n");
        // The server may answer and close before reading everything.
        let _ = c.try_send(raw.as_bytes());
        let r = c.try_read_response().expect("a 431 answer");
        assert_eq!(
            r.status,
            431,
            "header over MAX_HEADER_SIZE on {}",
            sock.display()
        );
        assert!(c.closed_within(WAIT), "connection must be closed after 431");
    }
}

#[test]
fn configured_max_header_size_is_enforced() {
    let s = Server::builder().env("MAX_HEADER_SIZE", "1024").start();
    let ch = new_id();
    let mut c = s.sub_conn();
    let raw = format!(
        "GET /bitrix/sub/?{} HTTP/1.0\r\nHost: x\r\nX-Filler: {}\r\n\r\n",
        cid(&ch),
        "b".repeat(1200)
    );
    let _ = c.try_send(raw.as_bytes());
    assert_eq!(c.try_read_response().expect("answer").status, 431);
}

#[test]
fn g10_oversize_body_gets_413() {
    let s = Server::start();
    let ch = new_id();
    let mut c = s.pub_conn();
    let body = vec![b'x'; 1_048_577];
    let _ = c.try_send(&publish_request(&ch, &body, None));
    let r = c.try_read_response().expect("a 413 answer");
    assert_eq!(r.status, 413);
    assert!(c.closed_within(WAIT), "connection must be closed after 413");
}

#[test]
fn oversize_declared_body_rejected_without_sending_it() {
    let s = Server::builder().env("MAX_PAYLOAD", "1000").start();
    let ch = new_id();
    let mut c = s.pub_conn();
    // Only the head: the Content-Length alone is enough to refuse.
    c.send(
        format!("POST /bitrix/pub/?CHANNEL_ID={ch} HTTP/1.0\r\nContent-Length: 5000000\r\n\r\n")
            .as_bytes(),
    );
    let r = c.try_read_response().expect("a 413 answer before the body");
    assert_eq!(r.status, 413);
}

#[test]
fn slowloris_closed_after_header_timeout_while_others_are_served() {
    let s = Server::builder().env("HEADER_TIMEOUT", "1").start();
    let ch = new_id();
    let t0 = Instant::now();
    let mut slow = s.sub_conn();
    slow.send(b"GET /bitrix/sub/?CHANNEL_ID=");
    let mut slow_pub = s.pub_conn();
    slow_pub.send(b"POST /bitrix/pub/?CHANNEL_ID=abc HTTP/1.0\r\nContent-Le");

    // Meanwhile a full LP + publish round trip works.
    let mut lp = s.lp_begin(&cid(&ch));
    s.wait_online(&ch);
    s.publish_ok(&ch, "\"served\"", None);
    assert_eq!(lp.read_response().frames()[0].text, "\"served\"");

    for (name, c) in [("sub", &mut slow), ("pub", &mut slow_pub)] {
        c.set_timeout(Duration::from_secs(5));
        let rest = c.read_to_end().unwrap_or_else(|e| {
            panic!("incomplete head on {name} socket not closed within ~5 s: {e}")
        });
        let text = String::from_utf8_lossy(&rest);
        assert!(
            rest.is_empty() || text.starts_with("HTTP/1.1 408") || text.starts_with("HTTP/1.0 408"),
            "only a 408 may be written before closing: {text:?}"
        );
    }
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(900),
        "closed before HEADER_TIMEOUT=1 elapsed ({took:?})"
    );
    assert!(
        took < Duration::from_secs(4),
        "HEADER_TIMEOUT=1 but closed after {took:?}"
    );
}

#[test]
fn keep_alive_http11_two_requests_on_one_connection() {
    let s = Server::start();
    let ch = new_id();
    let mut ws = s.ws(&cid(&ch));
    let mut c = s.pub_conn();
    for body in ["\"ka1\"", "\"ka2\""] {
        c.send(
            format!(
                "POST /bitrix/pub/?CHANNEL_ID={ch} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        );
        let r = c.read_response();
        assert_eq!(r.status, 200, "keep-alive publish {body}");
        assert!(r.body.is_empty());
    }
    let texts: Vec<String> = ws.frames(2, WAIT).into_iter().map(|f| f.text).collect();
    assert_eq!(texts, ["\"ka1\"", "\"ka2\""]);

    // Sub socket: two OPTIONS then a stats-free GET 404 on one connection.
    let mut c = s.sub_conn();
    for _ in 0..2 {
        c.send(b"OPTIONS /bitrix/sub/ HTTP/1.1\r\nHost: x\r\n\r\n");
        let r = c.read_response();
        assert_eq!(r.status, 200);
        assert!(r.body.is_empty());
    }
    c.send(b"GET /unknown HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(c.read_response().status, 404);
}

#[test]
fn keep_alive_pipelined_requests() {
    let s = Server::start();
    let ch = new_id();
    let mut ws = s.ws(&cid(&ch));
    let mut c = s.pub_conn();
    let mut raw = Vec::new();
    for body in ["\"p1\"", "\"p2\"", "\"p3\""] {
        raw.extend_from_slice(
            format!(
                "POST /bitrix/pub/?CHANNEL_ID={ch} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        );
    }
    c.send(&raw);
    for _ in 0..3 {
        assert_eq!(c.read_response().status, 200);
    }
    let texts: Vec<String> = ws.frames(3, WAIT).into_iter().map(|f| f.text).collect();
    assert_eq!(texts, ["\"p1\"", "\"p2\"", "\"p3\""]);
}

#[test]
fn g4_http10_answers_are_not_chunked() {
    let s = Server::builder().env("LONG_POLL_TIMEOUT", "1").start();
    let ch = new_id();
    s.publish_ok(&ch, "\"stored\"", Some(86400));
    let sub_cases: Vec<(&str, String)> = vec![
        (
            "LP 200",
            format!(
                "GET /bitrix/sub/?{}&mid={OLD_MID} HTTP/1.0\r\n\r\n",
                cid(&ch)
            ),
        ),
        (
            "LP 304",
            format!("GET /bitrix/subws/?{} HTTP/1.0\r\n\r\n", cid(&new_id())),
        ),
        (
            "LP 400",
            "GET /bitrix/sub/?CHANNEL_ID=bad HTTP/1.0\r\n\r\n".to_string(),
        ),
        (
            "OPTIONS",
            "OPTIONS /bitrix/sub/ HTTP/1.0\r\n\r\n".to_string(),
        ),
        ("404", "GET /x HTTP/1.0\r\n\r\n".to_string()),
    ];
    for (name, raw) in sub_cases {
        let mut c = s.sub_conn();
        c.send(raw.as_bytes());
        let r = c.read_response();
        assert!(!r.chunked, "{name}: chunked answer to HTTP/1.0");
        assert_ne!(r.status, 0);
        let rest = c.read_to_end().expect("HTTP/1.0 connection closes");
        assert!(
            rest.is_empty(),
            "{name}: extra bytes {:?}",
            String::from_utf8_lossy(&rest)
        );
    }
    let pub_cases: Vec<(&str, Vec<u8>)> = vec![
        ("publish 200", publish_request(&ch, b"\"x\"", None)),
        ("publish 400", publish_request("", b"\"x\"", None)),
        (
            "online",
            format!("GET /bitrix/pub/?CHANNEL_ID={ch} HTTP/1.0\r\n\r\n").into_bytes(),
        ),
        ("stats", b"GET /server-stat/ HTTP/1.0\r\n\r\n".to_vec()),
        (
            "DELETE 404",
            b"DELETE /bitrix/pub/ HTTP/1.0\r\n\r\n".to_vec(),
        ),
    ];
    for (name, raw) in pub_cases {
        let mut c = s.pub_conn();
        c.send(&raw);
        let r = c.read_response();
        assert!(!r.chunked, "{name}: chunked answer to HTTP/1.0");
        let rest = c.read_to_end().expect("HTTP/1.0 connection closes");
        assert!(
            rest.is_empty(),
            "{name}: extra bytes {:?}",
            String::from_utf8_lossy(&rest)
        );
    }
}

#[test]
fn idle_keep_alive_connection_closed_after_keepalive_timeout() {
    let s = Server::builder().env("KEEPALIVE_TIMEOUT", "1").start();
    let mut c = s.sub_conn();
    c.send(b"OPTIONS /bitrix/sub/ HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(c.read_response().status, 200);
    assert!(
        c.closed_within(Duration::from_secs(5)),
        "an idle keep-alive connection must be closed after KEEPALIVE_TIMEOUT=1"
    );
}
