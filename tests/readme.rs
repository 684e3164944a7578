//! The README's run command, as a new user runs it: a fresh `git clone` of this repository,
//! the command of the README's first `sh` block (`cargo run --release`), then the two `curl`
//! commands the zero-config banner prints, which must deliver the published message.
//!
//! Only the run command: the README's test command runs the whole suite and would recurse.
//! The release build of the clone goes to `target/readme-clone/` of this checkout, so later
//! runs reuse it. `PUSH_README_REPO` clones another repository instead (to try a branch).

mod deploy_common;

use deploy_common::{TempDir, free_port, repo_root, wait_for};
use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The first command of the README's first ```sh block.
fn readme_run_command() -> String {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).expect("README.md");
    let block = readme
        .split("```sh\n")
        .nth(1)
        .expect("a ```sh block in README.md");
    block
        .lines()
        .next()
        .expect("a command in the block")
        .trim()
        .to_string()
}

/// Collects a child's output in the background.
fn collect(mut r: impl Read + Send + 'static) -> Arc<Mutex<String>> {
    let buf = Arc::new(Mutex::new(String::new()));
    let b = buf.clone();
    std::thread::spawn(move || {
        let mut chunk = [0u8; 4096];
        while let Ok(n) = r.read(&mut chunk) {
            if n == 0 {
                break;
            }
            b.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&chunk[..n]));
        }
    });
    buf
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let _ = wait_for(
            "the README's server to stop",
            Duration::from_secs(10),
            || self.0.try_wait().ok().flatten(),
        );
    }
}

#[test]
fn readme_run_command_from_a_fresh_clone_delivers_the_printed_curl_commands() {
    let command = readme_run_command();
    assert_eq!(
        command, "cargo run --release",
        "the README's run command changed"
    );
    let dir = TempDir::new("readme");
    let clone = dir.join("clone");
    let source =
        std::env::var("PUSH_README_REPO").unwrap_or_else(|_| repo_root().display().to_string());
    let st = Command::new("git")
        .args(["clone", "--quiet", &source])
        .arg(&clone)
        .status()
        .expect("git clone");
    assert!(st.success(), "git clone {source} failed");

    // Zero-config as on a fresh machine, except for private sockets and ports, so that the
    // test does not meet another server on this machine.
    let (sp, pp) = (free_port(), free_port());
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(format!("exec {command}"))
        .current_dir(&clone)
        .env_remove("SECURITY_KEY")
        .env_remove("REDIS_SOCK")
        .env_remove("REDIS_URL")
        .env_remove("REDIS_SENTINELS")
        .env("CARGO_TARGET_DIR", repo_root().join("target/readme-clone"))
        .env("RUN_DIR", dir.join("run"))
        .env("SUB_LISTEN", format!("127.0.0.1:{sp}"))
        .env("PUB_LISTEN", format!("127.0.0.1:{pp}"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the README's command");
    let out = collect(child.stdout.take().unwrap());
    let err = collect(child.stderr.take().unwrap());
    let mut server = Killed(child);

    // A release build of a fresh clone on two shared cores: minutes.
    let curls: Vec<String> = wait_for(
        "the banner's two curl commands",
        Duration::from_secs(1200),
        || {
            if let Ok(Some(status)) = server.0.try_wait() {
                panic!("`{command}` exited with {status}:\n{}", err.lock().unwrap());
            }
            let lines: Vec<String> = out
                .lock()
                .unwrap()
                .lines()
                .filter(|l| l.starts_with("curl "))
                .map(str::to_string)
                .collect();
            (lines.len() >= 2).then_some(lines)
        },
    );
    assert!(
        curls[0].contains(&format!("127.0.0.1:{sp}/bitrix/sub/")),
        "{curls:?}"
    );
    assert!(
        curls[1].contains(&format!("127.0.0.1:{pp}/bitrix/pub/")),
        "{curls:?}"
    );

    let mut sub = Command::new("sh")
        .arg("-c")
        .arg(&curls[0])
        .stdout(Stdio::piped())
        .spawn()
        .expect("run the subscribe curl");
    let sub_out = collect(sub.stdout.take().unwrap());
    // The subscription may not be registered yet when the first publish arrives: publish
    // until the long poll answers.
    let got = wait_for("the long poll to deliver", Duration::from_secs(30), || {
        let st = Command::new("sh")
            .arg("-c")
            .arg(&curls[1])
            .stdout(Stdio::null())
            .status()
            .expect("run the publish curl");
        assert!(st.success(), "publish curl failed: {st}");
        let text = sub_out.lock().unwrap().clone();
        text.contains("\"command\":\"hello\"").then_some(text)
    });
    assert!(got.contains("#!NGINXNMS!#"), "not a v3 frame: {got}");
    let status = sub.wait().expect("the subscribe curl");
    assert!(status.success(), "subscribe curl: {status}");
    let _ = &mut server;
}
