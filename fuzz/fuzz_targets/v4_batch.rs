//! `v4::decode_batch` over arbitrary bytes for each kind of caller, with the validation rules
//! checked on what it accepts, and the encoders run on the result: a decoded batch re-encoded by
//! prost validates to the same commands, accepted messages encode (`encode_outgoing`,
//! `outgoing_batch`) and stats answers encode (`response_batch`) into bytes that decode back.
//!
//! Input: byte 0 chooses the caller and the limits, the rest is the `RequestBatch` body.
#![no_main]

use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use prost::Message as _;
use push_server::channel::ChannelId;
use push_server::error::ApiError;
use push_server::message::{Message, Mid, Sender};
use push_server::proto::{self, response};
use push_server::registry::Kind;
use push_server::signature::{Algo, Signer};
use push_server::v4::{
    Caller, Command, Limits, channel_stats, decode_batch, encode_outgoing, outgoing_batch,
    response_batch,
};

/// The public id whose signature docs/protocol.md#worked-examples carries.
const PUB: [u8; 16] = [
    0x4c, 0x91, 0x84, 0xf3, 0x7c, 0xff, 0x01, 0xbc, 0xdc, 0x32, 0xdc, 0x48, 0x6e, 0xc3, 0x69, 0x61,
];

fn signer() -> &'static Signer {
    static S: OnceLock<Signer> = OnceLock::new();
    S.get_or_init(|| Signer::new(Algo::Sha1, b"secret"))
}

fn check_commands(cmds: &[Command], caller: Caller, limits: Limits, requests: usize) {
    assert_eq!(cmds.len(), requests);
    let trusted = caller == Caller::Backend;
    for cmd in cmds {
        match cmd {
            Command::Publish(msgs) => {
                assert!(msgs.len() <= limits.max_messages);
                for m in msgs {
                    let r = &m.receivers;
                    assert!(!r.is_empty() && r.len() <= limits.max_channels);
                    for (i, x) in r.iter().enumerate() {
                        assert!(!r[i + 1..].contains(x), "duplicate receiver {x:?}");
                    }
                    if !trusted {
                        assert!(r.iter().all(|&(_, k)| k == Kind::Public));
                    }
                    assert!(m.kind.as_deref() != Some(""));
                }
            }
            Command::ChannelStats(ids) => {
                assert!(!ids.is_empty() && ids.len() <= limits.max_channels);
                if !trusted {
                    assert!(ids.iter().all(|q| !q.is_private));
                }
            }
            Command::ServerStats => assert!(trusted),
        }
    }
}

/// Encodes what was accepted and decodes it back.
fn encode_back(cmds: &[Command]) {
    let mut answers = Vec::new();
    for cmd in cmds {
        match cmd {
            Command::Publish(msgs) => {
                let messages: Vec<Arc<Message>> = msgs
                    .iter()
                    .enumerate()
                    .map(|(i, m)| {
                        Arc::new(Message::new(
                            Mid::new(1_795_479_773, i as u64 + 1),
                            1_795_479_773_999,
                            m.expiry,
                            Sender::Client(ChannelId(PUB)),
                            m.body.clone(),
                            m.kind.clone(),
                        ))
                    })
                    .collect();
                for (msg, m) in messages.iter().zip(msgs) {
                    let one = proto::OutgoingMessage::decode(&encode_outgoing(msg)[..])
                        .expect("own OutgoingMessage decodes");
                    assert_eq!(one.body, &m.body[..]);
                    assert_eq!(one.expiry, m.expiry);
                    assert_eq!(Mid::from_binary(&one.id), Some(msg.mid));
                }
                let batch = proto::ResponseBatch::decode(&outgoing_batch(&messages)[..])
                    .expect("own ResponseBatch decodes");
                let [
                    proto::Response {
                        command: Some(response::Command::OutgoingMessages(out)),
                    },
                ] = &batch.responses[..]
                else {
                    panic!("one outgoingMessages response expected: {batch:?}");
                };
                assert_eq!(out.messages.len(), msgs.len());
                for (o, m) in out.messages.iter().zip(msgs) {
                    assert_eq!(o.body, &m.body[..]);
                }
            }
            Command::ChannelStats(ids) => {
                answers.push(channel_stats(ids.iter().map(|&q| (q, q.is_private))));
            }
            Command::ServerStats => {}
        }
    }
    let n = answers.len();
    let batch = proto::ResponseBatch::decode(&response_batch(answers)[..])
        .expect("own ResponseBatch decodes");
    assert_eq!(batch.responses.len(), n);
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, body)) = data.split_first() else {
        return;
    };
    let caller = match sel % 3 {
        0 => Caller::Backend,
        1 => Caller::Client(Some(ChannelId(PUB))),
        _ => Caller::Client(None),
    };
    let limits = match (sel / 3) % 3 {
        0 => Limits {
            max_messages: 100,
            max_channels: 100,
        },
        1 => Limits {
            max_messages: 1,
            max_channels: 1,
        },
        _ => Limits {
            max_messages: usize::MAX,
            max_channels: usize::MAX,
        },
    };
    let got = decode_batch(body, caller, signer(), limits);
    let prost = proto::RequestBatch::decode(body);
    if caller == Caller::Client(None) {
        assert_eq!(got, Err(ApiError::PublicChannelRequired));
        return;
    }
    match &prost {
        Err(_) => assert_eq!(got, Err(ApiError::WrongRequestData)),
        Ok(batch) => {
            // prost's own encoding of what it decoded validates the same way.
            let again = batch.encode_to_vec();
            assert_eq!(
                proto::RequestBatch::decode(&again[..]).ok().as_ref(),
                Some(batch)
            );
            assert_eq!(decode_batch(&again, caller, signer(), limits), got);
            if let Ok(cmds) = &got {
                check_commands(cmds, caller, limits, batch.requests.len());
                encode_back(cmds);
            }
        }
    }
});
