//! The embedded store: every message once in an id-ordered map, per-channel id lists pointing
//! into it, and an expiry queue.
//!
//! Memory is bounded three ways: messages expire (at most `message_ttl`), each channel keeps at
//! most `channel_history` ids, and what the stored messages can hold never exceeds `max_bytes`
//! (`STORE_MAX_BYTES`, oldest evicted first). Channels whose messages are all gone are dropped
//! by the sweep, so a stream of short-lived channels leaves nothing behind.
//!
//! # What a message is charged (docs/memory.md)
//!
//! A stored [`Message`] holds its body and, once a subscriber of that format needed them, its
//! wire encodings: the v3 frame with its WebSocket frame in one buffer, and the v4
//! `OutgoingMessage` with its one-message WebSocket batch in another
//! ([`Message::encodings_bound`]). Each message is charged, when it is saved, the body, both
//! encoding buffers at the exact capacities they are allocated with if they are ever built,
//! and a fixed estimate of the bookkeeping (the `Message` and its `Arc`, the map, expiry-queue
//! and history entries), whether or not anything gets built. So the count, and the cap, bound
//! what the store keeps alive in the worst case (every message read in both protocols), and
//! the publish path stays as it was: no hook when an encoding is built, no per-subscriber
//! work, one pass over the body to count the bytes the v3 splice may widen. The price is
//! that a store whose messages are only ever read in one format (or not at all) holds fewer
//! of them than the cap would allow: about a third of the cap in bodies.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{info, warn};
use mio::Waker;

use super::journal::{self, Acks, Entry, Journal};
use super::{BacklogChunk, Done, Job, Minted, Receiver, Store, StoreError, StoreStats, Token};
use crate::channel::ChannelId;
use crate::config::StoreConfig;
use crate::message::{Message, Mid, MidGen, now_ms};

/// Bookkeeping charged per stored message besides its body, its encodings, the `Message`
/// struct and its `kind`: the `Arc` counts, the allocations behind the shared `Bytes` (one per
/// encoding buffer), the map and expiry-queue entries, the receiver list's allocation (kept
/// for the journal's snapshots, docs/persistence.md), and allocator rounding.
const OVERHEAD: usize = 208;
/// Charged per receiver: its id in the channel's history deque (16 bytes) and in the
/// message's receiver list (17 bytes), with slack.
const PER_RECEIVER: usize = 48;

/// What [`MemoryStore::save`] charges for `msg` stored for `receivers` receivers.
fn charge(msg: &Message, receivers: usize) -> usize {
    msg.body.len()
        + msg.encodings_bound()
        + std::mem::size_of::<Message>()
        + msg.kind.as_ref().map_or(0, String::len)
        + OVERHEAD
        + PER_RECEIVER * receivers
}

struct Stored {
    msg: Arc<Message>,
    /// Who it was published to: what a journal snapshot writes (docs/persistence.md).
    receivers: Arc<[Receiver]>,
    expires: Instant,
    /// What this message adds to `bytes` (see [`charge`]).
    charged: usize,
}

#[derive(Default)]
struct History {
    /// Ascending; ids whose message is gone are dropped lazily.
    ids: VecDeque<Mid>,
}

pub struct MemoryStore {
    cfg: StoreConfig,
    messages: BTreeMap<Mid, Stored>,
    expiry: BinaryHeap<Reverse<(Instant, Mid)>>,
    channels: HashMap<ChannelId, History>,
    online: HashMap<ChannelId, Instant>,
    bytes: usize,
    evicted: u64,
}

impl MemoryStore {
    pub fn new(cfg: StoreConfig) -> MemoryStore {
        MemoryStore {
            cfg,
            messages: BTreeMap::new(),
            expiry: BinaryHeap::new(),
            channels: HashMap::new(),
            online: HashMap::new(),
            bytes: 0,
            evicted: 0,
        }
    }

    pub fn set_config(&mut self, cfg: StoreConfig) {
        self.cfg = cfg;
        self.enforce_byte_cap();
    }

    fn remove(&mut self, mid: Mid) -> bool {
        match self.messages.remove(&mid) {
            Some(s) => {
                self.bytes -= s.charged;
                true
            }
            None => false,
        }
    }

    fn enforce_byte_cap(&mut self) {
        while self.bytes > self.cfg.max_bytes {
            let Some((&oldest, _)) = self.messages.iter().next() else {
                break;
            };
            self.remove(oldest);
            self.evicted += 1;
        }
    }
}

impl MemoryStore {
    /// How long `msg` is kept, in seconds: `min(expiry, message_ttl)`, or the grace window
    /// for expiry 0 (docs/protocol.md#publishing-text-v3).
    pub fn ttl(&self, msg: &Message) -> u32 {
        if msg.expiry == 0 {
            self.cfg.expiry0_grace
        } else {
            msg.expiry.min(self.cfg.message_ttl)
        }
    }

    pub fn save(&mut self, msg: &Arc<Message>, receivers: &Arc<[Receiver]>, now: Instant) {
        let ttl = self.ttl(msg);
        let expires = (ttl > 0).then(|| now + Duration::from_secs(u64::from(ttl)));
        self.save_until(msg, receivers, expires);
    }

    /// Stores `msg` until `expires` (`None`: not kept, only counted in the histories), under
    /// the history and byte caps. Ids must come in ascending order.
    pub fn save_until(
        &mut self,
        msg: &Arc<Message>,
        receivers: &Arc<[Receiver]>,
        expires: Option<Instant>,
    ) {
        for (ch, _) in receivers.iter() {
            let h = self.channels.entry(*ch).or_default();
            h.ids.push_back(msg.mid);
            if h.ids.len() > self.cfg.channel_history {
                h.ids.pop_front();
                self.evicted += 1;
            }
        }
        let Some(expires) = expires else {
            return;
        };
        let charged = charge(msg, receivers.len());
        self.bytes += charged;
        self.messages.insert(
            msg.mid,
            Stored {
                msg: Arc::clone(msg),
                receivers: Arc::clone(receivers),
                expires,
                charged,
            },
        );
        self.expiry.push(Reverse((expires, msg.mid)));
        self.enforce_byte_cap();
    }

    pub fn backlog<'a>(
        &mut self,
        receivers: impl IntoIterator<Item = &'a ChannelId>,
        after: Mid,
        limit: usize,
        max_bytes: usize,
        now: Instant,
    ) -> Result<BacklogChunk, StoreError> {
        let mut ids: Vec<Mid> = Vec::new();
        for ch in receivers {
            if let Some(h) = self.channels.get(ch) {
                let start = h.ids.partition_point(|&m| m <= after);
                ids.extend(h.ids.range(start..));
            }
        }
        ids.sort_unstable();
        ids.dedup();
        let mut chunk = BacklogChunk::default();
        let mut bytes = 0;
        let live = ids
            .into_iter()
            .filter_map(|mid| self.messages.get(&mid))
            .filter(|s| s.expires > now);
        for s in live {
            let len = s.msg.body.len();
            if chunk.msgs.len() >= limit || (!chunk.msgs.is_empty() && bytes + len > max_bytes) {
                chunk.more = true;
                break;
            }
            bytes += len;
            chunk.msgs.push(Arc::clone(&s.msg));
        }
        Ok(chunk)
    }

    pub fn touch_online<'a>(
        &mut self,
        channels: impl IntoIterator<Item = &'a ChannelId>,
        now: Instant,
    ) {
        let until = now + Duration::from_secs(u64::from(self.cfg.online_ttl));
        for ch in channels {
            self.online.insert(*ch, until);
        }
    }

    pub fn recently_online(&self, ch: &ChannelId, now: Instant) -> bool {
        self.online.get(ch).is_some_and(|&until| until > now)
    }

    pub fn sweep(&mut self, now: Instant) {
        while let Some(&Reverse((at, mid))) = self.expiry.peek() {
            if at > now {
                break;
            }
            self.expiry.pop();
            self.remove(mid);
        }
        let messages = &self.messages;
        self.channels.retain(|_, h| {
            while h.ids.front().is_some_and(|m| !messages.contains_key(m)) {
                h.ids.pop_front();
            }
            if h.ids.capacity() > 2 * h.ids.len() + 16 {
                h.ids.shrink_to_fit();
            }
            !h.ids.is_empty()
        });
        self.online.retain(|_, until| *until > now);
    }

    /// Every stored message with its receivers, ascending by id: what a compacted journal
    /// holds (docs/persistence.md).
    pub fn snapshot(&self) -> Vec<Entry> {
        self.messages
            .values()
            .map(|s| Entry {
                msg: Arc::clone(&s.msg),
                receivers: Arc::clone(&s.receivers),
            })
            .collect()
    }

    /// The newest stored id.
    pub fn newest(&self) -> Option<Mid> {
        self.messages.keys().next_back().copied()
    }

    pub fn stats(&self) -> StoreStats {
        StoreStats {
            messages: self.messages.len(),
            channels: self.channels.len(),
            bytes: self.bytes,
            evicted: self.evicted,
            rejected_jobs: 0,
            ..StoreStats::default()
        }
    }
}

/// The embedded store behind the [`Store`] interface: mints ids with a [`MidGen`], and
/// answers every job at once, except publishes when it has a journal (docs/persistence.md):
/// those are answered once the journal thread reports their records written, and only then
/// stored in memory and delivered. The answers wait in `done` until the loop drains them.
pub struct Embedded {
    mem: MemoryStore,
    mids: MidGen,
    done: Vec<Done>,
    journal: Option<Journal>,
    /// Publishes handed to the journal and not answered yet, in `seq` order.
    pending: VecDeque<Pending>,
    next_seq: u64,
    acks: Acks,
    /// Held while the store runs: one process per STATE_DIR.
    _lock: Option<File>,
}

/// A publish waiting for its journal write.
struct Pending {
    seq: u64,
    token: Token,
    msgs: Vec<(Arc<Message>, Arc<[Receiver]>)>,
}

/// Publish jobs that may wait for the journal at once; more are refused (503), as a full
/// queue to Redis is.
const MAX_PENDING: usize = 4096;

impl Embedded {
    /// An embedded store without a journal (tests).
    pub fn new(cfg: StoreConfig, mids: MidGen) -> Embedded {
        Embedded::with(MemoryStore::new(cfg), mids, None, None)
    }

    fn with(
        mem: MemoryStore,
        mids: MidGen,
        journal: Option<Journal>,
        lock: Option<File>,
    ) -> Embedded {
        let latest = mids.last().unwrap_or_else(|| Mid::new(mids.epoch(), 0));
        Embedded {
            mem,
            mids,
            done: vec![Done::Up { latest }],
            journal,
            pending: VecDeque::new(),
            next_seq: 0,
            acks: Acks::default(),
            _lock: lock,
        }
    }

    /// Opens the store persisted in `cfg.state_dir` (docs/persistence.md): restores the
    /// journal under the TTL and caps, mints ids above every restored one, rewrites the
    /// journal compacted, and starts the journal thread (which wakes the loop with `waker`).
    /// An error, one line, refuses the start.
    pub fn open(
        cfg: StoreConfig,
        now_unix: u64,
        waker: Option<Arc<Waker>>,
    ) -> Result<Embedded, String> {
        let dir = &cfg.state_dir;
        let lock_path = dir.join("lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| format!("STATE_DIR {} is not writable: {e}", dir.display()))?;
        lock.try_lock().map_err(|e| {
            format!(
                "STATE_DIR {} is in use by another push-server ({}: {e})",
                dir.display(),
                lock_path.display()
            )
        })?;
        let path = dir.join(journal::FILE_NAME);
        let started = Instant::now();
        let (now, now_ms) = (Instant::now(), now_ms());
        let mut mem = MemoryStore::new(cfg.clone());
        let (mut last, mut expired, mut disordered, mut max_epoch) = (None, 0u64, 0u64, 0);
        let scanned = journal::read_file(&path, |e| {
            let mid = e.msg.mid;
            max_epoch = max_epoch.max(mid.epoch());
            if last.is_some_and(|l| mid <= l) {
                disordered += 1;
                return;
            }
            last = Some(mid);
            // The TTL counts from the creation time, so the time spent down counts too.
            let ttl_ms = u64::from(mem.ttl(&e.msg)) * 1000;
            let until = e.msg.created_ms.saturating_add(ttl_ms);
            if ttl_ms == 0 || until <= now_ms {
                expired += 1;
                return;
            }
            let left = Duration::from_millis((until - now_ms).min(ttl_ms));
            mem.save_until(&e.msg, &e.receivers, Some(now + left));
        })
        .map_err(|e| format!("journal {}: {e}", path.display()))?;
        if let Some((at, n, why)) = &scanned.cut {
            warn!(
                "journal {}: {why} at offset {at}; cut there, dropping the last {n} bytes (kept {} records)",
                path.display(),
                scanned.records
            );
        }
        if disordered > 0 {
            warn!(
                "journal {}: {disordered} records out of id order skipped",
                path.display()
            );
        }
        let mids = MidGen::start_above(&cfg.state_file, now_unix, max_epoch).map_err(|e| {
            format!(
                "cannot persist the message id epoch in {}: {e}",
                cfg.state_file.display()
            )
        })?;
        let snapshot = mem.snapshot();
        let (file, len) = journal::rewrite(&path, &snapshot).map_err(|e| {
            format!(
                "cannot write the journal {} in STATE_DIR: {e}",
                path.display()
            )
        })?;
        let stats = mem.stats();
        info!(
            "journal {}: restored {} messages of {} records ({expired} expired, {} over the caps) in {} ms; compacted to {len} bytes; STORE_FSYNC={}",
            path.display(),
            stats.messages,
            scanned.records,
            stats.evicted,
            started.elapsed().as_millis(),
            cfg.fsync.name()
        );
        let journal = Journal::start(path, file, len, cfg.fsync, cfg.max_bytes, waker)
            .map_err(|e| format!("cannot start the journal thread: {e}"))?;
        Ok(Embedded::with(mem, mids, Some(journal), Some(lock)))
    }

    /// The epoch of the ids this store mints.
    pub fn epoch(&self) -> u64 {
        self.mids.epoch()
    }

    /// Stores `msgs` in memory, answers the publisher and announces them.
    fn publish_now(&mut self, token: Token, msgs: Vec<(Arc<Message>, Arc<[Receiver]>)>) {
        let now = Instant::now();
        for (m, r) in &msgs {
            self.mem.save(m, r, now);
        }
        let minted = msgs
            .iter()
            .map(|(m, _)| Minted {
                mid: m.mid,
                kind: m.kind.clone(),
                created_ms: m.created_ms,
            })
            .collect();
        // The answer first, then the delivery: the publisher is answered before the
        // fan-out, as with Redis.
        self.done.push(Done::Published {
            token,
            result: Ok(minted),
        });
        self.done.push(Done::Deliver(
            msgs.into_iter().map(|(m, r)| (m, r.to_vec())).collect(),
        ));
    }

    /// Acts on what the journal thread reported: answers the publishes it wrote (or refuses
    /// those it could not), and asks for a compaction when the file outgrew its bound.
    fn collect_journal(&mut self) {
        let Some(j) = &self.journal else {
            return;
        };
        j.take(&mut self.acks);
        let results = std::mem::take(&mut self.acks.results);
        for (seq, result) in results {
            let Some(p) = self.pending.pop_front() else {
                break;
            };
            debug_assert_eq!(p.seq, seq, "journal answers come in order");
            match result {
                Ok(()) => self.publish_now(p.token, p.msgs),
                Err(e) => self.done.push(Done::Published {
                    token: p.token,
                    result: Err(StoreError(e)),
                }),
            }
        }
        // docs/persistence.md: compact once the file grew by half the cap since the last
        // compaction (and is over half the cap), so that it stays under 2 × STORE_MAX_BYTES.
        let half = self.mem.cfg.max_bytes as u64 / 2;
        let a = &self.acks;
        if !a.compacting && a.len > a.compacted_len.max(half) + half {
            let mut snapshot: Vec<(u64, Entry)> =
                self.mem.snapshot().into_iter().map(|e| (0, e)).collect();
            for p in &self.pending {
                snapshot.extend(p.msgs.iter().map(|(m, r)| {
                    (
                        p.seq,
                        Entry {
                            msg: Arc::clone(m),
                            receivers: Arc::clone(r),
                        },
                    )
                }));
            }
            if let Some(j) = &self.journal
                && j.compact(snapshot)
            {
                self.acks.compacting = true;
            }
        }
    }
}

impl Store for Embedded {
    fn submit(&mut self, job: Job) -> Result<(), Job> {
        let now = Instant::now();
        if matches!(job, Job::Publish { .. }) && self.pending.len() >= MAX_PENDING {
            return Err(job);
        }
        let done = match job {
            Job::Publish { token, drafts } => {
                let mut bytes = Vec::new();
                let msgs: Vec<(Arc<Message>, Arc<[Receiver]>)> = drafts
                    .into_iter()
                    .map(|d| {
                        let msg = Arc::new(
                            Message::new(
                                self.mids.next(),
                                d.created_ms,
                                d.expiry,
                                d.sender,
                                d.body,
                                d.kind,
                            )
                            .with_user_params(d.user_params),
                        );
                        let receivers: Arc<[Receiver]> = d.receivers.into();
                        if self.journal.is_some() {
                            journal::encode(&msg, &receivers, &mut bytes);
                        }
                        (msg, receivers)
                    })
                    .collect();
                let Some(j) = &self.journal else {
                    self.publish_now(token, msgs);
                    return Ok(());
                };
                // docs/persistence.md: written to the OS before the answer; the answer comes
                // from `drain` once the journal thread reports the write.
                self.next_seq += 1;
                let seq = self.next_seq;
                if j.append(seq, bytes) {
                    self.pending.push_back(Pending { seq, token, msgs });
                    return Ok(());
                }
                Done::Published {
                    token,
                    result: Err(StoreError("the journal thread stopped".into())),
                }
            }
            Job::Backlog {
                token,
                receivers,
                after,
                limit,
                max_bytes,
            } => {
                let ids = receivers.iter().map(|r| &r.0);
                Done::Backlog {
                    token,
                    result: self.mem.backlog(ids, after, limit, max_bytes, now),
                }
            }
            Job::Touch { channels } => {
                self.mem.touch_online(channels.iter().map(|r| &r.0), now);
                return Ok(());
            }
            Job::Online { token, channels } => Done::Online {
                token,
                result: Ok(channels
                    .iter()
                    .map(|r| self.mem.recently_online(&r.0, now))
                    .collect()),
            },
            // One instance: nobody else reads the entry, and there are no others to list.
            Job::PutStats { .. } => return Ok(()),
            Job::Stats { token } => Done::Stats {
                token,
                result: Ok(Vec::new()),
            },
            // Only asked after a pub/sub gap, which one process without pub/sub never has.
            Job::CatchUp { token, .. } => Done::CatchUp {
                token,
                result: Ok(Default::default()),
            },
            // One process keeps presence itself (src/server/v5.rs); never asked here.
            Job::Presence { token, .. } => Done::Presence {
                token,
                result: Ok(Default::default()),
            },
            Job::LastSeen { token, users } => Done::LastSeen {
                token,
                result: Ok(vec![None; users.len()]),
            },
            Job::SeenAt { .. } => return Ok(()),
        };
        self.done.push(done);
        Ok(())
    }

    fn drain(&mut self, out: &mut Vec<Done>) {
        self.collect_journal();
        out.append(&mut self.done);
    }

    fn sweep(&mut self, now: Instant) {
        self.mem.sweep(now);
    }

    fn stats(&self) -> StoreStats {
        self.mem.stats()
    }

    fn kind(&self) -> &'static str {
        "memory"
    }

    fn set_config(&mut self, cfg: StoreConfig) {
        if let Some(j) = &self.journal {
            j.set_max_bytes(cfg.max_bytes);
        }
        self.mem.set_config(cfg);
    }

    fn shared(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Sender;
    use tungstenite::Bytes;

    fn cfg() -> StoreConfig {
        StoreConfig {
            message_ttl: 86400,
            expiry0_grace: 60,
            online_ttl: 130,
            channel_history: 3,
            max_bytes: 10_000,
            state_file: "/nonexistent".into(),
            state_dir: "/nonexistent".into(),
            legacy_state_file: None,
            fsync: crate::config::Fsync::No,
        }
    }

    fn msg(counter: u64, expiry: u32) -> Arc<Message> {
        Arc::new(Message::new(
            Mid::new(1795479773, counter),
            0,
            expiry,
            Sender::Backend,
            Bytes::from_static(b"{}"),
            None,
        ))
    }

    fn rx(ids: &[ChannelId]) -> Arc<[Receiver]> {
        ids.iter()
            .map(|&id| (id, crate::registry::Kind::Private))
            .collect()
    }

    fn mids(chunk: &BacklogChunk) -> Vec<u64> {
        chunk.msgs.iter().map(|m| m.mid.counter()).collect()
    }

    #[test]
    fn backlog_merges_channels_once_in_order() {
        let mut s = MemoryStore::new(cfg());
        let now = Instant::now();
        let (a, b) = (ChannelId([1; 16]), ChannelId([2; 16]));
        s.save(&msg(1, 100), &rx(&[a]), now);
        s.save(&msg(2, 100), &rx(&[a, b]), now);
        s.save(&msg(3, 100), &rx(&[b]), now);
        let got = s
            .backlog(&[a, b], Mid::new(1795479773, 1), 200, usize::MAX, now)
            .unwrap();
        assert_eq!(mids(&got), vec![2, 3]);
        assert!(!got.more);
    }

    #[test]
    fn expiry_grace_and_sweep() {
        let mut s = MemoryStore::new(cfg());
        let now = Instant::now();
        let a = ChannelId([1; 16]);
        s.save(&msg(1, 0), &rx(&[a]), now);
        s.save(&msg(2, 120), &rx(&[a]), now);
        let zero = Mid::new(0, 0);
        let read = |s: &mut MemoryStore, at| s.backlog(&[a], zero, 200, usize::MAX, at).unwrap();
        assert_eq!(read(&mut s, now).msgs.len(), 2);
        let later = now + Duration::from_secs(61);
        assert_eq!(read(&mut s, later).msgs.len(), 1);
        s.sweep(now + Duration::from_secs(121));
        assert_eq!(s.stats(), StoreStats::default());
    }

    #[test]
    fn caps_bound_memory() {
        let mut s = MemoryStore::new(cfg());
        let now = Instant::now();
        let a = ChannelId([1; 16]);
        for i in 1..=10 {
            s.save(&msg(i, 100), &rx(&[a]), now);
        }
        let got = s
            .backlog(&[a], Mid::new(0, 0), 200, usize::MAX, now)
            .unwrap();
        assert_eq!(got.msgs.len(), 3, "per-channel history cap");
        for i in 0..1000u64 {
            s.save(&msg(100 + i, 100), &rx(&[ChannelId([i as u8; 16])]), now);
        }
        assert!(s.stats().bytes <= 10_000);
    }

    fn big(counter: u64, len: usize) -> Arc<Message> {
        // Some U+2028 line separators, which the v3 splice widens.
        let mut body = vec![b'x'; len];
        for chunk in body.chunks_mut(1000).filter(|c| c.len() >= 3) {
            chunk[..3].copy_from_slice("\u{2028}".as_bytes());
        }
        Arc::new(Message::new(
            Mid::new(1795479773, counter),
            1_795_479_881_123,
            3600,
            Sender::Client(ChannelId([5; 16])),
            Bytes::from(body),
            Some("im_message".into()),
        ))
    }

    /// The count covers the body and every encoding a message can hold, and the cap holds
    /// on that sum.
    #[test]
    fn bytes_cover_bodies_and_every_encoding() {
        let cap = 8 << 20;
        let mut s = MemoryStore::new(StoreConfig {
            max_bytes: cap,
            channel_history: 1000,
            ..cfg()
        });
        let now = Instant::now();
        let a = ChannelId([1; 16]);
        let mut all = Vec::new();
        for i in 1..=40 {
            let m = big(i, 300_000 + i as usize);
            s.save(&m, &rx(&[a]), now);
            all.push(m);
        }
        let kept = s
            .backlog(&[a], Mid::new(0, 0), 1000, usize::MAX, now)
            .unwrap();
        assert!(kept.msgs.len() < 40, "the cap evicted the oldest");
        assert_eq!(kept.msgs.last().unwrap().mid.counter(), 40);
        let mut real = 0;
        for m in &kept.msgs {
            // What every subscriber kind would make it build.
            let built = [
                m.v3_frame(),
                m.v3_ws_frame(),
                m.v4_message(),
                m.v4_ws_frame(),
            ];
            // The payloads are tails of the frames' buffers: held once.
            assert!(built[1].ends_with(built[0]) && built[3].ends_with(built[2]));
            real += m.body.len() + built[1].len() + built[3].len();
            assert!(m.encodings_built() >= built[1].len() + built[3].len());
        }
        let counted = s.stats().bytes;
        assert!(counted >= real, "counted {counted} < real {real}");
        assert!(counted <= cap, "counted {counted} > cap {cap}");
        // Bodies alone would have let the store keep every message.
        assert!(kept.msgs.len() * 300_040 < cap / 2);
        // Removing them gives back exactly what they were charged.
        s.sweep(now + Duration::from_secs(3601));
        assert_eq!(s.stats().bytes, 0);
        drop(all);
    }

    #[test]
    fn lowering_the_cap_evicts_at_once() {
        let mut s = MemoryStore::new(StoreConfig {
            max_bytes: 4 << 20,
            ..cfg()
        });
        let now = Instant::now();
        for i in 1..=6 {
            s.save(&big(i, 200_000), &rx(&[ChannelId([i as u8; 16])]), now);
        }
        assert_eq!(s.stats().messages, 6);
        s.set_config(StoreConfig {
            max_bytes: 1 << 20,
            ..cfg()
        });
        assert!(s.stats().bytes <= 1 << 20);
        assert!(s.stats().messages < 6);
    }

    #[test]
    fn backlog_chunks_stop_at_limit_or_bytes() {
        let mut s = MemoryStore::new(StoreConfig {
            max_bytes: 64 << 20,
            channel_history: 1000,
            ..cfg()
        });
        let now = Instant::now();
        let (a, b) = (ChannelId([1; 16]), ChannelId([2; 16]));
        for i in 1..=10 {
            s.save(
                &big(i, 1000 * i as usize),
                &rx(&[if i % 2 == 0 { a } else { b }]),
                now,
            );
        }
        // An expired message is neither returned nor counted as "more".
        s.save(&msg(11, 0), &rx(&[a]), now);
        let later = now + Duration::from_secs(61);
        let zero = Mid::new(0, 0);
        let read = |s: &mut MemoryStore, after, limit, max| {
            s.backlog(&[a, b], after, limit, max, later).unwrap()
        };
        // Bodies 1000, 2000, ...: 1000 + 2000 + 3000 fit in 6000, the 4000 does not.
        let c = read(&mut s, zero, 200, 6000);
        assert_eq!((mids(&c), c.more), (vec![1, 2, 3], true));
        let c = read(&mut s, zero, 200, 5999);
        assert_eq!((mids(&c), c.more), (vec![1, 2], true));
        // The first message always comes, however large.
        let c = read(&mut s, Mid::new(1795479773, 9), 200, 10);
        assert_eq!((mids(&c), c.more), (vec![10], false));
        let c = read(&mut s, Mid::new(1795479773, 8), 200, 10);
        assert_eq!((mids(&c), c.more), (vec![9], true));
        // The count limit.
        let c = read(&mut s, zero, 4, usize::MAX);
        assert_eq!((mids(&c), c.more), (vec![1, 2, 3, 4], true));
        // Exactly what is left: no "more".
        let c = read(&mut s, Mid::new(1795479773, 6), 4, usize::MAX);
        assert_eq!((mids(&c), c.more), (vec![7, 8, 9, 10], false));
        let c = read(&mut s, Mid::new(1795479773, 10), 4, usize::MAX);
        assert_eq!((mids(&c), c.more), (vec![], false));
        // Reading chunk after chunk gives everything once, in order.
        let (mut after, mut got) = (zero, Vec::new());
        loop {
            let c = read(&mut s, after, 200, 9000);
            got.extend(mids(&c));
            after = c.msgs.last().map_or(after, |m| m.mid);
            if !c.more {
                break;
            }
        }
        assert_eq!(got, (1..=10).collect::<Vec<u64>>());
    }

    #[test]
    fn published_answer_carries_ids_only() {
        let mut e = Embedded::new(cfg(), MidGen::in_memory(1795479773));
        let draft = |kind: Option<&str>| super::super::Draft {
            body: Bytes::from_static(b"{}"),
            expiry: 100,
            sender: Sender::Backend,
            kind: kind.map(str::to_owned),
            receivers: vec![(ChannelId([1; 16]), crate::registry::Kind::Private)],
            created_ms: 1234,
            user_params: None,
        };
        let job = Job::Publish {
            token: 7,
            drafts: vec![draft(Some("im_x")), draft(None)],
        };
        assert!(e.submit(job).is_ok());
        let mut out = Vec::new();
        e.drain(&mut out);
        let minted = out.iter().find_map(|d| match d {
            Done::Published { token: 7, result } => Some(result.clone().unwrap()),
            _ => None,
        });
        let m = |c, kind: Option<&str>| Minted {
            mid: Mid::new(1795479773, c),
            kind: kind.map(str::to_owned),
            created_ms: 1234,
        };
        assert_eq!(minted, Some(vec![m(1, Some("im_x")), m(2, None)]));
        let job = Job::Backlog {
            token: 8,
            receivers: vec![(ChannelId([1; 16]), crate::registry::Kind::Private)],
            after: Mid::new(0, 0),
            limit: 1,
            max_bytes: 1 << 20,
        };
        assert!(e.submit(job).is_ok());
        out.clear();
        e.drain(&mut out);
        assert!(matches!(
            &out[..],
            [Done::Backlog { token: 8, result: Ok(BacklogChunk { msgs, more: true }) }]
                if msgs.len() == 1
        ));
    }
}
