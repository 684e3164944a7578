//! `push-server check` and `push-server sign` against a running server on its sockets
//! (docs/operations.md, "Checking a deployment"): every step passes on a healthy server, and
//! each failure the check can meet here names its cause. The nginx cases (404 from a missing
//! location, 502) are in tests/nginx.rs.

mod common;

use common::*;
use std::process::{Command, Output};

/// Runs `push-server <args>` with only `env` in its environment.
fn run(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let out: Output = Command::new(BIN)
        .env_clear()
        .envs(env.iter().copied())
        .args(args)
        .output()
        .expect("run push-server");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The check's environment for `s`: its key and sockets, as an admin's config file would
/// give them (`--config /dev/null`: an empty file, the environment supplies the keys).
fn check_env(s: &Server, key: &str) -> Vec<(String, String)> {
    vec![
        ("SECURITY_KEY".into(), key.into()),
        ("SUB_SOCK".into(), s.sub.display().to_string()),
        ("PUB_SOCK".into(), s.pubs.display().to_string()),
        ("RUN_DIR".into(), s.dir.path.display().to_string()),
    ]
}

fn check(s: &Server, key: &str, extra: &[(&str, &str)]) -> (i32, String, String) {
    let mut env = check_env(s, key);
    env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    run(&["check", "--config", "/dev/null"], &env)
}

/// The line of step `name`.
fn step<'a>(out: &'a str, name: &str) -> &'a str {
    out.lines()
        .find(|l| l.contains(&format!(" {name}: ")))
        .unwrap_or_else(|| panic!("no line for step {name:?} in:\n{out}"))
}

const STEPS: [&str; 10] = [
    "config",
    "sign",
    "long poll",
    "publish v3 (text)",
    "long poll delivery",
    "websocket",
    "publish v4 (protobuf)",
    "websocket delivery",
    "publish v3, 256 KiB",
    "websocket delivery, 256 KiB",
];

#[test]
fn check_passes_on_a_running_server_and_prints_a_timed_line_per_step() {
    let s = Server::start();
    let (code, out, err) = check(&s, KEY, &[]);
    assert_eq!(code, 0, "check failed:\n{out}\n{err}");
    for name in STEPS {
        let line = step(&out, name);
        assert!(line.starts_with("ok "), "{line}");
        assert!(line.contains(" ms  "), "no time on {line:?}");
    }
    assert!(out.contains("check passed: 10 steps"), "{out}");
}

#[test]
fn check_without_a_server_names_a_missing_socket() {
    let dir = TestDir::new();
    let env = [
        ("SECURITY_KEY", KEY),
        ("RUN_DIR", dir.path.to_str().unwrap()),
    ];
    let (code, out, _) = run(&["check", "--config", "/dev/null"], &env);
    assert_eq!(code, 1, "{out}");
    let line = step(&out, "long poll");
    assert!(line.starts_with("FAIL"), "{out}");
    assert!(line.contains("No such file or directory"), "{out}");
    assert!(
        out.contains("likely cause: the server is not running, or the socket path"),
        "{out}"
    );
    assert!(
        step(&out, "long poll delivery").starts_with("skip"),
        "{out}"
    );
    assert!(out.contains("check failed"), "{out}");
}

#[test]
fn check_with_a_wrong_key_names_a_key_mismatch_4010_and_4026() {
    let s = Server::start();
    let (code, out, _) = check(&s, "someOtherKey", &[]);
    assert_eq!(code, 1, "{out}");
    assert!(
        step(&out, "long poll").contains("400 \"4010: Wrong Channel Id.\""),
        "{out}"
    );
    assert!(
        step(&out, "websocket").contains("closed the WebSocket with 4010"),
        "{out}"
    );
    // The text publish is trusted (no signature): it passes; the v4 batch is signed.
    assert!(step(&out, "publish v3 (text)").starts_with("ok"), "{out}");
    assert!(
        step(&out, "publish v4 (protobuf)").contains("4026: Wrong request signature."),
        "{out}"
    );
    assert_eq!(
        out.matches("likely cause: a key mismatch").count(),
        3,
        "{out}"
    );
}

#[test]
fn check_with_a_small_body_limit_names_the_body_limit_413() {
    let s = Server::builder().env("MAX_PAYLOAD", "65536").start();
    let (code, out, _) = check(&s, KEY, &[]);
    assert_eq!(code, 1, "{out}");
    assert!(step(&out, "websocket delivery").starts_with("ok"), "{out}");
    assert!(
        step(&out, "publish v3, 256 KiB").contains("answered 413"),
        "{out}"
    );
    assert!(out.contains("likely cause: the body limit"), "{out}");
    assert!(
        step(&out, "websocket delivery, 256 KiB").starts_with("skip"),
        "{out}"
    );
}

#[test]
fn check_refuses_a_zero_config_run_and_bad_urls() {
    let dir = TestDir::new();
    let run_dir = dir.path.to_str().unwrap();
    let (code, out, _) = run(&["check"], &[("RUN_DIR", run_dir)]);
    // No /etc/sysconfig/push-server-multi on a test machine: the zero-config case.
    if !std::path::Path::new("/etc/sysconfig/push-server-multi").exists() {
        assert_eq!(code, 2, "{out}");
        assert!(out.contains("zero-config server makes up its key"), "{out}");
    }
    let (code, _, err) = run(
        &[
            "check",
            "--config",
            "/dev/null",
            "--sub-url",
            "https://x.example",
        ],
        &[("SECURITY_KEY", KEY)],
    );
    assert_eq!(code, 2);
    assert!(err.contains("plain http://"), "{err}");
}

#[test]
fn sign_prints_a_signed_channel_the_server_accepts() {
    let s = Server::start();
    let id = new_id();
    let env = check_env(&s, KEY);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let (code, out, err) = run(&["sign", "--config", "/dev/null", &id], &env);
    assert_eq!(code, 0, "{err}");
    let signed = out.trim();
    assert_eq!(signed, common::signed(&id));
    let mut poll = s.lp_begin(&format!("CHANNEL_ID={signed}"));
    s.wait_online(&id);
    s.publish_ok(&id, r#"{"module_id":"m","command":"c","params":{}}"#, None);
    let r = poll.read_response();
    assert_eq!(r.status, 200, "{}", r.body_str());

    let (code, _, err) = run(&["sign", "--config", "/dev/null", "not-hex"], &env);
    assert_eq!(code, 2);
    assert!(err.contains("not a channel id"), "{err}");
}
