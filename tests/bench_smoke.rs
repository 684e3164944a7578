//! Smoke runs of `push-bench` (a tiny case of every scenario) so the load tool keeps working:
//! against push-server always, and against the nchan peer of `bench/nchan.conf.in` when
//! nginx and its nchan module are installed (`bench/compare.sh` installs them; skipped otherwise).
//! Real measurements are made by hand with `bench/compare.sh`, not here.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// The push-bench binary of this build: a workspace member (tools/push-bench) beside the server
/// in the same target directory. `cargo test --workspace` builds it; a plain `cargo test` of
/// the server package does not, so it is built here then.
fn bench_bin() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let server = Path::new(BIN);
            let path = server.with_file_name("push-bench");
            if !path.exists() {
                let mut cmd = Command::new(env!("CARGO"));
                cmd.args(["build", "--quiet", "-p", "push-bench"])
                    .current_dir(env!("CARGO_MANIFEST_DIR"));
                if server.parent().and_then(Path::file_name) == Some("release".as_ref()) {
                    cmd.arg("--release");
                }
                let st = cmd.status().expect("run cargo build -p push-bench");
                assert!(st.success(), "cargo build -p push-bench failed");
            }
            path
        })
        .clone()
}
const NCHAN_MODULE: &str = "/usr/lib/nginx/modules/ngx_nchan_module.so";

/// Runs push-bench and returns its final JSON line; panics with its stderr when it fails.
fn bench(args: &[&str]) -> serde_json::Value {
    let out: Output = Command::new(bench_bin())
        .args(args)
        .args(["--timeout", "30"])
        .output()
        .expect("run push-bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stdout.lines().last().unwrap_or("");
    let v: serde_json::Value = serde_json::from_str(last)
        .unwrap_or_else(|e| panic!("no JSON summary ({e}): {stdout}\nstderr:\n{stderr}"));
    assert!(
        out.status.success() && v["ok"] == true,
        "push-bench {args:?} failed ({}): {last}\nstderr:\n{stderr}",
        out.status
    );
    v
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// Every scenario once, tiny, against one server.
fn all_scenarios(
    target: &str,
    sub: &str,
    publ: &str,
    pid: &str,
    key: &str,
    lp_idle: bool,
) -> serde_json::Value {
    let common = [
        "--target", target, "--sub", sub, "--pub", publ, "--pid", pid, "--key", key,
    ];
    let run = |scenario: &str, extra: &[&str]| {
        let mut a: Vec<&str> = vec![scenario];
        a.extend_from_slice(&common);
        a.extend_from_slice(extra);
        bench(&a)
    };
    let v = run("idle", &["--conns", "50"]);
    assert_eq!(v["target"], target);
    assert!(v["bytes_per_conn"].is_number(), "{v}");
    if lp_idle {
        let v = run("idle", &["--conns", "20", "--transport", "lp"]);
        assert_eq!(v["transport"], "lp");
    }
    let v = run("fanout", &["--conns", "30", "--messages", "5"]);
    assert_eq!(v["delivered"], 150, "{v}");
    assert!(v["cpu_us_per_delivery"].is_number(), "{v}");
    let v = run(
        "latency",
        &["--conns", "20", "--rate", "200", "--duration", "0.5"],
    );
    assert!(v["p99_us"].is_number(), "{v}");
    let v = run(
        "churn",
        &["--conns", "20", "--rate", "40", "--duration", "0.5"],
    );
    assert!(v["reconnects"].as_u64().unwrap_or(0) > 0, "{v}");
    assert_eq!(v["pub_conns"], 1, "{v}");
    pub_conns(&run);
    v
}

/// The publishing scenarios over four publisher connections.
fn pub_conns(run: &dyn Fn(&str, &[&str]) -> serde_json::Value) {
    let v = run(
        "fanout",
        &["--conns", "20", "--messages", "40", "--pub-conns", "4"],
    );
    assert_eq!(v["pub_conns"], 4, "{v}");
    assert_eq!(v["delivered"], 800, "{v}");
    assert_eq!(v["publish_order_checked"], false, "{v}");
    assert_eq!(v["order_mismatches"], 0, "{v}");
    let v = run(
        "latency",
        &[
            "--conns",
            "20",
            "--rate",
            "400",
            "--duration",
            "0.5",
            "--pub-conns",
            "4",
        ],
    );
    assert_eq!(v["pub_conns"], 4, "{v}");
    assert!(v["p99_us"].is_number(), "{v}");
    assert!(v["published_ok"].as_u64().unwrap_or(0) > 100, "{v}");
    let v = run(
        "churn",
        &[
            "--conns",
            "20",
            "--rate",
            "40",
            "--duration",
            "0.5",
            "--pub-conns",
            "4",
        ],
    );
    assert_eq!(v["pub_conns"], 4, "{v}");
}

#[test]
fn every_scenario_against_push_server() {
    let srv = Server::start();
    let pid = srv.pid().to_string();
    let v = all_scenarios("push", &s(&srv.sub), &s(&srv.pubs), &pid, &srv.key, true);
    assert_eq!(v["server_process"], format!("push-server {pid}"));
}

/// An nginx + nchan peer rendered from `bench/nchan.conf.in` in a temp dir; stopped on drop.
struct Nchan {
    dir: TestDir,
    conf: PathBuf,
}

impl Nchan {
    fn start() -> Option<Nchan> {
        let template = Path::new(env!("CARGO_MANIFEST_DIR")).join("../bench/nchan.conf.in");
        if !Path::new(NCHAN_MODULE).exists() || !template.exists() {
            eprintln!("skipped: no nchan module or no {}", template.display());
            return None;
        }
        let text = std::fs::read_to_string(&template).expect("read nchan.conf.in");
        let dir = TestDir::new();
        let conf = dir.join("nginx.conf");
        // The Redis location is never used here; any port renders a valid config.
        let rendered = text
            .replace("@PREFIX@", &s(&dir.path))
            .replace("@REDIS_PORT@", "1");
        std::fs::write(&conf, rendered).expect("write nginx.conf");
        let out = Command::new("nginx")
            .args(["-p", &s(&dir.path), "-c", &s(&conf)])
            .output()
            .expect("run nginx");
        assert!(
            out.status.success(),
            "nginx failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let n = Nchan { dir, conf };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !(n.dir.join("nginx.pid").exists() && n.dir.join("pub.sock").exists()) {
            assert!(Instant::now() < deadline, "nginx did not come up");
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(n)
    }
}

impl Drop for Nchan {
    fn drop(&mut self) {
        let _ = Command::new("nginx")
            .args(["-p", &s(&self.dir.path), "-c", &s(&self.conf), "-s", "stop"])
            .output();
        // Wait for the master to go before the dir is removed.
        let pidfile = self.dir.join("nginx.pid");
        let _ = wait_until(Duration::from_secs(5), || !pidfile.exists());
    }
}

#[test]
fn every_scenario_against_nchan() {
    let Some(n) = Nchan::start() else {
        return;
    };
    let master = std::fs::read_to_string(n.dir.join("nginx.pid")).expect("nginx.pid");
    let v = all_scenarios(
        "nchan",
        &s(&n.dir.join("sub.sock")),
        &s(&n.dir.join("pub.sock")),
        master.trim(),
        "unused",
        true,
    );
    // The master pid was resolved to the worker, whose RSS and CPU are measured.
    let pid = v["pid"].as_u64().expect("pid").to_string();
    assert_ne!(pid, master.trim());
    assert!(
        v["server_process"]
            .as_str()
            .unwrap_or("")
            .starts_with("nginx worker process"),
        "{v}"
    );
}
