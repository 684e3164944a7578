//! WebSocket subscribers (docs/protocol.md#websocket).

mod common;

use common::*;
use std::thread;
use std::time::{Duration, Instant};
use tungstenite::Message;
use tungstenite::protocol::WebSocketConfig;

fn cid(id: &str) -> String {
    format!("CHANNEL_ID={}", enc(&signed(id)))
}

#[test]
fn w1_ws_delivers_text_v3_frames() {
    let s = Server::start();
    let ch = new_id();
    let (mut ws, resp) =
        Ws::connect(&s.sub, &format!("/bitrix/subws/?{}", cid(&ch)), None).expect("handshake");
    assert_eq!(resp.status().as_u16(), 101);
    assert!(
        resp.headers().get("Sec-WebSocket-Protocol").is_none(),
        "no subprotocol may be selected"
    );
    let body = r#"{"module_id":"im","command":"message","params":{"a":"x\/y"}}"#;
    s.publish_ok(&ch, body, Some(86400));
    let f = ws.frames(1, WAIT);
    assert_eq!(f[0].text, body);
    assert!(is_mid(&f[0].mid));
    assert_eq!(f[0].channel, "-");
}

#[test]
fn w1_bad_channel_handshake_then_close_4010() {
    let s = Server::start();
    let a = new_id();
    for item in [
        format!("{a}.{}", sign_with("otherKey", &a)),
        a.clone(),
        format!("{}.{}", a.to_uppercase(), sign(&a.to_uppercase())),
    ] {
        let (mut ws, resp) = Ws::connect(
            &s.sub,
            &format!("/bitrix/subws/?CHANNEL_ID={}", enc(&item)),
            None,
        )
        .unwrap_or_else(|e| {
            panic!(
                "a bad channel must still complete the handshake (docs/protocol.md#websocket): {e}"
            )
        });
        assert_eq!(resp.status().as_u16(), 101);
        let (code, reason) = ws.expect_close(WAIT);
        assert_eq!(
            (code, reason.as_str()),
            (4010, "4010: Wrong Channel Id."),
            "item {item}"
        );
    }
}

#[test]
fn w4_backlog_first_in_one_message_ascending_then_live() {
    let s = Server::start();
    let ch = new_id();
    let mut ws = s.ws(&cid(&ch));
    s.publish_ok(&ch, "\"m0\"", Some(86400));
    let m0 = ws.frames(1, WAIT).remove(0);
    drop(ws);
    let sent: Vec<String> = (1..=30).map(|i| format!("{{\"n\":{i}}}")).collect();
    for b in &sent {
        s.publish_ok(&ch, b, Some(86400));
    }
    let mut ws = s.ws(&format!("{}&mid={}", cid(&ch), m0.mid));
    let first = ws.next_text(WAIT);
    let frames = parse_frames(&first).expect("v3 frames");
    let texts: Vec<String> = frames.iter().map(|f| f.text.clone()).collect();
    assert_eq!(
        texts, sent,
        "the whole backlog (30 < 200) must be the first WS message, in order"
    );
    assert!(
        frames.windows(2).all(|w| w[0].mid < w[1].mid),
        "ascending mids"
    );
    assert!(frames[0].mid > m0.mid);
    s.publish_ok(&ch, "\"live\"", None);
    let live = ws.frames(1, WAIT);
    assert_eq!(
        live[0].text, "\"live\"",
        "then live messages, nothing repeated"
    );
}

#[test]
fn ws_resume_after_disconnect_nothing_lost_nothing_repeated() {
    let s = Server::start();
    let ch = new_id();
    let mut ws = s.ws(&cid(&ch));
    s.publish_ok(&ch, "\"a\"", Some(86400));
    s.publish_ok(&ch, "\"b\"", Some(86400));
    let got = ws.frames(2, WAIT);
    let last = got[1].mid.clone();
    drop(ws);
    s.publish_ok(&ch, "\"c\"", Some(86400));
    s.publish_ok(&ch, "\"d\"", Some(86400));
    let mut ws = s.ws(&format!("{}&mid={last}", cid(&ch)));
    s.publish_ok(&ch, "\"e\"", Some(86400));
    s.publish_ok(&ch, "\"end\"", None);
    let texts: Vec<String> = ws
        .frames_until("\"end\"", WAIT)
        .into_iter()
        .map(|f| f.text)
        .collect();
    assert_eq!(texts, ["\"c\"", "\"d\"", "\"e\"", "\"end\""]);
}

#[test]
fn ws_several_channels_and_private_public_pair() {
    let s = Server::start();
    let (p, q, shared) = (new_id(), new_id(), new_id());
    let mut ws = s.ws(&format!(
        "CHANNEL_ID={}",
        enc(&format!("{}/{}", signed_pair(&p, &q), signed(&shared)))
    ));
    s.publish_ok(&p, "\"to-priv\"", None);
    s.publish_ok(&q, "\"to-pub\"", None);
    s.publish_ok(&shared, "\"to-shared\"", None);
    let texts: Vec<String> = ws.frames(3, WAIT).into_iter().map(|f| f.text).collect();
    assert_eq!(texts, ["\"to-priv\"", "\"to-pub\"", "\"to-shared\""]);
}

#[test]
fn w7_client_text_frames_are_ignored() {
    let s = Server::start();
    let ch = new_id();
    let mut ws = s.ws(&cid(&ch));
    ws.send_text("hello server").expect("send text");
    ws.send_text("{\"jsonrpc\":\"2.0\"}").expect("send text");
    s.publish_ok(&ch, "\"after\"", None);
    let f = ws.frames(1, WAIT);
    assert_eq!(
        f[0].text, "\"after\"",
        "socket stays open and keeps delivering"
    );
}

#[test]
fn w8_incoming_message_over_1mib_closes_1009() {
    let s = Server::start();
    let ch = new_id();
    let mut ws = s.ws(&cid(&ch));
    let big = vec![b'x'; 1_048_577];
    // The server may close before it has read everything; a write error is fine.
    let _ = ws.ws.send(Message::binary(big));
    let (code, _) = ws.expect_close(WAIT);
    assert_eq!(
        code, 1009,
        "an incoming message over 1 MiB closes with 1009"
    );
}

#[test]
fn w10_message_to_priv_and_pub_arrives_once() {
    let s = Server::start();
    let (p, q) = (new_id(), new_id());
    let mut ws = s.ws(&format!("CHANNEL_ID={}", enc(&signed_pair(&p, &q))));
    s.publish_ok(&format!("{p}/{q}"), "\"once\"", None);
    s.publish_ok(&p, "\"marker\"", None);
    let texts: Vec<String> = ws
        .frames_until("\"marker\"", WAIT)
        .into_iter()
        .map(|f| f.text)
        .collect();
    assert_eq!(texts, ["\"once\"", "\"marker\""]);
}

#[test]
fn c5_duplicate_and_empty_items_deliver_once() {
    let s = Server::start();
    let (a, sh) = (new_id(), new_id());
    // Empty first item, duplicate private item, literal and encoded separators.
    let q = format!(
        "CHANNEL_ID=%2F{}%2F{}/{}",
        enc(&signed(&a)),
        enc(&signed(&a)),
        signed(&sh)
    );
    let mut ws = s.ws(&q);
    s.publish_ok(&format!("{a}/{sh}"), "\"dup\"", None);
    s.publish_ok(&a, "\"marker\"", None);
    let texts: Vec<String> = ws
        .frames_until("\"marker\"", WAIT)
        .into_iter()
        .map(|f| f.text)
        .collect();
    assert_eq!(texts, ["\"dup\"", "\"marker\""]);
}

#[test]
fn w12_conn_cap_closes_oldest_with_4029() {
    let s = Server::builder().env("MAX_CONN_PER_CHANNEL", "2").start();
    let (p, q) = (new_id(), new_id());
    let query = format!("CHANNEL_ID={}", enc(&signed_pair(&p, &q)));
    let mut socks = Vec::new();
    for _ in 0..5 {
        // The handshake completes before the next socket opens, so the order is well defined.
        socks.push(s.ws(&query));
    }
    for (i, ws) in socks.iter_mut().take(3).enumerate() {
        let (code, reason) = ws.expect_close(WAIT);
        assert_eq!(
            (code, reason.as_str()),
            (4029, "4029: Too many connections"),
            "socket #{i} (among the 3 oldest) must be evicted"
        );
    }
    s.publish_ok(&p, "\"still-here\"", None);
    for (i, ws) in socks.iter_mut().enumerate().skip(3) {
        let f = ws.frames(1, WAIT);
        assert_eq!(f[0].text, "\"still-here\"", "socket #{i} must stay open");
    }
    let stat = s.server_stat();
    assert_eq!(
        stat[0]["limits"]["maxConnPerChannel"], 2,
        "stats report the enforced cap"
    );
}

#[test]
fn w5_ping_sent_and_silent_peer_terminated() {
    let s = Server::builder().env("WS_PING_INTERVAL", "1").start();
    let ch = new_id();
    let mut ws = s.ws(&cid(&ch));
    let deadline = Instant::now() + Duration::from_secs(4);
    let mut pinged = false;
    while Instant::now() < deadline && !pinged {
        match ws.recv(deadline.saturating_duration_since(Instant::now())) {
            WsEvent::Ping => pinged = true,
            WsEvent::Timeout => break,
            other => panic!("expected a Ping, got {other:?}"),
        }
    }
    assert!(pinged, "no Ping within 4 s with WS_PING_INTERVAL=1");
    // tungstenite answers the ping on the next read/write; flush it, and keep answering.
    let _ = ws.ws.flush();
    s.publish_ok(&ch, "\"after-ping\"", None);
    assert_eq!(ws.frames(1, WAIT)[0].text, "\"after-ping\"");

    // A peer that never answers is terminated after the next interval.
    let silent = s.ws(&cid(&ch));
    let stream = silent.ws.get_ref().try_clone().expect("clone");
    let mut conn_closed = false;
    let t0 = Instant::now();
    stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let mut buf = [0u8; 4096];
    while t0.elapsed() < Duration::from_secs(6) {
        use std::io::Read;
        match (&stream).read(&mut buf) {
            Ok(0) => {
                conn_closed = true;
                break;
            }
            Ok(_) => {}
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => {
                conn_closed = true;
                break;
            }
        }
    }
    assert!(
        conn_closed,
        "a peer that never answers Pings must be terminated"
    );
    drop(silent);
}

#[test]
fn slow_consumer_is_closed_and_others_get_everything() {
    let s = Server::builder().env("OUTBOX_LIMIT", "65536").start();
    let ch = new_id();
    // A small client receive buffer does not exist for Unix sockets; the kernel buffer is
    // ~200 KB, so publish well beyond buffer + outbox.
    let slow = s.ws(&cid(&ch));
    let mut good = s.ws(&cid(&ch));
    let n = 200usize;
    let filler = "y".repeat(10_000);
    // The normal subscriber reads in a thread; publishes are paced so that it never lags more
    // than a few messages (well under OUTBOX_LIMIT), while the slow one falls ~2 MB behind.
    let received = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = received.clone();
    let reader = thread::spawn(move || {
        let mut texts = Vec::with_capacity(n);
        while texts.len() < n {
            let f = good.frames(1, Duration::from_secs(30)).remove(0);
            texts.push(f.text);
            counter.store(texts.len(), std::sync::atomic::Ordering::SeqCst);
        }
        texts
    });
    let bodies: Vec<String> = (0..n)
        .map(|i| format!("{{\"i\":{i},\"f\":\"{filler}\"}}"))
        .collect();
    for (i, b) in bodies.iter().enumerate() {
        s.publish_ok(&ch, b, None);
        if i % 4 == 3 {
            let ok = wait_until(Duration::from_secs(10), || {
                received.load(std::sync::atomic::Ordering::SeqCst) > i || reader.is_finished()
            });
            assert!(
                ok,
                "normal subscriber stuck at {} of {}",
                received.load(std::sync::atomic::Ordering::SeqCst),
                i + 1
            );
        }
    }
    let got = reader.join().expect("good subscriber thread panicked");
    assert_eq!(got.len(), n);
    assert!(
        got == bodies,
        "the normal subscriber must receive every message in order"
    );

    // Now read the slow one: buffered data, then close 1008 or EOF — never all n messages.
    let mut slow = slow;
    let mut frames = 0usize;
    let deadline = Instant::now() + Duration::from_secs(10);
    let outcome = loop {
        if Instant::now() >= deadline {
            break "still open".to_string();
        }
        match slow.recv(Duration::from_secs(2)) {
            WsEvent::Text(t) => frames += parse_frames(&t).map(|f| f.len()).unwrap_or(0),
            WsEvent::Ping | WsEvent::Pong => {}
            WsEvent::Close(code, r) => break format!("close {code} {r}"),
            WsEvent::Gone(e) => break format!("gone: {e}"),
            WsEvent::Timeout => break "timeout: still open and quiet".to_string(),
            WsEvent::Binary(_) => break "binary frame".to_string(),
        }
    };
    assert!(
        outcome.starts_with("close 1008") || outcome.starts_with("gone"),
        "slow consumer must be closed with 1008 (or dropped); got {outcome} after {frames} frames"
    );
    assert!(
        frames < n,
        "slow consumer got all {n} messages: it was not disconnected"
    );
}

#[test]
fn ws_large_incoming_limit_not_hit_by_normal_traffic() {
    // A client config with a small max message size must still read normal messages.
    let s = Server::start();
    let ch = new_id();
    let cfg = WebSocketConfig::default().max_message_size(Some(1 << 20));
    let (mut ws, _) =
        Ws::connect(&s.sub, &format!("/bitrix/subws/?{}", cid(&ch)), Some(cfg)).expect("handshake");
    let body = format!("\"{}\"", "z".repeat(100_000));
    s.publish_ok(&ch, &body, None);
    assert_eq!(ws.frames(1, WAIT)[0].text, body);
}

#[test]
fn g9_websocket_on_bitrix_sub() {
    let s = Server::start();
    let ch = new_id();
    let mut ws = s.ws_path(&format!("/bitrix/sub/?{}", cid(&ch)));
    s.publish_ok(&ch, "\"via-sub\"", None);
    assert_eq!(ws.frames(1, WAIT)[0].text, "\"via-sub\"");
}

#[test]
fn c7_sha256_signatures() {
    let s = Server::builder().env("SECURITY_ALGO", "sha256").start();
    let ch = new_id();
    let item = format!("{ch}.{}", sign256_with(KEY, &ch));
    let mut ws = s.ws(&format!("CHANNEL_ID={}", enc(&item)));
    s.publish_ok(&ch, "\"sha256\"", None);
    assert_eq!(ws.frames(1, WAIT)[0].text, "\"sha256\"");
    // A sha1 signature is the wrong length now.
    let mut bad = s.ws(&format!("CHANNEL_ID={}", enc(&signed(&ch))));
    assert_eq!(bad.expect_close(WAIT).0, 4010);
}

#[test]
fn ws_backlog_over_200_arrives_in_chunks_gap_free() {
    let s = Server::start();
    let ch = new_id();
    let sent: Vec<String> = (0..250).map(|i| format!("{{\"k\":{i}}}")).collect();
    for b in &sent {
        s.publish_ok(&ch, b, Some(86400));
    }
    let mut ws = s.ws(&format!("{}&mid={OLD_MID}", cid(&ch)));
    let first = parse_frames(&ws.next_text(WAIT)).expect("v3 frames");
    assert_eq!(
        first.len(),
        200,
        "the first WS message carries a full chunk of 200"
    );
    let mut got: Vec<String> = first.into_iter().map(|f| f.text).collect();
    got.extend(ws.frames(50, WAIT).into_iter().map(|f| f.text));
    assert_eq!(got, sent, "gap-free, in order, each once");
    s.publish_ok(&ch, "\"live\"", None);
    assert_eq!(
        ws.frames(1, WAIT)[0].text,
        "\"live\"",
        "nothing repeated after the backlog"
    );
}

#[test]
fn ws_client_ping_gets_pong_and_client_close_gets_reply() {
    let s = Server::start();
    let ch = new_id();
    let mut ws = s.ws(&cid(&ch));
    ws.ws
        .send(Message::Ping(b"hi".to_vec().into()))
        .expect("send ping");
    let deadline = Instant::now() + WAIT;
    loop {
        match ws.recv(deadline.saturating_duration_since(Instant::now())) {
            WsEvent::Pong => break,
            WsEvent::Ping => {}
            other => panic!("expected a Pong to the client's Ping, got {other:?}"),
        }
    }
    ws.ws.close(None).expect("send close");
    let (code, _) = ws.expect_close(WAIT);
    assert!(
        code == 1000 || code == 1005,
        "the server echoes the client's close, got {code}"
    );
}

#[test]
fn conn_cap_answers_pending_long_poll_with_429() {
    let s = Server::builder().env("MAX_CONN_PER_CHANNEL", "1").start();
    let (p, q) = (new_id(), new_id());
    let query = format!("CHANNEL_ID={}", enc(&signed_pair(&p, &q)));
    let mut lp = s.lp_begin(&query);
    s.wait_online(&p);
    let mut ws = s.ws(&query);
    let r = lp.read_response();
    r.assert_error(429, "4029: Too many connections");
    s.publish_ok(&p, "\"newest-stays\"", None);
    assert_eq!(ws.frames(1, WAIT)[0].text, "\"newest-stays\"");
}

/// Write interest is taken only while a write is blocked (docs/loop.md): a subscriber that
/// let far more than a socket buffer pile up, then reads, gets all of it with no further
/// publish to wake the server. Only the socket's writability can resume the flush.
#[test]
fn a_blocked_subscriber_resumes_when_it_reads() {
    let s = Server::start();
    let ch = new_id();
    let mut ws = s.ws(&cid(&ch));
    s.wait_online(&ch);
    let pad = "p".repeat(4000);
    let n = 300; // about 1.2 MB, several socket buffers; under OUTBOX_LIMIT
    for i in 0..n {
        s.publish_ok(&enc(&ch), &format!("{{\"i\":{i},\"pad\":\"{pad}\"}}"), None);
    }
    let got = ws.frames(n, Duration::from_secs(10));
    let order: Vec<u64> = got
        .iter()
        .filter_map(|f| serde_json::from_str::<serde_json::Value>(&f.text).ok()?["i"].as_u64())
        .collect();
    assert_eq!(order, (0..n as u64).collect::<Vec<_>>());
}
