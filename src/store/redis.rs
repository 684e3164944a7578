//! The Redis store: every instance sharing one Redis behaves as one server (docs/redis.md).
//!
//! Two threads per instance, none of them the loop's:
//! * the **worker** (`worker.rs`) owns the command connection. It takes [`Job`]s from a bounded
//!   queue, runs everything queued as one pipeline (a publish batch is one `EVALSHA` of
//!   `publish.lua`, a backlog one `EVALSHA` of `backlog.lua`), and reconnects with capped,
//!   jittered back-off when Redis goes away;
//! * the **subscriber** (`pubsub.rs`) holds the one `PSUBSCRIBE <prefix>pushserver:*` of this
//!   instance and turns every notification, this instance's own included, into
//!   [`Done::Deliver`]: local delivery then follows the one order Redis ran the publishes in.
//!
//! Answers go into a channel, then the `mio::Waker` the server gave to [`RedisStore::start`]
//! wakes the loop, which collects them with [`Store::drain`]. The link is up when both
//! connections are; every change is reported once, as [`Done::Up`] or [`Done::Down`], and
//! logged once. While it is down, jobs are answered with an error at once: nothing queues up
//! offline, so memory stays bounded.

mod codec;
mod endpoint;
mod pubsub;
mod worker;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver as ChanReceiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use endpoint::{Endpoint, Sentinels};
use log::{debug, info, warn};
use mio::Waker;
use redis::{ConnectionAddr, IntoConnectionInfo};

use super::{Done, Job, Store, StoreError, StoreStats};
use crate::config::{Config, StoreConfig};
use crate::message::Mid;
use codec::Keys;

/// Jobs waiting for the worker; beyond this `submit` hands the job back (docs/loop.md#the-back-pressure-rule).
pub const QUEUE_CAPACITY: usize = 10_000;
/// Connecting, and every read or write on a connection: a publish answer never waits past
/// PHP's 1 s timeout because of a stalled Redis.
const IO_TIMEOUT: Duration = Duration::from_millis(500);
/// How far ahead of this host's clock another process's epoch may be and still count (clock
/// skew between hosts, and epochs bumped by `+1` after data losses).
const MAX_EPOCH_AHEAD: u64 = 86_400;

/// Where Redis is (`REDIS_SOCK`, or `REDIS_URL`) and how the keys are prefixed.
#[derive(Debug, Clone)]
pub struct RedisOptions {
    pub target: Target,
    /// `REDIS_PREFIX`: prepended to every key and to the pub/sub channel.
    pub prefix: String,
    pub store: StoreConfig,
    /// `REDIS_WAIT_REPLICAS`: after the publishes of a round, `WAIT` for this many replicas.
    pub wait_replicas: u32,
}

#[derive(Clone)]
pub enum Target {
    /// A Unix socket path.
    Socket(PathBuf),
    /// `redis://[:password@]host:port[/db]` or `unix:///path`.
    Url(String),
    /// The master Redis Sentinel names (`REDIS_SENTINELS`, `REDIS_MASTER_NAME`).
    Sentinel {
        sentinels: Vec<String>,
        master_name: String,
        password: Option<String>,
    },
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Socket(p) => write!(f, "Socket({})", p.display()),
            // The URL may carry a password.
            Target::Url(_) => f.write_str("Url(..)"),
            Target::Sentinel {
                sentinels,
                master_name,
                ..
            } => write!(f, "Sentinel({master_name} via {})", sentinels.join(",")),
        }
    }
}

impl RedisOptions {
    /// The options of `cfg`, or `None` when neither `REDIS_SOCK` nor `REDIS_URL` is set.
    pub fn from_config(cfg: &Config) -> Option<RedisOptions> {
        let target = match (&cfg.redis_sock, &cfg.redis_url) {
            (Some(p), _) => Target::Socket(p.clone()),
            (None, Some(u)) => Target::Url(u.clone()),
            (None, None) if !cfg.redis_sentinels.is_empty() => Target::Sentinel {
                sentinels: cfg.redis_sentinels.clone(),
                master_name: cfg.redis_master_name.clone(),
                password: cfg.redis_sentinel_password.clone(),
            },
            (None, None) => return None,
        };
        Some(RedisOptions {
            target,
            prefix: cfg.redis_prefix.clone(),
            store: cfg.store.clone(),
            wait_replicas: cfg.redis_wait_replicas,
        })
    }

    fn endpoint(&self) -> Result<Endpoint, StoreError> {
        let info = match &self.target {
            Target::Socket(p) => ConnectionAddr::Unix(p.clone()).into_connection_info(),
            Target::Url(u) => u.as_str().into_connection_info(),
            Target::Sentinel {
                sentinels,
                master_name,
                password,
            } => {
                return Ok(Endpoint::Sentinel(Sentinels {
                    addrs: sentinels.clone(),
                    master_name: master_name.clone(),
                    password: password.clone(),
                }));
            }
        };
        info.map(Endpoint::Fixed)
            .map_err(|e| StoreError(format!("invalid Redis address: {e}")))
    }

    fn describe(&self) -> String {
        match &self.target {
            Target::Socket(p) => p.display().to_string(),
            Target::Url(u) => crate::config::mask_url(u),
            Target::Sentinel {
                sentinels,
                master_name,
                ..
            } => format!("master {master_name} via Sentinel {}", sentinels.join(",")),
        }
    }
}

/// One side of the link: the command connection or the subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Side {
    Unknown,
    Up,
    Down(String),
}

struct Link {
    cmd: Side,
    sub: Side,
    /// What the loop was last told (`None` before the first report).
    reported: Option<bool>,
    /// For the next [`Done::Up`]: below every id minted from now on.
    latest: Mid,
}

/// What the store handle and its two threads share.
struct Shared {
    cfg: Mutex<StoreConfig>,
    keys: Keys,
    wait_replicas: u32,
    /// Rounds whose `WAIT` got fewer replicas than asked for.
    wait_timeouts: AtomicU64,
    /// This instance's name on the pub/sub channel (`<prefix>pushserver:<uid>`).
    uid: String,
    target: String,
    done: mpsc::Sender<Done>,
    waker: Arc<Waker>,
    link: Mutex<Link>,
    /// The command connection is usable; jobs submitted while it is not fail at once.
    cmd_up: AtomicBool,
    down_reason: Mutex<String>,
    stop: AtomicBool,
    /// Set when the subscription breaks: the worker checks its connection before the link
    /// can be reported up again.
    verify: AtomicBool,
    rejected: AtomicU64,
    /// Jobs sent to the worker and not taken yet: with the jobs held for the next flush,
    /// what `submit` compares with [`QUEUE_CAPACITY`] to hand a job back at once.
    queued: std::sync::atomic::AtomicUsize,
    /// Publishes the script refused because they reached Redis after their deadline.
    late: AtomicU64,
    /// The newest id this instance has seen minted (its own or another instance's); the
    /// publish script starts a new epoch when Redis holds less.
    last_seen: Mutex<Mid>,
    /// The newest epoch written to the local state file (`STATE_FILE`): a process restarted
    /// on an emptied Redis starts above it, even within the same second.
    saved_epoch: Mutex<u64>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    fn send(&self, done: Done) {
        // The loop may be gone (shutdown); nothing to do then.
        if self.done.send(done).is_ok() {
            let _ = self.waker.wake();
        }
    }

    fn send_all(&self, done: Vec<Done>) {
        if done.is_empty() {
            return;
        }
        for d in done {
            let _ = self.done.send(d);
        }
        let _ = self.waker.wake();
    }

    fn cfg(&self) -> StoreConfig {
        lock(&self.cfg).clone()
    }

    fn last_seen(&self) -> Mid {
        *lock(&self.last_seen)
    }

    /// Records a newly minted epoch in the state file (once per epoch, on the worker).
    fn save_epoch(&self, epoch: u64) {
        let mut saved = lock(&self.saved_epoch);
        if epoch <= *saved {
            return;
        }
        *saved = epoch;
        let path = lock(&self.cfg).state_file.clone();
        if let Err(e) = crate::message::write_epoch_atomically(&path, epoch) {
            warn!(
                "cannot write the message id state file {}: {e}",
                path.display()
            );
        }
    }

    fn see(&self, mid: Mid) {
        let mut l = lock(&self.last_seen);
        if mid > *l {
            *l = mid;
        }
    }

    /// [`Shared::see`] for an id from another process. One far ahead of the clock cannot
    /// have been minted by these rules (a new epoch is at most a few seconds ahead of `TIME`),
    /// and taking it would make every later id start from it, up to running out of 10-digit
    /// epochs: it is delivered, but not counted.
    fn see_remote(&self, mid: Mid) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        if mid.epoch() > now + MAX_EPOCH_AHEAD {
            warn!("redis: ignoring id {mid} from another process for minting: far in the future");
            return;
        }
        self.see(mid);
    }

    fn unavailable(&self) -> StoreError {
        StoreError(format!("Redis unavailable: {}", lock(&self.down_reason)))
    }

    /// The command connection came up (`Ok(latest)`) or went down.
    fn set_cmd(&self, state: Result<Mid, String>) {
        let side = match state {
            Ok(latest) => {
                lock(&self.link).latest = latest;
                self.cmd_up.store(true, Ordering::Release);
                Side::Up
            }
            Err(reason) => {
                *lock(&self.down_reason) = reason.clone();
                self.cmd_up.store(false, Ordering::Release);
                Side::Down(reason)
            }
        };
        self.update(|l| l.cmd = side);
    }

    fn set_sub(&self, state: Result<(), String>) {
        let side = match state {
            Ok(()) => Side::Up,
            Err(reason) => Side::Down(reason),
        };
        self.update(|l| {
            if matches!(side, Side::Down(_)) && l.cmd == Side::Up {
                // Most likely Redis went away for both; until the worker has checked, the
                // command side does not count as up.
                l.cmd = Side::Unknown;
                self.verify.store(true, Ordering::Release);
            }
            l.sub = side;
        });
    }

    /// Applies a change and reports the combined state when it differs from the last report.
    fn update(&self, change: impl FnOnce(&mut Link)) {
        let mut l = lock(&self.link);
        change(&mut l);
        let now = match (&l.cmd, &l.sub) {
            (Side::Down(r), _) | (_, Side::Down(r)) => Err(r.clone()),
            (Side::Up, Side::Up) => Ok(()),
            _ => return,
        };
        if l.reported == Some(now.is_ok()) {
            return;
        }
        l.reported = Some(now.is_ok());
        match now {
            Ok(()) => {
                let latest = l.latest.max(self.last_seen());
                info!(
                    "redis: connected to {} (instance {}, newest id {latest})",
                    self.target, self.uid
                );
                self.send(Done::Up { latest });
            }
            Err(reason) => {
                // The server logs the state change (once) at warn.
                debug!("redis: link down ({reason}); retrying");
                self.send(Done::Down { reason });
            }
        }
    }
}

/// The answer to a job that cannot run (`None` for the unanswered kinds).
fn failed(job: Job, err: &StoreError) -> Option<Done> {
    Some(match job {
        Job::Publish { token, .. } => Done::Published {
            token,
            result: Err(err.clone()),
        },
        Job::Backlog { token, .. } => Done::Backlog {
            token,
            result: Err(err.clone()),
        },
        Job::Online { token, .. } => Done::Online {
            token,
            result: Err(err.clone()),
        },
        Job::Stats { token } => Done::Stats {
            token,
            result: Err(err.clone()),
        },
        Job::CatchUp { token, .. } => Done::CatchUp {
            token,
            result: Err(err.clone()),
        },
        Job::Presence { token, .. } => Done::Presence {
            token,
            result: Err(err.clone()),
        },
        Job::LastSeen { token, .. } => Done::LastSeen {
            token,
            result: Err(err.clone()),
        },
        Job::Touch { .. } | Job::PutStats { .. } | Job::SeenAt { .. } => return None,
    })
}

/// The store handle the loop owns. Dropping it stops both threads (within about a second).
pub struct RedisStore {
    shared: Arc<Shared>,
    /// The jobs of one flush travel together, so the worker's round has them all.
    jobs: SyncSender<Vec<Job>>,
    done: ChanReceiver<Done>,
    /// Answers given in `submit` itself (while Redis is down).
    local: Vec<Done>,
    /// Jobs of this pass, sent to the worker by [`Store::flush`].
    held: Vec<Job>,
}

/// Jobs held for one flush at most; past it they are sent at once. Small, so that Redis runs
/// the first jobs of a busy pass while the loop is still answering and parsing the rest
/// (the worker's round takes every batch already queued): 32 against 512 raised one
/// instance's rate by about 10 % (`push-bench fanout --conns 1 --messages 40000
/// --pub-conns 64`, alternating runs).
const HELD_MAX: usize = 32;

impl RedisStore {
    /// Starts the worker and the subscriber. `waker` is woken whenever answers are ready to
    /// [`drain`](Store::drain); the server creates it on its `Poll` with a token of its own.
    /// Does not wait for Redis: the first [`Done::Up`] or [`Done::Down`] reports how it went.
    /// Fails only for an address that cannot be used at all.
    pub fn start(opts: RedisOptions, waker: Arc<Waker>) -> Result<RedisStore, StoreError> {
        let info = opts.endpoint()?;
        let saved_epoch = match crate::message::read_last_epoch(&opts.store.state_file) {
            // An epoch of more than 10 digits is not one we wrote; ignore it like garbage.
            Ok(e) => e.filter(|&e| Mid::try_new(e, 0).is_some()).unwrap_or(0),
            Err(e) => {
                warn!(
                    "cannot read the message id state file {}: {e}; ids rely on Redis alone",
                    opts.store.state_file.display()
                );
                0
            }
        };
        let (job_tx, job_rx) = mpsc::sync_channel(QUEUE_CAPACITY);
        let (done_tx, done_rx) = mpsc::channel();
        let shared = Arc::new(Shared {
            cfg: Mutex::new(opts.store.clone()),
            keys: Keys::new(&opts.prefix),
            wait_replicas: opts.wait_replicas,
            wait_timeouts: AtomicU64::new(0),
            uid: new_uid(),
            target: opts.describe(),
            done: done_tx,
            waker,
            link: Mutex::new(Link {
                cmd: Side::Unknown,
                sub: Side::Unknown,
                reported: None,
                latest: Mid::new(0, 0),
            }),
            cmd_up: AtomicBool::new(false),
            down_reason: Mutex::new("not connected yet".into()),
            stop: AtomicBool::new(false),
            verify: AtomicBool::new(false),
            rejected: AtomicU64::new(0),
            queued: std::sync::atomic::AtomicUsize::new(0),
            late: AtomicU64::new(0),
            last_seen: Mutex::new(Mid::new(saved_epoch, 0)),
            saved_epoch: Mutex::new(saved_epoch),
        });
        let spawn = |name: &str, f: Box<dyn FnOnce() + Send>| {
            thread::Builder::new()
                .name(name.into())
                .spawn(f)
                .map_err(|e| StoreError(format!("cannot start the {name} thread: {e}")))
        };
        let (s, i) = (Arc::clone(&shared), info.clone());
        spawn("redis-worker", Box::new(move || worker::run(s, i, job_rx)))?;
        let s = Arc::clone(&shared);
        spawn("redis-pubsub", Box::new(move || pubsub::run(s, info)))?;
        Ok(RedisStore {
            shared,
            jobs: job_tx,
            done: done_rx,
            local: Vec::new(),
            held: Vec::new(),
        })
    }

    /// This instance's name on the pub/sub channel.
    pub fn uid(&self) -> &str {
        &self.shared.uid
    }
}

impl Drop for RedisStore {
    fn drop(&mut self) {
        // The worker also stops when the job channel closes with `self.jobs`.
        self.shared.stop.store(true, Ordering::Release);
    }
}

impl Store for RedisStore {
    fn submit(&mut self, job: Job) -> Result<(), Job> {
        if !self.shared.cmd_up.load(Ordering::Acquire) {
            let err = self.shared.unavailable();
            if let Some(done) = failed(job, &err) {
                self.local.push(done);
                // The loop may be about to sleep; the answer is ready now.
                let _ = self.shared.waker.wake();
            }
            return Ok(());
        }
        if self.shared.queued.load(Ordering::Acquire) + self.held.len() >= QUEUE_CAPACITY {
            self.shared.rejected.fetch_add(1, Ordering::Relaxed);
            return Err(job);
        }
        self.held.push(job);
        if self.held.len() >= HELD_MAX {
            self.flush();
        }
        Ok(())
    }

    fn flush(&mut self) {
        if self.held.is_empty() {
            return;
        }
        let jobs = std::mem::take(&mut self.held);
        let n = jobs.len();
        // Counted before the send, so the worker's decrement never runs first.
        self.shared.queued.fetch_add(n, Ordering::AcqRel);
        let (jobs, why) = match self.jobs.try_send(jobs) {
            Ok(()) => return,
            Err(TrySendError::Full(jobs)) => {
                self.shared.rejected.fetch_add(n as u64, Ordering::Relaxed);
                warn!("Redis store queue full: {n} jobs refused (answered 503 or dropped)");
                (jobs, "Redis store queue full")
            }
            Err(TrySendError::Disconnected(jobs)) => (jobs, "Redis worker stopped"),
        };
        self.shared.queued.fetch_sub(n, Ordering::AcqRel);
        // Answered as failures before reaching Redis: nothing of them ran. Only these answers
        // wake the loop here; `submit` woke it for its own already.
        let err = StoreError(why.into());
        self.local
            .extend(jobs.into_iter().filter_map(|j| failed(j, &err)));
        let _ = self.shared.waker.wake();
    }

    fn drain(&mut self, out: &mut Vec<Done>) {
        out.append(&mut self.local);
        out.extend(self.done.try_iter());
    }

    fn sweep(&mut self, _now: std::time::Instant) {}

    fn stats(&self) -> StoreStats {
        StoreStats {
            rejected_jobs: self.shared.rejected.load(Ordering::Relaxed),
            late_publishes: self.shared.late.load(Ordering::Relaxed),
            wait_timeouts: self.shared.wait_timeouts.load(Ordering::Relaxed),
            ..StoreStats::default()
        }
    }

    fn kind(&self) -> &'static str {
        "redis"
    }

    fn set_config(&mut self, cfg: StoreConfig) {
        *lock(&self.shared.cfg) = cfg;
    }

    fn shared(&self) -> bool {
        true
    }
}

/// Capped exponential back-off with jitter: 200 ms, ×1.7 per failure, at most 5 s, each
/// delay scaled by a random factor in [0.8, 1.2). Never gives up.
struct Backoff {
    next_ms: f64,
    rng: u64,
}

impl Backoff {
    const FIRST_MS: f64 = 200.0;
    const CAP_MS: f64 = 5000.0;

    fn new() -> Backoff {
        Backoff {
            next_ms: Self::FIRST_MS,
            rng: seed(),
        }
    }

    fn reset(&mut self) {
        self.next_ms = Self::FIRST_MS;
    }

    fn next_delay(&mut self) -> Duration {
        // xorshift64
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let jitter = 0.8 + (self.rng % 1000) as f64 / 2500.0;
        let d = Duration::from_micros((self.next_ms * jitter * 1000.0) as u64);
        self.next_ms = (self.next_ms * 1.7).min(Self::CAP_MS);
        d
    }
}

fn seed() -> u64 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    static CALLS: AtomicU64 = AtomicU64::new(0);
    let n = CALLS.fetch_add(1, Ordering::Relaxed);
    // The pid and a call count keep two instances (or two stores) started together apart.
    (nanos ^ (u64::from(std::process::id()) << 32) ^ n.wrapping_mul(0x9e37_79b9_7f4a_7c15)) | 1
}

/// A random base-36 name of 8 characters, like the 2.0 processes' uid.
fn new_uid() -> String {
    let mut b = Backoff::new();
    let _ = b.next_delay();
    let mut v = b.rng;
    (0..8)
        .map(|_| {
            let c = (v % 36) as u32;
            v /= 36;
            char::from_digit(c, 36).unwrap_or('0')
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_the_cap_with_jitter() {
        let mut b = Backoff::new();
        let first = b.next_delay();
        assert!(first >= Duration::from_millis(160) && first < Duration::from_millis(240));
        let mut last = first;
        for _ in 0..20 {
            last = b.next_delay();
        }
        assert!(last >= Duration::from_millis(4000) && last < Duration::from_millis(6000));
        b.reset();
        assert!(b.next_delay() < Duration::from_millis(240));
    }

    #[test]
    fn uids_differ() {
        let (a, b) = (new_uid(), new_uid());
        assert_eq!(a.len(), 8);
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(a, b);
    }
}
