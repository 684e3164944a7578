//! The bytes the Redis layout holds (docs/redis.md): key names, the stored `OutgoingMessage`
//! with two extra fields, the pieces the publish script assembles, and the decoding of stored
//! values and of other instances' notifications.

use std::sync::Arc;

use prost::Message as _;
use tungstenite::Bytes;

use super::super::{Draft, Receiver};
use crate::channel::ChannelId;
use crate::message::{Message, Mid, Sender};
use crate::proto::{self, SenderType};
use crate::registry::Kind;

/// `OutgoingMessage` (docs/protocol.md#v4-protobuf) plus two fields that Node processes skip as unknown,
/// so that the v3 `tag` (milliseconds) and the stats `type` survive a round trip.
#[derive(Clone, PartialEq, prost::Message)]
pub struct StoredMessage {
    #[prost(bytes = "vec", tag = "1")]
    pub id: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    pub body: Vec<u8>,
    #[prost(uint32, tag = "3")]
    pub expiry: u32,
    #[prost(fixed32, tag = "4")]
    pub created: u32,
    #[prost(message, optional, tag = "5")]
    pub sender: Option<proto::Sender>,
    /// The v4 `type` (`<module>_<command>`), absent for text publishes.
    #[prost(bytes = "vec", optional, tag = "14")]
    pub kind: Option<Vec<u8>>,
    /// Creation time in unix milliseconds (`created` has seconds only).
    #[prost(uint64, tag = "15")]
    pub created_ms: u64,
    /// v5 `user_params` as JSON text (docs/v5.md), absent for other publishes.
    #[prost(bytes = "vec", optional, tag = "16")]
    pub user_params: Option<Vec<u8>>,
}

/// The repeated `receivers` field of an `IPCMessage`, encoded on its own: the publish script
/// prepends these bytes to the message's other fields.
#[derive(Clone, PartialEq, prost::Message)]
struct IpcReceivers {
    #[prost(message, repeated, tag = "1")]
    receivers: Vec<proto::Receiver>,
}

// The 2.0 notification (proto.rs) with `StoredMessage` in place of `OutgoingMessage`.
#[derive(Clone, PartialEq, prost::Message)]
struct NotificationBatch {
    #[prost(message, repeated, tag = "1")]
    notifications: Vec<Notification>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Notification {
    #[prost(message, optional, tag = "1")]
    ipc_messages: Option<IpcMessages>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct IpcMessages {
    #[prost(message, repeated, tag = "1")]
    messages: Vec<IpcMessage>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct IpcMessage {
    #[prost(message, repeated, tag = "1")]
    receivers: Vec<proto::Receiver>,
    #[prost(bytes = "vec", tag = "2")]
    outgoing_message_id: Vec<u8>,
    #[prost(message, optional, tag = "3")]
    outgoing_message: Option<StoredMessage>,
}

/// Key names; `prefix` (`REDIS_PREFIX`) goes in front of every key and pub/sub channel.
pub struct Keys {
    prefix: Vec<u8>,
}

impl Keys {
    pub fn new(prefix: &str) -> Keys {
        Keys {
            prefix: prefix.as_bytes().to_vec(),
        }
    }

    pub fn prefix(&self) -> &[u8] {
        &self.prefix
    }

    fn key(&self, parts: &[&[u8]]) -> Vec<u8> {
        let mut k = self.prefix.clone();
        for p in parts {
            k.extend_from_slice(p);
        }
        k
    }

    pub fn startdate(&self) -> Vec<u8> {
        self.key(&[b"server:startdate"])
    }

    pub fn counter(&self) -> Vec<u8> {
        self.key(&[b"server:messagecounter"])
    }

    pub fn stats(&self) -> Vec<u8> {
        self.key(&[b"stats"])
    }

    #[cfg(test)]
    pub fn message(&self, mid: Mid) -> Vec<u8> {
        self.key(&[b"message:", &mid.to_binary()])
    }

    #[cfg(test)]
    pub fn history(&self, r: &Receiver) -> Vec<u8> {
        let set: &[u8] = match r.1 {
            Kind::Private => b"channel:messages:",
            Kind::Public => b"pubchannel:messages:",
        };
        self.key(&[set, &r.0.0])
    }

    pub fn online(&self, r: &Receiver) -> Vec<u8> {
        let set: &[u8] = match r.1 {
            Kind::Private => b"channel:online:",
            Kind::Public => b"pubchannel:online:",
        };
        self.key(&[set, &r.0.0])
    }

    /// The channel this instance publishes on.
    pub fn notify_channel(&self, uid: &str) -> Vec<u8> {
        self.key(&[b"pushserver:", uid.as_bytes()])
    }

    /// The pattern every instance subscribes to; glob characters of the prefix are escaped.
    pub fn notify_pattern(&self) -> Vec<u8> {
        let mut p = Vec::with_capacity(self.prefix.len() + 12);
        for &c in &self.prefix {
            if matches!(c, b'*' | b'?' | b'[' | b']' | b'\\') {
                p.push(b'\\');
            }
            p.push(c);
        }
        p.extend_from_slice(b"pushserver:*");
        p
    }
}

/// 17 bytes per receiver for the scripts: `c` (private) or `p` (public), then the id.
pub fn receiver_specs(receivers: &[Receiver]) -> Vec<u8> {
    let mut out = Vec::with_capacity(17 * receivers.len());
    for (id, kind) in receivers {
        out.push(match kind {
            Kind::Private => b'c',
            Kind::Public => b'p',
        });
        out.extend_from_slice(&id.0);
    }
    out
}

fn sender_proto(s: Sender) -> proto::Sender {
    match s {
        Sender::Backend => proto::Sender {
            r#type: SenderType::Backend as i32,
            id: Vec::new(),
        },
        Sender::Client(id) => proto::Sender {
            r#type: SenderType::Client as i32,
            id: id.0.to_vec(),
        },
    }
}

/// The stored `OutgoingMessage` of `d` without its id (field 1): the script prepends
/// `0a 0d <13-byte id>`, which gives exactly what [`StoredMessage::encode`] would.
pub fn encode_rest(d: &Draft) -> Vec<u8> {
    StoredMessage {
        id: Vec::new(),
        body: d.body.to_vec(),
        expiry: d.expiry,
        created: u32::try_from(d.created_ms / 1000).unwrap_or(u32::MAX),
        sender: Some(sender_proto(d.sender)),
        kind: d.kind.as_ref().map(|k| k.as_bytes().to_vec()),
        created_ms: d.created_ms,
        user_params: d.user_params.as_ref().map(|u| u.to_vec()),
    }
    .encode_to_vec()
}

fn receiver_proto(r: &Receiver) -> proto::Receiver {
    proto::Receiver {
        id: r.0.0.to_vec(),
        is_private: r.1 == Kind::Private,
        signature: Vec::new(),
    }
}

/// The `receivers` fields of the `IPCMessage` for `receivers`.
pub fn encode_receivers(receivers: &[Receiver]) -> Vec<u8> {
    IpcReceivers {
        receivers: receivers.iter().map(receiver_proto).collect(),
    }
    .encode_to_vec()
}

fn message_from(m: StoredMessage, fallback_id: &[u8]) -> Option<Arc<Message>> {
    let mid = Mid::from_binary(&m.id).or_else(|| Mid::from_binary(fallback_id))?;
    let sender = match &m.sender {
        Some(s) if s.r#type == SenderType::Client as i32 => {
            Sender::Client(ChannelId::from_bytes(&s.id)?)
        }
        _ => Sender::Backend,
    };
    let created_ms = if m.created_ms > 0 {
        m.created_ms
    } else {
        u64::from(m.created) * 1000
    };
    let kind = m.kind.map(|k| String::from_utf8_lossy(&k).into_owned());
    Some(Arc::new(
        Message::new(mid, created_ms, m.expiry, sender, Bytes::from(m.body), kind)
            .with_user_params(m.user_params.map(Bytes::from)),
    ))
}

/// A stored `message:<id>` value; `None` when it is not one (never fails a whole backlog).
pub fn decode_stored(value: &[u8]) -> Option<Arc<Message>> {
    message_from(StoredMessage::decode(value).ok()?, &[])
}

/// A message from another instance, with its receivers.
pub type Remote = (Arc<Message>, Vec<Receiver>);

/// A notification another instance (Rust or Node 2.0) published. Entries without a valid id
/// or receiver are skipped; the result is ascending by id.
pub fn decode_notification(payload: &[u8]) -> Result<Vec<Remote>, prost::DecodeError> {
    let batch = NotificationBatch::decode(payload)?;
    let mut out = Vec::new();
    for n in batch.notifications {
        for ipc in n.ipc_messages.into_iter().flat_map(|m| m.messages) {
            let Some(om) = ipc.outgoing_message else {
                continue;
            };
            let Some(msg) = message_from(om, &ipc.outgoing_message_id) else {
                continue;
            };
            let receivers: Vec<Receiver> = ipc
                .receivers
                .iter()
                .filter_map(|r| {
                    let id = ChannelId::from_bytes(&r.id)?;
                    Some((
                        id,
                        if r.is_private {
                            Kind::Private
                        } else {
                            Kind::Public
                        },
                    ))
                })
                .collect();
            out.push((msg, receivers));
        }
    }
    out.sort_by_key(|(m, _)| m.mid);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn draft(receivers: Vec<Receiver>) -> Draft {
        Draft {
            body: Bytes::from_static(br#"{"module_id":"im","command":"test","params":{}}"#),
            expiry: 86400,
            sender: Sender::Backend,
            kind: Some("im_test".into()),
            receivers,
            created_ms: 1_795_479_773_123,
            user_params: None,
        }
    }

    use crate::test_util::unhex as hex;

    #[test]
    fn rest_with_id_prefix_is_the_stored_message() {
        let d = draft(Vec::new());
        let mid = Mid::new(1_795_479_773, 1);
        let mut full = vec![0x0a, 0x0d];
        full.extend_from_slice(&mid.to_binary());
        full.extend_from_slice(&encode_rest(&d));
        let m = StoredMessage::decode(full.as_slice()).unwrap();
        assert_eq!(m.id, mid.to_binary());
        assert_eq!(m.created, 1_795_479_773);
        // A 2.0 process reads it as a plain OutgoingMessage.
        let plain = proto::OutgoingMessage::decode(full.as_slice()).unwrap();
        assert_eq!(plain.body, d.body.to_vec());
        assert_eq!(plain.sender.unwrap().r#type, SenderType::Backend as i32);
        // Without the extras it is byte-identical to the docs/protocol.md#worked-examples message.
        let mut d0 = d.clone();
        d0.kind = None;
        d0.created_ms = 1_795_479_773_000;
        let mut bare = vec![0x0a, 0x0d];
        bare.extend_from_slice(&mid.to_binary());
        bare.extend_from_slice(&encode_rest(&d0));
        let node = hex(
            "0a0d17954797730000000000000001122f7b226d6f64756c655f6964223a22696d222c22636f6d6d616e64223a2274657374222c22706172616d73223a7b7d7d1880a30525ddd8046b2a020802",
        );
        assert!(bare.starts_with(&node));
        // Then only field 15 (created_ms, varint): 15 << 3 = 0x78.
        assert_eq!(bare[node.len()], 0x78);
        let back = decode_stored(&full).unwrap();
        assert_eq!(back.mid, mid);
        assert_eq!(back.created_ms, 1_795_479_773_123);
        assert_eq!(back.kind.as_deref(), Some("im_test"));
        assert_eq!(back.expiry, 86400);
    }

    #[test]
    fn node_value_decodes_with_seconds_only() {
        let raw = hex(
            "0a0d17954797730000000000000001122f7b226d6f64756c655f6964223a22696d222c22636f6d6d616e64223a2274657374222c22706172616d73223a7b7d7d1880a30525ddd8046b2a020802",
        );
        let m = decode_stored(&raw).unwrap();
        assert_eq!(m.mid, Mid::new(1_795_479_773, 1));
        assert_eq!(m.created_ms, 1_795_479_773_000);
        assert_eq!(m.sender, Sender::Backend);
        assert_eq!(m.kind, None);
    }

    #[test]
    fn notification_as_the_script_builds_it_decodes() {
        let a = (ChannelId([1; 16]), Kind::Private);
        let b = (ChannelId([2; 16]), Kind::Public);
        let mut d = draft(vec![a, b]);
        d.sender = Sender::Client(ChannelId([9; 16]));
        // What publish.lua concatenates, for one message.
        let mid = Mid::new(1_795_479_773, 7);
        let mut om = vec![0x0a, 0x0d];
        om.extend_from_slice(&mid.to_binary());
        om.extend_from_slice(&encode_rest(&d));
        let mut ipc = encode_receivers(&d.receivers);
        ipc.extend_from_slice(&[0x12, 0x0d]);
        ipc.extend_from_slice(&mid.to_binary());
        ipc.push(0x1a);
        varint(om.len(), &mut ipc);
        ipc.extend_from_slice(&om);
        let mut msgs = vec![0x0a];
        varint(ipc.len(), &mut msgs);
        msgs.extend_from_slice(&ipc);
        let mut notif = vec![0x0a];
        varint(msgs.len(), &mut notif);
        notif.extend_from_slice(&msgs);
        let mut batch = vec![0x0a];
        varint(notif.len(), &mut batch);
        batch.extend_from_slice(&notif);

        // The 2.0 schema reads it.
        let node = proto::NotificationBatch::decode(batch.as_slice()).unwrap();
        let m = &node.notifications[0]
            .ipc_messages
            .as_ref()
            .unwrap()
            .messages[0];
        assert_eq!(m.outgoing_message_id, mid.to_binary());
        assert!(m.receivers[0].is_private && !m.receivers[1].is_private);

        let got = decode_notification(&batch).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0.mid, mid);
        assert_eq!(got[0].0.sender, Sender::Client(ChannelId([9; 16])));
        assert_eq!(got[0].1, vec![a, b]);
    }

    /// The same varint as publish.lua.
    fn varint(mut v: usize, out: &mut Vec<u8>) {
        while v >= 128 {
            out.push((v % 128 + 128) as u8);
            v /= 128;
        }
        out.push(v as u8);
    }

    #[test]
    fn keys_and_specs() {
        let k = Keys::new("site1:");
        let r = (ChannelId([0xab; 16]), Kind::Public);
        let mut want = b"site1:pubchannel:messages:".to_vec();
        want.extend_from_slice(&[0xab; 16]);
        assert_eq!(k.history(&r), want);
        let mut want = b"site1:channel:online:".to_vec();
        want.extend_from_slice(&[0xab; 16]);
        assert_eq!(k.online(&(r.0, Kind::Private)), want);
        assert_eq!(
            k.message(Mid::new(1_795_479_773, 3)),
            [
                b"site1:message:".as_slice(),
                &hex("17954797730000000000000003")
            ]
            .concat()
        );
        assert_eq!(k.notify_channel("ab12"), b"site1:pushserver:ab12");
        assert_eq!(Keys::new("a*b:").notify_pattern(), b"a\\*b:pushserver:*");
        assert_eq!(Keys::new("").notify_pattern(), b"pushserver:*");
        let specs = receiver_specs(&[r, (ChannelId([1; 16]), Kind::Private)]);
        assert_eq!(specs.len(), 34);
        assert_eq!(specs[0], b'p');
        assert_eq!(specs[17], b'c');
    }
}
