//! The publisher: one keep-alive connection to the trusted listener, pipelined. A writer thread
//! sends the requests (as fast as possible or on a fixed-rate schedule) while the calling thread
//! reads and counts the answers. Also the `/server-stat/` query.

use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::net::Addr;
use crate::proto::{self, Target};

/// How many requests to send and when.
pub struct Schedule {
    /// Requests per second; `None` = back to back.
    pub rate: Option<f64>,
    /// Stop after this many requests.
    pub count: Option<u64>,
    /// Stop after this long.
    pub duration: Option<Duration>,
}

#[derive(Default, Debug)]
pub struct Outcome {
    pub sent: u64,
    pub ok: u64,
    pub failed: u64,
    pub first_error: Option<String>,
    pub first_send: Option<Instant>,
    pub last_send: Option<Instant>,
    /// Worst delay of a send behind its schedule, in microseconds.
    pub max_lag_us: u64,
}

/// Publishes until the schedule ends or `stop` is set. `make(k, out)` appends request `k`.
///
/// `per_conn` caps the requests sent on one connection: nginx (the nchan peer) closes a
/// keep-alive connection after `keepalive_requests` (1000 by default), so the publisher waits
/// for the answers of such a batch and goes on over a new connection, keeping the schedule.
pub fn run<F>(
    addr: &Addr,
    sched: Schedule,
    stop: &AtomicBool,
    per_conn: Option<u64>,
    mut make: F,
) -> Result<Outcome, String>
where
    F: FnMut(u64, &mut Vec<u8>) + Send,
{
    let start = Instant::now();
    let mut out = Outcome::default();
    let mut k = 0u64;
    loop {
        let limit = per_conn.map(|p| k + p.max(1));
        let seg = run_conn(addr, &sched, start, k, limit, stop, &mut make)?;
        out.sent += seg.out.sent;
        out.ok += seg.out.ok;
        out.failed += seg.out.failed;
        if out.first_error.is_none() {
            out.first_error = seg.out.first_error;
        }
        if out.first_send.is_none() {
            out.first_send = seg.out.first_send;
        }
        out.last_send = seg.out.last_send.or(out.last_send);
        out.max_lag_us = out.max_lag_us.max(seg.out.max_lag_us);
        if !seg.hit_limit {
            return Ok(out);
        }
        k = seg.next;
    }
}

struct Segment {
    out: Outcome,
    /// Index of the next request.
    next: u64,
    /// Stopped because of the per-connection cap (the schedule goes on).
    hit_limit: bool,
}

/// One connection: requests `k0..limit` (or until the schedule ends), answers read.
fn run_conn<F>(
    addr: &Addr,
    sched: &Schedule,
    start: Instant,
    k0: u64,
    limit: Option<u64>,
    stop: &AtomicBool,
    make: &mut F,
) -> Result<Segment, String>
where
    F: FnMut(u64, &mut Vec<u8>) + Send,
{
    let mut reader = addr
        .connect_blocking(Duration::from_secs(10))
        .map_err(|e| format!("publisher: connect to {addr}: {e}"))?;
    let mut writer = reader.try_clone().map_err(|e| format!("publisher: {e}"))?;
    reader
        .set_read_timeout(Some(Duration::from_millis(100)))
        .map_err(|e| format!("publisher: {e}"))?;
    let sent = AtomicU64::new(0);
    let writer_done = AtomicBool::new(false);
    let writer_failed = AtomicBool::new(false);
    std::thread::scope(|s| {
        let w = s.spawn(|| {
            let r = write_loop(&mut writer, sched, start, k0, limit, stop, &sent, make);
            writer_failed.store(r.is_err(), Ordering::Release);
            writer_done.store(true, Ordering::Release);
            r
        });
        let mut out = Outcome::default();
        let cap = limit.map(|l| l - k0);
        let read_result = read_loop(
            &mut reader,
            &mut out,
            &sent,
            cap,
            &writer_done,
            &writer_failed,
        );
        let w = match w.join() {
            Ok(r) => r?,
            Err(_) => return Err("publisher: writer thread panicked".to_string()),
        };
        read_result?;
        out.sent = sent.load(Ordering::Acquire);
        out.first_send = w.first;
        out.last_send = w.last;
        out.max_lag_us = w.max_lag_us;
        Ok(Segment {
            out,
            next: w.next,
            hit_limit: w.hit_limit,
        })
    })
}

struct Written {
    first: Option<Instant>,
    last: Option<Instant>,
    max_lag_us: u64,
    next: u64,
    hit_limit: bool,
}

#[allow(clippy::too_many_arguments)]
fn write_loop<F>(
    w: &mut impl Write,
    sched: &Schedule,
    start: Instant,
    k0: u64,
    limit: Option<u64>,
    stop: &AtomicBool,
    sent: &AtomicU64,
    make: &mut F,
) -> Result<Written, String>
where
    F: FnMut(u64, &mut Vec<u8>),
{
    let end = sched.duration.map(|d| start + d);
    let mut k = k0;
    let mut buf = Vec::with_capacity(64 * 1024);
    let mut first = None;
    let mut last = None;
    let mut max_lag = Duration::ZERO;
    let mut hit_limit = false;
    loop {
        if stop.load(Ordering::Relaxed) || sched.count.is_some_and(|c| k >= c) {
            break;
        }
        if limit.is_some_and(|l| k >= l) {
            hit_limit = true;
            break;
        }
        let now = Instant::now();
        if end.is_some_and(|e| now >= e) {
            break;
        }
        // How many are due now (back to back: a batch of up to 64).
        let due = match sched.rate {
            None => 64,
            Some(r) => {
                let target = start + Duration::from_secs_f64(k as f64 / r);
                if target > now {
                    std::thread::sleep((target - now).min(Duration::from_millis(50)));
                    continue;
                }
                max_lag = max_lag.max(now - target);
                let behind = (now - start).as_secs_f64() * r - k as f64;
                (behind as u64).clamp(1, 256)
            }
        };
        buf.clear();
        let mut n = 0;
        while n < due && sched.count.is_none_or(|c| k + n < c) && limit.is_none_or(|l| k + n < l) {
            make(k + n, &mut buf);
            n += 1;
        }
        // Count before writing, so the reader never sees more answers than `sent`.
        sent.fetch_add(n, Ordering::AcqRel);
        let t = Instant::now();
        first.get_or_insert(t);
        last = Some(t);
        w.write_all(&buf)
            .map_err(|e| format!("publisher: write: {e}"))?;
        k += n;
    }
    Ok(Written {
        first,
        last,
        max_lag_us: max_lag.as_micros() as u64,
        next: k,
        hit_limit,
    })
}

fn read_loop(
    r: &mut impl Read,
    out: &mut Outcome,
    sent: &AtomicU64,
    cap: Option<u64>,
    writer_done: &AtomicBool,
    writer_failed: &AtomicBool,
) -> Result<(), String> {
    let mut buf: Vec<u8> = Vec::with_capacity(64 * 1024);
    let mut chunk = vec![0u8; 64 * 1024];
    let mut idle_since: Option<Instant> = None;
    loop {
        // Whole answers in the buffer.
        let mut pos = 0;
        while let Some(h) = proto::parse_response_head(&buf[pos..])? {
            let total = h.head_len + h.content_length;
            if buf.len() - pos < total {
                break;
            }
            // push-server answers 200; nchan 201 (delivered) or 202 (queued, no subscriber).
            if (200..300).contains(&h.status) {
                out.ok += 1;
            } else {
                out.failed += 1;
                if out.first_error.is_none() {
                    out.first_error = Some(format!(
                        "publish answered {}: {}",
                        h.status,
                        proto::preview(&buf[pos + h.head_len..pos + total])
                    ));
                }
            }
            pos += total;
        }
        buf.drain(..pos);
        let answered = out.ok + out.failed;
        if writer_failed.load(Ordering::Acquire) {
            // The writer's error is the one reported.
            return Ok(());
        }
        if writer_done.load(Ordering::Acquire) && answered >= sent.load(Ordering::Acquire) {
            return Ok(());
        }
        match r.read(&mut chunk) {
            // nginx closes after the last request it allows; the writer may not have noticed
            // yet that it reached the cap.
            Ok(0) if cap.is_some_and(|c| answered >= c) => return Ok(()),
            Ok(0) => {
                return Err(format!(
                    "publisher: server closed the connection after {answered} answers"
                ));
            }
            Ok(n) => {
                idle_since = None;
                buf.extend_from_slice(&chunk[..n]);
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                if writer_done.load(Ordering::Acquire) {
                    let since = *idle_since.get_or_insert_with(Instant::now);
                    if since.elapsed() > Duration::from_secs(5) {
                        return Err(format!(
                            "publisher: {} of {} publishes unanswered",
                            sent.load(Ordering::Acquire) - answered,
                            sent.load(Ordering::Acquire)
                        ));
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("publisher: read: {e}")),
        }
    }
}

/// The server's own counters: push-server's `GET /server-stat/` on the trusted listener (the
/// first element of its JSON array), or nchan's `GET /status` (`nchan_stub_status` lines
/// `name: value`, returned as a JSON object with `_` for spaces, e.g. `subscribers`).
pub fn server_stat(addr: &Addr, target: Target) -> Result<serde_json::Value, String> {
    let mut s = addr
        .connect_blocking(Duration::from_secs(5))
        .map_err(|e| format!("server-stat: connect to {addr}: {e}"))?;
    let path = if target.is_nchan() {
        "/status"
    } else {
        "/server-stat/"
    };
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .map_err(|e| format!("server-stat: write: {e}"))?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        if let Some(h) = proto::parse_response_head(&buf)?
            && buf.len() >= h.head_len + h.content_length
        {
            if h.status != 200 {
                return Err(format!("server-stat: status {}", h.status));
            }
            let body = &buf[h.head_len..h.head_len + h.content_length];
            if target.is_nchan() {
                return Ok(parse_stub_status(body));
            }
            let v: serde_json::Value =
                serde_json::from_slice(body).map_err(|e| format!("server-stat: bad JSON: {e}"))?;
            return v
                .get(0)
                .cloned()
                .ok_or_else(|| "server-stat: not a non-empty array".to_string());
        }
        match s.read(&mut chunk) {
            Ok(0) => return Err("server-stat: connection closed early".into()),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("server-stat: read: {e}")),
        }
    }
}

/// `name: value` lines of `nchan_stub_status` as a JSON object; numeric values as numbers.
fn parse_stub_status(body: &[u8]) -> serde_json::Value {
    let mut m = serde_json::Map::new();
    for line in String::from_utf8_lossy(body).lines() {
        if let Some((k, v)) = line.split_once(':') {
            let v = v.trim();
            let key = k.trim().replace(' ', "_");
            let val = v
                .parse::<u64>()
                .map_or_else(|_| serde_json::json!(v), |n| serde_json::json!(n));
            m.insert(key, val);
        }
    }
    serde_json::Value::Object(m)
}

#[cfg(test)]
mod tests {
    #[test]
    fn stub_status_parses() {
        let v = super::parse_stub_status(b"channels: 1\nsubscribers: 9000\nnchan version: 1.3.6\n");
        assert_eq!(v["subscribers"], 9000);
        assert_eq!(v["nchan_version"], "1.3.6");
    }
}
