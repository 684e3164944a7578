//! Operations: systemd readiness over a fake NOTIFY_SOCKET, SIGHUP reload without dropping
//! connections, `/health` and `/metrics` on the pub listener.

mod common;

use common::*;
use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

fn recv_state(sock: &UnixDatagram, want: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut buf = [0u8; 512];
    while Instant::now() < deadline {
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .expect("timeout");
        if let Ok(n) = sock.recv(&mut buf)
            && String::from_utf8_lossy(&buf[..n])
                .lines()
                .any(|l| l == want)
        {
            return true;
        }
    }
    false
}

#[test]
fn notify_ready_and_stopping() {
    let dir = TestDir::new();
    let path = dir.join("notify.sock");
    let sock = UnixDatagram::bind(&path).expect("bind notify socket");
    let mut s = Server::builder()
        .env("NOTIFY_SOCKET", path.display().to_string())
        .start();
    assert!(recv_state(&sock, "READY=1"), "no READY=1 after start");
    s.signal("TERM");
    assert!(recv_state(&sock, "STOPPING=1"), "no STOPPING=1 on SIGTERM");
    let st = s
        .wait_exit(Duration::from_secs(5))
        .expect("exit after TERM");
    assert_eq!(st.code(), Some(0));
}

fn cid_with(key: &str, id: &str) -> String {
    format!("CHANNEL_ID={id}.{}", sign_with(key, id))
}

#[test]
fn sighup_changes_key_and_log_level_keeping_websockets() {
    let dir = TestDir::new();
    let file = dir.join("push-server-multi");
    std::fs::write(&file, "SECURITY_KEY=oldKey1\nLOG_LEVEL=info   # quiet\n")
        .expect("write config");
    // zero_config() only drops the harness's env defaults, so the file is authoritative.
    // The two env values are what systemd's `EnvironmentFile=` makes of that file (the trailing
    // comment stays in the value): they must not pin the old values across a reload.
    let s = Server::builder()
        .zero_config()
        .env("SECURITY_KEY", "oldKey1")
        .env("LOG_LEVEL", "info   # quiet")
        .arg("--config")
        .arg(file.display().to_string())
        .start();
    let ch = new_id();
    let mut old_ws = s.ws(&cid_with("oldKey1", &ch));
    assert!(
        !s.stderr_text().contains("DEBUG"),
        "LOG_LEVEL=info logs no debug lines"
    );

    std::fs::write(&file, "SECURITY_KEY=newKey2\nLOG_LEVEL=debug\n").expect("rewrite config");
    s.signal("HUP");
    assert!(
        wait_until(Duration::from_secs(5), || s
            .stderr_text()
            .contains("configuration reloaded")),
        "no reload log line"
    );

    // The socket opened under the old key stays and keeps receiving.
    s.publish_ok(&ch, "{\"after\":\"reload\"}", None);
    let got = old_ws.frames(1, WAIT);
    assert_eq!(got[0].text, "{\"after\":\"reload\"}");

    // New subscriptions are checked with the new key.
    let mut stale = s.ws(&cid_with("oldKey1", &new_id()));
    assert_eq!(stale.expect_close(WAIT).0, 4010);
    let ch2 = new_id();
    let mut fresh = s.ws(&cid_with("newKey2", &ch2));
    s.publish_ok(&ch2, "{\"k\":2}", None);
    assert_eq!(fresh.frames(1, WAIT)[0].text, "{\"k\":2}");
    assert!(
        s.stderr_text().contains("DEBUG"),
        "LOG_LEVEL=debug applies after SIGHUP"
    );
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("metric {name} missing in:\n{text}"))
}

fn scrape(s: &Server) -> String {
    let r = s.pub_request(b"GET /metrics HTTP/1.0\r\n\r\n");
    assert_eq!(r.status, 200);
    assert!(
        r.header("Content-Type")
            .unwrap_or("")
            .starts_with("text/plain")
    );
    r.body_str()
}

#[test]
fn metrics_move_after_publish_and_health_answers() {
    let s = Server::start();
    let health = s.pub_request(b"GET /health HTTP/1.0\r\n\r\n");
    assert_eq!(health.status, 200, "{}", health.body_str());
    let not_public = s.sub_request(b"GET /metrics HTTP/1.0\r\n\r\n");
    assert_eq!(not_public.status, 404, "/metrics only on the pub listener");

    let before = scrape(&s);
    let ch = new_id();
    let mut ws = s.ws(&format!("CHANNEL_ID={}", enc(&signed(&ch))));
    s.publish_ok(&ch, "{\"m\":1}", None);
    ws.frames(1, WAIT);
    let bad = s.publish("", "{}", None);
    assert_eq!(bad.status, 400);
    let after = scrape(&s);

    let delta = |name: &str| metric(&after, name) - metric(&before, name);
    assert_eq!(delta("push_messages_published_total"), 1.0);
    assert_eq!(delta("push_messages_delivered_total"), 1.0);
    assert_eq!(
        metric(&after, "push_publish_errors_total{code=\"4017\"}"),
        1.0
    );
    assert_eq!(
        metric(
            &after,
            "push_connections{transport=\"websocket\",protocol=\"v3\"}"
        ),
        1.0
    );
    assert!(metric(&after, "push_store_roundtrip_seconds_count") >= 1.0);
    for line in after.lines().filter(|l| !l.starts_with('#')) {
        let value = line.rsplit(' ').next().unwrap_or("");
        assert!(value.parse::<f64>().is_ok(), "bad sample line {line:?}");
    }
}

#[test]
fn head_is_get_without_the_body() {
    let s = Server::start();
    // Keep-alive, so a body sent by mistake would be read as the start of the next answer.
    let mut c = s.pub_conn();
    c.send(b"HEAD /health HTTP/1.1\r\nHost: x\r\n\r\nGET /health HTTP/1.1\r\nHost: x\r\n\r\n");
    let head = String::from_utf8(c.read_head_raw().expect("HEAD answer")).unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("content-length: "),
        "{head}"
    );
    let get = c.read_response();
    assert_eq!(get.status, 200);
    assert!(get.body_str().starts_with("ok"), "{:?}", get.body_str());
    // No HEAD form of a long poll or WebSocket.
    let ch = new_id();
    let mut c = s.sub_conn();
    c.send(
        format!(
            "HEAD /bitrix/sub/?CHANNEL_ID={} HTTP/1.0\r\n\r\n",
            enc(&signed(&ch))
        )
        .as_bytes(),
    );
    let head = String::from_utf8(c.read_head_raw().expect("HEAD answer")).unwrap();
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");
    assert_eq!(
        c.read_to_end().expect("closed"),
        b"",
        "no body after a HEAD answer"
    );
}
