//! Protocol v5 input (docs/v5.md): a backend or client JSON-RPC body through the checks the
//! server applies (`too_deep`, `serde_json`, `parse_publish` on each element's `params`), the
//! accepted publishes built into messages and sent to a few recipients (`v5_json`, merging
//! `user_params`), and the same bytes as a subscriber token (`jwt::verify`) and as a stored
//! body (`incoming`). Nothing may panic; accepted publishes keep their invariants.
//!
//! Input: byte 0 picks what the rest is (`% 2`: a JSON-RPC body, a token), the rest is it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use push_server::message::{Message, Mid, Sender};
use push_server::{jwt, v5};
use serde_json::Value;
use tungstenite::Bytes;

fn publish_checks(params: &Value) {
    let Ok(p) = v5::parse_publish(params) else {
        return;
    };
    assert!(!p.channels.is_empty() || !p.users.is_empty());
    assert!(p.channels.len() + p.users.len() <= v5::MAX_RECEIVERS);
    assert!(p.users.iter().all(|&u| u > 0));
    assert!(p.expiry > 0);
    let body: Value = serde_json::from_slice(&p.body).expect("the merged body is JSON");
    assert!(body.is_object());
    let msg = Message::new(
        Mid::new(1_795_479_773, 1),
        1_795_479_773_000,
        p.expiry,
        Sender::Backend,
        Bytes::from(p.body),
        p.kind,
    )
    .with_user_params(p.user_params.map(Bytes::from));
    for user in [None, p.users.first().copied(), Some(1)] {
        // The body is an object, so it has a v5 form for every recipient.
        let json = msg.v5_json(user).expect("an object body has a v5 form");
        let v: Value = serde_json::from_slice(&json).expect("incoming.message is JSON");
        assert_eq!(v["method"], "incoming.message");
        assert!(v["params"]["body"].is_object());
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    if sel % 2 == 1 {
        let policy = jwt::Policy {
            key: b"secret",
            now: 1_700_000_100,
            leeway: 60,
            host_id: (sel & 2 != 0).then_some("abc"),
        };
        if let Ok(c) = jwt::verify(rest, &policy) {
            assert!(c.user.is_some() || !c.channels.is_empty());
            assert!(c.channels.len() <= 100);
        }
        return;
    }
    // Any body as a stored message: a v5 form only for JSON objects, and then valid JSON.
    let stored = Message::new(
        Mid::new(1_795_479_773, 2),
        0,
        0,
        Sender::Backend,
        Bytes::copy_from_slice(rest),
        None,
    );
    if let Some(j) = stored.v5_json(None) {
        serde_json::from_slice::<Value>(&j).expect("relayed object stays JSON");
    }
    if v5::too_deep(rest) {
        return;
    }
    let Ok(request) = serde_json::from_slice::<Value>(rest) else {
        return;
    };
    let calls = match &request {
        Value::Array(calls) => calls.iter().take(v5::MAX_BATCH).collect(),
        one => vec![one],
    };
    for call in calls {
        if let Some(params) = call.get("params") {
            publish_checks(params);
            let _ = v5::user_list(params.get("userList"));
        }
    }
});
