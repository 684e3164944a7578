//! The event loop and everything that crosses connections: accepting, routing complete
//! requests, publishing and fan-out, subscriptions, timers, flushing and shutdown.
//!
//! One loop pass: poll (timeout = nearest deadline) → dispatch events → act on the store's
//! answers → expire timers → sweep the store when due → act on answers and flush connections
//! that got output, until the store is quiet → resume parked accepts. Output queued outside a
//! connection's own event (fan-out, timers, store answers) is flushed at the end of the pass
//! through the dirty list, because an edge-triggered socket raises no new event for it.

use std::collections::HashMap;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::{Events, Interest, Poll, Token, Waker};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook_mio::v1_0::Signals;
use tungstenite::Bytes;

use crate::activation::Passed;
use crate::config::{self, Config};
use crate::conn::{Backlog, Conn, Phase, READ_CHUNK};
use crate::error::close;
use crate::listener::{self, Bound, Listener};
use crate::message::{Mid, now_ms};
use crate::metrics::Metrics;
use crate::notify;
use crate::registry::Registry;
use crate::route::Role;
use crate::signature::Signer;
use crate::slab::{ConnId, Slab};
use crate::stats::Stats;
use crate::store::memory::Embedded;
use crate::store::redis::{RedisOptions, RedisStore};
use crate::store::{Done, Store};
use crate::timers::Timers;
use crate::websocket::{self, OP_PING};

mod catchup;
mod requests;
mod service;
mod store_io;
mod v4;
mod v5;

const SIGNAL_TOKEN: Token = Token(8);
/// The Redis store's worker wakes the loop with this token when answers are ready.
pub(crate) const STORE_WAKE_TOKEN: Token = Token(9);
/// The store's state before its first answer; its first `Up` is not a recovery.
const STORE_STARTING: &str = "starting, not connected yet";
/// How often this instance's entry in the shared stats is rewritten (docs/redis.md#stats).
const STATS_PUT_EVERY: Duration = Duration::from_secs(60);
/// At most this many messages per long-poll answer or backlog WebSocket message (docs/protocol.md#resuming-by-mid).
const BACKLOG_CHUNK: usize = 200;
/// At most about this many body bytes per backlog chunk (always at least one message).
pub(crate) const BACKLOG_CHUNK_BYTES: usize = 1 << 20;
const SWEEP_EVERY: Duration = Duration::from_secs(5);
const ACCEPT_RETRY: Duration = Duration::from_millis(100);
/// At start, connects wait in the listen queue this long for the store to come up, rather
/// than being accepted only to be answered 503 (a restart under socket activation: PHP's
/// publishes are queued meanwhile, and it waits 1 s for an answer).
const STORE_START_GRACE: Duration = Duration::from_millis(500);
const WS_PING_PAYLOAD: &[u8] = b"ws ping";
/// Store drain rounds per loop pass before sockets get their turn again.
const MAX_DRAIN_ROUNDS: usize = 64;

pub struct Server {
    poll: Poll,
    listeners: Vec<Bound>,
    signals: Signals,
    conns: Slab<Conn>,
    registry: Registry,
    store: Box<dyn Store>,
    /// Store jobs in flight and what waits for each.
    waiting: HashMap<u64, (Instant, store_io::Waiter)>,
    next_token: u64,
    done_buf: Vec<Done>,
    /// The last pass stopped draining the store with answers possibly left: poll without
    /// sleeping.
    drain_again: bool,
    /// Subscribers whose backlog read failed, retried every sweep and when the store is up.
    failed_backlogs: Vec<ConnId>,
    /// The newest id this instance has seen (minted here or elsewhere): the `Last-Message-Id`
    /// of a 304 for a poll without `mid`.
    latest_mid: Mid,
    /// Why the store is unusable, while it is.
    store_down: Option<String>,
    /// Catch-up of the local subscribers after a gap in the store's live stream.
    catchup: catchup::CatchUp,
    next_stats_put: Instant,
    timers: Timers,
    cfg: Config,
    config_path: Option<PathBuf>,
    signer: Signer,
    stats: Stats,
    metrics: Metrics,
    process_id: String,
    dirty: Vec<ConnId>,
    /// Connections with work to resume (docs/loop.md): served after the store's answers.
    ready: Vec<ConnId>,
    scratch: Vec<u8>,
    publish_seq: u64,
    expired: Vec<(crate::timers::Deadline, ConnId)>,
    next_sweep: Instant,
    accept_paused_until: Option<Instant>,
    /// The pause above is the start's wait for the store ([`STORE_START_GRACE`]).
    accept_waits_for_store: bool,
    shutdown_deadline: Option<Instant>,
    /// The drain after SIGTERM (docs/restart.md), while it runs.
    drain: Option<Drain>,
    /// The newest id answered 200 here, and the newest delivered to local subscribers: a
    /// drain waits until the second has reached the first (a shared store announces this
    /// instance's own publishes back through pub/sub, after the answer).
    answered_mid: Mid,
    delivered_mid: Mid,
    last_pressure_warning: Option<Instant>,
    /// When a full store queue was last warned about (rate-limited, see `queue_full`).
    last_queue_warning: Option<Instant>,
    ping_frame: Bytes,
    /// Emptied outbox queues for reuse by the next fan-out (outbox.rs).
    spare_queues: crate::outbox::Spare,
    /// The v5 keep-alive: the text `ping` (docs/v5.md, "Keep-alive").
    v5_ping_frame: Bytes,
    /// v5 last-seen times (docs/v5.md, "Presence").
    presence: v5::Presence,
}

/// How long a drain leaves connections without a request open: one accepted just before the
/// stop gets its request in and answered (docs/restart.md).
const IDLE_GRACE: Duration = Duration::from_millis(200);

/// The drain's progress (see [`Server::drain_step`]).
struct Drain {
    began: Instant,
    /// Every publish answered 200 has been delivered to the local subscribers.
    settled: bool,
}

impl Server {
    /// Binds every listener and prepares the store; nothing is served until [`Server::run`].
    /// Sockets `passed` by systemd take the place of `SUB_SOCK`/`PUB_SOCK` (docs/restart.md).
    pub fn bind(cfg: Config, config_path: Option<PathBuf>, passed: Passed) -> io::Result<Server> {
        let poll = Poll::new()?;
        let mode = cfg.sock_mode;
        let group = cfg.sock_group.as_deref();
        let mut inherited = passed.assign(&cfg.sub_sock, &cfg.pub_sock)?;
        let mut listeners = Vec::new();
        for (role, path) in [(Role::Sub, &cfg.sub_sock), (Role::Pub, &cfg.pub_sock)] {
            let listener = match inherited.iter().position(|s| s.role == role) {
                Some(i) => {
                    let s = inherited.swap_remove(i);
                    if s.path != *path {
                        log::warn!(
                            "systemd passed {} for {role:?}, the configuration names {}; \
                             serving the passed socket",
                            s.path.display(),
                            path.display()
                        );
                    }
                    listener::inherited_unix(s.listener, s.path)
                }
                None => listener::bind_unix(path, mode, group)?,
            };
            listeners.push(Bound { listener, role });
        }
        if let Some(addr) = cfg.sub_listen {
            listeners.push(Bound {
                listener: listener::bind_tcp(addr)?,
                role: Role::Sub,
            });
        }
        if let Some(addr) = cfg.pub_listen {
            listeners.push(Bound {
                listener: listener::bind_tcp(addr)?,
                role: Role::Pub,
            });
        }
        for (i, b) in listeners.iter_mut().enumerate() {
            b.listener.register(poll.registry(), Token(i))?;
        }
        let mut signals = Signals::new([SIGTERM, SIGINT, SIGHUP])?;
        poll.registry()
            .register(&mut signals, SIGNAL_TOKEN, Interest::READABLE)?;
        let store = Self::open_store(&cfg, &poll)?;
        let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_else(|_| "localhost".to_owned());
        Ok(Server {
            poll,
            listeners,
            signals,
            conns: Slab::default(),
            registry: Registry::default(),
            store,
            waiting: HashMap::new(),
            next_token: 0,
            done_buf: Vec::new(),
            drain_again: false,
            failed_backlogs: Vec::new(),
            latest_mid: Mid::new(0, 0),
            // Until the store says it is up (the embedded one does at once).
            store_down: Some(STORE_STARTING.to_owned()),
            catchup: Default::default(),
            next_stats_put: Instant::now() + STATS_PUT_EVERY,
            timers: Timers::default(),
            signer: Signer::new(cfg.algo, cfg.security_key.as_bytes()),
            config_path,
            cfg,
            stats: Stats::default(),
            metrics: Metrics::default(),
            process_id: format!("{hostname}-{}", std::process::id()),
            dirty: Vec::new(),
            ready: Vec::new(),
            scratch: vec![0; READ_CHUNK],
            publish_seq: 0,
            expired: Vec::new(),
            next_sweep: Instant::now() + SWEEP_EVERY,
            accept_paused_until: Some(Instant::now() + STORE_START_GRACE),
            accept_waits_for_store: true,
            shutdown_deadline: None,
            drain: None,
            answered_mid: Mid::new(0, 0),
            delivered_mid: Mid::new(0, 0),
            last_pressure_warning: None,
            last_queue_warning: None,
            ping_frame: websocket::server_frame(OP_PING, WS_PING_PAYLOAD),
            spare_queues: Vec::new(),
            v5_ping_frame: websocket::server_frame(websocket::OP_TEXT, b"ping"),
            presence: v5::Presence::default(),
        })
    }

    /// Where the server listens, e.g. for the startup banner.
    pub fn listening(&self) -> Vec<(Role, String, Option<std::net::SocketAddr>)> {
        self.listeners
            .iter()
            .map(|b| (b.role, b.listener.describe(), b.listener.tcp_addr()))
            .collect()
    }

    /// The Redis store when `REDIS_SOCK`/`REDIS_URL` is set (it wakes the loop through
    /// [`STORE_WAKE_TOKEN`] and reports up or down by itself), else the embedded one.
    fn open_store(cfg: &Config, poll: &Poll) -> io::Result<Box<dyn Store>> {
        let redis = RedisOptions::from_config(cfg);
        Self::prepare_state_dir(cfg, redis.is_none())?;
        if let Some(opts) = redis {
            let waker = Arc::new(Waker::new(poll.registry(), STORE_WAKE_TOKEN)?);
            let store = RedisStore::start(opts, waker)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.0))?;
            log::info!("redis store (docs/redis.md), instance {}", store.uid());
            return Ok(Box::new(store));
        }
        let waker = Arc::new(Waker::new(poll.registry(), STORE_WAKE_TOKEN)?);
        let store = Embedded::open(cfg.store.clone(), now_ms() / 1000, Some(waker))
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        log::info!(
            "embedded store (docs/persistence.md) in {}; message id epoch {}",
            cfg.store.state_dir.display(),
            store.epoch()
        );
        Ok(Box::new(store))
    }

    /// Makes STATE_DIR (when this store uses it) and checks that it can be written, then
    /// migrates the state file from its old default place (docs/persistence.md). Errors are
    /// one line naming the path and the OS error.
    fn prepare_state_dir(cfg: &Config, embedded: bool) -> io::Result<()> {
        let s = &cfg.store;
        let dir = &s.state_dir;
        if embedded || s.state_file.starts_with(dir) {
            let fail = |what: &str, e: io::Error| {
                io::Error::new(e.kind(), format!("STATE_DIR {} {what}: {e}", dir.display()))
            };
            std::fs::create_dir_all(dir).map_err(|e| fail("cannot be created", e))?;
            let probe = dir.join(".write-test");
            std::fs::write(&probe, b"").map_err(|e| fail("is not writable", e))?;
            let _ = std::fs::remove_file(&probe);
        }
        if let Some(old) = &s.legacy_state_file {
            match crate::message::migrate_state_file(old, &s.state_file) {
                Ok(Some(epoch)) => log::info!(
                    "state file migrated: epoch {epoch} from {} to {}",
                    old.display(),
                    s.state_file.display()
                ),
                Ok(None) => {}
                Err(e) => log::warn!(
                    "cannot migrate the state file {} to {}: {e}",
                    old.display(),
                    s.state_file.display()
                ),
            }
        }
        Ok(())
    }

    /// Runs until SIGTERM/SIGINT and a drained shutdown.
    pub fn run(&mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        loop {
            // Everything this pass submitted goes to the store's thread now, in one go, with
            // this pass's presence changes as one job (docs/redis.md, "v5 presence").
            self.v5_presence_flush(false);
            self.store.flush();
            let timeout = self.poll_timeout();
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            for event in events.iter() {
                match event.token() {
                    SIGNAL_TOKEN => self.on_signals(),
                    // Answers are drained below, every pass.
                    STORE_WAKE_TOKEN => {}
                    Token(i) if i < self.listeners.len() => self.accept_all(i),
                    token => {
                        let Some(id) = ConnId::from_token(token) else {
                            log::trace!("event for unknown token {token:?}");
                            continue;
                        };
                        if event.is_readable() || event.is_read_closed() || event.is_error() {
                            if let Some(conn) = self.conns.get_mut(id) {
                                conn.drained = false;
                            }
                            self.serve(id);
                        }
                        if event.is_writable() {
                            self.flush_conn(id);
                        }
                    }
                }
            }
            self.drain_store();
            let now = Instant::now();
            self.expire_timers(now);
            if now >= self.next_sweep {
                self.store.sweep(now);
                self.expire_waiters(now);
                self.retry_failed_backlogs();
                self.retry_catchup();
                self.v5_sweep();
                self.next_sweep = now + SWEEP_EVERY;
            }
            if now >= self.next_stats_put {
                self.put_stats();
                self.next_stats_put = now + STATS_PUT_EVERY;
            }
            // Jobs submitted in this pass may already have answers (the embedded store), and
            // acting on an answer can make a connection ready: a pipelined request behind an
            // answered one, a keep-alive poll behind a finished one, an outbox that drained.
            // Nothing else would wake the loop for those (the embedded store has no waker; a
            // TCP peer reading its answer raises no event), so go on until quiet, within a
            // bound; past it the next poll does not sleep.
            let mut rounds = 0;
            self.drain_again = false;
            loop {
                // Answers first, until quiet: the fan-outs of pipelined publishes pile up in
                // the subscribers' outboxes and go out in one writev each below.
                let mut busy = false;
                while rounds < MAX_DRAIN_ROUNDS && self.drain_store() {
                    rounds += 1;
                    busy = true;
                }
                busy |= self.serve_ready();
                self.flush_dirty();
                rounds += 1;
                if rounds >= MAX_DRAIN_ROUNDS {
                    self.drain_again = !self.ready.is_empty() || busy;
                    break;
                }
                if !busy && self.ready.is_empty() {
                    break;
                }
            }
            if self.accept_paused_until.is_some_and(|t| t <= now) {
                self.resume_accepting();
            }
            if let Some(deadline) = self.shutdown_deadline {
                self.drain_step();
                self.flush_dirty();
                let took = self
                    .drain
                    .as_ref()
                    .map_or(0, |d| d.began.elapsed().as_millis());
                if self.all_answered() {
                    log::info!("shutdown complete in {took} ms");
                    return Ok(());
                }
                if now >= deadline {
                    log::warn!(
                        "shutdown timeout after {took} ms: closing {} connections that did not \
                         finish; what they missed stays stored for their resume",
                        self.conns.len()
                    );
                    return Ok(());
                }
            }
        }
    }

    /// During shutdown: every connection got its last bytes out and its write side shut; we
    /// need not wait for the peers' FINs.
    fn all_answered(&self) -> bool {
        self.conns.ids().into_iter().all(|id| {
            self.conns
                .get(id)
                .is_none_or(|c| matches!(c.phase, Phase::Closing) && c.write_shut)
        })
    }

    fn poll_timeout(&self) -> Option<Duration> {
        if self.drain_again {
            return Some(Duration::ZERO);
        }
        let now = Instant::now();
        let next = [
            self.timers.next_deadline(),
            Some(self.next_sweep),
            Some(self.next_stats_put),
            self.accept_paused_until,
            self.shutdown_deadline,
            self.drain.as_ref().map(|d| d.began + IDLE_GRACE),
        ]
        .into_iter()
        .flatten()
        .min()?;
        // Round up to whole milliseconds so we never wake a hair early and spin.
        let d = next.saturating_duration_since(now);
        Some(Duration::from_millis(
            d.as_millis().min(u128::from(u32::MAX)) as u64 + 1,
        ))
    }

    // ---- accepting ----

    fn accept_all(&mut self, index: usize) {
        // While paused, connects wait in the listen queue; the resume takes them all.
        if self.shutdown_deadline.is_some() || self.accept_paused_until.is_some() {
            return;
        }
        loop {
            if self.conns.len() >= self.cfg.limits.max_connections {
                self.pressure("MAX_CONNECTIONS reached; not accepting for now");
                return;
            }
            let Some(bound) = self.listeners.get(index) else {
                return;
            };
            let role = bound.role;
            match bound.listener.accept() {
                Ok(stream) => self.add_conn(stream, role),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if matches!(e.raw_os_error(), Some(23) | Some(24)) => {
                    self.pressure("out of file descriptors; not accepting for now");
                    return;
                }
                Err(e) => {
                    log::warn!("accept on {} failed: {e}", bound.listener.describe());
                    return;
                }
            }
        }
    }

    fn resume_accepting(&mut self) {
        self.accept_paused_until = None;
        self.accept_waits_for_store = false;
        for i in 0..self.listeners.len() {
            self.accept_all(i);
        }
    }

    /// Parks accepting for a moment; warns at most once a minute.
    fn pressure(&mut self, what: &str) {
        let now = Instant::now();
        self.accept_paused_until = Some(now + ACCEPT_RETRY);
        if self
            .last_pressure_warning
            .is_none_or(|t| now.duration_since(t) > Duration::from_secs(60))
        {
            self.last_pressure_warning = Some(now);
            log::warn!("{what} ({} connections open)", self.conns.len());
        }
    }

    fn add_conn(&mut self, stream: listener::Stream, role: Role) {
        let id = self.conns.insert_with(|_| Conn::new(stream, role));
        let registry = self.poll.registry();
        let Some(conn) = self.conns.get_mut(id) else {
            return;
        };
        // Readable only; writability is asked for while a write is blocked (Conn::flush).
        if let Err(e) = registry.register(&mut conn.stream, id.token(), Interest::READABLE) {
            log::warn!("{id}: cannot register: {e}");
            self.conns.remove(id);
            return;
        }
        log::trace!("{id}: accepted on {role:?}");
        self.metrics.connections_accepted += 1;
        let at = Conn::expect_request(&self.cfg.timings, Instant::now());
        self.set_deadline(id, Some(at));
        // Bytes may already be waiting; edge-triggered readiness reports them anyway on
        // registration, so nothing else to do here.
    }

    // ---- closing ----

    /// Unsubscribes whatever the connection listens on and updates the counters.
    fn leave_subscription(&mut self, id: ConnId) {
        let Some(conn) = self.conns.get_mut(id) else {
            return;
        };
        match std::mem::replace(&mut conn.phase, Phase::Closing) {
            Phase::Hold(hold) => {
                self.registry.unsubscribe(id, &hold.sub.receivers);
                self.stats.pollings -= 1;
                self.touch(&hold.sub.receivers);
                self.v5_left(id, hold.sub.user);
            }
            Phase::WebSocket(ws) => {
                self.registry.unsubscribe(id, &ws.sub.receivers);
                self.stats.websockets -= 1;
                self.v5_left(id, ws.sub.user);
            }
            other => conn.phase = other,
        }
    }

    /// Sends a close frame after whatever frame is half-written, then lingers.
    fn close_ws(&mut self, id: ConnId, code: u16, reason: &str) {
        self.leave_subscription(id);
        let Some(conn) = self.conns.get_mut(id) else {
            return;
        };
        let at = conn.close_websocket(code, reason);
        self.set_deadline(id, Some(at));
        self.mark_dirty(id);
    }

    /// Sends a close frame after everything queued for the connection, then lingers.
    fn end_ws(&mut self, id: ConnId, code: u16, reason: &str) {
        self.leave_subscription(id);
        let Some(conn) = self.conns.get_mut(id) else {
            return;
        };
        let at = conn.refuse_websocket(code, reason);
        self.set_deadline(id, Some(at));
        self.mark_dirty(id);
    }

    fn close_now(&mut self, id: ConnId) {
        self.leave_subscription(id);
        if let Some(mut conn) = self.conns.remove(id) {
            let _ = self.poll.registry().deregister(&mut conn.stream);
        }
    }

    // ---- signals ----

    fn on_signals(&mut self) {
        let pending: Vec<i32> = self.signals.pending().collect();
        for sig in pending {
            match sig {
                SIGHUP => self.reload(),
                _ => self.begin_shutdown(),
            }
        }
    }

    /// SIGTERM/SIGINT: stop accepting, refuse new publishes, and drain (docs/restart.md).
    fn begin_shutdown(&mut self) {
        if self.shutdown_deadline.is_some() {
            return;
        }
        notify::notify_or_log("STOPPING=1");
        // What clients sent before the stop is served as usual: a request already in a
        // socket buffer (PHP wrote it before we saw the signal) is not refused. Connects
        // still queued on a socket of our own would be reset with it, so they are taken too;
        // on an inherited socket they wait for the next process instead.
        for i in 0..self.listeners.len() {
            if matches!(&self.listeners[i].listener, Listener::Unix(_, f) if !f.is_ours()) {
                continue;
            }
            self.accept_paused_until = None;
            self.accept_all(i);
        }
        for id in self.conns.ids() {
            if self
                .conns
                .get(id)
                .is_some_and(|c| matches!(c.phase, Phase::Request(_)))
            {
                self.serve(id);
            }
        }
        log::info!("shutting down: {} connections to drain", self.conns.len());
        // Dropping the listeners stops accepting and removes the socket files we made. An
        // inherited socket stays open in the service manager, with its file: connects queue
        // there for the next process.
        self.listeners.clear();
        let now = Instant::now();
        self.shutdown_deadline = Some(now + self.cfg.timings.shutdown_timeout);
        self.drain = Some(Drain {
            began: now,
            settled: false,
        });
    }

    /// One step of the drain, every pass until it is done. First every publish answered 200
    /// must have been delivered here (none in flight, the delivered id caught up with the
    /// answered one). Then each subscriber is released once it has nothing more coming: a
    /// held poll is answered, a WebSocket closed 1001 behind every frame queued for it; an
    /// idle keep-alive connection is closed.
    fn drain_step(&mut self) {
        let Some(drain) = &mut self.drain else {
            return;
        };
        if !drain.settled {
            let in_flight = self
                .waiting
                .values()
                .any(|(_, w)| matches!(w, store_io::Waiter::Publish { .. }));
            // With the store down nothing more will be announced; what was answered is
            // stored and replayed to the subscribers when they resume.
            let caught_up = self.delivered_mid >= self.answered_mid || self.store_down.is_some();
            if in_flight || !caught_up {
                return;
            }
            drain.settled = true;
            log::debug!(
                "shutdown: every answered publish delivered after {} ms",
                drain.began.elapsed().as_millis()
            );
        }
        let idle_over = drain.began.elapsed() >= IDLE_GRACE;
        for id in self.conns.ids() {
            let Some(conn) = self.conns.get(id) else {
                continue;
            };
            match &conn.phase {
                Phase::Hold(_) => self.finish_hold(id, true),
                // A backlog still being read or throttled goes on; the deadline bounds it.
                Phase::WebSocket(ws)
                    if matches!(
                        ws.backlog,
                        Backlog::Done | Backlog::Sent(_) | Backlog::Failed(_)
                    ) && ws.parked.is_empty() =>
                {
                    self.end_ws(id, close::GOING_AWAY, "server shutdown")
                }
                // Idle, or accepted just before the stop with its request still on the way
                // (PHP connects, then writes): after a short grace, so the latter is served.
                Phase::Request(None)
                    if conn.rbuf.is_empty() && conn.outbox.is_empty() && idle_over =>
                {
                    self.close_now(id)
                }
                _ => {}
            }
        }
    }

    /// SIGHUP: re-reads the configuration and applies what can change live.
    fn reload(&mut self) {
        let copies = self.cfg.env_copies.clone();
        let env = |k: &str| {
            if copies.contains(&k) {
                None
            } else {
                std::env::var(k).ok()
            }
        };
        let new = match config::load(self.config_path.as_deref(), &env) {
            Ok(c) => c,
            Err(e) => {
                log::error!("reload failed, keeping the running configuration: {e}");
                return;
            }
        };
        for w in &new.warnings {
            log::warn!("{w}");
        }
        notify::notify_or_log("RELOADING=1");
        let old = &self.cfg;
        if new.sub_sock != old.sub_sock
            || new.pub_sock != old.pub_sock
            || new.sub_listen != old.sub_listen
            || new.pub_listen != old.pub_listen
            || new.redis_sock != old.redis_sock
            || new.redis_url != old.redis_url
        {
            log::warn!("reload: listener or store settings changed; they apply after a restart");
        }
        crate::logger::set_level(new.log_level);
        if !new.zero_config {
            self.signer = Signer::new(new.algo, new.security_key.as_bytes());
            self.cfg.security_key = new.security_key;
            self.cfg.algo = new.algo;
        }
        self.cfg.log_level = new.log_level;
        self.cfg.limits = new.limits;
        self.cfg.timings = new.timings;
        self.cfg.paths = new.paths;
        self.store.set_config(new.store.clone());
        self.cfg.store = new.store;
        log::info!("configuration reloaded (log level {})", self.cfg.log_level);
        notify::notify_or_log("READY=1");
    }
}
