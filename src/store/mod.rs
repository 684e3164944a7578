//! Durable state behind one small asynchronous interface: minting message ids, message
//! history for resume by `mid`, online presence, the stats of every instance, and (with Redis)
//! the messages other instances publish.
//!
//! The loop never waits on a store. It hands a [`Job`] to [`Store::submit`] and later collects
//! the matching [`Done`] from [`Store::drain`]: the embedded [`memory::Embedded`] answers
//! within the same pass; the Redis store runs the jobs on a worker thread and wakes the
//! loop through a `mio::Waker` when answers are ready. Both go through the same code in the
//! server, so the memory store also exercises every "answer arrives later" path.

pub mod journal;
pub mod memory;
pub mod redis;

use std::fmt;
use std::sync::Arc;
use std::time::Instant;

use tungstenite::Bytes;

use crate::channel::ChannelId;
use crate::config::StoreConfig;
use crate::message::{Message, Mid, Sender};
use crate::registry::Kind;

/// Chosen by the server to match a [`Done`] with what waits for it (a connection id and a
/// purpose); the store only echoes it.
pub type Token = u64;

/// A receiver of a message: a channel id and whether it is a private/shared channel or a
/// public id (the Redis layout keeps them under different keys).
pub type Receiver = (ChannelId, Kind);

/// Why a store operation failed. The text is safe to show to a publisher.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreError(pub String);

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A message before it has an id.
#[derive(Debug, Clone)]
pub struct Draft {
    pub body: Bytes,
    pub expiry: u32,
    pub sender: Sender,
    /// `<module>_<command>`, for statistics only.
    pub kind: Option<String>,
    pub receivers: Vec<Receiver>,
    pub created_ms: u64,
    /// v5 `user_params` (docs/v5.md); kept with the message by both stores.
    pub user_params: Option<Bytes>,
}

#[derive(Debug)]
pub enum Job {
    /// Mint ids (strictly increasing, in draft order), keep each message for
    /// `min(expiry, message_ttl)` s or the grace window for expiry 0 (docs/protocol.md#publishing-text-v3), and
    /// announce them to every instance, this one included ([`Done::Deliver`]). Answered by
    /// [`Done::Published`] with a [`Minted`] per draft, in draft order; on error nothing of the
    /// batch is kept or announced.
    Publish { token: Token, drafts: Vec<Draft> },
    /// Unexpired messages newer than `after` addressed to any of `receivers`, ascending by
    /// id, each once: at most `limit` of them, and no more than fit in `max_bytes` (the first
    /// one always comes, however large). Answered by [`Done::Backlog`] with a
    /// [`BacklogChunk`] whose `more` tells whether another read would find more.
    Backlog {
        token: Token,
        receivers: Vec<Receiver>,
        after: Mid,
        limit: usize,
        /// Bound on the chunk's size: the embedded store counts each message's body, Redis
        /// the stored value (`STRLEN`: the body plus a few dozen bytes).
        max_bytes: usize,
    },
    /// Marks channels online for the online TTL (a connection registered, a long poll ended,
    /// a WebSocket answered a ping). Not answered.
    Touch { channels: Vec<Receiver> },
    /// Whether each channel was touched within the online TTL, in request order. Answered by
    /// [`Done::Online`]. The server asks only about channels it has no local connection for.
    Online {
        token: Token,
        channels: Vec<Receiver>,
    },
    /// Catch-up after a pub/sub gap ([`Done::Resubscribed`]): the unexpired messages newer than
    /// `after` addressed to any of `receivers`, ascending by id, each once and with the
    /// `receivers` it was found for, bounded like a backlog read. Answered by
    /// [`Done::CatchUp`].
    CatchUp {
        token: Token,
        receivers: Vec<Receiver>,
        after: Mid,
        limit: usize,
        max_bytes: usize,
    },
    /// Replaces this instance's entry in the shared stats (one JSON object). Not answered.
    PutStats { json: String },
    /// The stats entries of every other live instance (the server adds its own, fresh).
    /// Answered by [`Done::Stats`].
    Stats { token: Token },
    /// v5 presence of this instance into the shared store (docs/redis.md, "v5 presence"):
    /// the users it now counts online (`added`), those it stopped counting with when they
    /// were last seen (`removed`), and its watchers that changed (watched user → watching
    /// users, empty to drop). With `full`, this is the whole state and replaces what the
    /// store held for this instance. Also renews this instance for `grace` s and ages out
    /// the instances past theirs. Answered by [`Done::Presence`]. Shared stores only.
    Presence {
        token: Token,
        full: bool,
        grace: u32,
        added: Vec<u64>,
        removed: Vec<(u64, u64)>,
        watch: Vec<(u64, Vec<u64>)>,
    },
    /// Seconds since each user was last seen (0 = online on some instance), `None` when
    /// unknown, in request order. Answered by [`Done::LastSeen`]. Shared stores only.
    LastSeen { token: Token, users: Vec<u64> },
    /// `updateUsersLastSeen`: (user, unix time) kept where no newer time is stored. Not
    /// answered. Shared stores only.
    SeenAt { entries: Vec<(u64, u64)> },
}

/// What one [`Job::Presence`] found across every instance.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PresenceSync {
    /// The store had lost this instance's state: send it whole next time.
    pub resync: bool,
    /// Users whose online state changed, with the watching users of every instance; this
    /// instance alone announces them.
    pub changes: Vec<(u64, bool, Vec<u64>)>,
}

/// What the publisher's answer and the stats need of one published message: the message
/// itself goes to local subscribers through [`Done::Deliver`] only, and is not kept alive by
/// the answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Minted {
    pub mid: Mid,
    /// `<module>_<command>`, for statistics only.
    pub kind: Option<String>,
    pub created_ms: u64,
}

/// One chunk of a backlog read.
#[derive(Debug, Default, Clone)]
pub struct BacklogChunk {
    /// Ascending by id, each once.
    pub msgs: Vec<Arc<Message>>,
    /// The read stopped at `limit` or `max_bytes` while newer messages remain: read again
    /// after the last id of `msgs`.
    pub more: bool,
}

/// One chunk of a catch-up read: like [`BacklogChunk`], with each message's receivers among
/// those asked for.
#[derive(Debug, Default, Clone)]
pub struct CatchUpChunk {
    pub msgs: Vec<(Arc<Message>, Vec<Receiver>)>,
    pub more: bool,
}

#[derive(Debug)]
pub enum Done {
    Published {
        token: Token,
        result: Result<Vec<Minted>, StoreError>,
    },
    Backlog {
        token: Token,
        result: Result<BacklogChunk, StoreError>,
    },
    Online {
        token: Token,
        result: Result<Vec<bool>, StoreError>,
    },
    Stats {
        token: Token,
        result: Result<Vec<String>, StoreError>,
    },
    CatchUp {
        token: Token,
        result: Result<CatchUpChunk, StoreError>,
    },
    Presence {
        token: Token,
        result: Result<PresenceSync, StoreError>,
    },
    LastSeen {
        token: Token,
        result: Result<Vec<Option<u64>>, StoreError>,
    },
    /// The live stream of [`Done::Deliver`] was cut and is back: every `Deliver` before this
    /// came from the previous subscription, every one after it from the new one, and what was
    /// announced in between was not heard. The server catches its subscribers up from the
    /// store ([`Job::CatchUp`], docs/redis.md "Catch-up after a pub/sub gap").
    Resubscribed,
    /// Messages to deliver to this instance's local subscribers, ascending by id, each with
    /// its receivers: every message published through the store, by this instance or another.
    /// Local delivery comes only from here, so it follows the one order in which the store
    /// minted the ids; [`Done::Published`] only answers the publisher.
    Deliver(Vec<(Arc<Message>, Vec<Receiver>)>),
    /// The store became usable (at start, or after an outage). `latest` is the newest id
    /// minted so far by any instance (or an id below every future one), used as the
    /// `Last-Message-Id` of a 304 for a poll without `mid`.
    Up { latest: Mid },
    /// The store became unusable; publishes are refused until [`Done::Up`].
    Down { reason: String },
}

/// Counters for stats and logs, from this instance's point of view.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct StoreStats {
    pub messages: usize,
    pub channels: usize,
    pub bytes: usize,
    /// Messages dropped before their expiry by the per-channel or total caps.
    pub evicted: u64,
    /// Jobs refused because the queue to the store was full.
    pub rejected_jobs: u64,
    /// Publishes refused because they reached Redis after their deadline (docs/redis.md,
    /// "Publish deadline"); answered 503, nothing published.
    pub late_publishes: u64,
    /// Publishes whose `WAIT` for `REDIS_WAIT_REPLICAS` replicas timed out (answered 200).
    pub wait_timeouts: u64,
}

pub trait Store {
    /// Queues `job`. A full queue hands the job back, and the caller refuses the request
    /// (503) or degrades (local data only, a later retry) rather than waiting
    /// (docs/loop.md#the-back-pressure-rule).
    fn submit(&mut self, job: Job) -> Result<(), Job>;

    /// Hands the jobs submitted since the last call to the store's own thread, all at once.
    /// The loop calls it once per pass, before it sleeps: one wake-up of the Redis worker per
    /// pass instead of one per request, and one pipeline for every publish of the pass. A
    /// store that answers on the loop thread has nothing to do.
    fn flush(&mut self) {}

    /// Moves every ready answer into `out`, in the order they happened.
    fn drain(&mut self, out: &mut Vec<Done>);

    /// Periodic housekeeping on the loop thread (the embedded store drops expired entries;
    /// Redis expires keys itself).
    fn sweep(&mut self, now: Instant);

    fn stats(&self) -> StoreStats;

    /// "memory" or "redis", for /health, /metrics and logs.
    fn kind(&self) -> &'static str;

    /// Applies reloadable settings (TTLs, caps).
    fn set_config(&mut self, cfg: StoreConfig);

    /// True when several instances share this store (`clusterMode` in the stats).
    fn shared(&self) -> bool;
}
