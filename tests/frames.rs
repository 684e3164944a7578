//! Message ids and v3 frames (docs/protocol.md#message-ids).

mod common;

use common::*;

fn cid(id: &str) -> String {
    format!("CHANNEL_ID={}", enc(&signed(id)))
}

const DAYS: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// `Tue, 24 Nov 2026 00:24:41 GMT`
fn is_imf_fixdate(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 29
        && DAYS.contains(&&s[0..3])
        && &s[3..5] == ", "
        && s[5..7].bytes().all(|c| c.is_ascii_digit())
        && b[7] == b' '
        && MONTHS.contains(&&s[8..11])
        && b[11] == b' '
        && s[12..16].bytes().all(|c| c.is_ascii_digit())
        && b[16] == b' '
        && s[17..19].bytes().all(|c| c.is_ascii_digit())
        && b[19] == b':'
        && s[20..22].bytes().all(|c| c.is_ascii_digit())
        && b[22] == b':'
        && s[23..25].bytes().all(|c| c.is_ascii_digit())
        && &s[25..] == " GMT"
}

#[test]
fn f4_fields_order_channel_dash_time_and_tag() {
    let s = Server::start();
    let ch = new_id();
    let mut ws = s.ws(&cid(&ch));
    let body =
        r#"{"module_id":"im","command":"test","params":{"text":"hi"},"extra":{"revision_web":19}}"#;
    s.publish_ok(&ch, body, Some(86400));
    let raw = ws.next_text(WAIT);
    // parse_frames checks the field order strictly; also check the raw prefix shape.
    assert!(raw.starts_with("#!NGINXNMS!#{\"id\":"), "{raw}");
    assert!(raw.ends_with("}#!NGINXNME!#"), "{raw}");
    let f = parse_frames(&raw).expect("v3 frame").remove(0);
    assert_eq!(f.channel, "-", "channel must be \"-\"");
    assert!(
        is_imf_fixdate(&f.time),
        "time must be an IMF-fixdate in GMT: {:?}",
        f.time
    );
    assert!(
        !f.tag.is_empty() && f.tag.len() <= 3 && f.tag.bytes().all(|c| c.is_ascii_digit()),
        "tag is the last three digits of the ms time: {:?}",
        f.tag
    );
    assert_eq!(f.text, body, "body spliced verbatim");
    assert!(raw.contains(&format!(",\"text\":{body}}}#!NGINXNME!#")));
    // v3 id is the counter's integer value, non-zero.
    assert!(is_mid(&f.mid));
    let counter: u64 = f.mid[10..].parse().expect("counter");
    assert_eq!(f.id, counter, "v3 id = integer value of the mid counter");
    assert_ne!(f.id, 0);
    // The epoch is a plausible unix time, not in the future.
    let epoch: u64 = f.mid[..10].parse().expect("epoch");
    assert!(
        epoch <= now_secs() && epoch > 1_600_000_000,
        "epoch {epoch}"
    );
}

#[test]
fn f6_raw_cr_lf_and_u2028_are_escaped() {
    let s = Server::start();
    let ch = new_id();
    let mut ws = s.ws(&cid(&ch));
    let body = "{\"a\":\"x\u{2028}y\u{2029}z\",\r\n\"b\":1}";
    s.publish_ok(&ch, body, None);
    let raw = ws.next_text(WAIT);
    let expected = "{\"a\":\"x\\u2028y\\u2029z\",  \"b\":1}";
    let f = parse_frames(&raw).expect("v3 frame").remove(0);
    assert_eq!(
        f.text, expected,
        "CR/LF → space, U+2028/9 → \\u2028/\\u2029"
    );
    for bad in ['\r', '\n', '\u{2028}', '\u{2029}'] {
        assert!(
            !raw.contains(bad),
            "frame still contains {bad:?}: the client would drop it"
        );
    }
    let v: serde_json::Value = serde_json::from_str(&f.text).expect("still valid JSON");
    assert_eq!(v["a"], "x\u{2028}y\u{2029}z");
}

#[test]
fn f7_non_json_body_spliced_unquoted() {
    let s = Server::start();
    let ch = new_id();
    let mut ws = s.ws(&cid(&ch));
    s.publish_ok(&ch, "abc123", None);
    let raw = ws.next_text(WAIT);
    assert!(raw.ends_with(",\"text\":abc123}#!NGINXNME!#"), "got {raw}");
    assert_eq!(parse_frames(&raw).expect("frame")[0].text, "abc123");
}

#[test]
fn f8_body_never_modified() {
    let s = Server::start();
    let ch = new_id();
    let mut ws = s.ws(&cid(&ch));
    // PHP's \/ escapes, params as [], odd spacing, unicode, revision_web.
    let body = "{ \"module_id\" : \"im\",\"params\":[],\"u\":\"\\/path\\/\u{00e9}\u{4e2d}\",\"extra\":{\"revision_web\":19,\"server_time_unix\":1795479881.12}}";
    s.publish_ok(&ch, body, None);
    assert_eq!(ws.frames(1, WAIT)[0].text, body);
}

#[test]
fn f1_mids_strictly_increase_across_publishes() {
    let s = Server::start();
    let (a, b) = (new_id(), new_id());
    let mut ws = s.ws(&format!(
        "CHANNEL_ID={}",
        enc(&format!("{}/{}", signed(&a), signed(&b)))
    ));
    for i in 0..20 {
        let ch = if i % 2 == 0 { &a } else { &b };
        s.publish_ok(ch, &format!("{i}"), None);
    }
    let f = ws.frames(20, WAIT);
    assert!(f.iter().all(|f| is_mid(&f.mid)));
    assert!(
        f.windows(2)
            .all(|w| w[0].mid < w[1].mid && w[0].id < w[1].id),
        "mids: {:?}",
        f.iter().map(|f| &f.mid).collect::<Vec<_>>()
    );
}
