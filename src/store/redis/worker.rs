//! The worker thread: the command connection, one pipeline per round of queued jobs.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver as ChanReceiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use log::warn;
use redis::{Connection, Value};
use serde_json::Value as Json;

use super::codec::{decode_stored, encode_receivers, encode_rest, receiver_specs};
use super::endpoint::Endpoint;
use super::{Backoff, IO_TIMEOUT, Shared, failed};
use crate::channel::ChannelId;
use crate::message::{Mid, now_ms};
use crate::registry::Kind;
use crate::store::{
    BacklogChunk, CatchUpChunk, Done, Draft, Job, Minted, PresenceSync, Receiver, StoreError,
};

const PUBLISH_LUA: &str = include_str!("publish.lua");
const BACKLOG_LUA: &str = include_str!("backlog.lua");
const CATCHUP_LUA: &str = include_str!("catchup.lua");
const PRESENCE_LUA: &str = include_str!("presence.lua");
/// The per-instance presence keys live this long past the last renewal (docs/redis.md,
/// "v5 presence"); an instance is aged out by the others well before.
const PRESENCE_KEY_TTL: u32 = 600;

/// A round takes no more flushes once it has this many jobs (a flush brings a few dozen), so
/// one round stays well inside the timeouts.
const MAX_ROUND: usize = 500;
/// Consecutive publish jobs of a round share one script call (its fixed cost, the `TIME`, the
/// id keys and the `PUBLISH`, is paid once: docs/redis.md, "Publishing") up to this many
/// messages or bytes of body, so one call keeps Redis busy for a few milliseconds at most. A
/// job's messages are never split between calls.
const GROUP_MAX_DRAFTS: usize = 256;
const GROUP_MAX_BYTES: usize = 1 << 20;
/// A PING after this long without jobs notices a dead connection before a publish does.
const IDLE_PING: Duration = Duration::from_millis(500);
/// The channel index lives this long from its first message and is never refreshed
/// (docs/redis.md#keys); longer when the message TTL is configured longer.
const CHANNEL_TTL: u32 = 86_400;
/// `stats` entries older than this are another instance's leftovers (docs/redis.md#stats).
const STATS_STALE_MS: u64 = 70_000;
/// A publish script that starts this long after its round was written refuses to publish
/// (docs/redis.md, "Publish deadline"). The worker gives a round up (and answers its publishes
/// 503) no sooner than [`IO_TIMEOUT`] after writing it, so a publish answered 503 can never
/// run later; the margin covers the script's own run and the reply's way back.
pub(super) const PUBLISH_DEADLINE: Duration = Duration::from_millis(300);
const _: () = assert!(PUBLISH_DEADLINE.as_millis() + 150 <= IO_TIMEOUT.as_millis());
/// `WAIT`'s timeout for `REDIS_WAIT_REPLICAS` (docs/redis.md, "Replication"): the publish
/// answer waits at most this much longer, well inside PHP's 1 s.
const WAIT_TIMEOUT_MS: u64 = 250;
/// At most one warning per this interval about `WAIT`s that timed out (all are counted).
const WAIT_WARN_EVERY: Duration = Duration::from_secs(60);
/// Redis `TIME` is read again when the last reading is older than this, so that a step of
/// Redis's clock shifts the deadlines for at most this long.
const CLOCK_RESYNC: Duration = Duration::from_secs(1);
/// A `TIME` reading that came back within this long is taken as it is.
const CLOCK_GOOD_RTT: Duration = Duration::from_millis(5);

/// How a pipeline failed.
enum Exchange {
    /// The connection was found closed when writing: Redis got nothing (or a torn command it
    /// drops with the connection).
    NotSent(String),
    /// Sent, but the replies did not all come: the commands may have run.
    Lost(String),
}

impl Exchange {
    fn reason(self) -> String {
        match self {
            Exchange::NotSent(r) | Exchange::Lost(r) => r,
        }
    }
}

/// Redis `TIME` against this worker's monotonic clock, for the publish deadline.
#[derive(Clone, Copy)]
struct Clock {
    /// Redis µs minus local µs (since [`Worker::base`]), from a `TIME` reply. Taken as if
    /// Redis had answered at the moment its reply was read, the latest it can have: the
    /// offset is then at most the true one, and deadlines come early, never late.
    offset_us: i128,
    synced: Instant,
}

/// Script hashes, known after `SCRIPT LOAD`.
struct Scripts {
    publish: String,
    backlog: String,
    catchup: String,
    presence: String,
}

impl Scripts {
    /// `SCRIPT LOAD`s the scripts in one round trip; Redis answers with their SHA1s.
    fn load(conn: &mut Connection) -> redis::RedisResult<Scripts> {
        let (publish, backlog, catchup, presence): (String, String, String, String) = redis::pipe()
            .cmd("SCRIPT")
            .arg("LOAD")
            .arg(PUBLISH_LUA)
            .cmd("SCRIPT")
            .arg("LOAD")
            .arg(BACKLOG_LUA)
            .cmd("SCRIPT")
            .arg("LOAD")
            .arg(CATCHUP_LUA)
            .cmd("SCRIPT")
            .arg("LOAD")
            .arg(PRESENCE_LUA)
            .query(conn)?;
        Ok(Scripts {
            publish,
            backlog,
            catchup,
            presence,
        })
    }
}

/// A command in flight and whom its reply answers.
enum Pending {
    /// One publish script call for consecutive publish jobs of a round: `parts` is each job's
    /// token and how many of `drafts` (in order) are its own.
    Publish {
        parts: Parts,
        drafts: Vec<Draft>,
    },
    Backlog {
        token: u64,
    },
    CatchUp {
        token: u64,
    },
    Online {
        token: u64,
    },
    Stats {
        token: u64,
    },
    Presence {
        token: u64,
    },
    LastSeen {
        token: u64,
    },
    /// The `WAIT` after the publishes of a round.
    Wait,
    /// Replies nobody waits for (touches, stats writes).
    Ignore,
}

struct Worker {
    shared: Arc<Shared>,
    info: Endpoint,
    conn: Option<(Connection, Scripts)>,
    backoff: Backoff,
    retry_at: Instant,
    /// The `stats` field this instance writes (the `processUniqueId` of its JSON).
    stats_field: Option<String>,
    /// Local µs count from here (monotonic).
    base: Instant,
    /// Redis's clock, per connection (a reconnect may reach another server).
    clock: Option<Clock>,
    last_wait_warning: Option<Instant>,
    /// When a late publish was last logged (at most one line per [`WAIT_WARN_EVERY`]).
    last_late_warning: Option<Instant>,
    /// A reply said READONLY: the server was demoted to a replica (a Sentinel failover), so
    /// the connection is given up after the round and the master looked up again.
    demoted: bool,
}

pub(super) fn run(shared: Arc<Shared>, info: Endpoint, jobs: ChanReceiver<Vec<Job>>) {
    let mut w = Worker {
        shared,
        info,
        conn: None,
        backoff: Backoff::new(),
        retry_at: Instant::now(),
        stats_field: None,
        base: Instant::now(),
        clock: None,
        last_wait_warning: None,
        last_late_warning: None,
        demoted: false,
    };
    loop {
        if w.conn.is_none() {
            let wait = w.retry_at.saturating_duration_since(Instant::now());
            match jobs.recv_timeout(wait) {
                Ok(first) => {
                    // Down: answer at once, nothing waits for Redis to come back.
                    let err = w.shared.unavailable();
                    let all: Vec<Job> = std::iter::once(first)
                        .chain(jobs.try_iter())
                        .flatten()
                        .collect();
                    w.shared.queued.fetch_sub(all.len(), Ordering::AcqRel);
                    w.shared
                        .send_all(all.into_iter().filter_map(|j| failed(j, &err)).collect());
                }
                Err(RecvTimeoutError::Timeout) => w.connect(),
                Err(RecvTimeoutError::Disconnected) => return,
            }
            continue;
        }
        match jobs.recv_timeout(IDLE_PING) {
            Ok(mut round) => {
                while round.len() < MAX_ROUND {
                    match jobs.try_recv() {
                        Ok(more) => round.extend(more),
                        Err(_) => break,
                    }
                }
                w.shared.queued.fetch_sub(round.len(), Ordering::AcqRel);
                if w.shared.verify.swap(false, Ordering::AcqRel) {
                    w.refresh();
                }
                if w.conn.is_none() {
                    let err = w.shared.unavailable();
                    w.shared
                        .send_all(round.into_iter().filter_map(|j| failed(j, &err)).collect());
                    continue;
                }
                w.round(round);
            }
            Err(RecvTimeoutError::Timeout) if w.shared.stop.load(Ordering::Acquire) => return,
            Err(RecvTimeoutError::Timeout) => {
                if w.shared.verify.swap(false, Ordering::AcqRel) {
                    w.refresh();
                } else {
                    w.ping();
                }
            }
            Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}

impl Worker {
    fn connect(&mut self) {
        match self.try_connect() {
            Ok((conn, scripts, latest)) => {
                self.conn = Some((conn, scripts));
                self.backoff.reset();
                self.shared.set_cmd(Ok(latest));
            }
            Err(reason) => {
                self.retry_at = Instant::now() + self.backoff.next_delay();
                self.shared.set_cmd(Err(reason));
            }
        }
    }

    fn try_connect(&mut self) -> Result<(Connection, Scripts, Mid), String> {
        self.connect_inner().map_err(|e| e.to_string())
    }

    fn connect_inner(&mut self) -> redis::RedisResult<(Connection, Scripts, Mid)> {
        self.clock = None;
        let mut conn = self.info.connect()?;
        let scripts = Scripts::load(&mut conn)?;
        let latest = self.read_latest(&mut conn)?;
        Ok((conn, scripts, latest))
    }

    /// What [`Done::Up`] reports, from the id keys as they are now (and Redis's clock).
    fn read_latest(&mut self, conn: &mut Connection) -> redis::RedisResult<Mid> {
        let keys = &self.shared.keys;
        // Read as raw values: a foreign value (or a key of another type) must not keep the
        // store from coming up; the publish script starts a new epoch over it.
        let (start, counter, time): (Value, Value, (u64, u64)) = redis::pipe()
            .ignore_errors()
            .cmd("GET")
            .arg(keys.startdate())
            .cmd("GET")
            .arg(keys.counter())
            .cmd("TIME")
            .query(conn)?;
        self.clock = Some(Clock {
            offset_us: self.clock_sample(time),
            synced: Instant::now(),
        });
        let latest = latest_id(
            id_key(&start, EPOCH_LIMIT),
            id_key(&counter, COUNTER_LIMIT),
            time.0,
            self.shared.last_seen(),
        );
        if latest.counter() > 0 {
            self.shared.see(latest);
        }
        Ok(latest)
    }

    /// The subscription broke, so this connection is suspect too: check it before the link
    /// may be reported up again (otherwise a dead connection would report up until its next
    /// use).
    fn refresh(&mut self) {
        let Some((mut conn, scripts)) = self.conn.take() else {
            return;
        };
        match self.read_latest(&mut conn) {
            Ok(latest) => {
                self.conn = Some((conn, scripts));
                self.shared.set_cmd(Ok(latest));
            }
            Err(e) => self.lose(e.to_string()),
        }
    }

    fn lose(&mut self, reason: String) {
        self.conn = None;
        self.retry_at = Instant::now() + self.backoff.next_delay();
        self.shared.set_cmd(Err(reason));
    }

    /// The offset of a `TIME` reply (seconds, µs) read just now: as if Redis had answered at
    /// this moment, the latest it can have, so at most the true offset.
    fn clock_sample(&self, (secs, micros): (u64, u64)) -> i128 {
        let redis_us = i128::from(secs) * 1_000_000 + i128::from(micros);
        redis_us - Instant::now().duration_since(self.base).as_micros() as i128
    }

    /// The idle check, which also reads Redis's clock.
    fn ping(&mut self) {
        if let Err(e) = self.sync_clock() {
            self.lose(e);
        }
    }

    /// Reads Redis's clock. A reply that was slow to come back (a busy machine) underestimates
    /// the offset by its delay, making every deadline of the next second that much earlier
    /// and refusing publishes for nothing; so a slow reading is taken again, up to three
    /// times, and the largest offset kept. Each reading is at most the true offset, and
    /// they are milliseconds apart, so the deadline never comes late.
    fn sync_clock(&mut self) -> Result<(), String> {
        let mut best: Option<i128> = None;
        for _ in 0..3 {
            let Some((conn, _)) = self.conn.as_mut() else {
                return Err("not connected".into());
            };
            let sent = Instant::now();
            let time = redis::cmd("TIME")
                .query::<(u64, u64)>(conn)
                .map_err(|e| e.to_string())?;
            let offset = self.clock_sample(time);
            best = Some(best.map_or(offset, |b| b.max(offset)));
            if sent.elapsed() < CLOCK_GOOD_RTT {
                break;
            }
        }
        self.clock = best.map(|offset_us| Clock {
            offset_us,
            synced: Instant::now(),
        });
        Ok(())
    }

    /// The publish deadline for a round written from now on, in Redis µs (reads `TIME`
    /// again first when the last reading is stale).
    fn deadline(&mut self) -> Result<i128, String> {
        if self
            .clock
            .is_none_or(|c| c.synced.elapsed() >= CLOCK_RESYNC)
        {
            self.sync_clock()?;
        }
        let clock = self.clock.ok_or("no Redis clock")?;
        let local = Instant::now().duration_since(self.base) + PUBLISH_DEADLINE;
        Ok(clock.offset_us + local.as_micros() as i128)
    }

    /// Rebuilds the publish commands of a round for a new deadline (a resend: after a
    /// reconnect, which may have reached another server, or a script reload).
    fn restamp(&mut self, pending: &[Pending], cmds: &mut [redis::Cmd]) -> Result<(), String> {
        let deadline = self.deadline()?;
        let cfg = self.shared.cfg();
        let last = self.shared.last_seen();
        let Some((_, scripts)) = self.conn.as_ref() else {
            return Err("not connected".into());
        };
        for (p, c) in pending.iter().zip(cmds.iter_mut()) {
            if let Pending::Publish { drafts, .. } = p {
                *c = publish_cmd(
                    &scripts.publish,
                    self.shared.keys.prefix(),
                    &self.shared.uid,
                    (last, deadline),
                    &cfg,
                    drafts,
                );
            }
        }
        Ok(())
    }

    /// Runs one round of jobs as one pipeline (plus a retry for scripts Redis forgot).
    fn round(&mut self, jobs: Vec<Job>) {
        let cfg = self.shared.cfg();
        // Taken before the commands are built: earlier than the write, so never late.
        let deadline = match self.deadline() {
            Ok(d) => d,
            Err(reason) => {
                self.lose(reason);
                let err = self.shared.unavailable();
                let done = jobs.into_iter().filter_map(|j| failed(j, &err)).collect();
                return self.shared.send_all(done);
            }
        };
        let Some((_, scripts)) = self.conn.as_ref() else {
            return;
        };
        let keys = &self.shared.keys;
        let mut cmds: Vec<redis::Cmd> = Vec::with_capacity(jobs.len());
        let mut pending = Vec::with_capacity(jobs.len());
        let mut done = Vec::new();
        let mut touched: Vec<Receiver> = Vec::new();
        let last = self.shared.last_seen();
        let uid = &self.shared.uid;
        let mut group = Group::default();
        let close = |group: &mut Group, cmds: &mut Vec<redis::Cmd>, pending: &mut Vec<Pending>| {
            if let Some((parts, drafts)) = group.take() {
                let stamp = (last, deadline);
                cmds.push(publish_cmd(
                    &scripts.publish,
                    keys.prefix(),
                    uid,
                    stamp,
                    &cfg,
                    &drafts,
                ));
                pending.push(Pending::Publish { parts, drafts });
            }
        };
        for job in jobs {
            // Only consecutive publishes share a call: every other job keeps its place
            // relative to them (a backlog read after a publish sees it, one before does not).
            let size = match &job {
                Job::Publish { drafts, .. } => Some((drafts.len(), body_bytes(drafts))),
                _ => None,
            };
            if !size.is_some_and(|(n, b)| group.fits(n, b)) {
                close(&mut group, &mut cmds, &mut pending);
            }
            match job {
                Job::Publish { token, drafts } if drafts.is_empty() => done.push(Done::Published {
                    token,
                    result: Ok(Vec::new()),
                }),
                Job::Publish { token, drafts } => {
                    group.add(token, drafts, size.map_or(0, |(_, b)| b))
                }
                Job::Backlog {
                    token,
                    receivers,
                    after,
                    limit,
                    max_bytes,
                } => {
                    if receivers.is_empty() {
                        done.push(Done::Backlog {
                            token,
                            result: Ok(BacklogChunk::default()),
                        });
                        continue;
                    }
                    cmds.push(backlog_cmd(
                        &scripts.backlog,
                        keys.prefix(),
                        after,
                        (limit, max_bytes),
                        &receivers,
                    ));
                    pending.push(Pending::Backlog { token });
                }
                Job::CatchUp {
                    token,
                    receivers,
                    after,
                    limit,
                    max_bytes,
                } => {
                    if receivers.is_empty() {
                        done.push(Done::CatchUp {
                            token,
                            result: Ok(CatchUpChunk::default()),
                        });
                        continue;
                    }
                    cmds.push(backlog_cmd(
                        &scripts.catchup,
                        keys.prefix(),
                        after,
                        (limit, max_bytes),
                        &receivers,
                    ));
                    pending.push(Pending::CatchUp { token });
                }
                Job::Touch { channels } => touched.extend(channels),

                Job::Online { token, channels } => {
                    if channels.is_empty() {
                        done.push(Done::Online {
                            token,
                            result: Ok(Vec::new()),
                        });
                        continue;
                    }
                    let mut c = redis::cmd("MGET");
                    for ch in &channels {
                        c.arg(keys.online(ch));
                    }
                    cmds.push(c);
                    pending.push(Pending::Online { token });
                }
                Job::PutStats { json } => {
                    let field = stats_field(&json).unwrap_or_else(|| self.shared.uid.clone());
                    let mut c = redis::cmd("HSET");
                    c.arg(keys.stats()).arg(&field).arg(json);
                    cmds.push(c);
                    self.stats_field = Some(field);
                    pending.push(Pending::Ignore);
                }
                Job::Stats { token } => {
                    let mut c = redis::cmd("HGETALL");
                    c.arg(keys.stats());
                    cmds.push(c);
                    pending.push(Pending::Stats { token });
                }
                Job::Presence {
                    token,
                    full,
                    grace,
                    added,
                    removed,
                    watch,
                } => {
                    let mut c = redis::cmd("EVALSHA");
                    c.arg(&scripts.presence)
                        .arg(0)
                        .arg(keys.prefix())
                        .arg("sync");
                    c.arg(&self.shared.uid).arg(grace).arg(PRESENCE_KEY_TTL);
                    c.arg(if full { "1" } else { "0" });
                    c.arg(added.len());
                    for u in &added {
                        c.arg(u);
                    }
                    c.arg(removed.len());
                    for (u, at) in &removed {
                        c.arg(u).arg(at);
                    }
                    c.arg(watch.len());
                    for (u, by) in &watch {
                        let by: Vec<String> = by.iter().map(u64::to_string).collect();
                        c.arg(u).arg(by.join(","));
                    }
                    cmds.push(c);
                    pending.push(Pending::Presence { token });
                }
                Job::LastSeen { token, users } => {
                    if users.is_empty() {
                        done.push(Done::LastSeen {
                            token,
                            result: Ok(Vec::new()),
                        });
                        continue;
                    }
                    let mut c = redis::cmd("EVALSHA");
                    c.arg(&scripts.presence)
                        .arg(0)
                        .arg(keys.prefix())
                        .arg("get");
                    for u in &users {
                        c.arg(u);
                    }
                    cmds.push(c);
                    pending.push(Pending::LastSeen { token });
                }
                Job::SeenAt { entries } => {
                    if entries.is_empty() {
                        continue;
                    }
                    let mut c = redis::cmd("EVALSHA");
                    c.arg(&scripts.presence)
                        .arg(0)
                        .arg(keys.prefix())
                        .arg("seen");
                    for (u, at) in &entries {
                        c.arg(u).arg(at);
                    }
                    cmds.push(c);
                    pending.push(Pending::Ignore);
                }
            }
        }
        close(&mut group, &mut cmds, &mut pending);
        // Touches go first (an online query of the same round sees them), one SET per
        // channel however often it was touched.
        let mut seen = HashSet::new();
        touched.retain(|(id, kind)| seen.insert((*id, *kind == Kind::Private)));
        let sets: Vec<redis::Cmd> = touched
            .iter()
            .map(|ch| {
                let mut c = redis::cmd("SET");
                c.arg(keys.online(ch))
                    .arg("1")
                    .arg("EX")
                    .arg(cfg.online_ttl.max(1));
                c
            })
            .collect();
        pending.splice(0..0, sets.iter().map(|_| Pending::Ignore));
        cmds.splice(0..0, sets);
        self.add_wait(&mut pending, &mut cmds);
        if pending.is_empty() {
            self.shared.send_all(done);
            return;
        }
        let replies = match self.exchange(&cmds) {
            Ok(r) => r,
            Err((_, Exchange::NotSent(_))) => {
                // Nothing reached Redis (a connection that died while idle): one immediate
                // reconnect, then the same commands again, with a deadline on the new clock.
                self.conn = None;
                self.connect();
                if let Err(reason) = self.restamp(&pending, &mut cmds) {
                    return self.fail_round(pending, Vec::new(), done, reason);
                }
                match self.exchange(&cmds) {
                    Ok(r) => r,
                    Err((got, e)) => return self.fail_round(pending, got, done, e.reason()),
                }
            }
            Err((got, e)) => return self.fail_round(pending, got, done, e.reason()),
        };
        let mut retry = (Vec::new(), Vec::new());
        for ((p, c), reply) in pending.into_iter().zip(cmds).zip(replies) {
            if is_noscript(&reply) {
                retry.0.push(p);
                retry.1.push(c);
            } else {
                self.answer(p, Ok(reply), &mut done);
            }
        }
        if !retry.0.is_empty() {
            // Redis lost its script cache (SCRIPT FLUSH, a failover): load the scripts (same
            // hashes) and send the same commands again. Every EVALSHA of the round failed
            // alike, so the ids keep the order of the jobs.
            let (mut pending, mut cmds) = retry;
            self.add_wait(&mut pending, &mut cmds);
            let sent = self
                .load_scripts()
                .and_then(|()| self.restamp(&pending, &mut cmds))
                .map_err(|e| (Vec::new(), Exchange::Lost(e)))
                .and_then(|()| self.exchange(&cmds));
            match sent {
                Ok(replies) => {
                    for (p, reply) in pending.into_iter().zip(replies) {
                        self.answer(p, Ok(reply), &mut done);
                    }
                }
                Err((got, e)) => return self.fail_round(pending, got, done, e.reason()),
            }
        }
        self.shared.send_all(done);
        if std::mem::take(&mut self.demoted) {
            self.lose("the server is a replica now (READONLY); looking for the master".into());
        }
    }

    /// With `REDIS_WAIT_REPLICAS`, a `WAIT` after the publishes of a round: their answers
    /// (sent when the whole round has its replies) then come once the replicas have them, or
    /// after the timeout.
    fn add_wait(&self, pending: &mut Vec<Pending>, cmds: &mut Vec<redis::Cmd>) {
        let n = self.shared.wait_replicas;
        if n == 0 || !pending.iter().any(|p| matches!(p, Pending::Publish { .. })) {
            return;
        }
        let mut c = redis::cmd("WAIT");
        c.arg(n).arg(WAIT_TIMEOUT_MS);
        cmds.push(c);
        pending.push(Pending::Wait);
    }

    /// A `WAIT` reply: fewer replicas than asked for is a timeout (the publishes stand).
    fn waited(&mut self, reply: Result<Value, StoreError>) {
        let want = self.shared.wait_replicas;
        let got = match &reply {
            Ok(Value::Int(k)) => Some(*k),
            _ => None,
        };
        if got.is_some_and(|k| k >= i64::from(want)) {
            return;
        }
        self.shared.wait_timeouts.fetch_add(1, Ordering::Relaxed);
        let what = match (got, reply) {
            (Some(k), _) => format!("{k} of {want} replica(s) acknowledged"),
            (None, Ok(v)) => format!("unexpected reply {v:?}"),
            (None, Err(e)) => e.0,
        };
        if once_a_minute(&mut self.last_wait_warning) {
            warn!(
                "redis: WAIT for REDIS_WAIT_REPLICAS={want} timed out after {WAIT_TIMEOUT_MS} ms \
                 ({what}); the publishes were answered 200 and may be lost on a failover \
                 (counted in push_redis_wait_timeouts_total; more within a minute are not logged)"
            );
        }
    }

    fn load_scripts(&mut self) -> Result<(), String> {
        let Some((conn, scripts)) = self.conn.as_mut() else {
            return Err("not connected".into());
        };
        *scripts = Scripts::load(conn).map_err(|e| e.to_string())?;
        Ok(())
    }

    /// Sends `cmds` as one pipeline and reads their replies, stopping at the first I/O error
    /// (one timeout is enough to give the connection up; waiting for every remaining reply
    /// would multiply it). On error, the replies read before it come along: those commands
    /// ran, and their jobs are answered from them (a publish that got its reply is
    /// published, whatever happens to the rest of the round).
    fn exchange(&mut self, cmds: &[redis::Cmd]) -> Result<Vec<Value>, (Vec<Value>, Exchange)> {
        let Some((conn, _)) = self.conn.as_mut() else {
            return Err((Vec::new(), Exchange::NotSent(self.shared.unavailable().0)));
        };
        let mut packed = Vec::new();
        for c in cmds {
            packed.extend_from_slice(&c.get_packed_command());
        }
        conn.send_packed_command(&packed).map_err(|e| {
            // Only a connection found dead took nothing (an idle connection Redis closed). A
            // write that timed out may have delivered whole commands before the stall, which
            // Redis still runs: sending them again would publish them twice.
            let e = if e.is_connection_dropped() && !e.is_timeout() {
                Exchange::NotSent(e.to_string())
            } else {
                Exchange::Lost(e.to_string())
            };
            (Vec::new(), e)
        })?;
        let mut replies = Vec::with_capacity(cmds.len());
        for _ in cmds {
            match conn.recv_response() {
                Ok(r) => replies.push(r),
                Err(e) => return Err((replies, Exchange::Lost(e.to_string()))),
            }
        }
        Ok(replies)
    }

    /// The connection broke mid-round: the jobs whose replies came (`got`, in order) are
    /// answered from them, every other job of the round fails, then reconnect. A failed
    /// publish did not run and will not: its script refuses past its deadline, which came
    /// before this (see [`PUBLISH_DEADLINE`]).
    fn fail_round(
        &mut self,
        pending: Vec<Pending>,
        got: Vec<Value>,
        mut done: Vec<Done>,
        reason: String,
    ) {
        self.lose(reason);
        let err = self.shared.unavailable();
        let mut got = got.into_iter();
        for p in pending {
            let reply = match got.next() {
                // A NOSCRIPT reply is a command that did not run.
                Some(r) if !is_noscript(&r) => Ok(r),
                _ => Err(err.clone()),
            };
            self.answer(p, reply, &mut done);
        }
        self.shared.send_all(done);
    }

    /// The answer to one job from its reply.
    fn answer(&mut self, p: Pending, reply: Result<Value, StoreError>, done: &mut Vec<Done>) {
        let reply = match reply {
            Ok(Value::ServerError(e)) => {
                if e.code() == "READONLY" {
                    self.demoted = true;
                }
                Err(StoreError(format!("Redis error: {e}")))
            }
            other => other,
        };
        done.push(match p {
            Pending::Ignore => return,
            Pending::Wait => return self.waited(reply),
            Pending::Publish { parts, drafts } => {
                let mut minted = reply
                    .and_then(|r| self.published(r, drafts))
                    .map(Vec::into_iter);
                return done.extend(parts.into_iter().map(|(token, n)| Done::Published {
                    token,
                    result: match &mut minted {
                        Ok(all) => Ok(all.by_ref().take(n).collect()),
                        Err(e) => Err(e.clone()),
                    },
                }));
            }
            Pending::Backlog { token } => Done::Backlog {
                token,
                result: reply.and_then(backlog_from),
            },
            Pending::CatchUp { token } => Done::CatchUp {
                token,
                result: reply.and_then(catchup_from),
            },
            Pending::Online { token } => Done::Online {
                token,
                result: reply.and_then(|r| match r {
                    Value::Array(v) => Ok(v.iter().map(|x| *x != Value::Nil).collect()),
                    other => Err(unexpected(&other)),
                }),
            },
            Pending::Stats { token } => Done::Stats {
                token,
                result: reply.and_then(|r| self.stats_from(r)),
            },
            Pending::Presence { token } => Done::Presence {
                token,
                result: reply.and_then(presence_from),
            },
            Pending::LastSeen { token } => Done::LastSeen {
                token,
                result: reply.and_then(|r| match r {
                    Value::Array(v) => Ok(v
                        .iter()
                        .map(|x| match x {
                            Value::Int(n) if *n >= 0 => Some(*n as u64),
                            _ => None,
                        })
                        .collect()),
                    other => Err(unexpected(&other)),
                }),
            },
        })
    }

    /// The ids the script minted for `drafts` (local delivery comes from the notification).
    fn published(&mut self, reply: Value, drafts: Vec<Draft>) -> Result<Vec<Minted>, StoreError> {
        let (epoch, first) = match &reply {
            Value::Array(v) => match v.as_slice() {
                [Value::Int(e), Value::Int(c)] if *e > 0 && *c > 0 => (*e as u64, *c as u64),
                [Value::Int(0), Value::Int(late)] => {
                    self.shared.late.fetch_add(1, Ordering::Relaxed);
                    if once_a_minute(&mut self.last_late_warning) {
                        warn!(
                            "redis: a publish reached Redis {} ms after its deadline and was \
                             refused, answered 503 (Redis or this machine stalled; counted in \
                             push_redis_late_publishes_total; more within a minute are not logged)",
                            late / 1000
                        );
                    }
                    return Err(StoreError(format!(
                        "Redis reached the publish {} ms after its deadline (frozen or \
                         overloaded); nothing was published",
                        late / 1000
                    )));
                }
                _ => return Err(unexpected(&reply)),
            },
            _ => return Err(unexpected(&reply)),
        };
        // Checked, not asserted: an id that does not fit 26 digits is an error, not a panic
        // of this thread (the script keeps within the limits; this guards against a foreign
        // script under the same hash, or a future bug).
        let last = first.checked_add(drafts.len() as u64 - 1);
        if last.and_then(|c| Mid::try_new(epoch, c)).is_none() {
            return Err(unexpected(&reply));
        }
        let msgs: Vec<Minted> = drafts
            .into_iter()
            .enumerate()
            .map(|(i, d)| Minted {
                mid: Mid::new(epoch, first + i as u64),
                kind: d.kind,
                created_ms: d.created_ms,
            })
            .collect();
        if let Some(m) = msgs.last() {
            let before = self.shared.last_seen().epoch();
            if before > 0 && epoch > before {
                // Node 0.4.0 processes cache their epoch: an admin who shares the Redis with
                // them needs to know (docs/redis.md, "Sharing Redis with Node 0.4.0 processes").
                warn!(
                    "redis: started a new message id epoch {epoch} (the id keys were missing or \
                     older than the ids seen, epoch {before}); Node 0.4.0 processes on this \
                     Redis mint ids below it until they are restarted"
                );
            }
            self.shared.see(m.mid);
            self.shared.save_epoch(epoch);
        }
        Ok(msgs)
    }

    /// The other instances' fresh entries; stale ones (and entries without a date) are
    /// deleted, as the 2.0 processes do.
    fn stats_from(&mut self, reply: Value) -> Result<Vec<String>, StoreError> {
        let Value::Array(items) = reply else {
            return Err(unexpected(&reply));
        };
        let now = now_ms();
        let mut fresh = Vec::new();
        let mut stale = Vec::new();
        let mut it = items.into_iter();
        while let (Some(f), Some(v)) = (it.next(), it.next()) {
            let (Value::BulkString(f), Value::BulkString(v)) = (f, v) else {
                continue;
            };
            if self.stats_field.as_deref().map(str::as_bytes) == Some(f.as_slice()) {
                continue;
            }
            let date = serde_json::from_slice::<Json>(&v)
                .ok()
                .and_then(|j| j.get("date").and_then(Json::as_f64));
            match date {
                Some(d) if now.saturating_sub(d as u64) <= STATS_STALE_MS => {
                    fresh.push(String::from_utf8_lossy(&v).into_owned());
                }
                _ => stale.push(f),
            }
        }
        if !stale.is_empty()
            && let Some((conn, _)) = self.conn.as_mut()
        {
            let mut c = redis::cmd("HDEL");
            c.arg(self.shared.keys.stats()).arg(stale);
            // Housekeeping only; a failure shows up on the next job.
            let _ = c.query::<Value>(conn);
        }
        Ok(fresh)
    }
}

/// The `processUniqueId` of a stats entry, used as its field in the `stats` hash.
/// Whether a warning last logged at `last` may be logged again now (then `last` is now): at
/// most one line per [`WAIT_WARN_EVERY`]; the events stay counted in /metrics.
fn once_a_minute(last: &mut Option<Instant>) -> bool {
    let now = Instant::now();
    let due = last.is_none_or(|t| now.duration_since(t) >= WAIT_WARN_EVERY);
    if due {
        *last = Some(now);
    }
    due
}

/// Each job's token and how many of a call's drafts, in order, are its own.
type Parts = Vec<(u64, usize)>;

/// The publish jobs that will share the next script call (see [`GROUP_MAX_DRAFTS`]).
#[derive(Default)]
struct Group {
    parts: Parts,
    drafts: Vec<Draft>,
    bytes: usize,
}

impl Group {
    /// Whether a job of `n` drafts and `bytes` of body may join; an empty group takes any
    /// job whole.
    fn fits(&self, n: usize, bytes: usize) -> bool {
        self.parts.is_empty()
            || (self.drafts.len() + n <= GROUP_MAX_DRAFTS && self.bytes + bytes <= GROUP_MAX_BYTES)
    }

    fn add(&mut self, token: u64, drafts: Vec<Draft>, bytes: usize) {
        self.bytes += bytes;
        self.parts.push((token, drafts.len()));
        self.drafts.extend(drafts);
    }

    /// The jobs' tokens with their draft counts, and their drafts in order.
    fn take(&mut self) -> Option<(Parts, Vec<Draft>)> {
        if self.parts.is_empty() {
            return None;
        }
        self.bytes = 0;
        Some((
            std::mem::take(&mut self.parts),
            std::mem::take(&mut self.drafts),
        ))
    }
}

fn body_bytes(drafts: &[Draft]) -> usize {
    drafts
        .iter()
        .map(|d| d.body.len() + d.user_params.as_ref().map_or(0, |u| u.len()))
        .sum()
}

fn stats_field(json: &str) -> Option<String> {
    serde_json::from_str::<Json>(json)
        .ok()?
        .get("processUniqueId")?
        .as_str()
        .map(str::to_string)
}

/// The backlog script's reply: `more` (0 or 1), then the stored values.
fn backlog_from(reply: Value) -> Result<BacklogChunk, StoreError> {
    let Value::Array(values) = &reply else {
        return Err(unexpected(&reply));
    };
    let Some((Value::Int(more), values)) = values.split_first() else {
        return Err(unexpected(&reply));
    };
    Ok(BacklogChunk {
        msgs: values
            .iter()
            .filter_map(|v| match v {
                Value::BulkString(b) => decode_stored(b),
                _ => None,
            })
            .collect(),
        more: *more != 0,
    })
}

/// The catch-up script's reply: `more`, then pairs of a stored value and its receivers'
/// 16-byte ids.
fn catchup_from(reply: Value) -> Result<CatchUpChunk, StoreError> {
    let Value::Array(values) = &reply else {
        return Err(unexpected(&reply));
    };
    let Some((Value::Int(more), values)) = values.split_first() else {
        return Err(unexpected(&reply));
    };
    let mut msgs = Vec::with_capacity(values.len() / 2);
    for pair in values.chunks(2) {
        let [Value::BulkString(v), Value::BulkString(ids)] = pair else {
            return Err(unexpected(&reply));
        };
        let Some(m) = decode_stored(v) else {
            continue;
        };
        let receivers = ids
            .chunks_exact(16)
            .filter_map(|c| <[u8; 16]>::try_from(c).ok())
            .map(|id| (ChannelId(id), Kind::Private))
            .collect();
        msgs.push((m, receivers));
    }
    Ok(CatchUpChunk {
        msgs,
        more: *more != 0,
    })
}

/// The reply of the presence script's `sync`: `{resync, user, 1|0, watchers, ...}`.
fn presence_from(reply: Value) -> Result<PresenceSync, StoreError> {
    let Value::Array(v) = reply else {
        return Err(unexpected(&reply));
    };
    let int = |x: &Value| -> Option<u64> {
        match x {
            Value::Int(n) => u64::try_from(*n).ok(),
            Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
            _ => None,
        }
    };
    let mut out = PresenceSync {
        resync: v.first().and_then(int) == Some(1),
        changes: Vec::new(),
    };
    for c in v.get(1..).unwrap_or_default().chunks(3) {
        let [u, on, by] = c else { break };
        let Some(u) = int(u) else { continue };
        let by = match by {
            Value::BulkString(b) => String::from_utf8_lossy(b)
                .split(',')
                .filter_map(|w| w.parse().ok())
                .collect(),
            _ => Vec::new(),
        };
        out.changes.push((u, int(on) == Some(1), by));
    }
    Ok(out)
}

fn unexpected(v: &Value) -> StoreError {
    StoreError(format!("unexpected Redis reply: {v:?}"))
}

fn is_noscript(v: &Value) -> bool {
    matches!(v, Value::ServerError(e) if e.code() == "NOSCRIPT")
}

/// Epochs have 10 digits; the publish script keeps counters below 2^53 (Lua numbers are
/// doubles).
const EPOCH_LIMIT: u64 = 10_000_000_000;
const COUNTER_LIMIT: u64 = 1 << 53;

/// The value of `server:startdate` or `server:messagecounter` as the publish script reads it:
/// `None` for anything it would not count with (missing, another type, not plain decimal
/// digits, or `limit` or more).
fn id_key(v: &Value, limit: u64) -> Option<u64> {
    let Value::BulkString(b) = v else {
        return None;
    };
    let plain = b == b"0"
        || (b.first().is_some_and(|c| (b'1'..=b'9').contains(c))
            && b.iter().all(u8::is_ascii_digit));
    if !plain || b.len() > 16 {
        return None;
    }
    std::str::from_utf8(b)
        .ok()?
        .parse()
        .ok()
        .filter(|&n| n < limit)
}

/// The id a poll without `mid` reports before any publish: what Redis holds, or, when the
/// publish script would start a new epoch, the start of that epoch (never above a future id).
pub(super) fn latest_id(start: Option<u64>, counter: Option<u64>, now: u64, last: Mid) -> Mid {
    match (start, counter) {
        (Some(e), Some(c)) if e > last.epoch() || (e == last.epoch() && c >= last.counter()) => {
            Mid::new(e, c)
        }
        _ => {
            let e = now.max(start.map_or(0, |e| e + 1)).max(last.epoch() + 1);
            // No epoch left (the script refuses to publish then).
            Mid::try_new(e, 0).unwrap_or(last)
        }
    }
}

/// The message TTL in Redis: `min(expiry, message_ttl)`, or the grace window for expiry 0.
fn ttl(d: &Draft, cfg: &crate::config::StoreConfig) -> u32 {
    if d.expiry == 0 {
        cfg.expiry0_grace
    } else {
        d.expiry.min(cfg.message_ttl)
    }
}

/// `deadline`: Redis µs after which the script refuses (see [`PUBLISH_DEADLINE`]).
fn publish_cmd(
    sha: &str,
    prefix: &[u8],
    uid: &str,
    (last, deadline): (Mid, i128),
    cfg: &crate::config::StoreConfig,
    drafts: &[Draft],
) -> redis::Cmd {
    let mut c = redis::cmd("EVALSHA");
    c.arg(sha)
        .arg(0)
        .arg(prefix)
        .arg(uid)
        .arg(last.epoch())
        .arg(last.counter())
        .arg(drafts.len())
        .arg(CHANNEL_TTL.max(cfg.message_ttl))
        .arg(cfg.channel_history)
        .arg(deadline.to_string());
    for d in drafts {
        c.arg(ttl(d, cfg))
            .arg(encode_rest(d))
            .arg(encode_receivers(&d.receivers))
            .arg(receiver_specs(&d.receivers));
    }
    c
}

fn backlog_cmd(
    sha: &str,
    prefix: &[u8],
    after: Mid,
    (limit, max_bytes): (usize, usize),
    receivers: &[Receiver],
) -> redis::Cmd {
    let mut c = redis::cmd("EVALSHA");
    c.arg(sha)
        .arg(0)
        .arg(prefix)
        .arg(after.to_binary().as_slice())
        .arg(limit)
        .arg(max_bytes)
        .arg(receiver_specs(receivers));
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latest_never_above_a_future_id() {
        let last = Mid::new(100, 5);
        assert_eq!(latest_id(Some(100), Some(7), 500, last), Mid::new(100, 7));
        assert_eq!(latest_id(Some(101), Some(0), 500, last), Mid::new(101, 0));
        // Regressions: what the publish script would do next.
        assert_eq!(latest_id(Some(100), Some(3), 50, last), Mid::new(101, 0));
        assert_eq!(latest_id(Some(99), Some(9), 50, last), Mid::new(101, 0));
        assert_eq!(latest_id(None, None, 500, last), Mid::new(500, 0));
        assert_eq!(latest_id(Some(600), None, 500, last), Mid::new(601, 0));
        assert_eq!(latest_id(None, None, 500, Mid::new(0, 0)), Mid::new(500, 0));
    }

    #[test]
    fn id_keys_are_read_as_the_script_reads_them() {
        let b = |s: &[u8]| Value::BulkString(s.to_vec());
        let id_key = |v: &Value| id_key(v, COUNTER_LIMIT);
        assert_eq!(id_key(&b(b"0")), Some(0));
        assert_eq!(id_key(&b(b"1795479773")), Some(1_795_479_773));
        assert_eq!(id_key(&b(b"9007199254740991")), Some((1 << 53) - 1));
        assert_eq!(id_key(&b(b"9007199254740992")), None);
        for bad in [
            &b""[..],
            b"007",
            b"-7",
            b"+7",
            b"1.5",
            b"0x10",
            b"1e3",
            b" 1",
            b"12345678901234567",
        ] {
            assert_eq!(id_key(&b(bad)), None, "{:?}", String::from_utf8_lossy(bad));
        }
        assert_eq!(id_key(&Value::Nil), None);
        assert_eq!(id_key(&Value::Int(5)), None);
        assert_eq!(super::id_key(&b(b"99999999999"), EPOCH_LIMIT), None);
        // No epoch left: no panic, and nothing above what was seen.
        let top = Mid::new(9_999_999_999, 1);
        assert_eq!(latest_id(None, None, 500, top), top);
    }

    #[test]
    fn stats_field_from_json() {
        assert_eq!(
            stats_field(r#"{"pid":1,"processUniqueId":"h-42"}"#).as_deref(),
            Some("h-42")
        );
        assert_eq!(stats_field("[]"), None);
    }
}
