//! What a subscriber asked for: its receivers (private, shared and public ids), its public id
//! and its resume position, parsed from the query (docs/protocol.md#channels-and-signatures, docs/protocol.md#subscribing).

use crate::channel::{ChannelId, ChannelListError, Trust, parse_channel_list};
use crate::error::ApiError;
use crate::jwt;
use crate::message::Mid;
use crate::query;
use crate::registry::Kind;
use crate::signature::Signer;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Subscription {
    /// Every id the connection listens on, each once.
    pub receivers: Vec<(ChannelId, Kind)>,
    /// Private ids that came with a public id: the connection cap applies to them (docs/protocol.md#connection-cap).
    pub capped: Vec<ChannelId>,
    /// The first public id: the sender of this connection's client publishes.
    pub public_id: Option<ChannelId>,
    /// Resume position; a malformed `mid` counts as absent (docs/protocol.md#subscribing).
    pub mid: Option<Mid>,
    /// `binaryMode=true`: v4 protobuf frames instead of v3 text (docs/protocol.md#versions, docs/protocol.md#websocket).
    pub binary: bool,
    /// `jsonRpc=true`: v5 JSON-RPC text frames (docs/v5.md).
    pub json_rpc: bool,
    /// v5: the token's `sub`, reached through [`ChannelId::user`] (docs/v5.md).
    pub user: Option<u64>,
}

/// The frames a subscriber gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wire {
    /// v3 text frames.
    V3,
    /// v4 protobuf.
    V4,
    /// v5 JSON-RPC, for the connection's user (docs/v5.md).
    V5 { user: Option<u64> },
}

impl Subscription {
    pub fn wire(&self) -> Wire {
        if self.json_rpc {
            Wire::V5 { user: self.user }
        } else if self.binary {
            Wire::V4
        } else {
            Wire::V3
        }
    }

    /// Whether `msg` has a form this subscriber can be sent: a v5 subscriber gets only
    /// messages whose body is a JSON object (docs/v5.md, "Delivery").
    pub fn accepts(&self, msg: &crate::message::Message) -> bool {
        !self.json_rpc || msg.v5_json(None).is_some()
    }
}

/// Parses a subscriber query: a v5 token when `jsonRpc=true` comes with `token`
/// (docs/v5.md), otherwise `CHANNEL_ID` as in v3/v4.
pub fn parse_any(
    query_string: &[u8],
    signer: &Signer,
    policy: &jwt::Policy,
) -> Result<Subscription, ApiError> {
    let json_rpc = query::flag(query_string, "jsonRpc");
    let token = json_rpc
        .then(|| query::param(query_string, "token"))
        .flatten();
    let Some(token) = token else {
        let mut sub = parse(query_string, signer)?;
        if json_rpc {
            sub.json_rpc = true;
            sub.binary = false;
        }
        return Ok(sub);
    };
    let claims = jwt::verify(&token, policy).map_err(|e| {
        log::debug!("v5 token refused: {e}");
        ApiError::WrongChannelId
    })?;
    // Every `chan` id is both a private and a public id: the registry and the stores look
    // ids up by value, and a backlog read covers both kinds of each id.
    let mut receivers: Vec<(ChannelId, Kind)> = claims
        .channels
        .iter()
        .map(|&id| (id, Kind::Private))
        .collect();
    if let Some(user) = claims.user {
        receivers.push((ChannelId::user(user), Kind::Private));
    }
    // MAX_CONN_PER_CHANNEL (docs/v5.md, "Limits"): per user for a user token; for a token
    // without a user (a guest's `private,public`) on its first id, the private one that
    // comes with a public id, as in v3/v4. Never on a user token's `chan`: that is the
    // portal's shared channel, held by every user.
    let capped = match claims.user {
        Some(user) => vec![ChannelId::user(user)],
        None if claims.channels.len() >= 2 => vec![claims.channels[0]],
        None => Vec::new(),
    };
    let mid = query::param(query_string, "mid").and_then(|m| Mid::parse(&m));
    Ok(Subscription {
        receivers,
        capped,
        public_id: None,
        mid,
        binary: false,
        json_rpc: true,
        user: claims.user,
    })
}

pub fn parse(query_string: &[u8], signer: &Signer) -> Result<Subscription, ApiError> {
    let value = query::param(query_string, "CHANNEL_ID").ok_or(ApiError::WrongChannelId)?;
    let items = parse_channel_list(&value, Trust::Subscriber, signer).map_err(
        |e: ChannelListError| match e {
            ChannelListError::Empty | ChannelListError::Invalid => ApiError::WrongChannelId,
        },
    )?;
    let mut receivers: Vec<(ChannelId, Kind)> = Vec::with_capacity(items.len() * 2);
    let mut capped = Vec::new();
    let mut public_id = None;
    let add = |id: ChannelId, kind: Kind, receivers: &mut Vec<(ChannelId, Kind)>| {
        if !receivers.iter().any(|&(c, _)| c == id) {
            receivers.push((id, kind));
        }
    };
    for item in &items {
        add(item.private, Kind::Private, &mut receivers);
        if let Some(p) = item.public {
            add(p, Kind::Public, &mut receivers);
            public_id.get_or_insert(p);
            if !capped.contains(&item.private) {
                capped.push(item.private);
            }
        }
    }
    receivers.shrink_to_fit();
    let mid = query::param(query_string, "mid").and_then(|m| Mid::parse(&m));
    Ok(Subscription {
        receivers,
        capped,
        public_id,
        mid,
        binary: query::flag(query_string, "binaryMode"),
        json_rpc: false,
        user: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signature::Algo;

    #[test]
    fn pair_and_shared_with_mid() {
        let s = Signer::new(Algo::Sha1, b"secret");
        let q = b"CHANNEL_ID=098f6bcd4621d373cade4e832627b4f6%3A4c9184f37cff01bcdc32dc486ec36961.e9d67434a2735d6a4865b3e64b514f7e648008d7%2Fad0234829205b9033196ba818f7a872b.5d745385604d8fa4ced3152da59da68769780d05&mid=17954797730000000000000003&revision=19";
        let sub = parse(q, &s).unwrap();
        assert_eq!(sub.receivers.len(), 3);
        assert_eq!(sub.receivers[1].1, Kind::Public);
        assert_eq!(
            sub.public_id.unwrap().to_hex(),
            "4c9184f37cff01bcdc32dc486ec36961"
        );
        assert_eq!(sub.capped.len(), 1);
        assert_eq!(sub.mid.unwrap().to_string(), "17954797730000000000000003");
        assert!(!sub.binary);
        let q = [&q[..], b"&binaryMode=true"].concat();
        assert!(parse(&q, &s).unwrap().binary);
    }

    #[test]
    fn bad_inputs() {
        let s = Signer::new(Algo::Sha1, b"secret");
        assert_eq!(parse(b"mid=1", &s), Err(ApiError::WrongChannelId));
        assert_eq!(
            parse(b"CHANNEL_ID=098f6bcd4621d373cade4e832627b4f6", &s),
            Err(ApiError::WrongChannelId)
        );
        let ok = parse(
            b"CHANNEL_ID=098f6bcd4621d373cade4e832627b4f6.bf39ebcf581317bc897fbb8adf6dca73cb6076d0&mid=123",
            &s,
        )
        .unwrap();
        assert_eq!(ok.mid, None);
    }
}
