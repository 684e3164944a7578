//! Trusted requests on the publish route, validated before anything happens: the text publish
//! (docs/protocol.md#publishing-text-v3) and the legacy online query (docs/protocol.md#online-query). A request that fails here publishes
//! nothing (docs/protocol.md#publishing-text-v3).

use crate::channel::{ChannelId, ChannelListError, Trust, parse_channel_list};
use crate::error::ApiError;
use crate::query;
use crate::registry::Kind;
use crate::signature::Signer;
use crate::store::Receiver;

/// Checks the optional `signature` query parameter against `signed` (docs/protocol.md#routes-and-http).
pub fn check_signature(
    query_string: &[u8],
    signed: &[u8],
    signer: &Signer,
) -> Result<(), ApiError> {
    match query::param(query_string, "signature") {
        Some(sig) if !signer.verify_hex(signed, &sig) => Err(ApiError::WrongSignature),
        _ => Ok(()),
    }
}

/// Receivers of a text publish: each item's private id plus the public id of signed pairs.
pub fn text_publish(
    query_string: &[u8],
    body: &[u8],
    signer: &Signer,
    max_channels: usize,
) -> Result<Vec<Receiver>, ApiError> {
    check_signature(query_string, body, signer)?;
    let value = query::param(query_string, "CHANNEL_ID").ok_or(ApiError::NoChannels)?;
    let items = parse_channel_list(&value, Trust::Publisher, signer).map_err(|e| match e {
        ChannelListError::Empty => ApiError::NoChannels,
        ChannelListError::Invalid => ApiError::InvalidChannelId,
    })?;
    if items.len() > max_channels {
        return Err(ApiError::TooManyChannels);
    }
    if body.is_empty() {
        return Err(ApiError::WrongRequestData);
    }
    let mut receivers = Vec::with_capacity(items.len());
    for item in items {
        let public = item.public.map(|p| (p, Kind::Public));
        for r in std::iter::once((item.private, Kind::Private)).chain(public) {
            if !receivers.iter().any(|&(c, _)| c == r.0) {
                receivers.push(r);
            }
        }
    }
    Ok(receivers)
}

/// Channels of an online query, in request order. The list comes in the query (PHP also sends
/// it as the body, which is ignored).
pub fn online_query(
    query_string: &[u8],
    signer: &Signer,
    max_channels: usize,
) -> Result<Vec<ChannelId>, ApiError> {
    let value = query::param(query_string, "CHANNEL_ID").ok_or(ApiError::NoChannels)?;
    check_signature(query_string, &value, signer)?;
    let items =
        parse_channel_list(&value, Trust::Publisher, signer).map_err(|_| ApiError::NoChannels)?;
    if items.len() > max_channels {
        return Err(ApiError::TooManyChannels);
    }
    Ok(items.into_iter().map(|i| i.private).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signature::Algo;

    const A: &str = "098f6bcd4621d373cade4e832627b4f6";
    const B: &str = "ad0234829205b9033196ba818f7a872b";

    fn signer() -> Signer {
        Signer::new(Algo::Sha1, b"secret")
    }

    #[test]
    fn text_publish_errors_in_documented_order() {
        let s = signer();
        assert_eq!(text_publish(b"", b"x", &s, 100), Err(ApiError::NoChannels));
        assert_eq!(
            text_publish(b"CHANNEL_ID=", b"x", &s, 100),
            Err(ApiError::NoChannels)
        );
        assert_eq!(
            text_publish(b"CHANNEL_ID=zz", b"x", &s, 100),
            Err(ApiError::InvalidChannelId)
        );
        let q = format!("CHANNEL_ID={A}/{B}");
        assert_eq!(
            text_publish(q.as_bytes(), b"", &s, 100),
            Err(ApiError::WrongRequestData)
        );
        assert_eq!(
            text_publish(q.as_bytes(), b"x", &s, 1),
            Err(ApiError::TooManyChannels)
        );
        assert_eq!(text_publish(q.as_bytes(), b"x", &s, 100).unwrap().len(), 2);
    }

    #[test]
    fn signed_publish() {
        let s = signer();
        let ok = format!("CHANNEL_ID={A}&signature=f8446672f033e4b2beafc5ca3a71eafcd2cafb6e");
        assert!(text_publish(ok.as_bytes(), b"{\"a\":1}", &s, 100).is_ok());
        let bad = format!("CHANNEL_ID={A}&signature=0000000000000000000000000000000000000000");
        assert_eq!(
            text_publish(bad.as_bytes(), b"{\"a\":1}", &s, 100),
            Err(ApiError::WrongSignature)
        );
    }

    #[test]
    fn pair_publish_reaches_public_id() {
        let s = signer();
        let q = b"CHANNEL_ID=098f6bcd4621d373cade4e832627b4f6:4c9184f37cff01bcdc32dc486ec36961.e9d67434a2735d6a4865b3e64b514f7e648008d7";
        assert_eq!(text_publish(q, b"x", &s, 100).unwrap().len(), 2);
    }

    #[test]
    fn online_query_limits() {
        let s = signer();
        assert_eq!(
            online_query(b"CHANNEL_ID=", &s, 100),
            Err(ApiError::NoChannels)
        );
        let q = format!("CHANNEL_ID={A}/{B}");
        assert_eq!(
            online_query(q.as_bytes(), &s, 1),
            Err(ApiError::TooManyChannels)
        );
        assert_eq!(online_query(q.as_bytes(), &s, 100).unwrap().len(), 2);
    }
}
