//! The asynchronous store interface seen from outside (docs/loop.md#the-back-pressure-rule,
//! docs/protocol.md#long-poll-4.4, docs/protocol.md#publishing-text-v3): requests that wait for a store answer (Busy), pipelined input behind them,
//! backlog replay racing live publishes, and peers that hang up early.
//!
//! The embedded store answers within the loop pass, so every test here also checks that an
//! answer produced while handling another answer is not left waiting for the next wake-up.

mod common;

use common::*;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

fn cid(id: &str) -> String {
    format!("CHANNEL_ID={}", enc(&signed(id)))
}

/// A keep-alive text publish (HTTP/1.1), as a client that pipelines would send it.
fn publish_keep_alive(channels: &str, body: &str) -> Vec<u8> {
    format!(
        "POST /bitrix/pub/?CHANNEL_ID={channels} HTTP/1.1\r\nHost: 127.0.0.1:8895\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// A keep-alive long poll (HTTP/1.1).
fn lp_keep_alive(query: &str) -> Vec<u8> {
    format!("GET /bitrix/sub/?{query} HTTP/1.1\r\nHost: localhost\r\n\r\n").into_bytes()
}

/// The server sweeps every 5 s and so wakes at least that often: an answer left behind in the
/// store is then only late, not lost. Anything slower than this counts as left behind.
const PROMPT: Duration = Duration::from_millis(1500);

#[test]
fn pipelined_publishes_are_all_answered_promptly_and_fanned_out_in_order() {
    let s = Server::start();
    let ch = new_id();
    let mut ws = s.ws(&cid(&ch));
    let mut c = s.pub_conn();
    let n = 6;
    let mut raw = Vec::new();
    for i in 0..n {
        raw.extend(publish_keep_alive(&ch, &format!("{{\"p\":{i}}}")));
    }
    let started = Instant::now();
    c.send(&raw);
    c.set_timeout(PROMPT);
    for i in 0..n {
        let r = c.try_read_response().unwrap_or_else(|e| {
            panic!(
                "pipelined publish {i} of {n} not answered within {PROMPT:?} ({e}); an answer \
                 produced while handling another one waits for the next wake-up"
            )
        });
        assert_eq!((r.status, r.body_str().as_str()), (200, ""), "publish {i}");
    }
    assert!(started.elapsed() < PROMPT * 2);
    let got: Vec<String> = ws.frames(n, WAIT).into_iter().map(|f| f.text).collect();
    let want: Vec<String> = (0..n).map(|i| format!("{{\"p\":{i}}}")).collect();
    assert_eq!(got, want, "fan-out in publish order");
}

#[test]
fn pipelined_publishes_over_tcp_are_all_answered_promptly() {
    // Over TCP the client reading its answers raises no event on the server (unlike a Unix
    // socket), so an answer the store produced while another was being handled is only seen if
    // the loop drains again before it sleeps.
    let port = free_port();
    let s = Server::builder()
        .env("PUB_LISTEN", format!("127.0.0.1:{port}"))
        .start();
    let ch = new_id();
    let mut ws = s.ws(&cid(&ch));
    let n = 6;
    let mut raw = Vec::new();
    for i in 0..n {
        raw.extend(publish_keep_alive(&ch, &format!("{{\"t\":{i}}}")));
    }
    let mut tcp = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect PUB_LISTEN");
    std::io::Write::write_all(&mut tcp, &raw).expect("send");
    tcp.set_read_timeout(Some(Duration::from_millis(100)))
        .expect("timeout");
    let deadline = Instant::now() + PROMPT;
    let mut got = Vec::new();
    let answers = |b: &[u8]| b.windows(12).filter(|w| w == b"HTTP/1.1 200").count();
    while answers(&got) < n && Instant::now() < deadline {
        let mut chunk = [0u8; 4096];
        match std::io::Read::read(&mut tcp, &mut chunk) {
            Ok(0) => break,
            Ok(k) => got.extend_from_slice(&chunk[..k]),
            Err(_) => {}
        }
    }
    assert_eq!(
        answers(&got),
        n,
        "pipelined publishes answered within {PROMPT:?}: {:?}",
        String::from_utf8_lossy(&got)
    );
    let texts: Vec<String> = ws.frames(n, WAIT).into_iter().map(|f| f.text).collect();
    let want: Vec<String> = (0..n).map(|i| format!("{{\"t\":{i}}}")).collect();
    assert_eq!(texts, want);
}

#[test]
fn request_pipelined_behind_an_online_query_is_answered() {
    let s = Server::start();
    // No local subscriber: the online query goes to the store and the connection is Busy.
    let ch = new_id();
    let mut c = s.pub_conn();
    let mut raw = format!(
        "GET /bitrix/pub/?CHANNEL_ID={ch} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {}\r\n\r\n{ch}",
        ch.len()
    )
    .into_bytes();
    raw.extend_from_slice(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
    c.send(&raw);
    c.set_timeout(PROMPT);
    let online = c.read_response();
    assert_eq!(online.status, 200, "{:?}", online.body_str());
    let health = c
        .try_read_response()
        .unwrap_or_else(|e| panic!("request pipelined behind an online query never answered: {e}"));
    assert_eq!(health.status, 200, "{:?}", health.body_str());
}

#[test]
fn publish_completes_and_fans_out_when_php_hangs_up_at_once() {
    let s = Server::start();
    let ch = new_id();
    let mut ws = s.ws(&cid(&ch));
    for i in 0..5 {
        // Request and FIN together; then the socket is gone before any answer (docs/protocol.md#publishing-text-v3 (1)).
        let mut c = s.pub_conn();
        c.send(&publish_request(
            &ch,
            format!("\"gone{i}\"").as_bytes(),
            None,
        ));
        c.stream
            .shutdown(std::net::Shutdown::Both)
            .expect("shutdown");
        drop(c);
    }
    let got: Vec<String> = ws.frames(5, WAIT).into_iter().map(|f| f.text).collect();
    assert_eq!(got.len(), 5);
    for i in 0..5 {
        assert!(
            got.contains(&format!("\"gone{i}\"")),
            "lost publish {i}: {got:?}"
        );
    }
    // The server is fine afterwards and nothing is left Busy.
    s.publish_ok(&ch, "\"after\"", None);
    assert_eq!(ws.frames(1, WAIT)[0].text, "\"after\"");
}

#[test]
fn keep_alive_poll_pipelined_behind_an_answered_poll_gets_its_backlog_promptly() {
    // Long hold: only a store answer left behind would make the second poll wait.
    let s = Server::builder().env("LONG_POLL_TIMEOUT", "30").start();
    let ch = new_id();
    s.publish_ok(&ch, "\"stored\"", Some(86400));
    let mut c = s.sub_conn();
    // First poll without mid: held until the live publish below. The second, pipelined, resumes
    // from an old mid and must be answered with the backlog at once.
    let mut raw = lp_keep_alive(&cid(&ch));
    raw.extend(lp_keep_alive(&format!("{}&mid={OLD_MID}", cid(&ch))));
    c.send(&raw);
    s.wait_online(&ch);
    s.publish_ok(&ch, "\"live\"", Some(86400));
    c.set_timeout(WAIT);
    let first = c.read_response();
    assert_eq!(first.status, 200);
    assert_eq!(first.frames()[0].text, "\"live\"");
    c.set_timeout(PROMPT);
    let second = c.try_read_response().unwrap_or_else(|e| {
        panic!("the pipelined poll's backlog was read but not answered within {PROMPT:?}: {e}")
    });
    assert_eq!(second.status, 200);
    let texts: Vec<String> = second.frames().into_iter().map(|f| f.text).collect();
    assert_eq!(texts, vec!["\"stored\"", "\"live\""]);
}

/// With the stored messages, stays below the default CHANNEL_HISTORY (1000): the backlog must
/// not be evicted under the test's feet.
const FLOOD_MAX: usize = 600;

/// Publishes `"live<i>"` to `ch` as fast as possible on pipelined keep-alive connections until
/// `stop`, or [`FLOOD_MAX`] messages; returns how many were published.
fn flood(pubs: std::path::PathBuf, ch: String, stop: Arc<AtomicBool>) -> thread::JoinHandle<usize> {
    thread::spawn(move || {
        let mut n = 0usize;
        while !stop.load(Ordering::SeqCst) && n < FLOOD_MAX {
            let mut c = Conn::open(&pubs);
            let mut raw = Vec::new();
            for k in 0..8 {
                raw.extend(publish_keep_alive(&ch, &format!("\"live{}\"", n + k)));
            }
            c.send(&raw);
            for _ in 0..8 {
                let r = c.read_response();
                assert_eq!(r.status, 200);
            }
            n += 8;
        }
        n
    })
}

#[test]
fn lp_full_backlog_chunk_is_never_answered_together_with_live_messages() {
    // A poll whose backlog fills a whole chunk must be answered with that chunk only: a live
    // message added to it would move the client's mid past the unread rest (docs/protocol.md#resuming-by-mid, docs/protocol.md#resuming-by-mid).
    let s = Server::start();
    let ch = new_id();
    let stored: Vec<String> = (0..210).map(|i| format!("{{\"k\":{i}}}")).collect();
    for b in &stored {
        s.publish_ok(&ch, b, Some(86400));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let publisher = flood(s.pubs.clone(), ch.clone(), stop.clone());
    let deadline = Instant::now() + Duration::from_secs(4);
    let mut polls = 0;
    while Instant::now() < deadline && !publisher.is_finished() {
        let r = s.lp(&format!("{}&mid={OLD_MID}", cid(&ch)));
        assert_eq!(r.status, 200);
        let texts: Vec<String> = r.frames().into_iter().map(|f| f.text).collect();
        assert_eq!(
            texts.len(),
            200,
            "a full chunk and nothing else (a live message would skip the unread backlog): last {:?}",
            texts.last()
        );
        assert_eq!(
            texts[..],
            stored[..200],
            "the oldest 200 after mid, in order"
        );
        polls += 1;
    }
    stop.store(true, Ordering::SeqCst);
    publisher.join().expect("publisher");
    assert!(polls > 0, "no poll ran while the publisher was busy");
}

#[test]
fn ws_chunked_backlog_racing_live_publishes_is_gap_free_ordered_and_once() {
    let s = Server::start();
    let ch = new_id();
    let stored = 230;
    for i in 0..stored {
        s.publish_ok(&ch, &format!("\"s{i}\""), Some(86400));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let publisher = flood(s.pubs.clone(), ch.clone(), stop.clone());
    let mut sockets = Vec::new();
    for _ in 0..20 {
        sockets.push(s.ws(&format!("{}&mid={OLD_MID}", cid(&ch))));
        thread::sleep(Duration::from_millis(20));
    }
    thread::sleep(Duration::from_millis(200));
    stop.store(true, Ordering::SeqCst);
    let published = publisher.join().expect("publisher");
    s.publish_ok(&ch, "\"end\"", None);
    for (k, ws) in sockets.iter_mut().enumerate() {
        let frames = ws.frames_until("\"end\"", Duration::from_secs(10));
        assert!(
            frames.windows(2).all(|w| w[0].mid < w[1].mid),
            "socket {k}: mids must ascend, each once: {:?}",
            frames.iter().map(|f| &f.text).collect::<Vec<_>>()
        );
        let texts: Vec<&str> = frames.iter().map(|f| f.text.as_str()).collect();
        let want_stored: Vec<String> = (0..stored).map(|i| format!("\"s{i}\"")).collect();
        assert_eq!(
            texts[..stored],
            want_stored[..],
            "socket {k}: the whole backlog first"
        );
        // Everything after the backlog is the flood's tail, gap-free, then the marker.
        let live = &texts[stored..texts.len() - 1];
        if let Some(first) = live.first() {
            let start: usize = first
                .trim_matches('"')
                .trim_start_matches("live")
                .parse()
                .expect("live counter");
            let want: Vec<String> = (start..published).map(|i| format!("\"live{i}\"")).collect();
            assert_eq!(
                live,
                &want[..],
                "socket {k}: live messages gap-free after the backlog"
            );
        }
    }
}

#[test]
fn shutdown_answers_a_pending_poll_with_its_mid_and_completes() {
    let s0 = Server::builder().env("SHUTDOWN_TIMEOUT", "10").start();
    let mut s = s0;
    let ch = new_id();
    let mid = format!("{}0000000000000007", now_secs() + 1000);
    let mut lp = s.lp_begin(&format!("{}&mid={mid}", cid(&ch)));
    s.wait_online(&ch);
    let started = Instant::now();
    s.signal("TERM");
    let r = lp.read_response();
    assert_eq!(r.status, 304);
    assert_eq!(r.header("Last-Message-Id"), Some(mid.as_str()));
    assert!(
        s.wait_exit(Duration::from_secs(5)).is_some(),
        "server did not exit"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[test]
fn many_pipelined_publishes_beyond_64_kib_are_all_answered() {
    // A pipelining publisher sends far more than one request while the first waits for the
    // store; the server must apply back-pressure (stop reading), not cut the connection.
    let s = Server::start();
    let ch = new_id();
    let mut ws = s.ws(&cid(&ch));
    let n = 300;
    let pad = "x".repeat(1000);
    let mut raw = Vec::new();
    for i in 0..n {
        raw.extend(publish_keep_alive(
            &ch,
            &format!("{{\"p\":{i},\"pad\":\"{pad}\"}}"),
        ));
    }
    assert!(raw.len() > 256 * 1024);
    let mut c = s.pub_conn();
    let writer = {
        let mut w = c.stream.try_clone().expect("clone stream");
        std::thread::spawn(move || std::io::Write::write_all(&mut w, &raw))
    };
    c.set_timeout(WAIT);
    for i in 0..n {
        let r = c
            .try_read_response()
            .unwrap_or_else(|e| panic!("pipelined publish {i} of {n} not answered: {e}"));
        assert_eq!(r.status, 200, "publish {i}: {:?}", r.body_str());
    }
    writer
        .join()
        .expect("writer")
        .expect("all requests written");
    let got = ws.frames(n, WAIT);
    assert!(got.windows(2).all(|w| w[0].mid < w[1].mid));
}
