//! Requests and subscriptions: routing a complete request, publishing and fan-out, long polls
//! and WebSocket subscriptions. Everything here runs inside one loop pass of [`Server`].

use std::sync::Arc;
use std::time::Instant;

use tungstenite::Bytes;

use crate::conn::{Backlog, Conn, Delivered, Phase};
use crate::error::{ApiError, HttpError, close};
use crate::http::{Method, RequestHead};
use crate::message::{Message, Sender, now_ms};
use crate::metrics::Gauges;
use crate::publish;
use crate::query;
use crate::registry::Kind;
use crate::response::{self, Persist};
use crate::route::{self, Route};
use crate::slab::ConnId;
use crate::stats;
use crate::store::{Job, Receiver};
use crate::subscription::{self, Subscription, Wire};
use crate::websocket::{self, OP_CLOSE, OP_PING, OP_PONG};

use super::Server;
use super::store_io::{OnlineWait, Waiter};

impl Server {
    // ---- requests ----

    pub(super) fn handle_request(&mut self, id: ConnId, head: RequestHead, body: Bytes) {
        let Some(conn) = self.conns.get(id) else {
            return;
        };
        let persist = if head.keep_alive && self.shutdown_deadline.is_none() {
            Persist::KeepAlive
        } else {
            Persist::Close
        };
        let route = route::route(conn.role, head.path(), &self.cfg.paths);
        // HEAD is GET without the body (monitoring probes use it on /health); a long poll or
        // WebSocket has no meaningful HEAD form.
        let method = match head.method {
            Method::Head => {
                if let Some(conn) = self.conns.get_mut(id) {
                    conn.head_only = true;
                }
                if route == Route::Subscribe {
                    Method::Other
                } else {
                    Method::Get
                }
            }
            m => m,
        };
        log::debug!(
            "{id}: {:?} {} from {}",
            head.method,
            head.path(),
            head.client_ip.as_deref().unwrap_or("-")
        );
        match (route, method) {
            (Route::Subscribe, Method::Options) => {
                self.respond(id, response::options(persist), persist)
            }
            (Route::Subscribe, Method::Get) => self.subscribe(id, head, persist),
            (Route::Publish, Method::Post) if query::flag(head.query(), "binaryMode") => {
                self.binary_publish(id, &head, body, persist)
            }
            (Route::Rest, Method::Post) => self.rest_publish(id, &head, body, persist),
            (Route::Rest, Method::Options) => self.respond(id, response::options(persist), persist),
            (Route::Publish, Method::Post) => self.text_publish(id, &head, body, persist),
            (Route::JsonRpc, Method::Post) => self.jsonrpc_endpoint(id, &head, body, persist),
            (Route::Publish, Method::Get) => self.online_query(id, &head, persist),
            (Route::ServerStats, Method::Get) => self.server_stats(id, persist),
            (Route::Health, Method::Get) => {
                let (status, body) = if self.shutdown_deadline.is_some() {
                    (503, "shutting down\n".to_owned())
                } else if let Some(reason) = &self.store_down {
                    let kind = self.store.kind();
                    (
                        503,
                        format!("not ready: {kind} store unavailable: {reason}\n"),
                    )
                } else {
                    (200, format!("ok: serving, {} store\n", self.store.kind()))
                };
                self.respond(
                    id,
                    response::full(status, "text/plain", body.as_bytes(), persist),
                    persist,
                );
            }
            (Route::Metrics, Method::Get) => {
                let st = self.store.stats();
                let text = self.metrics.render(&Gauges {
                    websockets: self.stats.websockets,
                    long_polls: self.stats.pollings,
                    channels: self.registry.private_channels(),
                    stored: (!self.store.shared()).then_some(st),
                    store_rejected_jobs: st.rejected_jobs,
                    store_late_publishes: st.late_publishes,
                    store_wait_timeouts: st.wait_timeouts,
                    store_kind: self.store.kind(),
                    store_up: self.store_down.is_none(),
                });
                let r = response::full(200, "text/plain; version=0.0.4", text.as_bytes(), persist);
                self.respond(id, r, persist);
            }
            _ => self.respond_error(id, HttpError::NotFound.into(), persist),
        }
    }

    /// Queues a complete response and moves the connection to its next phase.
    pub(super) fn respond(&mut self, id: ConnId, bytes: Vec<u8>, persist: Persist) {
        let Some(conn) = self.conns.get_mut(id) else {
            return;
        };
        let at = conn.answer(bytes, persist, &self.cfg.timings);
        self.set_deadline(id, Some(at));
        self.mark_dirty(id);
    }

    pub(super) fn respond_error(&mut self, id: ConnId, err: ApiError, persist: Persist) {
        // Framing errors leave the stream position unknown: never keep such a connection.
        let persist = match err {
            ApiError::Http(HttpError::NotFound) => persist,
            ApiError::Http(_) => Persist::Close,
            _ => persist,
        };
        self.respond(id, response::error(err, persist), persist);
    }

    pub(super) fn text_publish(
        &mut self,
        id: ConnId,
        head: &RequestHead,
        body: Bytes,
        persist: Persist,
    ) {
        let limits = &self.cfg.limits;
        match publish::text_publish(
            head.query(),
            &body,
            &self.signer,
            limits.max_channels_per_request,
        ) {
            Err(e) => {
                log::info!("{id}: publish rejected: {e}");
                self.count_error(e);
                self.respond_error(id, e, persist);
            }
            Ok(receivers) => {
                // Answered when the store took it (200) or could not (503), before the fan-out;
                // PHP hangs up after the head, and the fan-out does not depend on this socket.
                let draft =
                    Self::draft(body, head.message_expiry, Sender::Backend, None, receivers);
                self.publish_batch(Some((id, persist)), vec![draft]);
            }
        }
    }

    fn server_stats(&mut self, id: ConnId, persist: Persist) {
        self.stats.count_request("serverStats", now_ms());
        let own = self.own_stats_entry();
        if !self.store.shared() {
            let body = stats::render_array(&own, &[]);
            let r = response::full(200, "text/plain", body.as_bytes(), persist);
            self.respond(id, r, persist);
            return;
        }
        let waiter = Waiter::Stats {
            conn: id,
            persist,
            own: own.clone(),
        };
        if self.submit(|token| Job::Stats { token }, waiter) {
            self.set_busy(id);
        } else {
            let body = stats::render_array(&own, &[]);
            let r = response::full(200, "text/plain", body.as_bytes(), persist);
            self.respond(id, r, persist);
        }
    }

    /// The request waits for a store answer: no input is parsed meanwhile.
    pub(super) fn set_busy(&mut self, id: ConnId) {
        if let Some(conn) = self.conns.get_mut(id) {
            let at = conn.await_store();
            self.set_deadline(id, Some(at));
        }
    }

    pub(super) fn online_query(&mut self, id: ConnId, head: &RequestHead, persist: Persist) {
        self.stats.count_request("channelStats", now_ms());
        let channels = match publish::online_query(
            head.query(),
            &self.signer,
            self.cfg.limits.max_channels_per_request,
        ) {
            Ok(c) => c,
            Err(e) => {
                log::info!("{id}: online query rejected: {e}");
                self.respond_error(id, e, persist);
                return;
            }
        };
        if query::flag(head.query(), "binaryMode") {
            self.online_query_binary(id, channels, persist);
            return;
        }
        let local: Vec<usize> = channels
            .iter()
            .map(|ch| self.registry.subscribers(ch).len())
            .collect();
        // Only the channels without a local connection need the store (recent long polls,
        // other instances).
        let ask: Vec<Receiver> = channels
            .iter()
            .zip(&local)
            .filter(|&(_, &n)| n == 0)
            .map(|(&ch, _)| (ch, Kind::Private))
            .collect();
        let wait = OnlineWait {
            conn: id,
            persist,
            channels,
            local,
        };
        // Answered through on_online in every case: everything local (no store job), the
        // store's answer, or, when the store cannot take the job, from local connections only.
        self.set_busy(id);
        if ask.is_empty() {
            return self.on_online(wait, Ok(Vec::new()));
        }
        let token = self.next_token();
        let job = Job::Online {
            token,
            channels: ask,
        };
        if self.store.submit(job).is_err() {
            let e = crate::store::StoreError("store queue full".to_owned());
            return self.on_online(wait, Err(e));
        }
        self.waiting
            .insert(token, (Instant::now(), Waiter::Online(wait)));
    }

    // ---- publishing ----

    /// Hands `msg` to every connection subscribed to any receiver, once per connection. Nothing
    /// is written here: frames are queued and the connections marked dirty, so every message a
    /// subscriber gets in one pass leaves in one `writev` from [`Server::flush_dirty`].
    pub(super) fn fan_out(&mut self, msg: &Arc<Message>, receivers: &[Receiver]) {
        self.publish_seq += 1;
        let seq = self.publish_seq;
        let limit = self.cfg.limits.outbox_limit;
        let mut slow: Vec<ConnId> = Vec::new();
        let mut delivered = 0u64;
        for (ch, _) in receivers {
            for &cid in self.registry.subscribers(ch) {
                let Some(conn) = self.conns.get_mut(cid) else {
                    continue;
                };
                if conn.last_seq == seq {
                    continue;
                }
                conn.last_seq = seq;
                delivered += 1;
                match &mut conn.phase {
                    Phase::Hold(hold)
                        if hold.sub.mid.is_some_and(|m| msg.mid <= m) || !hold.sub.accepts(msg) =>
                    {
                        // The client has it already (its announcement from a shared store came
                        // late); sending it would move the client's mid backwards.
                        delivered -= 1;
                    }
                    Phase::Hold(hold) => {
                        // Bounded in bytes; what does not fit comes from the store on the
                        // client's next poll.
                        hold.pending.push(msg, limit);
                        if hold.backlog == Backlog::Done && !conn.dirty {
                            conn.dirty = true;
                            self.dirty.push(cid);
                        }
                    }
                    Phase::WebSocket(ws) if !ws.sub.accepts(msg) => {
                        // A plain-text body has no v5 form (docs/v5.md, "Delivery").
                        delivered -= 1;
                    }
                    Phase::WebSocket(ws) if ws.backlog.parks_live() => {
                        // Sent after the backlog, so the client's mid never skips it (docs/protocol.md#resuming-by-mid);
                        // bounded in bytes, the rest is read from the store after the backlog.
                        ws.parked.push(msg, limit);
                    }
                    Phase::WebSocket(ws) if matches!(ws.backlog, Backlog::Sent(last) if msg.mid <= last) =>
                    {
                        // Already sent with the backlog: it was stored before the read, and
                        // its announcement arrived after (docs/protocol.md#resuming-by-mid: each message once).
                        delivered -= 1;
                    }
                    Phase::WebSocket(ws) => {
                        // Written now when nothing is queued; else queued behind the rest,
                        // and flush_dirty writes it at the end of the pass.
                        let v5_frame;
                        let frame = match ws.sub.wire() {
                            Wire::V5 { user } => {
                                v5_frame = msg.v5_ws_frame(user).unwrap_or_default();
                                &v5_frame
                            }
                            _ => msg.ws_frame(ws.sub.binary),
                        };
                        if frame.is_empty() {
                            // No form for this subscriber's protocol (docs/v5.md).
                            delivered -= 1;
                            continue;
                        }
                        if conn.deliver(frame, &mut self.spare_queues) == Delivered::Written {
                            continue;
                        }
                        if conn.outbox.footprint() > limit {
                            slow.push(cid);
                        } else if !conn.dirty {
                            conn.dirty = true;
                            self.dirty.push(cid);
                        }
                    }
                    _ => {}
                }
            }
        }
        self.metrics.messages_delivered += delivered - slow.len() as u64;
        self.metrics.messages_dropped += slow.len() as u64;
        self.metrics.slow_consumer_disconnects += slow.len() as u64;
        for cid in slow {
            log::info!("{cid}: slow consumer (outbox over OUTBOX_LIMIT {limit}); closing");
            self.close_ws(cid, close::POLICY, "slow consumer");
        }
    }

    // ---- subscribing ----

    pub(super) fn subscribe(&mut self, id: ConnId, head: RequestHead, persist: Persist) {
        let policy = crate::jwt::Policy {
            key: self.cfg.security_key.as_bytes(),
            now: now_ms() / 1000,
            leeway: self.cfg.jwt_leeway,
            host_id: self.cfg.host_id.as_deref(),
        };
        let parsed = subscription::parse_any(head.query(), &self.signer, &policy);
        let client = head.client_ip;
        if parsed == Err(ApiError::WrongChannelId) {
            self.metrics.signature_failures += 1;
        }
        if let Some(key) = head.ws_key {
            self.open_websocket(id, &key, parsed, client);
            return;
        }
        match parsed {
            Err(e) => {
                log::info!(
                    "{id}: long poll rejected from {}: {e}",
                    client.as_deref().unwrap_or("-")
                );
                self.respond_error(id, e, persist);
            }
            Ok(sub) => self.start_long_poll(id, sub, persist, client),
        }
    }

    pub(super) fn start_long_poll(
        &mut self,
        id: ConnId,
        mut sub: Subscription,
        persist: Persist,
        client: Option<Box<str>>,
    ) {
        self.enforce_conn_cap(&sub);
        self.touch(&sub.receivers);
        // Registered before the backlog is read (docs/protocol.md#resuming-by-mid): a publish in between is parked in
        // `pending` and answered together with the backlog.
        self.registry.subscribe(id, &sub.receivers);
        self.v5_joined(sub.user);
        self.stats.pollings += 1;
        let resume = sub.mid.map(|mid| (sub.receivers.clone(), mid));
        let Some(conn) = self.conns.get_mut(id) else {
            return;
        };
        let mid_absent = sub.mid.is_none();
        if mid_absent {
            // Live messages from now on only (see `Hold::mid_absent`).
            sub.mid = Some(self.latest_mid);
        }
        let at = conn.hold(sub, persist, client, &self.cfg.timings);
        if let Phase::Hold(hold) = &mut conn.phase {
            hold.mid_absent = mid_absent;
        }
        self.set_deadline(id, Some(at));
        if let Some((receivers, mid)) = resume {
            self.request_backlog(id, receivers, mid);
        }
    }

    /// A 200 carrying v3 frames: the small head plus the shared frame of each message; or,
    /// for a v4 poll, one `ResponseBatch`; or, for v5, one JSON-RPC object or an array.
    pub(super) fn answer_messages(
        &mut self,
        id: ConnId,
        mut messages: Vec<Arc<Message>>,
        wire: Wire,
        persist: Persist,
    ) {
        messages.sort_by_key(|m| m.mid);
        messages.dedup_by_key(|m| m.mid);
        if let Wire::V5 { user } = wire {
            let items: Vec<Bytes> = messages.iter().filter_map(|m| m.v5_json(user)).collect();
            if items.is_empty() {
                // Never an empty 200 (docs/protocol.md#long-poll): nothing here has a v5 form.
                let last = messages.last().map_or(self.latest_mid, |m| m.mid);
                let mut digits = Vec::with_capacity(26);
                last.write_to(&mut digits);
                self.respond(id, response::not_modified(&digits), persist);
                return;
            }
            let body = crate::v5::batch(&items);
            let r = response::full(200, "text/plain", &body, persist);
            self.respond(id, r, persist);
            return;
        }
        if wire == Wire::V4 {
            let body = crate::v4::outgoing_batch(&messages);
            let r = response::full(200, "application/octet-stream", &body, persist);
            self.respond(id, r, persist);
            return;
        }
        let len: usize = messages.iter().map(|m| m.v3_frame().len()).sum();
        let Some(conn) = self.conns.get_mut(id) else {
            return;
        };
        conn.outbox
            .push(Bytes::from(response::head(200, "text/plain", len, persist)));
        for m in &messages {
            conn.outbox.push(m.v3_frame().clone());
        }
        self.respond(id, Vec::new(), persist);
    }

    /// Ends a held poll: unsubscribes and answers with its messages, or 304 when none came.
    pub(super) fn finish_hold(&mut self, id: ConnId, shutting_down: bool) {
        let Some(conn) = self.conns.get_mut(id) else {
            return;
        };
        let Phase::Hold(hold) = std::mem::replace(&mut conn.phase, Phase::Closing) else {
            return;
        };
        self.registry.unsubscribe(id, &hold.sub.receivers);
        self.stats.pollings -= 1;
        self.touch(&hold.sub.receivers);
        self.v5_left(id, hold.sub.user);
        let persist = if hold.keep_alive && !shutting_down && self.shutdown_deadline.is_none() {
            Persist::KeepAlive
        } else {
            Persist::Close
        };
        // Live messages parked behind an unread backlog are not sent: the client keeps its
        // mid and gets them, stored, with the backlog on its next poll.
        if hold.pending.is_empty() || hold.backlog != Backlog::Done {
            let last = match hold.sub.mid {
                Some(m) if !hold.mid_absent => m,
                _ => self.latest_mid,
            };
            let mut digits = Vec::with_capacity(26);
            last.write_to(&mut digits);
            self.respond(id, response::not_modified(&digits), persist);
        } else {
            log::trace!(
                "{id}: long poll answered for {}",
                hold.client.as_deref().unwrap_or("-")
            );
            self.answer_messages(id, hold.pending.messages, hold.sub.wire(), persist);
        }
        // A keep-alive client may have pipelined its next request already.
        if persist == Persist::KeepAlive {
            self.mark_ready(id);
        }
    }

    pub(super) fn open_websocket(
        &mut self,
        id: ConnId,
        key: &str,
        parsed: Result<Subscription, ApiError>,
        client: Option<Box<str>>,
    ) {
        let accept = websocket::accept_key(key);
        let Some(conn) = self.conns.get_mut(id) else {
            return;
        };
        conn.outbox
            .push(Bytes::from(response::switching_protocols(&accept)));
        conn.handshake_pending = true;
        let sub = match parsed {
            Ok(sub) => sub,
            Err(e) => {
                // Handshake first, then the close code: the client reloads its config only
                // on 4010, never on an HTTP error (docs/protocol.md#websocket).
                log::info!(
                    "{id}: websocket rejected from {}: {e}",
                    client.as_deref().unwrap_or("-")
                );
                let at = conn.refuse_websocket(e.ws_close_code(), &e.to_string());
                self.set_deadline(id, Some(at));
                self.mark_dirty(id);
                return;
            }
        };
        self.enforce_conn_cap(&sub);
        self.touch(&sub.receivers);
        // Registered before the backlog is read (docs/protocol.md#resuming-by-mid); live messages are parked until it is.
        self.registry.subscribe(id, &sub.receivers);
        self.v5_joined(sub.user);
        self.stats.websockets += 1;
        let resume = sub.mid.map(|mid| (sub.receivers.clone(), mid));
        let latest = self.latest_mid;
        let Some(conn) = self.conns.get_mut(id) else {
            return;
        };
        let at = conn.open_websocket(sub, client, &self.cfg.timings);
        if resume.is_none()
            && let Phase::WebSocket(ws) = &mut conn.phase
        {
            // Without a mid, live messages from now on only: one published before and
            // announced late (Redis announces after the 200) counts as sent already.
            ws.backlog = Backlog::Sent(latest);
        }
        self.set_deadline(id, Some(at));
        self.mark_dirty(id);
        // Last: a refused read closes the socket, and its linger deadline must stand.
        if let Some((receivers, mid)) = resume {
            self.request_backlog(id, receivers, mid);
        }
    }

    /// Applies `MAX_CONN_PER_CHANNEL` to the private ids that come with a public id: the
    /// oldest connections are closed with 4029 until there is room (docs/protocol.md#connection-cap).
    pub(super) fn enforce_conn_cap(&mut self, sub: &Subscription) {
        let max = self.cfg.limits.max_conn_per_channel;
        for ch in &sub.capped {
            while self.registry.subscribers(ch).len() >= max {
                let oldest = self.registry.subscribers(ch)[0];
                log::info!("{oldest}: closed, over MAX_CONN_PER_CHANNEL {max} on {ch}");
                let is_ws = self.conns.get(oldest).is_some_and(Conn::is_websocket);
                if is_ws {
                    let reason = ApiError::TooManyConnections.to_string();
                    self.close_ws(oldest, 4029, &reason);
                } else {
                    self.leave_subscription(oldest);
                    self.respond_error(oldest, ApiError::TooManyConnections, Persist::Close);
                }
            }
        }
    }

    // ---- WebSocket input ----

    /// Acts on one client frame of a WebSocket.
    pub(super) fn on_ws_frame(&mut self, id: ConnId, frame: websocket::Frame) {
        let Some(conn) = self.conns.get_mut(id) else {
            return;
        };
        let Phase::WebSocket(ws) = &mut conn.phase else {
            return;
        };
        match frame.opcode {
            OP_PING => {
                // Counts against the outbox like everything else: input stops being read while
                // the client leaves its pongs unread.
                conn.outbox
                    .push(websocket::server_frame(OP_PONG, &frame.payload));
                self.mark_dirty(id);
            }
            OP_PONG => {
                ws.unanswered = 0;
                // Presence lives as long as the online TTL; a pong (every ping interval)
                // renews it, as the references do.
                let receivers = ws.sub.receivers.clone();
                self.touch(&receivers);
            }
            OP_CLOSE => {
                log::debug!("{id}: websocket closed by client");
                self.close_ws(id, close::NORMAL, "");
            }
            // v3 clients send nothing, and text is ignored on v4 too (docs/protocol.md#websocket); a v4
            // client's binary message is a client publish (docs/protocol.md#client-publishing).
            _ if ws.sub.binary => {
                if let Some(message) = crate::v4::assemble_binary(&mut ws.partial, frame) {
                    self.ws_client_message(id, message);
                }
            }
            // v5 (docs/v5.md): any client text shows the client is there; `pong` and
            // `mack:<mid>` need nothing else, JSON is a request.
            _ if ws.sub.json_rpc => {
                ws.unanswered = 0;
                let Some(text) = crate::v5::assemble_text(&mut ws.partial, frame) else {
                    return;
                };
                if text == b"pong" {
                    // Every 10 s per connection: renewed once a third of the online TTL
                    // has passed, which keeps it alive with room for a late pong, instead
                    // of a Redis write per pong (docs/redis.md, "v5 presence").
                    let now = (crate::message::now_ms() / 1000) as u32;
                    let every = (self.cfg.store.online_ttl / 3).max(1);
                    if now.saturating_sub(ws.touched_s) >= every {
                        ws.touched_s = now;
                        let receivers = ws.sub.receivers.clone();
                        self.touch(&receivers);
                    }
                } else if !text.starts_with(b"mack:") {
                    self.v5_client_request(id, &text);
                }
            }
            _ => {}
        }
    }
}
