//! The embedded store: every message once in an id-ordered map, per-channel id lists pointing
//! into it, and an expiry queue.
//!
//! Memory is bounded three ways: messages expire (at most `message_ttl`), each channel keeps at
//! most `channel_history` ids, and the stored bodies never exceed `max_bytes` (oldest evicted
//! first). Channels whose messages are all gone are dropped by the sweep, so a stream of
//! short-lived channels leaves nothing behind.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Done, Job, Receiver, Store, StoreError, StoreStats};
use crate::channel::ChannelId;
use crate::config::StoreConfig;
use crate::message::{Message, Mid, MidGen};

/// Bookkeeping bytes charged per stored message on top of its body.
const OVERHEAD: usize = 128;

struct Stored {
    msg: Arc<Message>,
    expires: Instant,
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
    }

    fn remove(&mut self, mid: Mid) -> bool {
        match self.messages.remove(&mid) {
            Some(s) => {
                self.bytes -= s.msg.body.len() + OVERHEAD;
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
        for ch in receivers {
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
        self.bytes += msg.body.len() + OVERHEAD;
        self.messages.insert(
            msg.mid,
            Stored {
                msg: Arc::clone(msg),
                expires,
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
        now: Instant,
    ) -> Result<Vec<Arc<Message>>, StoreError> {
        let mut ids: Vec<Mid> = Vec::new();
        for ch in receivers {
            if let Some(h) = self.channels.get(ch) {
                let start = h.ids.partition_point(|&m| m <= after);
                ids.extend(h.ids.range(start..));
            }
        }
        ids.sort_unstable();
        ids.dedup();
        Ok(ids
            .into_iter()
            .filter_map(|mid| self.messages.get(&mid))
            .filter(|s| s.expires > now)
            .take(limit)
            .map(|s| Arc::clone(&s.msg))
            .collect())
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
                let msgs = deliver.iter().map(|(m, _)| Arc::clone(m)).collect();
                // The answer first, then the delivery: the publisher is answered before the
                // fan-out, as with Redis.
                self.done.push(Done::Published {
                    token,
                    result: Ok(msgs),
                });
                Done::Deliver(deliver)
            }
            Job::Backlog {
                token,
                receivers,
                after,
                limit,
            } => {
                let ids = receivers.iter().map(|r| &r.0);
                Done::Backlog {
                    token,
                    result: self.mem.backlog(ids, after, limit, now),
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

    #[test]
    fn backlog_merges_channels_once_in_order() {
        let mut s = MemoryStore::new(cfg());
        let now = Instant::now();
        let (a, b) = (ChannelId([1; 16]), ChannelId([2; 16]));
        s.save(&msg(1, 100), &[a], now);
        s.save(&msg(2, 100), &[a, b], now);
        s.save(&msg(3, 100), &[b], now);
        let got: Vec<u64> = s
            .backlog(&[a, b], Mid::new(1795479773, 1), 200, now)
            .unwrap()
            .iter()
            .map(|m| m.mid.counter())
            .collect();
        assert_eq!(got, vec![2, 3]);
    }

    #[test]
    fn expiry_grace_and_sweep() {
        let mut s = MemoryStore::new(cfg());
        let now = Instant::now();
        let a = ChannelId([1; 16]);
        s.save(&msg(1, 0), &[a], now);
        s.save(&msg(2, 120), &[a], now);
        let zero = Mid::new(0, 0);
        assert_eq!(s.backlog(&[a], zero, 200, now).unwrap().len(), 2);
        let later = now + Duration::from_secs(61);
        assert_eq!(s.backlog(&[a], zero, 200, later).unwrap().len(), 1);
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
        let got = s.backlog(&[a], Mid::new(0, 0), 200, now).unwrap();
        assert_eq!(got.len(), 3, "per-channel history cap");
        for i in 0..1000u64 {
            s.save(&msg(100 + i, 100), &[ChannelId([i as u8; 16])], now);
        }
        assert!(s.stats().bytes <= 10_000);
    }
}
