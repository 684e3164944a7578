//! Channel ids and the `CHANNEL_ID` list grammar (docs/protocol.md#channels-and-signatures).
//!
//! Owns the compact [`ChannelId`] (16 bytes, never the 32-char string) and the one function
//! that turns an untrusted `CHANNEL_ID` value into subscribable items. Invariant: every
//! [`ChannelItem`] returned by [`parse_channel_list`] passed the signature rule of its
//! [`Trust`] context; nothing here logs, so signatures can never leak into logs (docs/protocol.md#channels-and-signatures).

use std::collections::HashSet;
use std::fmt;

use crate::signature::Signer;

/// A channel id: the 16 bytes its 32 lowercase hex characters decode to.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChannelId(pub [u8; 16]);

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Value of one lowercase hex digit; uppercase is rejected because ids and signatures are
/// compared as the exact strings PHP produced.
fn lower_hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

fn is_lower_hex(s: &[u8]) -> bool {
    s.iter().all(|&c| lower_hex_val(c).is_some())
}

impl ChannelId {
    /// Exactly 32 lowercase hex characters.
    pub fn from_hex(s: &[u8]) -> Option<ChannelId> {
        if s.len() != 32 {
            return None;
        }
        let mut id = [0u8; 16];
        for (byte, pair) in id.iter_mut().zip(s.chunks_exact(2)) {
            *byte = (lower_hex_val(pair[0])? << 4) | lower_hex_val(pair[1])?;
        }
        Some(ChannelId(id))
    }

    /// Exactly 16 raw bytes (the binary form used by v4).
    pub fn from_bytes(b: &[u8]) -> Option<ChannelId> {
        <[u8; 16]>::try_from(b).ok().map(ChannelId)
    }

    fn hex_array(&self) -> [u8; 32] {
        let mut out = [0u8; 32];
        for (pair, &b) in out.chunks_exact_mut(2).zip(&self.0) {
            pair[0] = HEX[usize::from(b >> 4)];
            pair[1] = HEX[usize::from(b & 15)];
        }
        out
    }

    /// Appends the 32-char lowercase hex form (no allocation beyond `out`'s growth).
    pub fn write_hex(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.hex_array());
    }

    pub fn to_hex(&self) -> String {
        self.to_string()
    }

    /// The receiver a v5 user is reached through (docs/v5.md, "Users as receivers"): a fixed
    /// 8-byte marker, then the user id big-endian. Registry, stores and fan-out treat it like
    /// any other channel, so user-addressed messages get the channels' history, caps, resume
    /// and cross-instance delivery.
    pub fn user(user: u64) -> ChannelId {
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(USER_MARKER);
        id[8..].copy_from_slice(&user.to_be_bytes());
        ChannelId(id)
    }

    /// The user id, when this is a [`ChannelId::user`] receiver.
    pub fn as_user(&self) -> Option<u64> {
        (&self.0[..8] == USER_MARKER)
            .then(|| u64::from_be_bytes(self.0[8..].try_into().unwrap_or([0; 8])))
    }
}

/// Marks a [`ChannelId::user`] id; no md5 that PHP turns into a channel id starts with it in
/// practice (a 2^-64 chance per id).
const USER_MARKER: &[u8; 8] = b"\xffv5user\xff";

impl fmt::Display for ChannelId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let buf = self.hex_array();
        f.write_str(std::str::from_utf8(&buf).map_err(|_| fmt::Error)?)
    }
}

impl fmt::Debug for ChannelId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// One accepted `CHANNEL_ID` item: the connection subscribes to `private`, plus `public`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ChannelItem {
    pub private: ChannelId,
    pub public: Option<ChannelId>,
}

/// Who sent the list, which decides the signature rules of docs/protocol.md#channels-and-signatures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trust {
    /// WS/LP subscribers and `/bitrix/rest/`: every item must be signed.
    Subscriber,
    /// The PHP backend on `/bitrix/pub/`, protected by reachability.
    Publisher,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChannelListError {
    /// No non-empty item at all.
    Empty,
    /// At least one non-empty item is malformed or wrongly signed.
    Invalid,
}

/// Above this many distinct items a hash set replaces the linear duplicate scan, so a long
/// hostile list cannot make deduplication quadratic; real lists have two or three items.
const LINEAR_DEDUP_MAX: usize = 16;

/// Parses `CHANNEL_ID` (`value` is already percent-decoded).
///
/// Empty items are skipped and duplicates dropped, keeping first-occurrence order (the JS SDK
/// ≤1.3.0 sends an empty first item or repeats the private id). One invalid non-empty item
/// rejects the whole list, as the reference does.
pub fn parse_channel_list(
    value: &[u8],
    trust: Trust,
    signer: &Signer,
) -> Result<Vec<ChannelItem>, ChannelListError> {
    let mut items: Vec<ChannelItem> = Vec::new();
    let mut seen: Option<HashSet<ChannelItem>> = None;
    for raw in value.split(|&c| c == b'/').filter(|s| !s.is_empty()) {
        let item = parse_item(raw, trust, signer).ok_or(ChannelListError::Invalid)?;
        let fresh = match &mut seen {
            Some(set) => set.insert(item),
            None => !items.contains(&item),
        };
        if !fresh {
            continue;
        }
        items.push(item);
        if seen.is_none() && items.len() > LINEAR_DEDUP_MAX {
            seen = Some(items.iter().copied().collect());
        }
    }
    if items.is_empty() {
        Err(ChannelListError::Empty)
    } else {
        Ok(items)
    }
}

/// `item = priv [":" pub] ["." sig]`, then the docs/protocol.md#channels-and-signatures table for `trust`.
fn parse_item(raw: &[u8], trust: Trust, signer: &Signer) -> Option<ChannelItem> {
    let (head, sig) = match raw.iter().position(|&c| c == b'.') {
        Some(dot) => (&raw[..dot], Some(&raw[dot + 1..])),
        None => (raw, None),
    };
    let (private, public) = match head.iter().position(|&c| c == b':') {
        Some(colon) => (
            ChannelId::from_hex(&head[..colon])?,
            Some(ChannelId::from_hex(&head[colon + 1..])?),
        ),
        None => (ChannelId::from_hex(head)?, None),
    };
    // A signature must be grammatical even where it is not checked, so a publisher cannot
    // slip junk past the grammar.
    if let Some(sig) = sig
        && (sig.len() != signer.algo().hex_len() || !is_lower_hex(sig))
    {
        return None;
    }
    let valid = match (public, sig, trust) {
        // `head` is exactly `priv` or `priv:pub`, the HMAC input of docs/protocol.md#channels-and-signatures.
        (Some(_), Some(sig), _) => signer.verify_hex(head, sig),
        (Some(_), None, _) => false,
        (None, Some(sig), Trust::Subscriber) => signer.verify_hex(head, sig),
        (None, Some(_), Trust::Publisher) => true,
        (None, None, Trust::Subscriber) => false,
        (None, None, Trust::Publisher) => true,
    };
    valid.then_some(ChannelItem { private, public })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signature::Algo;

    const PRIV: &str = "098f6bcd4621d373cade4e832627b4f6";
    const PUB: &str = "4c9184f37cff01bcdc32dc486ec36961";
    const SHARED: &str = "ad0234829205b9033196ba818f7a872b";
    const SIG_PRIV: &str = "bf39ebcf581317bc897fbb8adf6dca73cb6076d0";
    const SIG_PAIR: &str = "e9d67434a2735d6a4865b3e64b514f7e648008d7";
    const SIG_SHARED: &str = "5d745385604d8fa4ced3152da59da68769780d05";

    fn signer() -> Signer {
        Signer::new(Algo::Sha1, b"secret")
    }

    fn id(s: &str) -> ChannelId {
        ChannelId::from_hex(s.as_bytes()).expect("test id")
    }

    fn single(s: &str) -> ChannelItem {
        ChannelItem {
            private: id(s),
            public: None,
        }
    }

    fn pair() -> ChannelItem {
        ChannelItem {
            private: id(PRIV),
            public: Some(id(PUB)),
        }
    }

    fn parse(v: &str, t: Trust) -> Result<Vec<ChannelItem>, ChannelListError> {
        parse_channel_list(v.as_bytes(), t, &signer())
    }

    #[test]
    fn id_hex_roundtrip() {
        let c = id(PRIV);
        assert_eq!(c.to_hex(), PRIV);
        assert_eq!(format!("{c}"), PRIV);
        assert_eq!(format!("{c:?}"), PRIV);
        let mut out = b"x".to_vec();
        c.write_hex(&mut out);
        assert_eq!(out, format!("x{PRIV}").as_bytes());
        assert_eq!(ChannelId::from_bytes(&c.0), Some(c));
        assert_eq!(ChannelId::from_bytes(&c.0[..15]), None);
        assert_eq!(ChannelId::from_bytes(&[0; 17]), None);
    }

    #[test]
    fn id_rejects_uppercase_length_and_junk() {
        assert_eq!(ChannelId::from_hex(PRIV.to_uppercase().as_bytes()), None);
        assert_eq!(ChannelId::from_hex(&PRIV.as_bytes()[..31]), None);
        assert_eq!(ChannelId::from_hex(format!("{PRIV}0").as_bytes()), None);
        assert_eq!(
            ChannelId::from_hex(b"098f6bcd4621d373cade4e832627b4fg"),
            None
        );
        assert_eq!(ChannelId::from_hex(b""), None);
    }

    #[test]
    fn subscriber_table() {
        let t = Trust::Subscriber;
        assert_eq!(parse(PRIV, t), Err(ChannelListError::Invalid));
        assert_eq!(
            parse(&format!("{PRIV}.{SIG_PRIV}"), t),
            Ok(vec![single(PRIV)])
        );
        assert_eq!(
            parse(&format!("{PRIV}.{SIG_SHARED}"), t),
            Err(ChannelListError::Invalid)
        );
        assert_eq!(
            parse(&format!("{PRIV}:{PUB}.{SIG_PAIR}"), t),
            Ok(vec![pair()])
        );
        assert_eq!(
            parse(&format!("{PRIV}:{PUB}.{SIG_PRIV}"), t),
            Err(ChannelListError::Invalid)
        );
        assert_eq!(
            parse(&format!("{PRIV}:{PUB}"), t),
            Err(ChannelListError::Invalid)
        );
    }

    #[test]
    fn publisher_table() {
        let t = Trust::Publisher;
        assert_eq!(parse(PRIV, t), Ok(vec![single(PRIV)]));
        // Not checked: a wrong but grammatical signature passes.
        assert_eq!(
            parse(&format!("{PRIV}.{SIG_SHARED}"), t),
            Ok(vec![single(PRIV)])
        );
        assert_eq!(
            parse(&format!("{PRIV}:{PUB}.{SIG_PAIR}"), t),
            Ok(vec![pair()])
        );
        assert_eq!(
            parse(&format!("{PRIV}:{PUB}.{SIG_PRIV}"), t),
            Err(ChannelListError::Invalid)
        );
        assert_eq!(
            parse(&format!("{PRIV}:{PUB}"), t),
            Err(ChannelListError::Invalid)
        );
        // Unchecked signatures must still be grammatical.
        assert_eq!(
            parse(&format!("{PRIV}.xyz"), t),
            Err(ChannelListError::Invalid)
        );
        assert_eq!(
            parse(&format!("{PRIV}."), t),
            Err(ChannelListError::Invalid)
        );
    }

    #[test]
    fn v4_example_from_protocol() {
        let v = format!("{PRIV}:{PUB}.{SIG_PAIR}/{SHARED}.{SIG_SHARED}");
        for t in [Trust::Subscriber, Trust::Publisher] {
            assert_eq!(parse(&v, t), Ok(vec![pair(), single(SHARED)]));
        }
    }

    #[test]
    fn uppercase_is_invalid() {
        let t = Trust::Subscriber;
        let up_sig = format!("{PRIV}.{}", SIG_PRIV.to_uppercase());
        assert_eq!(parse(&up_sig, t), Err(ChannelListError::Invalid));
        let up_id = format!("{}.{SIG_PRIV}", PRIV.to_uppercase());
        assert_eq!(parse(&up_id, t), Err(ChannelListError::Invalid));
        assert_eq!(
            parse(&PRIV.to_uppercase(), Trust::Publisher),
            Err(ChannelListError::Invalid)
        );
    }

    #[test]
    fn wrong_sig_length() {
        for t in [Trust::Subscriber, Trust::Publisher] {
            let short = format!("{PRIV}.{}", &SIG_PRIV[..39]);
            assert_eq!(parse(&short, t), Err(ChannelListError::Invalid));
            let long = format!("{PRIV}.{SIG_PRIV}0");
            assert_eq!(parse(&long, t), Err(ChannelListError::Invalid));
        }
    }

    #[test]
    fn malformed_items() {
        let t = Trust::Publisher;
        for bad in [
            format!("{PRIV}:{PUB}:{PUB}.{SIG_PAIR}"),
            format!("{PRIV}.{SIG_PRIV}.{SIG_PRIV}"),
            format!(":{PUB}.{SIG_PAIR}"),
            format!("{PRIV}:.{SIG_PAIR}"),
            format!(" {PRIV}"),
            "public".to_string(),
        ] {
            assert_eq!(parse(&bad, t), Err(ChannelListError::Invalid), "{bad}");
        }
    }

    #[test]
    fn one_invalid_item_rejects_list() {
        let v = format!("{PRIV}.{SIG_PRIV}/{SHARED}");
        assert_eq!(parse(&v, Trust::Subscriber), Err(ChannelListError::Invalid));
    }

    #[test]
    fn duplicates_dropped_in_order() {
        let a = format!("{PRIV}.{SIG_PRIV}");
        let b = format!("{SHARED}.{SIG_SHARED}");
        let v = format!("{a}/{a}/{b}/{a}/{b}");
        assert_eq!(
            parse(&v, Trust::Subscriber),
            Ok(vec![single(PRIV), single(SHARED)])
        );
        // Publisher: `priv` and `priv.sig` name the same item.
        let v = format!("{PRIV}/{SHARED}/{PRIV}.{SIG_PRIV}");
        assert_eq!(
            parse(&v, Trust::Publisher),
            Ok(vec![single(PRIV), single(SHARED)])
        );
    }

    #[test]
    fn many_items_dedup_through_set() {
        let ids: Vec<String> = (0..40u8).map(|i| ChannelId([i; 16]).to_hex()).collect();
        let mut v = ids.join("/");
        v.push('/');
        v.push_str(&ids.join("/"));
        let got = parse(&v, Trust::Publisher).expect("valid list");
        let want: Vec<ChannelItem> = (0..40u8)
            .map(|i| ChannelItem {
                private: ChannelId([i; 16]),
                public: None,
            })
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn empty_items_skipped() {
        let v = format!("/{PRIV}.{SIG_PRIV}//{SHARED}.{SIG_SHARED}/");
        assert_eq!(
            parse(&v, Trust::Subscriber),
            Ok(vec![single(PRIV), single(SHARED)])
        );
        for t in [Trust::Subscriber, Trust::Publisher] {
            assert_eq!(parse("", t), Err(ChannelListError::Empty));
            assert_eq!(parse("///", t), Err(ChannelListError::Empty));
        }
    }

    #[test]
    fn sha256_signer() {
        let s = Signer::new(Algo::Sha256, b"secret");
        let sig = s.sign_hex(PRIV.as_bytes());
        assert_eq!(sig.len(), 64);
        let ok = format!("{PRIV}.{sig}");
        assert_eq!(
            parse_channel_list(ok.as_bytes(), Trust::Subscriber, &s),
            Ok(vec![single(PRIV)])
        );
        let pair_sig = s.sign_hex(format!("{PRIV}:{PUB}").as_bytes());
        let ok = format!("{PRIV}:{PUB}.{pair_sig}");
        assert_eq!(
            parse_channel_list(ok.as_bytes(), Trust::Subscriber, &s),
            Ok(vec![pair()])
        );
        // A sha1-length signature is not grammatical under sha256, even unchecked.
        let short = format!("{PRIV}.{SIG_PRIV}");
        for t in [Trust::Subscriber, Trust::Publisher] {
            assert_eq!(
                parse_channel_list(short.as_bytes(), t, &s),
                Err(ChannelListError::Invalid)
            );
        }
    }
}
