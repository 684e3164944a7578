//! Durable state behind one small trait: message history for resume by `mid`, recent long-poll
//! presence, and the bookkeeping to expire both.
//!
//! The embedded [`memory::MemoryStore`] answers within the loop pass. The trait is synchronous
//! for now; the Redis store (a later issue) will move behind a worker thread with the same
//! operations as jobs.

pub mod memory;

use std::sync::Arc;
use std::time::Instant;

use crate::channel::ChannelId;
use crate::message::{Message, Mid};

/// Why a store operation failed (the memory store never fails; Redis will).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreError(pub String);

/// Counters for stats and logs.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct StoreStats {
    pub messages: usize,
    pub channels: usize,
    pub bytes: usize,
    /// Messages dropped before their expiry by the per-channel or total caps.
    pub evicted: u64,
}

pub trait Store {
    /// Keeps `msg` for `receivers`: `min(expiry, message_ttl)` seconds, or the grace window
    /// for expiry 0 (PROTOCOL.md §8.4).
    fn save(&mut self, msg: &Arc<Message>, receivers: &[ChannelId], now: Instant);

    /// Up to `limit` unexpired messages newer than `after` addressed to any of `receivers`,
    /// ascending by id, each once.
    fn backlog(
        &mut self,
        receivers: &[ChannelId],
        after: Mid,
        limit: usize,
        now: Instant,
    ) -> Result<Vec<Arc<Message>>, StoreError>;

    /// Newest id stored for any of `receivers`, expired or not, while the store remembers it.
    fn newest_mid(&self, receivers: &[ChannelId]) -> Option<Mid>;

    /// Marks channels online for the online TTL (a long poll registered or ended).
    fn touch_online(&mut self, channels: &[ChannelId], now: Instant);

    /// True while a touch is younger than the online TTL.
    fn recently_online(&self, ch: &ChannelId, now: Instant) -> bool;

    /// Drops expired messages, presence and empty channels.
    fn sweep(&mut self, now: Instant);

    fn stats(&self) -> StoreStats;
}
