//! Long polling (docs/protocol.md#long-poll, docs/protocol.md#resuming-by-mid).

mod common;

use common::*;
use std::time::{Duration, Instant};

fn cid(id: &str) -> String {
    format!("CHANNEL_ID={}", enc(&signed(id)))
}

/// A server whose long polls end after 1 s.
fn short_lp() -> Server {
    Server::builder().env("LONG_POLL_TIMEOUT", "1").start()
}

/// Checks the exact docs/protocol.md#long-poll 304 answer and returns its Last-Message-Id.
fn assert_304(r: &Response) -> String {
    assert_eq!(
        r.status,
        304,
        "expected 304 Not Modified, got {} {:?}",
        r.status,
        r.body_str()
    );
    assert_eq!(r.reason, "Not Modified", "304 reason phrase");
    assert_eq!(
        r.header("Content-Type"),
        Some("text/plain"),
        "304 Content-Type"
    );
    assert_eq!(
        r.header("Access-Control-Allow-Origin"),
        Some("*"),
        "304 CORS"
    );
    assert_eq!(
        r.header("Access-Control-Expose-Headers"),
        Some("Last-Message-Id"),
        "304 expose header"
    );
    assert_eq!(r.header("Expires"), Some(EXPIRES_304), "304 Expires");
    let lmi = r.header("Last-Message-Id").unwrap_or("").to_string();
    assert!(
        is_mid(&lmi),
        "Last-Message-Id must be 26 digits, got {lmi:?}"
    );
    let allowed = [
        "content-type",
        "access-control-allow-origin",
        "access-control-expose-headers",
        "last-message-id",
        "expires",
        "content-length",
        "connection",
        "date",
        "server",
        "keep-alive",
    ];
    for (k, v) in &r.headers {
        assert!(
            allowed.contains(&k.to_ascii_lowercase().as_str()),
            "unexpected header on 304: {k}: {v}"
        );
        if k.eq_ignore_ascii_case("content-length") {
            assert_eq!(v, "0", "a 304 carries no body");
        }
    }
    lmi
}

#[test]
fn lp_delivers_published_message() {
    let s = Server::start();
    let ch = new_id();
    let mut lp = s.lp_begin(&cid(&ch));
    s.wait_online(&ch);
    let body =
        r#"{"module_id":"im","command":"test","params":{"text":"hi"},"extra":{"revision_web":19}}"#;
    s.publish_ok(&ch, body, None);
    let r = lp.read_response();
    assert_eq!(r.status, 200, "LP answer: {:?}", r.body_str());
    assert_content_type_text(&r);
    assert_eq!(r.header("Access-Control-Allow-Origin"), Some("*"));
    assert!(!r.chunked, "HTTP/1.0 answer must not be chunked");
    let frames = r.frames();
    assert_eq!(frames.len(), 1, "one message published: {frames:?}");
    assert_eq!(frames[0].text, body);
    assert!(is_mid(&frames[0].mid));
}

#[test]
fn lp_304_after_timeout_with_exact_headers() {
    let s = short_lp();
    let ch = new_id();
    let t0 = Instant::now();
    let r = s.lp(&cid(&ch));
    let took = t0.elapsed();
    assert_304(&r);
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_millis(3000),
        "LONG_POLL_TIMEOUT=1 should give a 304 after ~1 s, took {took:?}"
    );
}

#[test]
fn lp_304_has_no_body_bytes() {
    let s = short_lp();
    let ch = new_id();
    let mut c = s.lp_begin(&cid(&ch));
    let head = c.read_head_raw().expect("304 head");
    let head = String::from_utf8_lossy(&head).into_owned();
    assert!(head.contains(" 304 "), "expected a 304 head, got {head:?}");
    // HTTP/1.0 with Connection: close: the server closes; nothing may follow the head.
    let rest = c.read_to_end().expect("read after 304");
    assert!(
        rest.is_empty(),
        "bytes after the 304 head: {:?}",
        String::from_utf8_lossy(&rest)
    );
}

#[test]
fn lp_304_echoes_request_mid() {
    let s = short_lp();
    let ch = new_id();
    let mid = format!("{}0000000000000042", now_secs() + 1000);
    let r = s.lp(&format!("{}&mid={mid}", cid(&ch)));
    let lmi = assert_304(&r);
    assert_eq!(lmi, mid, "Last-Message-Id must be the request's valid mid");
}

#[test]
fn lp_304_without_mid_gives_newest_id_of_receiver_set() {
    let s = short_lp();
    let ch = new_id();
    s.publish_ok(&ch, r#"{"n":1}"#, Some(86400));
    let r = s.lp(&format!("{}&mid={OLD_MID}", cid(&ch)));
    assert_eq!(
        r.status,
        200,
        "stored message replays for an old mid: {:?}",
        r.body_str()
    );
    let m1 = r.frames()[0].mid.clone();
    let r = s.lp(&cid(&ch));
    let lmi = assert_304(&r);
    assert_eq!(
        lmi, m1,
        "no mid: Last-Message-Id is the newest id on the receiver set"
    );
}

#[test]
fn lp_malformed_mid_is_treated_as_absent() {
    let s = short_lp();
    let ch = new_id();
    for bad in [
        "abc",
        "1234",
        "1795479773000000000000000x",
        "179547977300000000000000031",
    ] {
        let r = s.lp(&format!("{}&mid={bad}", cid(&ch)));
        let lmi = assert_304(&r);
        assert_ne!(lmi, bad, "a malformed mid must not be echoed");
    }
}

#[test]
fn lp_resume_by_mid_nothing_lost_nothing_repeated() {
    let s = Server::start();
    let ch = new_id();
    let mut lp = s.lp_begin(&cid(&ch));
    s.wait_online(&ch);
    s.publish_ok(&ch, "\"m1\"", Some(86400));
    let f1 = lp.read_response().frames();
    assert_eq!(f1.len(), 1);
    assert_eq!(f1[0].text, "\"m1\"");
    // Disconnected: three messages arrive meanwhile.
    for m in ["\"m2\"", "\"m3\"", "\"m4\""] {
        s.publish_ok(&ch, m, Some(86400));
    }
    let r = s.lp(&format!("{}&mid={}", cid(&ch), f1[0].mid));
    assert_eq!(
        r.status,
        200,
        "resume should answer at once: {:?}",
        r.body_str()
    );
    let f = r.frames();
    let texts: Vec<&str> = f.iter().map(|f| f.text.as_str()).collect();
    assert_eq!(
        texts,
        ["\"m2\"", "\"m3\"", "\"m4\""],
        "backlog after m1, in order, once"
    );
    assert!(f.windows(2).all(|w| w[0].mid < w[1].mid), "ascending mids");
    assert!(f[0].mid > f1[0].mid);
}

#[test]
fn lp_old_mid_gets_stored_messages_in_order() {
    let s = Server::start();
    let ch = new_id();
    for i in 1..=5 {
        s.publish_ok(&ch, &format!("{{\"n\":{i}}}"), Some(86400));
    }
    let t0 = Instant::now();
    let r = s.lp(&format!("{}&mid={OLD_MID}", cid(&ch)));
    assert!(
        t0.elapsed() < Duration::from_secs(3),
        "backlog must answer at once"
    );
    assert_eq!(r.status, 200);
    let texts: Vec<String> = r.frames().into_iter().map(|f| f.text).collect();
    let want: Vec<String> = (1..=5).map(|i| format!("{{\"n\":{i}}}")).collect();
    assert_eq!(texts, want);
}

#[test]
fn lp_expiry_zero_between_polls_is_delivered_within_grace() {
    let s = Server::start();
    let ch = new_id();
    let mut lp = s.lp_begin(&cid(&ch));
    s.wait_online(&ch);
    s.publish_ok(&ch, "\"first\"", None);
    let f1 = lp.read_response().frames();
    // Between two polls, no Message-Expiry (expiry 0): the 60 s grace keeps it (docs/protocol.md#publishing-text-v3).
    s.publish_ok(&ch, "\"between\"", None);
    let r = s.lp(&format!("{}&mid={}", cid(&ch), f1[0].mid));
    assert_eq!(r.status, 200, "{:?}", r.body_str());
    let texts: Vec<String> = r.frames().into_iter().map(|f| f.text).collect();
    assert_eq!(texts, ["\"between\""]);
}

#[test]
fn lp_several_channels_per_request() {
    let s = Server::start();
    let (a, b) = (new_id(), new_id());
    let q = format!(
        "CHANNEL_ID={}",
        enc(&format!("{}/{}", signed(&a), signed(&b)))
    );
    let mut lp = s.lp_begin(&q);
    s.wait_online(&a);
    s.publish_ok(&a, "\"to-a\"", Some(86400));
    let f1 = lp.read_response().frames();
    assert_eq!(f1[0].text, "\"to-a\"");
    let mut lp = s.lp_begin(&format!("{q}&mid={}", f1[0].mid));
    s.publish_ok(&b, "\"to-b\"", Some(86400));
    let f2 = lp.read_response().frames();
    assert_eq!(f2.len(), 1);
    assert_eq!(f2[0].text, "\"to-b\"");
}

#[test]
fn lp_private_public_pair_receives_publish_to_public() {
    let s = Server::start();
    let (p, q) = (new_id(), new_id());
    let mut lp = s.lp_begin(&format!("CHANNEL_ID={}", enc(&signed_pair(&p, &q))));
    s.wait_online(&p);
    s.publish_ok(&q, "\"to-public\"", Some(86400));
    let f = lp.read_response().frames();
    assert_eq!(f.len(), 1);
    assert_eq!(f[0].text, "\"to-public\"");
}

#[test]
fn lp_message_to_priv_and_pub_arrives_once() {
    let s = Server::start();
    let (p, q) = (new_id(), new_id());
    let item = enc(&signed_pair(&p, &q));
    s.publish_ok(&format!("{p}/{q}"), "\"both\"", Some(86400));
    let r = s.lp(&format!("CHANNEL_ID={item}&mid={OLD_MID}"));
    assert_eq!(r.status, 200);
    let texts: Vec<String> = r.frames().into_iter().map(|f| f.text).collect();
    assert_eq!(texts, ["\"both\""], "one message, one copy");
}

#[test]
fn lp_bad_channels_get_4010() {
    let s = Server::start();
    let (a, b) = (new_id(), new_id());
    let wrong_sig = format!("{a}.{}", sign_with("otherKey", &a));
    let upper = format!("{}.{}", a.to_uppercase(), sign(&a.to_uppercase()));
    let upper_sig = format!("{a}.{}", sign(&a).to_uppercase());
    let short_sig = format!("{a}.{}", &sign(&a)[..39]);
    let pair_unsigned = format!("{a}:{b}");
    let pair_signed_priv_only = format!("{a}:{b}.{}", sign(&a));
    let one_bad = format!("{}/{}", signed(&a), format_args!("{b}.{}", sign(&a)));
    let cases = [
        ("wrong signature", wrong_sig),
        ("uppercase hex id", upper),
        ("uppercase signature", upper_sig),
        ("short signature", short_sig),
        ("unsigned item", a.clone()),
        ("unsigned pair", pair_unsigned),
        ("pair signed over priv only", pair_signed_priv_only),
        ("one bad item among good", one_bad),
        ("garbage", "xyz".to_string()),
    ];
    for (what, item) in cases {
        let r = s.lp(&format!("CHANNEL_ID={}", enc(&item)));
        assert_eq!(
            (r.status, r.body_str().as_str()),
            (400, "4010: Wrong Channel Id."),
            "case {what:?} ({item})"
        );
        r.assert_error(400, "4010: Wrong Channel Id.");
    }
    let r = s.lp("foo=bar");
    r.assert_error(400, "4010: Wrong Channel Id.");
}

#[test]
fn options_preflight() {
    let s = Server::start();
    for path in ["/bitrix/sub/", "/bitrix/subws/"] {
        let r = s.sub_request(
            format!("OPTIONS {path} HTTP/1.1\r\nHost: localhost\r\nOrigin: https://portal.example\r\nAccess-Control-Request-Method: GET\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        );
        assert_eq!(r.status, 200, "OPTIONS {path}");
        assert!(
            r.body.is_empty(),
            "OPTIONS body must be empty: {:?}",
            r.body_str()
        );
        assert_content_type_text(&r);
        assert_eq!(r.header("Access-Control-Allow-Origin"), Some("*"), "{path}");
        assert_eq!(
            r.header("Access-Control-Allow-Methods"),
            Some("POST, GET, DELETE, OPTIONS"),
            "{path}"
        );
        assert_eq!(
            r.header("Access-Control-Allow-Headers"),
            Some("If-Modified-Since, If-None-Match"),
            "{path}"
        );
    }
}

#[test]
fn g6_g7_get_with_body_and_unknown_params_are_fine() {
    let s = short_lp();
    let ch = new_id();
    let q = format!(
        "{}&rnd=1716451234567&revision=19&hostname=portal.example&foo=bar&tag=123&time=Tue%2C%2024%20Nov%202026%2000%3A24%3A41%20GMT&clientId=abc",
        cid(&ch)
    );
    let raw = format!(
        "GET /bitrix/sub/?{q} HTTP/1.0\r\nHost: localhost\r\nIf-Modified-Since: Thu, 01 Jan 1970 00:00:00 GMT\r\nIf-None-Match: 0\r\nContent-Length: 11\r\n\r\nhello world"
    );
    let r = s.sub_request(raw.as_bytes());
    assert_304(&r);
}

#[test]
fn g8_subws_get_with_upgrade_but_connection_close_is_long_poll() {
    let s = short_lp();
    let ch = new_id();
    let raw = format!(
        "GET /bitrix/subws/?{} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: close\r\n\r\n",
        cid(&ch)
    );
    let r = s.sub_request(raw.as_bytes());
    assert_304(&r);
}

#[test]
fn g9_sub_and_subws_both_serve_long_poll() {
    let s = Server::start();
    let ch = new_id();
    for path in ["/bitrix/sub/", "/bitrix/subws/"] {
        s.publish_ok(&ch, &format!("\"via {path}\""), Some(86400));
        let mut c = s.sub_conn();
        c.send(&lp_request(path, &format!("{}&mid={OLD_MID}", cid(&ch))));
        let r = c.read_response();
        assert_eq!(r.status, 200, "LP on {path}: {:?}", r.body_str());
        let f = r.frames();
        assert_eq!(
            f.last().map(|f| f.text.clone()),
            Some(format!("\"via {path}\""))
        );
    }
}

#[test]
fn lp_and_ws_on_same_channel_both_receive() {
    let s = Server::start();
    let ch = new_id();
    // The LP also carries a second channel that nothing else subscribes: its being online
    // means the LP is registered.
    let other = new_id();
    let mut ws = s.ws(&cid(&ch));
    let mut lp = s.lp_begin(&format!(
        "CHANNEL_ID={}",
        enc(&format!("{}/{}", signed(&ch), signed(&other)))
    ));
    s.wait_online(&other);
    s.publish_ok(&ch, "\"both-transports\"", None);
    let f = lp.read_response().frames();
    assert_eq!(f[0].text, "\"both-transports\"");
    let w = ws.frames(1, WAIT);
    assert_eq!(w[0].text, "\"both-transports\"");
    assert_eq!(w[0].mid, f[0].mid, "one message, one mid across transports");
}

#[test]
fn lp_backlog_over_200_is_chunked_gap_free() {
    let s = Server::start();
    let ch = new_id();
    let sent: Vec<String> = (0..250).map(|i| format!("{{\"k\":{i}}}")).collect();
    for b in &sent {
        s.publish_ok(&ch, b, Some(86400));
    }
    let r = s.lp(&format!("{}&mid={OLD_MID}", cid(&ch)));
    assert_eq!(r.status, 200);
    let first = r.frames();
    assert!(
        !first.is_empty() && first.len() <= 200,
        "at most 200 messages per LP response, got {}",
        first.len()
    );
    let mut got: Vec<String> = first.iter().map(|f| f.text.clone()).collect();
    let mut last = first.last().expect("frames").mid.clone();
    while got.len() < sent.len() {
        let r = s.lp(&format!("{}&mid={last}", cid(&ch)));
        assert_eq!(r.status, 200, "re-poll must return the rest at once");
        let f = r.frames();
        assert!(f.len() <= 200);
        last = f.last().expect("frames").mid.clone();
        got.extend(f.into_iter().map(|f| f.text));
    }
    assert_eq!(got, sent, "gap-free, in order, each once");
}

#[test]
fn c5_literal_separators_parse() {
    let s = Server::start();
    let (p, q, sh) = (new_id(), new_id(), new_id());
    // Raw `:` and `/`, as PHP-built URLs or a proxy that decoded them may deliver.
    let raw = format!("CHANNEL_ID={}/{}", signed_pair(&p, &q), signed(&sh));
    s.publish_ok(&q, "\"pub\"", Some(86400));
    s.publish_ok(&sh, "\"shared\"", Some(86400));
    let r = s.lp(&format!("{raw}&mid={OLD_MID}"));
    assert_eq!(r.status, 200, "{:?}", r.body_str());
    let texts: Vec<String> = r.frames().into_iter().map(|f| f.text).collect();
    assert_eq!(texts, ["\"pub\"", "\"shared\""]);
}

#[test]
fn l3_publish_during_hold_answers_immediately() {
    let s = Server::start();
    let ch = new_id();
    let mut lp = s.lp_begin(&cid(&ch));
    s.wait_online(&ch);
    let t0 = Instant::now();
    s.publish_ok(&ch, "\"now\"", None);
    let r = lp.read_response();
    let took = t0.elapsed();
    assert_eq!(r.frames()[0].text, "\"now\"");
    assert!(
        took < Duration::from_millis(1000),
        "a held poll must complete right after the publish (took {took:?})"
    );
}

#[test]
fn lp_backlog_merges_channels_in_mid_order_once() {
    let s = Server::start();
    let (a, b) = (new_id(), new_id());
    s.publish_ok(&a, "\"a1\"", Some(86400));
    s.publish_ok(&b, "\"b1\"", Some(86400));
    s.publish_ok(&format!("{a}/{b}"), "\"ab\"", Some(86400));
    s.publish_ok(&a, "\"a2\"", Some(86400));
    s.publish_ok(&b, "\"b2\"", Some(86400));
    let q = format!(
        "CHANNEL_ID={}&mid={OLD_MID}",
        enc(&format!("{}/{}", signed(&a), signed(&b)))
    );
    let r = s.lp(&q);
    assert_eq!(r.status, 200);
    let f = r.frames();
    let texts: Vec<&str> = f.iter().map(|f| f.text.as_str()).collect();
    assert_eq!(texts, ["\"a1\"", "\"b1\"", "\"ab\"", "\"a2\"", "\"b2\""]);
    assert!(f.windows(2).all(|w| w[0].mid < w[1].mid));
}
