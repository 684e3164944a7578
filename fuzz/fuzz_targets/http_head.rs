//! `http::parse_head` over arbitrary bytes and, on success, everything the server does with the
//! head's query and body before acting: query pairs and percent-decoding, the `CHANNEL_ID` list
//! under both trust levels, the subscription, the text publish and the online query.
//!
//! Input: 2 bytes choose `max_head` (0xFFFF = no limit, `usize::MAX`), the rest is the stream.
#![no_main]

use std::borrow::Cow;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use push_server::channel::{ChannelItem, Trust, parse_channel_list};
use push_server::config::Paths;
use push_server::error::HttpError;
use push_server::http::{Method, RequestHead, parse_head};
use push_server::message::Mid;
use push_server::route::{Role, Route, route};
use push_server::signature::{Algo, Signer};
use push_server::{publish, query, subscription};

const NAMES: &[&str] = &[
    "CHANNEL_ID",
    "mid",
    "binaryMode",
    "revision",
    "signature",
    "",
];

fn signers() -> &'static [Signer; 2] {
    static S: OnceLock<[Signer; 2]> = OnceLock::new();
    S.get_or_init(|| {
        [
            Signer::new(Algo::Sha1, b"secret"),
            Signer::new(Algo::Sha256, b"secret"),
        ]
    })
}

type Parsed = Result<Option<(RequestHead, usize)>, HttpError>;

fn same_head(a: &RequestHead, b: &RequestHead) {
    assert_eq!(a.method, b.method);
    assert_eq!(a.target, b.target);
    assert_eq!(a.http10, b.http10);
    assert_eq!(a.keep_alive, b.keep_alive);
    assert_eq!(a.content_length, b.content_length);
    assert_eq!(a.ws_key, b.ws_key);
    assert_eq!(a.message_expiry, b.message_expiry);
    assert_eq!(a.client_ip, b.client_ip);
}

fn check_head(buf: &[u8], max_head: usize, parsed: &Parsed) {
    match parsed {
        Ok(Some((head, len))) => {
            let len = *len;
            assert!(len <= buf.len(), "consumed {len} of {}", buf.len());
            assert!(len <= max_head, "head of {len} over max_head {max_head}");
            assert!(buf[..len].ends_with(b"\r\n\r\n"));
            // The head alone parses the same; one byte less is "need more".
            let (again, again_len) = parse_head(&buf[..len], max_head)
                .expect("head alone")
                .expect("complete");
            assert_eq!(again_len, len);
            same_head(head, &again);
            assert!(matches!(parse_head(&buf[..len - 1], max_head), Ok(None)));
            // Target = path ['?' query].
            let target = head.target.as_bytes();
            let path = head.path().as_bytes();
            assert!(target.starts_with(path));
            assert!(!path.contains(&b'?'));
            if path.len() < target.len() {
                assert_eq!(target[path.len()], b'?');
                assert_eq!(head.query(), &target[path.len() + 1..]);
            } else {
                assert!(head.query().is_empty());
            }
            if head.ws_key.is_some() {
                assert_eq!(head.method, Method::Get);
                assert!(!head.ws_key.as_deref().unwrap_or_default().is_empty());
            }
            if head.http10 && head.keep_alive {
                assert!(
                    buf[..len]
                        .to_ascii_lowercase()
                        .windows(10)
                        .any(|w| w == b"keep-alive")
                );
            }
        }
        Ok(None) => {
            assert!(buf.len() <= max_head);
            assert!(!buf.windows(4).any(|w| w == b"\r\n\r\n"));
        }
        Err(_) => {}
    }
}

fn check_percent_decode(s: &[u8]) {
    let d = query::percent_decode(s);
    assert!(d.len() <= s.len());
    match &d {
        Cow::Borrowed(b) => {
            assert_eq!(*b, s);
        }
        Cow::Owned(o) => {
            // Something was decoded: each escape shrinks 3 bytes to 1.
            assert!(o.len() < s.len());
            assert_eq!((s.len() - o.len()) % 2, 0);
        }
    }
    if !s.contains(&b'%') {
        assert!(matches!(d, Cow::Borrowed(_)));
    }
}

fn check_items(items: &[ChannelItem]) {
    assert!(!items.is_empty());
    for (i, a) in items.iter().enumerate() {
        assert!(!items[i + 1..].contains(a), "duplicate item {a:?}");
    }
}

fn check_query(query_string: &[u8], body: &[u8]) {
    for (name, value) in query::pairs(query_string) {
        assert!(!name.contains(&b'&') && !name.contains(&b'=') && !value.contains(&b'&'));
        check_percent_decode(value);
    }
    if let Some((name, value)) = query::pairs(query_string).next()
        && let Ok(name) = std::str::from_utf8(name)
    {
        assert_eq!(
            query::param(query_string, name).as_deref(),
            Some(&*query::percent_decode(value))
        );
    }
    for name in NAMES {
        let v = query::param(query_string, name);
        assert_eq!(
            query::flag(query_string, name),
            v.as_deref() == Some(b"true")
        );
    }
    if let Some(m) = query::param(query_string, "mid")
        && let Some(mid) = Mid::parse(&m)
    {
        assert_eq!(mid.to_string().as_bytes(), &*m);
        assert_eq!(Mid::from_binary(&mid.to_binary()), Some(mid));
    }

    for signer in signers() {
        if let Some(value) = query::param(query_string, "CHANNEL_ID") {
            let sub = parse_channel_list(&value, Trust::Subscriber, signer);
            let publ = parse_channel_list(&value, Trust::Publisher, signer);
            if let Ok(items) = &sub {
                check_items(items);
                // What a subscriber may use, the backend may use too.
                assert_eq!(publ.as_ref(), Ok(items));
                // Signing an item again gives back the same item.
                for item in items {
                    let mut head = item.private.to_hex();
                    if let Some(p) = item.public {
                        head.push(':');
                        head.push_str(&p.to_hex());
                    }
                    let sig = signer.sign_hex(head.as_bytes());
                    let again = format!("{head}.{sig}");
                    assert_eq!(
                        parse_channel_list(again.as_bytes(), Trust::Subscriber, signer),
                        Ok(vec![*item])
                    );
                }
            }
            if let Ok(items) = &publ {
                check_items(items);
            }
        }
        if let Ok(s) = subscription::parse(query_string, signer) {
            assert!(!s.receivers.is_empty());
            for (i, (id, _)) in s.receivers.iter().enumerate() {
                assert!(!s.receivers[i + 1..].iter().any(|(c, _)| c == id));
            }
            for c in &s.capped {
                assert!(s.receivers.iter().any(|(r, _)| r == c));
            }
            if let Some(p) = s.public_id {
                assert!(s.receivers.iter().any(|(r, _)| *r == p));
            }
        }
        for max in [1, 100] {
            if let Ok(r) = publish::text_publish(query_string, body, signer, max) {
                assert!(!r.is_empty() && r.len() <= 2 * max);
                assert!(!body.is_empty());
                for (i, (id, _)) in r.iter().enumerate() {
                    assert!(!r[i + 1..].iter().any(|(c, _)| c == id));
                }
            }
            if let Ok(ids) = publish::online_query(query_string, signer, max) {
                assert!(!ids.is_empty() && ids.len() <= max);
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&[a, b], buf)) = data.split_first_chunk::<2>() else {
        return;
    };
    let max_head = match u16::from_le_bytes([a, b]) {
        0xFFFF => usize::MAX,
        n => usize::from(n),
    };
    let parsed = parse_head(buf, max_head);
    check_head(buf, max_head, &parsed);
    // A prefix (cut at a point the input chooses) never claims more than it holds, and
    // where it holds the whole head it finds the same one.
    if !buf.is_empty() {
        let cut = usize::from(a ^ b) * 131 % buf.len();
        let prefix = parse_head(&buf[..cut], max_head);
        check_head(&buf[..cut], max_head, &prefix);
        if let (Ok(Some((h1, l1))), Ok(Some((h2, l2)))) = (&parsed, &prefix) {
            assert_eq!(l1, l2);
            same_head(h1, h2);
        }
    }
    if let Ok(Some((head, len))) = &parsed {
        let paths = Paths {
            sub: "/bitrix/sub/".into(),
            subws: "/bitrix/subws/".into(),
            publish: "/bitrix/pub/".into(),
            rest: "/bitrix/rest/".into(),
            jsonrpc: "/bitrix/api/".into(),
        };
        for role in [Role::Sub, Role::Pub] {
            if route(role, head.path(), &paths) != Route::NotFound {
                assert!(head.path().starts_with('/'));
            }
        }
        check_query(head.query(), &buf[*len..]);
    }
});
