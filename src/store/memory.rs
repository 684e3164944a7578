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

use super::{Store, StoreError, StoreStats};
use crate::channel::ChannelId;
use crate::config::StoreConfig;
use crate::message::{Message, Mid};

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
    newest: Option<Mid>,
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

impl Store for MemoryStore {
    fn save(&mut self, msg: &Arc<Message>, receivers: &[ChannelId], now: Instant) {
        let ttl = if msg.expiry == 0 {
            self.cfg.expiry0_grace
        } else {
            msg.expiry.min(self.cfg.message_ttl)
        };
        for ch in receivers {
            let h = self.channels.entry(*ch).or_default();
            h.ids.push_back(msg.mid);
            h.newest = Some(msg.mid);
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

    fn backlog(
        &mut self,
        receivers: &[ChannelId],
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

    fn newest_mid(&self, receivers: &[ChannelId]) -> Option<Mid> {
        receivers
            .iter()
            .filter_map(|ch| self.channels.get(ch).and_then(|h| h.newest))
            .max()
    }

    fn touch_online(&mut self, channels: &[ChannelId], now: Instant) {
        let until = now + Duration::from_secs(u64::from(self.cfg.online_ttl));
        for ch in channels {
            self.online.insert(*ch, until);
        }
    }

    fn recently_online(&self, ch: &ChannelId, now: Instant) -> bool {
        self.online.get(ch).is_some_and(|&until| until > now)
    }

    fn sweep(&mut self, now: Instant) {
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

    fn stats(&self) -> StoreStats {
        StoreStats {
            messages: self.messages.len(),
            channels: self.channels.len(),
            bytes: self.bytes,
            evicted: self.evicted,
        }
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
        assert_eq!(s.newest_mid(&[a]), Some(Mid::new(1795479773, 2)));
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
        assert_eq!(s.newest_mid(&[a]), None);
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
