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
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{BacklogChunk, Done, Job, Minted, Receiver, Store, StoreError, StoreStats};
use crate::channel::ChannelId;
use crate::config::StoreConfig;
use crate::message::{Message, Mid, MidGen};

/// Bookkeeping charged per stored message besides its body, its encodings, the `Message`
/// struct and its `kind`: the `Arc` counts, the allocations behind the shared `Bytes` (one per
/// encoding buffer), the map and expiry-queue entries, and allocator rounding.
const OVERHEAD: usize = 192;
/// Charged per receiver: its id in the channel's history deque (16 bytes, with slack).
const PER_RECEIVER: usize = 32;

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
    pub fn save<'a>(
        &mut self,
        msg: &Arc<Message>,
        receivers: impl IntoIterator<Item = &'a ChannelId>,
        now: Instant,
    ) {
        let ttl = if msg.expiry == 0 {
            self.cfg.expiry0_grace
        } else {
            msg.expiry.min(self.cfg.message_ttl)
        };
        let mut count = 0;
        for ch in receivers {
            count += 1;
            let h = self.channels.entry(*ch).or_default();
            h.ids.push_back(msg.mid);
            if h.ids.len() > self.cfg.channel_history {
                h.ids.pop_front();
                self.evicted += 1;
            }
        }
        if ttl == 0 {
            return;
        }
        let expires = now + Duration::from_secs(u64::from(ttl));
        let charged = charge(msg, count);
        self.bytes += charged;
        self.messages.insert(
            msg.mid,
            Stored {
                msg: Arc::clone(msg),
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

/// The embedded store behind the [`Store`] interface: mints ids with a [`MidGen`] and answers
/// every job at once; the answers wait in `done` until the loop drains them in the same pass.
pub struct Embedded {
    mem: MemoryStore,
    mids: MidGen,
    done: Vec<Done>,
}

impl Embedded {
    pub fn new(cfg: StoreConfig, mids: MidGen) -> Embedded {
        let latest = mids.last().unwrap_or_else(|| Mid::new(mids.epoch(), 0));
        Embedded {
            mem: MemoryStore::new(cfg),
            mids,
            done: vec![Done::Up { latest }],
        }
    }
}

impl Store for Embedded {
    fn submit(&mut self, job: Job) -> Result<(), Job> {
        let now = Instant::now();
        let done = match job {
            Job::Publish { token, drafts } => {
                let deliver: Vec<(Arc<Message>, Vec<Receiver>)> = drafts
                    .into_iter()
                    .map(|d| {
                        let msg = Arc::new(Message::new(
                            self.mids.next(),
                            d.created_ms,
                            d.expiry,
                            d.sender,
                            d.body,
                            d.kind,
                        ));
                        self.mem.save(&msg, d.receivers.iter().map(|r| &r.0), now);
                        (msg, d.receivers)
                    })
                    .collect();
                let minted = deliver
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
                Done::Deliver(deliver)
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
        };
        self.done.push(done);
        Ok(())
    }

    fn drain(&mut self, out: &mut Vec<Done>) {
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

    fn mids(chunk: &BacklogChunk) -> Vec<u64> {
        chunk.msgs.iter().map(|m| m.mid.counter()).collect()
    }

    #[test]
    fn backlog_merges_channels_once_in_order() {
        let mut s = MemoryStore::new(cfg());
        let now = Instant::now();
        let (a, b) = (ChannelId([1; 16]), ChannelId([2; 16]));
        s.save(&msg(1, 100), &[a], now);
        s.save(&msg(2, 100), &[a, b], now);
        s.save(&msg(3, 100), &[b], now);
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
        s.save(&msg(1, 0), &[a], now);
        s.save(&msg(2, 120), &[a], now);
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
            s.save(&msg(i, 100), &[a], now);
        }
        let got = s
            .backlog(&[a], Mid::new(0, 0), 200, usize::MAX, now)
            .unwrap();
        assert_eq!(got.msgs.len(), 3, "per-channel history cap");
        for i in 0..1000u64 {
            s.save(&msg(100 + i, 100), &[ChannelId([i as u8; 16])], now);
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
            s.save(&m, &[a], now);
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
            s.save(&big(i, 200_000), &[ChannelId([i as u8; 16])], now);
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
                &[if i % 2 == 0 { a } else { b }],
                now,
            );
        }
        // An expired message is neither returned nor counted as "more".
        s.save(&msg(11, 0), &[a], now);
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
