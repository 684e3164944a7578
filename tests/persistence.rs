//! The embedded store survives a restart (docs/persistence.md): the journal in STATE_DIR is
//! restored under the TTL and caps, a damaged tail is cut, a newer format or an unusable
//! STATE_DIR refuses the start, and the file stays under 2 × STORE_MAX_BYTES.

mod common;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::*;

const WAIT: Duration = Duration::from_secs(10);

fn cid(id: &str) -> String {
    format!("CHANNEL_ID={}", enc(&signed(id)))
}

fn start(state: &Path, extra: &[(&str, &str)]) -> Server {
    let mut b = Server::builder().env("STATE_DIR", state.display().to_string());
    for (k, v) in extra {
        b = b.env(k, v);
    }
    b.start()
}

/// Every stored message of `ch` after `mid`, reading chunk after chunk.
fn backlog(s: &Server, ch: &str, mid: &str) -> Vec<Frame> {
    let mut all: Vec<Frame> = Vec::new();
    let mut after = mid.to_string();
    loop {
        let r = s.lp(&format!("{}&mid={after}", cid(ch)));
        if r.status == 304 {
            return all;
        }
        assert_eq!(r.status, 200, "{}", r.body_str());
        let frames = r.frames();
        let last = frames.last().expect("a 200 has frames").mid.clone();
        all.extend(frames);
        if !all.len().is_multiple_of(200) {
            return all;
        }
        after = last;
    }
}

fn journal(state: &Path) -> PathBuf {
    state.join("journal")
}

/// Publishes `n` messages to `ch`, every third with expiry 0; returns them as stored.
fn publish_some(s: &Server, ch: &str, n: usize) -> Vec<Frame> {
    for i in 0..n {
        let expiry = if i % 3 == 0 { Some(0) } else { None };
        s.publish_ok(ch, &format!("{{\"n\":{i}}}"), expiry);
    }
    let frames = backlog(s, ch, OLD_MID);
    assert_eq!(frames.len(), n, "all stored before the restart");
    frames
}

fn restart_replays_everything(stop: impl FnOnce(&mut Server)) {
    let state = TestDir::new();
    let ch = new_id();
    let mut s1 = start(&state.path, &[]);
    let before = publish_some(&s1, &ch, 60);
    stop(&mut s1);
    drop(s1);
    let s2 = start(&state.path, &[]);
    // A client resuming from an early mid gets the rest, in order, with the same mids.
    let got = backlog(&s2, &ch, &before[4].mid);
    let want: Vec<(&str, &str)> = before[5..]
        .iter()
        .map(|f| (f.mid.as_str(), f.text.as_str()))
        .collect();
    let got: Vec<(&str, &str)> = got
        .iter()
        .map(|f| (f.mid.as_str(), f.text.as_str()))
        .collect();
    assert_eq!(got, want, "stderr:\n{}", s2.stderr_text());
    // New ids are above the restored ones.
    s2.publish_ok(&ch, "\"after\"", None);
    let all = backlog(&s2, &ch, OLD_MID);
    assert_eq!(all.len(), 61);
    assert!(
        all[60].mid > before[59].mid,
        "{} > {}",
        all[60].mid,
        before[59].mid
    );
}

#[test]
fn kill_9_loses_nothing_acknowledged() {
    restart_replays_everything(|s| {
        s.signal("KILL");
        s.wait_exit(WAIT).expect("killed");
    });
}

#[test]
fn sigterm_restart_keeps_the_backlog() {
    restart_replays_everything(|s| {
        assert_eq!(s.stop().code(), Some(0));
    });
}

#[test]
fn a_damaged_tail_is_cut_and_logged() {
    let state = TestDir::new();
    let ch = new_id();
    let mut s1 = start(&state.path, &[]);
    let before = publish_some(&s1, &ch, 10);
    s1.signal("KILL");
    s1.wait_exit(WAIT).expect("killed");
    drop(s1);
    let path = journal(&state.path);
    let good = std::fs::read(&path).expect("journal");

    // Garbage appended: every record kept.
    let mut junk = good.clone();
    junk.extend_from_slice(b"\x07\x00\x00\x00garbage after the last record");
    std::fs::write(&path, &junk).expect("write");
    let mut s2 = start(&state.path, &[]);
    assert_eq!(backlog(&s2, &ch, OLD_MID).len(), 10);
    let log = s2.stderr_text();
    assert!(
        log.contains(&format!("at offset {}", good.len())) && log.contains("dropping the last"),
        "{log}"
    );
    s2.signal("KILL");
    s2.wait_exit(WAIT).expect("killed");
    drop(s2);

    // Cut in the middle of the last record: the nine before it are kept.
    let compacted = std::fs::read(&path).expect("journal");
    std::fs::write(&path, &compacted[..compacted.len() - 5]).expect("write");
    let s3 = start(&state.path, &[]);
    let got = backlog(&s3, &ch, OLD_MID);
    assert_eq!(got.len(), 9);
    assert_eq!(got[8].mid, before[8].mid);
    assert!(
        s3.stderr_text().contains("truncated record"),
        "{}",
        s3.stderr_text()
    );
}

/// Runs the binary until it exits (it must, within 10 s); returns its code and stderr.
fn run_to_exit(env: &[(&str, String)]) -> (Option<i32>, String) {
    let dir = TestDir::new();
    let mut child = Command::new(BIN)
        .env_clear()
        .env("SECURITY_KEY", KEY)
        .env("RUN_DIR", dir.path.display().to_string())
        .env("SUB_LISTEN", "")
        .env("PUB_LISTEN", "")
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut code = None;
    let exited = wait_until(WAIT, || match child.try_wait() {
        Ok(Some(st)) => {
            code = st.code();
            true
        }
        _ => false,
    });
    if !exited {
        let _ = child.kill();
        let _ = child.wait();
    }
    let mut err = String::new();
    let _ = child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut err);
    assert!(exited, "did not exit; stderr:\n{err}");
    (code, err)
}

#[test]
fn a_journal_from_a_newer_version_refuses_the_start() {
    let state = TestDir::new();
    let mut bytes = b"PSJRNL\r\n".to_vec();
    bytes.extend_from_slice(&7u32.to_le_bytes());
    bytes.extend_from_slice(&[0; 4]);
    std::fs::write(journal(&state.path), &bytes).expect("write");
    let (code, err) = run_to_exit(&[("STATE_DIR", state.path.display().to_string())]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("journal format version 7") && err.contains("downgrade"),
        "{err}"
    );
    // Left as it was, for the newer build.
    assert_eq!(std::fs::read(journal(&state.path)).expect("kept"), bytes);
}

#[test]
fn an_unusable_state_dir_refuses_the_start() {
    let dir = TestDir::new();
    let file = dir.join("a-file");
    std::fs::write(&file, b"").expect("write");
    let state = file.join("state");
    let (code, err) = run_to_exit(&[("STATE_DIR", state.display().to_string())]);
    assert_eq!(code, Some(1), "{err}");
    let line = err
        .lines()
        .find(|l| l.contains("cannot start"))
        .unwrap_or_else(|| panic!("{err}"));
    assert!(
        line.contains(&format!("STATE_DIR {} cannot be created", state.display()))
            && line.contains("os error 20"),
        "{line}"
    );
}

#[test]
fn messages_that_expired_while_down_are_not_restored() {
    let state = TestDir::new();
    let ch = new_id();
    let mut s1 = start(&state.path, &[("EXPIRY0_GRACE", "1")]);
    s1.publish_ok(&ch, "\"short\"", Some(1));
    s1.publish_ok(&ch, "\"zero\"", Some(0));
    s1.publish_ok(&ch, "\"long\"", Some(3600));
    assert_eq!(backlog(&s1, &ch, OLD_MID).len(), 3);
    assert_eq!(s1.stop().code(), Some(0));
    drop(s1);
    let gone = SystemTime::now() + Duration::from_millis(1100);
    assert!(wait_until(WAIT, || SystemTime::now() >= gone));
    let s2 = start(&state.path, &[("EXPIRY0_GRACE", "1")]);
    let got = backlog(&s2, &ch, OLD_MID);
    let texts: Vec<&str> = got.iter().map(|f| f.text.as_str()).collect();
    assert_eq!(texts, ["\"long\""]);
}

fn metric(s: &Server, name: &str) -> u64 {
    let r = s.pub_request(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n");
    r.body_str()
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or_else(|| panic!("{name} not in /metrics")) as u64
}

#[test]
fn history_and_byte_caps_hold_after_restore() {
    let state = TestDir::new();
    let (a, b) = (new_id(), new_id());
    let mut s1 = start(&state.path, &[]);
    let body = format!("\"{}\"", "x".repeat(2000));
    for _ in 0..30 {
        s1.publish_ok(&a, &body, None);
        s1.publish_ok(&b, "\"small\"", None);
    }
    let before = backlog(&s1, &b, OLD_MID);
    assert_eq!(s1.stop().code(), Some(0));
    drop(s1);
    let mut s2 = start(&state.path, &[("CHANNEL_HISTORY", "5")]);
    let got = backlog(&s2, &b, OLD_MID);
    let mids: Vec<&str> = got.iter().map(|f| f.mid.as_str()).collect();
    let want: Vec<&str> = before[25..].iter().map(|f| f.mid.as_str()).collect();
    assert_eq!(mids, want, "the 5 newest");
    assert_eq!(s2.stop().code(), Some(0));
    drop(s2);
    let cap = 40_000;
    let s3 = start(
        &state.path,
        &[("STORE_MAX_BYTES", "40000"), ("MAX_PAYLOAD", "10000")],
    );
    let got = backlog(&s3, &a, OLD_MID);
    assert!(
        !got.is_empty() && got.len() < 10,
        "{} of 30 kept",
        got.len()
    );
    assert!(metric(&s3, "push_store_bytes") <= cap);
    // The oldest went first: what is kept is the newest.
    let last_b = backlog(&s3, &b, OLD_MID);
    assert!(got.last().expect("one").mid < last_b.last().expect("one").mid);
}

#[test]
fn the_journal_stays_under_twice_the_byte_cap() {
    let state = TestDir::new();
    let cap: u64 = 64 * 1024;
    let s = start(
        &state.path,
        &[
            ("STORE_MAX_BYTES", &cap.to_string()),
            ("MAX_PAYLOAD", "8192"),
        ],
    );
    let path = journal(&state.path);
    let body = format!("\"{}\"", "y".repeat(400));
    let (mut largest, mut written) = (0, 0u64);
    let deadline = Instant::now() + Duration::from_secs(60);
    for i in 0..1500 {
        s.publish_ok(&new_id(), &body, None);
        written += 450;
        let len = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        largest = largest.max(len);
        assert!(
            len < 2 * cap,
            "journal {len} bytes after {i} publishes, cap {cap}"
        );
        assert!(Instant::now() < deadline, "too slow");
    }
    assert!(written > 8 * cap, "published far more than the cap");
    assert!(largest > cap, "it grew before compacting ({largest})");
    assert!(
        s.stderr_text().contains("journal compacted"),
        "{}",
        s.stderr_text()
    );
}

#[test]
fn the_state_file_moves_from_its_old_default_place() {
    let run = TestDir::new();
    let state = run.join("state");
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let epoch = now + 100_000;
    std::fs::write(run.join("push-server.state"), format!("{epoch}\n")).expect("write");
    let s = start(&state, &[("RUN_DIR", &run.path.display().to_string())]);
    let ch = new_id();
    s.publish_ok(&ch, "1", None);
    let mid = backlog(&s, &ch, OLD_MID).remove(0).mid;
    assert_eq!(mid[..10], (epoch + 1).to_string(), "{mid}");
    let moved = std::fs::read_to_string(state.join("push-server.state")).expect("new file");
    assert_eq!(moved.trim(), (epoch + 1).to_string());
}

/// A journal write that fails (here: the file size limit, as a full disk would) answers the
/// publish 503 and stores nothing; what was answered 200 is all there after a restart.
#[test]
fn a_failed_journal_write_answers_503_and_publishes_nothing() {
    let state = TestDir::new();
    let ch = new_id();
    let mut s1 = Server::builder()
        .env("STATE_DIR", state.path.display().to_string())
        .shell_prefix("trap '' XFSZ; ulimit -f 64")
        .start();
    let mut ws = s1.ws(&cid(&ch));
    let body = format!("\"{}\"", "z".repeat(2000));
    let mut ok = 0;
    let refused = loop {
        let r = s1.publish(&ch, &body, None);
        if r.status != 200 {
            break r;
        }
        ok += 1;
        assert!(ok < 1000, "the file size limit never hit");
    };
    assert_eq!(refused.status, 503, "{}", refused.body_str());
    assert!(ok > 3, "{ok}");
    assert!(
        s1.stderr_text().contains("journal write of"),
        "{}",
        s1.stderr_text()
    );
    // Neither delivered nor stored.
    assert_eq!(ws.frames(ok, WAIT).len(), ok);
    ws.expect_silence(Duration::from_millis(300));
    assert_eq!(backlog(&s1, &ch, OLD_MID).len(), ok);
    s1.signal("KILL");
    s1.wait_exit(WAIT).expect("killed");
    drop(s1);
    let s2 = start(&state.path, &[]);
    assert_eq!(backlog(&s2, &ch, OLD_MID).len(), ok, "{}", s2.stderr_text());
}

#[test]
fn fsync_always_keeps_everything_too() {
    let state = TestDir::new();
    let ch = new_id();
    let mut s1 = start(&state.path, &[("STORE_FSYNC", "always")]);
    let before = publish_some(&s1, &ch, 20);
    s1.signal("KILL");
    s1.wait_exit(WAIT).expect("killed");
    drop(s1);
    let s2 = start(&state.path, &[("STORE_FSYNC", "no")]);
    let got = backlog(&s2, &ch, OLD_MID);
    let mids = |v: &[Frame]| v.iter().map(|f| f.mid.clone()).collect::<Vec<_>>();
    assert_eq!(mids(&got), mids(&before));
}
