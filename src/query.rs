//! Raw query-string access (docs/protocol.md#routes-and-http, docs/protocol.md#subscribing).
//!
//! Owns splitting `a=b&c=d` and percent-decoding. It must tolerate what PHP and nginx pass
//! through untouched: raw `/`, `:` and spaces, and malformed escapes, which are kept literally
//! rather than rejected. Invariant: decoding borrows the input unless an escape was actually
//! decoded, so the common parameter costs no allocation. Names are compared case-sensitively
//! and undecoded (the clients' names are plain ASCII, which `encodeURIComponent` leaves alone).

use std::borrow::Cow;

/// Iterates `name=value` pairs of a raw query string (the part after '?'), split on '&';
/// pairs without '=' have an empty value. Empty segments (`a=1&&b=2`) are skipped.
pub fn pairs(query: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
    query
        .split(|&c| c == b'&')
        .filter(|seg| !seg.is_empty())
        .map(|seg| match seg.iter().position(|&c| c == b'=') {
            Some(eq) => (&seg[..eq], &seg[eq + 1..]),
            None => (seg, &seg[seg.len()..]),
        })
}

/// First value of parameter `name` (case-sensitive), percent-decoded. None if absent.
pub fn param<'a>(query: &'a [u8], name: &str) -> Option<Cow<'a, [u8]>> {
    raw_param(query, name).map(percent_decode)
}

fn raw_param<'a>(query: &'a [u8], name: &str) -> Option<&'a [u8]> {
    pairs(query)
        .find(|(n, _)| *n == name.as_bytes())
        .map(|(_, v)| v)
}

fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// The byte encoded by `%XY` at the start of `s`, if `s` starts with a well-formed escape.
fn escape_at(s: &[u8]) -> Option<u8> {
    match s {
        [b'%', hi, lo, ..] => Some((hex_val(*hi)? << 4) | hex_val(*lo)?),
        _ => None,
    }
}

/// Percent-decodes; malformed escapes (`%zz`, a truncated `%`) are kept literally; `+` stays
/// `+`, because the clients use `encodeURIComponent`, which encodes a space as `%20`.
pub fn percent_decode(s: &[u8]) -> Cow<'_, [u8]> {
    let Some(first) = (0..s.len()).find(|&i| escape_at(&s[i..]).is_some()) else {
        return Cow::Borrowed(s);
    };
    let mut out = Vec::with_capacity(s.len());
    out.extend_from_slice(&s[..first]);
    let mut i = first;
    while i < s.len() {
        match escape_at(&s[i..]) {
            Some(b) => {
                out.push(b);
                i += 3;
            }
            None => {
                out.push(s[i]);
                i += 1;
            }
        }
    }
    Cow::Owned(out)
}

/// A flag is on only for the exact value `true` (so `True` and `1` are off).
pub fn flag(query: &[u8], name: &str) -> bool {
    param(query, name).is_some_and(|v| *v == *b"true")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(q: &str, name: &str) -> Option<Vec<u8>> {
        param(q.as_bytes(), name).map(|v| v.into_owned())
    }

    #[test]
    fn splits_pairs() {
        let got: Vec<_> = pairs(b"a=1&b&&c=&d=x=y").collect();
        let want: Vec<(&[u8], &[u8])> =
            vec![(b"a", b"1"), (b"b", b""), (b"c", b""), (b"d", b"x=y")];
        assert_eq!(got, want);
        assert_eq!(pairs(b"").count(), 0);
    }

    #[test]
    fn decodes_encoded_separators() {
        assert_eq!(
            p("CHANNEL_ID=aa%3Abb.cc%2Fdd.ee&x=1", "CHANNEL_ID").as_deref(),
            Some(&b"aa:bb.cc/dd.ee"[..])
        );
        assert_eq!(
            p("CHANNEL_ID=aa%3abb%2fcc", "CHANNEL_ID").as_deref(),
            Some(&b"aa:bb/cc"[..])
        );
    }

    #[test]
    fn literal_separators_borrow() {
        let q = b"CHANNEL_ID=aa:bb.cc/dd.ee";
        match param(q, "CHANNEL_ID") {
            Some(Cow::Borrowed(v)) => assert_eq!(v, b"aa:bb.cc/dd.ee"),
            other => panic!("expected borrowed value, got {other:?}"),
        }
    }

    #[test]
    fn raw_characters_tolerated() {
        assert_eq!(
            p("hostname=my host/x&mid=1", "hostname").as_deref(),
            Some(&b"my host/x"[..])
        );
        assert_eq!(
            p("time=Tue%2C%2024%20Nov%202026%2000%3A24%3A41%20GMT", "time").as_deref(),
            Some(&b"Tue, 24 Nov 2026 00:24:41 GMT"[..])
        );
    }

    #[test]
    fn malformed_escapes_kept() {
        assert_eq!(&*percent_decode(b"%zz"), b"%zz");
        assert_eq!(&*percent_decode(b"a%"), b"a%");
        assert_eq!(&*percent_decode(b"a%4"), b"a%4");
        assert_eq!(&*percent_decode(b"%%41"), b"%A");
        assert_eq!(&*percent_decode(b"%4g%41"), b"%4gA");
        assert_eq!(&*percent_decode(b"a+b"), b"a+b");
        assert_eq!(&*percent_decode(b"%00%FF"), b"\x00\xff");
    }

    #[test]
    fn first_wins_and_names_are_case_sensitive() {
        assert_eq!(p("mid=1&mid=2", "mid").as_deref(), Some(&b"1"[..]));
        assert_eq!(p("MID=1", "mid"), None);
        assert_eq!(p("xmid=1", "mid"), None);
        assert_eq!(p("mid", "mid").as_deref(), Some(&b""[..]));
    }

    #[test]
    fn flags() {
        assert!(flag(b"binaryMode=true&revision=19", "binaryMode"));
        assert!(flag(b"binaryMode=%74rue", "binaryMode"));
        assert!(!flag(b"binaryMode=True", "binaryMode"));
        assert!(!flag(b"binaryMode=1", "binaryMode"));
        assert!(!flag(b"binaryMode", "binaryMode"));
        assert!(!flag(b"jsonRpc=true", "binaryMode"));
        assert!(!flag(b"binaryMode=false&binaryMode=true", "binaryMode"));
    }
}
