//! Serving one connection: reading under back-pressure, acting on each step of its input
//! ([`crate::conn::input`]), its deadline, and writing its outbox.
//!
//! Nothing here calls itself, directly or through the handlers: work that becomes possible
//! for a connection later (a store answer, a finished long poll, an outbox that drained) puts
//! it on the ready list, and the loop serves that list (docs/loop.md). The stack depth is
//! therefore the same whatever a client sends, and one client gets at most
//! [`STEPS_PER_TURN`] steps before the others get theirs.

use std::time::Instant;

use crate::conn::input::{self, Input, InputLimits};
use crate::conn::{Backlog, Conn, Expired, Phase, ReadState};
use crate::error::{HttpError, close};
use crate::response::Persist;
use crate::slab::ConnId;

use super::Server;

/// Requests or frames one connection is served in a row before it goes to the back of the
/// ready list.
const STEPS_PER_TURN: usize = 64;

impl Server {
    fn input_limits(&self) -> InputLimits {
        InputLimits {
            max_head: self.cfg.limits.max_header_size,
            max_payload: self.cfg.limits.max_payload,
        }
    }

    /// Input is not read or acted on while the outbox is above this (half of
    /// `OUTBOX_LIMIT`): answers and pongs wait for the client to read, as fan-out does.
    pub(super) fn high_water(&self) -> usize {
        self.cfg.limits.outbox_limit / 2
    }

    /// Input, and a throttled backlog replay, resume when the outbox is below this.
    pub(super) fn low_water(&self) -> usize {
        self.cfg.limits.outbox_limit / 8
    }

    /// Puts a connection on the ready list: the loop serves it later in this pass.
    pub(super) fn mark_ready(&mut self, id: ConnId) {
        if let Some(conn) = self.conns.get_mut(id)
            && !conn.ready
        {
            conn.ready = true;
            self.ready.push(id);
        }
    }

    /// Serves the connections that were ready when the call began; `false` when there were
    /// none. Those made ready meanwhile wait for the next call.
    pub(super) fn serve_ready(&mut self) -> bool {
        if self.ready.is_empty() {
            return false;
        }
        let batch = std::mem::take(&mut self.ready);
        for &id in &batch {
            if let Some(conn) = self.conns.get_mut(id) {
                conn.ready = false;
                self.serve(id);
            }
        }
        let mut batch = batch;
        batch.clear();
        if self.ready.is_empty() {
            // Keep the allocation for the next pass.
            self.ready = batch;
        }
        true
    }

    /// Acts on buffered input, then reads more, until the socket is drained, the phase waits
    /// for something else (the store, a message), the outbox is above its high-water mark,
    /// or the turn is over.
    pub(super) fn serve(&mut self, id: ConnId) {
        let limits = self.input_limits();
        let mut steps = 0;
        loop {
            // 1. Act on what is buffered.
            if !self.act_on_buffered(id, &mut steps) {
                return;
            }
            // 2. Read more, unless the peer is gone or the buffer holds all the phase may.
            let Some(conn) = self.conns.get_mut(id) else {
                return;
            };
            if conn.peer_closed {
                return self.on_eof(id);
            }
            let cap = input::read_cap(&conn.phase, limits);
            if conn.rbuf.len() > cap {
                if matches!(conn.phase, Phase::Busy) {
                    // Back-pressure on a pipelining client: reading resumes when the store
                    // has answered (answer_busy puts the connection on the ready list).
                    return;
                }
                // Every other phase consumes or refuses a full buffer; guard anyway.
                log::warn!("{id}: input buffer full without progress; closing");
                return self.close_now(id);
            }
            if conn.drained {
                // Nothing came since the last WouldBlock; the next edge brings it.
                return;
            }
            let was_idle = matches!(conn.phase, Phase::Request(None)) && conn.rbuf.is_empty();
            let state = conn.read_available(&mut self.scratch, cap);
            if was_idle && !conn.rbuf.is_empty() {
                // A keep-alive connection began a new request: the head timeout applies now.
                let at = Conn::expect_request(&self.cfg.timings, Instant::now());
                self.set_deadline(id, Some(at));
            }
            match state {
                // Drained to WouldBlock: act on what came, then wait for the next edge.
                ReadState::Open => {
                    self.act_on_buffered(id, &mut steps);
                    return;
                }
                ReadState::Capped => {}
                ReadState::Eof => {
                    if let Some(conn) = self.conns.get_mut(id) {
                        conn.peer_closed = true;
                    }
                }
            }
        }
    }

    /// Acts on buffered input until it needs more bytes (`true`: go on reading) or serving
    /// stops for now (`false`): the outbox is above its high-water mark (resumed by
    /// flush_conn), the turn is over (the connection is back on the ready list), or the
    /// connection closed.
    fn act_on_buffered(&mut self, id: ConnId, steps: &mut usize) -> bool {
        let limits = self.input_limits();
        let high = self.high_water();
        loop {
            let Some(conn) = self.conns.get_mut(id) else {
                return false;
            };
            if conn.outbox.footprint() > high {
                conn.throttled = true;
                return false;
            }
            let step = input::next_input(&mut conn.phase, &mut conn.rbuf, limits);
            if matches!(step, Input::Wait) {
                return true;
            }
            self.act(id, step);
            *steps += 1;
            if *steps >= STEPS_PER_TURN {
                self.mark_ready(id);
                return false;
            }
        }
    }

    /// Acts on one step of a connection's input.
    fn act(&mut self, id: ConnId, step: Input) {
        match step {
            Input::Wait => {}
            Input::Request(head, body) => self.handle_request(id, *head, body),
            Input::BadRequest(e) => {
                log::info!("{id}: bad request: {e:?}");
                self.respond_error(id, e.into(), Persist::Close);
            }
            Input::Frame(frame) => self.on_ws_frame(id, frame),
            Input::Violation(code) => {
                log::info!("{id}: websocket protocol violation, closing with {code}");
                self.close_ws(id, code, input::violation_reason(code));
            }
            Input::Overrun => {
                log::info!("{id}: input while a long poll is held; closing");
                self.close_now(id);
            }
        }
    }

    fn on_eof(&mut self, id: ConnId) {
        let Some(conn) = self.conns.get_mut(id) else {
            return;
        };
        conn.peer_closed = true;
        match conn.phase {
            // An answer is still on its way to a half-closed client: let it drain.
            Phase::Request(_) | Phase::Closing if !conn.outbox.is_empty() => {
                conn.drain_then_close();
            }
            // A publish in the store completes whether or not the client waits (PHP may hang
            // up early); the answer then finds the peer gone and closes.
            Phase::Busy => {}
            _ => {
                log::trace!("{id}: peer closed");
                self.close_now(id);
            }
        }
    }

    // ---- timers ----

    pub(super) fn set_deadline(&mut self, id: ConnId, at: Option<Instant>) {
        if let Some(conn) = self.conns.get_mut(id) {
            conn.deadline = at.map(|at| self.timers.schedule(at, id));
        }
        // Stale entries (each moved deadline leaves one) go once they make up a third of the
        // queue: an idle connection then costs about one entry, not two, and each entry is
        // looked at O(1) times per schedule on average.
        if self.timers.len() > self.conns.len() * 3 / 2 + 64 {
            let conns = &self.conns;
            self.timers
                .retain(|d, id| conns.get(id).is_some_and(|c| c.deadline == Some(d)));
        }
    }

    pub(super) fn expire_timers(&mut self, now: Instant) {
        let mut expired = std::mem::take(&mut self.expired);
        self.timers.pop_expired(now, &mut expired);
        for (d, id) in expired.drain(..) {
            let Some(conn) = self.conns.get_mut(id) else {
                continue;
            };
            if conn.deadline != Some(d) {
                continue;
            }
            conn.deadline = None;
            match conn.on_deadline() {
                Expired::Idle => {
                    log::trace!("{id}: idle timeout");
                    self.close_now(id);
                }
                Expired::RequestTimeout => {
                    log::info!("{id}: request not complete within HEADER_TIMEOUT; closing");
                    self.respond_error(id, HttpError::Timeout.into(), Persist::Close);
                }
                Expired::HoldTimeout => self.finish_hold(id, false),
                Expired::Ping => {
                    let v5 = matches!(&conn.phase, Phase::WebSocket(ws) if ws.sub.json_rpc);
                    let frame = if v5 {
                        self.v5_ping_frame.clone()
                    } else {
                        self.ping_frame.clone()
                    };
                    let at = conn.ping(frame, &self.cfg.timings, now);
                    self.mark_dirty(id);
                    self.set_deadline(id, Some(at));
                }
                Expired::MissedPong => {
                    log::debug!("{id}: no pong to the last ping; closing with 1001");
                    self.close_ws(id, close::GOING_AWAY, "no pong");
                }
                Expired::Stalled => {
                    log::info!("{id}: slow consumer (no write progress); closing with 1008");
                    self.metrics.slow_consumer_disconnects += 1;
                    self.close_ws(id, close::POLICY, "slow consumer");
                }
                Expired::StoreLost => {
                    log::warn!("{id}: no answer from the store in time; closing");
                    self.close_now(id);
                }
                Expired::LingerOver => self.close_now(id),
            }
        }
        self.expired = expired;
    }

    // ---- writing ----

    pub(super) fn mark_dirty(&mut self, id: ConnId) {
        if let Some(conn) = self.conns.get_mut(id)
            && !conn.dirty
        {
            conn.dirty = true;
            self.dirty.push(id);
        }
    }

    pub(super) fn flush_dirty(&mut self) {
        while !self.dirty.is_empty() {
            let batch = std::mem::take(&mut self.dirty);
            for id in batch {
                let Some(conn) = self.conns.get_mut(id) else {
                    continue;
                };
                conn.dirty = false;
                if matches!(&conn.phase, Phase::Hold(h) if !h.pending.is_empty() && h.backlog == Backlog::Done)
                {
                    self.finish_hold(id, false);
                }
                self.flush_conn(id);
            }
        }
    }

    pub(super) fn flush_conn(&mut self, id: ConnId) {
        let low = self.low_water();
        let Some(conn) = self.conns.get_mut(id) else {
            return;
        };
        match conn.flush(self.poll.registry(), id.token(), &mut self.spare_queues) {
            Ok(true) if matches!(conn.phase, Phase::Closing) => {
                if conn.peer_closed {
                    self.close_now(id);
                } else if !conn.write_shut {
                    // Half-close, then wait for the peer's FIN: closing with unread input
                    // would send a reset that can destroy the answer in flight.
                    conn.write_shut = true;
                    conn.stream.shutdown_write();
                }
                return;
            }
            Ok(_) => {}
            Err(e) => {
                log::debug!("{id}: write failed: {e}");
                self.close_now(id);
                return;
            }
        }
        if conn.outbox.footprint() > low {
            return;
        }
        let resume = std::mem::take(&mut conn.throttled);
        let replay = match &conn.phase {
            Phase::WebSocket(ws) => match ws.backlog {
                Backlog::Throttled(after) => Some((ws.sub.receivers.clone(), after)),
                _ => None,
            },
            _ => None,
        };
        if resume {
            self.mark_ready(id);
        }
        if let Some((receivers, after)) = replay {
            self.request_backlog(id, receivers, after);
        }
    }
}
