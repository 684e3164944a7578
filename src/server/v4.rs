//! v4 requests inside the loop (docs/protocol.md#client-publishing, docs/protocol.md#trusted-publish-php, docs/protocol.md#online-query): the trusted binary publish,
//! client publishing over `/bitrix/rest/` and the subscriber WebSocket, and channel/server
//! stats. Decoding and validation live in [`crate::v4`]; this part acts on validated commands.
//!
//! Publishes go through [`Server::publish_batch`] like text publishes (answered when the store
//! took them). Stats may need the store (presence of channels without a local connection, the
//! other instances' stats entries): a [`StatsPlan`] then waits in `waiting` and is finished by
//! the store's answers, checked against the connection's state at that time.

use std::time::Instant;

use tungstenite::Bytes;

use crate::conn::Phase;
use crate::error::ApiError;
use crate::http::RequestHead;
use crate::message::{Sender, now_ms};
use crate::proto::response;
use crate::publish;
use crate::response::{self as http_response, Persist};
use crate::slab::ConnId;
use crate::stats;
use crate::store::{Draft, Job, Receiver, StoreError};
use crate::subscription;
use crate::v4::{self, Caller, Command, StatsQuery};
use crate::websocket::{self, OP_BINARY};

use super::Server;
use super::store_io::Waiter;

/// Where a stats answer goes.
#[derive(Clone, Copy, Debug)]
pub(super) enum Reply {
    /// The HTTP request (in [`Phase::Busy`] while the plan waits).
    Http(ConnId, Persist),
    /// A binary message to the asking v4 WebSocket.
    Ws(ConnId),
}

/// One stats answer being assembled.
enum Answer {
    /// Entries in request order with their local online state; the store fills in the rest.
    Channels(Vec<(StatsQuery, bool)>),
    /// This instance's entry and, with a shared store, the others'.
    Server { own: String, others: Vec<String> },
}

/// The stats requests of one batch, answered together as one `ResponseBatch`.
pub(super) struct StatsPlan {
    reply: Reply,
    answers: Vec<Answer>,
    /// (answer, entry) of every channel without a local connection, in the order they were
    /// asked from the store.
    remote: Vec<(usize, usize)>,
    /// The other instances' stats are still to be fetched.
    need_others: bool,
}

impl Server {
    fn v4_limits(&self) -> v4::Limits {
        v4::Limits {
            max_messages: self.cfg.limits.max_messages_per_request,
            max_channels: self.cfg.limits.max_channels_per_request,
        }
    }

    /// `POST /bitrix/pub/?binaryMode=true` from PHP (docs/protocol.md#trusted-publish-php).
    pub(super) fn binary_publish(
        &mut self,
        id: ConnId,
        head: &RequestHead,
        body: Bytes,
        persist: Persist,
    ) {
        let limits = self.v4_limits();
        let decoded = publish::check_signature(head.query(), &body, &self.signer)
            .and_then(|()| v4::decode_batch(&body, Caller::Backend, &self.signer, limits));
        match decoded {
            Ok(commands) => self.run_http_batch(id, commands, Sender::Backend, persist),
            Err(e) => self.reject_http(id, "binary publish", e, persist),
        }
    }

    /// `POST /bitrix/rest/?CHANNEL_ID=…` (or `/bitrix/pubweb/`): client publishing (docs/protocol.md#client-publishing).
    pub(super) fn rest_publish(
        &mut self,
        id: ConnId,
        head: &RequestHead,
        body: Bytes,
        persist: Persist,
    ) {
        // A v5 client on long poll sends its acknowledgements (`mack:<mid>`) here, the
        // publish URL, since its poll cannot carry them (docs/v5.md, "Keep-alive"): nothing
        // to do, and no reason to log a refusal for every message it receives.
        if crate::v5::is_keepalive_text(&body) {
            let r = http_response::full(200, "text/plain", b"", persist);
            return self.respond(id, r, persist);
        }
        let public_id = subscription::parse(head.query(), &self.signer)
            .ok()
            .and_then(|s| s.public_id);
        let limits = self.v4_limits();
        match v4::decode_batch(&body, Caller::Client(public_id), &self.signer, limits) {
            Ok(commands) => {
                let Some(public_id) = public_id else {
                    unreachable!("decode_batch refuses a client without a public id");
                };
                self.run_http_batch(id, commands, Sender::Client(public_id), persist);
            }
            Err(e) => self.reject_http(id, "client publish", e, persist),
        }
    }

    /// A binary message from a v4 subscriber: a client publish or channel stats request.
    /// Any failure closes the socket with the code, and nothing of the batch is published.
    pub(super) fn ws_client_message(&mut self, id: ConnId, message: Vec<u8>) {
        let Some(public_id) = self.conns.get(id).and_then(|c| match &c.phase {
            Phase::WebSocket(ws) => Some(ws.sub.public_id),
            _ => None,
        }) else {
            return;
        };
        let limits = self.v4_limits();
        let commands =
            match v4::decode_batch(&message, Caller::Client(public_id), &self.signer, limits) {
                Ok(c) => c,
                Err(e) => {
                    log::info!("{id}: client message rejected: {e}");
                    self.count_error(e);
                    self.close_ws(id, e.ws_close_code(), &e.to_string());
                    return;
                }
            };
        let Some(public_id) = public_id else {
            unreachable!("decode_batch refuses a client without a public id");
        };
        let (drafts, stats) = self.split_batch(commands, Sender::Client(public_id));
        // The client ignores answers; a store outage only costs these messages (counted).
        self.publish_batch(None, drafts);
        if !stats.is_empty() {
            self.start_stats(Reply::Ws(id), &stats);
        }
    }

    /// The legacy online query with `binaryMode=true` (docs/protocol.md#online-query): the channel stats answer.
    pub(super) fn online_query_binary(
        &mut self,
        id: ConnId,
        channels: Vec<crate::channel::ChannelId>,
        persist: Persist,
    ) {
        let queries = channels
            .into_iter()
            .map(|id| StatsQuery {
                id,
                is_private: true,
            })
            .collect();
        self.start_stats(Reply::Http(id, persist), &[Command::ChannelStats(queries)]);
    }

    fn reject_http(&mut self, id: ConnId, what: &str, e: ApiError, persist: Persist) {
        log::info!("{id}: {what} rejected: {e}");
        self.count_error(e);
        self.respond_error(id, e, persist);
    }

    /// Counts a rejected publish under its Bitrix code, or its HTTP status without one.
    pub(super) fn count_error(&mut self, e: ApiError) {
        let code = e
            .code()
            .map_or_else(|| e.status().to_string(), |c| c.to_string());
        self.metrics.count_publish_error(&code);
    }

    /// Counts the requests and splits a validated batch into drafts (in order) and the stats
    /// requests (in order).
    fn split_batch(
        &mut self,
        commands: Vec<Command>,
        sender: Sender,
    ) -> (Vec<Draft>, Vec<Command>) {
        let mut drafts = Vec::new();
        let mut stats = Vec::new();
        for c in commands {
            self.stats.count_request(c.name(), now_ms());
            match c {
                Command::Publish(messages) => {
                    drafts.extend(
                        messages
                            .into_iter()
                            .map(|m| Self::draft(m.body, m.expiry, sender, m.kind, m.receivers)),
                    );
                }
                other => stats.push(other),
            }
        }
        (drafts, stats)
    }

    /// A validated batch over HTTP. Without stats requests (what PHP sends) the answer is the
    /// publish's: an empty 200 once the store took the messages, 503 when it cannot, and the
    /// fan-out after the answer (docs/protocol.md#publishing-text-v3). With stats requests the answer is the `ResponseBatch`
    /// of their results, and the messages are published alongside (refused as a whole, 503,
    /// while the store is down).
    fn run_http_batch(
        &mut self,
        id: ConnId,
        commands: Vec<Command>,
        sender: Sender,
        persist: Persist,
    ) {
        let (drafts, stats) = self.split_batch(commands, sender);
        if stats.is_empty() {
            self.publish_batch(Some((id, persist)), drafts);
            return;
        }
        if !drafts.is_empty() {
            if let Some(why) = self.publish_refusal() {
                self.metrics.count_publish_error("503");
                self.respond_error(id, why, persist);
                return;
            }
            self.publish_batch(None, drafts);
        }
        self.start_stats(Reply::Http(id, persist), &stats);
    }

    /// Answers the stats requests, from local state when it suffices, else after asking the
    /// store about channels without a local connection and for the other instances' stats.
    fn start_stats(&mut self, reply: Reply, requests: &[Command]) {
        let mut plan = StatsPlan {
            reply,
            answers: Vec::with_capacity(requests.len()),
            remote: Vec::new(),
            need_others: false,
        };
        let mut ask: Vec<Receiver> = Vec::new();
        for c in requests {
            match c {
                Command::ChannelStats(queries) => {
                    let a = plan.answers.len();
                    let mut entries = Vec::with_capacity(queries.len());
                    for (e, q) in queries.iter().enumerate() {
                        let local = !self.registry.subscribers(&q.id).is_empty();
                        if !local {
                            plan.remote.push((a, e));
                            ask.push(q.receiver());
                        }
                        entries.push((*q, local));
                    }
                    plan.answers.push(Answer::Channels(entries));
                }
                Command::ServerStats => {
                    plan.need_others |= self.store.shared();
                    let own = self.own_stats_entry();
                    plan.answers.push(Answer::Server {
                        own,
                        others: Vec::new(),
                    });
                }
                Command::Publish(_) => {}
            }
        }
        if let Reply::Http(id, _) = reply {
            self.set_busy(id);
        }
        if ask.is_empty() {
            self.stats_next(Box::new(plan));
            return;
        }
        let waiter = Waiter::V4Stats(Box::new(plan));
        let token = self.next_token();
        match self.store.submit(Job::Online {
            token,
            channels: ask,
        }) {
            Ok(()) => {
                self.waiting.insert(token, (Instant::now(), waiter));
            }
            Err(_) => {
                self.queue_full("channel stats answered from local connections");
                if let Waiter::V4Stats(plan) = waiter {
                    self.stats_next(plan);
                }
            }
        }
    }

    /// Presence is known: fetch the other instances' stats if needed, else answer.
    fn stats_next(&mut self, mut plan: Box<StatsPlan>) {
        if plan.need_others {
            plan.need_others = false;
            let token = self.next_token();
            if self.store.submit(Job::Stats { token }).is_ok() {
                self.waiting
                    .insert(token, (Instant::now(), Waiter::V4Stats(plan)));
                return;
            }
            self.queue_full("server stats answered for this instance only");
        }
        self.stats_finish(*plan);
    }

    pub(super) fn on_v4_online(
        &mut self,
        mut plan: Box<StatsPlan>,
        result: Result<Vec<bool>, StoreError>,
    ) {
        let online = result.unwrap_or_else(|e| {
            log::info!("channel stats answered from local connections only: {e}");
            Vec::new()
        });
        for (&(a, e), on) in plan.remote.iter().zip(online) {
            if let Some(Answer::Channels(entries)) = plan.answers.get_mut(a)
                && let Some(entry) = entries.get_mut(e)
            {
                entry.1 = on;
            }
        }
        self.stats_next(plan);
    }

    pub(super) fn on_v4_stats(
        &mut self,
        mut plan: StatsPlan,
        result: Result<Vec<String>, StoreError>,
    ) {
        let others = result.unwrap_or_else(|e| {
            log::info!("server stats answered for this instance only: {e}");
            Vec::new()
        });
        for answer in &mut plan.answers {
            if let Answer::Server { others: o, .. } = answer {
                o.clone_from(&others);
            }
        }
        self.stats_finish(plan);
    }

    /// Sends the `ResponseBatch` (one `Response` per stats request, in order) if its
    /// connection still waits for it.
    fn stats_finish(&mut self, plan: StatsPlan) {
        let answers: Vec<response::Command> = plan
            .answers
            .into_iter()
            .map(|a| match a {
                Answer::Channels(entries) => v4::channel_stats(entries),
                Answer::Server { own, others } => {
                    v4::server_stats(stats::render_array(&own, &others))
                }
            })
            .collect();
        let body = v4::response_batch(answers);
        match plan.reply {
            Reply::Http(id, persist) => {
                if self
                    .conns
                    .get(id)
                    .is_some_and(|c| matches!(c.phase, Phase::Busy))
                {
                    // Like every answer to a Busy request: parse what was pipelined behind
                    // it, close if the peer left or shutdown began.
                    self.answer_busy(id, persist, |p| {
                        http_response::full(200, "application/octet-stream", &body, p)
                    });
                }
            }
            Reply::Ws(id) => {
                let Some(conn) = self.conns.get_mut(id) else {
                    return;
                };
                if conn.is_websocket() {
                    conn.outbox.push(websocket::server_frame(OP_BINARY, &body));
                    self.mark_dirty(id);
                }
            }
        }
    }
}
