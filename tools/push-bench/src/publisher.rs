//! The publisher: one or more keep-alive connections to the trusted listener, each pipelined.
//! The calling thread sends the requests (as fast as possible or on a fixed-rate schedule),
//! spread over the connections, while one reader thread counts the answers of all of them.
//! Also the `/server-stat/` query.

use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use mio::{Events, Interest, Poll, Token, Waker};

use crate::net::{Addr, BStream, MStream};
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
/// answered in order. One reader thread counts the answers of every connection.
///
/// `per_conn` caps the requests sent on one connection: nginx (the nchan peer) closes a
/// keep-alive connection after `keepalive_requests` (1000 by default), so a connection that
/// reached the cap takes no more requests, its answers are awaited, and it is replaced by a
/// new one, keeping the schedule.
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
    let quit = AtomicBool::new(false);
    let conns = conns.max(1);
    let cap = per_conn.map(|p| p.max(1));
    let poll = Poll::new().map_err(|e| format!("publisher: poll: {e}"))?;
    let waker =
        Arc::new(Waker::new(poll.registry(), WAKE).map_err(|e| format!("publisher: waker: {e}"))?);
    let (tx, rx) = mpsc::channel::<ReaderLane>();
    std::thread::scope(|s| {
        let readers = Readers { tx, waker };
        let (abort, quit) = (&abort, &quit);
        let reader = std::thread::Builder::new()
            .name("publisher-reader".into())
            .spawn_scoped(s, move || read_all(poll, rx, cap, abort, quit))
            .map_err(|e| format!("publisher: spawn: {e}"))?;
        let mut out = Outcome::default();
        let mut errors: Vec<String> = Vec::new();
        let mut lanes: Vec<Lane> = Vec::with_capacity(conns);
        for _ in 0..conns {
            match Lane::open(&readers, addr) {
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
                &readers,
                addr,
                &sched,
                start,
                cap,
                stop,
                abort,
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
            lane.close(&readers, &mut out, &mut errors);
        }
        quit.store(true, Ordering::Release);
        let _ = readers.waker.wake();
        if reader.join().is_err() {
            errors.push("publisher: reader thread panicked".into());
        }
        match errors.into_iter().next() {
            Some(e) => Err(e),
            None => Ok(out),
        }
    })
}

const WAKE: Token = Token(0);

/// What a connection's reader and the writer share.
#[derive(Default)]
struct LaneState {
    /// Requests written on this connection (counted before the write).
    sent: AtomicU64,
    /// Answers read on this connection.
    answered: AtomicU64,
    /// The writer sends no more on this connection.
    closing: AtomicBool,
    /// The reader is done with this connection (its outcome is in the lane's channel).
    finished: AtomicBool,
}

/// The way to the reader thread.
struct Readers {
    tx: mpsc::Sender<ReaderLane>,
    waker: Arc<Waker>,
}

/// One publisher connection, the writer's half.
struct Lane {
    writer: BStream,
    st: Arc<LaneState>,
    outcome: mpsc::Receiver<Result<Outcome, String>>,
    /// Requests assigned in the current batch, not yet written.
    buf: Vec<u8>,
    pending: u64,
}

impl Lane {
    fn open(readers: &Readers, addr: &Addr) -> Result<Lane, String> {
        let stream = addr
            .connect_blocking(Duration::from_secs(10))
            .map_err(|e| format!("publisher: connect to {addr}: {e}"))?;
        let writer = stream.try_clone().map_err(|e| format!("publisher: {e}"))?;
        let stream = stream.into_mio().map_err(|e| format!("publisher: {e}"))?;
        let st = Arc::new(LaneState::default());
        let (done, outcome) = mpsc::channel();
        let lane = ReaderLane {
            stream,
            st: st.clone(),
            buf: Vec::with_capacity(64 * 1024),
            out: Outcome::default(),
            idle_since: None,
            readable: true,
            eof: false,
            done,
        };
        readers
            .tx
            .send(lane)
            .map_err(|_| "publisher: reader thread gone".to_string())?;
        let _ = readers.waker.wake();
        Ok(Lane {
            writer,
            st,
            outcome,
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

    /// Sends no more, waits for the reader to finish the connection and adds its counts.
    fn close(self, readers: &Readers, out: &mut Outcome, errors: &mut Vec<String>) {
        self.st.closing.store(true, Ordering::Release);
        let _ = readers.waker.wake();
        match self.outcome.recv() {
            Ok(Ok(o)) => {
                out.ok += o.ok;
                out.failed += o.failed;
                out.last_answer = out.last_answer.max(o.last_answer);
                if out.first_error.is_none() {
                    out.first_error = o.first_error;
                }
            }
            Ok(Err(e)) => errors.push(e),
            Err(_) => errors.push("publisher: reader thread stopped".into()),
        }
    }
}

/// Writes all of `buf`. The socket is non-blocking (its reader half is polled): a full socket
/// buffer means the server is behind, so wait a little, up to the 10 s a blocking write had.
fn write_fully(w: &mut impl Write, mut buf: &[u8], abort: &AtomicBool) -> io::Result<()> {
    let mut stalled: Option<Instant> = None;
    while !buf.is_empty() {
        match w.write(buf) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                buf = &buf[n..];
                stalled = None;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                let since = *stalled.get_or_insert_with(Instant::now);
                if abort.load(Ordering::Relaxed) || since.elapsed() > Duration::from_secs(10) {
                    return Err(io::ErrorKind::TimedOut.into());
                }
                std::thread::sleep(Duration::from_micros(200));
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

struct Written {
    first: Option<Instant>,
    last: Option<Instant>,
    max_lag_us: u64,
    sent: u64,
}

/// The schedule: builds each batch of due requests, spreads it over the lanes and writes it.
#[allow(clippy::too_many_arguments)]
fn write_loop<F>(
    lanes: &mut [Lane],
    readers: &Readers,
    addr: &Addr,
    sched: &Schedule,
    start: Instant,
    cap: Option<u64>,
    stop: &AtomicBool,
    abort: &AtomicBool,
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
                if lane.full(cap) && (lane.st.finished.load(Ordering::Acquire) || none_free) {
                    match Lane::open(readers, addr) {
                        Ok(new) => std::mem::replace(lane, new).close(readers, out, errors),
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
            let r = write_fully(&mut lane.writer, &lane.buf, abort);
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

/// A connection as the reader thread holds it.
struct ReaderLane {
    stream: MStream,
    st: Arc<LaneState>,
    buf: Vec<u8>,
    out: Outcome,
    idle_since: Option<Instant>,
    /// An event came (or the lane is new): read until `WouldBlock`.
    readable: bool,
    /// The server closed the connection.
    eof: bool,
    done: mpsc::Sender<Result<Outcome, String>>,
}

/// The reader thread: reads every connection's answers as they come (one thread for all:
/// a blocking reader per connection cost a thread wake per answer, about as much CPU per
/// publish as the server itself spent), and finishes a connection once the writer closed it
/// and its answers are in.
fn read_all(
    mut poll: Poll,
    rx: mpsc::Receiver<ReaderLane>,
    cap: Option<u64>,
    abort: &AtomicBool,
    quit: &AtomicBool,
) {
    let mut lanes: Vec<Option<ReaderLane>> = Vec::new();
    let mut events = Events::with_capacity(256);
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        if let Err(e) = poll.poll(&mut events, Some(Duration::from_millis(100)))
            && e.kind() != io::ErrorKind::Interrupted
        {
            abort.store(true, Ordering::Release);
        }
        for ev in events.iter() {
            if let Some(Some(l)) = ev.token().0.checked_sub(1).and_then(|i| lanes.get_mut(i)) {
                l.readable = true;
            }
        }
        for mut l in rx.try_iter() {
            let i = match lanes.iter().position(Option::is_none) {
                Some(i) => i,
                None => {
                    lanes.push(None);
                    lanes.len() - 1
                }
            };
            match poll
                .registry()
                .register(&mut l.stream, Token(i + 1), Interest::READABLE)
            {
                Ok(()) => lanes[i] = Some(l),
                Err(e) => l.finish(Err(format!("publisher: register: {e}")), abort),
            }
        }
        for slot in lanes.iter_mut() {
            let Some(l) = slot else { continue };
            if let Some(r) = l.step(&mut chunk, cap, abort) {
                let mut l = slot.take().expect("checked above");
                let _ = poll.registry().deregister(&mut l.stream);
                l.finish(r, abort);
            }
        }
        if quit.load(Ordering::Acquire) && lanes.iter().all(Option::is_none) {
            return;
        }
    }
}

impl ReaderLane {
    /// Reads what came and counts whole answers. `Some` once the connection is done with.
    fn step(
        &mut self,
        chunk: &mut [u8],
        cap: Option<u64>,
        abort: &AtomicBool,
    ) -> Option<Result<Outcome, String>> {
        while std::mem::take(&mut self.readable) {
            match self.stream.read(chunk) {
                Ok(0) => self.eof = true,
                Ok(n) => {
                    self.idle_since = None;
                    self.buf.extend_from_slice(&chunk[..n]);
                    self.readable = true;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => self.readable = true,
                Err(e) => return Some(Err(format!("publisher: read: {e}"))),
            }
        }
        if let Err(e) = self.count_answers() {
            return Some(Err(e));
        }
        let answered = self.out.ok + self.out.failed;
        self.st.answered.store(answered, Ordering::Release);
        if abort.load(Ordering::Acquire) {
            // Another connection's error is the one reported.
            return Some(Ok(std::mem::take(&mut self.out)));
        }
        let sent = self.st.sent.load(Ordering::Acquire);
        let closing = self.st.closing.load(Ordering::Acquire);
        let all_in = closing && answered >= sent;
        if self.eof {
            // nginx closes after the last request it allows; the writer may not have noticed
            // yet that it reached the cap.
            if all_in || cap.is_some_and(|c| answered >= c) {
                return Some(Ok(std::mem::take(&mut self.out)));
            }
            return Some(Err(format!(
                "publisher: server closed the connection after {answered} answers"
            )));
        }
        if all_in {
            return Some(Ok(std::mem::take(&mut self.out)));
        }
        if closing {
            let since = *self.idle_since.get_or_insert_with(Instant::now);
            if since.elapsed() > Duration::from_secs(5) {
                return Some(Err(format!(
                    "publisher: {} of {sent} publishes unanswered",
                    sent - answered,
                )));
            }
        }
        None
    }

    /// Whole answers in the buffer.
    fn count_answers(&mut self) -> Result<(), String> {
        let mut pos = 0;
        while let Some(h) = proto::parse_response_head(&self.buf[pos..])? {
            let total = h.head_len + h.content_length;
            if self.buf.len() - pos < total {
                break;
            }
            // push-server answers 200; nchan 201 (delivered) or 202 (queued, no subscriber).
            if (200..300).contains(&h.status) {
                self.out.ok += 1;
            } else {
                self.out.failed += 1;
                if self.out.first_error.is_none() {
                    self.out.first_error = Some(format!(
                        "publish answered {}: {}",
                        h.status,
                        proto::preview(&self.buf[pos + h.head_len..pos + total])
                    ));
                }
            }
            pos += total;
        }
        if pos > 0 {
            self.buf.drain(..pos);
            self.out.last_answer = Some(Instant::now());
        }
        Ok(())
    }

    fn finish(self, r: Result<Outcome, String>, abort: &AtomicBool) {
        if r.is_err() {
            abort.store(true, Ordering::Release);
        }
        self.st.finished.store(true, Ordering::Release);
        let _ = self.done.send(r);
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
