//! One subscriber thread: a mio loop owning thousands of subscriber connections.
//!
//! It opens its connections (at most `inflight` handshakes at a time; a Unix listener whose
//! backlog is full answers `EAGAIN`, and the connect is retried on the next pass), reads and
//! checks every delivery, answers server Pings, and, in `churn`, replaces its oldest
//! connection at a fixed rate. The main thread follows it through the counters in [`Shared`]
//! and gets the per-thread [`Report`] when it joins the thread after setting `stop`.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use mio::{Events, Interest, Poll, Token};

use crate::net::{Addr, ConnectError, MStream};
use crate::proto::{self, Target};

/// Keeps at most this many problem descriptions per thread.
const MAX_PROBLEMS: usize = 20;

/// What the subscribers check in each delivery.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Mode {
    /// Only count.
    Idle,
    /// Bodies `{"seq":k}`, k in `0..messages`: each exactly once, in the same order on every
    /// subscriber; ascending when `ordered` (one publisher connection: answered, hence
    /// delivered, in publish order; with several the order is the server's, see `mid`).
    Fanout { messages: u64, ordered: bool },
    /// Bodies `{"t":<unix ns at send>}`: record the latency.
    Latency,
    /// Only count; connections are replaced at `Plan::churn_rate` while `Shared::churning`.
    Churn,
}

pub struct Plan {
    pub mode: Mode,
    pub addr: Addr,
    pub target: Target,
    pub websocket: bool,
    /// Header lines added to every subscribe request (`--cookie`).
    pub extra_headers: Arc<str>,
    /// Every channel item of the run (push-server: signed `<id>.<sig>`; nchan: the plain id).
    pub items: Arc<Vec<String>>,
    /// The items this thread subscribes, one connection each (repeats allowed).
    pub own: Vec<usize>,
    /// Handshakes in flight at most.
    pub inflight: usize,
    /// Connections opened per second by this thread while churning.
    pub churn_rate: f64,
}

/// Counters the main thread watches.
#[derive(Default)]
pub struct Shared {
    pub stop: AtomicBool,
    pub churning: AtomicBool,
    /// WebSocket handshakes completed (101), or long-poll requests fully sent.
    pub opened: AtomicU64,
    pub connect_errors: AtomicU64,
    /// Connections the server closed (close frame or EOF) or that failed after opening.
    pub lost_conns: AtomicU64,
    pub delivered: AtomicU64,
    pub fatal: Mutex<Option<String>>,
}

impl Shared {
    pub fn set_fatal(&self, msg: String) {
        if let Ok(mut f) = self.fatal.lock()
            && f.is_none()
        {
            *f = Some(msg);
        }
    }

    pub fn fatal(&self) -> Option<String> {
        self.fatal.lock().ok().and_then(|f| f.clone())
    }
}

/// What one thread saw.
#[derive(Default)]
pub struct Report {
    pub delivered: u64,
    pub last_delivery: Option<Instant>,
    pub latencies_ns: Vec<u64>,
    pub lost: u64,
    pub duplicates: u64,
    pub reordered: u64,
    pub mid_regressions: u64,
    /// Fanout: a hash of the delivery order of each subscriber that got every message.
    pub order_hashes: Vec<u64>,
    pub malformed: u64,
    pub problems: Vec<String>,
    pub churn_closed: u64,
    pub lp_answers: u64,
}

impl Report {
    fn problem(&mut self, p: String) {
        if self.problems.len() < MAX_PROBLEMS {
            self.problems.push(p);
        }
    }
}

#[derive(PartialEq, Eq, Clone, Copy)]
enum St {
    Connecting,
    Handshake,
    Open,
    Done,
}

struct Conn {
    stream: MStream,
    st: St,
    /// Index in `Plan::own`-order of creation, for messages.
    serial: u64,
    out: Vec<u8>,
    buf: Vec<u8>,
    frag: Vec<u8>,
    announced: bool,
    last_mid: u128,
    max_seq: Option<u64>,
    seen: Vec<u64>,
    /// Fanout: hash of the seqs in arrival order.
    order_hash: u64,
}

impl Conn {
    /// Counts against `Plan::inflight`: a WebSocket until its 101, a long poll until its
    /// request is out.
    fn in_flight(&self) -> bool {
        matches!(self.st, St::Connecting | St::Handshake) && !self.announced
    }
}

struct Ctx<'a> {
    mode: Mode,
    target: Target,
    websocket: bool,
    shared: &'a Shared,
    report: &'a mut Report,
    delivered: u64,
    now_ns: u64,
    mask: u32,
}

pub fn run(plan: Plan, shared: Arc<Shared>) -> Result<Report, String> {
    let mut w = Worker::new(plan, &shared).map_err(|e| format!("poll: {e}"))?;
    let r = w.run();
    if let Err(e) = &r {
        shared.set_fatal(e.clone());
    }
    r.map(|()| w.finish())
}

struct Worker<'a> {
    plan: Plan,
    shared: &'a Shared,
    poll: Poll,
    slab: Vec<Option<Conn>>,
    free: Vec<usize>,
    pending: VecDeque<usize>,
    /// Live connections in opening order, for churn: (slot, serial).
    order: VecDeque<(usize, u64)>,
    serial: u64,
    in_flight: usize,
    report: Report,
    scratch: Vec<u8>,
    mask: u32,
}

impl<'a> Worker<'a> {
    fn new(plan: Plan, shared: &'a Shared) -> io::Result<Worker<'a>> {
        let pending = plan.own.iter().copied().collect();
        let seed = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| d.subsec_nanos())
            | 1;
        Ok(Worker {
            plan,
            shared,
            poll: Poll::new()?,
            slab: Vec::new(),
            free: Vec::new(),
            pending,
            order: VecDeque::new(),
            serial: 0,
            in_flight: 0,
            report: Report::default(),
            scratch: vec![0; 256 * 1024],
            mask: seed,
        })
    }

    fn run(&mut self) -> Result<(), String> {
        let mut events = Events::with_capacity(1024);
        let mut churn_start: Option<Instant> = None;
        let mut churn_done = 0u64;
        let mut churn_cursor = 0usize;
        let target = self.plan.own.len();
        while !self.shared.stop.load(Ordering::Relaxed) {
            self.start_pending()?;
            if self.shared.churning.load(Ordering::Relaxed) && self.plan.churn_rate > 0.0 {
                let start = *churn_start.get_or_insert_with(Instant::now);
                let due = (start.elapsed().as_secs_f64() * self.plan.churn_rate) as u64;
                while churn_done < due && !self.plan.own.is_empty() {
                    churn_done += 1;
                    if self.slab.len() - self.free.len() >= target {
                        self.close_oldest();
                    }
                    let item = self.plan.own[churn_cursor % self.plan.own.len()];
                    churn_cursor += 1;
                    self.pending.push_back(item);
                }
                self.start_pending()?;
            }
            let busy = !self.pending.is_empty() || churn_start.is_some();
            let timeout = if busy { 2 } else { 20 };
            match self
                .poll
                .poll(&mut events, Some(Duration::from_millis(timeout)))
            {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(format!("poll: {e}")),
            }
            let now = Instant::now();
            let now_ns = unix_ns();
            let mut ctx = Ctx {
                mode: self.plan.mode,
                target: self.plan.target,
                websocket: self.plan.websocket,
                shared: self.shared,
                report: &mut self.report,
                delivered: 0,
                now_ns,
                mask: self.mask,
            };
            for ev in events.iter() {
                let slot = ev.token().0;
                let Some(Some(conn)) = self.slab.get_mut(slot) else {
                    continue;
                };
                let was_inflight = conn.in_flight();
                handle(conn, &mut ctx, &mut self.scratch, ev.is_writable());
                let now_inflight = conn.in_flight();
                if was_inflight && !now_inflight {
                    self.in_flight = self.in_flight.saturating_sub(1);
                }
                if conn.st == St::Done {
                    let _ = self.poll.registry().deregister(&mut conn.stream);
                    if self.plan.mode == Mode::Churn {
                        self.slab[slot] = None;
                        self.free.push(slot);
                    }
                }
            }
            let (mask, delivered) = (ctx.mask, ctx.delivered);
            self.mask = mask;
            if delivered > 0 {
                self.report.delivered += delivered;
                self.report.last_delivery = Some(now);
                self.shared
                    .delivered
                    .fetch_add(delivered, Ordering::Relaxed);
            }
        }
        Ok(())
    }

    /// Starts queued connections while fewer than `inflight` handshakes are in progress.
    fn start_pending(&mut self) -> Result<(), String> {
        while self.in_flight < self.plan.inflight {
            let Some(&item) = self.pending.front() else {
                return Ok(());
            };
            let stream = match self.plan.addr.connect_nonblocking() {
                Ok(Some(s)) => s,
                // Backlog full: retry on the next pass.
                Ok(None) => return Ok(()),
                Err(ConnectError::Fatal(e)) => return Err(e),
                Err(ConnectError::Failed(e)) => {
                    self.pending.pop_front();
                    self.shared.connect_errors.fetch_add(1, Ordering::Relaxed);
                    self.report.problem(format!("connect: {e}"));
                    continue;
                }
            };
            self.pending.pop_front();
            let slot = self.free.pop().unwrap_or_else(|| {
                self.slab.push(None);
                self.slab.len() - 1
            });
            let words = match self.plan.mode {
                Mode::Fanout { messages, .. } => messages.div_ceil(64) as usize,
                _ => 0,
            };
            let mut conn = Conn {
                stream,
                st: St::Connecting,
                serial: self.serial,
                out: proto::subscribe_request(
                    self.plan.target,
                    &self.plan.items[item],
                    self.plan.websocket,
                    &self.plan.extra_headers,
                ),
                buf: Vec::new(),
                frag: Vec::new(),
                announced: false,
                last_mid: 0,
                max_seq: None,
                seen: vec![0; words],
                order_hash: ORDER_HASH_SEED,
            };
            self.poll
                .registry()
                .register(
                    &mut conn.stream,
                    Token(slot),
                    Interest::READABLE | Interest::WRITABLE,
                )
                .map_err(|e| format!("register: {e}"))?;
            self.order.push_back((slot, self.serial));
            self.serial += 1;
            self.in_flight += 1;
            self.slab[slot] = Some(conn);
        }
        Ok(())
    }

    /// Churn: closes the oldest live connection with a WebSocket close frame.
    fn close_oldest(&mut self) {
        while let Some((slot, serial)) = self.order.pop_front() {
            let Some(Some(conn)) = self.slab.get_mut(slot) else {
                continue;
            };
            if conn.serial != serial {
                continue;
            }
            if conn.in_flight() {
                self.in_flight = self.in_flight.saturating_sub(1);
            }
            if conn.st == St::Open {
                let mut frame = Vec::new();
                self.mask = xorshift(self.mask);
                proto::write_client_frame(
                    proto::OP_CLOSE,
                    &1000u16.to_be_bytes(),
                    self.mask.to_be_bytes(),
                    &mut frame,
                );
                let _ = conn.stream.write(&frame);
            }
            let _ = self.poll.registry().deregister(&mut conn.stream);
            self.slab[slot] = None;
            self.free.push(slot);
            self.report.churn_closed += 1;
            return;
        }
    }

    fn finish(mut self) -> Report {
        if let Mode::Fanout { messages, .. } = self.plan.mode {
            for conn in self.slab.iter().flatten() {
                let got: u64 = conn.seen.iter().map(|w| u64::from(w.count_ones())).sum();
                if got == messages {
                    self.report.order_hashes.push(conn.order_hash);
                }
                if got < messages {
                    self.report.lost += messages - got;
                    self.report.problem(format!(
                        "subscriber {}: lost {} of {messages} messages",
                        conn.serial,
                        messages - got
                    ));
                }
            }
        }
        self.report
    }
}

/// Handles readiness of one connection.
fn handle(conn: &mut Conn, ctx: &mut Ctx<'_>, scratch: &mut [u8], writable: bool) {
    if conn.st == St::Connecting {
        match conn.stream.connected() {
            Ok(true) => conn.st = St::Handshake,
            Ok(false) => return,
            Err(e) => {
                fail_connect(conn, ctx, format!("connect: {e}"));
                return;
            }
        }
    }
    if (writable || !conn.out.is_empty()) && !flush(conn, ctx) {
        return;
    }
    read_all(conn, ctx, scratch);
    if conn.st != St::Done && !conn.out.is_empty() {
        flush(conn, ctx);
    }
}

fn fail_connect(conn: &mut Conn, ctx: &mut Ctx<'_>, msg: String) {
    if matches!(conn.st, St::Connecting | St::Handshake) && !conn.announced {
        ctx.shared.connect_errors.fetch_add(1, Ordering::Relaxed);
    } else {
        ctx.shared.lost_conns.fetch_add(1, Ordering::Relaxed);
    }
    ctx.report
        .problem(format!("subscriber {}: {msg}", conn.serial));
    conn.st = St::Done;
}

/// Writes pending output; false when the connection died.
fn flush(conn: &mut Conn, ctx: &mut Ctx<'_>) -> bool {
    let mut pos = 0;
    while pos < conn.out.len() {
        match conn.stream.write(&conn.out[pos..]) {
            Ok(0) => {
                fail_connect(conn, ctx, "write returned 0".into());
                return false;
            }
            Ok(n) => pos += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                fail_connect(conn, ctx, format!("write: {e}"));
                return false;
            }
        }
    }
    conn.out.drain(..pos);
    if conn.out.is_empty() && conn.st == St::Handshake && !ctx.websocket && !conn.announced {
        // A long poll is "subscribed" once its request is out (the caller confirms with
        // the server's `pollings` count).
        conn.announced = true;
        ctx.shared.opened.fetch_add(1, Ordering::Relaxed);
    }
    true
}

fn read_all(conn: &mut Conn, ctx: &mut Ctx<'_>, scratch: &mut [u8]) {
    loop {
        if conn.st == St::Done {
            return;
        }
        match conn.stream.read(scratch) {
            Ok(0) => {
                let what = if conn.st == St::Open || conn.announced {
                    "server closed the connection"
                } else {
                    "server closed the connection during the handshake"
                };
                fail_connect(conn, ctx, what.into());
                return;
            }
            Ok(n) => {
                if conn.buf.is_empty() {
                    let used = consume(conn, ctx, &scratch[..n]);
                    if conn.st != St::Done && used < n {
                        conn.buf.extend_from_slice(&scratch[used..n]);
                    }
                } else {
                    let mut buf = std::mem::take(&mut conn.buf);
                    buf.extend_from_slice(&scratch[..n]);
                    let used = consume(conn, ctx, &buf);
                    buf.drain(..used.min(buf.len()));
                    if conn.st != St::Done {
                        conn.buf = buf;
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                fail_connect(conn, ctx, format!("read: {e}"));
                return;
            }
        }
    }
}

/// Consumes what it can of `data`; returns the bytes used.
fn consume(conn: &mut Conn, ctx: &mut Ctx<'_>, data: &[u8]) -> usize {
    let mut pos = 0;
    if conn.st == St::Handshake {
        let head = match proto::parse_response_head(data) {
            Ok(Some(h)) => h,
            Ok(None) => return 0,
            Err(e) => {
                fail_connect(conn, ctx, e);
                return data.len();
            }
        };
        if !ctx.websocket {
            // Long poll (idle only): note the answer and skip its body.
            let total = head.head_len + head.content_length;
            if data.len() < total {
                return 0;
            }
            ctx.report.lp_answers += 1;
            if head.status != 200 && head.status != 304 {
                fail_connect(
                    conn,
                    ctx,
                    format!(
                        "long poll answered {}: {}",
                        head.status,
                        proto::preview(&data[head.head_len..total])
                    ),
                );
            }
            return total;
        }
        if head.status != 101 {
            let body = &data[head.head_len.min(data.len())..];
            fail_connect(
                conn,
                ctx,
                format!(
                    "handshake answered {} instead of 101: {}",
                    head.status,
                    proto::preview(body)
                ),
            );
            return data.len();
        }
        conn.st = St::Open;
        conn.announced = true;
        ctx.shared.opened.fetch_add(1, Ordering::Relaxed);
        pos = head.head_len;
    }
    if conn.st != St::Open {
        return data.len();
    }
    while pos < data.len() {
        let f = match proto::parse_server_frame(&data[pos..]) {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) => {
                fail_connect(conn, ctx, format!("bad frame: {e}"));
                return data.len();
            }
        };
        let payload = &data[pos + f.start..pos + f.end];
        pos += f.end;
        match f.opcode {
            proto::OP_TEXT if f.fin && conn.frag.is_empty() => on_payload(conn, ctx, payload),
            proto::OP_TEXT | proto::OP_CONT => {
                conn.frag.extend_from_slice(payload);
                if f.fin {
                    let msg = std::mem::take(&mut conn.frag);
                    on_payload(conn, ctx, &msg);
                }
            }
            proto::OP_PING => {
                ctx.mask = xorshift(ctx.mask);
                proto::write_client_frame(
                    proto::OP_PONG,
                    payload,
                    ctx.mask.to_be_bytes(),
                    &mut conn.out,
                );
            }
            proto::OP_PONG => {}
            proto::OP_CLOSE => {
                let code = if payload.len() >= 2 {
                    u16::from_be_bytes([payload[0], payload[1]]).to_string()
                } else {
                    "none".to_string()
                };
                let reason = proto::preview(payload.get(2..).unwrap_or_default());
                fail_connect(
                    conn,
                    ctx,
                    format!("server closed the WebSocket: code {code}, reason {reason:?}"),
                );
                return data.len();
            }
            proto::OP_BINARY => {
                ctx.report.malformed += 1;
                ctx.report.problem(format!(
                    "subscriber {}: binary frame on a v3 socket",
                    conn.serial
                ));
            }
            op => {
                fail_connect(conn, ctx, format!("unknown opcode {op}"));
                return data.len();
            }
        }
    }
    pos
}

/// One WebSocket text message: v3 frames (push-server) or one raw message body (nchan).
fn on_payload(conn: &mut Conn, ctx: &mut Ctx<'_>, payload: &[u8]) {
    if ctx.target.is_nchan() {
        on_message(conn, ctx, None, payload);
        ctx.delivered += 1;
        return;
    }
    let mut count = 0u64;
    let r = proto::for_each_v3(payload, |m| {
        count += 1;
        on_message(conn, ctx, Some(m.mid), m.text);
    });
    if let Err(e) = r {
        ctx.report.malformed += 1;
        ctx.report
            .problem(format!("subscriber {}: {e}", conn.serial));
    }
    ctx.delivered += count;
}

/// Checks one delivered message: its mid (push-server only) and its body.
fn on_message(conn: &mut Conn, ctx: &mut Ctx<'_>, mid: Option<u128>, text: &[u8]) {
    let serial = conn.serial;
    let report = &mut *ctx.report;
    if let Some(mid) = mid {
        if mid <= conn.last_mid {
            report.mid_regressions += 1;
            report.problem(format!(
                "subscriber {serial}: mid {mid} after {} (not increasing)",
                conn.last_mid
            ));
        }
        conn.last_mid = conn.last_mid.max(mid);
    }
    match ctx.mode {
        Mode::Fanout { messages, ordered } => {
            let Some(seq) = proto::leading_number(text, b"{\"seq\":") else {
                report.malformed += 1;
                report.problem(format!(
                    "subscriber {serial}: unexpected body {}",
                    proto::preview(text)
                ));
                return;
            };
            if seq >= messages {
                report.malformed += 1;
                report.problem(format!("subscriber {serial}: seq {seq} out of range"));
                return;
            }
            let (w, b) = ((seq / 64) as usize, seq % 64);
            if conn.seen[w] & (1 << b) != 0 {
                report.duplicates += 1;
                report.problem(format!("subscriber {serial}: seq {seq} duplicated"));
                return;
            }
            conn.seen[w] |= 1 << b;
            conn.order_hash = (conn.order_hash ^ (seq + 1)).wrapping_mul(ORDER_HASH_PRIME);
            if let Some(max) = conn.max_seq
                && seq < max
            {
                report.reordered += 1;
                if ordered {
                    report.problem(format!(
                        "subscriber {serial}: seq {seq} arrived after seq {max} (reordered)"
                    ));
                }
            }
            conn.max_seq = Some(conn.max_seq.map_or(seq, |m| m.max(seq)));
        }
        Mode::Latency => match proto::leading_number(text, b"{\"t\":") {
            Some(t) => report.latencies_ns.push(ctx.now_ns.saturating_sub(t)),
            None => {
                report.malformed += 1;
                report.problem(format!(
                    "subscriber {serial}: unexpected body {}",
                    proto::preview(text)
                ));
            }
        },
        Mode::Idle | Mode::Churn => {}
    }
}

/// FNV-1a style constants for the order hash (order-sensitive, not cryptographic).
const ORDER_HASH_SEED: u64 = 0xcbf2_9ce4_8422_2325;
const ORDER_HASH_PRIME: u64 = 0x0000_0100_0000_01b3;

fn xorshift(mut x: u32) -> u32 {
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    x
}

pub fn unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}
