//! Phase changes of one connection. Each sets the new phase, queues what the change itself
//! writes (an answer, a handshake refusal, a close frame, a ping) and returns the deadline
//! that governs the new phase. The server only files that deadline in its timer heap and
//! puts the connection on its flush list; which timer a phase runs on is decided here, next
//! to [`Conn::on_deadline`], which says what its expiry means.

use std::time::{Duration, Instant};

use tungstenite::Bytes;

use crate::config::Timings;
use crate::response::Persist;
use crate::subscription::Subscription;
use crate::websocket;

use super::{Backlog, Conn, Hold, Phase, WsState};

/// How long a closing connection may take to drain its last bytes and see the peer's FIN.
const CLOSE_LINGER: Duration = Duration::from_secs(5);
/// How long a request (publish, online query, stats) may wait for the store before its
/// connection is given up. The stores answer long before (Redis commands time out well under
/// PHP's 1 s); this only guards against a lost answer keeping a connection forever.
const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

impl Conn {
    /// A request head is (about to be) read: a new connection, or a keep-alive one whose next
    /// request began. The phase stays `Request`; the head timeout starts.
    pub fn expect_request(t: &Timings, now: Instant) -> Instant {
        now + t.header_timeout
    }

    /// Queues a complete HTTP answer. Keep-alive goes back to waiting for a request (idle
    /// timeout); otherwise the connection drains and closes (linger). A HEAD request gets
    /// the head only; it keeps its Content-Length, as for the GET (RFC 9110 §9.3.2).
    pub fn answer(&mut self, mut bytes: Vec<u8>, persist: Persist, t: &Timings) -> Instant {
        if std::mem::take(&mut self.head_only)
            && let Some(end) = bytes.windows(4).position(|w| w == b"\r\n\r\n")
        {
            bytes.truncate(end + 4);
        }
        self.outbox.push(Bytes::from(bytes));
        let now = Instant::now();
        match persist {
            Persist::KeepAlive => {
                self.phase = Phase::Request(None);
                now + t.keepalive_timeout
            }
            Persist::Close => {
                self.phase = Phase::Closing;
                now + CLOSE_LINGER
            }
        }
    }

    /// A complete request waits for the store; pipelined input stays unparsed meanwhile.
    pub fn await_store(&mut self) -> Instant {
        self.phase = Phase::Busy;
        Instant::now() + BUSY_TIMEOUT
    }

    /// Holds a long poll on `sub` until a message arrives or its timeout.
    pub fn hold(
        &mut self,
        sub: Subscription,
        persist: Persist,
        client: Option<Box<str>>,
        t: &Timings,
    ) -> Instant {
        self.phase = Phase::Hold(Box::new(Hold {
            sub,
            pending: Default::default(),
            backlog: Backlog::Done,
            keep_alive: persist == Persist::KeepAlive,
            mid_absent: false,
            client,
        }));
        Instant::now() + t.long_poll_timeout
    }

    /// The handshake went out (queued by the caller); the connection now carries `sub`. The
    /// deadline is the first ping tick.
    pub fn open_websocket(
        &mut self,
        sub: Subscription,
        client: Option<Box<str>>,
        t: &Timings,
    ) -> Instant {
        let interval = ping_interval(&sub, t);
        let patience = ping_patience(&sub, t);
        self.phase = Phase::WebSocket(Box::new(WsState {
            sub,
            backlog: Backlog::Done,
            parked: Default::default(),
            reader: websocket::Reader::default(),
            unanswered: 0,
            patience,
            stalled: false,
            touched_s: (crate::message::now_ms() / 1000) as u32,
            client,
            partial: None,
        }));
        Instant::now() + interval
    }

    /// Sends a ping (the deadline was a ping tick, see [`Conn::on_deadline`]); the next tick
    /// checks for its pong and for write progress.
    pub fn ping(&mut self, frame: Bytes, t: &Timings, now: Instant) -> Instant {
        self.outbox.push(frame);
        match &self.phase {
            Phase::WebSocket(ws) => now + ping_interval(&ws.sub, t),
            _ => now + t.ws_ping_interval,
        }
    }

    /// Ends a WebSocket with `code`: frames not yet started are dropped, so the close frame
    /// follows at most the half-written one and a client that reads again sees the code
    /// before EOF. Input from now on is discarded.
    pub fn close_websocket(&mut self, code: u16, reason: &str) -> Instant {
        // Never the handshake answer itself: a socket closed in the pass that opened it
        // (evicted by a newer connection at once) still gets its 101 first.
        if !self.handshake_pending {
            self.outbox.truncate_unstarted();
        }
        self.refuse_websocket(code, reason)
    }

    /// Closes a WebSocket after everything queued so far (a handshake just answered with a
    /// refused subscription: the client reloads its config only on the close code, never on
    /// an HTTP error).
    pub fn refuse_websocket(&mut self, code: u16, reason: &str) -> Instant {
        self.outbox.push(websocket::close_frame(code, reason));
        self.phase = Phase::Closing;
        self.rbuf = bytes::BytesMut::new();
        Instant::now() + CLOSE_LINGER
    }

    /// The peer half-closed while an answer is still queued: let it drain, keeping the
    /// deadline already set.
    pub fn drain_then_close(&mut self) {
        self.phase = Phase::Closing;
    }
}

/// v5 clients expect the text `ping` at least every 10 s (their watchdog fires at 20 s,
/// docs/v5.md, "Keep-alive").
pub const V5_PING_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);

/// Unanswered pings a WebSocket carrying `sub` is allowed before it is closed with 1001.
///
/// v3/v4: one. The browser's network stack answers a control Ping itself, so a pong missing
/// for a whole `WS_PING_INTERVAL` means a dead peer. v5: the `pong` is sent by the page's own
/// script, from the handler of the text `ping`, which does not run while the page is busy or
/// frozen in the background (docs/v5.md, "Keep-alive"). So a v5 socket gets the same
/// `WS_PING_INTERVAL` of silence as v3/v4 (pings every 10 s), and never fewer than two pings:
/// the client itself gives the server 20 s (its watchdog), the server gives it at least as
/// long.
pub fn ping_patience(sub: &Subscription, t: &Timings) -> u16 {
    if !sub.json_rpc {
        return 1;
    }
    let interval = ping_interval(sub, t).as_millis().max(1);
    let n = t.ws_ping_interval.as_millis().div_ceil(interval);
    u16::try_from(n).unwrap_or(u16::MAX).max(2)
}

/// The ping tick of a WebSocket carrying `sub`.
pub fn ping_interval(sub: &Subscription, t: &Timings) -> std::time::Duration {
    if sub.json_rpc {
        t.ws_ping_interval.min(V5_PING_INTERVAL)
    } else {
        t.ws_ping_interval
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::listener::Stream;
    use crate::route::Role;
    use std::os::unix::net::UnixStream;

    fn timings() -> Timings {
        Timings {
            long_poll_timeout: Duration::from_secs(40),
            header_timeout: Duration::from_secs(10),
            keepalive_timeout: Duration::from_secs(75),
            ws_ping_interval: Duration::from_secs(20),
            shutdown_timeout: Duration::from_secs(5),
        }
    }

    fn conn() -> (Conn, UnixStream) {
        let (a, b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        let stream = Stream::Unix(mio::net::UnixStream::from_std(a));
        (Conn::new(stream, Role::Sub), b)
    }

    fn within(at: Instant, d: Duration) -> bool {
        let now = Instant::now();
        at <= now + d && at + Duration::from_secs(1) >= now + d
    }

    #[test]
    fn keep_alive_answer_waits_for_the_next_request_on_the_idle_timer() {
        let (mut c, _peer) = conn();
        let at = c.answer(
            b"HTTP/1.1 200 OK\r\n\r\nbody".to_vec(),
            Persist::KeepAlive,
            &timings(),
        );
        assert!(matches!(c.phase, Phase::Request(None)));
        assert!(within(at, Duration::from_secs(75)));
        assert_eq!(c.outbox.queued(), 23);
    }

    #[test]
    fn closing_answer_lingers_and_head_request_gets_the_head_only() {
        let (mut c, _peer) = conn();
        c.head_only = true;
        let at = c.answer(
            b"HTTP/1.1 200 OK\r\n\r\nbody".to_vec(),
            Persist::Close,
            &timings(),
        );
        assert!(matches!(c.phase, Phase::Closing));
        assert!(within(at, CLOSE_LINGER));
        assert_eq!(c.outbox.queued(), 19);
        assert!(!c.head_only, "HEAD applies to one answer");
    }

    #[test]
    fn a_close_right_after_the_handshake_keeps_the_101() {
        let (mut c, _peer) = conn();
        c.outbox.push(Bytes::from_static(
            b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
        ));
        c.handshake_pending = true;
        c.outbox.push(Bytes::from_static(b"frame"));
        c.close_websocket(4029, "Too many connections");
        // The 101 (38 bytes) and, since nothing may be dropped before it is out, the frame,
        // then the close frame.
        assert!(c.outbox.queued() > 38 + 5, "{}", c.outbox.queued());
        c.handshake_pending = false;
        c.outbox.push(Bytes::from_static(b"more"));
        let before = c.outbox.queued();
        c.close_websocket(1008, "slow");
        assert!(
            c.outbox.queued() < before,
            "once the 101 is out, unsent frames go"
        );
    }

    #[test]
    fn each_phase_runs_on_its_own_timer() {
        let (mut c, _peer) = conn();
        assert!(within(c.await_store(), BUSY_TIMEOUT));
        assert!(matches!(c.phase, Phase::Busy));
        let sub = Subscription::default();
        let at = c.hold(sub.clone(), Persist::KeepAlive, None, &timings());
        assert!(within(at, Duration::from_secs(40)));
        assert!(matches!(&c.phase, Phase::Hold(h) if h.keep_alive && h.backlog == Backlog::Done));
        let at = c.open_websocket(sub, None, &timings());
        assert!(within(at, Duration::from_secs(20)));
        assert!(c.is_websocket());
        let at = c.ping(Bytes::from_static(b"ping"), &timings(), Instant::now());
        assert!(within(at, Duration::from_secs(20)));
        assert_eq!(c.outbox.queued(), 4);
    }

    #[test]
    fn close_websocket_drops_unstarted_frames_and_queues_the_close_frame() {
        let (mut c, _peer) = conn();
        c.outbox.push(Bytes::from_static(b"queued data frame"));
        c.rbuf.extend_from_slice(b"unread input");
        let at = c.close_websocket(1008, "slow consumer");
        assert!(within(at, CLOSE_LINGER));
        assert!(matches!(c.phase, Phase::Closing));
        assert!(c.rbuf.is_empty());
        assert_eq!(
            c.outbox.queued(),
            websocket::close_frame(1008, "slow consumer").len()
        );
    }

    #[test]
    fn refused_websocket_keeps_the_handshake_before_the_close_frame() {
        let (mut c, _peer) = conn();
        let handshake: &[u8] = b"HTTP/1.1 101 Switching Protocols\r\n\r\n";
        c.outbox.push(Bytes::from_static(handshake));
        c.refuse_websocket(4010, "bad channel");
        assert_eq!(
            c.outbox.queued(),
            handshake.len() + websocket::close_frame(4010, "bad channel").len()
        );
    }
}
