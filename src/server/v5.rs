//! Protocol v5 on the loop (docs/v5.md): the backend endpoint `/bitrix/api/` (publish,
//! presence calls), client requests over a v5 WebSocket, and "last seen" presence.

use std::collections::{HashMap, HashSet};

use serde_json::{Map, Value};
use tungstenite::Bytes;

use crate::channel::ChannelId;
use crate::conn::Phase;
use crate::error::ApiError;
use crate::http::RequestHead;
use crate::message::{Sender, now_ms};
use crate::query;
use crate::registry::Kind;
use crate::response::{self, Persist};
use crate::slab::ConnId;
use crate::store::{Draft, Job, PresenceSync, Receiver, StoreError};
use crate::v5::{self, code};
use crate::websocket;

use super::Server;
use super::store_io::Waiter;

/// Last-seen times kept, at most (docs/v5.md, "Presence").
const MAX_LAST_SEEN: usize = 200_000;
/// Last-seen times older than this are forgotten.
const LAST_SEEN_MAX_AGE: u64 = 30 * 86_400;
/// Users one `getUsersLastSeen` may ask about.
const MAX_LAST_SEEN_QUERY: usize = 1000;

/// Who was seen when, for `getUsersLastSeen` (docs/v5.md, "Presence").
#[derive(Default)]
pub(super) struct Presence {
    /// Unix seconds of the last moment each user was known connected (the last connection
    /// closed or the last long poll ended) or reported by the portal.
    last_seen: HashMap<u64, u64>,
    /// Users this instance counts online: `None` while they have a connection here,
    /// `Some(t)` when the last one is gone and they go offline at unix time `t`.
    online: HashMap<u64, Option<u64>>,
    /// Watched user → the connections that asked (`subscribeStatusChange`).
    watchers: HashMap<u64, Vec<ConnId>>,
    /// Connection → the users it watches, at most [`MAX_WATCHED`].
    watching: HashMap<ConnId, Vec<u64>>,
    // With a shared store (docs/redis.md, "v5 presence"): what the next presence job sends.
    /// Users this instance started counting online.
    added: HashSet<u64>,
    /// Users it stopped counting, with when they were last seen.
    removed: HashMap<u64, u64>,
    /// Watched users whose watchers here changed.
    watch_dirty: HashSet<u64>,
    /// Send the whole state next: the store lost it, or a job failed.
    pub(super) resync: bool,
    /// Something was ever sent: renew this instance every sweep from then on.
    active: bool,
    /// `getUsersLastSeen` requests waiting for the store, by their number.
    deferred: HashMap<u64, Deferred>,
    next_deferred: u64,
}

/// A JSON-RPC request (a WebSocket message, or a backend call when `persist` is set) whose
/// answers wait for the store: `answers[i]` is `None` until known.
struct Deferred {
    conn: ConnId,
    persist: Option<Persist>,
    array: bool,
    answers: Vec<Option<Value>>,
}

/// One `getUsersLastSeen` asked of a shared store.
pub(super) struct LastSeenWait {
    deferred: u64,
    slot: usize,
    rpc_id: Option<Value>,
    users: Vec<u64>,
}

/// A crashed instance's users stop counting this long past ONLINE_TTL after its last renewal
/// (renewed every sweep, 5 s): room for a slow pass or a slow Redis (docs/redis.md).
const INSTANCE_GRACE: u32 = 20;

/// Users one connection may watch.
const MAX_WATCHED: usize = 1000;

impl Presence {
    /// Records `at` for `user` unless a newer time is known; bounded in count and age.
    pub(super) fn saw(&mut self, user: u64, at: u64) {
        let e = self.last_seen.entry(user).or_insert(at);
        *e = (*e).max(at);
        if self.last_seen.len() > MAX_LAST_SEEN {
            let cutoff = at.saturating_sub(LAST_SEEN_MAX_AGE);
            self.last_seen.retain(|_, t| *t > cutoff);
            while self.last_seen.len() > MAX_LAST_SEEN {
                let Some((&oldest, _)) = self.last_seen.iter().min_by_key(|(_, t)| **t) else {
                    break;
                };
                self.last_seen.remove(&oldest);
            }
        }
    }

    fn get(&self, user: u64, now: u64) -> Option<u64> {
        self.last_seen
            .get(&user)
            .copied()
            .filter(|&t| now.saturating_sub(t) <= LAST_SEEN_MAX_AGE)
    }
}

impl Server {
    /// `POST /bitrix/api/?signature=<sig(body)>` (docs/v5.md, "The backend endpoint").
    pub(super) fn jsonrpc_endpoint(
        &mut self,
        id: ConnId,
        head: &RequestHead,
        body: Bytes,
        persist: Persist,
    ) {
        self.metrics.v5_backend_requests += 1;
        let signed = query::param(head.query(), "signature")
            .is_some_and(|sig| self.signer.verify_hex(&body, &sig));
        if !signed {
            self.metrics.v5_errors += 1;
            self.metrics.signature_failures += 1;
            log::info!("{id}: v5 backend call with a bad or missing signature");
            self.respond_error(id, ApiError::WrongSignature, persist);
            return;
        }
        // With HOST_ID set, the call must name it (the query's `hostId`, or older modules'
        // `X-HostId`): a portal signing with the same key for another host id is refused.
        // Not a signature failure, so 200 with a JSON-RPC error (docs/v5.md).
        if let Some(want) = self.cfg.host_id.as_deref() {
            let given = query::param(head.query(), "hostId")
                .map(|v| String::from_utf8_lossy(&v).into_owned())
                .or_else(|| head.host_id.as_deref().map(str::to_owned));
            if given.as_deref() != Some(want) {
                log::info!("{id}: v5 backend call for host id {given:?}, not HOST_ID");
                let e = v5::error(None, code::INVALID_REQUEST, "Wrong host id");
                return self.json_answer(id, &e, persist);
            }
        }
        let parsed = if v5::too_deep(&body) {
            None
        } else {
            serde_json::from_slice::<Value>(&body).ok()
        };
        let Some(request) = parsed else {
            return self.json_answer(id, &v5::error(None, code::PARSE, "Parse error"), persist);
        };
        let (calls, array) = match request {
            Value::Array(calls) => (calls, true),
            one => (vec![one], false),
        };
        if calls.is_empty() || calls.len() > v5::MAX_BATCH {
            let e = v5::error(None, code::INVALID_REQUEST, "Invalid Request");
            return self.json_answer(id, &e, persist);
        }
        let now = now_ms() / 1000;
        let mut answers: Vec<Option<Value>> = Vec::with_capacity(calls.len());
        let mut drafts: Vec<Draft> = Vec::new();
        let mut published: Vec<usize> = Vec::new();
        let shared = self.store.shared();
        let mut asks: Vec<LastSeenWait> = Vec::new();
        let mut seen_at: Vec<(u64, u64)> = Vec::new();
        for call in &calls {
            let rpc_id = call.get("id");
            let method = call.get("method").and_then(Value::as_str);
            let params = call.get("params").unwrap_or(&Value::Null);
            let answer = match method {
                _ if call.get("jsonrpc").and_then(Value::as_str) != Some("2.0") => {
                    v5::error(rpc_id, code::INVALID_REQUEST, "Invalid Request")
                }
                Some("publish") => match v5::parse_publish(params) {
                    Ok(p) => {
                        published.push(answers.len());
                        drafts.push(Self::v5_draft(p, Sender::Backend));
                        answers.push(None);
                        continue;
                    }
                    Err(e) => v5::publish_error(rpc_id, e),
                },
                Some("getUsersLastSeen") => match v5::user_list(params.get("userList")) {
                    Ok(users) if users.len() <= MAX_LAST_SEEN_QUERY && shared => {
                        asks.push(LastSeenWait {
                            deferred: 0,
                            slot: answers.len(),
                            rpc_id: rpc_id.cloned(),
                            users,
                        });
                        answers.push(None);
                        continue;
                    }
                    Ok(users) if users.len() <= MAX_LAST_SEEN_QUERY => {
                        v5::result(rpc_id, self.last_seen_of(&users, now))
                    }
                    _ => v5::error(rpc_id, code::INVALID_PARAMS, "Invalid params"),
                },
                Some("updateUsersLastSeen") => match params.as_object() {
                    Some(m) if m.len() <= MAX_LAST_SEEN_QUERY => {
                        for (user, at) in m {
                            let (Ok(user), Some(at)) = (user.parse::<u64>(), at.as_u64()) else {
                                continue;
                            };
                            // Only where the server has no newer observation of its own.
                            self.presence.saw(user, at.min(now));
                            if shared {
                                seen_at.push((user, at.min(now)));
                            }
                        }
                        v5::result(rpc_id, Value::Object(Map::new()))
                    }
                    _ => v5::error(rpc_id, code::INVALID_PARAMS, "Invalid params"),
                },
                Some(_) => v5::error(rpc_id, code::METHOD_NOT_FOUND, "Method not found"),
                None => v5::error(rpc_id, code::INVALID_REQUEST, "Invalid Request"),
            };
            if answer.get("error").is_some() {
                self.metrics.v5_errors += 1;
            }
            answers.push(Some(answer));
        }
        if !seen_at.is_empty() {
            self.submit_quiet(Job::SeenAt { entries: seen_at });
        }
        if !asks.is_empty() && drafts.is_empty() {
            return self.defer_last_seen(id, Some(persist), array, answers, asks);
        }
        // Mixed with publishes in one body (PHP sends them apart): answered from this
        // instance's own observations (docs/v5.md).
        for a in asks {
            answers[a.slot] = Some(v5::result(
                a.rpc_id.as_ref(),
                self.last_seen_of(&a.users, now),
            ));
        }
        let render = |answers: &[Option<Value>], fill: &Value| -> Vec<u8> {
            let all: Vec<Value> = answers
                .iter()
                .map(|a| a.clone().unwrap_or_else(|| fill.clone()))
                .collect();
            if array {
                serde_json::to_vec(&all).unwrap_or_default()
            } else {
                serde_json::to_vec(&all[0]).unwrap_or_default()
            }
        };
        if drafts.is_empty() {
            let body = render(&answers, &Value::Null);
            let r = response::full(200, "application/json", &body, persist);
            return self.respond(id, r, persist);
        }
        let ok = render(
            &answers,
            &v5::result(Some(&Value::Null), Value::Object(Map::new())),
        );
        let failed = render(
            &answers,
            &v5::error(Some(&Value::Null), code::INTERNAL, "Store unavailable"),
        );
        self.publish_json(Some((id, persist)), drafts, ok, failed);
    }

    fn json_answer(&mut self, id: ConnId, v: &Value, persist: Persist) {
        self.metrics.v5_errors += 1;
        let body = serde_json::to_vec(v).unwrap_or_default();
        let r = response::full(200, "application/json", &body, persist);
        self.respond(id, r, persist);
    }

    pub(super) fn v5_draft(p: v5::Publish, sender: Sender) -> Draft {
        let mut receivers: Vec<Receiver> = p.channels.iter().map(|&c| (c, Kind::Private)).collect();
        receivers.extend(p.users.iter().map(|&u| (ChannelId::user(u), Kind::Private)));
        let mut d = Self::draft(Bytes::from(p.body), p.expiry, sender, p.kind, receivers);
        d.user_params = p.user_params.map(Bytes::from);
        d
    }

    /// `{"<user>": seconds since last seen}`: 0 while connected here (or within ONLINE_TTL of
    /// the last connection), users never seen left out.
    fn last_seen_of(&self, users: &[u64], now: u64) -> Value {
        let ttl = u64::from(self.cfg.store.online_ttl);
        let mut out = Map::new();
        for &u in users {
            let connected = !self.registry.subscribers(&ChannelId::user(u)).is_empty();
            let ago = match (connected, self.presence.get(u, now)) {
                (true, _) => 0,
                (false, Some(t)) if now.saturating_sub(t) < ttl => 0,
                (false, Some(t)) => now.saturating_sub(t),
                (false, None) => continue,
            };
            out.insert(u.to_string(), Value::from(ago));
        }
        Value::Object(out)
    }

    /// A v5 subscriber registered: its user is online, and watchers hear of it when it was
    /// not before.
    pub(super) fn v5_joined(&mut self, user: Option<u64>) {
        let Some(u) = user else { return };
        if self.presence.online.insert(u, None).is_none() {
            if self.store.shared() {
                // Announced by whichever instance finds the change (docs/redis.md).
                self.presence.removed.remove(&u);
                self.presence.added.insert(u);
            } else {
                self.push_status(u, true);
            }
        }
    }

    /// A v5 subscriber's connection ended (or a long poll was answered): its user was seen
    /// now, and goes offline ONLINE_TTL after its last connection here is gone.
    pub(super) fn v5_left(&mut self, id: ConnId, user: Option<u64>) {
        if let Some(watched) = self.presence.watching.remove(&id) {
            for w in watched {
                self.unwatch(id, w);
            }
        }
        let Some(u) = user else { return };
        let now = now_ms() / 1000;
        self.presence.saw(u, now);
        if self.registry.subscribers(&ChannelId::user(u)).is_empty() {
            let at = now + u64::from(self.cfg.store.online_ttl);
            self.presence.online.insert(u, Some(at));
        }
    }

    /// Periodic: users whose last connection has been gone for ONLINE_TTL go offline.
    pub(super) fn v5_sweep(&mut self) {
        let now = now_ms() / 1000;
        let gone: Vec<u64> = self
            .presence
            .online
            .iter()
            .filter(|(_, at)| at.is_some_and(|t| t <= now))
            .map(|(&u, _)| u)
            .collect();
        let shared = self.store.shared();
        for u in gone {
            self.presence.online.remove(&u);
            if shared {
                let seen = self.presence.last_seen.get(&u).copied().unwrap_or(now);
                self.presence.added.remove(&u);
                self.presence.removed.insert(u, seen);
            } else {
                self.push_status(u, false);
            }
        }
        if shared {
            self.v5_presence_flush(true);
        }
    }

    /// With a shared store, sends this pass's presence changes as one job (every pass with
    /// changes, and every sweep to renew this instance); the answer says which users changed
    /// across all instances (docs/redis.md, "v5 presence").
    pub(super) fn v5_presence_flush(&mut self, heartbeat: bool) {
        if !self.store.shared() {
            return;
        }
        let p = &mut self.presence;
        let dirty = !p.added.is_empty() || !p.removed.is_empty() || !p.watch_dirty.is_empty();
        // An instance without v5 users writes no v5: keys at all.
        if !(dirty || heartbeat && p.active) {
            return;
        }
        let full = std::mem::take(&mut p.resync);
        p.active = true;
        let (added, removed, watched): (Vec<u64>, Vec<(u64, u64)>, Vec<u64>) = if full {
            p.added.clear();
            p.removed.clear();
            p.watch_dirty.clear();
            (
                p.online.keys().copied().collect(),
                Vec::new(),
                p.watchers.keys().copied().collect(),
            )
        } else {
            (
                p.added.drain().collect(),
                p.removed.drain().collect(),
                p.watch_dirty.drain().collect(),
            )
        };
        let watch = watched
            .into_iter()
            .map(|u| (u, self.watcher_users(u)))
            .collect();
        let grace = self.cfg.store.online_ttl + INSTANCE_GRACE;
        let job = |token| Job::Presence {
            token,
            full,
            grace,
            added,
            removed,
            watch,
        };
        if !self.submit(job, Waiter::Presence) {
            self.presence.resync = true;
        }
    }

    pub(super) fn on_presence(&mut self, result: Result<PresenceSync, StoreError>) {
        match result {
            Ok(sync) => {
                for (user, online, watchers) in sync.changes {
                    self.status_push(user, online, watchers);
                }
                if sync.resync {
                    // Redis lost this instance's state (or aged it out): send it whole now.
                    // The answer to a whole state never asks again.
                    self.presence.resync = true;
                    self.v5_presence_flush(true);
                }
            }
            Err(e) => {
                log::debug!("v5 presence not synced ({e}); sending it whole next time");
                self.presence.resync = true;
            }
        }
    }

    /// The users of the connections here that watch `user`.
    fn watcher_users(&self, user: u64) -> Vec<u64> {
        let mut out: Vec<u64> = Vec::new();
        for &c in self.presence.watchers.get(&user).into_iter().flatten() {
            if let Some(Phase::WebSocket(ws)) = self.conns.get(c).map(|c| &c.phase)
                && let Some(w) = ws.sub.user
                && !out.contains(&w)
            {
                out.push(w);
            }
        }
        out
    }

    fn unwatch(&mut self, id: ConnId, user: u64) {
        if self.store.shared() {
            self.presence.watch_dirty.insert(user);
        }
        if let Some(list) = self.presence.watchers.get_mut(&user) {
            list.retain(|&c| c != id);
            if list.is_empty() {
                self.presence.watchers.remove(&user);
            }
        }
    }

    fn watch(&mut self, id: ConnId, user: u64, on: bool) -> bool {
        let mine = self.presence.watching.entry(id).or_default();
        if on {
            if !mine.contains(&user) {
                if mine.len() >= MAX_WATCHED {
                    return false;
                }
                mine.push(user);
                self.presence.watchers.entry(user).or_default().push(id);
                if self.store.shared() {
                    self.presence.watch_dirty.insert(user);
                }
            }
        } else {
            mine.retain(|&w| w != user);
            if mine.is_empty() {
                self.presence.watching.remove(&id);
            }
            self.unwatch(id, user);
        }
        true
    }

    /// Tells the watchers of `user` that it went online or offline: a message to each
    /// watcher's own user, through the store like any publish, so it has a real `mid` and
    /// never moves a client's resume position past messages it has not seen.
    fn push_status(&mut self, user: u64, online: bool) {
        let watchers = self.watcher_users(user);
        self.status_push(user, online, watchers);
    }

    /// The `userStatusChange` of `user` to the users `watchers`, as one message.
    fn status_push(&mut self, user: u64, online: bool, mut watchers: Vec<u64>) {
        watchers.sort_unstable();
        watchers.dedup();
        let receivers: Vec<Receiver> = watchers
            .into_iter()
            .map(|w| (ChannelId::user(w), Kind::Private))
            .collect();
        if receivers.is_empty() {
            return;
        }
        let body = serde_json::json!({
            "module_id": "online",
            "command": "userStatusChange",
            "params": {"user_id": user, "online": online},
            "extra": {"server_time_unix": now_ms() as f64 / 1000.0},
        });
        let body = Bytes::from(serde_json::to_vec(&body).unwrap_or_default());
        let kind = Some("online_userStatusChange".to_owned());
        let draft = Self::draft(body, 0, Sender::Backend, kind, receivers);
        self.publish_batch(None, vec![draft]);
    }

    // ---- client requests over a v5 WebSocket ----

    /// One text message from a v5 client that is neither `pong` nor `mack:` (docs/v5.md,
    /// "Client requests"). Every answer goes out on the socket, which stays open.
    pub(super) fn v5_client_request(&mut self, id: ConnId, text: &[u8]) {
        self.metrics.v5_client_requests += 1;
        let parsed = if v5::too_deep(text) {
            None
        } else {
            serde_json::from_slice::<Value>(text).ok()
        };
        let Some(request) = parsed else {
            return self.ws_json(id, &v5::error(None, code::PARSE, "Parse error"));
        };
        let (calls, array) = match request {
            Value::Array(calls) => (calls, true),
            one => (vec![one], false),
        };
        if calls.is_empty() || calls.len() > 100 {
            return self.ws_json(
                id,
                &v5::error(None, code::INVALID_REQUEST, "Invalid Request"),
            );
        }
        let mut answers = Vec::new();
        let mut asks: Vec<LastSeenWait> = Vec::new();
        let shared = self.store.shared();
        for call in &calls {
            // Stray answers (the core client answers every notification) are ignored.
            if call.get("method").is_none()
                && (call.get("result").is_some() || call.get("error").is_some())
            {
                continue;
            }
            let rpc_id = call.get("id").filter(|v| v.is_number() || v.is_string());
            if shared
                && rpc_id.is_some()
                && call.get("jsonrpc").and_then(Value::as_str) == Some("2.0")
                && call.get("method").and_then(Value::as_str) == Some("getUsersLastSeen")
            {
                let params = call.get("params").unwrap_or(&Value::Null);
                if let Ok(users) = v5::user_list(params.get("userList"))
                    && users.len() <= MAX_LAST_SEEN_QUERY
                {
                    asks.push(LastSeenWait {
                        deferred: 0,
                        slot: answers.len(),
                        rpc_id: rpc_id.cloned(),
                        users,
                    });
                    answers.push(None);
                    continue;
                }
            }
            let answer = self.v5_client_call(id, call);
            if answer.get("error").is_some() {
                self.metrics.v5_errors += 1;
            }
            // Notifications (no id) get no answer.
            if call.get("id").is_some() {
                answers.push(Some(answer));
            }
        }
        if !asks.is_empty() {
            return self.defer_last_seen(id, None, array, answers, asks);
        }
        let answers: Vec<Value> = answers.into_iter().flatten().collect();
        match (array, answers.len()) {
            (_, 0) => {}
            (false, _) => self.ws_json(id, &answers[0]),
            (true, _) => self.ws_json(id, &Value::Array(answers)),
        }
    }

    fn v5_client_call(&mut self, id: ConnId, call: &Value) -> Value {
        let rpc_id = call.get("id").filter(|v| v.is_number() || v.is_string());
        if call.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
            return v5::error(rpc_id, code::INVALID_REQUEST, "Invalid Request");
        }
        let params = call.get("params").unwrap_or(&Value::Null);
        let empty = || Value::Object(Map::new());
        let Some(Phase::WebSocket(ws)) = self.conns.get(id).map(|c| &c.phase) else {
            return v5::error(rpc_id, code::INTERNAL, "Internal error");
        };
        let user = ws.sub.user;
        match call.get("method").and_then(Value::as_str) {
            Some("ping") => v5::result(rpc_id, empty()),
            Some("listChannels") => {
                let channels: Vec<Value> = ws
                    .sub
                    .receivers
                    .iter()
                    .filter(|(c, _)| c.as_user().is_none())
                    .map(|(c, _)| Value::from(c.to_hex()))
                    .collect();
                let mut m = Map::new();
                m.insert("channels".into(), Value::Array(channels));
                v5::result(rpc_id, Value::Object(m))
            }
            Some("getUsersLastSeen") => match v5::user_list(params.get("userList")) {
                Ok(users) if users.len() <= MAX_LAST_SEEN_QUERY => {
                    v5::result(rpc_id, self.last_seen_of(&users, now_ms() / 1000))
                }
                _ => v5::error(rpc_id, code::INVALID_PARAMS, "Invalid params"),
            },
            Some(m @ ("subscribeStatusChange" | "unsubscribeStatusChange")) => {
                let on = m == "subscribeStatusChange";
                match params.get("userId").and_then(v5::user_id) {
                    Some(u) if self.watch(id, u, on) => v5::result(rpc_id, empty()),
                    _ => v5::error(rpc_id, code::INVALID_PARAMS, "Invalid params"),
                }
            }
            Some("publish") => match self.v5_client_publish(user, params) {
                Ok(draft) => {
                    self.publish_batch(None, vec![draft]);
                    v5::result(rpc_id, empty())
                }
                Err(e) => v5::publish_error(rpc_id, e),
            },
            Some(_) => v5::error(rpc_id, code::METHOD_NOT_FOUND, "Method not found"),
            None => v5::error(rpc_id, code::INVALID_REQUEST, "Invalid Request"),
        }
    }

    /// A client `publish`, checked as v4 client publishing is (docs/protocol.md#client-publishing): public ids
    /// with their signatures; `userList` from a user token only.
    fn v5_client_publish(&self, user: Option<u64>, params: &Value) -> Result<Draft, ApiError> {
        let p = params.as_object().ok_or(ApiError::WrongRequestData)?;
        let mut channels: Vec<ChannelId> = Vec::new();
        match p.get("channelList") {
            None | Some(Value::Null) => {}
            Some(Value::Array(list)) => {
                if list.len() > self.cfg.limits.max_channels_per_request {
                    return Err(ApiError::TooManyChannels);
                }
                for item in list {
                    let (pubid, sig) = match item {
                        Value::String(s) => {
                            s.split_once('.').ok_or(ApiError::InvalidChannelSignature)?
                        }
                        Value::Object(o) => (
                            o.get("publicId").and_then(Value::as_str).unwrap_or(""),
                            o.get("signature").and_then(Value::as_str).unwrap_or(""),
                        ),
                        _ => return Err(ApiError::InvalidChannelId),
                    };
                    let id =
                        ChannelId::from_hex(pubid.as_bytes()).ok_or(ApiError::InvalidChannelId)?;
                    let signed = format!("public:{pubid}");
                    if !self.signer.verify_hex(signed.as_bytes(), sig.as_bytes()) {
                        return Err(ApiError::InvalidChannelSignature);
                    }
                    if !channels.contains(&id) {
                        channels.push(id);
                    }
                }
            }
            Some(_) => return Err(ApiError::InvalidChannelId),
        }
        let users = v5::user_list(p.get("userList"))?;
        if !users.is_empty() && user.is_none() {
            return Err(ApiError::PublicChannelRequired);
        }
        if users.len() > self.cfg.limits.max_channels_per_request {
            return Err(ApiError::TooManyChannels);
        }
        if channels.is_empty() && users.is_empty() {
            return Err(ApiError::NoChannels);
        }
        let (body, kind) = v5::publish_body(p)?;
        let expiry = v5::expiry(p.get("expiry"))?;
        let sender = match user {
            Some(u) => Sender::Client(ChannelId::user(u)),
            None => Sender::Client(channels[0]),
        };
        let mut receivers: Vec<Receiver> = channels.iter().map(|&c| (c, Kind::Public)).collect();
        receivers.extend(users.iter().map(|&u| (ChannelId::user(u), Kind::Private)));
        Ok(Self::draft(
            Bytes::from(body),
            expiry,
            sender,
            kind,
            receivers,
        ))
    }

    /// Asks the shared store for the `getUsersLastSeen` calls `asks` of one request, whose
    /// other answers are ready; the request is answered when the last one comes.
    fn defer_last_seen(
        &mut self,
        conn: ConnId,
        persist: Option<Persist>,
        array: bool,
        answers: Vec<Option<Value>>,
        asks: Vec<LastSeenWait>,
    ) {
        self.presence.next_deferred += 1;
        let n = self.presence.next_deferred;
        let d = Deferred {
            conn,
            persist,
            array,
            answers,
        };
        self.presence.deferred.insert(n, d);
        if persist.is_some() {
            self.set_busy(conn);
        }
        for mut a in asks {
            a.deferred = n;
            let users = a.users.clone();
            let wait = Box::new(a);
            let token = self.next_token();
            match self.store.submit(Job::LastSeen { token, users }) {
                Ok(()) => {
                    self.waiting
                        .insert(token, (std::time::Instant::now(), Waiter::LastSeen(wait)));
                }
                Err(_) => {
                    self.queue_full("getUsersLastSeen answered from this instance");
                    let e = StoreError("store queue full".into());
                    self.on_last_seen(*wait, Err(e));
                }
            }
        }
    }

    /// A shared store's last-seen answer, merged with this instance's own observations
    /// (the more recent wins); a failing store leaves this instance's alone.
    pub(super) fn on_last_seen(
        &mut self,
        w: LastSeenWait,
        result: Result<Vec<Option<u64>>, StoreError>,
    ) {
        let now = now_ms() / 1000;
        let mut local = match self.last_seen_of(&w.users, now) {
            Value::Object(m) => m,
            _ => Map::new(),
        };
        match result {
            Ok(remote) => {
                for (u, r) in w.users.iter().zip(remote) {
                    let Some(r) = r else { continue };
                    let e = local.entry(u.to_string()).or_insert(Value::from(r));
                    if e.as_u64().is_some_and(|l| r < l) {
                        *e = Value::from(r);
                    }
                }
            }
            Err(e) => log::info!("getUsersLastSeen answered from this instance only: {e}"),
        }
        let answer = v5::result(w.rpc_id.as_ref(), Value::Object(local));
        let Some(d) = self.presence.deferred.get_mut(&w.deferred) else {
            return;
        };
        if let Some(slot) = d.answers.get_mut(w.slot) {
            *slot = Some(answer);
        }
        if d.answers.iter().any(Option::is_none) {
            return;
        }
        let Some(d) = self.presence.deferred.remove(&w.deferred) else {
            return;
        };
        let all: Vec<Value> = d.answers.into_iter().flatten().collect();
        let v = if d.array {
            Value::Array(all)
        } else {
            all.into_iter().next().unwrap_or(Value::Null)
        };
        match d.persist {
            Some(persist) => {
                if self
                    .conns
                    .get(d.conn)
                    .is_some_and(|c| matches!(c.phase, Phase::Busy))
                {
                    let body = serde_json::to_vec(&v).unwrap_or_default();
                    self.answer_busy(d.conn, persist, |p| {
                        response::full(200, "application/json", &body, p)
                    });
                }
            }
            None => {
                if let Some(Phase::WebSocket(_)) = self.conns.get(d.conn).map(|c| &c.phase) {
                    self.ws_json(d.conn, &v);
                }
            }
        }
    }

    /// Queues one JSON-RPC text message on a v5 WebSocket.
    fn ws_json(&mut self, id: ConnId, v: &Value) {
        let text = serde_json::to_vec(v).unwrap_or_default();
        if let Some(conn) = self.conns.get_mut(id) {
            conn.outbox
                .push(websocket::server_frame(websocket::OP_TEXT, &text));
        }
        self.mark_dirty(id);
    }
}
