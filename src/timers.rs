//! One deadline queue for every per-connection timer (header read, keep-alive idle, long-poll
//! hold, WebSocket ping, close linger).
//!
//! Deletion is lazy: an entry only counts if it still equals the deadline stored on its
//! connection, so cancelling or moving a timer is a field write, never a heap search. Stale
//! entries are dropped when they pile up ([`Timers::retain`]): every connection that opens a
//! WebSocket or holds a poll leaves its request deadline behind.
//!
//! Every idle connection pays for its entry and its stored deadline, so both are small: a
//! [`Deadline`] is 8 bytes (an `Instant` is 16), an entry 16.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::num::NonZeroU64;
use std::time::{Duration, Instant};

use crate::slab::ConnId;

/// A deadline as the queue files it: one more than the nanoseconds since the queue was made
/// (never zero, so `Option<Deadline>` is 8 bytes too).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Deadline(NonZeroU64);

pub struct Timers {
    /// No deadline is earlier: they are all `now + timeout`.
    base: Instant,
    heap: BinaryHeap<Reverse<(Deadline, ConnId)>>,
}

impl Default for Timers {
    fn default() -> Self {
        Timers {
            base: Instant::now(),
            heap: BinaryHeap::new(),
        }
    }
}

impl Timers {
    /// Files `at` for `id`; the connection keeps the returned value as its current deadline.
    pub fn schedule(&mut self, at: Instant, id: ConnId) -> Deadline {
        debug_assert!(
            at >= self.base,
            "a deadline before the timer queue was made"
        );
        let ns = u64::try_from(at.saturating_duration_since(self.base).as_nanos())
            .unwrap_or(u64::MAX - 1);
        let d = Deadline(NonZeroU64::MIN.saturating_add(ns));
        self.heap.push(Reverse((d, id)));
        d
    }

    fn instant(&self, d: Deadline) -> Instant {
        self.base + Duration::from_nanos(d.0.get() - 1)
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((d, _))| self.instant(*d))
    }

    /// Moves every entry due at `now` into `out` (stale ones included; the caller checks).
    pub fn pop_expired(&mut self, now: Instant, out: &mut Vec<(Deadline, ConnId)>) {
        while let Some(Reverse((d, id))) = self.heap.peek().copied() {
            if self.instant(d) > now {
                break;
            }
            self.heap.pop();
            out.push((d, id));
        }
    }

    /// Keeps only the entries `live` says still count (O(n); for dropping stale ones).
    pub fn retain(&mut self, mut live: impl FnMut(Deadline, ConnId) -> bool) {
        self.heap.retain(|Reverse((d, id))| live(*d, *id));
    }

    pub fn len(&self) -> usize {
        self.heap.len()
    }

    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::slab::Slab;

    #[test]
    fn pops_in_deadline_order() {
        let mut slab = Slab::default();
        let a = slab.insert_with(|_| ());
        let b = slab.insert_with(|_| ());
        let mut t = Timers::default();
        let now = Instant::now();
        let da = t.schedule(now + Duration::from_secs(2), a);
        let db = t.schedule(now + Duration::from_secs(1), b);
        assert_eq!(t.next_deadline(), Some(now + Duration::from_secs(1)));
        let mut out = Vec::new();
        t.pop_expired(now + Duration::from_millis(1500), &mut out);
        assert_eq!(out, vec![(db, b)]);
        assert_eq!(t.len(), 1);
        // Deadlines come back exactly, to the nanosecond.
        let c = slab.insert_with(|_| ());
        let odd = now + Duration::from_nanos(3_000_000_007);
        let dc = t.schedule(odd, c);
        t.retain(|d, id| (d, id) != (da, a));
        assert_eq!(t.len(), 1);
        assert_eq!(t.next_deadline(), Some(odd));
        t.pop_expired(odd - Duration::from_nanos(1), &mut out);
        assert_eq!(out.len(), 1, "not due a nanosecond early");
        t.pop_expired(odd, &mut out);
        assert_eq!(out.last(), Some(&(dc, c)));
        assert!(t.is_empty());
    }

    #[test]
    fn a_stored_deadline_is_small() {
        assert_eq!(std::mem::size_of::<Option<Deadline>>(), 8);
        assert_eq!(std::mem::size_of::<Reverse<(Deadline, ConnId)>>(), 16);
    }
}
