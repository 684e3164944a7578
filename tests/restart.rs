//! Stopping and restarting under load (docs/restart.md): the SIGTERM drain delivers every
//! publish answered 200 before the 1001 close, and under socket activation a restart refuses
//! no connect and answers the first queued publish promptly. Both stores
//! (`PUSH_TEST_STORE=redis` for Redis).

mod common;

use common::*;
use std::collections::BTreeSet;
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

fn cid(id: &str) -> String {
    format!("CHANNEL_ID={}", enc(&signed(id)))
}

/// A keep-alive publish of `body` to `channel` (PHP's requests close; pipelining keep-alive
/// ones puts many in flight at the moment of the signal).
fn keepalive_publish(channel: &str, body: &str) -> Vec<u8> {
    format!(
        "POST /bitrix/pub/?CHANNEL_ID={channel} HTTP/1.1\r\nHost: localhost\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// The `n` of the bodies `{"n":N}` in these frames.
fn numbers(frames: &[Frame]) -> Vec<u64> {
    frames
        .iter()
        .filter_map(|f| {
            let v: serde_json::Value = serde_json::from_str(&f.text).ok()?;
            v["n"].as_u64()
        })
        .collect()
}

/// Reads a WebSocket until its close frame: the numbers received and the close code.
fn read_until_close(ws: &mut Ws, timeout: Duration) -> (Vec<u64>, Option<u16>) {
    let deadline = Instant::now() + timeout;
    let mut got = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return (got, None);
        }
        match ws.recv(left) {
            WsEvent::Text(t) => {
                got.extend(numbers(&parse_frames(&t).expect("v3 frames")));
            }
            WsEvent::Close(code, _) => {
                let _ = ws.ws.flush();
                return (got, Some(code));
            }
            WsEvent::Gone(_) => return (got, None),
            _ => {}
        }
    }
}

/// SIGTERM in the middle of a pipelined publish burst, with subscribers that have not read
/// for a while (their frames are queued in the server): every publish answered 200 reaches
/// every subscriber, in order, before its 1001; nothing is answered 200 after the stop began
/// that is not delivered; the process exits 0 and says how long the drain took.
#[test]
fn sigterm_drain_delivers_every_answered_publish_before_1001() {
    let mut s = Server::builder().env("SHUTDOWN_TIMEOUT", "10").start();
    let ch = new_id();
    const SUBSCRIBERS: usize = 8;
    let mut subs: Vec<Ws> = (0..SUBSCRIBERS).map(|_| s.ws(&cid(&ch))).collect();
    s.wait_online(&ch);
    let total = 3000;
    let answered = Arc::new(Mutex::new(Vec::new()));
    let sent = Arc::new(AtomicUsize::new(0));
    let publisher = {
        let (sock, answered, sent, ch) = (s.pubs.clone(), answered.clone(), sent.clone(), ch);
        thread::spawn(move || {
            let mut c = Conn::open(&sock);
            c.set_timeout(Duration::from_secs(10));
            let body = "x".repeat(200);
            // Batches of 50 pipelined publishes; the answers come in order.
            for batch in 0..total / 50 {
                let mut raw = Vec::new();
                for i in batch * 50..(batch + 1) * 50 {
                    raw.extend(keepalive_publish(
                        &ch,
                        &format!("{{\"n\":{i},\"pad\":\"{body}\"}}"),
                    ));
                }
                if c.try_send(&raw).is_err() {
                    return;
                }
                sent.store((batch + 1) * 50, Ordering::SeqCst);
                for i in batch * 50..(batch + 1) * 50 {
                    match c.try_read_response() {
                        Ok(r) if r.status == 200 => answered.lock().unwrap().push(i as u64),
                        // 503 once shutdown began, or the connection closed: not published.
                        _ => return,
                    }
                }
            }
        })
    };
    // Signal once a good part of the burst is out and the subscribers, which have not read
    // at all, have deep queues.
    assert!(
        wait_until(Duration::from_secs(20), || sent.load(Ordering::SeqCst)
            >= total / 3),
        "publisher stalled"
    );
    let t0 = Instant::now();
    s.signal("TERM");
    publisher.join().expect("publisher");
    let answered: Vec<u64> = answered.lock().unwrap().clone();
    assert!(
        !answered.is_empty() && answered.len() < total,
        "the signal should land inside the burst ({} of {total} answered)",
        answered.len()
    );
    for (i, ws) in subs.iter_mut().enumerate() {
        let (got, code) = read_until_close(ws, Duration::from_secs(15));
        assert_eq!(code, Some(1001), "subscriber {i}: close code");
        let got_set: BTreeSet<u64> = got.iter().copied().collect();
        assert_eq!(got_set.len(), got.len(), "subscriber {i}: duplicates");
        assert!(got.windows(2).all(|w| w[0] < w[1]), "subscriber {i}: order");
        let missing: Vec<u64> = answered
            .iter()
            .filter(|n| !got_set.contains(n))
            .copied()
            .collect();
        assert!(
            missing.is_empty(),
            "subscriber {i} lost {} publishes answered 200 (first {:?}); got {}",
            missing.len(),
            &missing[..missing.len().min(5)],
            got.len()
        );
    }
    let st = s
        .wait_exit(Duration::from_secs(15))
        .expect("exit after the drain");
    assert_eq!(st.code(), Some(0));
    // The log reader may lag the exit a little.
    wait_until(WAIT, || s.stderr_text().contains("shutdown complete in"));
    let log = s.stderr_text();
    let line = log
        .lines()
        .find(|l| l.contains("shutdown complete in"))
        .unwrap_or_else(|| panic!("no drain time logged:\n{log}"));
    println!(
        "drain: {} answered of {total}; {line}; SIGTERM to exit {:?}",
        answered.len(),
        t0.elapsed()
    );
}

/// Once shutdown begins, a publish pipelined behind an answered request is refused with the
/// documented 503 before reaching the store: nothing of it is delivered.
#[test]
fn publish_during_shutdown_is_503_and_publishes_nothing() {
    let s = Server::builder().env("SHUTDOWN_TIMEOUT", "5").start();
    let ch = new_id();
    let mut ws = s.ws(&cid(&ch));
    s.wait_online(&ch);
    // A held long poll keeps the drain from ending at once.
    let other = new_id();
    let _lp = s.lp_begin(&cid(&other));
    s.wait_online(&other);
    // An HTTP/1.1 keep-alive connection that is idle at the signal is closed by the drain;
    // one in the middle of a request is not. Send a head now, the body after the signal.
    let mut c = s.pub_conn();
    c.set_timeout(Duration::from_secs(5));
    let body = r#"{"n":1}"#;
    let raw = keepalive_publish(&ch, body);
    let split = raw.len() - body.len();
    c.send(&raw[..split]);
    thread::sleep(Duration::from_millis(50)); // the head must be read before the signal
    s.signal("TERM");
    assert!(
        wait_until(Duration::from_secs(5), || s
            .stderr_text()
            .contains("shutting down")),
        "no shutdown log"
    );
    c.send(&raw[split..]);
    let r = c.read_response();
    r.assert_error(
        503,
        "503: Server shutting down; nothing was published. Retry.",
    );
    let (got, code) = read_until_close(&mut ws, Duration::from_secs(10));
    assert_eq!(code, Some(1001));
    assert!(got.is_empty(), "a refused publish was delivered: {got:?}");
    assert!(wait_until(WAIT, || s
        .stderr_text()
        .contains("publish refused: shutting down")));
}

// ---- socket activation ---------------------------------------------------------------------

/// The server under `systemd-socket-activate` (systemd's tool for this, no PID 1 needed),
/// restarted by a shell loop that keeps the passed sockets open between two runs, as the
/// service manager does.
struct Activated {
    launcher: Child,
    dir: TestDir,
    pubs: std::path::PathBuf,
    _redis: Option<Redis>,
}

impl Activated {
    fn start() -> Option<Activated> {
        if Command::new("systemd-socket-activate")
            .arg("--help")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_err()
        {
            println!("SKIP: systemd-socket-activate is not installed");
            return None;
        }
        let dir = TestDir::new();
        let (sub, pubs) = (dir.join("sub.sock"), dir.join("pub.sock"));
        let redis = (std::env::var("PUSH_TEST_STORE").as_deref() == Ok("redis")).then(Redis::start);
        let mut env = vec![
            format!("RUN_DIR={}", dir.path.display()),
            format!("STATE_DIR={}", dir.join("state").display()),
            format!("SUB_SOCK={}", sub.display()),
            format!("PUB_SOCK={}", pubs.display()),
            format!("SECURITY_KEY={KEY}"),
            "LOG_LEVEL=info".to_owned(),
            "SUB_LISTEN=".to_owned(),
            "PUB_LISTEN=".to_owned(),
        ];
        if let Some(r) = &redis {
            env.push(format!("REDIS_SOCK={}", r.sock.display()));
        }
        // Each run gets LISTEN_PID set to its own pid (the shell's pid before `exec`).
        let stop = dir.join("stop");
        let script = format!(
            "while [ ! -e '{}' ]; do sh -c 'export LISTEN_PID=$$; exec \"$0\"' '{BIN}'; done",
            stop.display()
        );
        let mut cmd = Command::new("systemd-socket-activate");
        cmd.arg("-l")
            .arg(&sub)
            .arg("-l")
            .arg(&pubs)
            .arg("--fdname=sub:pub");
        for e in &env {
            cmd.arg("-E").arg(e);
        }
        let launcher = cmd
            .arg("--")
            .arg("/bin/sh")
            .arg("-c")
            .arg(script)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(
                std::fs::File::create(dir.join("server.log")).expect("log file"),
            ))
            .spawn()
            .expect("spawn systemd-socket-activate");
        let a = Activated {
            launcher,
            dir,
            pubs,
            _redis: redis,
        };
        // systemd-socket-activate starts the command on the first connection.
        assert!(
            wait_until(Duration::from_secs(10), || a.server_pid().is_some()),
            "the activated server did not answer; log:\n{}",
            a.log()
        );
        Some(a)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }

    /// The serving process's pid, from `/server-stat/`.
    fn server_pid(&self) -> Option<u64> {
        let mut c = UnixStream::connect(&self.pubs).ok()?;
        c.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        c.write_all(b"GET /server-stat/ HTTP/1.0\r\n\r\n").ok()?;
        let mut out = String::new();
        std::io::Read::read_to_string(&mut c, &mut out).ok()?;
        let body = out.split("\r\n\r\n").nth(1)?;
        let v: serde_json::Value = serde_json::from_str(body).ok()?;
        v[0]["pid"].as_u64()
    }

    fn signal(pid: u64, sig: &str) {
        let st = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(pid.to_string())
            .status()
            .expect("kill");
        assert!(st.success());
    }
}

impl Drop for Activated {
    fn drop(&mut self) {
        let _ = std::fs::write(self.dir.join("stop"), b"");
        if let Some(pid) = self.server_pid() {
            Activated::signal(pid, "TERM");
        }
        let _ = self.launcher.kill();
        let _ = self.launcher.wait();
        if thread::panicking() {
            eprintln!("---- activated server log ----\n{}", self.log());
        }
    }
}

/// One publish as PHP sends it: a new connection, `Connection: close`, 1 s to answer.
#[derive(Debug)]
#[allow(dead_code)] // the texts are read through Debug, in failure messages
enum Outcome {
    Answered(u16, Duration),
    ConnectFailed(String),
    NoAnswer(String),
}

fn php_publish(sock: &Path, channel: &str, n: usize) -> Outcome {
    let t = Instant::now();
    let mut c = match UnixStream::connect(sock) {
        Ok(c) => c,
        Err(e) => return Outcome::ConnectFailed(e.to_string()),
    };
    let body = format!("{{\"n\":{n}}}");
    let raw = publish_request(channel, body.as_bytes(), None);
    let _ = c.set_read_timeout(Some(Duration::from_secs(3)));
    if let Err(e) = c.write_all(&raw) {
        return Outcome::NoAnswer(format!("write: {e}"));
    }
    let mut out = Vec::new();
    match std::io::Read::read_to_end(&mut c, &mut out) {
        Ok(_) => {}
        Err(e) => return Outcome::NoAnswer(format!("read: {e}")),
    }
    let head = String::from_utf8_lossy(&out);
    match head.split(' ').nth(1).and_then(|s| s.parse::<u16>().ok()) {
        Some(code) => Outcome::Answered(code, t.elapsed()),
        None => Outcome::NoAnswer(format!("unparsable answer {head:?}")),
    }
}

/// Restarts (SIGTERM, then kill -9) while a publisher sends as PHP does, 200 a second: no
/// connect is refused, every publish is answered, and the first publish sent after the stop
/// is answered within 1 s of it (PHP's read timeout).
#[test]
fn socket_activated_restart_refuses_no_connect() {
    let Some(a) = Activated::start() else {
        return;
    };
    let ch = new_id();
    let running = Arc::new(AtomicBool::new(true));
    let outcomes = Arc::new(Mutex::new(Vec::<(Instant, Outcome)>::new()));
    let publisher = {
        let (sock, running, outcomes) = (a.pubs.clone(), running.clone(), outcomes.clone());
        thread::spawn(move || {
            let mut n = 0;
            while running.load(Ordering::SeqCst) {
                let sent = Instant::now();
                let o = php_publish(&sock, &ch, n);
                outcomes.lock().unwrap().push((sent, o));
                n += 1;
                thread::sleep(Duration::from_millis(5));
            }
        })
    };
    let mut stops = Vec::new();
    for sig in ["TERM", "KILL", "TERM"] {
        // Some traffic before each stop.
        let before = outcomes.lock().unwrap().len();
        assert!(wait_until(Duration::from_secs(10), || outcomes
            .lock()
            .unwrap()
            .len()
            > before + 50));
        let old = a.server_pid().expect("server pid");
        let at = Instant::now();
        Activated::signal(old, sig);
        assert!(
            wait_until(Duration::from_secs(10), || a
                .server_pid()
                .is_some_and(|p| p != old)),
            "no new server after kill -{sig}; log:\n{}",
            a.log()
        );
        stops.push((sig, at));
    }
    running.store(false, Ordering::SeqCst);
    publisher.join().expect("publisher");
    let outcomes = outcomes.lock().unwrap();
    // A connect accepted just before the signal whose request arrives just after it gets
    // the drain's 503 (PHP retries it). A publish in flight in a process killed with -9 may
    // go unanswered: that process took the connection with it (the kill takes effect a
    // moment after it is sent, so a connect made just after may go too). Anything else fails.
    let killed_at = stops.iter().find(|(sig, _)| *sig == "KILL").map(|s| s.1);
    let at_kill = |sent: Instant| {
        killed_at.is_some_and(|at| {
            sent + Duration::from_secs(1) > at && sent < at + Duration::from_millis(200)
        })
    };
    let failed: Vec<&(Instant, Outcome)> = outcomes
        .iter()
        .filter(|(sent, o)| {
            let fine = matches!(o, Outcome::Answered(200 | 503, _))
                || (at_kill(*sent) && matches!(o, Outcome::NoAnswer(_)));
            !fine
        })
        .collect();
    let lost_in_kill = outcomes
        .iter()
        .filter(|(_, o)| matches!(o, Outcome::NoAnswer(_)))
        .count();
    assert!(
        lost_in_kill <= 2,
        "{lost_in_kill} publishes lost with the killed process"
    );
    assert!(
        failed.is_empty(),
        "{} of {} publishes refused or unanswered: {:?}",
        failed.len(),
        outcomes.len(),
        &failed[..failed.len().min(5)]
    );
    let drain_503 = outcomes
        .iter()
        .filter(|(_, o)| matches!(o, Outcome::Answered(503, _)))
        .count();
    assert!(
        drain_503 <= 2,
        "{drain_503} publishes answered 503 in two drains"
    );
    for (sig, at) in stops {
        // (Past one the killed process may have taken with it, checked above.)
        let first = outcomes
            .iter()
            .find(|(sent, o)| *sent >= at && matches!(o, Outcome::Answered(..)))
            .expect("a publish answered after the stop");
        let Outcome::Answered(_, took) = first.1 else {
            unreachable!("found as answered")
        };
        let answered_after_stop = (first.0 + took).duration_since(at);
        assert!(
            answered_after_stop < Duration::from_secs(1),
            "kill -{sig}: the first publish after the stop was answered {answered_after_stop:?} \
             after it"
        );
        println!(
            "kill -{sig}: first publish after the stop answered {answered_after_stop:?} after it"
        );
    }
    println!(
        "{} publishes, none refused; {drain_503} answered 503 by a drain",
        outcomes.len()
    );
}

/// What one subscriber got: the numbers of the bodies and every mid, in arrival order.
#[derive(Default)]
struct Got {
    numbers: BTreeSet<u64>,
    mids: Vec<String>,
}

impl Got {
    fn take(&mut self, frames: &[Frame], last: &mut String) {
        for f in frames {
            self.mids.push(f.mid.clone());
            if f.mid > *last {
                *last = f.mid.clone();
            }
        }
        self.numbers.extend(numbers(frames));
    }
}

/// A subscriber that behaves like the official client: it keeps the last mid it got and
/// reconnects with it whenever the connection ends, by WebSocket or by long poll.
fn subscriber(
    sock: std::path::PathBuf,
    query: String,
    mut last: String,
    ws: bool,
    got: Arc<Mutex<Got>>,
    stop: Arc<AtomicBool>,
) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        while !stop.load(Ordering::SeqCst) {
            let q = format!("{query}&mid={last}");
            if ws {
                let Ok((mut w, _)) = Ws::connect(&sock, &format!("/bitrix/subws/?{q}"), None)
                else {
                    thread::sleep(Duration::from_millis(20));
                    continue;
                };
                while !stop.load(Ordering::SeqCst) {
                    match w.recv(Duration::from_millis(200)) {
                        WsEvent::Text(t) => {
                            let frames = parse_frames(&t).expect("v3 frames");
                            got.lock().unwrap().take(&frames, &mut last);
                        }
                        WsEvent::Close(..) | WsEvent::Gone(_) => break,
                        _ => {}
                    }
                }
            } else {
                let Ok(mut c) = UnixStream::connect(&sock) else {
                    thread::sleep(Duration::from_millis(20));
                    continue;
                };
                let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
                if c.write_all(&lp_request("/bitrix/sub/", &q)).is_err() {
                    continue;
                }
                let mut out = Vec::new();
                let _ = std::io::Read::read_to_end(&mut c, &mut out);
                let text = String::from_utf8_lossy(&out);
                if text.starts_with("HTTP/1.1 200") || text.starts_with("HTTP/1.0 200") {
                    if let Some((_, body)) = text.split_once("\r\n\r\n") {
                        let frames = parse_frames(body).expect("v3 frames");
                        got.lock().unwrap().take(&frames, &mut last);
                    }
                    // Between two polls for a while, as a browser behind nginx is: what is
                    // published meanwhile must be replayed from the store, across a restart
                    // too.
                    thread::sleep(Duration::from_millis(50));
                } else if !text.contains(" 304 ") {
                    // Refused or cut by a restart: poll again after a moment.
                    thread::sleep(Duration::from_millis(20));
                }
            }
        }
    })
}

/// The issue's scenario, scaled to the test machine: WebSocket and long-poll subscribers that
/// resume by mid, a PHP-like publisher at 200 a second that retries every failure, and
/// restarts under socket activation (SIGTERM, kill -9, SIGTERM). Every publish answered 200
/// reaches every subscriber, and no message (mid) is delivered twice to one of them.
#[test]
fn restarts_under_load_lose_no_answered_publish() {
    let Some(a) = Activated::start() else {
        return;
    };
    let ch = new_id();
    let query = cid(&ch);
    // A first message gives every subscriber the mid to start from, as a client that had
    // been connected before has one.
    let Outcome::Answered(200, _) = php_publish(&a.pubs, &ch, 1_000_000) else {
        panic!("first publish failed")
    };
    let start_mid = {
        let mut c = UnixStream::connect(a.dir.join("sub.sock")).expect("sub");
        c.write_all(&lp_request(
            "/bitrix/sub/",
            &format!("{query}&mid={OLD_MID}"),
        ))
        .expect("write");
        let mut out = String::new();
        std::io::Read::read_to_string(&mut c, &mut out).expect("read");
        let body = out.split_once("\r\n\r\n").expect("answer").1.to_owned();
        parse_frames(&body).expect("frames")[0].mid.clone()
    };
    let stop = Arc::new(AtomicBool::new(false));
    let subs: Vec<(bool, Arc<Mutex<Got>>, thread::JoinHandle<()>)> = (0..16)
        .map(|i| {
            let ws = i % 2 == 0;
            let got = Arc::new(Mutex::new(Got::default()));
            let h = subscriber(
                a.dir.join("sub.sock"),
                query.clone(),
                start_mid.clone(),
                ws,
                got.clone(),
                stop.clone(),
            );
            (ws, got, h)
        })
        .collect();
    let answered = Arc::new(Mutex::new(Vec::<u64>::new()));
    let publishing = Arc::new(AtomicBool::new(true));
    let publisher = {
        let (sock, ch, answered, publishing) = (
            a.pubs.clone(),
            ch.clone(),
            answered.clone(),
            publishing.clone(),
        );
        thread::spawn(move || {
            let mut n = 0;
            while publishing.load(Ordering::SeqCst) {
                // PHP retries a failed publish; a 503 or a lost answer is tried again.
                let deadline = Instant::now() + Duration::from_secs(10);
                while Instant::now() < deadline {
                    if let Outcome::Answered(200, _) = php_publish(&sock, &ch, n) {
                        answered.lock().unwrap().push(n as u64);
                        break;
                    }
                    thread::sleep(Duration::from_millis(5));
                }
                n += 1;
                thread::sleep(Duration::from_millis(5));
            }
        })
    };
    for sig in ["TERM", "KILL", "TERM"] {
        let before = answered.lock().unwrap().len();
        assert!(
            wait_until(Duration::from_secs(20), || answered.lock().unwrap().len()
                > before + 100),
            "publishing stalled before kill -{sig}; log:\n{}",
            a.log()
        );
        let old = a.server_pid().expect("server pid");
        Activated::signal(old, sig);
        assert!(
            wait_until(Duration::from_secs(10), || a
                .server_pid()
                .is_some_and(|p| p != old)),
            "no new server after kill -{sig}"
        );
    }
    let before = answered.lock().unwrap().len();
    assert!(wait_until(Duration::from_secs(20), || answered
        .lock()
        .unwrap()
        .len()
        > before + 100));
    publishing.store(false, Ordering::SeqCst);
    publisher.join().expect("publisher");
    let answered: Vec<u64> = answered.lock().unwrap().clone();
    let all_in = wait_until(Duration::from_secs(30), || {
        subs.iter().all(|(_, got, _)| {
            let g = got.lock().unwrap();
            answered.iter().all(|n| g.numbers.contains(n))
        })
    });
    stop.store(true, Ordering::SeqCst);
    for (i, (ws, got, _)) in subs.iter().enumerate() {
        let g = got.lock().unwrap();
        let missing: Vec<&u64> = answered.iter().filter(|n| !g.numbers.contains(n)).collect();
        let kind = if *ws { "WebSocket" } else { "long poll" };
        assert!(
            missing.is_empty(),
            "subscriber {i} ({kind}) lost {} of {} publishes answered 200, first {:?}",
            missing.len(),
            answered.len(),
            &missing[..missing.len().min(5)]
        );
        let mut mids = g.mids.clone();
        mids.sort();
        let n = mids.len();
        mids.dedup();
        assert_eq!(mids.len(), n, "subscriber {i} ({kind}) got a message twice");
    }
    assert!(all_in);
    for (_, _, h) in subs {
        h.join().expect("subscriber");
    }
    println!(
        "{} publishes answered 200 across 3 restarts, each delivered to all 16 subscribers once",
        answered.len()
    );
}
