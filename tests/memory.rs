//! Memory the real binary holds (docs/memory.md): the embedded store's cap covers every
//! encoding its messages hold, and freed message memory goes back to the OS.

mod common;

use std::fs;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use common::*;

const MIB: u64 = 1 << 20;

/// Resident set size of `pid` in bytes (`VmRSS` of /proc/PID/status).
fn rss(pid: u32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS line");
    kb * 1024
}

fn metric(s: &Server, name: &str) -> u64 {
    let r = s.pub_request(b"GET /metrics HTTP/1.0\r\n\r\n");
    assert_eq!(r.status, 200);
    let text = r.body_str();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("metric {name} missing in:\n{text}"))
}

/// A subscriber that reads everything until it has had `want` messages (one live message per
/// WebSocket message), on its own thread; `seen` counts them.
fn drain(mut ws: Ws, want: usize, seen: Arc<AtomicUsize>) -> thread::JoinHandle<usize> {
    thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(300);
        while seen.load(Ordering::Relaxed) < want && Instant::now() < deadline {
            let big = match ws.recv(Duration::from_secs(5)) {
                WsEvent::Text(t) => t.len() > 1_000_000,
                WsEvent::Binary(b) => b.len() > 1_000_000,
                WsEvent::Ping | WsEvent::Pong | WsEvent::Timeout => false,
                other => panic!("subscriber: {other:?}"),
            };
            // The small warm-up message does not count.
            if big {
                seen.fetch_add(1, Ordering::Relaxed);
            }
        }
        seen.load(Ordering::Relaxed)
    })
}

/// 300 messages of 1 MB with STORE_MAX_BYTES = 64 MiB, read by a v3 (text) and a v4 (binary)
/// WebSocket subscriber, so that every message builds all its encodings: the store's count
/// stays under the cap, and the process grows by no more than the cap and a margin (before,
/// the count covered bodies only and RSS grew by several times the cap).
#[test]
fn store_cap_bounds_rss_with_every_encoding_built() {
    const N: usize = 300;
    const CAP: u64 = 64 * MIB;
    let s = Server::builder()
        .env("STORE_MAX_BYTES", CAP.to_string())
        // Frames in an outbox share the message's buffers: this adds nothing to RSS.
        .env("OUTBOX_LIMIT", (16 * MIB).to_string())
        .start();
    s.wait_store_up();
    let id = new_id();
    let item = enc(&signed(&id));
    let text = s.ws(&format!("CHANNEL_ID={item}&revision=19"));
    let binary = s.ws(&format!("CHANNEL_ID={item}&binaryMode=true&revision=19"));
    s.wait_online(&id);
    let counts = [Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0))];
    let text = drain(text, N, Arc::clone(&counts[0]));
    let binary = drain(binary, N, Arc::clone(&counts[1]));
    // A first small publish, so the baseline includes what any first publish allocates.
    s.publish_ok(&id, "{\"warm\":1}", None);
    let base = rss(s.pid());

    let pad = "a".repeat(1_000_000);
    let mut peak = base;
    for i in 0..N {
        // Paced by the slower reader: a subscriber that falls behind is cut off as a slow
        // consumer, and its outbox is not what this test measures.
        let caught_up = wait_until(Duration::from_secs(60), || {
            counts.iter().all(|c| c.load(Ordering::Relaxed) + 2 >= i)
        });
        assert!(caught_up, "subscribers stopped reading at message {i}");
        let body = format!("{{\"i\":{i},\"pad\":\"{pad}\"}}");
        let r = s.pub_request(&publish_request(&id, body.as_bytes(), Some(86400)));
        assert_eq!(r.status, 200, "publish {i}: {:?}", r.body_str());
        if i % 20 == 0 {
            peak = peak.max(rss(s.pid()));
        }
    }
    assert_eq!(
        text.join().expect("text reader"),
        N,
        "text subscriber got all"
    );
    assert_eq!(
        binary.join().expect("binary reader"),
        N,
        "binary subscriber got all"
    );

    let counted = metric(&s, "push_store_bytes");
    assert!(counted <= CAP, "push_store_bytes {counted} > {CAP}");
    assert!(metric(&s, "push_store_evictions_total") > 0);
    let bound = base + CAP + 48 * MIB;
    // Freed memory may take a moment to be returned (the allocator's purge delay).
    let settled = wait_until(Duration::from_secs(10), || rss(s.pid()) <= bound);
    let now = rss(s.pid());
    eprintln!(
        "rss: base {} MiB, peak sampled {} MiB, after {} MiB; store counts {} MiB",
        base / MIB,
        peak / MIB,
        now / MIB,
        counted / MIB
    );
    assert!(
        settled,
        "RSS grew by {} MiB (base {} MiB), more than STORE_MAX_BYTES + 48 MiB",
        (now - base) / MIB,
        base / MIB
    );
}
