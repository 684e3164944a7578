//! Self-checks of the test harness against docs/protocol.md#worked-examples (no server needed).

mod common;

use common::*;

#[test]
fn c1_hmac_vectors_reproduced() {
    let cases = [
        (
            "098f6bcd4621d373cade4e832627b4f6",
            "bf39ebcf581317bc897fbb8adf6dca73cb6076d0",
        ),
        (
            "098f6bcd4621d373cade4e832627b4f6:4c9184f37cff01bcdc32dc486ec36961",
            "e9d67434a2735d6a4865b3e64b514f7e648008d7",
        ),
        (
            "public:4c9184f37cff01bcdc32dc486ec36961",
            "59a5001be5603756b5e23b55b51ebe63ce91b661",
        ),
        (
            "ad0234829205b9033196ba818f7a872b",
            "5d745385604d8fa4ced3152da59da68769780d05",
        ),
        ("{\"a\":1}", "f8446672f033e4b2beafc5ca3a71eafcd2cafb6e"),
    ];
    for (input, sig) in cases {
        assert_eq!(sign_with("secret", input), sig, "{input}");
    }
}

#[test]
fn frame_parser_reads_protocol_example() {
    let ex = r##"#!NGINXNMS!#{"id":3,"mid":"17954797730000000000000003","channel":"-","tag":"123","time":"Tue, 24 Nov 2026 00:24:41 GMT","text":{"module_id":"im","command":"test","params":{"text":"hi"},"extra":{"revision_web":19}}}#!NGINXNME!#"##;
    assert_eq!(ex.len(), 226);
    let f = parse_frames(ex).expect("example parses");
    assert_eq!(f.len(), 1);
    assert_eq!(f[0].id, 3);
    assert_eq!(f[0].mid, "17954797730000000000000003");
    assert_eq!(f[0].channel, "-");
    assert_eq!(f[0].tag, "123");
    assert_eq!(f[0].time, "Tue, 24 Nov 2026 00:24:41 GMT");
    assert_eq!(
        f[0].text,
        r#"{"module_id":"im","command":"test","params":{"text":"hi"},"extra":{"revision_web":19}}"#
    );
    let two = format!("{ex}{}", ex.replace("\"id\":3", "\"id\":4"));
    assert_eq!(parse_frames(&two).expect("two frames").len(), 2);
}

#[test]
fn frame_parser_rejects_what_clients_would_drop() {
    let ok = r##"#!NGINXNMS!#{"id":1,"mid":"17954797730000000000000001","channel":"-","tag":"1","time":"t","text":abc123}#!NGINXNME!#"##;
    assert_eq!(parse_frames(ok).expect("non-JSON text")[0].text, "abc123");
    assert!(parse_frames("").is_err(), "empty payload");
    assert!(
        parse_frames(&format!("x{ok}")).is_err(),
        "text before a frame"
    );
    assert!(
        parse_frames(&format!("{ok}\n")).is_err(),
        "text after a frame"
    );
    let reordered = ok.replace(
        r#""id":1,"mid":"17954797730000000000000001""#,
        r#""mid":"17954797730000000000000001","id":1"#,
    );
    assert!(parse_frames(&reordered).is_err(), "field order");
}

#[test]
fn ids_and_helpers() {
    let a = new_id();
    assert_eq!(a.len(), 32);
    assert!(
        a.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    );
    assert_ne!(a, new_id());
    assert!(is_mid(OLD_MID));
    assert_eq!(enc("a:b/c"), "a%3Ab%2Fc");
    assert_eq!(
        signed("098f6bcd4621d373cade4e832627b4f6").len(),
        32 + 1 + 40
    );
}
