//! A connection's bounded queue of outgoing byte chunks.
//!
//! Chunks are shared `Bytes` (a published message's frame is built once and pushed into every
//! subscriber's outbox by refcount), so queuing costs no copy. Writing is vectored and stops at
//! `WouldBlock`; a partially written head chunk is remembered by offset.

use std::collections::VecDeque;
use std::io::{self, IoSlice, Write};
use tungstenite::Bytes;

/// How many chunks one `writev` takes at most.
const MAX_IOV: usize = 64;

/// What a queued chunk costs in memory besides its bytes: the queue slot, the shared
/// buffer's header and the allocator's rounding. Limits count it, so a flood of tiny chunks
/// (pongs to a ping flood) is bounded like a few large ones.
pub const CHUNK_OVERHEAD: usize = 96;

#[derive(Default)]
pub struct Outbox {
    chunks: VecDeque<Bytes>,
    /// Bytes of `chunks[0]` already written.
    head_offset: usize,
    /// Bytes still to write.
    queued: usize,
}

/// What a flush achieved.
#[derive(Debug, PartialEq, Eq)]
pub enum Flush {
    /// Everything was written.
    Drained,
    /// The socket is full; wait for a writable event.
    Blocked,
}

/// Emptied queues kept for reuse (see [`Outbox::push_reusing`]); at most [`SPARE_MAX`].
pub type Spare = Vec<VecDeque<Bytes>>;
/// A few dozen KiB at most. Idle connections hold no queue, and the pool must not hold one
/// per idle connection instead (a full pool of thousands showed as +144 B per idle
/// WebSocket); direct writes (`Conn::deliver`) leave only bursts needing queues.
pub const SPARE_MAX: usize = 256;

impl Outbox {
    pub fn push(&mut self, chunk: Bytes) {
        if chunk.is_empty() {
            return;
        }
        self.queued += chunk.len();
        self.chunks.push_back(chunk);
    }

    /// [`Outbox::push`], taking the queue's storage from `spare` when it has none. An idle
    /// connection holds no queue (a drained one is given back, see [`Outbox::release`]), so
    /// without this every delivery to it would allocate one and free it again.
    pub fn push_reusing(&mut self, chunk: Bytes, spare: &mut Spare) {
        if self.chunks.capacity() == 0
            && let Some(q) = spare.pop()
        {
            self.chunks = q;
        }
        self.push(chunk);
    }

    /// Queues `chunk` of which the first `written` bytes already went out (a direct write
    /// the socket took only part of): it counts as started, so a close never cuts it.
    pub fn push_started(&mut self, chunk: Bytes, written: usize, spare: &mut Spare) {
        debug_assert!(self.chunks.is_empty() && written < chunk.len());
        self.push_reusing(chunk, spare);
        self.head_offset = written;
        self.queued -= written;
    }

    /// Gives the storage of a drained queue to `spare` (or frees it when `spare` is full):
    /// idle connections keep no queue.
    pub fn release(&mut self, spare: &mut Spare) {
        if self.chunks.is_empty() && self.chunks.capacity() > 0 {
            let q = std::mem::take(&mut self.chunks);
            if spare.len() < SPARE_MAX {
                spare.push(q);
            }
        }
    }

    /// Bytes still to write.
    pub fn queued(&self) -> usize {
        self.queued
    }

    /// The memory the queue holds, with [`CHUNK_OVERHEAD`] per chunk: what `OUTBOX_LIMIT`
    /// and the high- and low-water marks are compared with.
    pub fn footprint(&self) -> usize {
        self.queued + self.chunks.len() * CHUNK_OVERHEAD
    }

    pub fn is_empty(&self) -> bool {
        self.queued == 0
    }

    /// Drops everything not yet started, keeping a partially written chunk so the peer never
    /// sees half a frame followed by something else.
    pub fn truncate_unstarted(&mut self) {
        let keep = usize::from(self.head_offset > 0);
        while self.chunks.len() > keep {
            if let Some(c) = self.chunks.pop_back() {
                self.queued -= c.len();
            }
        }
    }

    /// Writes until drained or `WouldBlock`. Returns the bytes written as well.
    pub fn flush_to<W: Write>(&mut self, w: &mut W) -> io::Result<(Flush, usize)> {
        let mut written = 0;
        while !self.chunks.is_empty() {
            // One chunk (a delivery between two passes): a plain write, no iovec to build.
            if self.chunks.len() == 1 {
                let c = &self.chunks[0][self.head_offset..];
                match w.write(c) {
                    Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                    Ok(n) => {
                        written += n;
                        self.consume(n);
                        continue;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        return Ok((Flush::Blocked, written));
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                }
            }
            let n = {
                let mut iov: [IoSlice<'_>; MAX_IOV] = [IoSlice::new(&[]); MAX_IOV];
                let mut count = 0;
                for (i, c) in self.chunks.iter().take(MAX_IOV).enumerate() {
                    let start = if i == 0 { self.head_offset } else { 0 };
                    iov[count] = IoSlice::new(&c[start..]);
                    count += 1;
                }
                match w.write_vectored(&iov[..count]) {
                    Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        return Ok((Flush::Blocked, written));
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                }
            };
            written += n;
            self.consume(n);
        }
        // Drained. The caller gives the queue's memory back ([`Outbox::release`]): nearly
        // every connection queues something once (its 101 or HTTP answer) and then idles; a
        // kept capacity-4 deque is ~144 bytes of heap per idle subscriber, a fifth of its cost.
        Ok((Flush::Drained, written))
    }

    fn consume(&mut self, mut n: usize) {
        self.queued -= n;
        while n > 0 {
            let head_left = self.chunks[0].len() - self.head_offset;
            if n >= head_left {
                n -= head_left;
                self.chunks.pop_front();
                self.head_offset = 0;
            } else {
                self.head_offset += n;
                n = 0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Accepts `budget` bytes, then reports `WouldBlock`.
    struct Trickle {
        out: Vec<u8>,
        budget: usize,
    }

    impl Write for Trickle {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.budget == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let n = buf.len().min(self.budget).min(3);
            self.budget -= n;
            self.out.extend_from_slice(&buf[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_partly_written_direct_write_is_never_cut() {
        let mut ob = Outbox::default();
        let mut spare = Spare::new();
        ob.push_started(Bytes::from_static(b"frame-one"), 3, &mut spare);
        ob.push(Bytes::from_static(b"two"));
        assert_eq!(ob.queued(), 9);
        ob.truncate_unstarted();
        assert_eq!(
            ob.queued(),
            6,
            "the started frame stays whole, the rest goes"
        );
        let mut w = Trickle {
            out: Vec::new(),
            budget: 100,
        };
        assert_eq!(ob.flush_to(&mut w).unwrap().0, Flush::Drained);
        assert_eq!(w.out, b"me-one");
    }

    #[test]
    fn partial_writes_resume_in_order() {
        let mut ob = Outbox::default();
        ob.push(Bytes::from_static(b"hello "));
        ob.push(Bytes::from_static(b"world"));
        let mut w = Trickle {
            out: Vec::new(),
            budget: 4,
        };
        assert_eq!(ob.flush_to(&mut w).unwrap(), (Flush::Blocked, 4));
        assert_eq!(ob.queued(), 7);
        ob.truncate_unstarted();
        assert_eq!(ob.queued(), 2, "the started chunk is kept whole");
        ob.push(Bytes::from_static(b"!"));
        w.budget = 100;
        assert_eq!(ob.flush_to(&mut w).unwrap().0, Flush::Drained);
        assert_eq!(w.out, b"hello !");
        assert!(ob.is_empty());
        let mut spare = Spare::new();
        ob.release(&mut spare);
        assert_eq!(
            ob.chunks.capacity(),
            0,
            "a drained outbox keeps no heap memory"
        );
        // The next delivery reuses the released queue instead of allocating one.
        let cap = spare[0].capacity();
        ob.push_reusing(Bytes::from_static(b"again"), &mut spare);
        assert!(spare.is_empty());
        assert_eq!(ob.chunks.capacity(), cap);
    }
}
