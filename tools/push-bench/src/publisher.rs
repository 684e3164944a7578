//! The publisher: one or more keep-alive connections to the trusted listener, each pipelined.
//! The calling thread sends the requests (as fast as possible or on a fixed-rate schedule),
//! spread over the connections, while one thread per connection reads and counts the answers.
//! Also the `/server-stat/` query.

use std::io::{self, Read, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::{Scope, ScopedJoinHandle};
use std::time::{Duration, Instant};

use crate::net::{Addr, BStream};
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
    /// When the last answer was read.
    pub last_answer: Option<Instant>,
    /// Worst delay of a send behind its schedule, in microseconds.
    pub max_lag_us: u64,
}

/// Publishes until the schedule ends or `stop` is set. `make(k, out)` appends request `k`.
///
/// The requests go over `conns` keep-alive connections (at least one). The calling thread is
/// the writer: it follows the schedule and gives each request to the connection with the
/// fewest unanswered requests (ties in turn), so with `conns` > 1 the server sees concurrent
/// publishers the way many PHP processes look to it; each connection stays pipelined and
/// answered in order. One reader thread per connection counts the answers.
///
/// `per_conn` caps the requests sent on one connection: nginx (the nchan peer) closes a
/// keep-alive connection after `keepalive_requests` (1000 by default), so a connection that
/// reached the cap takes no more requests, its reader waits for the last answers, and it is
/// replaced by a new one, keeping the schedule.
pub fn run<F>(
    addr: &Addr,
    sched: Schedule,
    stop: &AtomicBool,
    per_conn: Option<u64>,
    conns: usize,
    mut make: F,
) -> Result<Outcome, String>
where
    F: FnMut(u64, &mut Vec<u8>),
{
    let start = Instant::now();
    let abort = AtomicBool::new(false);
    let conns = conns.max(1);
    let cap = per_conn.map(|p| p.max(1));
    std::thread::scope(|s| {
        let mut out = Outcome::default();
        let mut errors: Vec<String> = Vec::new();
        let mut lanes: Vec<Lane<'_>> = Vec::with_capacity(conns);
        for _ in 0..conns {
            match Lane::open(s, addr, cap, &abort) {
                Ok(l) => lanes.push(l),
                Err(e) => {
                    errors.push(e);
                    break;
                }
            }
        }
        if errors.is_empty() {
            let w = write_loop(
                &mut lanes,
                s,
                addr,
                &sched,
                start,
                cap,
                stop,
                &abort,
                &mut out,
                &mut errors,
                &mut make,
            );
            out.first_send = w.first;
            out.last_send = w.last;
            out.max_lag_us = w.max_lag_us;
            out.sent = w.sent;
        }
        if !errors.is_empty() {
            abort.store(true, Ordering::Release);
        }
        for lane in lanes {
            lane.close(&mut out, &mut errors);
        }
        match errors.into_iter().next() {
            Some(e) => Err(e),
            None => Ok(out),
        }
    })
}

/// What a connection's reader and the writer share.
#[derive(Default)]
struct LaneState {
    /// Requests written on this connection (counted before the write).
    sent: AtomicU64,
    /// Answers read on this connection.
    answered: AtomicU64,
    /// The writer sends no more on this connection.
    closing: AtomicBool,
}

/// One publisher connection: the writer's half and the reader thread.
struct Lane<'scope> {
    writer: BStream,
    st: Arc<LaneState>,
    reader: ScopedJoinHandle<'scope, Result<Outcome, String>>,
    /// Requests assigned in the current batch, not yet written.
    buf: Vec<u8>,
    pending: u64,
}

impl<'scope> Lane<'scope> {
    fn open<'env>(
        s: &'scope Scope<'scope, 'env>,
        addr: &Addr,
        cap: Option<u64>,
        abort: &'env AtomicBool,
    ) -> Result<Lane<'scope>, String> {
        let mut reader = addr
            .connect_blocking(Duration::from_secs(10))
            .map_err(|e| format!("publisher: connect to {addr}: {e}"))?;
        let writer = reader.try_clone().map_err(|e| format!("publisher: {e}"))?;
        reader
            .set_read_timeout(Some(Duration::from_millis(100)))
            .map_err(|e| format!("publisher: {e}"))?;
        let st = Arc::new(LaneState::default());
        let rst = st.clone();
        let reader = std::thread::Builder::new()
            .name("publisher-reader".into())
            .spawn_scoped(s, move || {
                let mut out = Outcome::default();
                let r = read_loop(&mut reader, &mut out, &rst, cap, abort);
                if r.is_err() {
                    abort.store(true, Ordering::Release);
                }
                r.map(|()| out)
            })
            .map_err(|e| format!("publisher: spawn: {e}"))?;
        Ok(Lane {
            writer,
            st,
            reader,
            buf: Vec::with_capacity(64 * 1024),
            pending: 0,
        })
    }

    /// Unanswered requests, counting those assigned in the current batch.
    fn load(&self) -> u64 {
        (self.st.sent.load(Ordering::Acquire) + self.pending)
            .saturating_sub(self.st.answered.load(Ordering::Acquire))
    }

    fn full(&self, cap: Option<u64>) -> bool {
        self.st.closing.load(Ordering::Relaxed)
            || cap.is_some_and(|c| self.st.sent.load(Ordering::Relaxed) + self.pending >= c)
    }

    /// Sends no more, waits for the reader and adds its counts.
    fn close(self, out: &mut Outcome, errors: &mut Vec<String>) {
        self.st.closing.store(true, Ordering::Release);
        match self.reader.join() {
            Ok(Ok(o)) => {
                out.ok += o.ok;
                out.failed += o.failed;
                out.last_answer = out.last_answer.max(o.last_answer);
                if out.first_error.is_none() {
                    out.first_error = o.first_error;
                }
            }
            Ok(Err(e)) => errors.push(e),
            Err(_) => errors.push("publisher: reader thread panicked".into()),
        }
    }
}

struct Written {
    first: Option<Instant>,
    last: Option<Instant>,
    max_lag_us: u64,
    sent: u64,
}

/// The schedule: builds each batch of due requests, spreads it over the lanes and writes it.
#[allow(clippy::too_many_arguments)]
fn write_loop<'scope, 'env, F>(
    lanes: &mut [Lane<'scope>],
    s: &'scope Scope<'scope, 'env>,
    addr: &Addr,
    sched: &Schedule,
    start: Instant,
    cap: Option<u64>,
    stop: &AtomicBool,
    abort: &'env AtomicBool,
    out: &mut Outcome,
    errors: &mut Vec<String>,
    make: &mut F,
) -> Written
where
    F: FnMut(u64, &mut Vec<u8>),
{
    let end = sched.duration.map(|d| start + d);
    let mut k = 0u64;
    let mut first = None;
    let mut last = None;
    let mut max_lag = Duration::ZERO;
    let mut turn = 0usize;
    let n = lanes.len();
    loop {
        if stop.load(Ordering::Relaxed)
            || abort.load(Ordering::Relaxed)
            || sched.count.is_some_and(|c| k >= c)
        {
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
        // Replace the connections that reached the cap: at once when their last answers are
        // in, or waiting for the first one when none can take a request.
        if cap.is_some() {
            let none_free = lanes.iter().all(|l| l.full(cap));
            for lane in lanes.iter_mut() {
                if lane.full(cap) && (lane.reader.is_finished() || none_free) {
                    match Lane::open(s, addr, cap, abort) {
                        Ok(new) => std::mem::replace(lane, new).close(out, errors),
                        Err(e) => errors.push(e),
                    }
                    if !errors.is_empty() {
                        return written(first, last, max_lag, k);
                    }
                    if none_free {
                        break;
                    }
                }
            }
        }
        // Each request to the least-loaded connection; ties in turn.
        let mut m = 0u64;
        while m < due && sched.count.is_none_or(|c| k + m < c) {
            let mut best: Option<(u64, usize)> = None;
            for j in 0..n {
                let i = (turn + j) % n;
                if lanes[i].full(cap) {
                    continue;
                }
                let load = lanes[i].load();
                if best.is_none_or(|(b, _)| load < b) {
                    best = Some((load, i));
                }
            }
            let Some((_, i)) = best else {
                break;
            };
            turn = (i + 1) % n;
            let lane = &mut lanes[i];
            make(k + m, &mut lane.buf);
            lane.pending += 1;
            m += 1;
        }
        let t = Instant::now();
        first.get_or_insert(t);
        last = Some(t);
        for lane in lanes.iter_mut().filter(|l| l.pending > 0) {
            // Count before writing, so the reader never sees more answers than `sent`.
            let sent = lane.st.sent.fetch_add(lane.pending, Ordering::AcqRel) + lane.pending;
            lane.pending = 0;
            let r = lane.writer.write_all(&lane.buf);
            lane.buf.clear();
            if let Err(e) = r {
                errors.push(format!("publisher: write: {e}"));
                return written(first, last, max_lag, k + m);
            }
            if cap.is_some_and(|c| sent >= c) {
                lane.st.closing.store(true, Ordering::Release);
            }
        }
        k += m;
    }
    written(first, last, max_lag, k)
}

fn written(first: Option<Instant>, last: Option<Instant>, max_lag: Duration, k: u64) -> Written {
    Written {
        first,
        last,
        max_lag_us: max_lag.as_micros() as u64,
        sent: k,
    }
}

fn read_loop(
    r: &mut impl Read,
    out: &mut Outcome,
    st: &LaneState,
    cap: Option<u64>,
    abort: &AtomicBool,
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
        if pos > 0 {
            out.last_answer = Some(Instant::now());
        }
        st.answered.store(answered, Ordering::Release);
        if abort.load(Ordering::Acquire) {
            // Another thread's error is the one reported.
            return Ok(());
        }
        let closing = st.closing.load(Ordering::Acquire);
        let sent = st.sent.load(Ordering::Acquire);
        if closing && answered >= sent {
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
                if closing {
                    let since = *idle_since.get_or_insert_with(Instant::now);
                    if since.elapsed() > Duration::from_secs(5) {
                        return Err(format!(
                            "publisher: {} of {sent} publishes unanswered",
                            sent - answered,
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
