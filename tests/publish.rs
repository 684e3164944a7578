//! Text publish on the pub socket (docs/protocol.md#publishing-text-v3, docs/protocol.md#publishing-text-v3, docs/protocol.md#publishing-text-v3, docs/protocol.md#publishing-text-v3).

mod common;

use common::*;
use std::time::{Duration, Instant};

fn cid(id: &str) -> String {
    format!("CHANNEL_ID={}", enc(&signed(id)))
}

#[test]
fn p1_publish_answers_200_text_plain_empty() {
    let s = Server::start();
    let ch = new_id();
    let t0 = Instant::now();
    let r = s.publish(
        &ch,
        r#"{"module_id":"im","command":"x","params":[]}"#,
        Some(86400),
    );
    let took = t0.elapsed();
    assert_eq!(r.status, 200, "{:?}", r.body_str());
    assert_content_type_text(&r);
    assert!(r.body.is_empty(), "body must be empty: {:?}", r.body_str());
    assert!(!r.chunked, "HTTP/1.0 answer must not be chunked");
    assert!(took < Duration::from_millis(500), "publish took {took:?}");
}

#[test]
fn p1_client_hanging_up_after_headers_still_delivers() {
    let s = Server::start();
    let ch = new_id();
    let mut ws = s.ws(&cid(&ch));
    let mut c = s.pub_conn();
    c.send(&publish_request(&ch, b"\"php-style\"", None));
    let head = c.read_head_raw().expect("response head");
    assert!(String::from_utf8_lossy(&head).contains(" 200 "));
    drop(c); // PHP disconnects as soon as it has the headers.
    assert_eq!(ws.frames(1, WAIT)[0].text, "\"php-style\"");
}

#[test]
fn p1_client_hanging_up_before_reading_still_delivers() {
    let s = Server::start();
    let ch = new_id();
    let mut ws = s.ws(&cid(&ch));
    let mut c = s.pub_conn();
    c.send(&publish_request(&ch, b"\"fire-and-forget\"", None));
    drop(c);
    assert_eq!(ws.frames(1, WAIT)[0].text, "\"fire-and-forget\"");
}

#[test]
fn p4_invalid_publishes_get_documented_errors_and_publish_nothing() {
    let s = Server::builder().env("MAX_PAYLOAD", "1048576").start();
    let ch = new_id();
    let other = new_id();
    let mut ws = s.ws(&cid(&ch));
    let body = b"\"must-not-arrive\"";

    let post = |path_query: &str, body: &[u8]| {
        let mut raw = format!(
            "POST {path_query} HTTP/1.0\r\nHost: 127.0.0.1:8895\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nMessage-Expiry: 86400\r\n\r\n",
            body.len()
        )
        .into_bytes();
        raw.extend_from_slice(body);
        s.pub_request(&raw)
    };

    post("/bitrix/pub/", body).assert_error(400, "4017: No channels found.");
    post("/bitrix/pub/?CHANNEL_ID=", body).assert_error(400, "4017: No channels found.");
    post("/bitrix/pub/?foo=bar", body).assert_error(400, "4017: No channels found.");
    for bad in [
        format!("{ch}/xyz"),
        format!("{ch}/{}", other.to_uppercase()),
        format!("{ch}/{}", &other[..31]),
        format!("{ch}/{other}0"),
        format!("{ch}:{other}"),
        format!("{ch}:{other}.{}", sign(&ch)),
        format!(
            "{ch}:{other}.{}",
            sign_with("otherKey", &format!("{ch}:{other}"))
        ),
    ] {
        post(&format!("/bitrix/pub/?CHANNEL_ID={bad}"), body)
            .assert_error(400, "4019: Request has an invalid channel id.");
    }
    post(&format!("/bitrix/pub/?CHANNEL_ID={ch}"), b"")
        .assert_error(400, "4013: Wrong Request Data.");
    let big = vec![b'a'; 1_048_577];
    let r = post(&format!("/bitrix/pub/?CHANNEL_ID={ch}"), &big);
    assert_eq!(r.status, 413, "body over 1 MiB: {:?}", r.body_str());

    s.publish_ok(&ch, "\"marker\"", None);
    let texts: Vec<String> = ws
        .frames_until("\"marker\"", WAIT)
        .into_iter()
        .map(|f| f.text)
        .collect();
    assert_eq!(
        texts,
        ["\"marker\""],
        "no invalid publish may deliver anything"
    );
    // Nor store anything: an old mid replays only the marker.
    let r = s.lp(&format!("{}&mid={OLD_MID}", cid(&ch)));
    let texts: Vec<String> = r.frames().into_iter().map(|f| f.text).collect();
    assert_eq!(texts, ["\"marker\""], "no invalid publish may be stored");
}

#[test]
fn p4_body_exactly_max_payload_is_accepted() {
    let s = Server::builder().env("MAX_PAYLOAD", "1000").start();
    let ch = new_id();
    let ok = format!("\"{}\"", "a".repeat(998));
    s.publish_ok(&ch, &ok, None);
    let too_big = format!("\"{}\"", "a".repeat(999));
    let r = s.publish(&ch, &too_big, None);
    assert_eq!(
        r.status,
        413,
        "1001 bytes with MAX_PAYLOAD=1000: {:?}",
        r.body_str()
    );
}

#[test]
fn p3_no_expiry_is_live_and_replayable_only_within_grace() {
    let s = Server::start();
    let ch = new_id();
    let mut ws = s.ws(&cid(&ch));
    s.publish_ok(&ch, "\"zero\"", None);
    assert_eq!(ws.frames(1, WAIT)[0].text, "\"zero\"");
    // Within the 60 s grace window it can be replayed.
    let r = s.lp(&format!("{}&mid={OLD_MID}", cid(&ch)));
    assert_eq!(r.status, 200, "{:?}", r.body_str());
    assert_eq!(r.frames()[0].text, "\"zero\"");
}

#[test]
fn p5_publish_to_100_channels_with_literal_slash() {
    let s = Server::start();
    let ids: Vec<String> = (0..100).map(|_| new_id()).collect();
    let mut socks: Vec<Ws> = ids.iter().map(|id| s.ws(&cid(id))).collect();
    let list = ids.join("/");
    s.publish_ok(&list, "\"fan-out\"", None);
    for (i, ws) in socks.iter_mut().enumerate() {
        let f = ws.frames(1, WAIT);
        assert_eq!(f[0].text, "\"fan-out\"", "channel #{i}");
    }
}

#[test]
fn p6_publish_to_pair_reaches_public_subscribers() {
    let s = Server::start();
    let (p, q) = (new_id(), new_id());
    let mut on_pub = s.ws(&cid(&q));
    let mut on_priv = s.ws(&cid(&p));
    s.publish_ok(&signed_pair(&p, &q), "\"pair\"", None);
    assert_eq!(on_pub.frames(1, WAIT)[0].text, "\"pair\"");
    assert_eq!(on_priv.frames(1, WAIT)[0].text, "\"pair\"");
}

#[test]
fn p9_publish_without_subscribers_is_stored() {
    let s = Server::start();
    let ch = new_id();
    s.publish_ok(&ch, "\"for-later\"", Some(86400));
    let mut ws = s.ws(&format!("{}&mid={OLD_MID}", cid(&ch)));
    assert_eq!(ws.frames(1, WAIT)[0].text, "\"for-later\"");
}

#[test]
fn p10_messages_arrive_in_publish_order() {
    let s = Server::start();
    let ch = new_id();
    let mut ws = s.ws(&cid(&ch));
    let sent: Vec<String> = (0..100).map(|i| format!("{{\"seq\":{i}}}")).collect();
    for b in &sent {
        s.publish_ok(&ch, b, Some(86400));
    }
    let f = ws.frames(100, WAIT);
    let texts: Vec<String> = f.iter().map(|f| f.text.clone()).collect();
    assert_eq!(texts, sent);
    assert!(
        f.windows(2).all(|w| w[0].mid < w[1].mid),
        "mids strictly increase"
    );
    // LP replay keeps the same order.
    let r = s.lp(&format!("{}&mid={OLD_MID}", cid(&ch)));
    let texts: Vec<String> = r.frames().into_iter().map(|f| f.text).collect();
    assert_eq!(texts, sent);
}

#[test]
fn message_expiry_header_is_case_insensitive() {
    let s = Server::start();
    let ch = new_id();
    let body = b"\"lower-case-expiry\"";
    let mut raw = format!(
        "POST /bitrix/pub/?CHANNEL_ID={ch} HTTP/1.0\r\nHost: x\r\nmessage-expiry: 86400\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    raw.extend_from_slice(body);
    assert_eq!(s.pub_request(&raw).status, 200);
    let r = s.lp(&format!("{}&mid={OLD_MID}", cid(&ch)));
    assert_eq!(r.frames()[0].text, "\"lower-case-expiry\"");
}

#[test]
fn x1_site_checker_sequence() {
    let s = Server::start();
    let text = new_id();
    let channel = {
        use sha1::Digest;
        // The checker uses md5(text); any 32-hex id derived from it serves the same purpose.
        hex(&sha1::Sha1::digest(text.as_bytes()))[..32].to_string()
    };
    let mut lp = s.sub_conn();
    lp.send(
        format!(
            "GET /bitrix/sub/?CHANNEL_ID={} HTTP/1.0\r\nHost: portal.example\r\nIf-Modified-Since: Thu, 01 Jan 1970 00:00:00 GMT\r\n\r\n",
            signed(&channel)
        )
        .as_bytes(),
    );
    // The checker waits 1 s; we wait until the poll is registered instead.
    s.wait_online(&channel);
    let r = s.pub_request(
        format!(
            "POST /bitrix/pub/?CHANNEL_ID={channel} HTTP/1.0\r\nHost: 127.0.0.1:8895\r\nContent-Length: {}\r\n\r\n{text}",
            text.len()
        )
        .as_bytes(),
    );
    assert_eq!(r.status, 200);
    assert!(
        r.body.is_empty() || serde_json::from_slice::<serde_json::Value>(&r.body).is_ok(),
        "publish answer body must be empty or JSON: {:?}",
        r.body_str()
    );
    // Read up to 4096 bytes of the LP answer; they must contain `text`.
    let mut got = Vec::new();
    lp.set_timeout(WAIT);
    let ok = wait_until(WAIT, || {
        let mut buf = [0u8; 4096];
        use std::io::Read;
        match lp.stream.read(&mut buf) {
            Ok(0) | Err(_) => true,
            Ok(n) => {
                got.extend_from_slice(&buf[..n]);
                got.len() >= 4096 || String::from_utf8_lossy(&got).contains(&text)
            }
        }
    });
    assert!(ok);
    let got = String::from_utf8_lossy(&got[..got.len().min(4096)]).into_owned();
    assert!(
        got.contains(&text),
        "the first 4096 bytes of the LP answer must contain {text}: {got:?}"
    );
    assert!(
        got.contains(&format!("\"text\":{text}}}")),
        "spliced unquoted"
    );
    let r = s.pub_request(b"DELETE /bitrix/pub/ HTTP/1.0\r\nHost: 127.0.0.1:8895\r\n\r\n");
    assert_eq!(r.status, 404, "DELETE /bitrix/pub/");
}

/// Whether a long poll with an old mid gets `body` replayed (the server answers 304 after
/// LONG_POLL_TIMEOUT when nothing is stored).
fn replayable(s: &Server, ch: &str, body: &str) -> bool {
    let r = s.lp(&format!("{}&mid={OLD_MID}", cid(ch)));
    r.status == 200 && r.frames().iter().any(|f| f.text == body)
}

#[test]
fn p2_p3_expiry_bounds_replay() {
    let s = Server::builder()
        .env("LONG_POLL_TIMEOUT", "1")
        .env("MESSAGE_TTL", "3")
        .env("EXPIRY0_GRACE", "1")
        .start();
    let (short, capped, zero) = (new_id(), new_id(), new_id());
    let t0 = Instant::now();
    s.publish_ok(&short, "\"short\"", Some(2));
    s.publish_ok(&capped, "\"capped\"", Some(999_999));
    s.publish_ok(&zero, "\"zero\"", None);
    let mut ws = s.ws(&format!("{}&mid={OLD_MID}", cid(&capped)));
    let capped_mid = ws.frames(1, WAIT).remove(0).mid;
    drop(ws);
    for (ch, body) in [
        (&short, "\"short\""),
        (&capped, "\"capped\""),
        (&zero, "\"zero\""),
    ] {
        assert!(
            replayable(&s, ch, body),
            "{body} must be replayable at first"
        );
    }
    let mut gone_after = Vec::new();
    for (ch, body, ttl) in [
        (&zero, "\"zero\"", 1u64),
        (&short, "\"short\"", 2),
        (&capped, "\"capped\"", 3),
    ] {
        let ok = wait_until(Duration::from_secs(10), || !replayable(&s, ch, body));
        let at = t0.elapsed();
        assert!(
            ok,
            "{body} still replayable {at:?} after publish (ttl {ttl} s)"
        );
        assert!(
            at >= Duration::from_millis(ttl * 1000 - 200),
            "{body} vanished after {at:?}, before its ttl of {ttl} s"
        );
        gone_after.push(at);
    }
    // With every stored message expired, a 304 still carries a 26-digit id.
    let r = s.lp(&cid(&capped));
    assert_eq!(r.status, 304);
    let lmi = r.header("Last-Message-Id").unwrap_or("").to_string();
    assert!(is_mid(&lmi), "Last-Message-Id after expiry: {lmi:?}");
    assert!(
        lmi >= capped_mid,
        "{lmi} must not go back before {capped_mid}"
    );
}

#[test]
fn publish_over_max_channels_per_request_is_4018() {
    let s = Server::builder()
        .env("MAX_CHANNELS_PER_REQUEST", "3")
        .start();
    let ids: Vec<String> = (0..4).map(|_| new_id()).collect();
    let mut ws = s.ws(&cid(&ids[0]));
    s.publish(&ids.join("/"), "\"too-many\"", Some(86400))
        .assert_error(
            400,
            "4018: Request exceeded the maximum number of channels.",
        );
    s.publish_ok(&ids[..3].join("/"), "\"three\"", None);
    assert_eq!(
        ws.frames(1, WAIT)[0].text,
        "\"three\"",
        "nothing from the refused publish"
    );
}

#[test]
fn p8_trusted_signature_param_must_match_body() {
    let s = Server::start();
    let ch = new_id();
    let mut ws = s.ws(&cid(&ch));
    let body = "{\"signed\":true}";
    let wrong = sign_with("otherKey", body);
    let post = |sig: &str, body: &str| {
        s.pub_request(
            format!(
                "POST /bitrix/pub/?CHANNEL_ID={ch}&clientId=abc&signature={sig} HTTP/1.0\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        )
    };
    post(&wrong, body).assert_error(400, "4026: Wrong request signature.");
    let r = post(&sign(body), body);
    assert_eq!(
        r.status,
        200,
        "a correct body signature is accepted: {:?}",
        r.body_str()
    );
    assert_eq!(
        ws.frames(1, WAIT)[0].text,
        body,
        "only the correctly signed publish arrives"
    );
    // Online GET: the signature is over the CHANNEL_ID value.
    let get = |sig: &str| {
        s.pub_request(
            format!("GET /bitrix/pub/?CHANNEL_ID={ch}&signature={sig} HTTP/1.0\r\n\r\n").as_bytes(),
        )
    };
    get(&sign_with("otherKey", &ch)).assert_error(400, "4026: Wrong request signature.");
    let r = get(&sign(&ch));
    assert_eq!(r.status, 200, "{:?}", r.body_str());
    assert!(r.body_str().contains(&ch), "online: {:?}", r.body_str());
}

#[test]
fn publish_head_and_body_in_separate_writes() {
    let s = Server::start();
    let ch = new_id();
    let mut ws = s.ws(&cid(&ch));
    let body = b"{\"split\":\"body\"}";
    let raw = publish_request(&ch, body, None);
    let mut c = s.pub_conn();
    let head_end = raw.len() - body.len();
    c.send(&raw[..20]);
    c.send(&raw[20..head_end]);
    c.send(&body[..5]);
    c.send(&body[5..]);
    let r = c.read_response();
    assert_eq!(r.status, 200);
    assert_eq!(ws.frames(1, WAIT)[0].text, "{\"split\":\"body\"}");
}
