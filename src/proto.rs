//! The v4 protobuf schema (docs/protocol.md#v4-protobuf) and the inter-process notification of the 2.0
//! Redis layout (docs/redis.md#keys), derived with `prost` so no `protoc` runs at build time.
//!
//! Every `string` of the schema is declared as `bytes`: the wire type is the same, and a body
//! with invalid UTF-8 must never fail a batch (docs/protocol.md#v4-protobuf). `Option<T>` on message fields keeps
//! "absent" distinct from "empty", which the validation rules need (a request without a
//! command is 4013, an empty one is not).

use prost::{Message, Oneof};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum SenderType {
    Unknown = 0,
    Client = 1,
    Backend = 2,
}

#[derive(Clone, PartialEq, Message)]
pub struct Sender {
    #[prost(enumeration = "SenderType", tag = "1")]
    pub r#type: i32,
    #[prost(bytes = "vec", tag = "2")]
    pub id: Vec<u8>,
}

/// `Receiver` and `ChannelId` share one shape.
#[derive(Clone, PartialEq, Message)]
pub struct Receiver {
    #[prost(bytes = "vec", tag = "1")]
    pub id: Vec<u8>,
    #[prost(bool, tag = "2")]
    pub is_private: bool,
    #[prost(bytes = "vec", tag = "3")]
    pub signature: Vec<u8>,
}

pub type ChannelIdMsg = Receiver;

#[derive(Clone, PartialEq, Message)]
pub struct RequestBatch {
    #[prost(message, repeated, tag = "1")]
    pub requests: Vec<Request>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Request {
    #[prost(oneof = "request::Command", tags = "1, 2, 3, 4")]
    pub command: Option<request::Command>,
}

pub mod request {
    use super::*;

    #[derive(Clone, PartialEq, Oneof)]
    pub enum Command {
        #[prost(message, tag = "1")]
        IncomingMessages(IncomingMessagesRequest),
        #[prost(message, tag = "2")]
        ChannelStats(ChannelStatsRequest),
        #[prost(message, tag = "3")]
        ServerStats(ServerStatsRequest),
        /// Cloud registration: recognised only to be refused (4015 trusted, 4014 untrusted).
        #[prost(bytes = "vec", tag = "4")]
        Registration(Vec<u8>),
    }
}

#[derive(Clone, PartialEq, Message)]
pub struct IncomingMessagesRequest {
    #[prost(message, repeated, tag = "1")]
    pub messages: Vec<IncomingMessage>,
}

#[derive(Clone, PartialEq, Message)]
pub struct IncomingMessage {
    #[prost(message, repeated, tag = "1")]
    pub receivers: Vec<Receiver>,
    /// Ignored on input; the server sets the sender.
    #[prost(message, optional, tag = "2")]
    pub sender: Option<Sender>,
    #[prost(bytes = "vec", tag = "3")]
    pub body: Vec<u8>,
    #[prost(uint32, tag = "4")]
    pub expiry: u32,
    #[prost(bytes = "vec", tag = "5")]
    pub r#type: Vec<u8>,
}

#[derive(Clone, PartialEq, Message)]
pub struct ChannelStatsRequest {
    #[prost(message, repeated, tag = "1")]
    pub channels: Vec<ChannelIdMsg>,
}

#[derive(Clone, PartialEq, Message)]
pub struct ServerStatsRequest {}

#[derive(Clone, PartialEq, Message)]
pub struct ResponseBatch {
    #[prost(message, repeated, tag = "1")]
    pub responses: Vec<Response>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Response {
    #[prost(oneof = "response::Command", tags = "1, 2, 3")]
    pub command: Option<response::Command>,
}

pub mod response {
    use super::*;

    #[derive(Clone, PartialEq, Oneof)]
    pub enum Command {
        #[prost(message, tag = "1")]
        OutgoingMessages(OutgoingMessagesResponse),
        #[prost(message, tag = "2")]
        ChannelStats(ChannelStatsResponse),
        #[prost(message, tag = "3")]
        ServerStats(JsonResponse),
    }
}

#[derive(Clone, PartialEq, Message)]
pub struct OutgoingMessagesResponse {
    #[prost(message, repeated, tag = "1")]
    pub messages: Vec<OutgoingMessage>,
}

#[derive(Clone, PartialEq, Message)]
pub struct OutgoingMessage {
    /// 13-byte message id (docs/protocol.md#message-ids).
    #[prost(bytes = "vec", tag = "1")]
    pub id: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    pub body: Vec<u8>,
    #[prost(uint32, tag = "3")]
    pub expiry: u32,
    /// Unix seconds, fixed32 on the wire.
    #[prost(fixed32, tag = "4")]
    pub created: u32,
    /// Must be present on every outgoing message (docs/protocol.md#v4-protobuf, the `sender` quirk).
    #[prost(message, optional, tag = "5")]
    pub sender: Option<Sender>,
}

#[derive(Clone, PartialEq, Message)]
pub struct ChannelStatsResponse {
    #[prost(message, repeated, tag = "1")]
    pub channels: Vec<ChannelStats>,
}

#[derive(Clone, PartialEq, Message)]
pub struct ChannelStats {
    #[prost(bytes = "vec", tag = "1")]
    pub id: Vec<u8>,
    #[prost(bool, tag = "2")]
    pub is_private: bool,
    #[prost(bool, tag = "3")]
    pub is_online: bool,
}

#[derive(Clone, PartialEq, Message)]
pub struct JsonResponse {
    #[prost(bytes = "vec", tag = "1")]
    pub json: Vec<u8>,
}

// ---- inter-process payload on `pushserver:<uid>` (docs/redis.md#keys) ----

#[derive(Clone, PartialEq, Message)]
pub struct NotificationBatch {
    #[prost(message, repeated, tag = "1")]
    pub notifications: Vec<Notification>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Notification {
    #[prost(message, optional, tag = "1")]
    pub ipc_messages: Option<IpcMessages>,
}

#[derive(Clone, PartialEq, Message)]
pub struct IpcMessages {
    #[prost(message, repeated, tag = "1")]
    pub messages: Vec<IpcMessage>,
}

#[derive(Clone, PartialEq, Message)]
pub struct IpcMessage {
    #[prost(message, repeated, tag = "1")]
    pub receivers: Vec<Receiver>,
    #[prost(bytes = "vec", tag = "2")]
    pub outgoing_message_id: Vec<u8>,
    #[prost(message, optional, tag = "3")]
    pub outgoing_message: Option<OutgoingMessage>,
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::test_util::unhex as hex;

    #[test]
    fn subscriber_example_is_byte_exact() {
        // docs/protocol.md#worked-examples, server → subscriber (83 bytes).
        let body = br#"{"module_id":"im","command":"test","params":{}}"#.to_vec();
        let batch = ResponseBatch {
            responses: vec![Response {
                command: Some(response::Command::OutgoingMessages(
                    OutgoingMessagesResponse {
                        messages: vec![OutgoingMessage {
                            id: hex("17954797730000000000000001"),
                            body,
                            expiry: 86400,
                            created: 1795479773,
                            sender: Some(Sender {
                                r#type: SenderType::Backend as i32,
                                id: Vec::new(),
                            }),
                        }],
                    },
                )),
            }],
        };
        let want = hex(
            "0a510a4f0a4d0a0d17954797730000000000000001122f7b226d6f64756c655f6964223a22696d222c22636f6d6d616e64223a2274657374222c22706172616d73223a7b7d7d1880a30525ddd8046b2a020802",
        );
        assert_eq!(batch.encode_to_vec(), want);
    }

    #[test]
    fn php_publish_example_decodes() {
        let raw = hex(
            "0a2e0a2c0a2a 0a14 0a10 098f6bcd4621d373cade4e832627b4f6 1001 1a02 7b7d 2080a305 2a0a 696d5f6d657373616765",
        );
        let batch = RequestBatch::decode(raw.as_slice()).unwrap();
        let Some(request::Command::IncomingMessages(req)) = &batch.requests[0].command else {
            panic!("not incomingMessages: {batch:?}");
        };
        let m = &req.messages[0];
        assert_eq!(m.receivers[0].id, hex("098f6bcd4621d373cade4e832627b4f6"));
        assert!(m.receivers[0].is_private);
        assert_eq!(m.body, b"{}");
        assert_eq!(m.expiry, 86400);
        assert_eq!(m.r#type, b"im_message");
    }

    #[test]
    fn channel_stats_examples_round_trip() {
        let req = hex("0a18 1216 0a14 0a10 098f6bcd4621d373cade4e832627b4f6 1001");
        let batch = RequestBatch::decode(req.as_slice()).unwrap();
        assert!(matches!(
            batch.requests[0].command,
            Some(request::Command::ChannelStats(_))
        ));
        let resp = ResponseBatch {
            responses: vec![Response {
                command: Some(response::Command::ChannelStats(ChannelStatsResponse {
                    channels: vec![ChannelStats {
                        id: hex("098f6bcd4621d373cade4e832627b4f6"),
                        is_private: true,
                        is_online: true,
                    }],
                })),
            }],
        };
        assert_eq!(
            resp.encode_to_vec(),
            hex("0a1a 1218 0a16 0a10 098f6bcd4621d373cade4e832627b4f6 1001 1801")
        );
    }

    #[test]
    fn registration_and_empty_requests_are_told_apart() {
        let reg = RequestBatch::decode(hex("0a02 2200").as_slice()).unwrap();
        assert!(matches!(
            reg.requests[0].command,
            Some(request::Command::Registration(_))
        ));
        let none = RequestBatch::decode(hex("0a00").as_slice()).unwrap();
        assert_eq!(none.requests[0].command, None);
        let empty = RequestBatch::decode(hex("0a020a00").as_slice()).unwrap();
        assert!(matches!(
            &empty.requests[0].command,
            Some(request::Command::IncomingMessages(r)) if r.messages.is_empty()
        ));
        assert!(RequestBatch::decode(hex("0102030405").as_slice()).is_err());
    }

    #[test]
    fn invalid_utf8_body_decodes() {
        // incomingMessages with body ff fe.
        let raw = hex("0a08 0a06 0a04 1a02 fffe");
        let batch = RequestBatch::decode(raw.as_slice()).unwrap();
        let Some(request::Command::IncomingMessages(req)) = &batch.requests[0].command else {
            panic!()
        };
        assert_eq!(req.messages[0].body, vec![0xff, 0xfe]);
    }
}
