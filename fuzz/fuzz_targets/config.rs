//! The sysconfig reader (`config::parse_text`, the step of `config::load` after the file is
//! read) over arbitrary file content, with an empty environment. Whatever it accepts must be
//! inside the documented bounds, and `render` (what `--check-config` prints) must work on it.
#![no_main]

use std::path::Path;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use push_server::config::parse_text;

const PATH: &str = "/etc/sysconfig/push-server-multi";

fuzz_target!(|data: &[u8]| {
    let no_env = |_: &str| None;
    let result = parse_text(Path::new(PATH), data, &no_env);
    let Ok(c) = result else {
        // An error names a key or a place; it is never empty.
        assert!(!result.unwrap_err().to_string().is_empty());
        return;
    };
    assert!(!c.zero_config);
    assert_eq!(c.source.as_deref(), Some(Path::new(PATH)));
    assert!(!c.security_key.is_empty());
    assert!(c.security_key.bytes().all(|b| b.is_ascii_alphanumeric()));
    assert!(c.run_dir.is_absolute());
    for sock in [&c.sub_sock, &c.pub_sock] {
        assert!(sock.is_absolute() && sock.as_os_str().len() <= 107);
    }
    assert_ne!(c.sub_sock, c.pub_sock);
    if c.sub_listen.is_some() {
        assert_ne!(c.sub_listen, c.pub_listen);
    }
    for addr in [c.sub_listen, c.pub_listen].into_iter().flatten() {
        assert_ne!(addr.port(), 0);
    }
    assert!(c.sock_mode <= 0o777);
    for p in [
        &c.paths.sub,
        &c.paths.subws,
        &c.paths.publish,
        &c.paths.rest,
    ] {
        assert!(p.starts_with('/'), "{p:?}");
    }
    let l = &c.limits;
    assert!((1..=64 << 20).contains(&l.max_payload));
    assert!((1024..=65536).contains(&l.max_header_size));
    assert!(l.max_conn_per_channel >= 1 && l.max_messages_per_request >= 1);
    assert!(l.max_channels_per_request >= 1 && l.max_connections >= 1 && l.outbox_limit >= 1);
    let t = &c.timings;
    let week = Duration::from_secs(7 * 86_400);
    for d in [
        t.long_poll_timeout,
        t.header_timeout,
        t.keepalive_timeout,
        t.ws_ping_interval,
        t.shutdown_timeout,
    ] {
        assert!(!d.is_zero() && d <= week, "{d:?}");
    }
    let s = &c.store;
    assert!(s.message_ttl >= 1 && u64::from(s.message_ttl) <= 7 * 86_400);
    assert!(s.expiry0_grace <= 86_400 && (1..=86_400).contains(&s.online_ttl));
    assert!(s.channel_history >= 1 && s.max_bytes >= 1 && s.state_file.is_absolute());
    if c.redis_sock.is_some() {
        assert!(c.redis_url.is_none());
    }
    let shown = c.render();
    assert!(!shown.is_empty());
    // The same text gives the same configuration.
    let again = parse_text(Path::new(PATH), data, &no_env).expect("same text, same result");
    assert_eq!(again.render(), shown);
    assert_eq!(again.warnings, c.warnings);
});
