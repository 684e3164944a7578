//! The loop's side of the store: handing out jobs with a token, remembering what waits for
//! each answer, and acting on the answers (publish replies and fan-out, backlog replay, online
//! and stats answers, messages from other instances, the store going up and down).
//!
//! Every answer is checked against the present state of its connection: the connection may
//! have closed, or moved on to another request, while the job ran.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::channel::ChannelId;
use crate::conn::{Backlog, Held, Phase};
use crate::error::ApiError;
use crate::message::{Message, Mid, now_ms};
use crate::response::{self, Persist};
use crate::slab::ConnId;
use crate::stats;
use crate::store::{
    BacklogChunk, CatchUpChunk, Done, Draft, Job, Minted, PresenceSync, Receiver, StoreError, Token,
};
use crate::websocket;

use super::{BACKLOG_CHUNK, BACKLOG_CHUNK_BYTES, Server};

/// A job unanswered this long counts as failed, so that a lost answer neither leaks its
/// waiter nor leaves a subscriber waiting for its backlog forever.
const LOST_AFTER: Duration = Duration::from_secs(60);

/// At most one "store queue full" warning per this interval.
const QUEUE_WARN_EVERY: Duration = Duration::from_secs(60);

/// What waits for a store answer.
pub(super) enum Waiter {
    /// A publish: `reply` is the HTTP request to answer (none for a WebSocket client publish).
    /// Its messages are delivered from the store's `Done::Deliver`.
    Publish {
        reply: Option<(ConnId, Persist)>,
        /// v5 backend calls: the JSON answers for success and for a store failure.
        json: Option<Box<(Vec<u8>, Vec<u8>)>>,
    },
    /// The next backlog chunk of a subscriber, read after `after`: the last id it was sent
    /// (or its `mid`).
    Backlog { conn: ConnId, after: Mid },
    /// A legacy online query.
    Online(OnlineWait),
    /// `/server-stat/`: this instance's fresh entry, waiting for the others.
    Stats {
        conn: ConnId,
        persist: Persist,
        own: String,
    },
    /// v4 channel or server stats (`super::v4`), waiting for presence or the other
    /// instances' stats.
    V4Stats(Box<super::v4::StatsPlan>),
    /// A catch-up read for `receivers` (`super::catchup`).
    CatchUp {
        receivers: Vec<Receiver>,
        generation: u64,
    },
    /// A v5 presence sync (`super::v5`).
    Presence,
    /// A v5 `getUsersLastSeen` asked of a shared store (`super::v5`).
    LastSeen(Box<super::v5::LastSeenWait>),
}

/// A legacy online query: `local[i]` is the local subscriber count of `channels[i]`; the
/// store is asked about the channels with none.
pub(super) struct OnlineWait {
    pub conn: ConnId,
    pub persist: Persist,
    pub channels: Vec<ChannelId>,
    pub local: Vec<usize>,
}

/// A store answer without its token.
#[derive(Debug)]
enum Outcome {
    Published(Result<Vec<Minted>, StoreError>),
    Backlog(Result<BacklogChunk, StoreError>),
    Online(Result<Vec<bool>, StoreError>),
    Stats(Result<Vec<String>, StoreError>),
    CatchUp(Result<CatchUpChunk, StoreError>),
    Presence(Result<PresenceSync, StoreError>),
    LastSeen(Result<Vec<Option<u64>>, StoreError>),
}

impl Outcome {
    /// The answer a failing store gives to the job `waiter` waits for (a v4 stats plan fails
    /// over to local data whichever job it waited for).
    fn failure(waiter: &Waiter, why: &str) -> Outcome {
        let e = StoreError(why.to_owned());
        match waiter {
            Waiter::Publish { .. } => Outcome::Published(Err(e)),
            Waiter::Backlog { .. } => Outcome::Backlog(Err(e)),
            Waiter::Online(_) => Outcome::Online(Err(e)),
            Waiter::Stats { .. } | Waiter::V4Stats(_) => Outcome::Stats(Err(e)),
            Waiter::CatchUp { .. } => Outcome::CatchUp(Err(e)),
            Waiter::Presence => Outcome::Presence(Err(e)),
            Waiter::LastSeen(_) => Outcome::LastSeen(Err(e)),
        }
    }
}

impl Server {
    pub(super) fn next_token(&mut self) -> Token {
        self.next_token += 1;
        self.next_token
    }

    /// Queues a job that gets an answer. `false` when the store refused it (queue full).
    pub(super) fn submit(&mut self, make: impl FnOnce(Token) -> Job, waiter: Waiter) -> bool {
        let token = self.next_token();
        match self.store.submit(make(token)) {
            Ok(()) => {
                self.waiting.insert(token, (Instant::now(), waiter));
                true
            }
            Err(_) => {
                self.queue_full("job refused");
                false
            }
        }
    }

    /// A job the store's queue had no room for. Under overload this happens for every request,
    /// so it is a warning at most once a minute (the total is `push_store_rejected_jobs_total`
    /// in `/metrics`), and debug otherwise.
    pub(super) fn queue_full(&mut self, what: &str) {
        let now = Instant::now();
        if self
            .last_queue_warning
            .is_none_or(|t| now.duration_since(t) > QUEUE_WARN_EVERY)
        {
            self.last_queue_warning = Some(now);
            log::warn!("store queue full: {what} (more within a minute are logged at debug)");
        } else {
            log::debug!("store queue full: {what}");
        }
    }

    /// Queues a job without an answer; a full queue only costs freshness (presence, stats).
    pub(super) fn submit_quiet(&mut self, job: Job) {
        if self.store.submit(job).is_err() {
            log::debug!("store queue full; dropped a presence or stats update");
        }
    }

    pub(super) fn touch(&mut self, channels: &[Receiver]) {
        self.submit_quiet(Job::Touch {
            channels: channels.to_vec(),
        });
    }

    /// Mints ids, stores and announces `drafts`, then fans them out here. `reply` is answered
    /// 200 once the store took the batch, or 503 when it cannot (nothing is published then).
    pub(super) fn publish_batch(&mut self, reply: Option<(ConnId, Persist)>, drafts: Vec<Draft>) {
        if drafts.is_empty() {
            if let Some((id, persist)) = reply {
                self.respond_published(id, persist);
            }
            return;
        }
        if let Some(why) = self.publish_refusal() {
            self.refuse_publish(reply, why);
            return;
        }
        let waiter = Waiter::Publish { reply, json: None };
        if self.submit(|token| Job::Publish { token, drafts }, waiter) {
            if let Some((id, _)) = reply {
                self.set_busy(id);
            }
        } else {
            self.refuse_publish(reply, ApiError::StoreUnavailable);
        }
    }

    /// [`Server::publish_batch`] for a v5 backend call: answered 200 with `ok` once stored, or
    /// with `failed` (JSON-RPC errors) when the store cannot take it (docs/v5.md).
    pub(super) fn publish_json(
        &mut self,
        reply: Option<(ConnId, Persist)>,
        drafts: Vec<Draft>,
        ok: Vec<u8>,
        failed: Vec<u8>,
    ) {
        let refused = self.publish_refusal().is_some();
        let waiter = Waiter::Publish {
            reply,
            json: Some(Box::new((ok, failed.clone()))),
        };
        if !refused && self.submit(|token| Job::Publish { token, drafts }, waiter) {
            if let Some((id, _)) = reply {
                self.set_busy(id);
            }
            return;
        }
        self.metrics.v5_errors += 1;
        if let Some((id, persist)) = reply {
            let r = response::full(200, "application/json", &failed, persist);
            self.respond(id, r, persist);
        }
    }

    /// Why a publish would be refused before it reaches the store, if it would: the store
    /// is down, or shutdown began (docs/restart.md: what is answered 200 must still reach
    /// every subscriber before they are closed, so nothing new is taken).
    pub(super) fn publish_refusal(&self) -> Option<ApiError> {
        if self.shutdown_deadline.is_some() {
            log::debug!("publish refused: shutting down");
            return Some(ApiError::ShuttingDown);
        }
        if let Some(reason) = &self.store_down {
            log::debug!("publish refused: store down ({reason})");
            return Some(ApiError::StoreUnavailable);
        }
        None
    }

    /// One publish for `receivers` with the creation time of now.
    pub(super) fn draft(
        body: tungstenite::Bytes,
        expiry: u32,
        sender: crate::message::Sender,
        kind: Option<String>,
        receivers: Vec<Receiver>,
    ) -> Draft {
        Draft {
            body,
            expiry,
            sender,
            kind,
            receivers,
            created_ms: now_ms(),
            user_params: None,
        }
    }

    fn refuse_publish(&mut self, reply: Option<(ConnId, Persist)>, why: ApiError) {
        self.metrics.count_publish_error("503");
        if let Some((id, persist)) = reply {
            self.respond_error(id, why, persist);
        }
    }

    /// The 503 of a publish the store answered with an error (the connection was Busy).
    fn refuse_busy_publish(&mut self, reply: Option<(ConnId, Persist)>) {
        self.metrics.count_publish_error("503");
        if let Some((id, persist)) = reply {
            self.answer_busy(id, persist, |p| {
                response::error(ApiError::StoreUnavailable, p)
            });
        }
    }

    fn respond_published(&mut self, id: ConnId, persist: Persist) {
        self.answer_busy(id, persist, |p| response::full(200, "text/plain", b"", p));
    }

    /// Answers a request that waited for the store (Busy). The peer may have hung up, or
    /// shutdown begun, meanwhile: then the connection closes after the answer. Otherwise
    /// input that was pipelined behind the request is parsed now; nothing else would look at
    /// it, since it arrived while the connection was Busy.
    pub(super) fn answer_busy(
        &mut self,
        id: ConnId,
        persist: Persist,
        make: impl FnOnce(Persist) -> Vec<u8>,
    ) {
        let Some(conn) = self.conns.get(id) else {
            return;
        };
        let persist = if conn.peer_closed || self.shutdown_deadline.is_some() {
            Persist::Close
        } else {
            persist
        };
        self.respond(id, make(persist), persist);
        // Write it now, not at the end of the pass: PHP waits for it (1 s read timeout) and
        // must not wait behind a large fan-out.
        self.flush_conn(id);
        if persist == Persist::KeepAlive {
            // Reading stopped while Busy once the buffer was full (a pipelining client); no
            // new readiness edge comes for bytes already waiting in the socket, so the loop
            // serves it again (not from here: that would recurse once per pipelined request).
            self.mark_ready(id);
        }
    }

    /// Reads the backlog after `after` for a subscriber already registered (docs/protocol.md#resuming-by-mid).
    pub(super) fn request_backlog(&mut self, id: ConnId, receivers: Vec<Receiver>, after: Mid) {
        let token = self.next_token();
        let job = Job::Backlog {
            token,
            receivers,
            after,
            limit: BACKLOG_CHUNK,
            max_bytes: BACKLOG_CHUNK_BYTES,
        };
        if self.store.submit(job).is_err() {
            self.queue_full(&format!("{id}: backlog read retried later"));
            self.backlog_failed(id, after);
            return;
        }
        self.waiting
            .insert(token, (Instant::now(), Waiter::Backlog { conn: id, after }));
        let Some(conn) = self.conns.get_mut(id) else {
            return;
        };
        match &mut conn.phase {
            Phase::Hold(h) => h.backlog = Backlog::Pending(token),
            Phase::WebSocket(ws) => ws.backlog = Backlog::Pending(token),
            _ => {}
        }
    }

    /// The backlog could not be read (the store is down, or its queue full). The subscriber
    /// stays (issue 4: an outage keeps long polls and WebSockets); its live messages stay
    /// parked, and the read is retried every sweep and when the store comes back. A held poll
    /// that times out meanwhile gets a 304 with its own `mid`, so the client neither skips the
    /// backlog nor backs off as it would after a 4011 (docs/protocol.md#websocket: 15 s, 45 s, then 10 min).
    fn backlog_failed(&mut self, id: ConnId, after: Mid) {
        let Some(conn) = self.conns.get_mut(id) else {
            return;
        };
        match &mut conn.phase {
            Phase::Hold(h) => h.backlog = Backlog::Failed(after),
            Phase::WebSocket(ws) => ws.backlog = Backlog::Failed(after),
            _ => return,
        }
        self.failed_backlogs.push(id);
    }

    /// Reads again the backlogs that failed.
    pub(super) fn retry_failed_backlogs(&mut self) {
        for id in std::mem::take(&mut self.failed_backlogs) {
            let Some(conn) = self.conns.get(id) else {
                continue;
            };
            let (sub, state) = match &conn.phase {
                Phase::Hold(h) => (&h.sub, h.backlog),
                Phase::WebSocket(ws) => (&ws.sub, ws.backlog),
                _ => continue,
            };
            if let Backlog::Failed(after) = state {
                let receivers = sub.receivers.clone();
                self.request_backlog(id, receivers, after);
            }
        }
    }

    /// Acts on every answer the store has ready; `false` when there was none.
    pub(super) fn drain_store(&mut self) -> bool {
        let mut done = std::mem::take(&mut self.done_buf);
        self.store.drain(&mut done);
        let any = !done.is_empty();
        for d in done.drain(..) {
            self.on_done(d);
        }
        self.done_buf = done;
        any
    }

    /// Acts on one store answer. An answer to a job goes to what waits for its token, and
    /// that waiter decides what the answer means: nothing is looked up twice.
    fn on_done(&mut self, d: Done) {
        let (token, outcome) = match d {
            Done::Published { token, result } => (token, Outcome::Published(result)),
            Done::Backlog { token, result } => (token, Outcome::Backlog(result)),
            Done::Online { token, result } => (token, Outcome::Online(result)),
            Done::Stats { token, result } => (token, Outcome::Stats(result)),
            Done::CatchUp { token, result } => (token, Outcome::CatchUp(result)),
            Done::Presence { token, result } => (token, Outcome::Presence(result)),
            Done::LastSeen { token, result } => (token, Outcome::LastSeen(result)),
            Done::Deliver(batch) => return self.on_deliver(batch),
            Done::Resubscribed => return self.on_resubscribed(),
            Done::Up { latest } => return self.on_store_up(latest),
            Done::Down { reason } => return self.on_store_down(reason),
        };
        match self.take_waiter(token) {
            Some(waiter) => self.answer(token, waiter, outcome),
            None => log::debug!("store answer for job {token}, which nobody waits for"),
        }
    }

    fn answer(&mut self, token: Token, waiter: Waiter, outcome: Outcome) {
        match (waiter, outcome) {
            (Waiter::Publish { reply, json }, Outcome::Published(r)) => {
                self.on_published(reply, json, r)
            }
            (Waiter::Backlog { conn, after }, Outcome::Backlog(r)) => {
                self.on_backlog(token, conn, after, r)
            }
            (Waiter::Online(w), Outcome::Online(r)) => self.on_online(w, r),
            (Waiter::Stats { conn, persist, own }, Outcome::Stats(r)) => {
                self.on_stats(conn, persist, own, r)
            }
            (Waiter::V4Stats(plan), Outcome::Online(r)) => self.on_v4_online(plan, r),
            (Waiter::V4Stats(plan), Outcome::Stats(r)) => self.on_v4_stats(*plan, r),
            (
                Waiter::CatchUp {
                    receivers,
                    generation,
                },
                Outcome::CatchUp(r),
            ) => self.on_catchup(receivers, generation, r),
            (Waiter::Presence, Outcome::Presence(r)) => self.on_presence(r),
            (Waiter::LastSeen(w), Outcome::LastSeen(r)) => self.on_last_seen(*w, r),
            (waiter, outcome) => {
                log::error!("store answer {outcome:?} does not fit job {token}; failing it");
                let failed = Outcome::failure(&waiter, "mismatched store answer");
                self.answer(token, waiter, failed);
            }
        }
    }

    /// Fails the jobs unanswered for [`LOST_AFTER`] (called with the periodic sweep): each
    /// gets the error answer a failing store would have given.
    pub(super) fn expire_waiters(&mut self, now: Instant) {
        let lost: Vec<Token> = self
            .waiting
            .iter()
            .filter(|(_, (since, _))| now.saturating_duration_since(*since) > LOST_AFTER)
            .map(|(&token, _)| token)
            .collect();
        for token in lost {
            let Some(waiter) = self.take_waiter(token) else {
                continue;
            };
            log::warn!("store job {token} unanswered for {LOST_AFTER:?}; counted as failed");
            let failed = Outcome::failure(&waiter, "no answer from the store");
            self.answer(token, waiter, failed);
        }
    }

    /// The waiter of `token`, timing the store's round trip for the metrics.
    pub(super) fn take_waiter(&mut self, token: Token) -> Option<Waiter> {
        let (since, waiter) = self.waiting.remove(&token)?;
        self.metrics.observe_store(since.elapsed());
        Some(waiter)
    }

    pub(super) fn note_mid(&mut self, mid: Mid) {
        if mid > self.latest_mid {
            self.latest_mid = mid;
        }
    }

    fn on_published(
        &mut self,
        reply: Option<(ConnId, Persist)>,
        json: Option<Box<(Vec<u8>, Vec<u8>)>>,
        result: Result<Vec<Minted>, StoreError>,
    ) {
        let reply = reply.filter(|(id, _)| {
            self.conns
                .get(*id)
                .is_some_and(|c| matches!(c.phase, Phase::Busy))
        });
        match result {
            Ok(msgs) => {
                match (reply, &json) {
                    (Some((id, persist)), Some(bodies)) => self.answer_busy(id, persist, |p| {
                        response::full(200, "application/json", &bodies.0, p)
                    }),
                    (Some((id, persist)), None) => self.respond_published(id, persist),
                    _ => {}
                }
                // Delivered from the store's Done::Deliver, in the order it minted the ids.
                for msg in &msgs {
                    self.note_mid(msg.mid);
                    self.answered_mid = self.answered_mid.max(msg.mid);
                    self.stats
                        .count_message(msg.kind.as_deref(), msg.created_ms);
                    self.metrics.messages_published += 1;
                    log::trace!("published {}", msg.mid);
                }
            }
            Err(e) => {
                log::info!("publish not stored, answered 503: {e}");
                match (reply, json) {
                    (Some((id, persist)), Some(bodies)) => {
                        self.metrics.v5_errors += 1;
                        self.answer_busy(id, persist, |p| {
                            response::full(200, "application/json", &bodies.1, p)
                        })
                    }
                    (reply, _) => self.refuse_busy_publish(reply),
                }
            }
        }
    }

    fn on_backlog(
        &mut self,
        token: Token,
        id: ConnId,
        after: Mid,
        result: Result<BacklogChunk, StoreError>,
    ) {
        let low = self.low_water();
        let Some(conn) = self.conns.get_mut(id) else {
            return;
        };
        let queued = conn.outbox.footprint();
        match &mut conn.phase {
            Phase::Hold(hold) if hold.backlog == Backlog::Pending(token) => match result {
                Ok(BacklogChunk { msgs, more: true }) => {
                    // More is stored after this chunk: answer it alone, now. A live message
                    // in the same answer (already parked, or arriving before the end of the
                    // pass) would move the client's mid past the unread rest; the live ones
                    // are stored and come with the rest on the next poll.
                    hold.pending = Held {
                        messages: msgs,
                        ..Held::default()
                    };
                    hold.backlog = Backlog::Done;
                    self.finish_hold(id, false);
                }
                Ok(BacklogChunk { msgs, .. }) => {
                    // The live messages held meanwhile are newer than the `after` of the
                    // read, or in it (deduplicated when answering).
                    hold.pending.messages.extend(msgs);
                    hold.backlog = Backlog::Done;
                    if !hold.pending.is_empty() {
                        self.mark_dirty(id);
                    }
                }
                Err(e) => {
                    log::info!("{id}: backlog read failed, retried later: {e}");
                    self.backlog_failed(id, after);
                }
            },
            Phase::WebSocket(ws) if ws.backlog == Backlog::Pending(token) => match result {
                Ok(BacklogChunk { msgs, more }) => {
                    // Parked messages at or below the last id already sent went out with an
                    // earlier chunk (docs/protocol.md#resuming-by-mid: only the buffered messages above it follow).
                    ws.parked.messages.retain(|m| m.mid > after);
                    let receivers = ws.sub.receivers.clone();
                    let (batch, again) = if more {
                        // More to read: this chunk goes now, live ones stay parked.
                        (msgs, true)
                    } else {
                        // The end of the backlog: the parked live messages follow it, unless
                        // some did not fit; those are stored, newer than every one sent, and
                        // come from one more read.
                        let parked = ws.parked.take();
                        let mut batch = msgs;
                        batch.extend(parked.messages);
                        (batch, parked.dropped)
                    };
                    let last = batch.iter().map(|m| m.mid).max().unwrap_or(after);
                    // When more is to be read and the client has not taken what it was sent,
                    // the next chunk waits for flush_conn, so replay never holds much more
                    // than one chunk above the low-water mark per subscriber.
                    let read_now = again && queued <= low;
                    // (request_backlog turns Throttled into Pending with its token.)
                    ws.backlog = if again {
                        Backlog::Throttled(last)
                    } else {
                        Backlog::Sent(last)
                    };
                    self.send_ws_batch(id, batch);
                    if read_now {
                        self.request_backlog(id, receivers, last);
                    }
                }
                Err(e) => {
                    log::info!("{id}: backlog read failed, retried later: {e}");
                    self.backlog_failed(id, after);
                }
            },
            _ => {}
        }
    }

    /// One WebSocket message with `msgs` sorted by id, each once (docs/protocol.md#resuming-by-mid, docs/protocol.md#resuming-by-mid).
    pub(super) fn send_ws_batch(&mut self, id: ConnId, mut msgs: Vec<Arc<Message>>) {
        if msgs.is_empty() {
            return;
        }
        msgs.sort_by_key(|m| m.mid);
        msgs.dedup_by_key(|m| m.mid);
        let wire = match self.conns.get(id).map(|c| &c.phase) {
            Some(Phase::WebSocket(ws)) => ws.sub.wire(),
            _ => crate::subscription::Wire::V3,
        };
        let frame = if let crate::subscription::Wire::V5 { user } = wire {
            let items: Vec<tungstenite::Bytes> =
                msgs.iter().filter_map(|m| m.v5_json(user)).collect();
            if items.is_empty() {
                return;
            }
            websocket::server_frame(websocket::OP_TEXT, &crate::v5::batch(&items))
        } else if wire == crate::subscription::Wire::V4 {
            let batch = crate::v4::outgoing_batch(&msgs);
            websocket::server_frame(websocket::OP_BINARY, &batch)
        } else {
            let mut payload = Vec::new();
            for m in &msgs {
                payload.extend_from_slice(m.v3_frame());
            }
            websocket::server_frame(websocket::OP_TEXT, &payload)
        };
        if let Some(conn) = self.conns.get_mut(id) {
            conn.outbox.push(frame);
        }
        self.mark_dirty(id);
    }

    pub(super) fn on_online(&mut self, wait: OnlineWait, result: Result<Vec<bool>, StoreError>) {
        let OnlineWait {
            conn,
            persist,
            channels,
            local,
        } = wait;
        let remote = result.unwrap_or_else(|e| {
            log::info!("online query answered from local connections only: {e}");
            Vec::new()
        });
        let mut remote = remote.into_iter();
        let mut body = String::from("{\"infos\":[");
        let mut first = true;
        for (ch, n) in channels.iter().zip(local) {
            let online = n > 0 || remote.next().unwrap_or(false);
            if !online {
                continue;
            }
            if !first {
                body.push(',');
            }
            first = false;
            body.push_str(&format!(
                "{{\"channel\":\"{ch}\",\"subscribers\":{}}}",
                n.max(1)
            ));
        }
        body.push_str("]}");
        if self
            .conns
            .get(conn)
            .is_some_and(|c| matches!(c.phase, Phase::Busy))
        {
            self.answer_busy(conn, persist, |p| {
                response::full(200, "text/plain", body.as_bytes(), p)
            });
        }
    }

    fn on_stats(
        &mut self,
        conn: ConnId,
        persist: Persist,
        own: String,
        result: Result<Vec<String>, StoreError>,
    ) {
        let others = result.unwrap_or_else(|e| {
            log::info!("server stats answered for this instance only: {e}");
            Vec::new()
        });
        if self
            .conns
            .get(conn)
            .is_some_and(|c| matches!(c.phase, Phase::Busy))
        {
            let body = stats::render_array(&own, &others);
            self.answer_busy(conn, persist, |p| {
                response::full(200, "text/plain", body.as_bytes(), p)
            });
        }
    }

    fn on_store_up(&mut self, latest: Mid) {
        self.note_mid(latest);
        if self.catchup.live_mid == Mid::new(0, 0) {
            // The first Up: what came before is no local subscriber's (after a gap, `latest`
            // includes what the gap missed, so only the first one counts).
            self.catchup.live_mid = latest;
        }
        self.retry_catchup();
        let was_down = self.store_down.take();
        if let Some(reason) = was_down.filter(|r| r != super::STORE_STARTING) {
            log::warn!(
                "{} store is back (was: {reason}); publishing resumes",
                self.store.kind()
            );
        } else {
            log::info!(
                "{} store ready; newest message id {latest}",
                self.store.kind()
            );
        }
        self.retry_failed_backlogs();
        if self.accept_waits_for_store {
            self.resume_accepting();
        }
        if !self.store.shared() {
            return;
        }
        // A restarted Redis lost the presence keys and our stats entry: write them again.
        self.presence.resync = true;
        let mut live: Vec<Receiver> = Vec::new();
        for id in self.conns.ids() {
            let Some(conn) = self.conns.get(id) else {
                continue;
            };
            match &conn.phase {
                Phase::Hold(h) => live.extend_from_slice(&h.sub.receivers),
                Phase::WebSocket(ws) => live.extend_from_slice(&ws.sub.receivers),
                _ => {}
            }
        }
        live.sort_unstable_by_key(|r| r.0);
        live.dedup_by_key(|r| r.0);
        if !live.is_empty() {
            self.submit_quiet(Job::Touch { channels: live });
        }
        self.put_stats();
    }

    fn on_store_down(&mut self, reason: String) {
        if self.store_down.is_none() {
            log::warn!(
                "{} store unavailable: {reason}; publishes get 503 until it is back",
                self.store.kind()
            );
        }
        self.store_down = Some(reason);
    }

    /// Writes this instance's stats entry to a shared store (read by `/server-stat/` on any
    /// instance).
    pub(super) fn put_stats(&mut self) {
        if !self.store.shared() {
            return;
        }
        let json = self.own_stats_entry();
        self.submit_quiet(Job::PutStats { json });
    }

    pub(super) fn own_stats_entry(&mut self) -> String {
        let shared = self.store.shared();
        self.stats.entry(
            &self.process_id,
            self.registry.private_channels(),
            &self.cfg.limits,
            shared,
            now_ms(),
        )
    }
}
