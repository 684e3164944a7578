//! v4 requests inside the loop (PROTOCOL.md §6.4, §8.3, §8.5): the trusted binary publish,
//! client publishing over `/bitrix/rest/` and the subscriber WebSocket, and channel stats.
//! Decoding and validation live in [`crate::v4`]; this part only acts on validated commands.

use std::time::Instant;

use tungstenite::Bytes;

use crate::channel::ChannelId;
use crate::conn::Phase;
use crate::error::ApiError;
use crate::http::RequestHead;
use crate::message::{Sender, now_ms};
use crate::proto::response;
use crate::publish;
use crate::response::{self as http_response, Persist};
use crate::slab::ConnId;
use crate::store::Store;
use crate::subscription;
use crate::v4::{self, Caller, Command, StatsQuery};
use crate::websocket::{self, OP_BINARY};

use super::Server;

impl Server {
    /// The single decision whether a channel is online (§8.5, CHOICE): an open WebSocket or
    /// a held poll here, or a poll that ended within the online TTL.
    pub(super) fn channel_online(&self, ch: &ChannelId, now: Instant) -> bool {
        !self.registry.subscribers(ch).is_empty() || self.store.recently_online(ch, now)
    }

    fn v4_limits(&self) -> v4::Limits {
        v4::Limits {
            max_messages: self.cfg.limits.max_messages_per_request,
            max_channels: self.cfg.limits.max_channels_per_request,
        }
    }

    /// `POST /bitrix/pub/?binaryMode=true` from PHP (§8.3).
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
            Ok(commands) => self.answer_and_publish(id, commands, Sender::Backend, persist),
            Err(e) => self.reject_http(id, "binary publish", e, persist),
        }
    }

    /// `POST /bitrix/rest/?CHANNEL_ID=…` (or `/bitrix/pubweb/`): client publishing (§6.4).
    pub(super) fn rest_publish(
        &mut self,
        id: ConnId,
        head: &RequestHead,
        body: Bytes,
        persist: Persist,
    ) {
        let public_id = subscription::parse(head.query(), &self.signer)
            .ok()
            .and_then(|s| s.public_id);
        let limits = self.v4_limits();
        match v4::decode_batch(&body, Caller::Client(public_id), &self.signer, limits) {
            Ok(commands) => {
                let Some(public_id) = public_id else {
                    unreachable!("decode_batch refuses a client without a public id");
                };
                self.answer_and_publish(id, commands, Sender::Client(public_id), persist);
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
        let answers = self.stats_answers(&commands);
        if !answers.is_empty() {
            let frame = websocket::server_frame(OP_BINARY, &v4::response_batch(answers));
            if let Some(conn) = self.conns.get_mut(id) {
                conn.outbox.push(frame);
            }
            self.mark_dirty(id);
        }
        self.publish_commands(commands, Sender::Client(public_id));
    }

    /// The legacy online query with `binaryMode=true` (§8.5): the channel stats answer.
    pub(super) fn answer_online_binary(
        &mut self,
        id: ConnId,
        channels: &[ChannelId],
        persist: Persist,
    ) {
        let now = Instant::now();
        let entries: Vec<(StatsQuery, bool)> = channels
            .iter()
            .map(|&ch| {
                let q = StatsQuery {
                    id: ch,
                    is_private: true,
                };
                (q, self.channel_online(&ch, now))
            })
            .collect();
        let body = v4::response_batch(vec![v4::channel_stats(entries)]);
        let r = http_response::full(200, "application/octet-stream", &body, persist);
        self.respond(id, r, persist);
    }

    fn reject_http(&mut self, id: ConnId, what: &str, e: ApiError, persist: Persist) {
        log::info!("{id}: {what} rejected: {e}");
        self.count_error(e);
        self.respond_error(id, e, persist);
    }

    fn count_error(&mut self, e: ApiError) {
        let code = e
            .code()
            .map_or_else(|| e.status().to_string(), |c| c.to_string());
        self.metrics.count_publish_error(&code);
    }

    /// Answers a validated batch over HTTP — the stats responses in order, or an empty 200
    /// when it has none — and only then publishes its messages: PHP reads with a 1 s timeout
    /// and must not wait behind the fan-out (§8.1).
    fn answer_and_publish(
        &mut self,
        id: ConnId,
        commands: Vec<Command>,
        sender: Sender,
        persist: Persist,
    ) {
        let answers = self.stats_answers(&commands);
        let r = if answers.is_empty() {
            http_response::full(200, "text/plain", b"", persist)
        } else {
            let body = v4::response_batch(answers);
            http_response::full(200, "application/octet-stream", &body, persist)
        };
        self.respond(id, r, persist);
        self.flush_conn(id);
        self.publish_commands(commands, sender);
    }

    /// One `Response` per stats request, in request order; counts every request.
    fn stats_answers(&mut self, commands: &[Command]) -> Vec<response::Command> {
        let now = Instant::now();
        let mut answers = Vec::new();
        for c in commands {
            self.stats.count_request(c.name(), now_ms());
            match c {
                Command::Publish(_) => {}
                Command::ChannelStats(ids) => {
                    let entries = ids.iter().map(|&q| (q, self.channel_online(&q.id, now)));
                    answers.push(v4::channel_stats(entries.collect::<Vec<_>>()));
                }
                Command::ServerStats => {
                    let json = self.stats.render(
                        &self.process_id,
                        self.registry.private_channels(),
                        &self.cfg.limits,
                        now_ms(),
                    );
                    answers.push(v4::server_stats(json));
                }
            }
        }
        answers
    }

    fn publish_commands(&mut self, commands: Vec<Command>, sender: Sender) {
        for c in commands {
            if let Command::Publish(messages) = c {
                for m in messages {
                    self.publish(m.body, m.expiry, sender, m.kind, &m.receivers);
                }
            }
        }
    }
}
