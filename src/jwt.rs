//! The v5 subscriber token: a compact HS256 JWT signed with the portal's signature key
//! (docs/v5.md, "The token").
//!
//! Pure: token bytes, key, clock and policy in, claims or a reason out. Invariants: only
//! `HS256` is accepted (`none` and every other algorithm are refused before any signature
//! work), the signature is compared in constant time, and nothing here logs a token.

use hmac::{Hmac, KeyInit, Mac};
use serde_json::Value;

use crate::channel::ChannelId;
use crate::signature::constant_time_eq;

/// Longest token looked at; PHP's are a few hundred bytes.
pub const MAX_TOKEN: usize = 8192;

/// What a valid token grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    /// `sub`: the portal user id (users only).
    pub user: Option<u64>,
    /// `chan`: the ids the connection listens on, each once, in token order.
    pub channels: Vec<ChannelId>,
}

/// Why a token was refused. Shown only in logs, never with the token itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JwtError {
    Malformed,
    Algorithm,
    Signature,
    Expired,
    IssuedInFuture,
    Issuer,
    Claims,
}

impl std::fmt::Display for JwtError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            JwtError::Malformed => "malformed token",
            JwtError::Algorithm => "token algorithm is not HS256",
            JwtError::Signature => "bad token signature",
            JwtError::Expired => "token expired",
            JwtError::IssuedInFuture => "token issued in the future",
            JwtError::Issuer => "token issuer is not HOST_ID",
            JwtError::Claims => "token claims are not usable",
        })
    }
}

/// What the server checks tokens against.
#[derive(Debug, Clone, Copy)]
pub struct Policy<'a> {
    pub key: &'a [u8],
    /// Unix seconds.
    pub now: u64,
    /// `JWT_LEEWAY`: how far in the future `iat` may be.
    pub leeway: u64,
    /// `HOST_ID`: when set, `iss` must equal it.
    pub host_id: Option<&'a str>,
}

/// Checks `token` and returns its claims (docs/v5.md, "The token").
pub fn verify(token: &[u8], policy: &Policy) -> Result<Claims, JwtError> {
    if token.len() > MAX_TOKEN {
        return Err(JwtError::Malformed);
    }
    let mut parts = token.split(|&b| b == b'.');
    let (Some(h64), Some(p64), Some(s64), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwtError::Malformed);
    };
    let header: Value = b64_json(h64)?;
    if header.get("alg").and_then(Value::as_str) != Some("HS256") {
        return Err(JwtError::Algorithm);
    }
    let sig = b64url_decode(s64).ok_or(JwtError::Malformed)?;
    let mut mac = <Hmac<sha2::Sha256> as KeyInit>::new_from_slice(policy.key)
        .expect("HMAC accepts keys of any length");
    mac.update(&token[..h64.len() + 1 + p64.len()]);
    let expected = mac.finalize().into_bytes();
    if !constant_time_eq(&expected, &sig) {
        return Err(JwtError::Signature);
    }
    let payload: Value = b64_json(p64)?;
    let exp = payload
        .get("exp")
        .and_then(number)
        .ok_or(JwtError::Claims)?;
    if policy.now >= exp {
        return Err(JwtError::Expired);
    }
    if let Some(iat) = payload.get("iat").and_then(number)
        && iat > policy.now.saturating_add(policy.leeway)
    {
        return Err(JwtError::IssuedInFuture);
    }
    if let Some(host) = policy.host_id
        && payload.get("iss").and_then(Value::as_str) != Some(host)
    {
        return Err(JwtError::Issuer);
    }
    let user = match payload.get("sub") {
        None | Some(Value::Null) => None,
        Some(v) => Some(number(v).filter(|&u| u > 0).ok_or(JwtError::Claims)?),
    };
    let mut channels: Vec<ChannelId> = Vec::new();
    if let Some(chan) = payload.get("chan") {
        let chan = chan.as_str().ok_or(JwtError::Claims)?;
        for item in chan.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let id = ChannelId::from_hex(item.as_bytes()).ok_or(JwtError::Claims)?;
            if !channels.contains(&id) {
                channels.push(id);
            }
            if channels.len() > 100 {
                return Err(JwtError::Claims);
            }
        }
    }
    if user.is_none() && channels.is_empty() {
        return Err(JwtError::Claims);
    }
    Ok(Claims { user, channels })
}

/// A non-negative integer given as a JSON number or a decimal string (PHP sends `sub` as a
/// string, the times as numbers).
fn number(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s)
            if !s.is_empty() && s.len() <= 19 && s.bytes().all(|b| b.is_ascii_digit()) =>
        {
            s.parse().ok()
        }
        _ => None,
    }
}

fn b64_json(seg: &[u8]) -> Result<Value, JwtError> {
    let raw = b64url_decode(seg).ok_or(JwtError::Malformed)?;
    match serde_json::from_slice::<Value>(&raw) {
        Ok(v @ Value::Object(_)) => Ok(v),
        _ => Err(JwtError::Malformed),
    }
}

fn b64_value(c: u8) -> Option<u32> {
    Some(u32::from(match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'-' => 62,
        b'_' => 63,
        _ => return None,
    }))
}

/// base64url without padding (RFC 4648 §5); `None` on any other character, on a length
/// that no encoding produces, or on non-zero trailing bits.
pub fn b64url_decode(s: &[u8]) -> Option<Vec<u8>> {
    if s.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    for chunk in s.chunks(4) {
        let mut acc = 0u32;
        for &c in chunk {
            acc = (acc << 6) | b64_value(c)?;
        }
        match chunk.len() {
            4 => out.extend_from_slice(&[(acc >> 16) as u8, (acc >> 8) as u8, acc as u8]),
            3 => {
                if acc & 0x3 != 0 {
                    return None;
                }
                out.extend_from_slice(&[(acc >> 10) as u8, (acc >> 2) as u8]);
            }
            2 => {
                if acc & 0xf != 0 {
                    return None;
                }
                out.push((acc >> 4) as u8);
            }
            _ => return None,
        }
    }
    Some(out)
}

/// base64url without padding.
pub fn b64url_encode(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        let chars = chunk.len() + 1;
        for i in 0..chars {
            out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
        }
    }
    out
}

/// Signs `payload` as an HS256 token, as the portal does; for tests and tools.
pub fn sign(payload: &str, key: &[u8]) -> String {
    let head = b64url_encode(br#"{"typ":"JWT","alg":"HS256"}"#);
    let body = b64url_encode(payload.as_bytes());
    let signing = format!("{head}.{body}");
    let mut mac = <Hmac<sha2::Sha256> as KeyInit>::new_from_slice(key)
        .expect("HMAC accepts keys of any length");
    mac.update(signing.as_bytes());
    format!("{signing}.{}", b64url_encode(&mac.finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &[u8] = b"secret";
    const PAYLOAD: &str = r#"{"iss":"abc","iat":1700000000,"exp":1700043200,"sub":"1","chan":"098f6bcd4621d373cade4e832627b4f6"}"#;

    fn policy(now: u64) -> Policy<'static> {
        Policy {
            key: KEY,
            now,
            leeway: 60,
            host_id: None,
        }
    }

    #[test]
    fn base64url_round_trip() {
        for len in 0..40 {
            let data: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
            let enc = b64url_encode(&data);
            assert!(!enc.contains('='));
            assert_eq!(b64url_decode(enc.as_bytes()), Some(data));
        }
        assert_eq!(b64url_encode(b"hello"), "aGVsbG8");
        assert_eq!(b64url_decode(b"aGVsbG8=").as_deref(), None);
        assert_eq!(b64url_decode(b"aGVsbG9").as_deref(), None, "trailing bits");
        assert_eq!(b64url_decode(b"a").as_deref(), None);
        assert_eq!(b64url_decode(b"+/+/").as_deref(), None);
    }

    #[test]
    fn signs_like_the_portal() {
        // Computed independently with Python (hmac, hashlib, base64.urlsafe_b64encode).
        assert_eq!(
            sign(PAYLOAD, KEY),
            "eyJ0eXAiOiJKV1QiLCJhbGciOiJIUzI1NiJ9.eyJpc3MiOiJhYmMiLCJpYXQiOjE3MDAwMDAwMDAsImV4cCI6MTcwMDA0MzIwMCwic3ViIjoiMSIsImNoYW4iOiIwOThmNmJjZDQ2MjFkMzczY2FkZTRlODMyNjI3YjRmNiJ9.rqF6C_TFzLqD4jF6vRFmEssXTyEVx_KNp7WOBlxf5eA"
        );
    }

    #[test]
    fn valid_token_gives_user_and_channels() {
        let t = sign(PAYLOAD, KEY);
        let c = verify(t.as_bytes(), &policy(1_700_000_100)).unwrap();
        assert_eq!(c.user, Some(1));
        assert_eq!(
            c.channels,
            vec![ChannelId::from_hex(b"098f6bcd4621d373cade4e832627b4f6").unwrap()]
        );
        // A guest channel token: private,public, no sub; sub as a number is accepted too.
        let guest = sign(
            r#"{"iat":1700000000,"exp":1700043200,"chan":"098f6bcd4621d373cade4e832627b4f6,4c9184f37cff01bcdc32dc486ec36961"}"#,
            KEY,
        );
        let c = verify(guest.as_bytes(), &policy(1_700_000_100)).unwrap();
        assert_eq!((c.user, c.channels.len()), (None, 2));
        let numeric = sign(r#"{"exp":1700043200,"sub":7}"#, KEY);
        assert_eq!(
            verify(numeric.as_bytes(), &policy(1)).unwrap().user,
            Some(7)
        );
    }

    #[test]
    fn time_and_issuer_checks() {
        let t = sign(PAYLOAD, KEY);
        let t = t.as_bytes();
        assert_eq!(verify(t, &policy(1_700_043_200)), Err(JwtError::Expired));
        assert!(verify(t, &policy(1_700_043_199)).is_ok());
        // iat within the leeway passes, beyond it fails.
        assert!(verify(t, &policy(1_700_000_000 - 60)).is_ok());
        assert_eq!(
            verify(t, &policy(1_700_000_000 - 61)),
            Err(JwtError::IssuedInFuture)
        );
        let mut p = policy(1_700_000_100);
        p.host_id = Some("abc");
        assert!(verify(t, &p).is_ok());
        p.host_id = Some("abd");
        assert_eq!(verify(t, &p), Err(JwtError::Issuer));
        let no_exp = sign(r#"{"sub":"1"}"#, KEY);
        assert_eq!(verify(no_exp.as_bytes(), &p), Err(JwtError::Claims));
    }

    #[test]
    fn refuses_other_algorithms_keys_and_garbage() {
        let now = policy(1_700_000_100);
        let t = sign(PAYLOAD, KEY);
        let (signing, _) = t.rsplit_once('.').unwrap();
        let (_, body) = signing.split_once('.').unwrap();
        // alg none, with and without a signature.
        let none = b64url_encode(br#"{"typ":"JWT","alg":"none"}"#);
        assert_eq!(
            verify(format!("{none}.{body}.").as_bytes(), &now),
            Err(JwtError::Algorithm)
        );
        let hs512 = b64url_encode(br#"{"typ":"JWT","alg":"HS512"}"#);
        assert_eq!(
            verify(format!("{hs512}.{body}.x").as_bytes(), &now),
            Err(JwtError::Algorithm)
        );
        // Another key, a flipped payload, a truncated signature.
        let other = sign(PAYLOAD, b"other");
        assert_eq!(verify(other.as_bytes(), &now), Err(JwtError::Signature));
        let tampered = t.replacen(body, &b64url_encode(br#"{"exp":9999999999,"sub":"2"}"#), 1);
        assert_eq!(verify(tampered.as_bytes(), &now), Err(JwtError::Signature));
        assert!(verify(&t.as_bytes()[..t.len() - 4], &now).is_err());
        for bad in ["", ".", "..", "a.b.c.d", "e30.e30.", "!!.e30.e30"] {
            assert!(verify(bad.as_bytes(), &now).is_err(), "{bad:?}");
        }
        // Well signed but unusable claims.
        for payload in [
            r#"{"exp":9999999999}"#,
            r#"{"exp":9999999999,"sub":"x"}"#,
            r#"{"exp":9999999999,"sub":"0"}"#,
            r#"{"exp":9999999999,"chan":"zz"}"#,
            r#"{"exp":9999999999,"chan":5}"#,
            r#"{"exp":"soon","sub":"1"}"#,
        ] {
            let t = sign(payload, KEY);
            assert!(verify(t.as_bytes(), &now).is_err(), "{payload}");
        }
        let long = vec![b'a'; MAX_TOKEN + 1];
        assert_eq!(verify(&long, &now), Err(JwtError::Malformed));
    }
}
