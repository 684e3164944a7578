//! The v4 binary protocol (docs/protocol.md#v4-protobuf, docs/protocol.md#trusted-publish-php, docs/protocol.md#online-query) as pure functions: validating a
//! `RequestBatch` from PHP or from a browser into commands, and encoding what goes back.
//!
//! Invariants: a batch is validated completely before anything of it is acted on (docs/protocol.md#trusted-publish-php: one
//! invalid request fails the whole batch, so nothing is published); an `OutgoingMessage` is
//! encoded once per message ([`crate::message::Message::v4_message`]) and batches are assembled
//! from those bytes with length prefixes, never by re-encoding messages; every outgoing message
//! carries `sender` (docs/protocol.md#v4-protobuf). Nothing here logs, so bodies and signatures never reach the logs.

use std::collections::HashSet;
use std::sync::Arc;

use prost::Message as _;
use prost::encoding::{encode_varint, encoded_len_varint};
use tungstenite::Bytes;

use crate::channel::ChannelId;
use crate::error::ApiError;
use crate::message::{Message, Sender};
use crate::proto::{self, request, response};
use crate::registry::Kind;
use crate::signature::Signer;
use crate::store::Receiver;
use crate::websocket::{Frame, OP_BINARY, OP_CONTINUATION};

/// Who sent a `RequestBatch`, which decides the checks of docs/protocol.md#trusted-publish-php (trusted) or docs/protocol.md#client-publishing (untrusted).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Caller {
    /// PHP on the trusted listener.
    Backend,
    /// A browser (subscriber WebSocket or `/bitrix/rest/`), with the public id of its
    /// `CHANNEL_ID` when it had a validly signed `priv:pub` item.
    Client(Option<ChannelId>),
}

/// The per-request limits actually enforced (reported by the server stats, docs/protocol.md#server-stats).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Messages per `IncomingMessagesRequest` (4016).
    pub max_messages: usize,
    /// Receivers per message and ids per stats request (4018).
    pub max_channels: usize,
}

/// One message to publish: receivers de-duplicated, in first-occurrence order; `isPrivate`
/// receivers are private/shared channels, the others public ids (docs/protocol.md#trusted-publish-php).
#[derive(Debug, PartialEq, Eq)]
pub struct Outgoing {
    pub receivers: Vec<Receiver>,
    pub body: Bytes,
    pub expiry: u32,
    /// The `type` field (statistics only); None when empty.
    pub kind: Option<String>,
}

/// One id of a channel stats request; `is_private` is echoed in the answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StatsQuery {
    pub id: ChannelId,
    pub is_private: bool,
}

impl StatsQuery {
    /// The presence key to ask the store about.
    pub fn receiver(self) -> Receiver {
        (self.id, kind(self.is_private))
    }
}

fn kind(is_private: bool) -> Kind {
    if is_private {
        Kind::Private
    } else {
        Kind::Public
    }
}

/// A validated request.
#[derive(Debug, PartialEq, Eq)]
pub enum Command {
    Publish(Vec<Outgoing>),
    ChannelStats(Vec<StatsQuery>),
    ServerStats,
}

impl Command {
    /// The name the daily request counters of the server stats use.
    pub fn name(&self) -> &'static str {
        match self {
            Command::Publish(_) => "incomingMessages",
            Command::ChannelStats(_) => "channelStats",
            Command::ServerStats => "serverStats",
        }
    }
}

/// Decodes and validates a whole `RequestBatch`; the first failure wins, in the documented
/// order: 4012 (untrusted caller without a public id), 4013 (undecodable, no requests, a
/// request without a command), then per request in order the command (4015 trusted / 4014
/// untrusted), 4016, and per message or stats list 4017/4018, and per id 4020, 4019, 4021.
pub fn decode_batch(
    body: &[u8],
    caller: Caller,
    signer: &Signer,
    limits: Limits,
) -> Result<Vec<Command>, ApiError> {
    if caller == Caller::Client(None) {
        return Err(ApiError::PublicChannelRequired);
    }
    let batch = proto::RequestBatch::decode(body).map_err(|_| ApiError::WrongRequestData)?;
    if batch.requests.is_empty() || batch.requests.iter().any(|r| r.command.is_none()) {
        return Err(ApiError::WrongRequestData);
    }
    let trusted = caller == Caller::Backend;
    let mut out = Vec::with_capacity(batch.requests.len());
    for req in batch.requests {
        let Some(command) = req.command else {
            unreachable!("checked above: every request has a command");
        };
        out.push(match command {
            request::Command::IncomingMessages(r) => {
                if r.messages.len() > limits.max_messages {
                    return Err(ApiError::TooManyMessages);
                }
                let mut msgs = Vec::with_capacity(r.messages.len());
                for m in r.messages {
                    let ids = check_ids(&m.receivers, trusted, signer, limits)?;
                    let receivers = dedup(ids.into_iter().map(|(id, p)| (id, kind(p))));
                    let kind = (!m.r#type.is_empty())
                        .then(|| String::from_utf8_lossy(&m.r#type).into_owned());
                    msgs.push(Outgoing {
                        receivers,
                        body: Bytes::from(m.body),
                        expiry: m.expiry,
                        kind,
                    });
                }
                Command::Publish(msgs)
            }
            request::Command::ChannelStats(r) => Command::ChannelStats(
                check_ids(&r.channels, trusted, signer, limits)?
                    .into_iter()
                    .map(|(id, is_private)| StatsQuery { id, is_private })
                    .collect(),
            ),
            request::Command::ServerStats(_) | request::Command::Registration(_) if !trusted => {
                return Err(ApiError::CommandNotAllowed);
            }
            request::Command::ServerStats(_) => Command::ServerStats,
            request::Command::Registration(_) => return Err(ApiError::WrongRequestCommand),
        });
    }
    Ok(out)
}

/// One receiver list or stats id list: 1..=max entries; trusted ids need 16 bytes, untrusted
/// ones must also be public and carry the raw digest of `HMAC(key, "public:" + hex(id))`.
fn check_ids(
    ids: &[proto::Receiver],
    trusted: bool,
    signer: &Signer,
    limits: Limits,
) -> Result<Vec<(ChannelId, bool)>, ApiError> {
    if ids.is_empty() {
        return Err(ApiError::NoChannels);
    }
    if ids.len() > limits.max_channels {
        return Err(ApiError::TooManyChannels);
    }
    let mut out = Vec::with_capacity(ids.len());
    let mut signed = Vec::with_capacity(7 + 32);
    for r in ids {
        if !trusted && r.is_private {
            return Err(ApiError::PrivateChannelNotAllowed);
        }
        let id = ChannelId::from_bytes(&r.id).ok_or(ApiError::InvalidChannelId)?;
        if !trusted {
            signed.clear();
            signed.extend_from_slice(b"public:");
            id.write_hex(&mut signed);
            if !signer.verify_raw(&signed, &r.signature) {
                return Err(ApiError::InvalidChannelSignature);
            }
        }
        out.push((id, r.is_private));
    }
    Ok(out)
}

/// Drops repeated receivers, keeping first-occurrence order.
fn dedup(ids: impl Iterator<Item = Receiver>) -> Vec<Receiver> {
    let mut seen = HashSet::new();
    ids.filter(|&(id, kind)| seen.insert((id, kind == Kind::Private)))
        .collect()
}

// ---- encoding ----

fn sender(s: Sender) -> proto::Sender {
    match s {
        Sender::Backend => proto::Sender {
            r#type: proto::SenderType::Backend as i32,
            id: Vec::new(),
        },
        Sender::Client(id) => proto::Sender {
            r#type: proto::SenderType::Client as i32,
            id: id.0.to_vec(),
        },
    }
}

/// The encoded `OutgoingMessage` of `msg` (no outer tag): 13-byte id, body, expiry, `created`
/// in seconds (fixed32, identical for every subscriber, docs/protocol.md#v4-protobuf) and the mandatory `sender`.
pub fn encode_outgoing(msg: &Message) -> Vec<u8> {
    let mut out = Vec::new();
    encode_outgoing_into(msg, &mut out);
    out
}

/// [`encode_outgoing`] appended to `out`, without a copy of the body on the way: the fields
/// without the body are encoded by prost, and the body field (2) is put in after the id field
/// (1, always 15 bytes), which is where prost's tag order would have written it.
pub fn encode_outgoing_into(msg: &Message, out: &mut Vec<u8>) {
    let rest = proto::OutgoingMessage {
        id: msg.mid.to_binary().to_vec(),
        body: Vec::new(),
        expiry: msg.expiry,
        created: msg.created_secs(),
        sender: Some(sender(msg.sender)),
    }
    .encode_to_vec();
    const ID_FIELD: usize = 2 + 13;
    out.reserve(rest.len() + 11 + msg.body.len());
    out.extend_from_slice(&rest[..ID_FIELD]);
    // proto3: an empty body is not encoded at all.
    if !msg.body.is_empty() {
        out.push(0x12);
        encode_varint(msg.body.len() as u64, out);
        out.extend_from_slice(&msg.body);
    }
    out.extend_from_slice(&rest[ID_FIELD..]);
}

/// Field 1, length-delimited: the tag byte `0a` and the varint length.
fn put_field1(len: usize, out: &mut Vec<u8>) {
    out.push(0x0a);
    encode_varint(len as u64, out);
}

fn field1_len(len: usize) -> usize {
    1 + encoded_len_varint(len as u64) + len
}

/// `ResponseBatch{[Response{outgoingMessages{messages}}]}` from already encoded
/// `OutgoingMessage`s, in the given order: only length prefixes are written around them.
pub fn outgoing_batch_from<B: AsRef<[u8]>>(encoded: &[B]) -> Vec<u8> {
    let inner: usize = encoded.iter().map(|m| field1_len(m.as_ref().len())).sum();
    let response = field1_len(inner);
    let mut out = Vec::with_capacity(field1_len(response));
    put_field1(response, &mut out);
    put_field1(inner, &mut out);
    for m in encoded {
        put_field1(m.as_ref().len(), &mut out);
        out.extend_from_slice(m.as_ref());
    }
    out
}

/// One `ResponseBatch` carrying `messages` (ascending mid order is the caller's job).
pub fn outgoing_batch(messages: &[Arc<Message>]) -> Vec<u8> {
    let encoded: Vec<&[u8]> = messages.iter().map(|m| &m.v4_message()[..]).collect();
    outgoing_batch_from(&encoded)
}

/// One entry of a channel stats answer; `is_online=false` is not encoded (proto3 default).
pub fn channel_stats(entries: impl IntoIterator<Item = (StatsQuery, bool)>) -> response::Command {
    response::Command::ChannelStats(proto::ChannelStatsResponse {
        channels: entries
            .into_iter()
            .map(|(q, online)| proto::ChannelStats {
                id: q.id.0.to_vec(),
                is_private: q.is_private,
                is_online: online,
            })
            .collect(),
    })
}

pub fn server_stats(json: String) -> response::Command {
    response::Command::ServerStats(proto::JsonResponse {
        json: json.into_bytes(),
    })
}

/// A `ResponseBatch` with one `Response` per answer, in order.
pub fn response_batch(answers: Vec<response::Command>) -> Vec<u8> {
    proto::ResponseBatch {
        responses: answers
            .into_iter()
            .map(|c| proto::Response { command: Some(c) })
            .collect(),
    }
    .encode_to_vec()
}

// ---- client frames ----

/// Collects a v4 subscriber's data frames into whole binary messages. `partial` holds a
/// fragmented binary message in progress; text messages (and their continuations) are
/// ignored (docs/protocol.md#websocket). The reader already bounds the total size of a fragmented message.
pub fn assemble_binary(partial: &mut Option<Vec<u8>>, frame: Frame) -> Option<Vec<u8>> {
    match (frame.opcode, partial.as_mut()) {
        (OP_BINARY, _) if frame.fin => {
            *partial = None;
            Some(frame.payload)
        }
        (OP_BINARY, _) => {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Mid;
    use crate::signature::Algo;

    const PRIV: &str = "098f6bcd4621d373cade4e832627b4f6";
    const PUB: &str = "4c9184f37cff01bcdc32dc486ec36961";
    const LIMITS: Limits = Limits {
        max_messages: 100,
        max_channels: 100,
    };

    use crate::test_util::unhex as hex;

    fn signer() -> Signer {
        Signer::new(Algo::Sha1, b"secret")
    }

    fn id(s: &str) -> ChannelId {
        ChannelId::from_hex(s.as_bytes()).unwrap()
    }

    fn public() -> Caller {
        Caller::Client(Some(id(PUB)))
    }

    fn receiver(id: &[u8], private: bool, signature: Vec<u8>) -> proto::Receiver {
        proto::Receiver {
            id: id.to_vec(),
            is_private: private,
            signature,
        }
    }

    fn publish(messages: Vec<proto::IncomingMessage>) -> Vec<u8> {
        proto::RequestBatch {
            requests: vec![proto::Request {
                command: Some(request::Command::IncomingMessages(
                    proto::IncomingMessagesRequest { messages },
                )),
            }],
        }
        .encode_to_vec()
    }

    fn message(receivers: Vec<proto::Receiver>) -> proto::IncomingMessage {
        proto::IncomingMessage {
            receivers,
            sender: None,
            body: b"{}".to_vec(),
            expiry: 0,
            r#type: Vec::new(),
        }
    }

    fn decode(body: &[u8], caller: Caller) -> Result<Vec<Command>, ApiError> {
        decode_batch(body, caller, &signer(), LIMITS)
    }

    #[test]
    fn php_example_is_a_backend_publish() {
        let raw = hex(
            "0a2e0a2c0a2a 0a14 0a10 098f6bcd4621d373cade4e832627b4f6 1001 1a02 7b7d 2080a305 2a0a 696d5f6d657373616765",
        );
        let cmds = decode(&raw, Caller::Backend).unwrap();
        assert_eq!(
            cmds,
            vec![Command::Publish(vec![Outgoing {
                receivers: vec![(id(PRIV), Kind::Private)],
                body: Bytes::from_static(b"{}"),
                expiry: 86400,
                kind: Some("im_message".into()),
            }])]
        );
        assert_eq!(cmds[0].name(), "incomingMessages");
    }

    #[test]
    fn browser_example_passes_client_checks() {
        let raw = hex(
            "0a69 0a67 0a65 0a28 0a10 4c9184f37cff01bcdc32dc486ec36961 1a14 59a5001be5603756b5e23b55b51ebe63ce91b661
             1a37 7b226d6f64756c655f6964223a2274657374222c22636f6d6d616e64223a2268656c6c6f222c22706172616d73223a7b2261223a317d7d 201e",
        );
        assert_eq!(raw.len(), 107);
        let cmds = decode(&raw, public()).unwrap();
        let Command::Publish(msgs) = &cmds[0] else {
            panic!("{cmds:?}")
        };
        assert_eq!(msgs[0].receivers, vec![(id(PUB), Kind::Public)]);
        assert_eq!(msgs[0].expiry, 30);
        assert_eq!(
            decode(&raw, Caller::Client(None)),
            Err(ApiError::PublicChannelRequired)
        );
    }

    #[test]
    fn decoding_errors_are_4013() {
        for raw in [
            hex("0102030405"),
            hex(""),
            hex("0a00"),
            hex("0a020a"),
            hex("0a020a00 0a00"),
        ] {
            assert_eq!(
                decode(&raw, Caller::Backend),
                Err(ApiError::WrongRequestData),
                "{raw:02x?}"
            );
        }
        // A fixed64 where a receiver (length-delimited) belongs.
        assert_eq!(
            decode(&hex("0a0d 0a0b 0a09 09 0000000000000000"), Caller::Backend),
            Err(ApiError::WrongRequestData)
        );
        // Wrong wire type for `requests` (varint instead of length-delimited).
        assert_eq!(
            decode(&hex("0801"), Caller::Backend),
            Err(ApiError::WrongRequestData)
        );
        // Unknown fields are skipped.
        assert_eq!(
            decode(&hex("0a04 0a00 7801 a80601"), Caller::Backend),
            Ok(vec![Command::Publish(Vec::new())])
        );
    }

    #[test]
    fn commands_by_trust() {
        let server = hex("0a021a00");
        assert_eq!(
            decode(&server, Caller::Backend),
            Ok(vec![Command::ServerStats])
        );
        assert_eq!(decode(&server, public()), Err(ApiError::CommandNotAllowed));
        let reg = hex("0a022200");
        assert_eq!(
            decode(&reg, Caller::Backend),
            Err(ApiError::WrongRequestCommand)
        );
        assert_eq!(decode(&reg, public()), Err(ApiError::CommandNotAllowed));
        let stats = hex("0a18 1216 0a14 0a10 098f6bcd4621d373cade4e832627b4f6 1001");
        assert_eq!(
            decode(&stats, Caller::Backend),
            Ok(vec![Command::ChannelStats(vec![StatsQuery {
                id: id(PRIV),
                is_private: true
            }])])
        );
        assert_eq!(
            decode(&stats, public()),
            Err(ApiError::PrivateChannelNotAllowed)
        );
    }

    #[test]
    fn limits_and_ids() {
        let ok = || receiver(&id(PRIV).0, true, Vec::new());
        let many = publish((0..101).map(|_| message(vec![ok()])).collect());
        assert_eq!(
            decode(&many, Caller::Backend),
            Err(ApiError::TooManyMessages)
        );
        let none = publish(vec![message(Vec::new())]);
        assert_eq!(decode(&none, Caller::Backend), Err(ApiError::NoChannels));
        let wide = publish(vec![message((0..101).map(|_| ok()).collect())]);
        assert_eq!(
            decode(&wide, Caller::Backend),
            Err(ApiError::TooManyChannels)
        );
        let short = publish(vec![message(vec![receiver(&[1; 15], true, Vec::new())])]);
        assert_eq!(
            decode(&short, Caller::Backend),
            Err(ApiError::InvalidChannelId)
        );
        // 100 copies of one receiver are one receiver.
        let dup = publish(vec![message((0..100).map(|_| ok()).collect())]);
        let Ok(cmds) = decode(&dup, Caller::Backend) else {
            panic!()
        };
        assert!(matches!(&cmds[0], Command::Publish(m) if m[0].receivers.len() == 1));
    }

    #[test]
    fn client_signatures() {
        let s = signer();
        let good = s.sign_raw(format!("public:{PUB}").as_bytes());
        assert_eq!(hex("59a5001be5603756b5e23b55b51ebe63ce91b661"), good);
        let pubid = id(PUB).0;
        let case = |r: proto::Receiver| decode(&publish(vec![message(vec![r])]), public());
        assert!(case(receiver(&pubid, false, good.clone())).is_ok());
        assert_eq!(
            case(receiver(&pubid, false, Vec::new())),
            Err(ApiError::InvalidChannelSignature)
        );
        let mut bad = good.clone();
        bad[19] ^= 1;
        assert_eq!(
            case(receiver(&pubid, false, bad)),
            Err(ApiError::InvalidChannelSignature)
        );
        assert_eq!(
            case(receiver(&pubid, true, good.clone())),
            Err(ApiError::PrivateChannelNotAllowed)
        );
        // A hex signature is not the raw digest.
        let hexsig = s.sign_hex(format!("public:{PUB}").as_bytes()).into_bytes();
        assert_eq!(
            case(receiver(&pubid, false, hexsig)),
            Err(ApiError::InvalidChannelSignature)
        );
    }

    #[test]
    fn one_bad_request_fails_the_batch() {
        let mut raw = hex("0a020a00");
        raw.extend(hex("0a021a00"));
        assert_eq!(decode(&raw, Caller::Backend).unwrap().len(), 2);
        raw.extend(hex("0a022200"));
        assert_eq!(
            decode(&raw, Caller::Backend),
            Err(ApiError::WrongRequestCommand)
        );
    }

    fn example_message(sender: Sender) -> Message {
        Message::new(
            Mid::parse(b"17954797730000000000000001").unwrap(),
            1_795_479_773_999,
            86400,
            sender,
            Bytes::from_static(br#"{"module_id":"im","command":"test","params":{}}"#),
            None,
        )
    }

    #[test]
    fn subscriber_example_is_byte_exact() {
        let msg = example_message(Sender::Backend);
        let want = hex(
            "0a510a4f0a4d0a0d17954797730000000000000001122f7b226d6f64756c655f6964223a22696d222c22636f6d6d616e64223a2274657374222c22706172616d73223a7b7d7d1880a30525ddd8046b2a020802",
        );
        assert_eq!(outgoing_batch_from(&[msg.v4_message()]), want);
        assert!(msg.v4_message().ends_with(&[0x2a, 0x02, 0x08, 0x02]));
        // The shared WebSocket frame: one binary frame around the same batch, built once.
        let frame = msg.v4_ws_frame();
        assert_eq!(&frame[..2], &[0x82, 83]);
        assert_eq!(&frame[2..], &want[..]);
        assert_eq!(frame.as_ptr(), msg.v4_ws_frame().as_ptr());
    }

    #[test]
    fn outgoing_without_body_copy_equals_prost_encoding() {
        let bodies: [&[u8]; 4] = [b"", b"{}", &[b'x'; 200], &[7u8; 70_000]];
        for body in bodies {
            for (expiry, sender) in [
                (0, Sender::Backend),
                (86400, Sender::Client(ChannelId([9; 16]))),
            ] {
                let msg = Message::new(
                    Mid::new(1_795_479_773, 1234),
                    1_795_479_773_999,
                    expiry,
                    sender,
                    Bytes::copy_from_slice(body),
                    None,
                );
                let want = proto::OutgoingMessage {
                    id: msg.mid.to_binary().to_vec(),
                    body: body.to_vec(),
                    expiry,
                    created: msg.created_secs(),
                    sender: Some(super::sender(sender)),
                }
                .encode_to_vec();
                assert_eq!(encode_outgoing(&msg), want, "body {} bytes", body.len());
                assert_eq!(&msg.v4_message()[..], &want[..]);
                let frame = crate::websocket::server_frame(
                    crate::websocket::OP_BINARY,
                    &outgoing_batch_from(&[&want]),
                );
                assert_eq!(msg.v4_ws_frame(), &frame);
            }
        }
    }

    #[test]
    fn assembled_batch_equals_prost_encoding() {
        let a = Arc::new(example_message(Sender::Backend));
        let big = Bytes::from(vec![b'x'; 300]);
        let b = Arc::new(Message::new(
            Mid::parse(b"17954797730000000000000002").unwrap(),
            1_795_479_774_000,
            0,
            Sender::Client(id(PUB)),
            big,
            None,
        ));
        let got = outgoing_batch(&[a.clone(), b.clone()]);
        let decoded = proto::ResponseBatch::decode(got.as_slice()).unwrap();
        let want = proto::ResponseBatch {
            responses: vec![proto::Response {
                command: Some(response::Command::OutgoingMessages(
                    proto::OutgoingMessagesResponse {
                        messages: [&a, &b]
                            .iter()
                            .map(|m| proto::OutgoingMessage::decode(&m.v4_message()[..]).unwrap())
                            .collect(),
                    },
                )),
            }],
        };
        assert_eq!(decoded, want);
        assert_eq!(got, want.encode_to_vec());
        let client = &decoded.responses[0];
        let Some(response::Command::OutgoingMessages(r)) = &client.command else {
            panic!()
        };
        assert_eq!(
            r.messages[1].sender,
            Some(proto::Sender {
                r#type: 1,
                id: id(PUB).0.to_vec()
            })
        );
        assert_eq!(r.messages[1].created, 1_795_479_774);
        assert_eq!(r.messages[1].expiry, 0);
    }

    #[test]
    fn stats_response_example_is_byte_exact() {
        let q = StatsQuery {
            id: id(PRIV),
            is_private: true,
        };
        assert_eq!(
            response_batch(vec![channel_stats([(q, true)])]),
            hex("0a1a 1218 0a16 0a10 098f6bcd4621d373cade4e832627b4f6 1001 1801")
        );
        // Offline: isOnline not encoded.
        assert_eq!(
            response_batch(vec![channel_stats([(q, false)])]),
            hex("0a18 1216 0a14 0a10 098f6bcd4621d373cade4e832627b4f6 1001")
        );
    }

    #[test]
    fn fragments_reassemble_and_text_is_ignored() {
        let f = |opcode, fin, p: &[u8]| Frame {
            fin,
            opcode,
            payload: p.to_vec(),
        };
        let mut partial = None;
        assert_eq!(
            assemble_binary(&mut partial, f(OP_BINARY, true, b"ab")),
            Some(b"ab".to_vec())
        );
        assert_eq!(
            assemble_binary(&mut partial, f(OP_BINARY, false, b"a")),
            None
        );
        assert_eq!(
            assemble_binary(&mut partial, f(OP_CONTINUATION, false, b"b")),
            None
        );
        assert_eq!(
            assemble_binary(&mut partial, f(OP_CONTINUATION, true, b"c")),
            Some(b"abc".to_vec())
        );
        assert!(partial.is_none());
        assert_eq!(
            assemble_binary(&mut partial, f(crate::websocket::OP_TEXT, false, b"t")),
            None
        );
        assert_eq!(
            assemble_binary(&mut partial, f(OP_CONTINUATION, true, b"u")),
            None
        );
    }
}
