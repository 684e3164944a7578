//! A private `redis-server` per test, on a Unix socket in its own short temp dir, without
//! persistence; killed on drop. `scripts/test.sh` installs redis-server when it is missing.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{TestDir, wait_until};

pub struct Redis {
    child: Option<Child>,
    pub dir: TestDir,
    pub sock: PathBuf,
}

impl Redis {
    pub fn start() -> Redis {
        let dir = TestDir::new();
        let sock = dir.join("redis.sock");
        let mut r = Redis {
            child: None,
            dir,
            sock,
        };
        r.restart();
        r
    }

    /// Starts (again) on the same socket with empty data, as a Redis without persistence does
    /// after a restart.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "redis-server already running");
        let child = Command::new("redis-server")
            .args(["--port", "0", "--unixsocket"])
            .arg(&self.sock)
            .args([
                "--unixsocketperm",
                "700",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .args(["--daemonize", "no", "--loglevel", "warning", "--dir"])
            .arg(&self.dir.path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run redis-server ({e}); scripts/test.sh installs it")
            });
        self.child = Some(child);
        let up = wait_until(Duration::from_secs(5), || {
            self.try_cli(&["PING"]).is_some_and(|o| o.trim() == "PONG")
        });
        assert!(up, "redis-server did not answer PING on {:?}", self.sock);
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_file(&self.sock);
    }

    fn try_cli(&self, args: &[&str]) -> Option<String> {
        let out = Command::new("redis-cli")
            .arg("-s")
            .arg(&self.sock)
            .args(args)
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Runs one command with redis-cli and returns its output.
    pub fn cli(&self, args: &[&str]) -> String {
        self.try_cli(args)
            .unwrap_or_else(|| panic!("redis-cli {args:?} failed on {:?}", self.sock))
    }

    /// `INFO commandstats` as (command, calls) pairs.
    pub fn command_calls(&self) -> Vec<(String, u64)> {
        self.cli(&["INFO", "commandstats"])
            .lines()
            .filter_map(|l| {
                let rest = l.strip_prefix("cmdstat_")?;
                let (name, stats) = rest.split_once(':')?;
                let calls = stats
                    .strip_prefix("calls=")?
                    .split(',')
                    .next()?
                    .parse()
                    .ok()?;
                Some((name.to_owned(), calls))
            })
            .collect()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}
