//! The shipped nginx snippets (`nginx/`), rendered into a temp config for the system nginx, in
//! front of our server on Unix sockets (and, for the BitrixVM variant, on TCP listeners).
//! Everything is checked through nginx over TCP on loopback.
//!
//! Needs the `nginx` binary (Debian package `nginx`); `scripts/test.sh` installs it.

mod deploy_common;

use deploy_common::*;
use std::time::Duration;

const SHIPPED_SUB_SOCK: &str = "unix:/tmp/push-server/sub.sock";
const SHIPPED_PUB_SOCK: &str = "unix:/tmp/push-server/pub.sock";
const SHIPPED_INTERNAL_LISTEN: &str = "listen 127.0.0.1:8895";

/// Which shipped layout nginx uses to reach the server.
#[derive(Clone, Copy, PartialEq)]
enum Layout {
    /// `push-server-http.conf` upstreams on the Unix sockets.
    Native,
    /// `push-server-bitrixvm-upstreams.conf`: `nodejs_sub` / `nodejs_pub` on TCP, the server
    /// with `SUB_LISTEN` / `PUB_LISTEN`.
    BitrixVm,
}

/// nginx, our server and their temp dir. Field order = drop order: nginx and the server stop
/// (and print their logs on failure) before the directory goes.
struct Stack {
    nginx: Nginx,
    server: PushServer,
    /// The public server: `include push-server-sub-locations.conf`.
    public: u16,
    /// The internal server of `push-server-pub-server.conf` (8895 in the shipped file).
    internal: u16,
    _dir: TempDir,
}

fn read_shipped(name: &str) -> String {
    let path = repo_root().join("nginx").join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

impl Stack {
    fn start(layout: Layout, server_env: &[(&str, &str)]) -> Stack {
        let dir = TempDir::new("nginx");
        let public = free_port();
        let internal = free_port();
        let (sub_tcp, pub_tcp) = (free_port(), free_port());
        let mut env: Vec<(&str, &str)> = server_env.to_vec();
        let (sub_listen, pub_listen) = (
            format!("127.0.0.1:{sub_tcp}"),
            format!("127.0.0.1:{pub_tcp}"),
        );
        if layout == Layout::BitrixVm {
            env.push(("SUB_LISTEN", &sub_listen));
            env.push(("PUB_LISTEN", &pub_listen));
        }
        let server = PushServer::start(&dir, &env);

        let ndir = dir.join("nginx");
        std::fs::create_dir_all(&ndir).unwrap();
        let http = read_shipped("push-server-http.conf");
        let http = replace_required(
            &http,
            SHIPPED_SUB_SOCK,
            &format!("unix:{}", server.sub_sock.display()),
        );
        let http = replace_required(
            &http,
            SHIPPED_PUB_SOCK,
            &format!("unix:{}", server.pub_sock.display()),
        );
        let mut locations = read_shipped("push-server-sub-locations.conf");
        let pub_server = read_shipped("push-server-pub-server.conf");
        let mut pub_server = replace_required(
            &pub_server,
            SHIPPED_INTERNAL_LISTEN,
            &format!("listen 127.0.0.1:{internal}"),
        );
        let mut extra_includes = String::new();
        if layout == Layout::BitrixVm {
            // What the admin of a BitrixVM keeps: the nodejs_* upstream names, now on our TCP
            // listeners, and locations that proxy to them.
            let vm = read_shipped("push-server-bitrixvm-upstreams.conf");
            let vm = replace_required(
                &vm,
                "server 127.0.0.1:8010;",
                &format!("server {sub_listen};"),
            );
            let vm = replace_required(
                &vm,
                "server 127.0.0.1:9010;",
                &format!("server {pub_listen};"),
            );
            std::fs::write(ndir.join("bitrixvm-upstreams.conf"), vm).unwrap();
            extra_includes = format!("    include {}/bitrixvm-upstreams.conf;\n", ndir.display());
            locations = replace_required(&locations, "http://push_sub", "http://nodejs_sub");
            pub_server = replace_required(&pub_server, "http://push_pub", "http://nodejs_pub");
        }
        std::fs::write(ndir.join("push-server-http.conf"), http).unwrap();
        std::fs::write(ndir.join("push-server-sub-locations.conf"), locations).unwrap();
        std::fs::write(ndir.join("push-server-pub-server.conf"), pub_server).unwrap();

        let n = ndir.display();
        let conf = format!(
            "worker_processes 1;
master_process off;
daemon off;
pid {n}/nginx.pid;
error_log {n}/error.log info;
events {{ worker_connections 256; }}
http {{
    access_log {n}/access.log;
    client_body_temp_path {n}/tmp/client_body;
    proxy_temp_path {n}/tmp/proxy;
    fastcgi_temp_path {n}/tmp/fastcgi;
    uwsgi_temp_path {n}/tmp/uwsgi;
    scgi_temp_path {n}/tmp/scgi;
    include {n}/push-server-http.conf;
{extra_includes}    include {n}/push-server-pub-server.conf;
    server {{
        listen 127.0.0.1:{public};
        server_name _;
        include {n}/push-server-sub-locations.conf;
        location / {{ return 404; }}
    }}
}}
"
        );
        let nginx = Nginx::start(&dir, &conf, &[public, internal]);
        Stack {
            nginx,
            server,
            public,
            internal,
            _dir: dir,
        }
    }

    /// Text publish through the internal server; expects `200` with an empty body.
    fn publish(&self, channel: &str, body: &str) {
        let r = request(
            self.internal,
            "POST",
            &format!("/bitrix/pub/?CHANNEL_ID={channel}"),
            &[],
            body.as_bytes(),
            Duration::from_secs(10),
        );
        assert_eq!(r.status, 200, "publish through nginx: {r:?}");
        assert!(r.body.is_empty(), "publish answer has a body: {r:?}");
    }
}

const MESSAGE: &str = r#"{"module_id":"deploy","command":"hello","params":{"n":1}}"#;

fn assert_v3_message(body: &str) {
    assert!(
        body.contains("#!NGINXNMS!#") && body.contains("#!NGINXNME!#"),
        "not a v3 frame: {body}"
    );
    assert!(
        body.contains(&format!(r#""text":{MESSAGE}"#)),
        "published text missing: {body}"
    );
}

/// Long poll on `/bitrix/sub/` held through nginx gets a message published through the
/// internal server; the client address nginx passes reaches our log.
fn long_poll_gets_message(layout: Layout) {
    let stack = Stack::start(layout, &[]);
    let id = channel_id();
    let needle = "/bitrix/sub/ from 127.0.0.1";
    let before = stack.server.log_count(needle);
    let mut lp = connect(stack.public, Duration::from_secs(20));
    send_request(
        &mut lp,
        "GET",
        &format!("/bitrix/sub/?CHANNEL_ID={}", stack.server.signed(&id)),
        &[],
        b"",
    );
    // Once the request is logged it is registered (one thread handles it to the end), so the
    // publish cannot overtake it.
    stack.server.wait_log_count(needle, before);
    stack.publish(&id, MESSAGE);
    let r = read_response(&mut lp);
    assert_eq!(r.status, 200, "{r:?}");
    assert_v3_message(&r.text());
    assert_eq!(r.header("Access-Control-Allow-Origin"), Some("*"), "{r:?}");
}

#[test]
fn long_poll_through_nginx_gets_published_message_and_client_ip() {
    long_poll_gets_message(Layout::Native);
}

#[test]
fn bitrixvm_upstreams_on_tcp_listeners_work() {
    long_poll_gets_message(Layout::BitrixVm);
}

/// With LONG_POLL_TIMEOUT=1 a poll with nothing to deliver ends with `304`; a plain GET on
/// `/bitrix/subws/` (which nginx forwards with `Upgrade: websocket`, `Connection: close`) is a
/// long poll too, not a refused or half-done upgrade.
#[test]
fn long_poll_304_through_nginx_and_plain_get_on_subws_is_long_poll() {
    let stack = Stack::start(Layout::Native, &[("LONG_POLL_TIMEOUT", "1")]);
    let mut polls = Vec::new();
    for path in ["/bitrix/sub/", "/bitrix/subws/"] {
        let id = channel_id();
        let mut s = connect(stack.public, Duration::from_secs(15));
        send_request(
            &mut s,
            "GET",
            &format!("{path}?CHANNEL_ID={}", stack.server.signed(&id)),
            &[],
            b"",
        );
        polls.push((path, s));
    }
    for (path, mut s) in polls {
        let r = read_response(&mut s);
        assert_eq!(r.status, 304, "{path}: {r:?}");
        assert!(r.header("Last-Message-Id").is_some(), "{path}: {r:?}");
        assert_eq!(
            r.header("Expires"),
            Some("Thu, 01 Jan 1973 11:11:01 GMT"),
            "{path}: {r:?}"
        );
        assert!(r.header("Upgrade").is_none(), "{path} was upgraded: {r:?}");
        assert!(
            stack.server.log_count(&format!("{path} from 127.0.0.1")) >= 1,
            "{path}: client address not in the log"
        );
    }
}

/// WebSocket through nginx (upgrade handling of the `/bitrix/subws/` location): the handshake
/// succeeds, a publish arrives as a v3 text frame, and nginx passed the client address.
#[test]
fn websocket_through_nginx() {
    let stack = Stack::start(Layout::Native, &[]);
    let id = channel_id();
    let needle = "/bitrix/subws/ from 127.0.0.1";
    let before = stack.server.log_count(needle);
    let stream = connect(stack.public, Duration::from_secs(10));
    let url = format!(
        "ws://127.0.0.1:{}/bitrix/subws/?CHANNEL_ID={}",
        stack.public,
        stack.server.signed(&id)
    );
    let (mut ws, resp) = tungstenite::client(url.as_str(), stream)
        .unwrap_or_else(|e| panic!("WebSocket handshake through nginx failed: {e}"));
    assert_eq!(resp.status().as_u16(), 101);
    stack.server.wait_log_count(needle, before);
    stack.publish(&id, MESSAGE);
    loop {
        let msg = ws
            .read()
            .unwrap_or_else(|e| panic!("no WebSocket message through nginx: {e}"));
        match msg {
            tungstenite::Message::Text(t) => {
                assert_v3_message(t.as_str());
                break;
            }
            tungstenite::Message::Ping(_) | tungstenite::Message::Pong(_) => continue,
            other => panic!("unexpected WebSocket message: {other:?}"),
        }
    }
    let _ = ws.close(None);
}

/// The internal server proxies stats and publishes; the public side exposes only the
/// subscriber routes and `/bitrix/rest/` (which reaches our sub socket: v4 client publishing),
/// and enforces the body limit.
#[test]
fn internal_server_and_public_routes() {
    let stack = Stack::start(Layout::Native, &[]);
    let t = Duration::from_secs(10);

    // Internal server.
    let r = request(stack.internal, "GET", "/server-stat/", &[], b"", t);
    assert_eq!(r.status, 200, "{r:?}");
    assert!(
        r.text().trim_start().starts_with('['),
        "not a JSON array: {r:?}"
    );
    // /health and /metrics reach the pub socket (their content is tested in the server's own
    // tests; here only that the locations exist and proxy).
    for path in ["/health", "/metrics"] {
        let r = request(stack.internal, "GET", path, &[], b"", t);
        assert_eq!(r.status, 200, "{path} through the internal server: {r:?}");
        assert!(!r.body.is_empty(), "{path}: empty body");
        let r = request(stack.public, "GET", path, &[], b"", t);
        assert_eq!(r.status, 404, "{path} via the public server: {r:?}");
    }
    let r = request(stack.internal, "GET", "/nginx_status", &[], b"", t);
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.text().contains("Active connections"), "{r:?}");
    let r = request(stack.internal, "GET", "/bitrix/sub/", &[], b"", t);
    assert_eq!(
        r.status, 403,
        "internal server must deny everything else: {r:?}"
    );

    // Public server: trusted routes are not proxied at all.
    let trusted_seen = || {
        stack.server.log_count("/bitrix/pub/ from") + stack.server.log_count("/server-stat/ from")
    };
    let trusted_before = trusted_seen();
    let id = channel_id();
    let r = request(
        stack.public,
        "POST",
        &format!("/bitrix/pub/?CHANNEL_ID={id}"),
        &[],
        MESSAGE.as_bytes(),
        t,
    );
    assert_eq!(r.status, 404, "publish via the public server: {r:?}");
    let r = request(stack.public, "GET", "/server-stat/", &[], b"", t);
    assert_eq!(r.status, 404, "stats via the public server: {r:?}");
    assert_eq!(
        trusted_seen(),
        trusted_before,
        "a trusted route reached the server from the public side"
    );

    // REST and pubweb reach the sub socket: our client-publish answer (text/plain with CORS;
    // without a signed `priv:pub` CHANNEL_ID it is 4012), not an nginx page.
    for path in ["/bitrix/rest/", "/bitrix/pubweb/"] {
        let r = request(stack.public, "POST", path, &[], b"x", t);
        assert_eq!(r.status, 400, "{path}: {r:?}");
        assert_eq!(
            r.header("Access-Control-Allow-Origin"),
            Some("*"),
            "{path}: {r:?}"
        );
        assert!(
            r.header("Content-Type")
                .unwrap_or("")
                .starts_with("text/plain"),
            "{path}: {r:?}"
        );
        assert_eq!(
            r.text(),
            "4012: Public Channel Id is Required.",
            "{path}: {r:?}"
        );
        assert!(
            stack.server.log_count(&format!("{path} from 127.0.0.1")) >= 1,
            "{path}: not in our log with the client address"
        );
    }

    // The v5 backend endpoint (docs/v5.md): on the public site only for the portal's own
    // address (here loopback), and on the internal server; both reach the pub socket.
    let body = r#"{"jsonrpc":"2.0","method":"getUsersLastSeen","params":{"userList":[1]}}"#;
    let signer = push_server::signature::Signer::new(
        push_server::signature::Algo::Sha1,
        stack.server.key.as_bytes(),
    );
    let path = format!(
        "/bitrix/api/?signature={}",
        signer.sign_hex(body.as_bytes())
    );
    for port in [stack.public, stack.internal] {
        let r = request(port, "POST", &path, &[], body.as_bytes(), t);
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.text(), r#"{"jsonrpc":"2.0","result":{}}"#, "{r:?}");
        let r = request(port, "POST", "/bitrix/api/", &[], body.as_bytes(), t);
        assert_eq!(r.text(), "4026: Wrong request signature.", "{r:?}");
    }
    let snippet = read_shipped("push-server-sub-locations.conf");
    assert!(
        snippet.contains("allow 127.0.0.1;\n    # allow") && snippet.contains("deny all;"),
        "the public /bitrix/api/ location must stay restricted"
    );

    // Body limit = MAX_PAYLOAD (1 MiB): nginx refuses on the Content-Length alone.
    let mut s = connect(stack.public, t);
    send_request(
        &mut s,
        "POST",
        "/bitrix/rest/",
        &[("Content-Length", "1048577")],
        b"",
    );
    let r = read_response(&mut s);
    assert_eq!(r.status, 413, "{r:?}");
    let _ = &stack.nginx;
}

/// `push-server check` through nginx as an admin runs it: `--sub-url` the public server,
/// `--pub-url` the internal one. Every step passes; pointed at the wrong server, the check
/// names a missing location (404); with the server stopped, nginx's 502 names the socket.
#[test]
fn check_through_nginx_passes_and_names_404_and_502() {
    let mut stack = Stack::start(Layout::Native, &[]);
    let public = format!("http://127.0.0.1:{}", stack.public);
    let internal = format!("http://127.0.0.1:{}/bitrix/pub/", stack.internal);
    let key = stack.server.key.clone();
    let check = |sub: &str, publ: &str| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_push-server"))
            .env_clear()
            .env("SECURITY_KEY", &key)
            .args([
                "check",
                "--config",
                "/dev/null",
                "--sub-url",
                sub,
                "--pub-url",
                publ,
            ])
            .output()
            .expect("run push-server check");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (code, out) = check(&public, &internal);
    assert_eq!(code, 0, "check through nginx failed:\n{out}");
    assert!(out.contains("check passed: 10 steps"), "{out}");
    assert!(out.contains(&format!("subscribe at {public}")), "{out}");

    // Publishing sent to the public server: no /bitrix/pub/ location there.
    let (code, out) = check(&public, &public);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("publish v3 (text): publish: answered 404"),
        "{out}"
    );
    assert!(
        out.contains("likely cause: a missing nginx location"),
        "{out}"
    );

    // Subscribing at the internal server: everything there but publishing is denied.
    let (code, out) = check(&internal, &internal);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("answered 403"), "{out}");
    assert!(
        out.contains("likely cause: nginx refuses this path"),
        "{out}"
    );

    // The server is gone: nginx answers 502 for the socket.
    stack.server.stop();
    let (code, out) = check(&public, &internal);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("answered 502"), "{out}");
    assert!(
        out.contains("likely cause: nginx cannot reach the server's socket"),
        "{out}"
    );
}
