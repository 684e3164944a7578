//! Online queries, server stats and routing (docs/protocol.md#routes-and-http, docs/protocol.md#online-query, docs/protocol.md#server-stats).

mod common;

use common::*;

fn cid(id: &str) -> String {
    format!("CHANNEL_ID={}", enc(&signed(id)))
}

fn infos(r: &Response) -> Vec<(String, u64)> {
    assert_eq!(r.status, 200, "online query: {:?}", r.body_str());
    assert_content_type_text(r);
    let v: serde_json::Value = serde_json::from_slice(&r.body)
        .unwrap_or_else(|e| panic!("online answer is not JSON ({e}): {:?}", r.body_str()));
    let arr = v["infos"]
        .as_array()
        .unwrap_or_else(|| panic!("no infos array: {v}"));
    arr.iter()
        .map(|i| {
            (
                i["channel"].as_str().expect("channel string").to_string(),
                i["subscribers"].as_u64().expect("subscribers number"),
            )
        })
        .collect()
}

#[test]
fn s1_online_query_lists_only_online_in_request_order() {
    let s = Server::start();
    let (a, b, c) = (new_id(), new_id(), new_id());
    assert_eq!(
        infos(&s.online(&[&a, &b, &c])),
        vec![],
        "nothing online → empty infos"
    );
    assert_eq!(s.online(&[&a]).body_str(), "{\"infos\":[]}");
    let _wa = s.ws(&cid(&a));
    let _wc = s.ws(&cid(&c));
    let got = infos(&s.online(&[&c, &b, &a]));
    let chans: Vec<&str> = got.iter().map(|(c, _)| c.as_str()).collect();
    assert_eq!(
        chans,
        [c.as_str(), a.as_str()],
        "only online ids, in request order"
    );
    assert!(
        got.iter().all(|(_, n)| *n >= 1),
        "subscribers must be >= 1: {got:?}"
    );
}

#[test]
fn s1_online_query_errors() {
    let s = Server::start();
    let r = s.pub_request(b"GET /bitrix/pub/?CHANNEL_ID= HTTP/1.0\r\nHost: x\r\n\r\n");
    r.assert_error(400, "4017: No channels found.");
    let r = s.online(&["xyz"]);
    r.assert_error(400, "4017: No channels found.");
    let ids: Vec<String> = (0..101).map(|_| new_id()).collect();
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    s.online(&refs).assert_error(
        400,
        "4018: Request exceeded the maximum number of channels.",
    );
    let r = s.online(&refs[..100]);
    assert_eq!(r.status, 200, "100 ids are allowed: {:?}", r.body_str());
}

#[test]
fn s2_second_item_of_ws_is_online() {
    let s = Server::start();
    let (a, b) = (new_id(), new_id());
    let _ws = s.ws(&format!(
        "CHANNEL_ID={}",
        enc(&format!("{}/{}", signed(&a), signed(&b)))
    ));
    let got = infos(&s.online(&[&b]));
    assert_eq!(
        got.len(),
        1,
        "the second channel of a WS must be online: {got:?}"
    );
    assert_eq!(got[0].0, b);
}

#[test]
fn s6_server_stat() {
    let s = Server::builder()
        .env("MAX_PAYLOAD", "500000")
        .env("MAX_CONN_PER_CHANNEL", "7")
        .start();
    let (a, b) = (new_id(), new_id());
    let _w1 = s.ws(&cid(&a));
    let _w2 = s.ws(&cid(&a));
    let lp = s.lp_begin(&cid(&b));
    s.wait_online(&b);
    let r = s.pub_request(b"GET /server-stat/ HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
    assert_eq!(r.status, 200);
    assert_content_type_text(&r);
    assert!(!r.chunked);
    let v: serde_json::Value = serde_json::from_slice(&r.body).expect("JSON");
    let arr = v
        .as_array()
        .unwrap_or_else(|| panic!("server-stat must be a JSON array: {v}"));
    assert_eq!(arr.len(), 1, "one process, one element");
    let o = &arr[0];
    assert_eq!(o["pid"].as_u64(), Some(u64::from(s.pid())), "pid: {o}");
    let date = o["date"].as_u64().unwrap_or(0);
    let now_ms = now_secs() * 1000;
    assert!(
        date + 60_000 > now_ms && date < now_ms + 60_000,
        "date must be now in ms, got {date}"
    );
    assert!(o["processUniqueId"].is_string(), "processUniqueId: {o}");
    assert_eq!(
        o["channels"].as_u64(),
        Some(2),
        "two channels with connections: {o}"
    );
    assert_eq!(o["websockets"].as_u64(), Some(2), "{o}");
    assert_eq!(o["pollings"].as_u64(), Some(1), "{o}");
    // True only when instances share a store (PUSH_TEST_STORE=redis).
    assert_eq!(o["clusterMode"], s.redis.is_some(), "{o}");
    let l = &o["limits"];
    assert_eq!(
        l["maxPayload"], 500000,
        "limits report the enforced values: {l}"
    );
    assert_eq!(l["maxConnPerChannel"], 7, "{l}");
    assert!(l["maxMessagesPerRequest"].is_u64(), "{l}");
    assert_eq!(l["maxChannelsPerRequest"], 100, "{l}");
    assert!(o["daily"].is_object(), "daily: {o}");
    // Also without the trailing slash.
    let r = s.pub_request(b"GET /server-stat HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
    assert_eq!(r.status, 200);
    drop(lp.stream.shutdown(std::net::Shutdown::Both));
}

#[test]
fn g1_unknown_path_is_404_text_plain_with_cors() {
    let s = Server::start();
    for (sock, path) in [(&s.sub, "/nope"), (&s.pubs, "/nope/"), (&s.sub, "/")] {
        let r = http(
            sock,
            format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes(),
        );
        assert_eq!(r.status, 404, "{path}");
        assert_content_type_text(&r);
        assert_eq!(r.header("Access-Control-Allow-Origin"), Some("*"), "{path}");
    }
}

#[test]
fn g2_trusted_routes_only_on_pub_socket() {
    let s = Server::start();
    let ch = new_id();
    let r = s.sub_request(&publish_request(&ch, b"\"x\"", None));
    assert_eq!(r.status, 404, "publish on the sub socket must be 404");
    let r = s.sub_request(b"GET /server-stat/ HTTP/1.0\r\nHost: x\r\n\r\n");
    assert_eq!(r.status, 404, "server-stat on the sub socket must be 404");
    let r = s.sub_request(format!("GET /bitrix/pub/?CHANNEL_ID={ch} HTTP/1.0\r\n\r\n").as_bytes());
    assert_eq!(r.status, 404, "online query on the sub socket must be 404");
    // Subscribers are served only on the sub socket.
    let r = s.pub_request(&lp_request("/bitrix/sub/", &cid(&ch)));
    assert_eq!(r.status, 404, "long poll on the pub socket must be 404");
    // And the trusted ones work on the pub socket.
    s.publish_ok(&ch, "\"x\"", None);
    assert_eq!(
        s.pub_request(b"GET /server-stat/ HTTP/1.0\r\n\r\n").status,
        200
    );
}

#[test]
fn s3_lp_channel_stays_online_for_online_ttl() {
    let s = Server::builder()
        .env("LONG_POLL_TIMEOUT", "1")
        .env("ONLINE_TTL", "2")
        .start();
    let ch = new_id();
    let r = s.lp(&cid(&ch));
    assert_eq!(r.status, 304);
    let ended = std::time::Instant::now();
    assert_eq!(
        infos(&s.online(&[&ch])).len(),
        1,
        "online right after the poll ended"
    );
    let ok = wait_until(std::time::Duration::from_secs(6), || {
        infos(&s.online(&[&ch])).is_empty()
    });
    let at = ended.elapsed();
    assert!(
        ok,
        "still online {at:?} after the poll ended with ONLINE_TTL=2"
    );
    assert!(
        at >= std::time::Duration::from_millis(1500),
        "went offline after {at:?}, before ONLINE_TTL=2"
    );
}
