//! A private `redis-server` on a Unix socket in a test's own temp dir, killed on drop.
//! Never shared between tests, and never found by name: only its own pid is signalled.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

pub struct RedisServer {
    pub dir: PathBuf,
    pub sock: PathBuf,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts one in `dir` (socket `dir/r.sock`; `dump.rdb` there too, loaded on restart).
    pub fn start(dir: &Path) -> RedisServer {
        let mut r = RedisServer {
            dir: dir.to_path_buf(),
            sock: dir.join("r.sock"),
            child: None,
        };
        r.spawn();
        r
    }

    fn spawn(&mut self) {
        assert!(self.child.is_none(), "already running");
        let _ = std::fs::remove_file(&self.sock);
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
            .args(["--daemonize", "no", "--dir"])
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed (scripts/test.sh installs it)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(mut c) = self.try_conn()
                && redis::cmd("PING").query::<String>(&mut c).is_ok()
            {
                return;
            }
            assert!(Instant::now() < deadline, "redis-server did not come up");
            thread::sleep(Duration::from_millis(10));
        }
    }

    fn try_conn(&self) -> redis::RedisResult<redis::Connection> {
        let info = redis::IntoConnectionInfo::into_connection_info(redis::ConnectionAddr::Unix(
            self.sock.clone(),
        ))?;
        redis::Client::open(info)?.get_connection_with_timeout(Duration::from_secs(2))
    }

    /// A fresh connection for inspecting or tampering with the data.
    pub fn conn(&self) -> redis::Connection {
        self.try_conn().expect("connect to the test redis")
    }

    /// The `calls` of one command in `INFO commandstats` (0 when never called).
    pub fn calls(&self, command: &str) -> u64 {
        let info: String = redis::cmd("INFO")
            .arg("commandstats")
            .query(&mut self.conn())
            .expect("INFO");
        let want = format!("cmdstat_{command}:calls=");
        info.lines()
            .find_map(|l| l.strip_prefix(&want))
            .and_then(|rest| rest.split(',').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }

    /// Kills it (SIGKILL): everything in memory is lost.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Saves to `dump.rdb` and exits, so the next [`RedisServer::restart`] loads the data.
    pub fn shutdown_saving(&mut self) {
        let _ = redis::cmd("SHUTDOWN")
            .arg("SAVE")
            .query::<redis::Value>(&mut self.conn());
        if let Some(mut c) = self.child.take() {
            let deadline = Instant::now() + Duration::from_secs(10);
            while c.try_wait().ok().flatten().is_none() {
                assert!(Instant::now() < deadline, "redis-server did not exit");
                thread::sleep(Duration::from_millis(10));
            }
        }
    }

    pub fn restart(&mut self) {
        self.spawn();
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}
