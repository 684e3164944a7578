//! Unit tests of the configuration: the reader, validation and rendering.

use super::file::{Line, parse_line};
use super::render::fmt_duration;
use super::values::{seconds, secs};
use super::*;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The 0.4.0 sample as shipped, plus what the old script and admins append.
const SAMPLE: &str = r#"# Push server settings
# This file is sourced by /etc/init.d/push-server-multi

export USER=bitrix
GROUP=www-data

# Security key: must equal the portal's signature key
SECURITY_KEY=OldKeyThatIsReplacedLater1

VAR_DIR=/var/log/push-server
RUN_DIR=/tmp/push-server
HG_DIR=/opt/push-server
CFG_DIR=/etc/push-server

TMPL_SUB=push-server-sub-__PORT__.json
TMPL_PUB=push-server-pub-__PORT__.json

BASE_SUB=801            # 8010, 8011, ...
BASE_PUB=901            # 9010, 9011, ...
ID_SUB=5                # number of sub processes
ID_PUB=1                # number of pub processes

PUBPATH=/bitrix/pub/
SUBPATH=/bitrix/sub/
SUBWSPATH=/bitrix/subws/
RESTPATH=/bitrix/rest/

WS_PORT=1337
IP_LIST='"127.0.0.1", "10.0.0.0/24"'   # debug log for these clients
REDIS_SOCK="/var/run/redis/redis.sock"

SECURITY_KEY=AbCdEf0123456789xyz
"#;

fn env_of(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A unique temp directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "push-cfg-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        TempDir(dir)
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, text).expect("write temp file");
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Loads `text` as `--config` with the given environment.
fn load_text(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let dir = TempDir::new();
    let path = dir.write("push-server-multi", text);
    let env = env_of(env);
    load_with_default(Some(&path), &dir.0.join("none"), &|k| env.get(k).cloned())
}

/// Loads with no file at all.
fn load_env(env: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let dir = TempDir::new();
    let env = env_of(env);
    load_with_default(None, &dir.0.join("none"), &|k| env.get(k).cloned())
}

fn err_text(r: Result<Config, ConfigError>) -> String {
    match r {
        Ok(c) => panic!("expected an error, got {c:?}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn shipped_sample() {
    let c = load_text(SAMPLE, &[]).expect("sample loads");
    assert!(!c.zero_config);
    assert_eq!(
        c.security_key, "AbCdEf0123456789xyz",
        "the last assignment wins"
    );
    assert_eq!(c.origins["SECURITY_KEY"], Origin::File { line: 32 });
    assert!(
        c.ignored_keys.iter().any(|k| k.starts_with("IP_LIST ")),
        "{:?}",
        c.ignored_keys
    );
    assert_eq!(c.sock_group.as_deref(), Some("www-data"));
    assert_eq!(c.run_dir, Path::new("/tmp/push-server"));
    assert_eq!(c.sub_sock, Path::new("/tmp/push-server/sub.sock"));
    assert_eq!(c.pub_sock, Path::new("/tmp/push-server/pub.sock"));
    assert_eq!(
        c.redis_sock.as_deref(),
        Some(Path::new("/var/run/redis/redis.sock"))
    );
    assert_eq!(c.paths.sub, "/bitrix/sub/");
    assert_eq!(c.paths.subws, "/bitrix/subws/");
    assert_eq!(c.paths.publish, "/bitrix/pub/");
    assert_eq!(c.paths.rest, "/bitrix/rest/");
    assert_eq!((c.sub_listen, c.pub_listen), (None, None));
    assert!(
        c.warnings.is_empty(),
        "no warnings expected: {:?}",
        c.warnings
    );
}

#[test]
fn defaults() {
    let c = load_text("SECURITY_KEY=k1\n", &[]).expect("loads");
    assert_eq!(c.algo, Algo::Sha1);
    assert_eq!(c.sock_mode, 0o660);
    assert_eq!(c.sock_group, None);
    assert_eq!(c.redis_sock, None);
    assert_eq!(c.redis_url, None);
    assert_eq!(c.redis_prefix, "");
    assert_eq!(c.log_level, LevelFilter::Info);
    assert_eq!(
        c.limits,
        Limits {
            max_payload: 1_048_576,
            max_conn_per_channel: 100,
            max_messages_per_request: 100,
            max_channels_per_request: 100,
            max_header_size: 8192,
            outbox_limit: 4_194_304,
            max_connections: 50_000,
        }
    );
    assert_eq!(
        c.timings,
        Timings {
            long_poll_timeout: secs(40),
            header_timeout: secs(10),
            keepalive_timeout: secs(75),
            ws_ping_interval: secs(120),
            shutdown_timeout: secs(5),
        }
    );
    assert_eq!(
        c.store,
        StoreConfig {
            message_ttl: 86_400,
            expiry0_grace: 60,
            online_ttl: 130,
            channel_history: 1000,
            max_bytes: 268_435_456,
            state_file: PathBuf::from("/var/lib/push-server/push-server.state"),
            state_dir: PathBuf::from("/var/lib/push-server"),
            legacy_state_file: Some(PathBuf::from("/tmp/push-server/push-server.state")),
            fsync: Fsync::EverySec,
        }
    );
}

#[test]
fn line_reader() {
    let assign = |line: &str| match parse_line(line) {
        Line::Assign(a) => (a.key.to_string(), a.value, a.dollar, a.trailing),
        other => panic!("{line:?} gave {other:?}"),
    };
    let plain = |k: &str, v: &str| (k.to_string(), v.to_string(), false, false);
    assert_eq!(assign("A=b"), plain("A", "b"));
    assert_eq!(assign("  export  A=b  # c"), plain("A", "b"));
    assert_eq!(assign("A=b#c"), plain("A", "b#c"));
    assert_eq!(assign("A=#c"), plain("A", "#c"));
    assert_eq!(assign("A="), plain("A", ""));
    assert_eq!(assign("A=''"), plain("A", ""));
    assert_eq!(assign("A='x # y'  # z"), plain("A", "x # y"));
    assert_eq!(assign(r#"A="a \"q\" \\ \n""#), plain("A", r#"a "q" \ \n"#));
    assert_eq!(assign(r#"A=x"y z"'w'"#), plain("A", "xy zw"));
    assert_eq!(assign("A=b\r"), plain("A", "b"));
    assert_eq!(assign("exportA=1"), plain("exportA", "1"));
    assert_eq!(
        assign("A=$HOME/x"),
        ("A".into(), "$HOME/x".into(), true, false)
    );
    assert_eq!(assign("A='$x'"), plain("A", "$x"));
    assert_eq!(assign(r#"A="\$x""#), plain("A", "$x"));
    assert_eq!(assign("A=b c"), ("A".into(), "b".into(), false, true));
    assert_eq!(parse_line("   # only a comment"), Line::Blank);
    assert_eq!(parse_line(""), Line::Blank);
    for bad in [
        "just words",
        "1A=b",
        "A B=c",
        "=x",
        "A='open",
        "A=\"open",
        "export",
    ] {
        assert!(matches!(parse_line(bad), Line::Invalid(_)), "{bad:?}");
    }
}

#[test]
fn warnings_name_file_and_line() {
    let c = load_text(
        "SECURITY_KEY=k1\nSECURTY_KEY=k2\nthis is junk\nREDIS_PREFIX=$HOST:\nLOG_LEVEL=debug extra\n",
        &[],
    )
    .expect("warnings are not fatal");
    let w = c.warnings.join("\n");
    assert!(w.contains("line 2: unknown key SECURTY_KEY"), "{w}");
    assert!(w.contains("line 3: not a KEY=value assignment"), "{w}");
    assert!(w.contains("line 4: REDIS_PREFIX contains `$`"), "{w}");
    assert!(w.contains("variables are not expanded"), "{w}");
    assert!(
        w.contains("line 5: text after the value of LOG_LEVEL"),
        "{w}"
    );
    assert_eq!(c.redis_prefix, "$HOST:");
    assert_eq!(c.log_level, LevelFilter::Debug);
}

#[test]
fn env_overrides_only_known_keys() {
    let c = load_text(
        "SECURITY_KEY=fromfile\nRUN_DIR=/srv/run\nLONG_POLL_TIMEOUT=30\n",
        &[
            ("SECURITY_KEY", "fromenv"),
            ("LONG_POLL_TIMEOUT", "0.5"),
            ("USER", "root"),
            ("WS_HOST", "0.0.0.0"),
            ("HOME", "/root"),
            ("SOCK_MODE", "0600"),
        ],
    )
    .expect("loads");
    assert_eq!(c.security_key, "fromenv");
    assert_eq!(c.origins["SECURITY_KEY"], Origin::Env);
    assert_eq!(c.timings.long_poll_timeout, Duration::from_millis(500));
    assert_eq!(c.run_dir, Path::new("/srv/run"));
    assert_eq!(c.sock_mode, 0o600);
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
}

#[test]
fn empty_env_value_counts_as_set() {
    let e = err_text(load_text(
        "SECURITY_KEY=fromfile\n",
        &[("SECURITY_KEY", "")],
    ));
    assert!(
        e.contains("SECURITY_KEY is empty in the environment"),
        "{e}"
    );
    let c = load_text(
        "SECURITY_KEY=k\nREDIS_SOCK=/run/redis.sock\n",
        &[("REDIS_SOCK", "")],
    )
    .expect("loads");
    assert_eq!(c.redis_sock, None);
}

#[test]
fn environment_file_copies_do_not_override() {
    // What `EnvironmentFile=` makes of the same file: comments stay inside the values.
    let c = load_text(
        "SECURITY_KEY=abc   # the key\nLOG_LEVEL=\"debug\"\n",
        &[("SECURITY_KEY", "abc   # the key"), ("LOG_LEVEL", "debug")],
    )
    .expect("loads");
    assert_eq!(c.security_key, "abc");
    assert_eq!(c.origins["SECURITY_KEY"], Origin::File { line: 1 });
    assert_eq!(c.log_level, LevelFilter::Debug);
}

#[test]
fn zero_config() {
    let c = load_env(&[("LOG_LEVEL", "debug"), ("RUN_DIR", "/tmp/x")]).expect("loads");
    assert!(c.zero_config);
    assert_eq!(c.source, None);
    assert_eq!(c.security_key.len(), 64);
    assert_eq!(c.origins["SECURITY_KEY"], Origin::Generated);
    assert_eq!(c.sub_listen, Some("127.0.0.1:8010".parse().expect("addr")));
    assert_eq!(c.pub_listen, Some("127.0.0.1:9010".parse().expect("addr")));
    assert_eq!(c.sub_sock, Path::new("/tmp/x/sub.sock"));
    assert_eq!(c.store.state_dir, Path::new("/tmp/x/state"));
    assert_eq!(c.origins["STATE_DIR"], Origin::ZeroConfig);
    assert_eq!(
        c.store.state_file,
        Path::new("/tmp/x/state/push-server.state")
    );

    let c = load_env(&[("SUB_LISTEN", ""), ("PUB_LISTEN", "127.0.0.1:9999")]).expect("loads");
    assert!(c.zero_config);
    assert_eq!(c.sub_listen, None);
    assert_eq!(c.pub_listen, Some("127.0.0.1:9999".parse().expect("addr")));
}

#[test]
fn no_zero_config_with_a_file_or_key_env() {
    let e = err_text(load_text("# nothing\n", &[]));
    assert!(e.starts_with("SECURITY_KEY is not set in "), "{e}");
    assert!(e.contains("signature key (letters and digits)"), "{e}");
    let e = err_text(load_env(&[("REDIS_SOCK", "/run/redis.sock")]));
    assert!(
        e.contains("SECURITY_KEY is not set in the environment"),
        "{e}"
    );
    let e = err_text(load_env(&[("REDIS_URL", "")]));
    assert!(e.contains("SECURITY_KEY is not set"), "{e}");
    let c = load_env(&[("SECURITY_KEY", "k")]).expect("loads");
    assert!(!c.zero_config);
    assert_eq!((c.sub_listen, c.pub_listen), (None, None));
}

#[test]
fn default_path_is_used_when_present() {
    let dir = TempDir::new();
    let default = dir.write("sysconfig", "SECURITY_KEY=k\n");
    let c = load_with_default(None, &default, &|_| None).expect("loads");
    assert_eq!(c.source.as_deref(), Some(default.as_path()));
    assert!(!c.zero_config);
    let missing = dir.0.join("missing");
    let e = err_text(load_with_default(Some(&missing), &default, &|_| None));
    assert!(e.contains("cannot read config file"), "{e}");
}

#[test]
fn parse_text_is_load_without_the_read() {
    let dir = TempDir::new();
    for text in [
        "SECURITY_KEY=k\nMAX_PAYLOAD=2048\nUNKNOWN=1\n",
        "SECURITY_KEY=k\nLONG_POLL_TIMEOUT=abc\n",
        "export SECURITY_KEY='a b'\n",
        "",
    ] {
        let path = dir.write("push-server-multi", text);
        let none = dir.0.join("none");
        let loaded = load_with_default(Some(&path), &none, &|_| None);
        let parsed = parse_text(&path, text.as_bytes(), &|_| None);
        match (loaded, parsed) {
            (Ok(a), Ok(b)) => {
                assert_eq!(a.render(), b.render(), "{text:?}");
                assert_eq!(a.warnings, b.warnings, "{text:?}");
            }
            (Err(a), Err(b)) => assert_eq!(a, b, "{text:?}"),
            (a, b) => panic!("{text:?}: load {a:?}, parse_text {b:?}"),
        }
    }
}

#[test]
fn invalid_values_name_key_and_place() {
    let e = err_text(load_text("SECURITY_KEY=k\n\nLONG_POLL_TIMEOUT=abc\n", &[]));
    assert!(
        e.starts_with("invalid LONG_POLL_TIMEOUT=\"abc\" in /"),
        "{e}"
    );
    assert!(
        e.contains("push-server-multi line 3: expected seconds > 0"),
        "{e}"
    );
    let e = err_text(load_text("SECURITY_KEY=k\n", &[("MAX_PAYLOAD", "0")]));
    assert!(
        e.starts_with("invalid MAX_PAYLOAD=\"0\" in the environment:"),
        "{e}"
    );
}

#[test]
fn rejected_values() {
    let cases: &[(&str, &str)] = &[
        ("SECURITY_ALGO", "md5"),
        ("RUN_DIR", "relative/dir"),
        ("SUB_SOCK", ""),
        ("SUB_LISTEN", "8010"),
        ("SUB_LISTEN", "example.com:80"),
        ("PUB_LISTEN", "127.0.0.1:0"),
        ("SOCK_MODE", "0999"),
        ("SOCK_MODE", "1777"),
        ("SOCK_MODE", "rw"),
        ("SOCK_GROUP", "a b"),
        ("REDIS_SOCK", "redis.sock"),
        ("REDIS_URL", "http://x"),
        ("SUBPATH", "bitrix/sub/"),
        ("PUBPATH", "/a b/"),
        ("LOG_LEVEL", "verbose"),
        ("MAX_PAYLOAD", "67108865"),
        ("MAX_PAYLOAD", "-1"),
        ("MAX_CONNECTIONS", "0"),
        ("MAX_HEADER_SIZE", "1023"),
        ("MAX_HEADER_SIZE", "65537"),
        ("MESSAGE_TTL", "604801"),
        ("ONLINE_TTL", "1.5"),
        ("CHANNEL_HISTORY", "99999999999999999999999"),
        ("LONG_POLL_TIMEOUT", "0"),
        ("LONG_POLL_TIMEOUT", "-1"),
        ("LONG_POLL_TIMEOUT", "1e3"),
        ("LONG_POLL_TIMEOUT", "inf"),
        ("LONG_POLL_TIMEOUT", "1."),
        ("LONG_POLL_TIMEOUT", "0.0000000001"),
        ("STATE_FILE", "state"),
        ("STATE_DIR", "var/lib"),
        ("STORE_FSYNC", "sometimes"),
    ];
    for (key, value) in cases {
        let r = load_text("SECURITY_KEY=k\n", &[(key, value)]);
        let e = err_text(r);
        assert!(e.contains(key), "{key}={value}: {e}");
    }
}

#[test]
fn accepted_values() {
    let c = load_text(
        "SECURITY_KEY=k\n",
        &[
            ("SECURITY_ALGO", "sha256"),
            ("SUB_LISTEN", "[::1]:8010"),
            ("PUB_LISTEN", "localhost:9010"),
            ("SOCK_MODE", "0o770"),
            ("REDIS_URL", "redis://:pw@10.0.0.5:6379"),
            ("REDIS_PREFIX", "ps2:"),
            ("LOG_LEVEL", "TRACE"),
            ("HEADER_TIMEOUT", ".25"),
            ("EXPIRY0_GRACE", "0"),
            ("MAX_HEADER_SIZE", "65536"),
        ],
    )
    .expect("loads");
    assert_eq!(c.algo, Algo::Sha256);
    assert_eq!(c.sub_listen, Some("[::1]:8010".parse().expect("addr")));
    assert_eq!(c.pub_listen, Some("127.0.0.1:9010".parse().expect("addr")));
    assert_eq!(c.sock_mode, 0o770);
    assert_eq!(c.redis_url.as_deref(), Some("redis://:pw@10.0.0.5:6379"));
    assert_eq!(c.redis_prefix, "ps2:");
    assert_eq!(c.log_level, LevelFilter::Trace);
    assert_eq!(c.timings.header_timeout, Duration::from_millis(250));
    assert_eq!(c.store.expiry0_grace, 0);
    assert_eq!(c.limits.max_header_size, 65536);
}

#[test]
fn security_key_rules() {
    let e = err_text(load_text("SECURITY_KEY=abc/def\n", &[]));
    assert!(e.contains("invalid SECURITY_KEY in"), "{e}");
    assert!(!e.contains("abc"), "the key must not be echoed: {e}");
    let e = err_text(load_text("SECURITY_KEY=\n", &[]));
    assert!(e.contains("SECURITY_KEY is empty in"), "{e}");
    assert!(e.contains("line 1"), "{e}");
}

#[test]
fn conflicts() {
    let e = err_text(load_text(
        "SECURITY_KEY=k\nREDIS_SOCK=/run/r.sock\n",
        &[("REDIS_URL", "redis://h:6379")],
    ));
    assert!(e.contains("REDIS_SOCK and REDIS_URL"), "{e}");
    let e = err_text(load_text(
        "SECURITY_KEY=k\nSUB_SOCK=/run/a\nPUB_SOCK=/run/a\n",
        &[],
    ));
    assert!(e.contains("SUB_SOCK and PUB_SOCK"), "{e}");
    let e = err_text(load_text(
        "SECURITY_KEY=k\nSUB_LISTEN=127.0.0.1:1\nPUB_LISTEN=127.0.0.1:1\n",
        &[],
    ));
    assert!(e.contains("SUB_LISTEN and PUB_LISTEN"), "{e}");
    let long = format!("SECURITY_KEY=k\nSUB_SOCK=/{}\n", "x".repeat(120));
    assert!(err_text(load_text(&long, &[])).contains("at most 107 bytes"));
}

/// Found by the `config` fuzz target: a long RUN_DIR made the default socket paths
/// (`RUN_DIR/sub.sock`, `RUN_DIR/pub.sock`) longer than `sun_path` allows, and the config
/// was accepted; binding would fail later without naming the key.
#[test]
fn long_run_dir_is_refused_for_default_sockets() {
    let dir = format!("/{}", "d".repeat(99));
    let text = format!("SECURITY_KEY=k\nRUN_DIR={dir}\n");
    let e = err_text(load_text(&text, &[]));
    assert!(e.starts_with("invalid RUN_DIR="), "{e}");
    assert!(
        e.contains("line 2") && e.contains("SUB_SOCK") && e.contains("107"),
        "{e}"
    );
    // Explicit sockets make any RUN_DIR length fine; one default socket is still checked.
    let both = format!("{text}SUB_SOCK=/run/s.sock\nPUB_SOCK=/run/p.sock\n");
    assert!(load_text(&both, &[]).is_ok());
    let one = format!("{text}SUB_SOCK=/run/s.sock\n");
    assert!(err_text(load_text(&one, &[])).contains("PUB_SOCK"));
    // At the limit exactly: 98 + "/sub.sock" (9) = 107 bytes.
    let fits = format!("SECURITY_KEY=k\nRUN_DIR=/{}\n", "d".repeat(97));
    assert_eq!(
        load_text(&fits, &[]).unwrap().sub_sock.as_os_str().len(),
        107
    );
}

#[test]
fn sock_group_falls_back_to_group() {
    let c = load_text("SECURITY_KEY=k\nGROUP=bitrix\nSOCK_GROUP=nginx\n", &[]).expect("loads");
    assert_eq!(c.sock_group.as_deref(), Some("nginx"));
    assert_eq!(c.origins["SOCK_GROUP"], Origin::File { line: 3 });
    let c = load_text("SECURITY_KEY=k\nGROUP=bitrix\n", &[]).expect("loads");
    assert_eq!(c.sock_group.as_deref(), Some("bitrix"));
    assert_eq!(c.origins["SOCK_GROUP"], Origin::File { line: 2 });
    let c = load_text("SECURITY_KEY=k\nGROUP=\n", &[]).expect("loads");
    assert_eq!(c.sock_group, None);
}

#[test]
fn pub_listen_off_loopback_warns() {
    let c = load_text("SECURITY_KEY=k\nSUB_LISTEN=0.0.0.0:8010\n", &[]).expect("loads");
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    let c = load_text("SECURITY_KEY=k\nPUB_LISTEN=0.0.0.0:9010\n", &[]).expect("loads");
    assert!(
        c.warnings.iter().any(|w| w.contains("PUB_LISTEN")),
        "{:?}",
        c.warnings
    );
}

#[test]
fn render_masks_secrets_and_reads_back() {
    let c = load_text(
        SAMPLE,
        &[("REDIS_SOCK", ""), ("REDIS_URL", "redis://:hunter2@h:6379")],
    )
    .expect("loads");
    let text = c.render();
    assert!(!text.contains("AbCdEf0123456789xyz"), "{text}");
    assert!(text.contains("SECURITY_KEY=Ab***(19 chars)  # "), "{text}");
    assert!(text.contains("push-server-multi line 32\n"), "{text}");
    assert!(!text.contains("hunter2"), "{text}");
    assert!(
        text.contains("REDIS_URL='redis://:***@h:6379'  # the environment\n"),
        "{text}"
    );
    assert!(text.contains("LONG_POLL_TIMEOUT=40  # default\n"), "{text}");
    assert!(text.contains("SOCK_MODE=0660  # default\n"), "{text}");
    assert!(!format!("{c:?}").contains("AbCdEf0123456789xyz"));
    assert!(!format!("{c:?}").contains("hunter2"));

    // Everything but the masked key reads back to the same configuration.
    let again: String = text
        .lines()
        .filter(|l| !l.starts_with("SECURITY_KEY=") && !l.starts_with("REDIS_URL="))
        .map(|l| format!("{l}\n"))
        .collect();
    let again = load_text(&format!("{again}SECURITY_KEY=AbCdEf0123456789xyz\n"), &[])
        .expect("rendered config loads");
    assert!(again.warnings.is_empty(), "{:?}", again.warnings);
    assert_eq!(again.limits, c.limits);
    assert_eq!(again.timings, c.timings);
    assert_eq!(again.store, c.store);
    assert_eq!(again.paths, c.paths);
    assert_eq!(again.sock_group, c.sock_group);
}

#[test]
fn durations_render_without_noise() {
    assert_eq!(fmt_duration(secs(40)), "40");
    assert_eq!(fmt_duration(Duration::from_millis(500)), "0.5");
    assert_eq!(fmt_duration(Duration::from_millis(1250)), "1.25");
    assert_eq!(seconds("1.25"), Ok(Duration::from_millis(1250)));
}

/// The `KEY=value` part of every rendered line except REDIS_SOCK.
fn rendered_values(c: &Config) -> Vec<String> {
    c.render()
        .lines()
        .filter(|l| !l.starts_with('#') && !l.starts_with("REDIS_SOCK="))
        .map(|l| l.split("  # ").next().unwrap_or_default().to_string())
        .collect()
}

#[test]
fn example_file_documents_every_key_with_its_default() {
    let example = include_str!("../../systemd/push-server-multi.example");
    for key in KEYS.iter().map(|k| k.name) {
        assert!(
            example.contains(&format!("#{key}=")),
            "{key} is not in the example"
        );
    }
    let e = err_text(load_text(example, &[]));
    assert!(e.contains("SECURITY_KEY is not set"), "{e}");

    // Uncommenting every default must change nothing but the sample REDIS_SOCK.
    let uncommented: String = example
        .lines()
        .map(|l| match l.strip_prefix('#') {
            Some(rest)
                if rest.starts_with(|c: char| c.is_ascii_uppercase()) && rest.contains('=') =>
            {
                format!("{rest}\n")
            }
            _ => format!("{l}\n"),
        })
        .collect();
    let c = load_text(&format!("{uncommented}SECURITY_KEY=k\n"), &[]).expect("loads");
    let d = load_text("SECURITY_KEY=k\n", &[]).expect("loads");
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    assert_eq!(
        c.redis_sock.as_deref(),
        Some(Path::new("/var/run/redis/redis.sock"))
    );
    assert_eq!(rendered_values(&c), rendered_values(&d));
}

#[test]
fn sentinel_and_wait_keys() {
    let c = load_env(&[
        ("SECURITY_KEY", "k"),
        ("REDIS_SENTINELS", "10.0.0.1:26379, sentinel-2:26380"),
        ("REDIS_MASTER_NAME", "push"),
        ("REDIS_SENTINEL_PASSWORD", "hunter2"),
        ("REDIS_WAIT_REPLICAS", "1"),
    ])
    .expect("loads");
    assert_eq!(c.redis_sentinels, ["10.0.0.1:26379", "sentinel-2:26380"]);
    assert_eq!(c.redis_master_name, "push");
    assert_eq!(c.redis_wait_replicas, 1);
    let text = c.render();
    assert!(!text.contains("hunter2"), "{text}");
    assert!(text.contains("REDIS_SENTINEL_PASSWORD='***'"), "{text}");
    assert!(
        text.contains("REDIS_SENTINELS=10.0.0.1:26379,sentinel-2:26380"),
        "{text}"
    );
    assert!(!format!("{c:?}").contains("hunter2"));

    let e = err_text(load_env(&[
        ("SECURITY_KEY", "k"),
        ("REDIS_SENTINELS", "h:1"),
    ]));
    assert!(e.contains("REDIS_MASTER_NAME is not"), "{e}");
    let e = err_text(load_env(&[
        ("SECURITY_KEY", "k"),
        ("REDIS_SENTINELS", "h:1"),
        ("REDIS_MASTER_NAME", "m"),
        ("REDIS_SOCK", "/run/r.sock"),
    ]));
    assert!(e.contains("keep one"), "{e}");
    for bad in ["h", "h:0", ":1", "h:99999", "a b:1"] {
        let e = err_text(load_env(&[
            ("SECURITY_KEY", "k"),
            ("REDIS_SENTINELS", bad),
            ("REDIS_MASTER_NAME", "m"),
        ]));
        assert!(e.contains("invalid REDIS_SENTINELS"), "{bad}: {e}");
    }
    let e = err_text(load_env(&[
        ("SECURITY_KEY", "k"),
        ("REDIS_WAIT_REPLICAS", "x"),
    ]));
    assert!(e.contains("invalid REDIS_WAIT_REPLICAS"), "{e}");
    let c = load_env(&[("SECURITY_KEY", "k"), ("REDIS_WAIT_REPLICAS", "2")]).expect("loads");
    assert!(
        c.warnings.iter().any(|w| w.contains("REDIS_WAIT_REPLICAS")),
        "{:?}",
        c.warnings
    );
}

#[test]
fn generated_keys() {
    let a = generate_key().expect("urandom");
    let b = generate_key().expect("urandom");
    assert_eq!(a.len(), 64);
    assert!(a.bytes().all(|c| c.is_ascii_alphanumeric()));
    assert_ne!(a, b);
}
