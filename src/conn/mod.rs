//! One client connection: its socket, read buffer, bounded outbox, deadline and the phase it
//! is in. Phases are a state enum; each variant owns the data of its phase, and large or rare
//! ones are boxed so an idle connection stays small.
//!
//! A connection never touches another one: cross-connection work (fan-out, eviction) happens
//! in [`crate::server`].

use std::io::{self, Read, Write};
use std::sync::Arc;

use crate::http::RequestHead;
use crate::listener::Stream;
use crate::message::Message;
use crate::outbox::{Flush, Outbox};
use crate::route::Role;
use crate::subscription::Subscription;
use crate::websocket;

pub mod input;
mod transition;

/// Bytes read per `read` call into the shared scratch buffer.
pub const READ_CHUNK: usize = 16 * 1024;

pub enum Phase {
    /// Waiting for a request: `None` until the head is parsed, then the head while the body
    /// arrives.
    Request(Option<Box<RequestHead>>),
    /// A long poll held until a message or its timeout.
    Hold(Box<Hold>),
    WebSocket(Box<WsState>),
    /// A complete request waits for the store (a publish, an online query, stats); its answer
    /// is written when the store replies. Pipelined input waits unparsed, and at most
    /// 64 KiB of it is read (back-pressure).
    Busy,
    /// Writing the last bytes; then the write side is shut and input discarded until EOF or
    /// the deadline.
    Closing,
}

/// Where a subscriber's replay from `mid` stands (docs/protocol.md#resuming-by-mid, docs/protocol.md#resuming-by-mid).
/// Until it is `Done`, live messages are parked instead of sent, so the client's `mid` never
/// moves past backlog it has not seen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backlog {
    Done,
    /// A store job with this token is reading the next chunk.
    Pending(u64),
    /// The read after this id failed; it is retried (live messages stay parked meanwhile).
    Failed(crate::message::Mid),
    /// The backlog went out, up to this id. A live message at or below it was in it: it was
    /// stored before the read and its announcement (from a shared store) came after.
    Sent(crate::message::Mid),
    /// More backlog is stored after this id, but the outbox is above its low-water mark: the
    /// next chunk is read once the client has taken what it was sent (docs/loop.md).
    Throttled(crate::message::Mid),
}

impl Backlog {
    /// Live messages wait (parked) instead of going out, so the client's `mid` never moves
    /// past backlog it has not seen.
    pub fn parks_live(self) -> bool {
        matches!(
            self,
            Backlog::Pending(_) | Backlog::Failed(_) | Backlog::Throttled(_)
        )
    }
}

/// Live messages held back for one subscriber, bounded in bytes. Messages beyond the bound
/// are dropped here, not lost: they are stored, and they are newer than every message kept,
/// so the subscriber gets them from the store by resuming after the last one it was sent
/// (a long poll's next request; a WebSocket's next backlog read).
#[derive(Default)]
pub struct Held {
    pub messages: Vec<Arc<Message>>,
    pub bytes: usize,
    /// A message did not fit; the subscriber must read the store after what it was sent.
    pub dropped: bool,
}

impl Held {
    /// Keeps `msg` unless that would pass `cap` bytes (the first message is always kept).
    pub fn push(&mut self, msg: &Arc<Message>, cap: usize) {
        let size = msg.body.len() + 64;
        if self.dropped || (!self.messages.is_empty() && self.bytes + size > cap) {
            self.dropped = true;
            return;
        }
        self.bytes += size;
        self.messages.push(Arc::clone(msg));
    }

    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }

    pub fn take(&mut self) -> Held {
        std::mem::take(self)
    }
}

pub struct Hold {
    pub sub: Subscription,
    /// Messages for this poll: the backlog and live ones, answered together.
    pub pending: Held,
    pub backlog: Backlog,
    pub keep_alive: bool,
    /// The poll came without a `mid`: `sub.mid` holds the newest id this instance had seen
    /// when it subscribed, so an earlier message announced late (Redis delivers a publish's
    /// announcement after its 200) is not taken for a new one; its 304 names the newest id.
    pub mid_absent: bool,
    pub client: Option<Box<str>>,
}

pub struct WsState {
    pub sub: Subscription,
    pub backlog: Backlog,
    /// Live messages that came while the backlog was being read; sent after it.
    pub parked: Held,
    pub reader: websocket::Reader,
    /// Pings sent since the peer last answered (a Pong; on v5 any text).
    pub unanswered: u16,
    /// Unanswered pings after which the next tick closes with 1001: 1 on v3/v4, more on v5
    /// (`ping_patience` in `conn/transition.rs`).
    pub patience: u16,
    /// The outbox made no progress since the last ping tick (send stall detection).
    pub stalled: bool,
    /// Unix seconds of the last presence touch (v5 `pong`s renew it a few times per online
    /// TTL, not each one: docs/redis.md, "v5 presence").
    pub touched_s: u32,
    pub client: Option<Box<str>>,
    /// v4: a fragmented binary client message in progress.
    pub partial: Option<Vec<u8>>,
}

pub struct Conn {
    pub stream: Stream,
    pub role: Role,
    pub phase: Phase,
    /// Unparsed input; capacity 0 while idle.
    pub rbuf: bytes::BytesMut,
    pub outbox: Outbox,
    /// The one deadline that matters in the current phase; timer entries that differ are stale.
    pub deadline: Option<crate::timers::Deadline>,
    /// Sequence number of the last publish delivered here: de-duplicates a message that
    /// reaches the connection through several of its channels without a per-publish set.
    pub last_seq: u64,
    /// Queued in the server's flush list for this pass.
    pub dirty: bool,
    /// Queued in the server's ready list: it has input or work to resume.
    pub ready: bool,
    /// Input handling stopped because the outbox passed its high-water mark; it resumes when
    /// the outbox drains below the low-water mark.
    pub throttled: bool,
    /// The write side was shut (in `Closing`).
    pub write_shut: bool,
    /// The peer's FIN (or a read error) was seen.
    pub peer_closed: bool,
    /// The request being answered is a HEAD: its answer goes out without the body.
    pub head_only: bool,
    /// A WebSocket's 101 may not be out yet: a close must not drop it (the client would read
    /// a close frame where it expects the handshake answer).
    pub handshake_pending: bool,
    /// `WRITABLE` is in the socket's epoll interest: only while a write is blocked
    /// (docs/loop.md, "Write interest").
    pub write_interest: bool,
    /// The last read stopped at `WouldBlock` and no readable event came since: the socket
    /// holds nothing, so serving the connection again (after a store answer) does not read.
    /// Edge-triggered epoll reports any input or FIN that arrives later (docs/loop.md).
    pub drained: bool,
}

/// What [`Conn::deliver`] did with a frame.
#[derive(Debug, PartialEq, Eq)]
pub enum Delivered {
    /// Written whole to the socket.
    Written,
    /// (Partly) queued: the connection needs a flush.
    Queued,
}

/// What an expired deadline asks the loop to do.
#[derive(Debug, PartialEq, Eq)]
pub enum Expired {
    /// A keep-alive connection idled out: close.
    Idle,
    /// A request head or body did not complete in time: 408.
    RequestTimeout,
    /// A long poll's time is up: answer (304 when nothing came).
    HoldTimeout,
    /// Send a ping; the next tick checks for its pong.
    Ping,
    /// The peer did not answer the last ping: close with 1001.
    MissedPong,
    /// The peer took none of its queued output for a whole ping interval: close with 1008.
    Stalled,
    /// The store never answered the request: give the connection up.
    StoreLost,
    /// A closing connection's linger is over.
    LingerOver,
}

/// Result of draining the socket.
#[derive(Debug, PartialEq, Eq)]
pub enum ReadState {
    /// `WouldBlock` reached; the peer is still there.
    Open,
    /// Stopped at the buffer cap with input possibly left in the socket: process, then read
    /// again (no new edge will come for it).
    Capped,
    /// The peer closed its side (or the read failed).
    Eof,
}

impl Conn {
    pub fn new(stream: Stream, role: Role) -> Conn {
        Conn {
            stream,
            role,
            phase: Phase::Request(None),
            rbuf: bytes::BytesMut::new(),
            outbox: Outbox::default(),
            deadline: None,
            last_seq: 0,
            dirty: false,
            ready: false,
            throttled: false,
            write_shut: false,
            peer_closed: false,
            head_only: false,
            write_interest: false,
            handshake_pending: false,
            drained: false,
        }
    }

    /// Reads until `WouldBlock`, appending to `rbuf` (through `scratch`, so an idle
    /// connection keeps no buffer of its own). Stops early once `rbuf` exceeds `cap`.
    pub fn read_available(&mut self, scratch: &mut [u8], cap: usize) -> ReadState {
        loop {
            if self.rbuf.len() > cap {
                return ReadState::Capped;
            }
            match self.stream.read(scratch) {
                Ok(0) => return ReadState::Eof,
                Ok(n) => {
                    if matches!(self.phase, Phase::Closing) {
                        continue;
                    }
                    self.rbuf.extend_from_slice(&scratch[..n]);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.drained = true;
                    return ReadState::Open;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    log::debug!("read error: {e}");
                    return ReadState::Eof;
                }
            }
        }
    }

    /// Writes queued output. `Ok(true)` when the outbox is empty afterwards.
    /// Hands a fan-out frame to a WebSocket subscriber. With nothing queued it is written at
    /// once: one write per delivery costs less than queuing it and flushing at the end of the
    /// pass (measured, docs/loop.md "Write interest"), and the frame's buffer is not even
    /// shared. Otherwise, or for what the socket did not take, it is queued; `Queued` asks
    /// the caller to put the connection on the flush list, which also reports a write error.
    pub fn deliver(
        &mut self,
        frame: &tungstenite::Bytes,
        spare: &mut crate::outbox::Spare,
    ) -> Delivered {
        // Full, interrupted or failed: queued whole; the flush waits or reports.
        if self.outbox.is_empty()
            && let Ok(n) = self.stream.write(frame)
        {
            if let Phase::WebSocket(ws) = &mut self.phase {
                ws.stalled = false;
            }
            if n == frame.len() {
                return Delivered::Written;
            }
            // Started: a close frame may only follow its end.
            self.outbox.push_started(frame.clone(), n, spare);
            return Delivered::Queued;
        }
        self.outbox.push_reusing(frame.clone(), spare);
        Delivered::Queued
    }

    pub fn flush(
        &mut self,
        registry: &mio::Registry,
        token: mio::Token,
        spare: &mut crate::outbox::Spare,
    ) -> io::Result<bool> {
        let (state, written) = self.outbox.flush_to(&mut self.stream)?;
        self.outbox.release(spare);
        if state == Flush::Drained {
            self.handshake_pending = false;
        }
        if written > 0
            && let Phase::WebSocket(ws) = &mut self.phase
        {
            ws.stalled = false;
        }
        // Ask for writability only while blocked. Registered for it always, every read by
        // the peer would post a new edge and wake the loop for nothing (one wake-up per
        // delivery or two under paced fan-out). Adding the interest re-checks readiness, so
        // space that opened since the `WouldBlock` is reported at once.
        let blocked = state == Flush::Blocked;
        if blocked != self.write_interest {
            let interest = if blocked {
                mio::Interest::READABLE | mio::Interest::WRITABLE
            } else {
                mio::Interest::READABLE
            };
            registry.reregister(&mut self.stream, token, interest)?;
            self.write_interest = blocked;
        }
        Ok(!blocked)
    }

    /// What the connection's deadline means in its phase. For a WebSocket this is the ping
    /// tick: it records that a ping goes out now, unless the peer missed the last one or made
    /// no progress on its queued output since the last tick.
    pub fn on_deadline(&mut self) -> Expired {
        match &mut self.phase {
            Phase::Request(None) if self.rbuf.is_empty() => Expired::Idle,
            Phase::Request(_) => Expired::RequestTimeout,
            Phase::Hold(_) => Expired::HoldTimeout,
            Phase::WebSocket(ws) if ws.unanswered >= ws.patience => Expired::MissedPong,
            Phase::WebSocket(ws) if ws.stalled && !self.outbox.is_empty() => Expired::Stalled,
            Phase::WebSocket(ws) => {
                ws.stalled = !self.outbox.is_empty();
                ws.unanswered = ws.unanswered.saturating_add(1);
                Expired::Ping
            }
            Phase::Busy => Expired::StoreLost,
            Phase::Closing => Expired::LingerOver,
        }
    }

    pub fn is_websocket(&self) -> bool {
        matches!(self.phase, Phase::WebSocket(_))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_connection_is_small() {
        // Pinned so growth is a conscious decision: every idle subscriber pays for its `Conn`
        // and its boxed phase (docs/loop.md, "Idle memory"). A boxed struct costs its size
        // rounded up to the allocator's 16-byte steps, plus 8.
        use std::mem::size_of;
        let sizes = [
            ("Conn", size_of::<Conn>(), 152),
            ("WsState", size_of::<WsState>(), 256),
            ("Hold", size_of::<Hold>(), 200),
            ("Subscription", size_of::<Subscription>(), 112),
        ];
        for (name, size, bound) in sizes {
            assert!(size <= bound, "{name} is {size} bytes, more than {bound}");
        }
    }
}
