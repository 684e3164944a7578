//! One deadline queue for every per-connection timer (header read, keep-alive idle, long-poll
//! hold, WebSocket ping, close linger).
//!
//! Deletion is lazy: an entry only counts if it still equals the deadline stored on its
//! connection, so cancelling or moving a timer is a field write, never a heap search.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Instant;

use crate::slab::ConnId;

#[derive(Default)]
pub struct Timers {
    heap: BinaryHeap<Reverse<(Instant, ConnId)>>,
}

impl Timers {
    pub fn schedule(&mut self, at: Instant, id: ConnId) {
        self.heap.push(Reverse((at, id)));
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((at, _))| *at)
    }

    /// Moves every entry due at `now` into `out` (stale ones included; the caller checks).
    pub fn pop_expired(&mut self, now: Instant, out: &mut Vec<(Instant, ConnId)>) {
        while let Some(Reverse((at, id))) = self.heap.peek().copied() {
            if at > now {
                break;
            }
            self.heap.pop();
            out.push((at, id));
        }
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
    use std::time::Duration;

    #[test]
    fn pops_in_deadline_order() {
        let mut slab = Slab::default();
        let a = slab.insert_with(|_| ());
        let b = slab.insert_with(|_| ());
        let now = Instant::now();
        let mut t = Timers::default();
        t.schedule(now + Duration::from_secs(2), a);
        t.schedule(now + Duration::from_secs(1), b);
        assert_eq!(t.next_deadline(), Some(now + Duration::from_secs(1)));
        let mut out = Vec::new();
        t.pop_expired(now + Duration::from_millis(1500), &mut out);
        assert_eq!(out, vec![(now + Duration::from_secs(1), b)]);
        assert_eq!(t.len(), 1);
    }
}
