//! Configuration: `--check-config`, the config file, env overrides, the key rules and the
//! zero-config start (docs/operations.md#configuration; docs/protocol.md#channels-and-signatures).

mod common;

use common::*;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const DEFAULT_CONFIG: &str = "/etc/sysconfig/push-server-multi";

fn run(args: &[&str], env: &[(&str, &str)]) -> RunOutput {
    Command::new(BIN)
        .env_clear()
        .envs(env.iter().copied())
        .args(args)
        .run_with_timeout(Duration::from_secs(10))
}

fn write(dir: &TestDir, name: &str, content: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, content).expect("write config");
    p.display().to_string()
}

#[test]
fn check_config_good_file_prints_masked_config() {
    let dir = TestDir::new();
    let run_dir = dir.join("run").display().to_string();
    let file = write(
        &dir,
        "push-server-multi",
        &format!(
            "# sample\nexport SECURITY_KEY=\"VerySecretKey123\"\nRUN_DIR='{run_dir}'\nLONG_POLL_TIMEOUT=25   # trailing comment\nBASE_SUB=801\nUSER=bitrix\n"
        ),
    );
    let out = run(&["--config", &file, "--check-config"], &[]);
    assert_eq!(out.code, Some(0), "check-config on a good file: {out:?}");
    let all = format!("{}{}", out.stdout, out.stderr);
    assert!(
        !all.contains("VerySecretKey123"),
        "the key must be masked in --check-config output: {all}"
    );
    assert!(
        out.stdout.contains("LONG_POLL_TIMEOUT"),
        "prints the effective config: {}",
        out.stdout
    );
    assert!(
        out.stdout.contains("25"),
        "shows LONG_POLL_TIMEOUT=25: {}",
        out.stdout
    );
    assert!(
        !Path::new(&run_dir).join("sub.sock").exists(),
        "--check-config must not bind anything"
    );
    // docs/persistence.md: the defaults of STATE_DIR, STATE_FILE and STORE_FSYNC.
    for line in [
        "STATE_DIR=/var/lib/push-server  # default",
        "STATE_FILE=/var/lib/push-server/push-server.state  # default",
        "STORE_FSYNC=everysec  # default",
    ] {
        assert!(out.stdout.contains(line), "{line} in {}", out.stdout);
    }
}

#[test]
fn check_config_state_dir_in_zero_config_and_bad_fsync() {
    let dir = TestDir::new();
    let run_dir = dir.join("run").display().to_string();
    let out = run(&["--check-config"], &[("RUN_DIR", &run_dir)]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(
        out.stdout
            .contains(&format!("STATE_DIR={run_dir}/state  # zero-config default")),
        "{}",
        out.stdout
    );
    let out = run(
        &["--check-config"],
        &[("SECURITY_KEY", "k"), ("STORE_FSYNC", "sometimes")],
    );
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(out.stderr.contains("STORE_FSYNC"), "{}", out.stderr);
}

#[test]
fn check_config_bad_value_exits_2_naming_the_key() {
    let dir = TestDir::new();
    let file = write(&dir, "cfg", "SECURITY_KEY=abc123\nLONG_POLL_TIMEOUT=abc\n");
    let out = run(&["--config", &file, "--check-config"], &[]);
    assert_eq!(out.code, Some(2), "invalid LONG_POLL_TIMEOUT: {out:?}");
    assert!(
        out.stderr.contains("LONG_POLL_TIMEOUT"),
        "stderr must name the key: {}",
        out.stderr
    );
    // And the same file refuses to start.
    let out = run(
        &["--config", &file],
        &[("RUN_DIR", &dir.join("r").display().to_string())],
    );
    assert_eq!(out.code, Some(2), "start with an invalid file: {out:?}");
    assert!(out.stderr.contains("LONG_POLL_TIMEOUT"), "{}", out.stderr);
}

#[test]
fn invalid_values_refused() {
    let dir = TestDir::new();
    for (content, key) in [
        ("SECURITY_KEY=bad-key!\n", "SECURITY_KEY"),
        ("SECURITY_KEY=abc\nSECURITY_ALGO=md5\n", "SECURITY_ALGO"),
        ("SECURITY_KEY=abc\nMAX_PAYLOAD=-1\n", "MAX_PAYLOAD"),
    ] {
        let file = write(&dir, "cfg", content);
        let out = run(&["--config", &file, "--check-config"], &[]);
        assert_eq!(out.code, Some(2), "{content:?}: {out:?}");
        assert!(
            out.stderr.contains(key),
            "stderr must name {key}: {}",
            out.stderr
        );
    }
}

#[test]
fn env_bad_value_exits_2() {
    let out = run(
        &["--check-config"],
        &[("SECURITY_KEY", "abc123"), ("LONG_POLL_TIMEOUT", "abc")],
    );
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(out.stderr.contains("LONG_POLL_TIMEOUT"), "{}", out.stderr);
}

#[test]
fn missing_key_with_config_file_exits_2() {
    let dir = TestDir::new();
    let file = write(&dir, "cfg", &format!("RUN_DIR={}\n", dir.path.display()));
    let out = run(&["--config", &file], &[]);
    assert_eq!(
        out.code,
        Some(2),
        "a config file without SECURITY_KEY: {out:?}"
    );
    assert!(
        out.stderr.contains("SECURITY_KEY"),
        "message names SECURITY_KEY: {}",
        out.stderr
    );
    let file = write(
        &dir,
        "cfg2",
        &format!("RUN_DIR={}\nSECURITY_KEY=\n", dir.path.display()),
    );
    let out = run(&["--config", &file], &[]);
    assert_eq!(out.code, Some(2), "an empty SECURITY_KEY: {out:?}");
}

#[test]
fn missing_key_with_redis_sock_env_exits_2() {
    let dir = TestDir::new();
    let out = run(
        &[],
        &[
            ("REDIS_SOCK", &dir.join("redis.sock").display().to_string()),
            ("RUN_DIR", &dir.path.display().to_string()),
        ],
    );
    assert_eq!(
        out.code,
        Some(2),
        "REDIS_SOCK without SECURITY_KEY: {out:?}"
    );
    assert!(out.stderr.contains("SECURITY_KEY"), "{}", out.stderr);
}

#[test]
fn missing_config_file_is_an_error() {
    let out = run(
        &[
            "--config",
            "/nonexistent/push-server.conf",
            "--check-config",
        ],
        &[("SECURITY_KEY", "abc")],
    );
    assert_eq!(out.code, Some(2), "{out:?}");
}

#[test]
fn config_file_key_is_used_and_env_overrides_file() {
    let dir = TestDir::new();
    let file = write(
        &dir,
        "cfg",
        "SECURITY_KEY=fileKey77\nLONG_POLL_TIMEOUT=30\nSOME_UNKNOWN_KEY=1\n",
    );
    let s = Server::builder()
        .unset("SECURITY_KEY")
        .env("LONG_POLL_TIMEOUT", "1")
        .arg("--config")
        .arg(&file)
        .start();
    let ch = new_id();
    let item = format!("{ch}.{}", sign_with("fileKey77", &ch));
    let t0 = Instant::now();
    let r = s.lp(&format!("CHANNEL_ID={}", enc(&item)));
    assert_eq!(
        r.status,
        304,
        "key from the file must validate: {:?}",
        r.body_str()
    );
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "env LONG_POLL_TIMEOUT=1 must override the file's 30"
    );
    assert!(
        s.stderr_text().contains("SOME_UNKNOWN_KEY"),
        "an unknown key in the file is warned about"
    );
}

#[test]
fn zero_config_start_prints_working_curl_commands() {
    if Path::new(DEFAULT_CONFIG).exists() {
        println!("skipped: {DEFAULT_CONFIG} exists, so zero-config mode cannot be tested here");
        return;
    }
    if Command::new("curl")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_err()
    {
        panic!("curl is required (scripts/test.sh installs it)");
    }
    let (sp, pp) = (free_port(), free_port());
    let s = Server::builder()
        .zero_config()
        .env("SUB_LISTEN", format!("127.0.0.1:{sp}"))
        .env("PUB_LISTEN", format!("127.0.0.1:{pp}"))
        .start();
    let mut lines = Vec::new();
    let ok = wait_until(WAIT, || {
        lines = s
            .stdout_text()
            .lines()
            .map(|l| l.trim().to_string())
            .filter(|l| l.starts_with("curl "))
            .collect();
        lines.len() >= 2
    });
    assert!(
        ok,
        "two `curl ` lines expected on stdout; got:\n{}",
        s.stdout_text()
    );
    // The banner says what turns the mode, and its TCP listeners, off.
    let banner = s.stdout_text().replace("\n  ", " ");
    assert!(
        banner.contains(
            "this mode and its TCP listeners on 127.0.0.1:8010 and 127.0.0.1:9010 are off"
        ),
        "{banner}"
    );
    let (sub_line, pub_line) = (lines[0].clone(), lines[1].clone());

    // The printed key signs the printed channel.
    let stdout = s.stdout_text();
    let pos = sub_line
        .find("CHANNEL_ID=")
        .expect("subscribe line has CHANNEL_ID");
    let item: String = sub_line[pos + 11..]
        .chars()
        .take_while(|c| c.is_ascii_hexdigit() || *c == '.')
        .collect();
    let (id, sig) = item
        .split_once('.')
        .unwrap_or_else(|| panic!("signed item in {sub_line}"));
    let key_printed = stdout
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|t| t.len() >= 6)
        .any(|t| sign_with(t, id) == sig || sign256_with(t, id) == sig);
    assert!(
        key_printed,
        "the key that signs {id} must be printed:\n{stdout}"
    );

    let sub = Command::new("sh")
        .arg("-c")
        .arg(&sub_line)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("run subscribe curl");
    let mut sub = KillOnDrop(sub);
    // Publish until the subscriber's poll has picked a message up (no sleeps as sync).
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        let out = Command::new("sh")
            .arg("-c")
            .arg(&pub_line)
            .run_with_timeout(Duration::from_secs(10));
        assert_eq!(out.code, Some(0), "publish curl failed: {out:?}");
        if wait_until(Duration::from_millis(500), || {
            matches!(sub.0.try_wait(), Ok(Some(_)))
        }) {
            break sub.0.wait().expect("wait");
        }
        assert!(
            Instant::now() < deadline,
            "the subscribe curl never completed"
        );
    };
    assert!(status.success(), "subscribe curl exit: {status}");
    let mut body = String::new();
    use std::io::Read;
    sub.0
        .stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut body)
        .expect("read curl output");
    let frames = parse_frames(body.trim_end())
        .unwrap_or_else(|e| panic!("subscribe output is not v3 frames ({e}): {body:?}"));
    let unescaped = pub_line.replace('\\', "");
    assert!(
        pub_line.contains(&frames[0].text) || unescaped.contains(&frames[0].text),
        "the published text {:?} must be what the publish line sends: {pub_line}",
        frames[0].text
    );
}

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn custom_route_paths() {
    let s = Server::builder()
        .env("LONG_POLL_TIMEOUT", "1")
        .env("SUBPATH", "/push/sub/")
        .env("SUBWSPATH", "/push/subws/")
        .env("PUBPATH", "/push/pub/")
        .start();
    let ch = new_id();
    let r = s.pub_request(
        format!("POST /push/pub/?CHANNEL_ID={ch} HTTP/1.0\r\nMessage-Expiry: 86400\r\nContent-Length: 4\r\n\r\n\"cp\"")
            .as_bytes(),
    );
    assert_eq!(r.status, 200, "publish on PUBPATH: {:?}", r.body_str());
    let q = format!("CHANNEL_ID={}&mid={OLD_MID}", enc(&signed(&ch)));
    for path in ["/push/sub/", "/push/subws/"] {
        let mut c = s.sub_conn();
        c.send(&lp_request(path, &q));
        let r = c.read_response();
        assert_eq!(r.status, 200, "LP on {path}: {:?}", r.body_str());
        assert_eq!(r.frames()[0].text, "\"cp\"");
    }
    let r = s.publish(&ch, "\"old-path\"", None);
    assert_eq!(
        r.status, 404,
        "the default /bitrix/pub/ is not served when PUBPATH moved it"
    );
}

/// `--check-config` checks what the start needs (docs/operations.md, "Checking the
/// configuration"): a group unknown to the system's name service fails, a known one passes.
#[test]
fn check_config_fails_on_a_group_the_name_service_does_not_know() {
    let dir = TestDir::new();
    let run_dir = dir.join("run").display().to_string();
    let file = write(
        &dir,
        "cfg",
        &format!("SECURITY_KEY=k1\nRUN_DIR={run_dir}\nGROUP=nosuchgroup\n"),
    );
    let out = run(&["--config", &file, "--check-config"], &[]);
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(
        out.stderr
            .contains("group nosuchgroup not found by the system's name service"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("the start would fail"),
        "{}",
        out.stderr
    );
    // The start refuses it too, with the same lookup.
    let start = run(&["--config", &file], &[("STATE_DIR", &run_dir)]);
    assert_eq!(start.code, Some(1), "{start:?}");
    assert!(start.stderr.contains("nosuchgroup"), "{}", start.stderr);

    let file = write(
        &dir,
        "cfg2",
        &format!("SECURITY_KEY=k1\nRUN_DIR={run_dir}\nGROUP=root\n"),
    );
    let out = run(&["--config", &file, "--check-config"], &[]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(
        out.stdout
            .contains("# ok: GROUP/SOCK_GROUP: group root exists (gid 0)"),
        "{}",
        out.stdout
    );
}

#[test]
fn check_config_fails_when_a_directory_cannot_be_created() {
    let dir = TestDir::new();
    let blocker = write(&dir, "not-a-dir", "");
    let file = write(
        &dir,
        "cfg",
        &format!(
            "SECURITY_KEY=k1\nRUN_DIR={}/run\nSTATE_DIR={blocker}/state\n",
            dir.path.display()
        ),
    );
    let out = run(&["--config", &file, "--check-config"], &[]);
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(
        out.stderr.contains(&format!(
            "STATE_DIR: {blocker}/state: {blocker} exists and is not a directory"
        )),
        "{}",
        out.stderr
    );
    assert!(
        out.stdout.contains("# ok: RUN_DIR: ") && out.stdout.contains("/run can be created"),
        "{}",
        out.stdout
    );
}

#[test]
fn check_config_warns_when_redis_does_not_answer() {
    let dir = TestDir::new();
    let file = write(
        &dir,
        "cfg",
        &format!(
            "SECURITY_KEY=k1\nRUN_DIR={}\nREDIS_SOCK={}\n",
            dir.path.display(),
            dir.join("no-redis.sock").display()
        ),
    );
    let out = run(&["--config", &file, "--check-config"], &[]);
    assert_eq!(
        out.code,
        Some(0),
        "a Redis outage is only a warning: {out:?}"
    );
    assert!(
        out.stderr.contains("warning: REDIS_SOCK") && out.stderr.contains("Redis does not answer"),
        "{}",
        out.stderr
    );
    let redis = Redis::start();
    let file = write(
        &dir,
        "cfg2",
        &format!(
            "SECURITY_KEY=k1\nRUN_DIR={}\nREDIS_SOCK={}\n",
            dir.path.display(),
            redis.sock.display()
        ),
    );
    let out = run(&["--config", &file, "--check-config"], &[]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(out.stdout.contains("Redis answers PING"), "{}", out.stdout);
}

#[test]
fn check_config_fails_on_an_unterminated_quote_and_lists_ignored_keys() {
    let dir = TestDir::new();
    let file = write(
        &dir,
        "cfg",
        &format!(
            "SECURITY_KEY=k1\nRUN_DIR={}\nLOG_LEVEL=\"debug\n",
            dir.path.display()
        ),
    );
    let out = run(&["--config", &file, "--check-config"], &[]);
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(
        out.stderr
            .contains(&format!("{file} line 3: unterminated double quote")),
        "{}",
        out.stderr
    );

    let file = write(
        &dir,
        "cfg2",
        &format!(
            "SECURITY_KEY=k1\nRUN_DIR={}\nBASE_SUB=8010\nWS_PORT=1337\nID_PUB=0\nIP_LIST='\"127.0.0.1\"'\nSEND_TIMEOUT=60\n",
            dir.path.display()
        ),
    );
    let out = run(&["--config", &file, "--check-config"], &[]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(
        out.stdout.contains(
            "# ignored: keys that set nothing here (from the Node.js server, or retired): BASE_SUB (line 3), WS_PORT (line 4), ID_PUB (line 5), IP_LIST (line 6), SEND_TIMEOUT (line 7)"
        ),
        "{}",
        out.stdout
    );
}

/// docs/v5.md: JSONRPCPATH, HOST_ID and JWT_LEEWAY are shown with their defaults, read from
/// the environment, and bad values are refused naming the key.
#[test]
fn v5_keys_defaults_overrides_and_refusals() {
    let out = run(&["--check-config"], &[("SECURITY_KEY", "k")]);
    assert_eq!(out.code, Some(0), "{out:?}");
    for line in [
        "JSONRPCPATH=/bitrix/api/  # default",
        "HOST_ID=  # default",
        "JWT_LEEWAY=60  # default",
    ] {
        assert!(out.stdout.contains(line), "{line} in {}", out.stdout);
    }
    let out = run(
        &["--check-config"],
        &[
            ("SECURITY_KEY", "k"),
            ("HOST_ID", "abc123"),
            ("JWT_LEEWAY", "5"),
            ("JSONRPCPATH", "/api/"),
        ],
    );
    assert_eq!(out.code, Some(0), "{out:?}");
    for line in [
        "JSONRPCPATH=/api/  # the environment",
        "HOST_ID=abc123  # the environment",
        "JWT_LEEWAY=5  # the environment",
    ] {
        assert!(out.stdout.contains(line), "{line} in {}", out.stdout);
    }
    for (key, value) in [
        ("HOST_ID", "not a host!"),
        ("JWT_LEEWAY", "-1"),
        ("JWT_LEEWAY", "99999"),
        ("JSONRPCPATH", "api"),
    ] {
        let out = run(&["--check-config"], &[("SECURITY_KEY", "k"), (key, value)]);
        assert_eq!(out.code, Some(2), "{key}={value}: {out:?}");
        assert!(out.stderr.contains(key), "{key}: {}", out.stderr);
    }
}

// ---- The documents against the key table (src/config/keys.rs) -----------------------------

use push_server::config::keys::key as table_key;
use push_server::config::{IGNORED_KEYS, KEYS};

/// A key table default with `$RUN_DIR`/`$STATE_DIR` replaced by those keys' defaults: what
/// the example file writes.
fn expanded_default(default: &str) -> String {
    let of = |name: &str| table_key(name).map_or("", |k| k.default);
    default
        .replace("$RUN_DIR", of("RUN_DIR"))
        .replace("$STATE_DIR", of("STATE_DIR"))
}

/// Upper-case words of `text` that look like key names (`A_B`, at least three letters).
fn key_like_words(text: &str) -> Vec<&str> {
    text.split(|c: char| !(c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'))
        .filter(|w| w.len() >= 3 && w.starts_with(|c: char| c.is_ascii_uppercase()))
        .collect()
}

#[test]
fn key_table_defaults_are_valid_and_names_unique() {
    let mut names: Vec<&str> = KEYS
        .iter()
        .map(|k| k.name)
        .chain(IGNORED_KEYS.iter().copied())
        .collect();
    let all = names.len();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), all, "a key is declared twice");
    for k in KEYS {
        assert!(!k.doc.is_empty(), "{} has no doc line", k.name);
        let default = expanded_default(k.default);
        if !default.is_empty() {
            assert_eq!(k.parse.check(&default), Ok(()), "default of {}", k.name);
        }
    }
}

#[test]
fn example_file_documents_exactly_the_keys_with_their_defaults() {
    let example = include_str!("../systemd/push-server-multi.example");
    let mut documented = Vec::new();
    for line in example.lines() {
        let Some((key, value)) = line.strip_prefix('#').and_then(|l| l.split_once('=')) else {
            continue;
        };
        if key.is_empty()
            || !key
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
        {
            continue;
        }
        let k = table_key(key)
            .unwrap_or_else(|| panic!("the example documents {key}, which is not a key"));
        assert!(!documented.contains(&key), "{key} is documented twice");
        documented.push(key);
        if key == "REDIS_SOCK" {
            // The example names the usual socket path as a sample; the default is unset.
            assert_eq!(k.default, "");
            assert_eq!(k.parse.check(value), Ok(()), "{line}");
        } else {
            assert_eq!(
                value,
                expanded_default(k.default),
                "default of {key} in the example"
            );
        }
    }
    for k in KEYS {
        assert!(
            documented.contains(&k.name),
            "{} is not in the example",
            k.name
        );
    }
    let ignored = example
        .split("# Accepted for compatibility and ignored:")
        .nth(1)
        .and_then(|rest| rest.split("\n\n").next())
        .expect("the example lists the ignored keys");
    for key in IGNORED_KEYS {
        assert!(
            key_like_words(ignored).contains(key),
            "{key} is not listed as ignored in the example"
        );
    }
    for word in key_like_words(ignored) {
        assert!(
            IGNORED_KEYS.contains(&word) || table_key(word).is_some(),
            "the example lists {word} as ignored, which is no key"
        );
    }
}

#[test]
fn readme_table_documents_exactly_the_keys_with_their_defaults() {
    let readme = include_str!("../README.md");
    let table = readme
        .split("| key | default | meaning |\n|---|---|---|\n")
        .nth(1)
        .and_then(|rest| rest.split("\n\n").next())
        .expect("the README has the configuration table");
    let mut documented = Vec::new();
    for row in table.lines() {
        let cells: Vec<&str> = row.split(" | ").collect();
        assert!(cells.len() >= 3, "{row}");
        let keys: Vec<&str> = cells[0]
            .trim_start_matches("| ")
            .split(['`', ',', '/', ' '])
            .filter(|s| !s.is_empty())
            .collect();
        // The default column without its parenthesised remarks, one value per key or one for all.
        let mut column = String::new();
        let mut depth = 0;
        for c in cells[1].chars() {
            match c {
                '(' => depth += 1,
                ')' => depth -= 1,
                c if depth == 0 => column.push(c),
                _ => {}
            }
        }
        let defaults: Vec<String> = column
            .split(" / ")
            .flat_map(|s| s.split(", "))
            .map(|s| match s.trim().trim_matches('`') {
                "empty" | "unset" | "service group" | "—" => String::new(),
                v => v.to_string(),
            })
            .collect();
        assert!(
            defaults.len() == keys.len() || defaults.len() == 1,
            "{row}: {} keys, {} defaults",
            keys.len(),
            defaults.len()
        );
        for (i, key) in keys.iter().enumerate() {
            let k = table_key(key)
                .unwrap_or_else(|| panic!("the README documents {key}, which is not a key"));
            assert!(!documented.contains(key), "{key} is in the README twice");
            documented.push(*key);
            let default = &defaults[i.min(defaults.len() - 1)];
            assert_eq!(default, k.default, "default of {key} in the README");
        }
    }
    for k in KEYS {
        assert!(
            documented.contains(&k.name),
            "{} is not in the README's table",
            k.name
        );
    }
    let legacy = readme
        .split("Legacy keys of the Node server (")
        .nth(1)
        .and_then(|rest| rest.split(')').next())
        .expect("the README names the ignored keys");
    for word in key_like_words(legacy) {
        assert!(
            IGNORED_KEYS.contains(&word),
            "the README calls {word} ignored, which it is not"
        );
    }
}

#[test]
fn operations_guide_lists_every_ignored_key() {
    let ops = include_str!("../docs/operations.md");
    let section = ops
        .split("## Configuration")
        .nth(1)
        .and_then(|rest| rest.split("\n## ").next())
        .expect("docs/operations.md has a Configuration section");
    for key in IGNORED_KEYS {
        assert!(
            section.contains(&format!("`{key}`")),
            "{key} is not in docs/operations.md"
        );
    }
}
