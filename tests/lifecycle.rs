//! Process lifecycle: SIGTERM, restarts and id persistence (docs/protocol.md#message-ids).

mod common;

use common::*;
use std::time::{Duration, Instant};

fn cid(id: &str) -> String {
    format!("CHANNEL_ID={}", enc(&signed(id)))
}

#[test]
fn sigterm_answers_polls_closes_websockets_and_exits_0() {
    let mut s = Server::start();
    let (a, b) = (new_id(), new_id());
    let mut ws = s.ws(&cid(&a));
    let mut lp = s.lp_begin(&cid(&b));
    s.wait_online(&b);
    let t0 = Instant::now();
    s.signal("TERM");
    let r = lp.read_response();
    let t_lp = t0.elapsed();
    assert_eq!(r.status, 304, "a held long poll is answered 304 on SIGTERM");
    assert!(is_mid(r.header("Last-Message-Id").unwrap_or("")));
    let (code, _) = ws.expect_close(WAIT);
    let t_ws = t0.elapsed();
    assert_eq!(
        code, 1001,
        "WebSockets close with 1001 (going away) on SIGTERM"
    );
    // The clients keep their sockets open (as nginx and a browser waiting for the server's
    // FIN do): the server must close them itself, then exit.
    let lp_closed = lp.closed_within(Duration::from_secs(1));
    let ws_closed = {
        use std::io::Read;
        let stream = ws.ws.get_ref();
        stream
            .set_read_timeout(Some(Duration::from_secs(1)))
            .expect("timeout");
        let mut raw = [0u8; 64];
        match (&*stream).read(&mut raw) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => !matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
        }
    };
    // Whether the server fully closed (a write then fails) or only half-closed the LP socket.
    let lp_fully_closed = lp.try_send(b"x").is_err() || lp.try_send(b"x").is_err();
    let Some(st) = s.wait_exit(Duration::from_secs(3)) else {
        panic!(
            "did not exit within 5 s of SIGTERM (LP answered after {t_lp:?}, WS close after {t_ws:?}); \
             within 1 s the server had closed the answered LP socket: {lp_closed} \
             (fully, not just shutdown(Write): {lp_fully_closed}), \
             the WS socket after the close handshake: {ws_closed}. \
             A server waiting for the peers' EOF must not delay the exit."
        );
    };
    assert_eq!(st.code(), Some(0), "exit status after SIGTERM: {st}");
    let t_exit = t0.elapsed();
    assert!(
        t_exit < Duration::from_secs(5),
        "SIGTERM to exit took {t_exit:?} (LP answered after {t_lp:?}, WS close after {t_ws:?})"
    );
}

#[test]
fn sigint_exits_0() {
    let mut s = Server::start();
    s.signal("INT");
    let st = s
        .wait_exit(Duration::from_secs(5))
        .unwrap_or_else(|| panic!("did not exit within 5 s of SIGINT"));
    assert_eq!(st.code(), Some(0), "exit status after SIGINT: {st}");
}

/// Publishes to a fresh channel through a WS and returns the mid the subscriber saw.
fn observe_mid(s: &Server, body: &str) -> String {
    let ch = new_id();
    let mut ws = s.ws(&cid(&ch));
    s.publish_ok(&ch, body, None);
    ws.frames(1, WAIT).remove(0).mid
}

#[test]
fn f1_mids_increase_across_restart_with_same_state_file() {
    let state = TestDir::new();
    let file = state.join("state");
    let mut s1 = Server::builder()
        .env("STATE_FILE", file.display().to_string())
        .start();
    let m1 = observe_mid(&s1, "\"before\"");
    let m1b = observe_mid(&s1, "\"before2\"");
    assert!(m1b > m1);
    assert_eq!(s1.stop().code(), Some(0));
    drop(s1);
    let s2 = Server::builder()
        .env("STATE_FILE", file.display().to_string())
        .start();
    let m2 = observe_mid(&s2, "\"after\"");
    assert!(is_mid(&m2));
    assert!(m2 > m1b, "mid after restart {m2} must exceed {m1b}");
}

#[test]
fn f1_mids_increase_across_kill_9() {
    let state = TestDir::new();
    let file = state.join("state");
    let mut s1 = Server::builder()
        .env("STATE_FILE", file.display().to_string())
        .start();
    let m1 = observe_mid(&s1, "\"before\"");
    s1.signal("KILL");
    s1.wait_exit(WAIT).expect("killed");
    drop(s1);
    let s2 = Server::builder()
        .env("STATE_FILE", file.display().to_string())
        .start();
    let m2 = observe_mid(&s2, "\"after\"");
    assert!(
        m2 > m1,
        "mid after kill -9 and restart {m2} must exceed {m1}"
    );
}

#[test]
fn f2_deleted_state_file_still_gives_larger_mids() {
    let state = TestDir::new();
    let file = state.join("state");
    let mut s1 = Server::builder()
        .env("STATE_FILE", file.display().to_string())
        .start();
    let m1 = observe_mid(&s1, "\"before\"");
    assert_eq!(s1.stop().code(), Some(0));
    drop(s1);
    let _ = std::fs::remove_file(&file);
    // A new epoch is the current unix time: let the clock pass the old epoch first (the server
    // cannot know an epoch it has lost within the same second).
    let old_epoch: u64 = m1[..10].parse().expect("epoch");
    assert!(
        wait_until(Duration::from_secs(3), || now_secs() > old_epoch),
        "clock did not pass the old epoch"
    );
    let s2 = Server::builder()
        .env("STATE_FILE", file.display().to_string())
        .start();
    let m2 = observe_mid(&s2, "\"after\"");
    assert!(
        m2 > m1,
        "after losing the state file, mid {m2} must still exceed {m1}"
    );
}

#[test]
fn w9_resume_across_restart() {
    let state = TestDir::new();
    let file = state.join("state");
    let mut s1 = Server::builder()
        .env("STATE_FILE", file.display().to_string())
        .start();
    let ch = new_id();
    let mut ws = s1.ws(&cid(&ch));
    s1.publish_ok(&ch, "\"one\"", Some(86400));
    let m = ws.frames(1, WAIT).remove(0).mid;
    s1.stop();
    drop(s1);
    // Embedded store: the backlog is gone, but ids continue and nothing breaks on an old mid.
    let s2 = Server::builder()
        .env("STATE_FILE", file.display().to_string())
        .start();
    let mut ws = s2.ws(&format!("{}&mid={m}", cid(&ch)));
    s2.publish_ok(&ch, "\"two\"", Some(86400));
    let f = ws.frames(1, WAIT).remove(0);
    assert_eq!(f.text, "\"two\"");
    assert!(f.mid > m);
}

#[test]
fn stale_socket_files_are_replaced() {
    let dir = TestDir::new();
    let sub = dir.join("s.sock");
    let pubs = dir.join("p.sock");
    // Leave dead socket files behind: bind and drop listeners.
    drop(std::os::unix::net::UnixListener::bind(&sub).expect("bind"));
    drop(std::os::unix::net::UnixListener::bind(&pubs).expect("bind"));
    assert!(sub.exists() && pubs.exists());
    let s = Server::builder()
        .env("SUB_SOCK", sub.display().to_string())
        .env("PUB_SOCK", pubs.display().to_string())
        .start();
    let ch = new_id();
    s.publish_ok(&ch, "\"ok\"", None);
}

#[test]
fn refuses_to_start_when_a_live_server_holds_the_sockets() {
    let s1 = Server::start();
    let out = std::process::Command::new(BIN)
        .env_clear()
        .env("SECURITY_KEY", KEY)
        .env("RUN_DIR", s1.dir.path.display().to_string())
        .env("SUB_SOCK", s1.sub.display().to_string())
        .env("PUB_SOCK", s1.pubs.display().to_string())
        .env("SUB_LISTEN", "")
        .env("PUB_LISTEN", "")
        .run_with_timeout(Duration::from_secs(10));
    assert!(
        matches!(out.code, Some(c) if c != 0),
        "a second server on live sockets must refuse to start (exit non-zero), got {:?}; stderr: {}",
        out.code,
        out.stderr
    );
    // The first server still works.
    let ch = new_id();
    s1.publish_ok(&ch, "\"still-mine\"", None);
}

/// Inodes of listening TCP sockets (IPv4 and IPv6) with their local address, from /proc.
fn tcp_listeners() -> Vec<(String, String)> {
    let mut out = Vec::new();
    for file in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(file) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            if cols.len() > 9 && cols[3] == "0A" {
                out.push((cols[9].to_string(), cols[1].to_string()));
            }
        }
    }
    out
}

/// Local addresses (hex, as in /proc/net/tcp) of the TCP sockets `pid` listens on.
fn listening_addrs(pid: u32) -> Vec<String> {
    let listeners = tcp_listeners();
    let mut addrs = Vec::new();
    for fd in std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("read fds")
        .flatten()
    {
        let Ok(link) = std::fs::read_link(fd.path()) else {
            continue;
        };
        let link = link.display().to_string();
        if let Some(inode) = link
            .strip_prefix("socket:[")
            .and_then(|l| l.strip_suffix(']'))
        {
            for (ino, addr) in &listeners {
                if ino == inode {
                    addrs.push(addr.clone());
                }
            }
        }
    }
    addrs
}

#[test]
fn g3_no_tcp_listener_unless_configured_and_only_loopback() {
    let s = Server::start();
    assert_eq!(
        listening_addrs(s.pid()),
        Vec::<String>::new(),
        "with SUB_LISTEN/PUB_LISTEN empty no TCP socket may be bound"
    );
    drop(s);
    let port = free_port();
    let s = Server::builder()
        .env("PUB_LISTEN", format!("127.0.0.1:{port}"))
        .start();
    let want = vec![format!("0100007F:{port:04X}")];
    let mut addrs = Vec::new();
    let ok = wait_until(WAIT, || {
        addrs = listening_addrs(s.pid());
        addrs == want
    });
    assert!(
        ok,
        "exactly the configured loopback address {want:?} (hex) expected, got {addrs:?}"
    );
}

#[test]
fn socket_files_have_mode_0660() {
    use std::os::unix::fs::PermissionsExt;
    let s = Server::start();
    for p in [&s.sub, &s.pubs] {
        let mode = std::fs::metadata(p)
            .expect("stat socket")
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o660, "{} mode {mode:o}", p.display());
    }
}
