//! Protocol v5 JSON pieces (docs/v5.md): the `incoming.message` a subscriber gets, the merge
//! of `dictionary` and `user_params` into a body, and JSON-RPC answers.
//!
//! Pure functions over bytes and `serde_json` values; nothing here touches connections.

use serde_json::{Map, Value};

use crate::channel::ChannelId;
use crate::error::ApiError;
use crate::message::{Message, Sender};
use crate::websocket::{Frame, OP_CONTINUATION, OP_TEXT};

/// Deepest JSON nesting accepted from a client or the backend (serde_json stops at 128
/// anyway; this keeps the answer a JSON-RPC error rather than a parse failure deep inside).
pub const MAX_DEPTH: usize = 64;

/// True when `bytes` nests arrays/objects deeper than [`MAX_DEPTH`] (strings are skipped).
pub fn too_deep(bytes: &[u8]) -> bool {
    let (mut depth, mut in_str, mut esc) = (0usize, false, false);
    for &b in bytes {
        if in_str {
            match (esc, b) {
                (true, _) => esc = false,
                (false, b'\\') => esc = true,
                (false, b'"') => in_str = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_str = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

/// Adds `extra`'s keys to `body.params` (the right side wins). A missing `params`, an empty
/// array (PHP's `[]`) or any other non-object becomes an object first.
pub fn merge_params(body: &mut Map<String, Value>, extra: &Map<String, Value>) {
    if extra.is_empty() {
        return;
    }
    let params = body
        .entry("params")
        .or_insert_with(|| Value::Object(Map::new()));
    if !params.is_object() {
        *params = Value::Object(Map::new());
    }
    if let Value::Object(p) = params {
        for (k, v) in extra {
            p.insert(k.clone(), v.clone());
        }
    }
}

/// The `user_params` entry of `user` in the stored `user_params` object, when it is an object.
pub fn user_params_of(all: &[u8], user: u64) -> Option<Map<String, Value>> {
    let Ok(Value::Object(mut all)) = serde_json::from_slice::<Value>(all) else {
        return None;
    };
    match all.remove(&user.to_string()) {
        Some(Value::Object(m)) if !m.is_empty() => Some(m),
        _ => None,
    }
}

fn write_sender(sender: Sender, out: &mut Vec<u8>) {
    match sender {
        Sender::Backend => out.extend_from_slice(br#"{"type":2}"#),
        Sender::Client(id) => {
            out.extend_from_slice(br#"{"type":1,"id":""#);
            match id.as_user() {
                Some(user) => out.extend_from_slice(user.to_string().as_bytes()),
                None => id.write_hex(out),
            }
            out.extend_from_slice(b"\"}");
        }
    }
}

/// The `incoming.message` notification of `msg`, with `params` merged into the body when
/// given. `None` when the body is not a JSON object: a v3/v4 publish of plain text has no v5
/// form.
pub fn incoming(msg: &Message, params: Option<&Map<String, Value>>) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(msg.body.len() + 140);
    out.extend_from_slice(br#"{"jsonrpc":"2.0","method":"incoming.message","params":{"mid":""#);
    msg.mid.write_to(&mut out);
    out.extend_from_slice(br#"","body":"#);
    match params {
        None => {
            // Relayed byte-exact when it is an object.
            let trimmed = msg.body.trim_ascii();
            if !trimmed.starts_with(b"{") || too_deep(trimmed) {
                return None;
            }
            serde_json::from_slice::<Value>(trimmed)
                .ok()
                .filter(Value::is_object)?;
            out.extend_from_slice(trimmed);
        }
        Some(params) => {
            let Ok(Value::Object(mut body)) = serde_json::from_slice::<Value>(&msg.body) else {
                return None;
            };
            merge_params(&mut body, params);
            serde_json::to_writer(&mut out, &body).ok()?;
        }
    }
    out.extend_from_slice(br#","sender":"#);
    write_sender(msg.sender, &mut out);
    out.extend_from_slice(b"}}");
    Some(out)
}

/// Several JSON texts as one: the text itself for one, a JSON array for more.
pub fn batch<B: AsRef<[u8]>>(items: &[B]) -> Vec<u8> {
    if let [one] = items {
        return one.as_ref().to_vec();
    }
    let len: usize = items.iter().map(|i| i.as_ref().len() + 1).sum();
    let mut out = Vec::with_capacity(len + 2);
    out.push(b'[');
    for (n, i) in items.iter().enumerate() {
        if n > 0 {
            out.push(b',');
        }
        out.extend_from_slice(i.as_ref());
    }
    out.push(b']');
    out
}

/// The standard JSON-RPC error codes (docs/v5.md, "Errors").
pub mod code {
    pub const PARSE: i64 = -32700;
    pub const INVALID_REQUEST: i64 = -32600;
    pub const METHOD_NOT_FOUND: i64 = -32601;
    pub const INVALID_PARAMS: i64 = -32602;
    pub const INTERNAL: i64 = -32603;
}

/// `{"jsonrpc":"2.0","id":<id>,"result":<result>}`; `id` `None` leaves it out.
pub fn result(id: Option<&Value>, result: Value) -> Value {
    let mut m = Map::new();
    m.insert("jsonrpc".into(), Value::from("2.0"));
    if let Some(id) = id {
        m.insert("id".into(), id.clone());
    }
    m.insert("result".into(), result);
    Value::Object(m)
}

/// `{"jsonrpc":"2.0","id":<id>,"error":{"code":…,"message":…}}`; `id` `None` leaves it out.
pub fn error(id: Option<&Value>, code: i64, message: &str) -> Value {
    let mut e = Map::new();
    e.insert("code".into(), Value::from(code));
    e.insert("message".into(), Value::from(message));
    let mut m = Map::new();
    m.insert("jsonrpc".into(), Value::from("2.0"));
    if let Some(id) = id {
        m.insert("id".into(), id.clone());
    }
    m.insert("error".into(), Value::Object(e));
    Value::Object(m)
}

/// Collects a v5 subscriber's text frames into whole messages, as
/// [`crate::v4::assemble_binary`] does for binary ones; binary input is ignored.
pub fn assemble_text(partial: &mut Option<Vec<u8>>, frame: Frame) -> Option<Vec<u8>> {
    match (frame.opcode, partial.as_mut()) {
        (OP_TEXT, _) if frame.fin => {
            *partial = None;
            Some(frame.payload)
        }
        (OP_TEXT, _) => {
            *partial = Some(frame.payload);
            None
        }
        (OP_CONTINUATION, Some(buf)) => {
            buf.extend_from_slice(&frame.payload);
            if frame.fin { partial.take() } else { None }
        }
        _ => None,
    }
}

/// Receivers (channels plus users) of one v5 publish, at most.
pub const MAX_RECEIVERS: usize = 1000;
/// Elements of one backend batch, at most.
pub const MAX_BATCH: usize = 1000;
/// Expiry when a publish gives none, or 0.
pub const DEFAULT_EXPIRY: u32 = 86_400;

/// One checked v5 `publish` (backend or client).
#[derive(Debug, Clone, PartialEq)]
pub struct Publish {
    pub channels: Vec<ChannelId>,
    pub users: Vec<u64>,
    /// Compact JSON of the body with the `dictionary` merged into `params`.
    pub body: Vec<u8>,
    /// Compact JSON of `user_params`, when it has entries.
    pub user_params: Option<Vec<u8>>,
    pub expiry: u32,
    /// `type`, or `<module_id>_<command>`.
    pub kind: Option<String>,
}

/// A user id as a JSON number or decimal string; > 0.
pub fn user_id(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) if !s.is_empty() && s.len() < 20 => s.parse().ok(),
        _ => None,
    }
    .filter(|&u| u > 0)
}

/// Checks the `params` of a backend `publish` (docs/v5.md, "The backend endpoint"):
/// unsigned 32-hex `channelList` ids, integer `userList`, an object `body`.
pub fn parse_publish(params: &Value) -> Result<Publish, ApiError> {
    let params = params.as_object().ok_or(ApiError::WrongRequestData)?;
    let mut channels = Vec::new();
    match params.get("channelList") {
        None | Some(Value::Null) => {}
        Some(Value::Array(list)) => {
            if list.len() > MAX_RECEIVERS {
                return Err(ApiError::TooManyChannels);
            }
            for v in list {
                let id = v
                    .as_str()
                    .and_then(|s| ChannelId::from_hex(s.as_bytes()))
                    .ok_or(ApiError::InvalidChannelId)?;
                if !channels.contains(&id) {
                    channels.push(id);
                }
            }
        }
        Some(_) => return Err(ApiError::InvalidChannelId),
    }
    let users = user_list(params.get("userList"))?;
    if channels.len() + users.len() > MAX_RECEIVERS {
        return Err(ApiError::TooManyChannels);
    }
    if channels.is_empty() && users.is_empty() {
        return Err(ApiError::NoChannels);
    }
    let (body, kind) = publish_body(params)?;
    let user_params = match params.get("user_params") {
        None | Some(Value::Null) => None,
        Some(Value::Object(m)) if m.is_empty() => None,
        Some(v @ Value::Object(_)) => {
            Some(serde_json::to_vec(v).map_err(|_| ApiError::WrongRequestData)?)
        }
        Some(Value::Array(a)) if a.is_empty() => None,
        Some(_) => return Err(ApiError::WrongRequestData),
    };
    Ok(Publish {
        channels,
        users,
        body,
        user_params,
        expiry: expiry(params.get("expiry"))?,
        kind,
    })
}

/// `userList`: absent, or an array of user ids (each once).
pub fn user_list(v: Option<&Value>) -> Result<Vec<u64>, ApiError> {
    let mut users = Vec::new();
    match v {
        None | Some(Value::Null) => {}
        Some(Value::Array(list)) => {
            if list.len() > MAX_RECEIVERS {
                return Err(ApiError::TooManyChannels);
            }
            for v in list {
                let u = user_id(v).ok_or(ApiError::InvalidChannelId)?;
                if !users.contains(&u) {
                    users.push(u);
                }
            }
        }
        Some(_) => return Err(ApiError::InvalidChannelId),
    }
    Ok(users)
}

/// `expiry`: 0 or absent is the default; otherwise a whole number of seconds.
pub fn expiry(v: Option<&Value>) -> Result<u32, ApiError> {
    match v {
        None | Some(Value::Null) => Ok(DEFAULT_EXPIRY),
        Some(v) => match user_id(v) {
            Some(n) => Ok(u32::try_from(n).unwrap_or(u32::MAX)),
            None if v.as_u64() == Some(0) || v.as_str() == Some("0") => Ok(DEFAULT_EXPIRY),
            None => Err(ApiError::WrongRequestData),
        },
    }
}

/// The body with the `dictionary` merged, as compact JSON, and the message type.
pub fn publish_body(params: &Map<String, Value>) -> Result<(Vec<u8>, Option<String>), ApiError> {
    let Some(Value::Object(body)) = params.get("body") else {
        return Err(ApiError::WrongRequestData);
    };
    let mut body = body.clone();
    // Older modules leave `expiry` inside the body; it is not part of the message.
    body.remove("expiry");
    match params.get("dictionary") {
        None | Some(Value::Null) => {}
        Some(Value::Object(d)) => merge_params(&mut body, d),
        Some(Value::Array(a)) if a.is_empty() => {}
        Some(_) => return Err(ApiError::WrongRequestData),
    }
    let kind = match params.get("type").and_then(Value::as_str) {
        Some(t) if !t.is_empty() => Some(t.to_owned()),
        _ => match (
            body.get("module_id").and_then(Value::as_str),
            body.get("command").and_then(Value::as_str),
        ) {
            (Some(m), Some(c)) => Some(format!("{m}_{c}")),
            _ => None,
        },
    };
    let bytes = serde_json::to_vec(&Value::Object(body)).map_err(|_| ApiError::WrongRequestData)?;
    Ok((bytes, kind))
}

/// The JSON-RPC error for a refused publish: -32602 with the Bitrix text (docs/protocol.md#errors-and-close-codes).
pub fn publish_error(id: Option<&Value>, e: ApiError) -> Value {
    error(id, code::INVALID_PARAMS, &e.to_string())
}

/// `pong` or `mack:<mid>`: what a v5 client sends besides requests (docs/v5.md,
/// "Keep-alive").
pub fn is_keepalive_text(text: &[u8]) -> bool {
    text == b"pong"
        || text.strip_prefix(b"mack:").is_some_and(|mid| {
            !mid.is_empty() && mid.len() <= 26 && mid.iter().all(u8::is_ascii_digit)
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Mid;
    use tungstenite::Bytes;

    fn msg(body: &str, sender: Sender) -> Message {
        Message::new(
            Mid::new(1_795_479_773, 4),
            1_795_479_773_000,
            86400,
            sender,
            Bytes::from(body.to_owned()),
            None,
        )
    }

    #[test]
    fn incoming_relays_object_bodies_and_skips_others() {
        let m = msg(
            r#"{"module_id":"im","command":"x","params":{"a":"\/"}}"#,
            Sender::Backend,
        );
        assert_eq!(
            std::str::from_utf8(&m.v5_json(None).unwrap()).unwrap(),
            r#"{"jsonrpc":"2.0","method":"incoming.message","params":{"mid":"17954797730000000000000004","body":{"module_id":"im","command":"x","params":{"a":"\/"}},"sender":{"type":2}}}"#
        );
        assert!(msg("plain text", Sender::Backend).v5_json(None).is_none());
        assert!(msg("[1]", Sender::Backend).v5_json(None).is_none());
        assert!(msg("{bad", Sender::Backend).v5_json(None).is_none());
        let deep = format!("{{\"a\":{}1{}}}", "[".repeat(100), "]".repeat(100));
        assert!(msg(&deep, Sender::Backend).v5_json(None).is_none());
        let pubid = ChannelId::from_hex(b"4c9184f37cff01bcdc32dc486ec36961").unwrap();
        let c = msg("{}", Sender::Client(pubid)).v5_json(None).unwrap();
        assert!(c.ends_with(br#""sender":{"type":1,"id":"4c9184f37cff01bcdc32dc486ec36961"}}}"#));
        let u = msg("{}", Sender::Client(ChannelId::user(7)))
            .v5_json(None)
            .unwrap();
        assert!(u.ends_with(br#""sender":{"type":1,"id":"7"}}}"#));
    }

    #[test]
    fn user_params_merge_per_recipient() {
        let m = msg(
            r#"{"module_id":"im","command":"x","params":[]}"#,
            Sender::Backend,
        )
        .with_user_params(Some(Bytes::from_static(br#"{"5":{"b":2},"6":[]}"#)));
        let five = m.v5_json(Some(5)).unwrap();
        assert!(
            std::str::from_utf8(&five)
                .unwrap()
                .contains(r#""body":{"command":"x","module_id":"im","params":{"b":2}}"#)
                || std::str::from_utf8(&five)
                    .unwrap()
                    .contains(r#""body":{"module_id":"im","command":"x","params":{"b":2}}"#),
            "{}",
            String::from_utf8_lossy(&five)
        );
        // No entry (6 is not an object, 7 is absent, no user): the body as published.
        for user in [Some(6), Some(7), None] {
            let j = m.v5_json(user).unwrap();
            assert!(j.windows(11).any(|w| w == br#""params":[]"#), "{user:?}");
        }
    }

    #[test]
    fn merge_right_side_wins() {
        let Value::Object(mut body) = serde_json::json!({"params":{"a":1,"b":1}}) else {
            unreachable!()
        };
        let Value::Object(extra) = serde_json::json!({"b":2,"c":3}) else {
            unreachable!()
        };
        merge_params(&mut body, &extra);
        assert_eq!(
            Value::Object(body),
            serde_json::json!({"params":{"a":1,"b":2,"c":3}})
        );
    }

    #[test]
    fn depth_and_batch() {
        assert!(!too_deep(
            br#"{"a":"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["}"#
        ));
        assert!(too_deep("[".repeat(65).as_bytes()));
        assert_eq!(batch(&[b"{}"]), b"{}");
        assert_eq!(batch(&[&b"{}"[..], b"[]"]), b"[{},[]]");
    }
}

#[cfg(test)]
mod publish_tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn backend_publish_params() {
        let p = parse_publish(&json!({
            "channelList": ["098f6bcd4621d373cade4e832627b4f6", "098f6bcd4621d373cade4e832627b4f6"],
            "userList": [1, "2"],
            "body": {"module_id":"im","command":"message","params":[],"extra":{},"expiry":5},
            "dictionary": {"d": 1},
            "user_params": {"1": {"u": 1}},
            "expiry": 0,
            "type": "im_message"
        }))
        .unwrap();
        assert_eq!((p.channels.len(), p.users.clone()), (1, vec![1, 2]));
        assert_eq!(p.expiry, DEFAULT_EXPIRY);
        assert_eq!(p.kind.as_deref(), Some("im_message"));
        let body: Value = serde_json::from_slice(&p.body).unwrap();
        assert_eq!(body["params"], json!({"d": 1}));
        assert!(body.get("expiry").is_none());
        assert_eq!(p.user_params.as_deref(), Some(&br#"{"1":{"u":1}}"#[..]));
    }

    #[test]
    fn backend_publish_refusals() {
        let body = json!({"module_id":"m","command":"c"});
        for (params, want) in [
            (json!([]), ApiError::WrongRequestData),
            (json!({"body": body}), ApiError::NoChannels),
            (
                json!({"channelList": ["xyz"], "body": body}),
                ApiError::InvalidChannelId,
            ),
            (
                json!({"channelList": "abc", "body": body}),
                ApiError::InvalidChannelId,
            ),
            (
                json!({"userList": [0], "body": body}),
                ApiError::InvalidChannelId,
            ),
            (
                json!({"userList": [1.5], "body": body}),
                ApiError::InvalidChannelId,
            ),
            (
                json!({"userList": [1], "body": "text"}),
                ApiError::WrongRequestData,
            ),
            (
                json!({"userList": [1], "body": body, "expiry": -1}),
                ApiError::WrongRequestData,
            ),
            (
                json!({"userList": [1], "body": body, "dictionary": 5}),
                ApiError::WrongRequestData,
            ),
            (
                json!({"userList": (1..=1001).collect::<Vec<_>>(), "body": body}),
                ApiError::TooManyChannels,
            ),
        ] {
            assert_eq!(parse_publish(&params), Err(want), "{params}");
        }
    }
}
